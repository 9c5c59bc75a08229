"""Rollout guardrails: gbstats' one-sided always-valid bounds, the decision, and simulated rollouts.

The simulations count decisions (how many rollouts rolled back, after how many units); nothing is timed.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.integrate import quad
from scipy.stats import beta

from registry.stats import Arm, Moments, QuantileMoments, compare, srm_p_value
from registry.stats.guardrails import (
    SEQUENTIAL_SRM_THRESHOLD,
    SRM_SHARE_OF_ALPHA,
    Guardrail,
    check_guardrail,
    decide,
    one_sided_halfwidth,
    rollout_levels,
    sequential_srm_p_value,
    srm_log_bayes_factor,
)
from registry.stats.quantiles import bucket_of

# gbstats tests/frequentist/test_tests.py, TestSequentialOneSided{Greater,Lesser}TTest (alpha 0.05, tuning 5000).
CONTROL = Arm(Moments(3000, 1396.87, 52377.9767))
TREATMENT = Arm(Moments(3461, 2422.7, 134698.29))
GBSTATS_BOUNDS = [
    # (relative, greater: the lower bound; lesser: the upper bound)
    (True, -0.42356454602790883, 1.4302867177403806),
    (False, -0.12656844172804982, 0.5953217750613832),
]
ALPHA = 0.05


@pytest.mark.parametrize(("relative", "lower", "upper"), GBSTATS_BOUNDS, ids=["relative", "absolute"])
def test_one_sided_bounds_match_gbstats(relative: bool, lower: float, upper: float) -> None:
    comparison = compare(CONTROL, TREATMENT)
    effect = comparison.relative if relative else comparison.absolute
    assert effect is not None
    halfwidth = one_sided_halfwidth(effect.std_error, CONTROL.n + TREATMENT.n, 0.05, 5000.0)
    assert round(effect.estimate - halfwidth, 5) == round(lower, 5)
    assert round(effect.estimate + halfwidth, 5) == round(upper, 5)


@pytest.mark.parametrize(("lower_is_better", "bound"), [(True, -0.42356454602790883), (False, 1.4302867177403806)])
def test_a_guardrail_checks_the_bound_on_the_side_of_worse(lower_is_better: bool, bound: float) -> None:
    check = check_guardrail(Guardrail("m", lower_is_better), CONTROL, TREATMENT, alpha=0.05, tuning=5000.0)
    assert check.worst_bound == pytest.approx(bound, abs=1e-9)
    assert not check.failed  # 0 lies inside either one-sided interval


def proportion(n: int, p: float) -> Arm:
    successes = round(n * p)
    return Arm(Moments(n, successes, successes, binomial=True))


ERRORS = Guardrail("errors", lower_is_better=True, tolerance=0.0, relative=False)


def test_five_points_more_errors_fail_the_guardrail() -> None:
    decision = decide(
        [(ERRORS, proportion(2000, 0.05), proportion(2000, 0.10))], units=(2000, 2000), weights=(0.5, 0.5)
    )
    assert decision.rollback
    assert decision.reasons == ["guardrail 'errors' is significantly worse"]
    assert decision.checks[0].estimate == pytest.approx(0.05)


def test_a_degradation_within_the_tolerance_is_accepted() -> None:
    production, candidate = proportion(1_000_000, 0.100), proportion(1_000_000, 0.103)  # 3% worse
    tolerant = Guardrail("errors", lower_is_better=True, tolerance=0.05, relative=True)
    strict = Guardrail("errors", lower_is_better=True, tolerance=0.0, relative=True)
    assert not decide([(tolerant, production, candidate)], units=(10, 10), weights=(0.5, 0.5)).rollback
    assert decide([(strict, production, candidate)], units=(10, 10), weights=(0.5, 0.5)).rollback


def test_a_sample_ratio_mismatch_rolls_back_without_any_guardrail_failing() -> None:
    same = proportion(1000, 0.05)
    decision = decide([(ERRORS, same, same)], units=(1000, 1300), weights=(0.5, 0.5))
    assert decision.rollback
    assert not decision.checks[0].failed
    assert decision.srm_failed
    assert decision.reasons[0].startswith("sample ratio mismatch")


def test_a_guardrail_without_enough_data_is_noted_not_failed() -> None:
    check = decide([(ERRORS, proportion(1, 0.0), proportion(1, 1.0))], units=(1, 1), weights=(0.5, 0.5)).checks[0]
    assert not check.failed
    assert check.worst_bound is None
    assert check.note


# ------------------------------------------------------------------ simulated rollouts, looked at every step

LOOKS, STEP = 10, 300  # units per arm added between looks


def errors_rollout(rng: np.random.Generator, production_rate: float, candidate_rate: float) -> int | None:
    """Units per arm when the rollout rolled back, or None if it never did."""
    production = rng.random(LOOKS * STEP) < production_rate
    candidate = rng.random(LOOKS * STEP) < candidate_rate
    for look in range(1, LOOKS + 1):
        n = look * STEP
        arms = (Arm(Moments(n, float(production[:n].sum()), float(production[:n].sum()), binomial=True)),)
        arms += (Arm(Moments(n, float(candidate[:n].sum()), float(candidate[:n].sum()), binomial=True)),)
        if decide([(ERRORS, *arms)], units=(n, n), weights=(0.5, 0.5), alpha=ALPHA, tuning=2 * LOOKS * STEP).rollback:
            return n
    return None


P95 = Guardrail("latency_p95", lower_is_better=True, tolerance=0.0, relative=True)


def latency_rollout(rng: np.random.Generator, slowdown: float) -> int | None:
    production, candidate = Counter[int](), Counter[int]()
    for look in range(1, LOOKS + 1):
        production.update(bucket_of(v) for v in rng.gamma(2.0, 100.0, size=STEP))
        candidate.update(bucket_of(v) for v in rng.gamma(2.0, 100.0 * slowdown, size=STEP))
        arms = (Arm(QuantileMoments.of_histogram(production, 0.95)), Arm(QuantileMoments.of_histogram(candidate, 0.95)))
        n = look * STEP
        if decide([(P95, *arms)], units=(n, n), weights=(0.5, 0.5), alpha=ALPHA, tuning=2 * LOOKS * STEP).rollback:
            return n
    return None


def test_a_candidate_with_five_points_more_errors_is_rolled_back_early() -> None:
    rng = np.random.default_rng(22)
    stopped = [errors_rollout(rng, 0.05, 0.10) for _ in range(50)]
    assert all(n is not None for n in stopped)
    units = sorted(n for n in stopped if n is not None)
    assert units[len(units) // 2] < LOOKS * STEP  # the median rollout stopped before its last step


def test_a_candidate_twenty_percent_slower_at_p95_is_rolled_back() -> None:
    rng = np.random.default_rng(23)
    stopped = [latency_rollout(rng, 1.2) for _ in range(20)]
    assert sum(n is not None for n in stopped) >= 18


def test_equal_candidates_are_wrongly_rolled_back_at_most_alpha_of_the_time() -> None:
    rng = np.random.default_rng(24)
    error_runs = [errors_rollout(rng, 0.05, 0.05) for _ in range(200)]
    latency_runs = [latency_rollout(rng, 1.0) for _ in range(100)]
    assert sum(n is not None for n in error_runs) <= ALPHA * len(error_runs)
    assert sum(n is not None for n in latency_runs) <= ALPHA * len(latency_runs)


# ------------------------------------------------------------------ the split's sequential test (Lindon & Malek)

SRM_CASES = json.loads((Path(__file__).parent / "cases" / "sequential_srm.json").read_text())["cases"]


def rising_log_bayes_factor(units: list[int], weights: list[float], concentration: float) -> float:
    """The same Bayes factor without any gamma function: Gamma(a + x) / Gamma(a) is a * (a + 1) * ... * (a + x - 1)."""
    shares = [w / sum(weights) for w in weights]
    terms = [-math.log(concentration + k) for k in range(sum(units))]
    for count, share in zip(units, shares, strict=True):
        terms += [math.log(concentration * share + k) - math.log(share) for k in range(count)]
    return math.fsum(terms)


def integrated_log_bayes_factor(units: list[int], weights: list[float], concentration: float) -> float:
    """Two variants: the alternative's marginal likelihood integrated numerically over its Beta prior."""
    (first, second), total = units, sum(weights)
    share = weights[1] / total
    prior = beta(concentration * share, concentration * (1 - share))

    def log_ratio(q: float) -> float:
        likelihood = second * math.log(q / share) + first * math.log((1 - q) / (1 - share))
        return float(likelihood + prior.logpdf(q))

    mode = (second + concentration * share - 1) / (sum(units) + concentration - 2)
    peak = log_ratio(mode)
    area, _ = quad(lambda q: math.exp(log_ratio(q) - peak), 0, 1, points=[mode], limit=500, epsabs=0, epsrel=1e-10)
    return peak + math.log(area)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "srm_case" in metafunc.fixturenames:
        metafunc.parametrize("srm_case", SRM_CASES, ids=[case[0] for case in SRM_CASES])


