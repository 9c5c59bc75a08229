"""The embedded default (SQLite, no Redis) evaluates alert rules: a p95 latency folded in Python (SQLite has no
percentile_cont) fires with its webhook event and resolves when the window is clean."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text

from registry.db.engine import create_engine
from registry.settings import Settings
from tests.alerts.conftest import FakeClock, complete, create_rule, evaluate, ok
from tests.completions.conftest import backend, publish, unique
from tests.embedded import embedded_settings, serve_embedded
from tests.experiments.conftest import Client


@pytest.fixture
async def sqlite_client(tmp_path: Path, fault: str) -> AsyncIterator[tuple[Client, dict[str, str], Settings]]:
    settings = embedded_settings(
        tmp_path,
        backends={"steady": backend(fault, max_retries=0)},
        completion_usage_flush_seconds=3600.0,
        alert_evaluate_seconds=3600.0,
    )
    async with serve_embedded(settings) as (client, admin):
        yield client, admin, settings


async def test_a_latency_rule_fires_and_resolves_on_sqlite(
    sqlite_client: tuple[Client, dict[str, str], Settings],
) -> None:
    client, admin, settings = sqlite_client
    await publish(client, admin, backend="steady", model=unique("latency:40:60"))  # 40 to 60 ms each
    rule = await create_rule(client, admin, "slow", "latency_p95", threshold=30, min_count=5, window_seconds=60)
    assert await complete(client, admin, 4) == [200] * 4
    clock = FakeClock()
    assert await evaluate(client, clock) == {}  # 4 latencies: fewer than 5
    assert await complete(client, admin, 1) == [200]
    clock.advance(1)
    assert await evaluate(client, clock) == {rule["id"]: [("", "fire")]}
    [incident] = (await ok(await client.get("/v1/alerts/incidents", headers=admin)))["items"]
    assert 40 <= incident["value"] < 1000
    clock.advance(61)
    assert await evaluate(client, clock) == {rule["id"]: [("", "resolve")]}
    engine = create_engine(settings)
    try:
        async with engine.connect() as connection:
            types = (await connection.execute(text("SELECT type FROM outbox_events ORDER BY id"))).scalars().all()
    finally:
        await engine.dispose()
    assert [t for t in types if t.startswith("alert.")] == ["alert.firing", "alert.resolved"]
