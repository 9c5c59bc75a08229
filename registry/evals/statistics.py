"""Statistics of evaluation runs: a run's pass rate and mean score with their intervals, two runs of the
same dataset version compared item by item, and a promotion gate judged on that evidence.

Pure functions over per-item outcomes; scipy gives the distributions and the tests. Two runs are
compared on the items both scored, as paired samples: McNemar's exact test for pass/fail (a binomial
test on the items whose outcome changed) and the paired t test for the scores.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

from scipy.stats import binomtest, ttest_rel

from registry.stats import Moments, mean_interval, wilson_interval

ItemId = TypeVar("ItemId", bound=Hashable)

# Differences closer than this are equal: scores lie in [0, 1], so only rounding separates them.
_EQUAL = 1e-12


@dataclass(frozen=True, slots=True)
class RunSummary:
    """A run's ``n`` scored items: how many passed, the pass rate with its Wilson interval, and the
    mean score with its t interval. With no items every rate and interval is None; with one item the
    mean score has no interval (a t interval needs two); items all scoring the same give an interval
    of no width."""

    n: int
    passed: int
    pass_rate: float | None
    pass_rate_ci: tuple[float, float] | None
    mean_score: float | None
    mean_score_ci: tuple[float, float] | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "items": self.n,
            "passed": self.passed,
            "pass_rate": self.pass_rate,
            "pass_rate_ci": _pair(self.pass_rate_ci),
            "mean_score": self.mean_score,
            "mean_score_ci": _pair(self.mean_score_ci),
        }


def _pair(interval: tuple[float, float] | None) -> list[float] | None:
    return None if interval is None else list(interval)


def summarize(passed: Sequence[bool], scores: Sequence[float], *, confidence: float = 0.95) -> RunSummary:
    """The summary of a run from its items' verdicts (``passed[i]`` and ``scores[i]`` of item ``i``)."""
    if len(passed) != len(scores):
        raise ValueError(f"{len(passed)} verdicts but {len(scores)} scores")
    n = len(passed)
    if n == 0:
        return RunSummary(0, 0, None, None, None, None)
    alpha = 1 - confidence
    successes = sum(passed)
    rate = successes / n
    moments = Moments(n, math.fsum(scores), math.fsum(s * s for s in scores))
    interval = mean_interval(moments, alpha)
    # Scores lie in [0, 1], so the mean does too: the t interval is cut there (at small n it leaves it,
    # 2 of 5 items passing gave -0.28 to 1.08), which keeps its coverage and makes it no wider than it can be.
    mean_ci = (max(interval.ci_low, 0.0), min(interval.ci_high, 1.0)) if n > 1 else None
    return RunSummary(n, successes, rate, wilson_interval(rate, n, alpha), interval.mean, mean_ci)


class Outcome(NamedTuple):
    """One item's verdict in one run."""

    passed: bool
    score: float


@dataclass(frozen=True, slots=True)
class PairedComparison(Generic[ItemId]):
    """A candidate run against a base run on the items both scored (``matched``).

    ``regressed`` went from pass to fail, ``improved`` from fail to pass, in the base run's order.
    ``mcnemar_p`` is the two-sided exact McNemar p; ``mcnemar_p_worse`` the one-sided p for "the
    candidate fails more often". ``mean_difference`` is the candidate's mean score minus the base's,
    with its t interval; ``t_p`` and ``t_p_lower`` are the paired t test's two-sided p and one-sided p
    for "the candidate scores lower". With no discordant items the McNemar p values are 1; with fewer
    than two items, or all differences zero, the t p values are 1 (a constant non-zero difference is
    certain: p 0 on its side). Without matched items the difference is None, with one its interval.
    """

    matched: int
    only_base: int
    only_candidate: int
    base_pass_rate: float | None
    candidate_pass_rate: float | None
    regressed: tuple[ItemId, ...]
    improved: tuple[ItemId, ...]
    mcnemar_p: float
    mcnemar_p_worse: float
    mean_difference: float | None
    mean_difference_ci: tuple[float, float] | None
    t_p: float
    t_p_lower: float
    confidence: float

    def as_dict(self) -> dict[str, Any]:
        """The numbers, without the item lists (which can be long)."""
        return {
            "paired_items": self.matched,
            "only_base": self.only_base,
            "only_candidate": self.only_candidate,
            "base_pass_rate": self.base_pass_rate,
            "candidate_pass_rate": self.candidate_pass_rate,
            "pass_to_fail": len(self.regressed),
            "fail_to_pass": len(self.improved),
            "mcnemar_p": self.mcnemar_p,
            "mcnemar_p_worse": self.mcnemar_p_worse,
            "mean_difference": self.mean_difference,
            "mean_difference_ci": _pair(self.mean_difference_ci),
            "t_p": self.t_p,
            "t_p_lower": self.t_p_lower,
            "confidence": self.confidence,
        }