def test_the_split_bayes_factor_matches_an_independent_computation(srm_case: list[Any]) -> None:
    _, units, weights, concentration, expected = srm_case
    value = srm_log_bayes_factor(units, weights, concentration)
    assert value == pytest.approx(expected["log_bayes_factor"], abs=1e-8)
    assert rising_log_bayes_factor(units, weights, concentration) == pytest.approx(
        expected["log_bayes_factor"], abs=1e-8
    )
    if len(units) == 2 and sum(units):
        assert integrated_log_bayes_factor(units, weights, concentration) == pytest.approx(value, abs=1e-6)
    p_value, _ = sequential_srm_p_value(units, weights, concentration=concentration)
    assert p_value == pytest.approx(expected["p_value"], rel=1e-8)


def test_the_split_p_value_keeps_its_least_value_and_multiplies_in_earlier_steps() -> None:
    gross, _ = sequential_srm_p_value([1000, 1300], [0.5, 0.5])
    assert sequential_srm_p_value([500, 500], [0.5, 0.5], previous=0.02)[0] == 0.02  # the running minimum
    carried, log_factor = sequential_srm_p_value([500, 500], [0.5, 0.5], earlier=[([1000, 1300], [0.5, 0.5])])
    assert log_factor == pytest.approx(srm_log_bayes_factor([1000, 1300], [0.5, 0.5]) - 0.34669859024597827)
    assert gross < carried < SEQUENTIAL_SRM_THRESHOLD


