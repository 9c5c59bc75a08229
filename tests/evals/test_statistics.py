"""Run statistics: summaries, paired comparisons and gates agree with scipy computed here independently,
and the edge cases (no items, one item, no differences) give numbers, never NaN."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from registry.evals.statistics import (
    Gate,
    Outcome,
    compare_paired,
    evaluate_gate,
    summarize,
)

# 40 paired items: 20 pass in both runs, 10 pass in the base only, 2 in the candidate only, 8 in neither.
PATTERN = [(True, True)] * 20 + [(True, False)] * 10 + [(False, True)] * 2 + [(False, False)] * 8


def run(outcomes: list[tuple[bool, bool]], side: int, shift: float = 0.0) -> dict[str, Outcome]:
    """Scores follow the outcome (0.8 passed, 0.3 failed) with a spread by item, plus ``shift``."""
    return {
        f"item-{i}": Outcome(pair[side], (0.8 if pair[side] else 0.3) + (i % 5) * 0.02 + shift)
        for i, pair in enumerate(outcomes)
    }


BASE, CANDIDATE = run(PATTERN, 0), run(PATTERN, 1)


# --------------------------------------------------------------------------- summaries


def test_a_summary_has_the_wilson_interval_of_its_pass_rate() -> None:
    summary = summarize([True] * 81 + [False] * 182, [0.5] * 263)
    assert (summary.n, summary.passed, summary.pass_rate) == (263, 81, 81 / 263)
    # Newcombe (1998), Statistics in Medicine 17:857-872, Table I, method 3.
    assert summary.pass_rate_ci == pytest.approx((0.2553, 0.3662), abs=5e-5)


def test_a_summary_has_the_t_interval_of_its_mean_score() -> None:
    scores = [0.2, 0.9, 0.4, 1.0, 0.75, 0.6, 0.0, 0.85]
    summary = summarize([s >= 0.5 for s in scores], scores)
    expected = stats.t.interval(0.95, len(scores) - 1, loc=sum(scores) / len(scores), scale=stats.sem(scores))
    assert summary.mean_score == pytest.approx(sum(scores) / len(scores))
    assert summary.mean_score_ci == pytest.approx(expected)
    assert summary.passed == 5


def test_a_mean_score_interval_stays_within_the_scores_range() -> None:
    scores = [1.0, 0.0, 1.0, 0.0, 0.0]
    low, high = stats.t.interval(0.95, 4, loc=0.4, scale=stats.sem(scores))
    assert (low < 0, high > 1) == (True, True)  # the plain t interval leaves [0, 1] at five items
    summary = summarize([s == 1.0 for s in scores], scores)
    assert summary.mean_score_ci == (0.0, 1.0)


def test_a_mean_difference_interval_stays_within_minus_one_and_one() -> None:
    base = {f"i{n}": Outcome(b == 1.0, b) for n, b in enumerate([1.0, 0.0, 1.0, 0.0, 0.0])}
    candidate = {f"i{n}": Outcome(c == 1.0, c) for n, c in enumerate([0.0, 1.0, 0.0, 0.0, 1.0])}
    plain = stats.ttest_rel([o.score for o in candidate.values()], [o.score for o in base.values()])
    low, high = plain.confidence_interval(0.95)
    assert (low < -1, high > 1) == (True, True)
    comparison = compare_paired(base, candidate)
    assert comparison.mean_difference_ci == (-1.0, 1.0)


def test_a_summary_of_no_items_has_no_rates() -> None:
    summary = summarize([], [])
    assert summary.as_dict() == {
        "items": 0,
        "passed": 0,
        "pass_rate": None,
        "pass_rate_ci": None,
        "mean_score": None,
        "mean_score_ci": None,
    }


def test_one_item_has_a_pass_rate_interval_but_no_mean_interval() -> None:
    summary = summarize([True], [0.7])
    assert summary.pass_rate_ci == pytest.approx((0.2065, 1.0), abs=5e-5)
    assert summary.mean_score == pytest.approx(0.7)
    assert summary.mean_score_ci is None


def test_items_scoring_the_same_have_a_mean_interval_of_no_width() -> None:
    summary = summarize([True, True, True], [1.0, 1.0, 1.0])
    assert summary.mean_score_ci == (1.0, 1.0)


def test_a_summary_needs_a_score_per_verdict() -> None:
    with pytest.raises(ValueError, match="2 verdicts but 1 scores"):
        summarize([True, False], [1.0])


# --------------------------------------------------------------------------- paired comparisons


def test_pass_fail_changes_are_tested_with_the_exact_mcnemar_test() -> None:
    comparison = compare_paired(BASE, CANDIDATE)
    assert (comparison.matched, len(comparison.regressed), len(comparison.improved)) == (40, 10, 2)
    assert comparison.mcnemar_p == pytest.approx(stats.binomtest(2, 12, 0.5).pvalue)
    assert comparison.mcnemar_p_worse == pytest.approx(stats.binomtest(10, 12, 0.5, alternative="greater").pvalue)
    assert comparison.mcnemar_p == pytest.approx(2 * comparison.mcnemar_p_worse)


def test_the_items_that_changed_outcome_are_listed_in_the_base_order() -> None:
    comparison = compare_paired(BASE, CANDIDATE)
    assert comparison.regressed == tuple(f"item-{i}" for i in range(20, 30))
    assert comparison.improved == ("item-30", "item-31")
    assert (comparison.base_pass_rate, comparison.candidate_pass_rate) == (30 / 40, 22 / 40)


def test_scores_are_compared_with_the_paired_t_test() -> None:
    comparison = compare_paired(BASE, CANDIDATE)
    keys = list(BASE)
    candidate, base = [CANDIDATE[k].score for k in keys], [BASE[k].score for k in keys]
    two_sided = stats.ttest_rel(candidate, base)
    differences = [c - b for c, b in zip(candidate, base, strict=True)]
    assert comparison.mean_difference == pytest.approx(sum(differences) / len(differences))
    assert comparison.mean_difference_ci == pytest.approx(tuple(two_sided.confidence_interval(0.95)))
    assert comparison.t_p == pytest.approx(two_sided.pvalue)
    assert comparison.t_p_lower == pytest.approx(stats.ttest_rel(candidate, base, alternative="less").pvalue)


def test_only_items_in_both_runs_are_compared() -> None:
    base = {"a": (True, 1.0), "b": (False, 0.0), "c": (True, 0.9)}
    candidate = {"b": (True, 0.8), "c": (True, 0.5), "d": (False, 0.1), "e": (True, 1.0)}
    comparison = compare_paired(base, candidate)
    assert (comparison.matched, comparison.only_base, comparison.only_candidate) == (2, 1, 2)
    assert comparison.improved == ("b",)
    assert comparison.mean_difference == pytest.approx(((0.8 - 0.0) + (0.5 - 0.9)) / 2)


def test_identical_runs_differ_with_p_one_and_no_nan() -> None:
    comparison = compare_paired(BASE, dict(BASE))
    numbers = comparison.as_dict()
    assert (comparison.mcnemar_p, comparison.mcnemar_p_worse, comparison.t_p, comparison.t_p_lower) == (1, 1, 1, 1)
    assert (comparison.mean_difference, comparison.mean_difference_ci) == (0.0, (0.0, 0.0))
    assert not any(isinstance(v, float) and math.isnan(v) for v in numbers.values())


def test_the_same_fall_on_every_item_is_certain() -> None:
    comparison = compare_paired(BASE, run(PATTERN, 0, shift=-0.1))
    assert comparison.mean_difference == pytest.approx(-0.1)
    assert (comparison.t_p, comparison.t_p_lower) == (0.0, 0.0)
    rise = compare_paired(BASE, run(PATTERN, 0, shift=0.1))
    assert (rise.t_p, rise.t_p_lower) == (0.0, 1.0)


def test_one_paired_item_has_a_difference_but_no_test() -> None:
    comparison = compare_paired({"a": (True, 0.9)}, {"a": (False, 0.4)})
    assert comparison.mean_difference == pytest.approx(-0.5)
    assert comparison.mean_difference_ci is None
    assert (comparison.t_p, comparison.t_p_lower) == (1.0, 1.0)
    assert comparison.mcnemar_p == pytest.approx(stats.binomtest(0, 1, 0.5).pvalue)


def test_runs_without_common_items_have_no_difference() -> None:
    comparison = compare_paired({"a": (True, 1.0)}, {"b": (True, 1.0)})
    assert (comparison.matched, comparison.mean_difference, comparison.base_pass_rate) == (0, None, None)
    assert (comparison.mcnemar_p, comparison.t_p) == (1.0, 1.0)


# --------------------------------------------------------------------------- gates


def test_a_pass_rate_below_the_minimum_fails_the_gate_naming_the_numbers() -> None:
    verdict = evaluate_gate(
        Gate(min_pass_rate=0.8), summarize([True] * 36 + [False] * 14, [1.0] * 50), run_label="run 14"
    )
    assert not verdict.passed
    assert verdict.failures == ("pass rate 0.72 below the minimum 0.80 (run 14, 36 of 50 items passed)",)
    assert verdict.evidence["pass_rate"] == 0.72
    assert verdict.evidence["min_pass_rate"] == 0.8


def test_a_pass_rate_just_below_the_minimum_shows_the_digits_that_differ() -> None:
    verdict = evaluate_gate(Gate(min_pass_rate=0.8), summarize([True] * 159 + [False] * 41, [1.0] * 200))
    assert verdict.failures == ("pass rate 0.795 below the minimum 0.800 (the run, 159 of 200 items passed)",)


def test_a_pass_rate_at_the_minimum_passes_the_gate() -> None:
    verdict = evaluate_gate(Gate(min_pass_rate=0.8), summarize([True] * 40 + [False] * 10, [1.0] * 50))
    assert (verdict.passed, verdict.failures) == (True, ())


def test_a_run_without_items_fails_a_minimum_pass_rate() -> None:
    verdict = evaluate_gate(Gate(min_pass_rate=0.5), summarize([], []), run_label="run 3")
    assert verdict.failures == ("run 3 has no scored items",)


def test_significantly_more_failures_than_the_baseline_fail_the_gate() -> None:
    comparison = compare_paired(BASE, CANDIDATE)
    summary = summarize([o.passed for o in CANDIDATE.values()], [o.score for o in CANDIDATE.values()])
    verdict = evaluate_gate(
        Gate(no_regression=True), summary, comparison, run_label="run 14", baseline_label="production version 3 (run 9)"
    )
    p_worse = stats.binomtest(10, 12, 0.5, alternative="greater").pvalue
    assert not verdict.passed
    assert verdict.failures[0] == (
        "10 items went from pass to fail and 2 from fail to pass against production version 3 (run 9): "
        f"McNemar exact one-sided p = {p_worse:.3g} < 0.05 over 40 paired items"
    )
    assert verdict.evidence["no_regression"]["pass_to_fail"] == 10
    assert verdict.evidence["no_regression"]["mcnemar_p_worse"] == pytest.approx(p_worse)


def test_a_significantly_lower_mean_score_fails_the_gate() -> None:
    same_outcomes = [(a, a) for a, _ in PATTERN]
    base = run(same_outcomes, 0)
    candidate = {k: Outcome(o.passed, o.score - (0.05 if i % 2 else 0.01)) for i, (k, o) in enumerate(base.items())}
    comparison = compare_paired(base, candidate)
    summary = summarize([o.passed for o in candidate.values()], [o.score for o in candidate.values()])
    verdict = evaluate_gate(Gate(no_regression=True), summary, comparison, baseline_label="production version 3")
    low, high = comparison.mean_difference_ci or (0.0, 0.0)
    assert verdict.failures == (
        f"mean score fell by 0.030 against production version 3: paired t one-sided p = "
        f"{comparison.t_p_lower:.3g} < 0.05 over 40 paired items, difference 95% CI {low:.3f} to {high:.3f}",
    )


def test_no_significant_change_passes_the_gate() -> None:
    flipped = PATTERN[:20] + [(True, False)] * 3 + [(False, True)] * 2 + [(False, False)] * 15
    comparison = compare_paired(run(flipped, 0), run(flipped, 1))
    summary = summarize([True] * 22 + [False] * 18, [0.5] * 40)
    verdict = evaluate_gate(Gate(min_pass_rate=0.5, no_regression=True), summary, comparison)
    assert comparison.mcnemar_p_worse == pytest.approx(stats.binomtest(3, 5, 0.5, alternative="greater").pvalue)
    assert (verdict.passed, verdict.failures) == (True, ())


def test_a_stricter_alpha_lets_a_weaker_regression_through() -> None:
    comparison = compare_paired(BASE, CANDIDATE)
    summary = summarize([True] * 22 + [False] * 18, [0.5] * 40)
    strict = evaluate_gate(Gate(no_regression=True, alpha=0.01), summary, comparison)
    assert comparison.mcnemar_p_worse > 0.01
    assert not any("McNemar" in failure for failure in strict.failures)


def test_a_baseline_without_a_run_fails_the_gate_for_want_of_evidence() -> None:
    verdict = evaluate_gate(
        Gate(no_regression=True), summarize([True], [1.0]), None, baseline_label="production version 3"
    )
    assert verdict.failures == ("production version 3 has no completed run on this dataset version to compare with",)


def test_without_a_baseline_version_there_is_nothing_to_regress_from() -> None:
    verdict = evaluate_gate(Gate(no_regression=True), summarize([True], [1.0]), None, baseline_exists=False)
    assert verdict.passed
    assert verdict.evidence["no_regression"] == {"baseline": None, "alpha": 0.05}


def test_runs_without_common_items_fail_the_regression_check() -> None:
    comparison = compare_paired({"a": (True, 1.0)}, {"b": (True, 1.0)})
    verdict = evaluate_gate(
        Gate(no_regression=True), summarize([True], [1.0]), comparison, run_label="run 14", baseline_label="run 9"
    )
    assert verdict.failures == ("run 14 and run 9 have no scored items in common",)
