"""A checker that stalls past its lease while another takes the rollout over: the stalled one changes nothing.

Two checkers share a fake clock, so a lease runs out when the test moves the clock, never while the test
waits. The first takes the lease and stops before its check's transaction (an ``asyncio.Event``); the
second, of another name or of the first's own (a restarted process keeping its hostname), is refused while
that lease is live, takes the rollout over once it has run out and advances it; then the first goes on.
The plan's steps have no minimums and each step is given its guardrail's data, so every check that acts
advances: a stalled checker that acted (at the time it goes on, the second's) would advance the rollout a
second time, with a second event in its history and in the webhooks' outbox. On PostgreSQL and on SQLite.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.rollouts.checker import RolloutChecker
from registry.rollouts.plan import Action
from registry.settings import Settings
from tests.conftest import count_rows
from tests.embedded import serve_on_engine_kind
from tests.experiments.conftest import Client, make_metric, make_prompt, runtime_of
from tests.rollouts.conftest import data_in_arms, start_rollout
from tests.rollouts.simulation import FakeClock, ok

INTERVAL = 1000.0  # the checkers' lease is three intervals: it runs out only when the test moves the clock
LEASE_SECONDS = 3 * INTERVAL


class PausingChecker(RolloutChecker):
    """A checker that, once it holds the lease, stops before its first check's transaction until ``go_on``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.paused = asyncio.Event()
        self.go_on = asyncio.Event()

    async def _act(self, rollout_id: int, lease: str) -> Action | None:
        if not self.paused.is_set():
            self.paused.set()
            await self.go_on.wait()
        return await super()._act(rollout_id, lease)


@pytest.fixture
async def served(
    migrated_engine: AsyncEngine, settings: Settings, tmp_path: Path
) -> AsyncIterator[tuple[Client, dict[str, str]]]:
    """The registry on the test's database; its own checker checks too rarely to take part."""
    fields: dict[str, Any] = {
        "experiment_exposure_flush_seconds": 3600.0,
        "experiment_statistics_seconds": 3600.0,
        "rollout_check_seconds": 3600.0,
    }
    async with serve_on_engine_kind(migrated_engine, settings, tmp_path, **fields) as client_and_admin:
        yield client_and_admin


async def column(engine: AsyncEngine, query: str) -> list[Any]:
    async with engine.connect() as connection:
        return list((await connection.execute(text(query))).scalars().all())


async def rollout_outbox(engine: AsyncEngine) -> list[str]:
    """The types of the rollout events in the webhooks' outbox, in order."""
    return await column(engine, "SELECT type FROM outbox_events WHERE type LIKE 'rollout.%' ORDER BY id")


@pytest.mark.parametrize("second_owner", ["second", "first"], ids=["another-checker", "the-same-checker-restarted"])
async def test_a_stalled_checker_that_was_taken_over_changes_nothing(
    served: tuple[Client, dict[str, str]], migrated_engine: AsyncEngine, second_owner: str
) -> None:
    client, admin = served
    await make_prompt(client, admin, "greet")
    await make_metric(client, admin, "converted")
    rollout = await start_rollout(client, admin)  # four steps, none with a minimum
    await data_in_arms(client, admin)  # the guardrail's data in each arm: only the lease holds the step
    runtime = runtime_of(client.app)
    clock = FakeClock()
    parts = (runtime.sessionmaker, runtime.bus, runtime.prompt_limits)
    first = PausingChecker(*parts, interval=INTERVAL, clock=clock, owner="first")
    second = RolloutChecker(*parts, interval=INTERVAL, clock=clock, owner=second_owner)

    stalled = asyncio.create_task(first.check(rollout["id"]))
    await first.paused.wait()
    assert await second.check(rollout["id"]) is None  # the first's lease is live, whatever the second's name
    clock.advance(LEASE_SECONDS + 1)  # the first stalled past its lease
    assert await second.check(rollout["id"]) == Action("advance", 1)
    first.go_on.set()
    refused = await stalled

    shown = await ok(await client.get(f"/v1/rollouts/{rollout['id']}", headers=admin))
    assert [event["action"] for event in shown["events"]] == ["started", "advanced"]  # one advance, not two
    assert await rollout_outbox(migrated_engine) == ["rollout.started", "rollout.advanced"]
    assert await count_rows(migrated_engine, "rollout_events") == 2
    assert (shown["status"], shown["step"]) == ("running", 1)
    assert shown["evidence"]["action"] == "advance"  # the second's check's, not overwritten
    assert refused is None
    assert rollout["id"] not in first.leases
    [owner] = await column(migrated_engine, "SELECT lease_owner FROM rollouts")
    assert owner == second.leases[rollout["id"]]
    assert owner.startswith(f"{second_owner}/")

    # The second holds the lease and goes on; the first (of its name or not) cannot take it while it is live.
    assert await first.check(rollout["id"]) is None
    await data_in_arms(client, admin)
    assert (await second.check(rollout["id"])) == Action("advance", 2)
    assert await column(migrated_engine, "SELECT step FROM rollouts") == [2]
    assert await rollout_outbox(migrated_engine) == ["rollout.started", "rollout.advanced", "rollout.advanced"]
