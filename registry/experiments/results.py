"""An experiment phase's results, from its per-variant sufficient statistics alone (pure).

The control is the first variant. Units seen in several variants were
already left out of the statistics; they are only counted here. For ``sum``,
``count`` and ``any`` metrics every analysed unit counts (no data is 0); for
``mean`` and ``max`` only units with data count.

A ``ratio`` metric's variant value is its numerators' total over its denominators' total
(gbstats ``RatioStatistic``, delta method), a ``quantile`` metric's the quantile of its units'
values read from the variant's histogram (gbstats ``QuantileStatistic``, interval at 95% from
the order statistics); both count units with data only and are never CUPED-adjusted.

The p-value that decides (``significant``) is Welch's, or the sequential one
when the experiment uses sequential testing; it is adjusted across all
metrics and variants with the experiment's correction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from registry.experiments.aggregation import ZERO_FILLED, Sums
from registry.experiments.schemas import (
    ComparisonOut,
    EffectOut,
    MetricResultOut,
    ResultsOut,
    SequentialOut,
    SrmOut,
    VariantMetricOut,
    VariantUnitsOut,
)
from registry.stats import (
    SRM_THRESHOLD,
    Arm,
    Comparison,
    Correction,
    Covariate,
    Estimate,
    Interval,
    Moments,
    NotEnoughDataError,
    QuantileMoments,
    RatioMoments,
    adjust,
    compare,
    credible_interval,
    mean_interval,
    srm_p_value,
)


@dataclass(frozen=True, slots=True)
class MetricDefinition:
    id: int
    key: str
    role: str
    kind: str
    aggregation: str
    direction: str
    quantile: float | None = None


@dataclass(frozen=True, slots=True)
class PhaseData:
    experiment: str
    phase: int
    status: str
    variants: Sequence[str]  # control first
    weights: Sequence[float]
    units: Mapping[str, int]
    units_in_multiple_variants: int
    pending_units: int
    metrics: Sequence[MetricDefinition]
    sums: Mapping[tuple[str, int], Sums]  # (variant, metric id)
    histograms: Mapping[tuple[str, int], Mapping[int, int]] = field(default_factory=dict)  # quantile metrics


@dataclass(frozen=True, slots=True)
class Analysis:
    alpha: float
    correction: Correction
    sequential: bool
    sequential_tuning: float
    cuped: bool


def _effect(estimate: Estimate) -> EffectOut:
    return EffectOut(
        estimate=estimate.estimate,
        std_error=estimate.std_error,
        ci_low=estimate.ci_low,
        ci_high=estimate.ci_high,
        p_value=estimate.p_value,
    )


def variant_arm(data: PhaseData, metric: MetricDefinition, variant: str, cuped: bool) -> Arm:
    sums = data.sums.get((variant, metric.id), Sums())
    if metric.kind == "ratio":
        return Arm(
            RatioMoments.of_sums(sums.n, sums.sum, sums.sum_squares, sums.pre_sum, sums.pre_sum_squares, sums.cross_sum)
        )
    if metric.kind == "quantile":
        return Arm(QuantileMoments.of_histogram(data.histograms.get((variant, metric.id), {}), metric.quantile or 0.5))
    binomial = metric.kind == "binomial"
    n = data.units.get(variant, 0) if metric.aggregation in ZERO_FILLED else sums.n
    post = Moments(n, sums.sum, sums.sum_squares, binomial)
    if not cuped:
        return Arm(post)
    return Arm(post, Covariate(Moments(n, sums.pre_sum, sums.pre_sum_squares, binomial), sums.cross_sum))


def _interval(arm: Arm, alpha: float) -> Interval:
    """A variant's value with its interval; a quantile's is the order statistics' (95%, as gbstats)."""
    post = arm.post
    if isinstance(post, QuantileMoments):
        if post.n == 0:
            return Interval(0.0, 0.0, 0.0, 0.0)
        return Interval(post.quantile_hat, post.std_dev, post.quantile_lower, post.quantile_upper)
    return mean_interval(post, alpha)


def _decision_p_value(comparison: Comparison, sequential: bool) -> float:
    if sequential and comparison.sequential_absolute is not None:
        return comparison.sequential_absolute.p_value
    return comparison.absolute.p_value


