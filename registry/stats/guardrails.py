"""Guardrails of a progressive rollout: is the candidate significantly worse than production? (pure)

At every check each guardrail metric is compared (candidate against production) with a one-sided
always-valid test, so the rollout may look as often as it likes and still wrongly roll back an
equal candidate with probability at most ``alpha``: gbstats' ``SequentialOneSidedTreatmentGreaterTTest``
and ``...LesserTTest`` (the mixture sequential test of Waudby-Smith et al., eq. 134 of
arXiv:2103.06476v7, tuned by the expected total units). A guardrail fails when the bound of its
one-sided interval on the side of "worse" lies beyond the tolerated degradation: for a metric where
lower is better (errors, latency, cost), the lower bound of candidate minus production exceeds the
tolerance. The tolerance is relative (0.05: up to 5% worse is accepted) or absolute (0.02: up to two
points more errors). The split is checked too: a sample ratio mismatch rolls back as well, since then
no comparison can be trusted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from registry.stats.checks import SRM_THRESHOLD, srm_p_value
from registry.stats.effects import Estimate, NotEnoughDataError, compare
from registry.stats.moments import Arm


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
    note: str | None = None  # why it was not tested


@dataclass(frozen=True, slots=True)
class GuardrailDecision:
    """``rollback`` when a guardrail failed or the split is off; the evidence either way."""

    rollback: bool
    checks: list[GuardrailCheck]
    srm_p_value: float
    srm_failed: bool

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
        return GuardrailCheck(guardrail.metric, None, None, False, str(exc))
    effect: Estimate | None = comparison.relative if guardrail.relative else comparison.absolute
    if effect is None:
        return GuardrailCheck(guardrail.metric, None, None, False, "production's value is 0: no relative effect")
    halfwidth = one_sided_halfwidth(effect.std_error, production.n + candidate.n, alpha, tuning)
    if guardrail.lower_is_better:  # worse is higher: the lower bound must stay within the tolerance
        bound = effect.estimate - halfwidth
        failed = bound > guardrail.tolerance
    else:
        bound = effect.estimate + halfwidth
        failed = bound < -guardrail.tolerance
    return GuardrailCheck(guardrail.metric, effect.estimate, bound, failed)


def decide(
    guardrails: Sequence[tuple[Guardrail, Arm, Arm]],
    *,
    units: tuple[int, int],
    weights: tuple[float, float],
    alpha: float = 0.05,
    tuning: float = 5000.0,
    srm_threshold: float = SRM_THRESHOLD,
) -> GuardrailDecision:
    """Test every guardrail (production arm, candidate arm) and the split of ``units`` against ``weights``."""
    checks = [
        check_guardrail(g, production, candidate, alpha=alpha, tuning=tuning) for g, production, candidate in guardrails
    ]
    srm = srm_p_value(list(units), list(weights)) if sum(units) else 1.0
    srm_failed = srm < srm_threshold
    return GuardrailDecision(any(c.failed for c in checks) or srm_failed, checks, srm, srm_failed)