def compare_paired(
    base: Mapping[ItemId, Outcome | tuple[bool, float]],
    candidate: Mapping[ItemId, Outcome | tuple[bool, float]],
    *,
    confidence: float = 0.95,
) -> PairedComparison[ItemId]:
    """Compare two runs item by item; items only one run scored are counted, not compared."""
    keys = [key for key in base if key in candidate]
    pairs = [(Outcome(*base[key]), Outcome(*candidate[key])) for key in keys]
    n = len(pairs)
    regressed = tuple(key for key, (b, c) in zip(keys, pairs, strict=True) if b.passed and not c.passed)
    improved = tuple(key for key, (b, c) in zip(keys, pairs, strict=True) if c.passed and not b.passed)
    discordant = len(regressed) + len(improved)
    mcnemar_p = mcnemar_p_worse = 1.0
    if discordant:
        mcnemar_p = float(binomtest(len(improved), discordant, 0.5).pvalue)
        mcnemar_p_worse = float(binomtest(len(regressed), discordant, 0.5, alternative="greater").pvalue)
    differences = [c.score - b.score for b, c in pairs]
    mean_difference, mean_difference_ci, t_p, t_p_lower = _paired_t(pairs, differences, confidence)
    return PairedComparison(
        matched=n,
        only_base=len(base) - n,
        only_candidate=len(candidate) - n,
        base_pass_rate=sum(b.passed for b, _ in pairs) / n if n else None,
        candidate_pass_rate=sum(c.passed for _, c in pairs) / n if n else None,
        regressed=regressed,
        improved=improved,
        mcnemar_p=mcnemar_p,
        mcnemar_p_worse=mcnemar_p_worse,
        mean_difference=mean_difference,
        mean_difference_ci=mean_difference_ci,
        t_p=t_p,
        t_p_lower=t_p_lower,
        confidence=confidence,
    )


def _paired_t(
    pairs: Sequence[tuple[Outcome, Outcome]], differences: Sequence[float], confidence: float
) -> tuple[float | None, tuple[float, float] | None, float, float]:
    """Mean difference, its interval, the two-sided p and the one-sided p for "candidate lower"."""
    n = len(differences)
    if n == 0:
        return None, None, 1.0, 1.0
    mean = math.fsum(differences) / n
    if n == 1:
        return mean, None, 1.0, 1.0
    if max(differences) - min(differences) <= _EQUAL:
        # No variance: scipy's t is undefined (NaN). No difference is no evidence; a constant one is certain.
        if abs(mean) <= _EQUAL:
            return 0.0, (0.0, 0.0), 1.0, 1.0
        return mean, (mean, mean), 0.0, (0.0 if mean < 0 else 1.0)
    candidate = [c.score for _, c in pairs]
    base = [b.score for b, _ in pairs]
    result = ttest_rel(candidate, base)
    low, high = result.confidence_interval(confidence)
    lower = ttest_rel(candidate, base, alternative="less")
    # A difference of two scores in [0, 1] lies in [-1, 1]; the interval is cut there as the mean's is.
    return mean, (max(float(low), -1.0), min(float(high), 1.0)), float(result.pvalue), float(lower.pvalue)


# --------------------------------------------------------------------------- gates


