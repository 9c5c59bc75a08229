"""Ratio and quantile metrics against GrowthBook's published cases, and the quantile sketch against numpy."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from scipy import stats as scipy_stats

from registry.stats import Arm, NotEnoughDataError, QuantileMoments, RatioMoments, compare, credible_interval
from registry.stats.quantiles import ACCURACY, bucket_of, quantile_of, value_of

# gbstats tests/test_gbstats.py RATIO_STATISTICS_DF ("zero" is the control), main and denominator of type count.
RATIO_CONTROL = RatioMoments.of_sums(100, 270, 848.79, 510, 810, -900)
RATIO_TREATMENT = RatioMoments.of_sums(120, 300, 869, 500, 800, -905)

# gbstats tests/bayesian/test_tests.py, the quantile test (nu = 0.9, n_star = n).
QUANTILE_CONTROL = QuantileMoments(11054, 11054, 0.9, 7.157987489967789, 7.098780136176828, 7.217194843758751)
QUANTILE_TREATMENT = QuantileMoments(10861, 10861, 0.9, 7.694499927525767, 7.64180598628119, 7.747193868770344)


def test_ratio_means_are_ratios_of_sums_as_in_gbstats() -> None:
    assert round(RATIO_CONTROL.mean, 9) == 0.529411765
    assert round(RATIO_TREATMENT.mean, 9) == 0.6


def test_ratio_relative_effect_matches_gbstats_frequentist_p_value() -> None:
    comparison = compare(Arm(RATIO_CONTROL), Arm(RATIO_TREATMENT))
    assert comparison.relative is not None
    assert round(comparison.relative.estimate, 9) == 0.133333333
    assert round(comparison.relative.p_value, 9) == 0.610663339


def test_ratio_chance_to_win_matches_gbstats_bayesian() -> None:
    assert round(compare(Arm(RATIO_CONTROL), Arm(RATIO_TREATMENT)).chance_to_win, 9) == 0.694926359


def test_ratio_variance_is_the_delta_method_on_per_unit_values() -> None:
    rng = np.random.default_rng(7)
    denominators = rng.integers(1, 6, size=400).astype(float)
    numerators = rng.binomial(denominators.astype(int), 0.1).astype(float)
    ratio = RatioMoments.of_sums(
        400,
        numerators.sum(),
        (numerators**2).sum(),
        denominators.sum(),
        (denominators**2).sum(),
        (numerators * denominators).sum(),
    )
    covariance = np.cov(numerators, denominators)  # sample (n - 1) covariance matrix
    mean_m, mean_d = numerators.mean(), denominators.mean()
    expected = (
        covariance[0, 0] / mean_d**2
        + covariance[1, 1] * mean_m**2 / mean_d**4
        - 2 * covariance[0, 1] * mean_m / mean_d**3
    )
    assert ratio.mean == pytest.approx(numerators.sum() / denominators.sum(), rel=1e-12)
    assert ratio.variance == pytest.approx(expected, rel=1e-9)


def test_quantile_absolute_effect_matches_gbstats_improper_flat_prior() -> None:
    comparison = compare(Arm(QUANTILE_CONTROL), Arm(QUANTILE_TREATMENT))
    assert comparison.absolute.estimate == pytest.approx(0.5365124375579775, abs=1e-12)
    assert credible_interval(comparison.absolute) == pytest.approx((0.4572559589115422, 0.6157689162044128), abs=1e-12)


def test_quantile_relative_effect_matches_gbstats_flat_prior() -> None:
    comparison = compare(Arm(QUANTILE_CONTROL), Arm(QUANTILE_TREATMENT))
    assert comparison.relative is not None
    # gbstats' "flat" prior has variance 1e6, which moves the 10th decimal.
    assert comparison.relative.estimate == pytest.approx(0.07495297222736319, abs=1e-9)
    assert credible_interval(comparison.relative) == pytest.approx((0.06341005842481906, 0.08649588602990732), abs=1e-9)


def test_quantile_with_collapsed_bounds_cannot_be_compared() -> None:
    collapsed = QuantileMoments(999, 999, 0.9, 5.0, 5.0, 5.0)
    assert collapsed.has_zero_variance
    with pytest.raises(NotEnoughDataError):
        compare(Arm(collapsed), Arm(QUANTILE_TREATMENT))


def test_too_few_values_for_a_p99_have_no_variance() -> None:
    # gbstats: n <= z^2 (1 - nu) / nu cannot bound a tail quantile.
    assert QuantileMoments(300, 300, 0.99, 5.0, 4.0, 6.0).has_zero_variance
    assert not QuantileMoments(400, 400, 0.99, 5.0, 4.0, 6.0).has_zero_variance


@pytest.mark.parametrize("value", [1e-6, 0.37, 1.0, 42.0, 1234.5678, 9.9e7, -3.5, -0.002])
def test_every_value_reads_back_within_the_sketch_accuracy(value: float) -> None:
    assert abs(value_of(bucket_of(value)) - value) <= ACCURACY * abs(value) * (1 + 1e-12)


def test_zero_and_tiny_values_share_the_zero_bucket() -> None:
    assert bucket_of(0.0) == bucket_of(1e-12) == bucket_of(-1e-12) == 0
    assert value_of(0) == 0.0


def _histogram(values: np.ndarray) -> Counter[int]:
    return Counter(bucket_of(float(v)) for v in values)


@pytest.mark.parametrize("nu", [0.5, 0.9, 0.95, 0.99])
def test_sketch_quantiles_are_within_accuracy_of_numpys_nearest_rank(nu: float) -> None:
    values = np.random.default_rng(11).lognormal(5.0, 0.8, size=5000)
    exact = float(np.quantile(values, nu, method="inverted_cdf"))
    assert quantile_of(_histogram(values), nu) == pytest.approx(exact, rel=ACCURACY)


def test_sketches_merge_by_adding_counts() -> None:
    values = np.random.default_rng(3).exponential(200.0, size=3000)
    merged = _histogram(values[:1000]) + _histogram(values[1000:])
    assert merged == _histogram(values)
    assert quantile_of(merged, 0.95) == quantile_of(_histogram(values), 0.95)


def test_quantile_statistic_from_the_sketch_matches_the_exact_order_statistics() -> None:
    """The estimate, bounds and variance computed independently from the raw values with numpy and scipy."""
    values = np.random.default_rng(5).gamma(2.0, 150.0, size=4000)
    nu, n = 0.95, len(values)
    z = float(scipy_stats.norm.ppf(0.975))
    spread = z * math.sqrt(nu * (1 - nu) / n)
    lower = float(np.quantile(values, nu - spread, method="inverted_cdf"))
    upper = float(np.quantile(values, nu + spread, method="inverted_cdf"))
    expected_variance = (n - 1) * ((upper - lower) / (2 * z)) ** 2

    statistic = QuantileMoments.of_histogram(_histogram(values), nu)

    assert statistic.n == n
    assert statistic.mean == pytest.approx(float(np.quantile(values, nu, method="inverted_cdf")), rel=ACCURACY)
    assert statistic.quantile_lower == pytest.approx(lower, rel=ACCURACY)
    assert statistic.quantile_upper == pytest.approx(upper, rel=ACCURACY)
    # The bounds' difference carries both bounds' error: (upper - lower) within ACCURACY * (upper + lower).
    width_error = ACCURACY * (upper + lower) / (upper - lower)
    assert statistic.variance == pytest.approx(expected_variance, rel=2 * width_error + width_error**2)


def test_a_slower_variant_has_a_significantly_higher_p95() -> None:
    rng = np.random.default_rng(9)
    control = QuantileMoments.of_histogram(_histogram(rng.gamma(2.0, 100.0, size=3000)), 0.95)
    slower = QuantileMoments.of_histogram(_histogram(rng.gamma(2.0, 130.0, size=3000)), 0.95)
    comparison = compare(Arm(control), Arm(slower), lower_is_better=True)
    assert comparison.absolute.estimate > 0
    assert comparison.absolute.p_value < 0.01
    assert comparison.chance_to_win < 0.01