def build_results(data: PhaseData, analysis: Analysis, computed_at: datetime) -> ResultsOut:
    tuning = analysis.sequential_tuning if analysis.sequential else None
    # (metric index, variant index) -> comparison, or the reason there is none
    comparisons: dict[tuple[int, int], Comparison | str] = {}
    arms: dict[tuple[int, int], Arm] = {}
    for m, metric in enumerate(data.metrics):
        for v, variant in enumerate(data.variants):
            arms[(m, v)] = variant_arm(data, metric, variant, analysis.cuped)
        for v in range(1, len(data.variants)):
            try:
                comparisons[(m, v)] = compare(
                    arms[(m, 0)],
                    arms[(m, v)],
                    alpha=analysis.alpha,
                    lower_is_better=metric.direction == "lower",
                    sequential_tuning=tuning,
                )
            except NotEnoughDataError as exc:
                comparisons[(m, v)] = str(exc)

    tested = [(key, c) for key, c in comparisons.items() if isinstance(c, Comparison)]
    adjusted = dict(
        zip(
            [key for key, _ in tested],
            adjust([_decision_p_value(c, analysis.sequential) for _, c in tested], analysis.correction),
            strict=True,
        )
    )

    metrics: list[MetricResultOut] = []
    for m, metric in enumerate(data.metrics):
        rows: list[VariantMetricOut] = []
        for v, variant in enumerate(data.variants):
            arm = arms[(m, v)]
            interval = _interval(arm, analysis.alpha)
            comparison = comparisons.get((m, v))
            vs_control = None
            note = comparison if isinstance(comparison, str) else None
            if isinstance(comparison, Comparison):
                vs_control = _comparison_out(comparison, adjusted[(m, v)], analysis)
            rows.append(
                VariantMetricOut(
                    variant=variant,
                    units=arm.n,
                    mean=interval.mean,
                    std_dev=interval.std_dev,
                    ci_low=interval.ci_low,
                    ci_high=interval.ci_high,
                    vs_control=vs_control,
                    note=note,
                )
            )
        metrics.append(
            MetricResultOut(
                metric=metric.key,
                role=metric.role,
                kind=metric.kind,
                aggregation=metric.aggregation,
                direction=metric.direction,
                variants=rows,
                quantile=metric.quantile,
            )
        )

    observed = [data.units.get(v, 0) for v in data.variants]
    total = sum(observed)
    srm = srm_p_value(observed, data.weights)
    return ResultsOut(
        experiment=data.experiment,
        phase=data.phase,
        status=data.status,
        alpha=analysis.alpha,
        correction=analysis.correction,
        sequential=analysis.sequential,
        cuped=analysis.cuped,
        units=total,
        units_in_multiple_variants=data.units_in_multiple_variants,
        pending_units=data.pending_units,
        variants=[
            VariantUnitsOut(
                variant=variant,
                units=count,
                expected_share=weight,
                observed_share=count / total if total else 0.0,
            )
            for variant, count, weight in zip(data.variants, observed, data.weights, strict=True)
        ],
        srm=SrmOut(p_value=srm, flagged=srm < SRM_THRESHOLD, threshold=SRM_THRESHOLD),
        metrics=metrics,
        computed_at=computed_at,
    )


def _comparison_out(comparison: Comparison, p_value_adjusted: float, analysis: Analysis) -> ComparisonOut:
    sequential = None
    if comparison.sequential_absolute is not None:
        relative = comparison.sequential_relative
        sequential = SequentialOut(
            absolute=_effect(comparison.sequential_absolute), relative=_effect(relative) if relative else None
        )
    relative_effect = comparison.relative
    return ComparisonOut(
        absolute=_effect(comparison.absolute),
        relative=_effect(relative_effect) if relative_effect else None,
        p_value=comparison.absolute.p_value,
        p_value_adjusted=p_value_adjusted,
        significant=p_value_adjusted < analysis.alpha,
        chance_to_beat_control=comparison.chance_to_win,
        credible_interval=credible_interval(relative_effect, analysis.alpha) if relative_effect else None,
        dof=comparison.dof,
        sequential=sequential,
        cuped_theta=comparison.cuped_theta,
    )
