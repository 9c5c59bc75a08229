"""Request and response bodies of experiments, metrics, events and unit data."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from registry.configs.schemas import ConfigRef
from registry.experiments.models import Experiment, ExperimentPhase, ExperimentVariant, Metric
from registry.lib.schema import NO_NUL_PATTERN, Description, Input, Output, Reason, ResourceName
from registry.lib.versioned_schemas import VersionNumber
from registry.prompts.schemas import ConfigUsed, UnitId
from registry.rollouts.plan import rollout_ranges
from registry.stats import Correction

KEY_PATTERN = r"^[a-z0-9][a-z0-9_.-]*(?!\n)$"  # (?!\n): see NAME_PATTERN
VariantKey = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=KEY_PATTERN, examples=["control"])]
MetricKey = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=KEY_PATTERN, examples=["thumbs_up"])]
Fraction = Annotated[float, msgspec.Meta(ge=0, le=1)]
Weight = Annotated[float, msgspec.Meta(gt=0, le=1_000_000)]
Seed = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
# At least 1e-6 (a 99.9999% interval): far smaller levels gave intervals too wide to be numbers (null in the results).
Alpha = Annotated[float, msgspec.Meta(ge=1e-6, lt=0.5)]
Status = Literal["draft", "running", "stopped"]
MetricKind = Literal["binomial", "continuous", "ratio", "quantile"]
Aggregation = Literal["sum", "mean", "count", "max", "any"]
Direction = Literal["higher", "lower"]
ForcedVariants = Annotated[dict[UnitId, VariantKey], msgspec.Meta(max_length=1000)]
GuardrailKeys = Annotated[list[MetricKey], msgspec.Meta(max_length=20)]

# --------------------------------------------------------------------------- metrics


class CreateMetric(Input):
    key: MetricKey
    kind: MetricKind
    aggregation: Aggregation | None = None  # binomial: any; continuous: sum
    direction: Direction = "higher"
    description: Description = ""
    source: Annotated[str, msgspec.Meta(min_length=1, max_length=32)] = "events"
    source_field: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None
    # ratio: the field summed per unit as the denominator (source_field is the numerator)
    denominator_field: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None
    # quantile: which quantile of the per-unit values, strictly between 0 and 1 (0.95 for a p95)
    quantile: float | None = None


class UpdateMetric(Input):
    description: Description


class MetricOut(Output):
    key: str
    kind: str
    aggregation: str
    direction: str
    description: str
    source: str
    source_field: str | None
    created_at: datetime
    created_by: str
    updated_at: datetime
    updated_by: str
    denominator_field: str | None = None
    quantile: float | None = None

    @classmethod
    def of(cls, metric: Metric) -> MetricOut:
        return cls(
            key=metric.key,
            kind=metric.analysis_kind,
            aggregation=metric.aggregation,
            direction=metric.direction,
            description=metric.description,
            source=metric.source,
            source_field=metric.source_field,
            created_at=metric.created_at,
            created_by=metric.created_by,
            updated_at=metric.updated_at,
            updated_by=metric.updated_by,
            denominator_field=metric.denominator_field,
            quantile=metric.quantile,
        )


class MetricPage(Output):
    items: list[MetricOut]
    next_cursor: str | None


# --------------------------------------------------------------------------- experiments


class VariantIn(Input):
    key: VariantKey
    prompt_version: VersionNumber
    weight: Weight = 1.0
    config: ConfigRef | None = None


class NamespaceIn(Input):
    """Experiments in one namespace whose ranges do not overlap never share a unit."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=KEY_PATTERN)]
    start: Fraction
    end: Fraction


