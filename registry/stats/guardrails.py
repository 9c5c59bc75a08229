"""Guardrails of a progressive rollout: is the candidate significantly worse than production? (pure)

At every check each guardrail metric is compared (candidate against production) with a one-sided
always-valid test, so the rollout may look as often as it likes and still wrongly roll back an
equal candidate with probability at most ``alpha``: gbstats' ``SequentialOneSidedTreatmentGreaterTTest``
and ``...LesserTTest`` (the mixture sequential test of Waudby-Smith et al., eq. 134 of
arXiv:2103.06476v7, tuned by the expected total units). A guardrail fails when the bound of its
one-sided interval on the side of "worse" lies beyond the tolerated degradation: for a metric where
lower is better (errors, latency, cost), the lower bound of candidate minus production exceeds the
tolerance. The tolerance is relative (0.05: up to 5% worse is accepted) or absolute (0.02: up to two
points more errors).

The split is checked too: a sample ratio mismatch rolls back as well, since then no comparison can be
trusted. It is checked at every look as well, so a fixed-threshold chi-square test would wrongly fail
an honest split more often the longer a rollout runs (its false alarms adding to the guardrails'). It
is the always-valid sequential test of Lindon & Malek ("Anytime-valid inference for multinomial count
data", NeurIPS 2022; the sequential SRM test of Optimizely's ``ssrm-test``): the Dirichlet-multinomial
Bayes factor against the configured weights, whose inverse is a p-value valid at any number of looks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy.special import gammaln

from registry.stats.effects import Estimate, NotEnoughDataError, compare
from registry.stats.moments import Arm, Moments


def one_sided_rho(alpha: float, tuning: float) -> float:
    """The mixture parameter of the one-sided test (gbstats ``sequential_rho`` with ``two_sided=False``)."""
    doubled = 2 * alpha
    return math.sqrt((-2 * math.log(doubled) + math.log(-2 * math.log(doubled) + 1)) / tuning)


def one_sided_halfwidth(std_error: float, n: int, alpha: float, tuning: float) -> float:
    """How far the always-valid one-sided bound lies from the estimate, ``n`` units in both arms (eq. 134)."""
    rho = one_sided_rho(alpha, tuning)
    s2 = std_error**2 * n
    nr2 = n * rho**2 + 1
    return math.sqrt(s2 * 2 * nr2 / (n * rho) ** 2 * math.log(1 + math.sqrt(nr2) / (2 * alpha)))


# A rollout's false rollbacks share one budget, its alpha. The split's test spends a fifth of it; being always valid,
# its level holds over every look of every step, not at one look only. The rest is shared evenly by every guardrail
# at every step that compares the two versions (a union bound): each guardrail's test is always valid within its
# step but starts anew at the next, so without the split an equal candidate could be rolled back with probability
# up to alpha times steps times guardrails. The always-valid bound widens only with sqrt(log(1 / level)), so the
# split costs little: 2% wider at 0.04 than at 0.05, 7% at 0.01.
SRM_SHARE_OF_ALPHA = 0.2
SEQUENTIAL_SRM_THRESHOLD = 0.05 * SRM_SHARE_OF_ALPHA  # the split's level at the default alpha


def rollout_levels(alpha: float, *, compared_steps: int, guardrails: int) -> tuple[float, float]:
    """(each guardrail test's level, the split test's level), so that the chance of rolling back an equal candidate
    over the whole rollout, every step and guardrail and the split together, is at most ``alpha``."""
    split = alpha * SRM_SHARE_OF_ALPHA
    return (alpha - split) / (max(1, compared_steps) * max(1, guardrails)), split


# The Dirichlet prior's concentration: the prior puts ``concentration * weight`` pseudo-units on each variant, so the
# share it expects has a standard deviation of sqrt(w (1 - w) / 1001), 1.6 points at 50%: it is centred on splits off
# by a point or two, the size a partly broken assignment or exposure log gives. At the 0.01 level a split of exactly
# 52/48 is caught at 8,100 units with 1,000 (11,400 with a flat prior, concentration 2; 11,700 with 10,000), and a
# gross break (1,300 against 1,000) still gives p = 2e-6.
SRM_CONCENTRATION = 1000.0


def srm_log_bayes_factor(
    units: Sequence[int], weights: Sequence[float], concentration: float = SRM_CONCENTRATION
) -> float:
    """The log of the Dirichlet-multinomial Bayes factor of ``units`` against the split ``weights`` (Lindon & Malek).

    Under the configured split each unit's variant is a draw from ``weights``; the alternative draws the split
    itself from a Dirichlet with parameters ``concentration * weights`` (centred on the configured split). The
    factor is the ratio of the two marginal likelihoods, a function of the counts alone:
    ``Gamma(A) / Gamma(A + n) * prod(Gamma(a_i + x_i) / Gamma(a_i)) / prod(p_i ** x_i)``, ``A = sum(a_i)``.
    """
    if len(units) != len(weights) or any(w <= 0 for w in weights):
        raise ValueError("the split needs a positive weight per variant")
    total = sum(weights)
    shares = [w / total for w in weights]
    value = float(gammaln(concentration) - gammaln(concentration + sum(units)))
    for count, share in zip(units, shares, strict=True):
        if count:
            prior = concentration * share
            value += float(gammaln(prior + count) - gammaln(prior)) - count * math.log(share)
    return value


def sequential_srm_p_value(
    units: Sequence[int],
    weights: Sequence[float],
    *,
    earlier: Sequence[tuple[Sequence[int], Sequence[float]]] = (),
    previous: float = 1.0,
    concentration: float = SRM_CONCENTRATION,
) -> tuple[float, float]:
    """The always-valid p-value of the split, and its log Bayes factor: ``min(1, 1 / BF)``, least over the looks.

    ``earlier`` are the earlier steps' final counts and weights (each step a phase split at its own weights),
    whose Bayes factors multiply into this step's: each is a nonnegative martingale of mean 1 under an honest
    split, so their product over the steps is one too, and by Ville's inequality it ever reaches 1/threshold
    with probability at most the threshold. ``previous`` is the p-value of the last look; keeping the running
    minimum makes repeated checks safe: the rollout may look after every unit and still wrongly fail an honest
    split at most ``threshold`` of the time, over all of its looks and steps together.
    """
    log_factor = sum(srm_log_bayes_factor(u, w, concentration) for u, w in earlier)
    log_factor += srm_log_bayes_factor(units, weights, concentration)
    p_value = 1.0 if log_factor <= 0 else math.exp(-log_factor)
    return min(previous, p_value), log_factor


@dataclass(frozen=True, slots=True)
class Guardrail:
    """A metric the candidate must not make worse than production by more than ``tolerance``."""

    metric: str
    lower_is_better: bool
    tolerance: float = 0.0
    relative: bool = True  # the tolerance (and the effect tested) as a fraction of production's value


@dataclass(frozen=True, slots=True)
class GuardrailCheck:
    metric: str
    estimate: float | None  # candidate minus production (relative or absolute, as the guardrail says)
    worst_bound: float | None  # the always-valid bound on the side of "worse" (None: not tested yet)
    failed: bool
    note: str | None = None  # why it was not tested (or, tested, how: one side all equal)


@dataclass(frozen=True, slots=True)
class GuardrailDecision:
    """``rollback`` when a guardrail failed or the split is off; the evidence either way."""

    rollback: bool
    checks: list[GuardrailCheck]
    srm_p_value: float  # always valid, the least over the rollout's looks (``sequential_srm_p_value``)
    srm_failed: bool
    srm_log_bayes_factor: float = 0.0

    @property
    def reasons(self) -> list[str]:
        found = [f"guardrail '{c.metric}' is significantly worse" for c in self.checks if c.failed]
        if self.srm_failed:
            found.append(f"sample ratio mismatch (p = {self.srm_p_value:.2g})")
        return found


def check_guardrail(
    guardrail: Guardrail, production: Arm, candidate: Arm, *, alpha: float, tuning: float
) -> GuardrailCheck:
    try:
        comparison = compare(production, candidate, alpha=alpha, lower_is_better=guardrail.lower_is_better)
    except NotEnoughDataError as exc:
        constant = _one_arm_constant(guardrail, production, candidate)
        if constant is None:
            return GuardrailCheck(guardrail.metric, None, None, False, str(exc))
        return _judged(guardrail, *constant, production.n + candidate.n, alpha, tuning)
    effect: Estimate | None = comparison.relative if guardrail.relative else comparison.absolute
    if effect is None:
        return GuardrailCheck(guardrail.metric, None, None, False, "production's value is 0: no relative effect")
    return _judged(
        guardrail,
        effect.estimate,
        effect.std_error,
        guardrail.tolerance,
        None,
        production.n + candidate.n,
        alpha,
        tuning,
    )


def _judged(
    guardrail: Guardrail,
    estimate: float,
    std_error: float,
    tolerance: float,
    note: str | None,
    n: int,
    alpha: float,
    tuning: float,
) -> GuardrailCheck:
    halfwidth = one_sided_halfwidth(std_error, n, alpha, tuning)
    if guardrail.lower_is_better:  # worse is higher: the lower bound must stay within the tolerance
        bound = estimate - halfwidth
        failed = bound > tolerance
    else:
        bound = estimate + halfwidth
        failed = bound < -tolerance
    return GuardrailCheck(guardrail.metric, estimate, bound, failed, note)


def _one_arm_constant(guardrail: Guardrail, production: Arm, candidate: Arm) -> tuple[float, float, float, str] | None:
    """(effect, standard error, tolerance, note) when one side's values are all equal and the other's are not.

    The usual comparison needs variance on both sides, so a production that never failed (every unit 0) left every
    candidate untested, however often it failed. The other side's variance stands for both (as if equal, as an equal
    candidate's would be); a relative tolerance of production's 0 is no change at all, so it is tested absolutely.
    """
    a, b = production.post, candidate.post
    if not (isinstance(a, Moments) and isinstance(b, Moments)) or a.n < 2 or b.n < 2:
        return None
    variances = (a.variance, b.variance)
    if not all(math.isfinite(x) for x in (a.mean, b.mean, *variances)) or (variances[0] > 0) == (variances[1] > 0):
        return None
    std_error = math.sqrt(max(variances) * (1 / a.n + 1 / b.n))
    difference = b.mean - a.mean
    side = "production" if variances[0] == 0 else "the candidate"
    if not guardrail.relative:
        return difference, std_error, guardrail.tolerance, f"{side}'s values are all equal: the other's variance used"
    if a.mean == 0:
        return difference, std_error, 0.0, f"{side}'s values are all 0: any increase tested, as a difference"
    scale = abs(a.mean)
    return (
        difference / scale,
        std_error / scale,
        guardrail.tolerance,
        f"{side}'s values are all equal: the other's variance used",
    )


def decide(
    guardrails: Sequence[tuple[Guardrail, Arm, Arm]],
    *,
    units: tuple[int, int],
    weights: tuple[float, float],
    alpha: float = 0.05,
    tuning: float = 5000.0,
    srm_threshold: float = SEQUENTIAL_SRM_THRESHOLD,
    earlier_splits: Sequence[tuple[Sequence[int], Sequence[float]]] = (),
    previous_srm_p_value: float = 1.0,
) -> GuardrailDecision:
    """Test every guardrail (production arm, candidate arm) and the split of ``units`` against ``weights``.

    The split's test is the always-valid sequential one (``sequential_srm_p_value``, with the earlier steps'
    splits and the last look's p-value), so it may be repeated at every check.
    """
    checks = [
        check_guardrail(g, production, candidate, alpha=alpha, tuning=tuning) for g, production, candidate in guardrails
    ]
    srm, log_factor = sequential_srm_p_value(units, weights, earlier=earlier_splits, previous=previous_srm_p_value)
    srm_failed = srm < srm_threshold
    return GuardrailDecision(any(c.failed for c in checks) or srm_failed, checks, srm, srm_failed, log_factor)
