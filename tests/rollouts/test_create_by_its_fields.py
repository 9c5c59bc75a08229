"""A rollout is created as its own fields say: a guardrail's direction is its metric's (it rolls back what the
metric calls worse, never what it calls better), and what cannot be (a guardrail contradicting its metric, an
unknown config, a version past the column, production's own version with its own config) is refused naming the
rollout's field, with nothing written."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import problem
from tests.experiments.conftest import Client, flush_and_aggregate, in_app, make_metric, make_prompt, runtime_of
from tests.rollouts.conftest import FakeClock, check, ok, start_rollout

ABSOLUTE = [{"metric": "converted", "relative": False}]  # any significant change in the conversion rate
HOLD = [{"share": 0.5, "min_units": 1_000_000}, {"share": 1.0}]  # half the traffic until the guardrail decides


@pytest.fixture
async def setup(client: Client, admin: dict[str, str]) -> dict[str, str]:
    """Prompt 'greet' (version 1 in production, version 2 the candidate) and 'converted', where higher is better."""
    await make_prompt(client, admin, "greet")
    await make_metric(client, admin, "converted", direction="higher")
    return admin


async def written(engine: AsyncEngine) -> tuple[int, int]:
    async with engine.connect() as connection:
        rollouts = (await connection.execute(text("SELECT count(*) FROM rollouts"))).scalar_one()
        experiments = (await connection.execute(text("SELECT count(*) FROM experiments"))).scalar_one()
    return rollouts, experiments


async def converting(client: Client, headers: dict[str, str], rollout: dict[str, object], better: str) -> None:
    """300 units rendered through the rollout; four in five of the ``better`` side's convert, one in ten of the
    other's; then one check."""
    events = []
    for i in range(300):
        unit = f"user-{i}"
        rendered = await client.post(
            "/v1/prompts/greet/render", json={"variables": {"x": "a"}, "unit": unit}, headers=headers
        )
        variant = (await ok(rendered))["experiment"]["variant"]
        if (variant == better and i % 5 != 0) or (variant != better and i % 10 == 0):
            at = datetime.now(UTC).isoformat()
            events.append({"unit": unit, "metric": "converted", "idempotency_key": f"c-{i}", "timestamp": at})
    await ok(await client.post("/v1/events", json={"events": events}, headers=headers))
    await flush_and_aggregate(client)
    await in_app(client, runtime_of(client.app).experiments.events.flush)
    await flush_and_aggregate(client)


async def test_a_candidate_converting_more_is_not_rolled_back_by_a_guardrail_left_to_its_metric(
    client: Client, setup: dict[str, str]
) -> None:
    rollout = await start_rollout(client, setup, steps=HOLD, guardrails=ABSOLUTE)
    assert rollout["guardrails"][0]["direction"] == "higher"
    await converting(client, setup, rollout, better="candidate")
    action = await check(client, rollout["id"], FakeClock())
    shown = await ok(await client.get(f"/v1/rollouts/{rollout['id']}", headers=setup))
    [guardrail] = shown["evidence"]["guardrails"]
    assert guardrail["estimate"] > 0  # the candidate converts more: better, by the metric
    assert action is not None
    assert action.kind == "hold", shown["evidence"]
    assert shown["status"] == "running"


async def test_a_candidate_converting_less_is_rolled_back_by_a_guardrail_left_to_its_metric(
    client: Client, setup: dict[str, str]
) -> None:
    rollout = await start_rollout(client, setup, steps=HOLD, guardrails=ABSOLUTE)
    await converting(client, setup, rollout, better="production")
    action = await check(client, rollout["id"], FakeClock())
    shown = await ok(await client.get(f"/v1/rollouts/{rollout['id']}", headers=setup))
    assert action is not None
    assert action.kind == "rollback", shown["evidence"]
    assert (shown["status"], shown["reason"]) == ("rolled_back", "guardrail 'converted' is significantly worse")


