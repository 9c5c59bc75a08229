"""The embedded default (SQLite, no Redis) runs experiments end to end."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from registry.db import migrate
from registry.db.engine import create_engine, create_sessionmaker
from registry.settings import Settings
from tests.embedded import embedded_settings, serve_embedded
from tests.experiments.conftest import (
    Client,
    flush_and_aggregate,
    in_app,
    make_experiment,
    make_metric,
    make_prompt,
    runtime_of,
    units_queued_by_a_second_writer,
)


@pytest.fixture
async def sqlite_settings(tmp_path: Path) -> Settings:
    settings = embedded_settings(
        tmp_path, experiment_exposure_flush_seconds=3600.0, experiment_statistics_seconds=3600.0
    )
    engine = create_engine(settings)
    await migrate.upgrade(engine)
    await engine.dispose()
    return settings


@pytest.fixture
async def sqlite_client(sqlite_settings: Settings) -> AsyncIterator[tuple[Client, dict[str, str]]]:
    async with serve_embedded(sqlite_settings) as client_and_admin:
        yield client_and_admin


async def test_an_experiment_runs_end_to_end_on_sqlite(sqlite_client: tuple[Client, dict[str, str]]) -> None:
    client, admin = sqlite_client
    await make_prompt(client, admin, "greet")
    await make_metric(client, admin, "converted")
    await make_experiment(client, admin, "greet-test", "greet")
    now = datetime.now(UTC).isoformat()
    for i in range(30):
        await client.post("/v1/prompts/greet/render", json={"variables": {"x": "a"}, "unit": f"u{i}"}, headers=admin)
    events = [
        {"unit": f"u{i}", "metric": "converted", "idempotency_key": f"k{i}", "timestamp": now} for i in range(0, 30, 2)
    ]
    assert (await client.post("/v1/events", json={"events": events}, headers=admin)).json()["accepted"] == 15
    assert (await client.post("/v1/events", json={"events": events}, headers=admin)).json()["duplicates"] == 15
    await flush_and_aggregate(client)
    results = (await client.get("/v1/experiments/greet-test/results", headers=admin)).json()
    assert results["units"] == 30
    converted = sum(round(r["mean"] * r["units"]) for r in results["metrics"][0]["variants"])
    assert converted == 15
    await in_app(client, lambda: runtime_of(client.app).experiments.aggregator.rebuild(1))
    assert (await client.get("/v1/experiments/greet-test/results", headers=admin)).json() | {"computed_at": 0} == (
        results | {"computed_at": 0}
    )
    assert (await client.delete("/v1/units/u0", headers=admin)).json()["events"] == 1
    assert (await client.get("/v1/experiments/greet-test/results", headers=admin)).json()["units"] == 29
    export = await client.get("/v1/experiments/greet-test/export", headers=admin)
    assert export.text.count("\n") == 30
    stopped = await client.post("/v1/experiments/greet-test/stop", json={"winner": "treatment"}, headers=admin)
    assert stopped.json()["promoted"]["version"] == 2


async def test_only_the_exposures_stored_now_queue_their_units_on_sqlite(
    sqlite_client: tuple[Client, dict[str, str]], sqlite_settings: Settings
) -> None:
    client, admin = sqlite_client
    await make_prompt(client, admin, "greet")
    await make_metric(client, admin, "converted")
    await make_experiment(client, admin, "greet-test", "greet")
    engine = create_engine(sqlite_settings)
    try:
        assert await units_queued_by_a_second_writer(create_sessionmaker(engine)) == {"user-3"}
    finally:
        await engine.dispose()


async def test_a_variant_whose_config_has_a_fallback_routes_on_sqlite(
    sqlite_client: tuple[Client, dict[str, str]],
) -> None:
    client, admin = sqlite_client
    await make_prompt(client, admin, "greet")
    await make_metric(client, admin, "converted")
    for name, fallback in (("spare", None), ("b", {"name": "spare", "version": 1})):
        await client.post("/v1/configs", json={"name": name}, headers=admin)
        version = {"backend": "vllm", "model": f"{name}-model", **({"fallback": fallback} if fallback else {})}
        assert (await client.post(f"/v1/configs/{name}/versions", json=version, headers=admin)).status_code == 201
    variants = [
        {"key": "c", "prompt_version": 1},
        {"key": "t", "prompt_version": 2, "config": {"name": "b", "version": 1}},
    ]
    await make_experiment(client, admin, "tone", "greet", variants=variants, forced_variants={"qa": "t"})

    body = {"variables": {"x": "a"}, "unit": "qa"}
    rendered = await client.post("/v1/prompts/greet/render", json=body, headers=admin)

    assert rendered.json()["experiment"]["variant"] == "t"
    assert rendered.json()["config"]["name"] == "b"
