"""A proportion's interval holds the proportion itself, at 0 and at 1 too (results and evaluation runs alike)."""

from __future__ import annotations

from registry.evals.statistics import summarize
from registry.stats import wilson_interval


def test_the_wilson_interval_of_none_or_all_starts_at_0_or_ends_at_1() -> None:
    """0 conversions of 12 units gave [2.8e-17, 0.24] (the variant's mean 0 outside its own interval, in the
    experiment's results and an evaluation run's pass rate alike); 10 of 10 gave [.., 0.9999999999999999]."""
    for n in range(1, 200):
        assert wilson_interval(0.0, n)[0] == 0.0
        assert wilson_interval(1.0, n)[1] == 1.0
        assert wilson_interval(0.0, n, 0.01)[0] == 0.0
    low, high = summarize([False] * 12, [0.0] * 12).pass_rate_ci or (None, None)
    assert low == 0.0 < 0.24 < high < 0.25
    low, high = summarize([True] * 10, [1.0] * 10).pass_rate_ci or (None, None)
    assert high == 1.0
