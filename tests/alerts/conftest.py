"""Helpers for alert tests: the stand-in backend behind two backends, rules, and the evaluator on a fake clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.alerts.evaluation import Transition
from registry.settings import Settings
from tests.completions.conftest import backend
from tests.embedded import embedded_settings, serve_embedded
from tests.experiments.conftest import Client, runtime_of
from tests.experiments.conftest import fault as fault  # the stand-in backend's URL
from tests.rollouts.conftest import FakeClock as FakeClock
from tests.rollouts.conftest import ok as ok

PROMPT = "greet"


def stand_ins(fault: str) -> dict[str, Any]:
    """'steady' never opens its breaker; 'fragile' opens after 3 failures and stays open. No retries, and
    completions and evaluations written only when a test asks."""
    return {
        "backends": {
            "steady": backend(fault, max_retries=0, breaker_failures=1000),
            "fragile": backend(fault, max_retries=0, breaker_failures=3, breaker_cooldown=3600.0),
        },
        "completion_usage_flush_seconds": 3600.0,
        "alert_evaluate_seconds": 3600.0,
    }


@pytest.fixture
def settings(settings: Settings, fault: str) -> Settings:
    return settings.model_copy(update=stand_ins(fault))


@pytest.fixture
async def sqlite_client(tmp_path: Path, fault: str) -> AsyncIterator[tuple[Client, dict[str, str]]]:
    """The registry on the embedded default (a SQLite file) with the same stand-ins, and an admin's headers."""
    async with serve_embedded(embedded_settings(tmp_path, **stand_ins(fault))) as (client, admin):
        yield client, admin


async def create_rule(client: Client, headers: dict[str, str], name: str, kind: str, **fields: Any) -> dict[str, Any]:
    return await ok(
        await client.post("/v1/alerts/rules", json={"name": name, "kind": kind, **fields}, headers=headers), 201
    )


async def complete(client: Client, headers: dict[str, str], count: int, prompt: str = PROMPT) -> list[int]:
    """``count`` completions of the prompt, one after the other; their statuses."""
    statuses = []
    for _ in range(count):
        response = await client.post(
            f"/v1/prompts/{prompt}/complete", json={"variables": {"name": "Ada"}}, headers=headers
        )
        statuses.append(response.status_code)
    return statuses


async def evaluate(client: Client, clock: FakeClock) -> dict[int, list[tuple[str, Transition]]]:
    """Completions written, then one evaluation of every rule as the worker makes it, at the clock's time."""
    runtime = runtime_of(client.app)
    await runtime.completions.recorder.flush()
    runtime.alerts.clock = clock
    return await runtime.alerts.run_once()


async def rows(engine: AsyncEngine, query: str) -> list[Any]:
    async with engine.connect() as connection:
        return list((await connection.execute(text(query))).all())


async def alert_events(engine: AsyncEngine) -> list[tuple[str, str]]:
    """(type, subject) of the alert events in the outbox, in order."""
    found = await rows(engine, "SELECT type, subject FROM outbox_events WHERE type LIKE 'alert.%' ORDER BY id")
    return [(t, s) for t, s in found]


async def alert_audit(engine: AsyncEngine) -> list[tuple[str, str]]:
    found = await rows(engine, "SELECT action, resource_name FROM audit_log WHERE action LIKE 'alert.%' ORDER BY id")
    return [(a, n) for a, n in found]
