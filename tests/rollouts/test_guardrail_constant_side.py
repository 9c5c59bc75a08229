"""A guardrail is tested when one side's values are all equal: a production that never failed (every unit 0) left
every candidate untested, however often it failed, so the rollout advanced and promoted it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from registry.stats.guardrails import Guardrail, check_guardrail
from registry.stats.moments import Arm, Moments
from tests.experiments.conftest import Client, flush_and_aggregate, in_app, make_metric, make_prompt, runtime_of
from tests.rollouts.conftest import FakeClock, check, ok, start_rollout

NEVER_FAILED = Arm(Moments(500, 0.0, 0.0, binomial=True))


def failing(units: int, failures: int) -> Arm:
    return Arm(Moments(units, float(failures), float(failures), binomial=True))


@pytest.mark.parametrize("relative", [True, False], ids=["relative", "absolute"])
def test_a_candidate_failing_half_its_units_against_a_production_that_never_failed_fails_its_guardrail(
    relative: bool,
) -> None:
    checked = check_guardrail(
        Guardrail("failed", True, 0.0, relative), NEVER_FAILED, failing(500, 250), alpha=0.01, tuning=5000.0
    )
    assert checked.failed
    assert checked.estimate == pytest.approx(0.5)


@pytest.mark.parametrize("failures", [0, 1, 3], ids=["none", "one", "three"])
def test_a_candidate_failing_as_rarely_as_production_passes(failures: int) -> None:
    checked = check_guardrail(
        Guardrail("failed", True, 0.0, False), NEVER_FAILED, failing(500, failures), alpha=0.01, tuning=5000.0
    )
    assert not checked.failed


def test_a_candidate_that_never_converts_fails_a_guardrail_where_higher_is_better() -> None:
    converting = failing(500, 250)
    checked = check_guardrail(
        Guardrail("converted", False, 0.1, True), converting, NEVER_FAILED, alpha=0.01, tuning=5000.0
    )
    assert checked.failed
    assert checked.estimate == pytest.approx(-1.0)


async def test_a_rollout_whose_candidate_fails_where_production_never_did_is_rolled_back(
    client: Client, admin: dict[str, str]
) -> None:
    await make_prompt(client, admin, "greet")
    await make_metric(client, admin, "task_failed", direction="lower")
    guardrails = [{"metric": "task_failed", "relative": False}]
    rollout = await start_rollout(
        client, admin, steps=[{"share": 0.5, "min_units": 1_000_000}, {"share": 1.0}], guardrails=guardrails
    )
    events = []
    for i in range(300):
        unit = f"user-{i}"
        rendered = await client.post(
            "/v1/prompts/greet/render", json={"variables": {"x": "a"}, "unit": unit}, headers=admin
        )
        if (await ok(rendered))["experiment"]["variant"] == "candidate" and i % 2 == 0:
            at = datetime.now(UTC).isoformat()
            events.append({"unit": unit, "metric": "task_failed", "idempotency_key": f"f-{i}", "timestamp": at})
    await ok(await client.post("/v1/events", json={"events": events}, headers=admin))
    await flush_and_aggregate(client)
    await in_app(client, runtime_of(client.app).experiments.events.flush)
    await flush_and_aggregate(client)
    action = await check(client, rollout["id"], FakeClock())
    shown = await ok(await client.get(f"/v1/rollouts/{rollout['id']}", headers=admin))
    assert action is not None
    assert action.kind == "rollback", shown["evidence"]
    assert (shown["status"], shown["reason"]) == ("rolled_back", "guardrail 'task_failed' is significantly worse")
