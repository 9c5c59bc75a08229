"""A rollout step moves on only with evidence: each guardrail observed in at least one unit of each arm it compares.

With the default minimums (no seconds, no units) a rollout whose guardrail metrics never had any data passed every
step to 100% and was promoted: a guardrail without data cannot fail, and nothing else held the step. Now the check
holds, and the rollout (its ``lacking_data``, its evidence, the console's page) says which guardrail lacks data in
which arm. A unit counts as its guardrail's test counts it: for a zero-filled metric (``any``, ``count``, ``sum``:
``converted`` here) every exposed unit has a value, 0 without events; for the others only units with a value. At
full share production takes no traffic, so the candidate alone must have been seen.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from html import unescape
from typing import Any

import pytest

from tests.console.test_dec6_refused_forms import sign_in
from tests.experiments.conftest import Client, flush_and_aggregate, in_app, make_metric, make_prompt, runtime_of
from tests.rollouts.conftest import check, data_in_arms, ok, start_rollout
from tests.rollouts.simulation import FakeClock

BOTH = ["production", "candidate"]


@pytest.fixture
async def setup(client: Client, admin: dict[str, str]) -> dict[str, str]:
    await make_prompt(client, admin, "greet")
    await make_metric(client, admin, "converted")
    return admin


async def shown(client: Client, headers: dict[str, str], rollout: dict[str, Any]) -> dict[str, Any]:
    return await ok(await client.get(f"/v1/rollouts/{rollout['id']}", headers=headers))


async def test_a_rollout_without_any_guardrail_data_holds_at_its_first_step_saying_which_guardrail_lacks_it(
    client: Client, setup: dict[str, str]
) -> None:
    rollout = await start_rollout(client, setup)  # four steps, none with a minimum
    clock = FakeClock()
    for _ in range(3):
        clock.advance(3600)
        action = await check(client, rollout["id"], clock)
        assert action is not None
        assert (action.kind, action.step) == ("hold", 0)
    body = await shown(client, setup, rollout)
    assert (body["status"], body["step"], body["share"]) == ("running", 0, 0.05)
    assert body["lacking_data"] == [{"metric": "converted", "arms": BOTH}]
    evidence = body["evidence"]
    assert evidence["action"] == "hold"
    assert evidence["reasons"] == ["guardrail 'converted' has no data yet in the production and the candidate arms"]
    assert evidence["lacking_data"] == [{"metric": "converted", "arms": BOTH}]
    assert evidence["observed"] == {"converted": {"production": 0, "candidate": 0}}
    assert [e["action"] for e in body["events"]] == ["started"]  # never advanced
    production = await ok(await client.get("/v1/prompts/greet", params={"label": "production"}, headers=setup))
    assert production["version"]["version"] == 1


async def test_with_units_in_both_arms_the_step_moves_on_and_nothing_is_lacking(
    client: Client, setup: dict[str, str]
) -> None:
    rollout = await start_rollout(client, setup, steps=[{"share": 0.5}, {"share": 1.0}])
    await data_in_arms(client, setup)
    action = await check(client, rollout["id"], FakeClock())
    assert action is not None
    assert (action.kind, action.step) == ("advance", 1)
    body = await shown(client, setup, rollout)
    assert body["lacking_data"] == []
    assert body["events"][-1]["detail"]["evidence"]["lacking_data"] == []
    await sign_in(client, setup["Authorization"].removeprefix("Bearer "))
    page = unescape(await ok_page(client, f"/console/rollouts/{rollout['id']}"))  # a step moved on: nothing held
    assert "Held at this step" not in page
    assert "the step holds" not in page
    observed = body["events"][-1]["detail"]["evidence"]["observed"]["converted"]
    assert observed["production"] >= 1
    assert observed["candidate"] >= 1


async def events_for(client: Client, headers: dict[str, str], metric: str, arm: str, count: int) -> None:
    """``count`` new units exposed until ``count`` of them are in ``arm``, each of those with a value of ``metric``."""
    posted: list[dict[str, Any]] = []
    for _ in range(5000):
        unit = f"unit-{uuid.uuid4().hex}"
        body = {"variables": {"x": "hi"}, "unit": unit}
        rendered = await ok(await client.post("/v1/prompts/greet/render", json=body, headers=headers))
        if rendered["experiment"]["variant"] == arm:
            at = datetime.now(UTC).isoformat()
            posted.append({"unit": unit, "metric": metric, "value": 3.0, "idempotency_key": unit, "timestamp": at})
            if len(posted) == count:
                break
    await ok(await client.post("/v1/events", json={"events": posted}, headers=headers))
    await flush_and_aggregate(client)
    await in_app(client, runtime_of(client.app).experiments.events.flush)
    await flush_and_aggregate(client)


async def test_a_metric_of_units_with_values_holds_until_the_candidate_has_one_naming_that_arm_alone(
    client: Client, setup: dict[str, str]
) -> None:
    """A mean of values counts only units with a value: exposed units in both arms are not evidence for it."""
    await make_metric(client, setup, "latency", kind="continuous", aggregation="mean", direction="lower")
    rollout = await start_rollout(
        client,
        setup,
        steps=[{"share": 0.5}, {"share": 1.0}],
        guardrails=[{"metric": "converted"}, {"metric": "latency"}],
    )
    await events_for(client, setup, "latency", "production", 3)  # production's units have values, and both arms units
    action = await check(client, rollout["id"], FakeClock())
    assert action is not None
    assert (action.kind, action.step) == ("hold", 0)
    body = await shown(client, setup, rollout)
    assert body["lacking_data"] == [{"metric": "latency", "arms": ["candidate"]}]  # converted counts every unit
    assert body["evidence"]["reasons"] == ["guardrail 'latency' has no data yet in the candidate arm"]
    await sign_in(client, setup["Authorization"].removeprefix("Bearer "))
    page = unescape(await ok_page(client, f"/console/rollouts/{rollout['id']}"))
    assert "no data yet in the candidate arm: the step holds" in page  # latency's row; converted's has its result
    assert page.count(": the step holds") == 1
    await events_for(client, setup, "latency", "candidate", 3)
    action = await check(client, rollout["id"], FakeClock())
    assert action is not None
    assert (action.kind, action.step) == ("advance", 1)
    assert (await shown(client, setup, rollout))["lacking_data"] == []
    page = unescape(await ok_page(client, f"/console/rollouts/{rollout['id']}"))
    assert "Held at this step" not in page
    assert "the step holds" not in page


async def ok_page(client: Client, path: str) -> str:
    response = await client.get(path)
    assert response.status_code == 200, response.text
    return response.text


async def test_at_full_share_the_candidate_alone_must_have_data_before_the_promotion(
    client: Client, setup: dict[str, str]
) -> None:
    rollout = await start_rollout(client, setup, steps=[{"share": 1.0}])
    action = await check(client, rollout["id"], FakeClock())
    assert action is not None
    assert (action.kind, action.step) == ("hold", 0)
    body = await shown(client, setup, rollout)
    assert body["lacking_data"] == [{"metric": "converted", "arms": ["candidate"]}]
    assert body["status"] == "running"
    await data_in_arms(client, setup, ("candidate",))
    action = await check(client, rollout["id"], FakeClock())
    assert action is not None
    assert action.kind == "promote"
    body = await shown(client, setup, rollout)
    assert (body["status"], body["lacking_data"]) == ("completed", [])


async def test_the_steps_minimums_still_hold_a_step_that_has_its_data(client: Client, setup: dict[str, str]) -> None:
    rollout = await start_rollout(client, setup, steps=[{"share": 0.5, "min_units": 1_000_000}, {"share": 1.0}])
    await data_in_arms(client, setup)
    action = await check(client, rollout["id"], FakeClock())
    assert action is not None
    assert (action.kind, action.step) == ("hold", 0)
    assert len(action.reasons) == 1
    assert "minimum units" in action.reasons[0]
    assert (await shown(client, setup, rollout))["lacking_data"] == []


async def test_an_advance_by_hand_still_moves_a_step_without_data_and_its_new_step_is_not_yet_judged(
    client: Client, setup: dict[str, str]
) -> None:
    """The person who advances decides (recorded with the reason); the latest check spoke of the step left."""
    rollout = await start_rollout(client, setup)
    await check(client, rollout["id"], FakeClock())
    assert (await shown(client, setup, rollout))["lacking_data"] == [{"metric": "converted", "arms": BOTH}]
    moved = await ok(
        await client.post(f"/v1/rollouts/{rollout['id']}/advance", json={"reason": "looked at it"}, headers=setup)
    )
    assert (moved["step"], moved["lacking_data"]) == (1, [])


async def test_the_console_rollout_page_says_the_step_is_held_and_which_guardrail_lacks_data(
    client: Client, setup: dict[str, str]
) -> None:
    rollout = await start_rollout(client, setup)
    await check(client, rollout["id"], FakeClock())
    await sign_in(client, setup["Authorization"].removeprefix("Bearer "))
    text = unescape(await ok_page(client, f"/console/rollouts/{rollout['id']}"))
    assert "Held at this step: guardrail" in text
    assert 'id="rollout-held"' in text
    held = text[text.index('id="rollout-held"') :]
    assert '<span class="mono">converted</span> has no data yet in the production and the candidate arms' in held
    assert "no data yet in the production and the candidate arms: the step holds" in text
    live = unescape((await client.get(f"/console/rollouts/{rollout['id']}/live")).text)
    assert "Held at this step" in live