class CreateExperiment(Input):
    key: ResourceName
    prompt: ResourceName
    variants: Annotated[list[VariantIn], msgspec.Meta(min_length=2, max_length=20)]
    description: Description = ""
    coverage: Fraction = 1.0
    hash_seed: Seed | None = None
    hash_attribute: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] = "id"
    hash_version: Literal[1, 2] = 2
    namespace: NamespaceIn | None = None
    forced_variants: ForcedVariants = msgspec.field(default_factory=dict)
    primary_metric: MetricKey | None = None
    guardrail_metrics: GuardrailKeys = msgspec.field(default_factory=list)
    correction: Correction = "holm"
    alpha: Alpha = 0.05
    sequential: bool = False
    sequential_tuning: Annotated[float, msgspec.Meta(ge=100)] = 5000.0
    cuped: bool = False
    cuped_lookback_days: Annotated[int, msgspec.Meta(ge=1, le=365)] = 14


class UpdateExperiment(Input):
    """Fields left out are unchanged. On a running experiment, new weights, seed or namespace,
    or a lower coverage, start a new phase; a higher coverage keeps the phase."""

    description: Description | UnsetType = UNSET
    variants: Annotated[list[VariantIn], msgspec.Meta(min_length=2, max_length=20)] | UnsetType = UNSET
    weights: Annotated[dict[VariantKey, Weight], msgspec.Meta(min_length=2)] | UnsetType = UNSET
    coverage: Fraction | UnsetType = UNSET
    hash_seed: Seed | UnsetType = UNSET
    hash_attribute: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | UnsetType = UNSET
    hash_version: Literal[1, 2] | UnsetType = UNSET
    namespace: NamespaceIn | UnsetType | None = UNSET
    forced_variants: ForcedVariants | UnsetType = UNSET
    primary_metric: MetricKey | UnsetType | None = UNSET
    guardrail_metrics: GuardrailKeys | UnsetType = UNSET
    correction: Correction | UnsetType = UNSET
    alpha: Alpha | UnsetType = UNSET
    sequential: bool | UnsetType = UNSET
    sequential_tuning: Annotated[float, msgspec.Meta(ge=100)] | UnsetType = UNSET
    cuped: bool | UnsetType = UNSET
    cuped_lookback_days: Annotated[int, msgspec.Meta(ge=1, le=365)] | UnsetType = UNSET
    reason: Reason | None = None


class PreviewRequest(Input):
    """Render the prompt as the experiment would for ``unit``: its forced variant, else its hashed one.

    The explicit way to see a draft's (or a running experiment's) variants before they reach anyone:
    production renders never route through drafts. Nothing is recorded (no exposure).
    """

    unit: UnitId
    variables: Annotated[dict[str, Any], msgspec.Meta(max_length=1000)] = msgspec.field(default_factory=dict)


class StopExperiment(Input):
    """Stop; with a ``winner``, its prompt version (with its config) becomes production."""

    winner: VariantKey | None = None
    reason: Reason | None = None


class VariantOut(Output):
    key: str
    prompt_version: int
    weight: float  # normalized: the weights of an experiment sum to 1
    config: ConfigUsed | None

    @classmethod
    def of(cls, variant: ExperimentVariant, weight: float) -> VariantOut:
        config = variant.config_version
        return cls(
            key=variant.key,
            prompt_version=variant.prompt_version,
            weight=weight,
            config=None
            if config is None
            else ConfigUsed(name=config.config.name, version=config.number, model=config.model),
        )


class NamespaceOut(Output):
    name: str
    start: float
    end: float


class PhaseOut(Output):
    number: int
    started_at: datetime
    ended_at: datetime | None
    reason: str
    seed: str
    weights: list[float]
    coverage: float
    units_in_multiple_variants: int

    @classmethod
    def of(cls, phase: ExperimentPhase) -> PhaseOut:
        return cls(
            number=phase.number,
            started_at=phase.started_at,
            ended_at=phase.ended_at,
            reason=phase.reason,
            seed=phase.seed,
            weights=list(phase.weights),
            coverage=phase.coverage,
            units_in_multiple_variants=phase.units_in_multiple_variants,
        )


