"""A variant's proportion has a Wilson interval: inside [0, 1] and with width at any number of units."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from registry.stats import Moments, mean_interval

CASES = json.loads((Path(__file__).parent / "cases" / "proportion_intervals.json").read_text())["cases"]


def proportion(successes: int, units: int) -> Moments:
    return Moments(units, float(successes), float(successes), binomial=True)


@pytest.mark.parametrize(("successes", "units", "alpha", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_proportion_has_the_wilson_interval(successes: int, units: int, alpha: float, expected: list[float]) -> None:
    interval = mean_interval(proportion(successes, units), alpha)
    assert [interval.ci_low, interval.ci_high] == pytest.approx(expected, abs=5e-5)
    assert 0.0 <= interval.ci_low <= interval.mean <= interval.ci_high <= 1.0
    assert interval.mean == successes / units


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_proportion_interval_narrows_with_more_units(case: list[Any]) -> None:
    _, successes, units, alpha, _ = case
    small = mean_interval(proportion(successes, units), alpha)
    large = mean_interval(proportion(successes * 100, units * 100), alpha)
    assert large.ci_high - large.ci_low < small.ci_high - small.ci_low


def test_no_units_give_an_empty_interval_at_zero() -> None:
    interval = mean_interval(proportion(0, 0))
    assert (interval.mean, interval.ci_low, interval.ci_high) == (0.0, 0.0, 0.0)
