"""Moves of one rollout sent at once, against real PostgreSQL: each waits for the other and sees its result."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import problem
from tests.experiments.conftest import Client, make_metric, make_prompt, settle
from tests.rollouts.conftest import STEPS, ok, start_rollout


@pytest.fixture
async def setup(client: Client, admin: dict[str, str]) -> dict[str, str]:
    """Prompt 'greet' (version 1 in production, version 2 the candidate) and a metric 'converted'."""
    await make_prompt(client, admin, "greet")
    await make_metric(client, admin, "converted")
    return admin


async def test_an_advance_sent_twice_with_the_step_it_saw_moves_one_step(client: Client, setup: dict[str, str]) -> None:
    rollout = await start_rollout(client, setup)
    url = f"/v1/rollouts/{rollout['id']}/advance"
    responses = await asyncio.gather(
        *(client.post(url, json={"expected_step": 0, "reason": "looks fine"}, headers=setup) for _ in range(2))
    )
    await settle(client)
    assert sorted(r.status_code for r in responses) == [200, 409]
    refused = next(problem(r) for r in responses if r.status_code == 409)
    assert refused["type"] == "/problems/rollout_state"
    assert refused["errors"] == [{"field": "expected_step", "message": "the rollout is at step 1"}]
    shown = await ok(await client.get(f"/v1/rollouts/{rollout['id']}", headers=setup))
    assert (shown["step"], shown["share"]) == (1, STEPS[1]["share"])
    assert [e["action"] for e in shown["events"]] == ["started", "advanced"]


async def test_a_move_naming_the_current_step_is_made(client: Client, setup: dict[str, str]) -> None:
    rollout = await start_rollout(client, setup)
    base = f"/v1/rollouts/{rollout['id']}"
    await ok(await client.post(f"{base}/advance", json={"expected_step": 0}, headers=setup))
    paused = await ok(await client.post(f"{base}/pause", json={"expected_step": 1}, headers=setup))
    assert (paused["status"], paused["step"]) == ("paused", 1)
    stale = await client.post(f"{base}/abort", json={"expected_step": 0}, headers=setup)
    assert stale.status_code == 409
    assert (await ok(await client.get(base, headers=setup)))["status"] == "paused"


async def test_a_second_rollout_created_at_the_same_time_is_refused(client: Client, setup: dict[str, str]) -> None:
    body = {"candidate_version": 2, "steps": STEPS, "guardrails": [{"metric": "converted"}]}
    responses = await asyncio.gather(
        *(client.post("/v1/prompts/greet/rollouts", json=body, headers=setup) for _ in range(3))
    )
    await settle(client)
    assert sorted(r.status_code for r in responses) == [201, 409, 409]
    listed = await ok(await client.get("/v1/prompts/greet/rollouts", headers=setup))
    assert len(listed["items"]) == 1


async def test_the_last_advance_sent_three_times_promotes_once(client: Client, setup: dict[str, str]) -> None:
    rollout = await start_rollout(client, setup, steps=[{"share": 0.5}, {"share": 1.0}])
    url = f"/v1/rollouts/{rollout['id']}/advance"
    await ok(await client.post(url, json={}, headers=setup))
    responses = await asyncio.gather(*(client.post(url, json={}, headers=setup) for _ in range(3)))
    await settle(client)
    assert sorted(r.status_code for r in responses) == [200, 409, 409]
    shown = await ok(await client.get(f"/v1/rollouts/{rollout['id']}", headers=setup))
    assert [e["action"] for e in shown["events"]] == ["started", "advanced", "completed"]
    prompt = await ok(await client.get("/v1/prompts/greet", headers=setup))
    assert prompt["labels"]["production"] == 2