class GrowthBookExperiment(Output, rename="camel", omit_defaults=True):
    """The experiment as a GrowthBook SDK takes it: with these fields any SDK assigns units as this service does.

    ``ranges`` only for an experiment backing a rollout, whose units are routed by the rollout's percentage
    (the candidate below the share) rather than by the weights' bucket ranges.
    """

    key: str
    variations: list[str]
    seed: str
    hash_version: int
    hash_attribute: str
    weights: list[float]
    coverage: float
    namespace: tuple[str, float, float] | None
    phase: str
    ranges: list[tuple[float, float]] | None = None


class ExperimentDefinition(Output):
    key: str
    description: str
    prompt: str
    status: Status
    phase: int
    variants: list[VariantOut]
    coverage: float
    hash_seed: str
    hash_attribute: str
    hash_version: int
    namespace: NamespaceOut | None
    forced_variants: dict[str, str]
    primary_metric: str | None
    guardrail_metrics: list[str]
    correction: str
    alpha: float
    sequential: bool
    sequential_tuning: float
    cuped: bool
    cuped_lookback_days: int
    winner: str | None
    stop_reason: str | None
    created_at: datetime
    created_by: str
    updated_at: datetime
    updated_by: str
    started_at: datetime | None
    stopped_at: datetime | None
    phases: list[PhaseOut]
    assignment: GrowthBookExperiment

    @classmethod
    def of(cls, experiment: Experiment) -> ExperimentDefinition:
        total = sum(v.weight for v in experiment.variants)
        weights = [v.weight / total for v in experiment.variants]
        namespace = experiment.namespace_range
        primary = [m.metric.key for m in experiment.metrics if m.role == "primary"]
        return cls(
            key=experiment.key,
            description=experiment.description,
            prompt=experiment.prompt.name,
            status=experiment.status,  # type: ignore[arg-type]
            phase=experiment.phase,
            variants=[VariantOut.of(v, w) for v, w in zip(experiment.variants, weights, strict=True)],
            coverage=experiment.coverage,
            hash_seed=experiment.hash_seed,
            hash_attribute=experiment.hash_attribute,
            hash_version=experiment.hash_version,
            namespace=None
            if namespace is None
            else NamespaceOut(name=namespace[0], start=namespace[1], end=namespace[2]),
            forced_variants=dict(experiment.forced_variants),
            primary_metric=primary[0] if primary else None,
            guardrail_metrics=[m.metric.key for m in experiment.metrics if m.role == "guardrail"],
            correction=experiment.correction,
            alpha=experiment.alpha,
            sequential=experiment.sequential,
            sequential_tuning=experiment.sequential_tuning,
            cuped=experiment.cuped,
            cuped_lookback_days=experiment.cuped_lookback_days,
            winner=experiment.winner,
            stop_reason=experiment.stop_reason,
            created_at=experiment.created_at,
            created_by=experiment.created_by,
            updated_at=experiment.updated_at,
            updated_by=experiment.updated_by,
            started_at=experiment.started_at,
            stopped_at=experiment.stopped_at,
            phases=[PhaseOut.of(p) for p in experiment.phases],
            assignment=GrowthBookExperiment(
                key=experiment.key,
                variations=[v.key for v in experiment.variants],
                seed=experiment.hash_seed,
                hash_version=experiment.hash_version,
                hash_attribute=experiment.hash_attribute,
                weights=weights,
                coverage=experiment.coverage,
                namespace=namespace,
                phase=str(experiment.phase),
                ranges=rollout_ranges(weights[-1]) if experiment.kind == "rollout" else None,
            ),
        )


class ExperimentPage(Output):
    items: list[ExperimentDefinition]
    next_cursor: str | None


class PromotedVersion(Output):
    prompt: str
    version: int
    created_version: bool  # a new version was made to carry the winning variant's config
    changed: bool


class StopOut(Output):
    experiment: ExperimentDefinition
    promoted: PromotedVersion | None


# --------------------------------------------------------------------------- results


