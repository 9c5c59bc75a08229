"""The promotion state machine, from the case files in tests/cases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from registry.lib.errors import RegistryError
from registry.lib.promotion import State, plan_promotion, plan_rollback

CASES = Path(__file__).parents[1] / "cases"


def load(name: str) -> list[list[Any]]:
    cases: list[list[Any]] = json.loads((CASES / name).read_text())
    return cases


def expect(plan: Any, expected: dict[str, Any]) -> None:
    if "error" in expected:
        with pytest.raises(RegistryError) as caught:
            plan()
        assert caught.value.type == expected["error"]
    else:
        changes = [[c.number, c.from_state.value, c.to_state.value, c.action] for c in plan()]
        assert changes == expected["changes"]


def holders(raw: dict[str, int]) -> dict[State, int]:
    return {State(state): number for state, number in raw.items()}


@pytest.mark.parametrize(
    ("inputs", "expected"), [c[1:] for c in load("promotion.json")], ids=[c[0] for c in load("promotion.json")]
)
def test_plan_promotion(inputs: dict[str, Any], expected: dict[str, Any]) -> None:
    expect(
        lambda: plan_promotion(
            target=inputs["target"],
            target_state=State(inputs["target_state"]),
            to=State(inputs["to"]),
            holders=holders(inputs["holders"]),
            expected_current=inputs["expected_current"],
            check_expected=inputs["check_expected"],
        ),
        expected,
    )


@pytest.mark.parametrize(
    ("inputs", "expected"), [c[1:] for c in load("rollback.json")], ids=[c[0] for c in load("rollback.json")]
)
def test_plan_rollback(inputs: dict[str, Any], expected: dict[str, Any]) -> None:
    expect(
        lambda: plan_rollback(
            target=inputs["target"],
            target_state=State(inputs["target_state"]),
            holders=holders(inputs["holders"]),
            expected_current=inputs["expected_current"],
            check_expected=inputs["check_expected"],
            was_in_production=inputs["was_in_production"],
        ),
        expected,
    )


def test_stale_expectation_reports_the_actual_holder() -> None:
    with pytest.raises(RegistryError) as caught:
        plan_promotion(
            target=3,
            target_state=State.DRAFT,
            to=State.PRODUCTION,
            holders={State.PRODUCTION: 2},
            expected_current=1,
            check_expected=True,
        )
    assert caught.value.extra == {"current": 2}
