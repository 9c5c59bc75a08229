"""Rollout guardrails: gbstats' one-sided always-valid bounds, the decision, and simulated rollouts.

The simulations count decisions (how many rollouts rolled back, after how many units); nothing is timed.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from registry.stats import Arm, Moments, QuantileMoments, compare
from registry.stats.guardrails import Guardrail, check_guardrail, decide, one_sided_halfwidth
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