class EffectOut(Output):
    estimate: float
    std_error: float
    ci_low: float
    ci_high: float
    p_value: float


class SequentialOut(Output):
    """Always-valid intervals and p-values: valid however often the results are looked at."""

    absolute: EffectOut
    relative: EffectOut | None


class ComparisonOut(Output):
    absolute: EffectOut
    relative: EffectOut | None
    p_value: float  # Welch's t-test on the absolute difference (CUPED-adjusted when CUPED applies)
    # The deciding p-value (Welch's, or the sequential one when sequential testing is on),
    # adjusted with the experiment's correction across all metrics and variants.
    p_value_adjusted: float
    significant: bool
    chance_to_beat_control: float
    credible_interval: tuple[float, float] | None  # of the relative difference, flat prior
    dof: float
    sequential: SequentialOut | None
    cuped_theta: float | None


class VariantMetricOut(Output):
    variant: str
    units: int
    mean: float
    std_dev: float
    ci_low: float
    ci_high: float
    vs_control: ComparisonOut | None
    note: str | None = None


class MetricResultOut(Output):
    """``mean`` of a variant is the ratio of totals for a ratio metric, the quantile for a quantile metric."""

    metric: str
    role: str
    kind: str
    aggregation: str
    direction: str
    variants: list[VariantMetricOut]
    quantile: float | None = None


class VariantUnitsOut(Output):
    variant: str
    units: int
    expected_share: float
    observed_share: float


class SrmOut(Output):
    p_value: float
    flagged: bool
    threshold: float


class ResultsOut(Output):
    experiment: str
    phase: int
    status: str
    alpha: float
    correction: str
    sequential: bool
    cuped: bool
    units: int
    units_in_multiple_variants: int
    pending_units: int  # units with new data the statistics do not include yet
    variants: list[VariantUnitsOut]
    srm: SrmOut
    metrics: list[MetricResultOut]
    computed_at: datetime


class TimePointOut(Output):
    at: datetime  # start of the bucket (UTC)
    units: int  # first exposed in this bucket
    cumulative_units: int
    mean: float | None  # the metric's mean over the units first exposed so far (None: no metric, or no data yet)


class VariantSeriesOut(Output):
    variant: str
    points: list[TimePointOut]


class TimeseriesOut(Output):
    """Units and the primary metric per variant, cumulative by first exposure; the last points match the results."""

    experiment: str
    phase: int
    interval: Literal["hour", "day"]
    metric: str | None  # the primary metric
    aggregation: str | None
    variants: list[VariantSeriesOut]


# --------------------------------------------------------------------------- events and exposures

MAX_EVENTS = 1000


# The largest magnitude of an event's value. The statistics sum values and their squares: a value near the largest
# float (1e308) made those sums infinite, the results then null where numbers belong, and a quantile metric's
# histogram unreadable, which stopped the aggregator for every unit claimed with that one. 1e15 is more than any
# count, duration or amount in cents needs, and squares of such values still sum without overflow.
MAX_EVENT_VALUE = 1e15
EventValue = Annotated[
    float, msgspec.Meta(ge=-MAX_EVENT_VALUE, le=MAX_EVENT_VALUE, description="The outcome's value, within ±1e15.")
]


class EventIn(Input):
    unit: UnitId
    metric: MetricKey
    idempotency_key: Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=NO_NUL_PATTERN)]
    timestamp: Annotated[datetime, msgspec.Meta(tz=True, description="When it happened, with a time zone.")]
    value: EventValue = 1.0
    experiment: ResourceName | None = None


class EventBatch(Input):
    # Items are checked one by one, so one bad event is reported without failing the others.
    events: Annotated[list[Any], msgspec.Meta(min_length=1, max_length=MAX_EVENTS)]
    sent_at: (
        Annotated[
            datetime,
            msgspec.Meta(
                tz=True,
                description="The sender's clock when it sent the batch. When given, each event's timestamp is moved "
                "by the difference between the service's clock on receipt and this, so that an app whose clock is "
                "off still files its events at the right time (within a day; further off is refused).",
            ),
        ]
        | None
    ) = None


