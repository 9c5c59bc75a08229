"""Rollouts through the API: creation, the one-at-a-time and promotion locks, and the moves by hand."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.auth.keys import Scope
from tests.conftest import KeyFactory, problem
from tests.experiments.conftest import Client, make_metric, make_prompt, settle
from tests.rollouts.conftest import STEPS, FakeClock, check, ok, start_rollout


@pytest.fixture
async def setup(client: Client, admin: dict[str, str]) -> dict[str, str]:
    """Prompt 'greet' (version 1 in production, version 2 the candidate) and a metric 'converted'."""
    await make_prompt(client, admin, "greet")
    await make_metric(client, admin, "converted")
    return admin


async def test_a_rollout_starts_at_its_first_step_backed_by_an_experiment(
    client: Client, setup: dict[str, str]
) -> None:
    rollout = await start_rollout(client, setup)
    assert (rollout["status"], rollout["step"], rollout["share"]) == ("running", 0, 0.05)
    assert (rollout["candidate_version"], rollout["production_version"]) == (2, 1)
    experiment = await ok(await client.get(f"/v1/experiments/{rollout['experiment']}", headers=setup))
    assert experiment["status"] == "running"
    assert [(v["key"], v["prompt_version"]) for v in experiment["variants"]] == [("production", 1), ("candidate", 2)]
    shown = await ok(await client.get(f"/v1/rollouts/{rollout['id']}", headers=setup))
    assert [e["action"] for e in shown["events"]] == ["started"]
    listed = await ok(await client.get("/v1/prompts/greet/rollouts", headers=setup))
    assert [r["id"] for r in listed["items"]] == [rollout["id"]]


async def test_a_second_rollout_of_the_prompt_is_refused_naming_the_first(
    client: Client, setup: dict[str, str]
) -> None:
    rollout = await start_rollout(client, setup)
    response = await client.post(
        "/v1/prompts/greet/rollouts",
        json={"candidate_version": 2, "steps": STEPS, "guardrails": [{"metric": "converted"}]},
        headers=setup,
    )
    assert response.status_code == 409
    assert f"rollout {rollout['id']}" in problem(response)["detail"]


async def test_promotion_and_rollback_are_refused_while_a_rollout_runs(client: Client, setup: dict[str, str]) -> None:
    rollout = await start_rollout(client, setup)
    promote = await client.post(
        "/v1/prompts/greet/versions/2/promote", json={"to": "production", "expected_current": 1}, headers=setup
    )
    assert promote.status_code == 409
    assert f"rollout {rollout['id']}" in problem(promote)["detail"]
    rollback = await client.post("/v1/prompts/greet/rollback", json={"version": 1, "reason": "undo"}, headers=setup)
    assert rollback.status_code == 409
    assert f"rollout {rollout['id']}" in problem(rollback)["detail"]
    staging = await client.post(
        "/v1/prompts/greet/versions/2/promote", json={"to": "staging", "expected_current": None}, headers=setup
    )
    assert staging.status_code == 200, staging.text  # staging is not the rollout's label
    await ok(await client.post(f"/v1/rollouts/{rollout['id']}/abort", json={"reason": "not now"}, headers=setup))
    promote = await client.post(
        "/v1/prompts/greet/versions/2/promote", json={"to": "production", "expected_current": 1}, headers=setup
    )
    assert promote.status_code == 200, promote.text


async def test_pause_resume_advance_and_abort_are_each_recorded(
    client: Client, setup: dict[str, str], clean_database: AsyncEngine
) -> None:
    rollout = await start_rollout(client, setup)
    path = f"/v1/rollouts/{rollout['id']}"
    assert (await ok(await client.post(f"{path}/pause", json={"reason": "looking"}, headers=setup)))["status"] == (
        "paused"
    )
    assert (await client.post(f"{path}/pause", headers=setup)).status_code == 409
    assert await check(client, rollout["id"], FakeClock()) is None  # a paused rollout is not checked
    assert (await ok(await client.post(f"{path}/resume", headers=setup)))["status"] == "running"
    advanced = await ok(await client.post(f"{path}/advance", json={"reason": "looks fine"}, headers=setup))
    assert (advanced["step"], advanced["share"]) == (1, 0.25)
    experiment = await ok(await client.get(f"/v1/experiments/{rollout['experiment']}", headers=setup))
    assert experiment["phase"] == 2  # each step is a phase of the backing experiment
    aborted = await ok(await client.post(f"{path}/abort", json={"reason": "changed my mind"}, headers=setup))
    assert (aborted["status"], aborted["reason"]) == ("aborted", "changed my mind")
    await settle(client)
    experiment = await ok(await client.get(f"/v1/experiments/{rollout['experiment']}", headers=setup))
    assert experiment["status"] == "stopped"  # traffic is production's again
    shown = await ok(await client.get(path, headers=setup))
    assert [e["action"] for e in shown["events"]] == ["started", "paused", "resumed", "advanced", "aborted"]
    audit = await ok(await client.get("/v1/audit", params={"resource_type": "prompt"}, headers=setup))
    actions = [a["action"] for a in audit["items"] if a["action"].startswith("rollout.")]
    assert sorted(actions) == sorted(
        ["rollout.started", "rollout.paused", "rollout.resumed", "rollout.advanced", "rollout.aborted"]
    )
    async with clean_database.connect() as connection:
        events = (
            await connection.execute(text("SELECT type FROM outbox_events WHERE type LIKE 'rollout.%' ORDER BY id"))
        ).scalars()
        assert list(events) == [
            "rollout.started",
            "rollout.paused",
            "rollout.resumed",
            "rollout.advanced",
            "rollout.aborted",
        ]
    assert (await client.post(f"{path}/resume", headers=setup)).status_code == 409
    assert (await client.post(f"{path}/restart", headers=setup)).status_code == 404


async def test_a_plan_with_falling_shares_or_an_unknown_metric_is_refused(
    client: Client, setup: dict[str, str]
) -> None:
    body: dict[str, Any] = {
        "candidate_version": 2,
        "steps": [{"share": 0.5}, {"share": 0.25}],
        "guardrails": [{"metric": "converted"}],
    }
    response = await client.post("/v1/prompts/greet/rollouts", json=body, headers=setup)
    assert response.status_code == 422
    assert {e["field"] for e in problem(response)["errors"]} == {"steps[1].share"}
    body = {"candidate_version": 2, "steps": STEPS, "guardrails": [{"metric": "nope"}]}
    response = await client.post("/v1/prompts/greet/rollouts", json=body, headers=setup)
    assert response.status_code == 422
    listed = await ok(await client.get("/v1/prompts/greet/rollouts", headers=setup))
    assert listed["items"] == []


async def test_starting_a_rollout_needs_the_promote_scope(
    client: Client, setup: dict[str, str], make_key: KeyFactory
) -> None:
    writer = await make_key(Scope.READ, Scope.WRITE, name="writer")
    body = {"candidate_version": 2, "steps": STEPS, "guardrails": [{"metric": "converted"}]}
    assert (await client.post("/v1/prompts/greet/rollouts", json=body, headers=writer)).status_code == 403


async def test_an_experiment_cannot_start_on_a_prompt_in_rollout(client: Client, setup: dict[str, str]) -> None:
    rollout = await start_rollout(client, setup)
    body = {
        "key": "greet-test",
        "prompt": "greet",
        "variants": [{"key": "a", "prompt_version": 1}, {"key": "b", "prompt_version": 2}],
        "primary_metric": "converted",
    }
    await ok(await client.post("/v1/experiments", json=body, headers=setup), 201)
    response = await client.post("/v1/experiments/greet-test/start", headers=setup)
    assert response.status_code == 409
    assert rollout["experiment"] in problem(response)["detail"]


async def test_the_backing_experiment_moves_only_through_its_rollout(client: Client, setup: dict[str, str]) -> None:
    rollout = await start_rollout(client, setup)
    key = rollout["experiment"]
    stop = await client.post(f"/v1/experiments/{key}/stop", json={"winner": "candidate"}, headers=setup)
    assert stop.status_code == 409
    assert "/v1/rollouts" in problem(stop)["detail"]
    patch = await client.patch(
        f"/v1/experiments/{key}", json={"weights": {"production": 1, "candidate": 1}}, headers=setup
    )
    assert patch.status_code == 409
    experiment = await ok(await client.get(f"/v1/experiments/{key}", headers=setup))
    assert experiment["status"] == "running"


async def test_a_promotion_the_gate_refuses_pauses_the_rollout_at_its_last_step(
    client: Client, setup: dict[str, str]
) -> None:
    await ok(await client.post("/v1/evals/datasets", json={"name": "cases"}, headers=setup), 201)
    items = {"items": [{"variables": {"x": "a"}}]}
    await ok(await client.post("/v1/evals/datasets/cases/versions", json=items, headers=setup), 201)
    rollout = await start_rollout(client, setup, steps=[{"share": 1.0}])
    gate = {"dataset": {"name": "cases"}, "min_pass_rate": 0.5}  # set since: no evaluation run of version 2 meets it
    await ok(await client.put("/v1/prompts/greet/gates/production", json=gate, headers=setup))
    moved = await ok(await client.post(f"/v1/rollouts/{rollout['id']}/advance", headers=setup))
    assert moved["status"] == "paused"
    assert moved["reason"].startswith("the candidate's promotion was refused")
    resolved = await ok(await client.get("/v1/prompts/greet", params={"label": "production"}, headers=setup))
    assert resolved["version"]["version"] == 1
    experiment = await ok(await client.get(f"/v1/experiments/{rollout['experiment']}", headers=setup))
    assert experiment["status"] == "running"  # still at the candidate's full share, until aborted or resumed


async def test_a_prompt_with_a_slash_in_its_name_takes_rollouts_encoded(client: Client, admin: dict[str, str]) -> None:
    await ok(await client.post("/v1/prompts", json={"name": "team/greet"}, headers=admin), 201)
    for template in ("v1 {{ x }}", "v2 {{ x }}"):
        version = {"kind": "text", "template": template}
        await ok(await client.post("/v1/prompts/team%2Fgreet/versions", json=version, headers=admin), 201)
    promote = {"to": "production", "expected_current": None}
    await ok(await client.post("/v1/prompts/team%2Fgreet/versions/1/promote", json=promote, headers=admin))
    await make_metric(client, admin, "converted")
    rollout = await start_rollout(client, admin, prompt="team%2Fgreet")
    assert rollout["prompt"] == "team/greet"
    listed = await ok(await client.get("/v1/prompts/team%2Fgreet/rollouts", headers=admin))
    assert [r["id"] for r in listed["items"]] == [rollout["id"]]
