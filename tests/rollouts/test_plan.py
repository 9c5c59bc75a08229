"""A rollout's plan: GrowthBook's percentage rollout as assignment, the plan's checks, and each check's action."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prompt_registry_client.assignment import gb_hash

from registry.rollouts.plan import Step, included_in_rollout, next_action, step_problems
from registry.stats.guardrails import GuardrailDecision

CASES = Path(__file__).parent / "cases"
NEXT_ACTION = json.loads((CASES / "next_action.json").read_text())["cases"]
STEP_PROBLEMS = json.loads((CASES / "step_problems.json").read_text())["cases"]
UNITS = [f"user-{i}" for i in range(10_000)]
SEED = "rollout-7f3a"


def steps_of(spec: list[list[float]]) -> list[Step]:
    return [Step(share, seconds, int(units)) for share, seconds, units in spec]


@pytest.mark.parametrize("case", NEXT_ACTION, ids=[c[0] for c in NEXT_ACTION])
def test_next_action(case: list[Any]) -> None:
    _, steps, current, elapsed, units, rollback, kind, step = case
    decision = GuardrailDecision(rollback, [], 1.0, False)
    started = datetime(2026, 12, 4, 12, tzinfo=UTC)
    action = next_action(
        steps_of(steps),
        current,
        started_at=started,
        now=started + timedelta(seconds=elapsed),
        units=units,
        decision=decision,
    )
    assert (action.kind, action.step) == (kind, step)
    assert bool(action.reasons) == (kind == "hold")  # a rollback's reasons are the decision's (none here)


@pytest.mark.parametrize("case", STEP_PROBLEMS, ids=[c[0] for c in STEP_PROBLEMS])
def test_step_problems(case: list[Any]) -> None:
    _, steps, fields = case
    assert [f for f, _ in step_problems(steps_of(steps))] == fields


def test_a_unit_that_got_the_candidate_keeps_it_as_the_share_grows() -> None:
    shares = [0.05, 0.25, 0.5, 1.0]
    for previous, share in itertools.pairwise(shares):
        before = {u for u in UNITS if included_in_rollout(SEED, u, previous)}
        after = {u for u in UNITS if included_in_rollout(SEED, u, share)}
        assert before <= after


@pytest.mark.parametrize("share", [0.05, 0.25, 0.5])
def test_the_candidates_share_of_units_is_the_steps_share(share: float) -> None:
    included = sum(included_in_rollout(SEED, u, share) for u in UNITS)
    # Binomial: within 4 standard deviations of the expected count.
    assert abs(included - share * len(UNITS)) <= 4 * (len(UNITS) * share * (1 - share)) ** 0.5


def test_none_at_zero_and_everyone_at_one() -> None:
    assert not any(included_in_rollout(SEED, u, 0.0) for u in UNITS)
    assert all(included_in_rollout(SEED, u, 1.0) for u in UNITS)
    assert not included_in_rollout(SEED, "", 1.0)  # GrowthBook: no hash value, not included


def test_assignment_is_growthbooks_hash_under_the_fixed_seed() -> None:
    for unit in UNITS[:500]:
        bucket = gb_hash(SEED, unit, 2)
        assert bucket is not None
        assert included_in_rollout(SEED, unit, 0.3) == (bucket <= 0.3)
    other_seed = {u for u in UNITS if included_in_rollout("another", u, 0.3)}
    assert other_seed != {u for u in UNITS if included_in_rollout(SEED, u, 0.3)}
