"""Per-unit values and standings, from a JSON case file; and the sums' bookkeeping."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from registry.experiments.aggregation import (
    MetricRule,
    Observation,
    Sums,
    Window,
    aggregate,
    standing,
    unit_value,
    worth_storing,
)

CASES: dict[str, Any] = json.loads((Path(__file__).parent / "cases" / "aggregation.json").read_text())
EXPOSED = datetime(2026, 1, 1, tzinfo=UTC)
EXPERIMENT = 1
METRIC = 7


def parametrize(section: str) -> Any:
    return pytest.mark.parametrize("case", CASES[section], ids=[c[0] for c in CASES[section]])


@parametrize("aggregate")
def test_aggregate(case: list[Any]) -> None:
    _, aggregation, values, expected = case
    assert aggregate(values, aggregation) == expected


@parametrize("unit_value")
def test_unit_value(case: list[Any]) -> None:
    _, aggregation, events, phase_end, expected = case
    observations = [
        Observation(METRIC, EXPOSED + timedelta(seconds=e[0]), e[1], e[2] if len(e) > 2 else None) for e in events
    ]
    observations.append(Observation(METRIC + 1, EXPOSED, 100.0))  # another metric's event never counts
    window = Window(
        first_exposed_at=EXPOSED,
        phase_ended_at=None if phase_end is None else EXPOSED + timedelta(seconds=phase_end),
        grace=timedelta(seconds=60),
        lookback=timedelta(days=14),
    )
    assert list(unit_value(observations, MetricRule(METRIC, aggregation), window, EXPERIMENT)) == expected


@parametrize("standing")
def test_standing(case: list[Any]) -> None:
    _, variants, expected = case
    assert standing(variants) == expected


def test_a_units_contribution_is_taken_out_exactly() -> None:
    total = Sums.of(3.0, 1.0) + Sums.of(5.0, 2.0)
    assert total == Sums(2, 8.0, 34.0, 3.0, 5.0, 13.0)
    assert (total + -Sums.of(5.0, 2.0)) == Sums.of(3.0, 1.0)
    assert (Sums.of(2.0, 0.0) + -Sums.of(2.0, 0.0)).is_zero


def test_only_rows_that_change_the_sums_are_stored() -> None:
    assert not worth_storing(0.0, 0.0, zero_filled=True)
    assert worth_storing(0.0, 2.0, zero_filled=True)
    assert worth_storing(0.0, 0.0, zero_filled=False)
    assert not worth_storing(None, 3.0, zero_filled=False)