async def test_a_guardrail_contradicting_its_metrics_direction_is_refused_naming_it(
    client: Client, setup: dict[str, str], clean_database: AsyncEngine
) -> None:
    body = {"candidate_version": 2, "steps": HOLD, "guardrails": [{"metric": "converted", "direction": "lower"}]}
    response = await client.post("/v1/prompts/greet/rollouts", json=body, headers=setup)
    assert response.status_code == 422
    assert [e["field"] for e in problem(response)["errors"]] == ["guardrails[0].direction"]
    assert await written(clean_database) == (0, 0)
    agreeing = {**body, "guardrails": [{"metric": "converted", "direction": "higher"}]}
    await ok(await client.post("/v1/prompts/greet/rollouts", json=agreeing, headers=setup), 201)


async def test_an_unknown_config_is_refused_naming_the_rollouts_config_field(
    client: Client, setup: dict[str, str], clean_database: AsyncEngine
) -> None:
    body = {"candidate_version": 2, "steps": HOLD, "guardrails": [{"metric": "converted"}]}
    response = await client.post(
        "/v1/prompts/greet/rollouts", json={**body, "config": {"name": "nowhere", "version": 1}}, headers=setup
    )
    assert response.status_code == 422
    assert [e["field"] for e in problem(response)["errors"]] == ["config"]
    assert "nowhere" in problem(response)["errors"][0]["message"]
    production = {**body, "candidate_version": 1, "config": {"name": "nowhere", "version": 1}}
    response = await client.post("/v1/prompts/greet/rollouts", json=production, headers=setup)
    assert [e["field"] for e in problem(response)["errors"]] == ["config"]
    assert await written(clean_database) == (0, 0)


async def test_a_candidate_version_past_the_version_column_is_refused_naming_it(
    client: Client, setup: dict[str, str], clean_database: AsyncEngine
) -> None:
    body = {"candidate_version": 2**31, "steps": HOLD, "guardrails": [{"metric": "converted"}]}
    response = await client.post("/v1/prompts/greet/rollouts", json=body, headers=setup)
    assert response.status_code == 422
    assert [e["field"] for e in problem(response)["errors"]] == ["candidate_version"]
    assert await written(clean_database) == (0, 0)


async def test_a_rollout_of_production_with_its_own_config_is_refused_as_changing_nothing(
    client: Client, admin: dict[str, str], clean_database: AsyncEngine
) -> None:
    await ok(await client.post("/v1/configs", json={"name": "cfg"}, headers=admin), 201)
    await ok(
        await client.post("/v1/configs/cfg/versions", json={"backend": "openai", "model": "m1"}, headers=admin), 201
    )
    await ok(
        await client.post("/v1/configs/cfg/versions", json={"backend": "openai", "model": "m2"}, headers=admin), 201
    )
    await ok(await client.post("/v1/prompts", json={"name": "greet"}, headers=admin), 201)
    version = {"kind": "text", "template": "hi {{ x }}", "config": {"name": "cfg", "version": 1}}
    await ok(await client.post("/v1/prompts/greet/versions", json=version, headers=admin), 201)
    promote = {"to": "production", "expected_current": None}
    await ok(await client.post("/v1/prompts/greet/versions/1/promote", json=promote, headers=admin))
    await make_metric(client, admin, "converted")
    body = {"candidate_version": 1, "steps": [{"share": 1.0}], "guardrails": [{"metric": "converted"}]}
    same = await client.post(
        "/v1/prompts/greet/rollouts", json={**body, "config": {"name": "cfg", "version": 1}}, headers=admin
    )
    assert same.status_code == 422
    assert [e["field"] for e in problem(same)["errors"]] == ["config"]
    assert await written(clean_database) == (0, 0)
    other = {**body, "config": {"name": "cfg", "version": 2}}  # production's version with another config: a change
    await ok(await client.post("/v1/prompts/greet/rollouts", json=other, headers=admin), 201)
