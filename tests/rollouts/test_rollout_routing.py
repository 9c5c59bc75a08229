"""Routing while a rollout runs: a unit's version follows the rollout's percentage assignment, only ever
gains the candidate as the share grows, and is the same on two replicas at every step, moved by a worker, and
after a restart of every process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from registry.app import create_app
from registry.rollouts.plan import included_in_rollout
from registry.settings import Settings
from tests.conftest import serve_in_process
from tests.experiments.conftest import (
    Client,
    in_app,
    make_metric,
    make_prompt,
    runtime_of,
    settle,
    until_running_here,
)
from tests.rollouts.conftest import STEPS, FakeClock, data_in_arms, ok, start_rollout

UNITS = [f"user-{i}" for i in range(120)]


@pytest.fixture
async def setup(client: Client, admin: dict[str, str]) -> dict[str, str]:
    await make_prompt(client, admin, "greet")
    await make_metric(client, admin, "converted")
    return admin


async def versions(client: Client, headers: dict[str, str]) -> dict[str, tuple[int, Any]]:
    """Each unit's rendered version of the production label, with the experiment the response names."""

    async def one(unit: str) -> tuple[int, Any]:
        body = await ok(
            await client.post(
                "/v1/prompts/greet/render", json={"variables": {"x": "hi"}, "unit": unit}, headers=headers
            )
        )
        return body["version"], body["experiment"]

    return dict(zip(UNITS, await asyncio.gather(*(one(unit) for unit in UNITS)), strict=True))


async def until_phase_here(client: Client, key: str, phase: int) -> None:
    """Wait until this app's router routes ``key`` in ``phase`` (the news of a step comes through Redis)."""
    router = runtime_of(client.app).experiments.router
    for _ in range(250):
        running = router.running(key)
        if running is not None and running.phase == phase:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"phase {phase} of {key} did not reach this replica's router")


async def advance(client: Client, headers: dict[str, str], rollout: dict[str, Any]) -> dict[str, Any]:
    moved = await ok(await client.post(f"/v1/rollouts/{rollout['id']}/advance", headers=headers))
    await settle(client)
    return moved


async def test_units_inside_the_share_get_the_candidate_and_keep_it_as_it_grows(
    client: Client, setup: dict[str, str]
) -> None:
    rollout = await start_rollout(client, setup)
    seed = rollout["experiment"]
    candidates_before: set[str] = set()
    for share in (0.25, 0.5):
        moved = await advance(client, setup, rollout)
        assert moved["share"] == share
        seen = await versions(client, setup)
        for unit, (version, experiment) in seen.items():
            inside = included_in_rollout(seed, unit, share)
            assert version == (2 if inside else 1), unit
            assert experiment["key"] == seed
            assert experiment["variant"] == ("candidate" if inside else "production")
        candidates = {unit for unit, (version, _) in seen.items() if version == 2}
        assert candidates_before <= candidates
        assert 0 < len(candidates) < len(UNITS)
        candidates_before = candidates
    await ok(await client.post(f"/v1/rollouts/{rollout['id']}/abort", headers=setup))
    await settle(client)
    assert {v for v, _ in (await versions(client, setup)).values()} == {1}


@asynccontextmanager
async def deployment(settings: Settings) -> AsyncIterator[tuple[Client, Client, Client]]:
    """Two API replicas and a worker, sharing the test's PostgreSQL database and Redis, each its own process
    as far as the registry can tell (its own runtime, router, caches and change-bus subscription)."""
    async with (
        serve_in_process(create_app(settings.model_copy(update={"role": "api"}))) as first,
        serve_in_process(create_app(settings.model_copy(update={"role": "api"}))) as second,
        serve_in_process(create_app(settings.model_copy(update={"role": "worker"}))) as worker,
    ):
        yield first, second, worker


async def worker_check(worker: Client, rollout_id: int, clock: FakeClock) -> str:
    """One check by the worker's checker at the fake clock's time; what it did."""
    checker = runtime_of(worker.app).rollouts
    checker.clock = clock
    action = await in_app(worker, lambda: checker.check(rollout_id))
    assert action is not None, "the worker did not get the rollout's lease"
    return action.kind


async def test_every_unit_sees_one_version_on_both_replicas_at_every_step_and_across_a_restart_of_all(
    client: Client, setup: dict[str, str], settings: Settings
) -> None:
    """The worker moves the rollout (5%, 25%, 50%, 100%, promotion) as each step's minimum duration passes on
    its clock; at every step both replicas route each unit alike, and a unit that had the candidate keeps it.
    Half-way, every process stops and new ones start: no unit sees a change."""
    steps = [{"share": s["share"], "min_seconds": 60} for s in STEPS]
    rollout = await start_rollout(client, setup, steps=steps)
    key, clock = rollout["experiment"], FakeClock()
    had_candidate: set[str] = set()

    async def same_on_both(first: Client, second: Client, step: int) -> dict[str, tuple[int, Any]]:
        for replica in (first, second):
            await until_phase_here(replica, key, step + 1)
        seen = await versions(first, setup)
        assert await versions(second, setup) == seen
        candidates = {unit for unit, (version, _) in seen.items() if version == 2}
        assert had_candidate <= candidates, "a unit lost the candidate"
        assert candidates == {u for u in UNITS if included_in_rollout(key, u, STEPS[step]["share"])}
        had_candidate.update(candidates)
        return seen

    async with deployment(settings) as (first, second, worker):
        for replica in (first, second):
            await until_running_here(replica, key)
        await same_on_both(first, second, 0)
        await data_in_arms(first, setup)  # the guardrail's data in each arm: the step then waits out its minimum
        clock.advance(61)
        assert await worker_check(worker, rollout["id"], clock) == "advance"
        before_restart = await same_on_both(first, second, 1)
        assert 0 < len(had_candidate) < len(UNITS)
    async with deployment(settings) as (first, second, worker):  # every process anew, mid-rollout
        for replica in (first, second):
            await until_phase_here(replica, key, 2)
            assert await versions(replica, setup) == before_restart
        # The old worker's lease runs out; the new one takes the rollout over where it was.
        clock.advance(runtime_of(worker.app).rollouts.lease.total_seconds() + 1)
        await data_in_arms(first, setup)
        assert await worker_check(worker, rollout["id"], clock) == "advance"
        await same_on_both(first, second, 2)
        await data_in_arms(first, setup)
        clock.advance(61)
        assert await worker_check(worker, rollout["id"], clock) == "advance"
        at_full = await same_on_both(first, second, 3)
        assert {version for version, _ in at_full.values()} == {2}
        await data_in_arms(first, setup, ("candidate",))  # at full share the candidate alone takes traffic
        clock.advance(61)
        assert await worker_check(worker, rollout["id"], clock) == "promote"
        for replica in (first, second):  # promoted: version 2 is production, for every unit, outside any experiment
            await until_stopped_here(replica, key)
            assert set((await versions(replica, setup)).values()) == {(2, None)}
    shown = await ok(await client.get(f"/v1/rollouts/{rollout['id']}", headers=setup))
    assert shown["status"] == "completed"
    assert [e["action"] for e in shown["events"]] == ["started", "advanced", "advanced", "advanced", "completed"]


async def until_stopped_here(client: Client, key: str) -> None:
    """Wait until this app's router no longer routes ``key`` (the news comes through Redis)."""
    router = runtime_of(client.app).experiments.router
    for _ in range(250):
        if router.running(key) is None:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{key} still runs on this replica's router")