def test_a_split_weight_of_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="positive weight"):
        srm_log_bayes_factor([10, 0], [1.0, 0.0])


# (candidate's configured share, its real share, units) per step: the bench's plan with 10,000 units in all.
PLAN_SPLITS = [(0.05, 0.05, 400), (0.25, 0.25, 1_200), (0.5, 0.5, 8_400)]


def looked_at_every(
    rng: np.random.Generator, splits: list[tuple[float, float, int]], every: int
) -> tuple[float, float]:
    """One rollout's split looked at every ``every`` units of each step: the least sequential p-value (carried
    across steps as the rollout carries it) and the least fixed-threshold chi-square p-value of the same looks."""
    earlier: list[tuple[list[int], list[float]]] = []
    least, least_fixed = 1.0, 1.0
    for share, real, n in splits:
        weights = [1 - share, share]
        candidate = np.cumsum(rng.random(n) < real)
        for look in range(every, n + 1, every):
            units = [look - int(candidate[look - 1]), int(candidate[look - 1])]
            least, _ = sequential_srm_p_value(units, weights, earlier=earlier, previous=least)
            least_fixed = min(least_fixed, srm_p_value(units, weights))
        earlier.append((units, weights))
    return least, least_fixed


def test_an_honest_split_looked_at_every_50_units_fails_at_most_its_threshold_of_the_time() -> None:
    rng = np.random.default_rng(2022)
    runs = [looked_at_every(rng, PLAN_SPLITS, 50) for _ in range(300)]  # 200 looks each
    assert sum(p < SEQUENTIAL_SRM_THRESHOLD for p, _ in runs) <= SEQUENTIAL_SRM_THRESHOLD * len(runs)
    # The fixed-threshold chi-square test at the same level, repeated over the same looks, fails far more often.
    assert sum(p < SEQUENTIAL_SRM_THRESHOLD for _, p in runs) > 3 * SEQUENTIAL_SRM_THRESHOLD * len(runs)