class ItemErrorOut(Output):
    field: str
    message: str


class EventResultOut(Output):
    index: int
    status: Literal["accepted", "duplicate", "rejected", "buffered"]
    errors: list[ItemErrorOut] | None = None


class EventBatchOut(Output):
    accepted: int
    duplicates: int
    rejected: int
    items: list[EventResultOut]
    buffered: int = 0  # held in memory while the database is unreachable (answered 202)


class ExposureIn(Input):
    """A unit an app assigned itself (with a GrowthBook SDK or this service's client) and showed a variant."""

    experiment: ResourceName
    unit: UnitId
    variant: VariantKey


class ExposureBatch(Input):
    exposures: Annotated[list[ExposureIn], msgspec.Meta(min_length=1, max_length=MAX_EVENTS)]


class ExposureBatchOut(Output):
    recorded: int


# --------------------------------------------------------------------------- unit data


class UnitExposureOut(Output):
    experiment: str
    phase: int
    variant: str
    exposed_at: datetime


class UnitEventOut(Output):
    metric: str
    value: float
    timestamp: datetime
    idempotency_key: str
    experiment: str | None
    received_at: datetime


class UnitMetricOut(Output):
    metric: str
    value: float | None
    pre_exposure_value: float


class UnitStandingOut(Output):
    experiment: str
    phase: int
    variant: str | None  # None: seen in several variants, excluded from the analysis
    first_exposed_at: datetime
    metrics: list[UnitMetricOut]


class UnitCachedAnswerOut(Output):
    """A semantic cache entry that answered one of the unit's requests (until it expires or is erased)."""

    prompt: str
    version: int
    config: str
    config_version: int
    text: str
    created_at: datetime
    expires_at: datetime


class UnitCachedCompletionOut(Output):
    """An exact cache answer stored from one of the unit's requests (until it expires or is erased); it may answer
    other units' identical requests meanwhile. The entry is keyed by a hash of the request, so it names no prompt."""

    text: str
    finish_reason: str | None
    expires_at: datetime


class UnitStoredTextOut(Output):
    """The redacted texts one of the unit's completions keeps (its prompt has ``store_io``, within retention)."""

    prompt: str
    version: int | None
    config: str | None
    config_version: int | None
    created_at: datetime
    prompt_text: str | None
    completion_text: str | None


class UnitCompletionsOut(Output):
    """The unit's completion records: how many, and the texts those of prompts with ``store_io`` keep."""

    count: int = 0
    stored_texts: list[UnitStoredTextOut] = msgspec.field(default_factory=list)


class UnitForcedOut(Output):
    """An experiment that pins the unit to a variant (its forced variants name the unit)."""

    experiment: str
    variant: str


class UnitDataOut(Output):
    """Everything the service holds on a unit."""

    unit: str
    exposures: list[UnitExposureOut]
    events: list[UnitEventOut]
    experiments: list[UnitStandingOut]
    pending_exposures: int  # first exposures still buffered in this process
    cached_answers: list[UnitCachedAnswerOut] = msgspec.field(default_factory=list)
    cached_completions: list[UnitCachedCompletionOut] = msgspec.field(default_factory=list)  # the exact cache's
    completions: UnitCompletionsOut = msgspec.field(default_factory=UnitCompletionsOut)
    forced_variants: list[UnitForcedOut] = msgspec.field(default_factory=list)


class UnitErasedOut(Output):
    unit: str
    exposures: int
    events: int
    derived_rows: int
    cached_answers: int = 0  # semantic cache entries that answered its requests
    completions: int = 0  # completion records cut loose from the unit (their accounting stays)
    completion_texts: int = 0  # of those, the ones whose stored texts were cleared
    cached_completions: int = 0  # exact cache entries stored from its requests
    forced_variants: int = 0  # experiments' pins of the unit to a variant, removed
