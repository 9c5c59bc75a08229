"""The pure rules of alerting, from JSON cases: a signal's value from a window, quantiles, a series' states."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from registry.alerts.evaluation import INACTIVE, Condition, Window, quantile, signal_value, step

CASES = json.loads((Path(__file__).parent / "cases" / "evaluation.json").read_text())
START = datetime(2026, 12, 5, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize("case", CASES["values"], ids=[c[0] for c in CASES["values"]])
def test_signal_value(case: list[Any]) -> None:
    _, kind, window, window_seconds, min_count, expected = case
    value = signal_value(kind, Window(**window), window_seconds=window_seconds, min_count=min_count)
    assert value == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize("case", CASES["quantiles"], ids=[c[0] for c in CASES["quantiles"]])
def test_quantile(case: list[Any]) -> None:
    _, values, q, expected = case
    assert quantile([float(v) for v in values], q) == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize("case", CASES["steps"], ids=[c[0] for c in CASES["steps"]])
def test_step(case: list[Any]) -> None:
    _, condition, observations, expected = case
    state = INACTIVE
    seen = []
    for seconds, value in observations:
        state, transition = step(state, value, Condition(**condition), START + timedelta(seconds=seconds))
        seen.append([state.status, transition])
    assert seen == expected


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown alert kind"):
        signal_value("disk_full", Window(), window_seconds=60, min_count=1)