def test_a_real_52_48_split_is_caught_by_10000_units() -> None:
    assert sequential_srm_p_value([4800, 5200], [0.5, 0.5])[0] < SEQUENTIAL_SRM_THRESHOLD
    rng = np.random.default_rng(52)
    caught = [looked_at_every(rng, [(0.5, 0.52, 10_000)], 100)[0] < SEQUENTIAL_SRM_THRESHOLD for _ in range(200)]
    assert sum(caught) >= 0.6 * len(caught)  # at 10,000 units a 52/48 split is caught in most rollouts


def test_a_split_mismatch_in_an_earlier_step_is_remembered_by_decide() -> None:
    same = proportion(500, 0.05)
    decision = decide(
        [(ERRORS, same, same)], units=(500, 500), weights=(0.5, 0.5), earlier_splits=[((1000, 1300), (0.5, 0.5))]
    )
    assert decision.srm_failed
    assert decision.srm_log_bayes_factor > math.log(1 / SEQUENTIAL_SRM_THRESHOLD)


@pytest.mark.parametrize(("alpha", "steps", "guardrails"), [(0.05, 1, 1), (0.05, 3, 2), (0.1, 4, 3), (0.01, 2, 1)])
def test_a_rollouts_tests_share_its_alpha(alpha: float, steps: int, guardrails: int) -> None:
    level, split = rollout_levels(alpha, compared_steps=steps, guardrails=guardrails)
    assert split == pytest.approx(alpha * SRM_SHARE_OF_ALPHA)
    assert level * steps * guardrails + split == pytest.approx(alpha)  # the union bound over every test is alpha


def equal_rollout_rolled_back(rng: np.random.Generator, level: float, split: float, tests: int) -> bool:
    """An equal candidate (5% errors on both sides) looked at 20 times a step, every guardrail's test anew each step."""
    for _test in range(tests):
        production, candidate = rng.random(2000) < 0.05, rng.random(2000) < 0.05
        for n in range(100, 2001, 100):
            arms = tuple(
                Arm(Moments(n, float(arm[:n].sum()), float(arm[:n].sum()), binomial=True))
                for arm in (production, candidate)
            )
            if decide([(ERRORS, *arms)], units=(n, n), weights=(0.5, 0.5), alpha=level, srm_threshold=split).rollback:
                return True
    return False


def test_equal_candidates_over_four_steps_and_five_guardrails_are_wrongly_rolled_back_at_most_alpha() -> None:
    """At alpha for every test the rollout would be rolled back wrongly about a fifth of the time (14 of these 60);
    at the levels rollout_levels shares out, at most alpha of the time."""
    rng = np.random.default_rng(25)
    level, split = rollout_levels(ALPHA, compared_steps=4, guardrails=5)
    runs = [equal_rollout_rolled_back(rng, level, split, 4 * 5) for _ in range(60)]
    assert sum(runs) <= ALPHA * len(runs)
