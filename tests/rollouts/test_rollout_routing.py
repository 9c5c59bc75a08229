"""Routing while a rollout runs: a unit's version follows the rollout's percentage assignment, only ever
gains the candidate as the share grows, and is the same on another app instance and after a restart."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from registry.app import create_app
from registry.rollouts.plan import included_in_rollout
from registry.settings import Settings
from tests.conftest import serve_in_process
from tests.experiments.conftest import Client, make_metric, make_prompt, runtime_of, settle, until_running_here
from tests.rollouts.conftest import ok, start_rollout

UNITS = [f"user-{i}" for i in range(120)]


@pytest.fixture
async def setup(client: Client, admin: dict[str, str]) -> dict[str, str]:
    await make_prompt(client, admin, "greet")
    await make_metric(client, admin, "converted")
    return admin


async def versions(client: Client, headers: dict[str, str]) -> dict[str, tuple[int, Any]]:
    """Each unit's rendered version of the production label, with the experiment the response names."""
    seen: dict[str, tuple[int, Any]] = {}
    for unit in UNITS:
        body = await ok(
            await client.post(
                "/v1/prompts/greet/render", json={"variables": {"x": "hi"}, "unit": unit}, headers=headers
            )
        )
        seen[unit] = (body["version"], body["experiment"])
    return seen


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


async def test_a_unit_sees_the_same_version_on_another_instance_and_after_a_restart(
    client: Client, setup: dict[str, str], settings: Settings
) -> None:
    rollout = await start_rollout(client, setup)
    async with serve_in_process(create_app(settings)) as replica:
        await until_running_here(replica, rollout["experiment"])
        for step in range(3):  # 5%, 25%, 50%: the replica follows each step
            if step:
                await advance(client, setup, rollout)
                await until_phase_here(replica, rollout["experiment"], step + 1)
            here = await versions(client, setup)
            assert await versions(replica, setup) == here
    async with serve_in_process(create_app(settings)) as restarted:  # a fresh process reads the rollout back
        await until_running_here(restarted, rollout["experiment"])
        assert await versions(restarted, setup) == here