@dataclass(frozen=True, slots=True)
class Gate:
    """What a run must show before its prompt version may enter a state.

    ``min_pass_rate``: the run's pass rate is at least this. ``no_regression``: against the baseline
    (the version holding production now) on the same dataset version, neither McNemar's one-sided test
    (the candidate fails more) nor the paired t test's one-sided test (the candidate scores lower) is
    significant at ``alpha``. The two tests are each held to ``alpha``, so a gate refuses a little more
    often than ``alpha`` when nothing changed.
    """

    min_pass_rate: float | None = None
    no_regression: bool = False
    alpha: float = 0.05


@dataclass(frozen=True, slots=True)
class GateVerdict:
    """Whether the gate passed, a sentence per failed condition naming its numbers, and the numbers."""

    passed: bool
    failures: tuple[str, ...]
    evidence: dict[str, Any]


def evaluate_gate(
    gate: Gate,
    summary: RunSummary,
    comparison: PairedComparison[Any] | None = None,
    *,
    run_label: str = "the run",
    baseline_label: str = "the baseline",
    baseline_exists: bool = True,
    baseline_missing: str = "",
) -> GateVerdict:
    """Judge a run against a gate.

    ``run_label`` and ``baseline_label`` name the runs in the failures ("run 14", "production version 3
    (run 9)"). With ``no_regression``, ``comparison`` is the candidate run against the baseline's run;
    None fails the gate for want of evidence, unless ``baseline_exists`` is False (no version holds
    production yet, so there is nothing to regress from). ``baseline_missing`` says why the baseline has
    no run to compare with when it has runs (" scored alike: ...").
    """
    failures: list[str] = []
    evidence: dict[str, Any] = {"run": run_label, **summary.as_dict()}
    if gate.min_pass_rate is not None:
        evidence["min_pass_rate"] = gate.min_pass_rate
        if summary.pass_rate is None:
            failures.append(f"{run_label} has no scored items")
        elif summary.pass_rate < gate.min_pass_rate:
            rate, minimum = _distinct(summary.pass_rate, gate.min_pass_rate)
            failures.append(
                f"pass rate {rate} below the minimum {minimum} "
                f"({run_label}, {summary.passed} of {summary.n} items passed)"
            )
    if gate.no_regression:
        evidence["no_regression"] = {"baseline": baseline_label, "alpha": gate.alpha}
        if comparison is None:
            if baseline_exists:
                failures.append(
                    f"{baseline_label} has no completed run on this dataset version to compare with{baseline_missing}"
                )
            else:
                evidence["no_regression"]["baseline"] = None
        else:
            evidence["no_regression"].update(comparison.as_dict())
            failures.extend(_regressions(gate.alpha, comparison, run_label, baseline_label))
    return GateVerdict(not failures, tuple(failures), evidence)


def _regressions(alpha: float, comparison: PairedComparison[Any], run_label: str, baseline_label: str) -> list[str]:
    n = comparison.matched
    if n == 0:
        return [f"{run_label} and {baseline_label} have no scored items in common"]
    found = []
    if comparison.mcnemar_p_worse < alpha:
        found.append(
            f"{len(comparison.regressed)} items went from pass to fail and {len(comparison.improved)} from fail to "
            f"pass against {baseline_label}: McNemar exact one-sided p = {comparison.mcnemar_p_worse:.3g} < "
            f"{alpha:g} over {n} paired items"
        )
    if comparison.t_p_lower < alpha and comparison.mean_difference is not None:
        interval = ""
        if comparison.mean_difference_ci is not None:
            low, high = comparison.mean_difference_ci
            interval = f", difference {comparison.confidence:.0%} CI {low:.3f} to {high:.3f}"
        found.append(
            f"mean score fell by {-comparison.mean_difference:.3f} against {baseline_label}: paired t one-sided "
            f"p = {comparison.t_p_lower:.3g} < {alpha:g} over {n} paired items{interval}"
        )
    return found


def _distinct(value: float, bound: float) -> tuple[str, str]:
    """Both numbers with two decimals, or as many more as it takes to tell them apart (0.795 < 0.80)."""
    for digits in range(2, 7):
        shown = f"{value:.{digits}f}", f"{bound:.{digits}f}"
        if shown[0] != shown[1]:
            return shown
    return f"{value!r}", f"{bound!r}"
