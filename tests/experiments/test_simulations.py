"""Statistical properties, shown by simulation: uniform and independent assignment, calibrated tests."""

from __future__ import annotations

import numpy as np
import pytest
from prompt_registry_client.assignment import assign_variation, gb_hash
from scipy import stats as scipy_stats

from registry.stats import Arm, Moments, compare

pytestmark = pytest.mark.slow

UNITS = [f"user-{i}" for i in range(1_000_000)]


@pytest.fixture(scope="module")
def buckets() -> dict[str, np.ndarray]:
    """Hash version 2 of one million unit ids under two seeds."""
    return {seed: np.fromiter((gb_hash(seed, u, 2) for u in UNITS), float, len(UNITS)) for seed in ("exp-a", "exp-b")}


def test_hash_is_uniform_over_a_million_units(buckets: dict[str, np.ndarray]) -> None:
    counts = np.bincount((buckets["exp-a"] * 100).astype(int), minlength=100)
    assert scipy_stats.chisquare(counts).pvalue > 0.01
    split = np.bincount((buckets["exp-a"] >= 0.5).astype(int))
    assert scipy_stats.chisquare(split).pvalue > 0.01


def test_experiments_with_different_seeds_assign_independently(buckets: dict[str, np.ndarray]) -> None:
    table = np.zeros((10, 10), dtype=int)
    np.add.at(table, ((buckets["exp-a"] * 10).astype(int), (buckets["exp-b"] * 10).astype(int)), 1)
    assert scipy_stats.chi2_contingency(table).pvalue > 0.01
    halves = np.zeros((2, 2), dtype=int)
    np.add.at(halves, ((buckets["exp-a"] >= 0.5).astype(int), (buckets["exp-b"] >= 0.5).astype(int)), 1)
    assert scipy_stats.chi2_contingency(halves).pvalue > 0.01


def test_a_a_experiments_have_a_false_positive_rate_near_alpha() -> None:
    """500 null experiments (half conversion rates, half skewed continuous values), units assigned by hash."""
    rng = np.random.default_rng(42)
    units = UNITS[:2000]
    experiments, false_positives = 500, 0
    for k in range(experiments):
        in_b = np.fromiter((assign_variation(u, key=f"aa-{k}", variations=2).variation for u in units), int, len(units))
        binomial = k % 2 == 0
        values = (rng.random(len(units)) < 0.1).astype(float) if binomial else rng.lognormal(1.0, 0.8, len(units))
        arms = [
            Arm(Moments(int(mask.sum()), float(values[mask].sum()), float((values[mask] ** 2).sum()), binomial))
            for mask in (in_b == 0, in_b == 1)
        ]
        false_positives += compare(arms[0], arms[1]).absolute.p_value < 0.05
    rate = false_positives / experiments
    assert 0.03 <= rate <= 0.07, rate
