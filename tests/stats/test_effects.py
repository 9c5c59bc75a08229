"""The statistics engine against GrowthBook's published results and against scipy on the same data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats as scipy_stats

from registry.stats import (
    Arm,
    Covariate,
    Moments,
    NotEnoughDataError,
    benjamini_hochberg,
    compare,
    credible_interval,
    holm,
    mean_interval,
    srm_p_value,
)

REFERENCE = json.loads((Path(__file__).parent / "cases" / "gbstats_reference.json").read_text())["cases"]
TOLERANCE = 1e-9


def moments(spec: dict[str, Any]) -> Moments:
    return Moments(spec["n"], spec["sum"], spec["sum_squares"], spec.get("binomial", False))


def arm(spec: dict[str, Any]) -> Arm:
    covariate = Covariate(moments(spec["pre"]), spec["cross_sum"]) if "pre" in spec else None
    return Arm(moments(spec), covariate)


def of_values(values: np.ndarray, binomial: bool = False) -> Moments:
    return Moments(len(values), float(values.sum()), float((values**2).sum()), binomial)


@pytest.mark.parametrize("case", REFERENCE, ids=[c[0] for c in REFERENCE])
def test_matches_growthbook_reference_results(case: list[Any]) -> None:
    _, control, treatment, options, expected = case
    comparison = compare(arm(control), arm(treatment), sequential_tuning=options.get("sequential_tuning"))
    if options["effect"] == "absolute":
        effect = comparison.absolute
    elif options.get("sequential_tuning"):
        assert comparison.sequential_relative is not None
        effect = comparison.sequential_relative
    else:
        assert comparison.relative is not None
        effect = comparison.relative
    ci = credible_interval(effect) if options["effect"] == "bayesian" else (effect.ci_low, effect.ci_high)
    assert round(effect.estimate, 5) == pytest.approx(expected["estimate"], abs=1e-12)
    assert round(effect.std_error, 5) == pytest.approx(expected["std_error"], abs=1e-12)
    assert [round(ci[0], 5), round(ci[1], 5)] == pytest.approx(expected["ci"], abs=1e-12)
    if "p_value" in expected:
        assert round(effect.p_value, 5) == pytest.approx(expected["p_value"], abs=1e-12)
    if "chance_to_win" in expected:
        assert round(comparison.chance_to_win, 5) == pytest.approx(expected["chance_to_win"], abs=1e-12)


@pytest.fixture(scope="module")
def samples() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(20261123)
    return rng.lognormal(2.0, 0.6, size=1800), rng.lognormal(2.05, 0.65, size=2100)


def test_welch_matches_scipy_ttest_ind(samples: tuple[np.ndarray, np.ndarray]) -> None:
    control, treatment = samples
    result = compare(Arm(of_values(control)), Arm(of_values(treatment)))
    expected = scipy_stats.ttest_ind(treatment, control, equal_var=False)
    interval = expected.confidence_interval(0.95)
    assert result.absolute.estimate == pytest.approx(treatment.mean() - control.mean(), abs=TOLERANCE)
    assert result.absolute.estimate / result.absolute.std_error == pytest.approx(expected.statistic, abs=TOLERANCE)
    assert result.dof == pytest.approx(expected.df, abs=1e-6)
    assert result.absolute.p_value == pytest.approx(expected.pvalue, abs=TOLERANCE)
    assert (result.absolute.ci_low, result.absolute.ci_high) == pytest.approx(
        (interval.low, interval.high), abs=TOLERANCE
    )


def test_proportions_match_scipy_with_p_times_one_minus_p_variance() -> None:
    control, treatment = Moments(5000, 612, 612, True), Moments(5100, 690, 690, True)
    result = compare(Arm(control), Arm(treatment))
    expected = scipy_stats.ttest_ind_from_stats(
        treatment.mean,
        np.sqrt(treatment.mean * (1 - treatment.mean)),
        treatment.n,
        control.mean,
        np.sqrt(control.mean * (1 - control.mean)),
        control.n,
        equal_var=False,
    )
    assert result.absolute.p_value == pytest.approx(expected.pvalue, abs=TOLERANCE)
    assert result.absolute.estimate / result.absolute.std_error == pytest.approx(expected.statistic, abs=TOLERANCE)


def test_variant_interval_matches_scipy_t_interval(samples: tuple[np.ndarray, np.ndarray]) -> None:
    control, _ = samples
    interval = mean_interval(of_values(control))
    low, high = scipy_stats.t.interval(0.95, len(control) - 1, loc=control.mean(), scale=scipy_stats.sem(control))
    assert interval.mean == pytest.approx(control.mean(), abs=TOLERANCE)
    assert interval.std_dev == pytest.approx(control.std(ddof=1), abs=TOLERANCE)
    assert (interval.ci_low, interval.ci_high) == pytest.approx((low, high), abs=TOLERANCE)


def test_relative_difference_uses_the_delta_method(samples: tuple[np.ndarray, np.ndarray]) -> None:
    control, treatment = samples
    result = compare(Arm(of_values(control)), Arm(of_values(treatment)))
    assert result.relative is not None
    mean_a, mean_b = control.mean(), treatment.mean()
    var_a, var_b = control.var(ddof=1) / len(control), treatment.var(ddof=1) / len(treatment)
    delta_variance = var_b / mean_a**2 + var_a * mean_b**2 / mean_a**4
    assert result.relative.estimate == pytest.approx((mean_b - mean_a) / mean_a, abs=TOLERANCE)
    assert result.relative.std_error == pytest.approx(np.sqrt(delta_variance), abs=TOLERANCE)


def test_cuped_equals_welch_on_theta_adjusted_values() -> None:
    rng = np.random.default_rng(7)
    pre_a, pre_b = rng.normal(10, 3, 1500), rng.normal(10, 3, 1600)
    post_a = 0.8 * pre_a + rng.normal(2, 1, 1500)
    post_b = 0.8 * pre_b + rng.normal(2.1, 1, 1600)
    a = Arm(of_values(post_a), Covariate(of_values(pre_a), float((post_a * pre_a).sum())))
    b = Arm(of_values(post_b), Covariate(of_values(pre_b), float((post_b * pre_b).sum())))
    result = compare(a, b)
    pre, post = np.concatenate([pre_a, pre_b]), np.concatenate([post_a, post_b])
    theta = np.cov(post, pre, ddof=1)[0, 1] / pre.var(ddof=1)
    expected = scipy_stats.ttest_ind(post_b - theta * pre_b, post_a - theta * pre_a, equal_var=False)
    assert result.cuped_theta == pytest.approx(theta, abs=TOLERANCE)
    assert result.absolute.p_value == pytest.approx(expected.pvalue, abs=TOLERANCE)
    assert result.absolute.estimate / result.absolute.std_error == pytest.approx(expected.statistic, abs=TOLERANCE)
    unadjusted = compare(Arm(a.post), Arm(b.post))
    assert result.absolute.std_error < unadjusted.absolute.std_error / 2


def test_lower_is_better_flips_the_chance_to_win(samples: tuple[np.ndarray, np.ndarray]) -> None:
    control, treatment = samples
    higher = compare(Arm(of_values(control)), Arm(of_values(treatment)))
    lower = compare(Arm(of_values(control)), Arm(of_values(treatment)), lower_is_better=True)
    assert lower.chance_to_win == pytest.approx(1 - higher.chance_to_win, abs=1e-15)


def test_sequential_interval_is_wider_than_the_fixed_one(samples: tuple[np.ndarray, np.ndarray]) -> None:
    control, treatment = samples
    result = compare(Arm(of_values(control)), Arm(of_values(treatment)), sequential_tuning=5000)
    assert result.sequential_absolute is not None
    fixed, sequential = result.absolute, result.sequential_absolute
    assert sequential.ci_low < fixed.ci_low
    assert sequential.ci_high > fixed.ci_high
    assert sequential.p_value >= fixed.p_value


def test_too_few_units_or_no_variance_is_not_compared() -> None:
    with pytest.raises(NotEnoughDataError):
        compare(Arm(Moments(1, 1.0, 1.0)), Arm(Moments(10, 5.0, 5.0)))
    with pytest.raises(NotEnoughDataError):
        compare(Arm(Moments(10, 0.0, 0.0, True)), Arm(Moments(10, 0.0, 0.0, True)))


def test_srm_matches_scipy_chisquare() -> None:
    observed, weights = [10_400, 9_700, 4_900], [0.4, 0.4, 0.2]
    expected = scipy_stats.chisquare(observed, [w * sum(observed) for w in weights])
    assert srm_p_value(observed, weights) == pytest.approx(expected.pvalue, abs=TOLERANCE)


def test_srm_flags_a_one_percent_imbalance_at_200000_units() -> None:
    assert srm_p_value([101_000, 99_000], [0.5, 0.5]) < 0.001


def test_srm_does_not_flag_a_balanced_split() -> None:
    assert srm_p_value([100_000, 100_000], [0.5, 0.5]) == pytest.approx(1.0)
    assert srm_p_value([100_150, 99_850], [0.5, 0.5]) > 0.001


def test_benjamini_hochberg_matches_scipy() -> None:
    p_values = [0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, 0.212, 0.216]
    expected = scipy_stats.false_discovery_control(p_values, method="bh")
    assert benjamini_hochberg(p_values) == pytest.approx(list(expected), abs=TOLERANCE)


def test_holm_multiplies_by_remaining_hypotheses_and_keeps_order() -> None:
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
