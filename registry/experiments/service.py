"""Metrics and experiments: definitions, the draft → running → stopped lifecycle, phases, results."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
from msgspec import UNSET
from sqlalchemy.ext.asyncio import AsyncSession

from registry.auth.audit import AuditLog
from registry.auth.principal import Actor
from registry.configs.models import ModelConfigVersion
from registry.configs.schemas import ConfigRef
from registry.db.base import utcnow
from registry.experiments.aggregation import MetricRule
from registry.experiments.errors import (
    ExperimentConflictError,
    ExperimentExistsError,
    ExperimentInvalidError,
    ExperimentNotFoundError,
    ExperimentStateError,
    MetricExistsError,
    MetricInvalidError,
    MetricNotFoundError,
    PhaseNotFoundError,
)
from registry.experiments.export import (
    DENOMINATOR_SUFFIX,
    ExportColumn,
    ExportFormat,
    ExportPlan,
    export_column_problem,
)
from registry.experiments.models import (
    Experiment,
    ExperimentMetric,
    ExperimentPhase,
    ExperimentVariant,
    Metric,
)
from registry.experiments.repository import ExperimentRepository, MetricRepository, StatisticsRepository
from registry.experiments.results import Analysis, MetricDefinition, PhaseData, build_results
from registry.experiments.router import LiveExperiment, normalized, routing_of
from registry.experiments.schemas import (
    CreateExperiment,
    CreateMetric,
    NamespaceIn,
    PreviewRequest,
    PromotedVersion,
    ResultsOut,
    StopExperiment,
    TimePointOut,
    TimeseriesOut,
    UpdateExperiment,
    UpdateMetric,
    VariantIn,
    VariantSeriesOut,
)
from registry.experiments.sources import ObservationSource
from registry.experiments.timeseries import (
    MAX_POINTS,
    Interval,
    TimelineRow,
    cumulative_series,
    default_interval,
    point_count,
)
from registry.experiments.variables import VersionInputs, kind_refusal, production_refusals
from registry.lib.changes import Change, record_change
from registry.lib.errors import FieldError, ForbiddenError, InvalidInputError
from registry.lib.pagination import PageRequest
from registry.lib.promotion import State
from registry.lib.versioned import PROMOTION_GATE, PROMOTION_LOCK, GateCheck, PromotionGate, PromotionLock
from registry.lib.versioned_schemas import PromoteRequest, RollbackRequest
from registry.outbox.events import emit_event
from registry.prompts.catalog import PromptCatalog
from registry.prompts.models import Prompt, PromptVersion
from registry.prompts.repository import PromptRepository
from registry.prompts.schemas import ConfigUsed, CreatePromptVersion, MessageIn, RenderOut
from registry.prompts.service import PromptLimits, PromptService, compile_version

# Fields an update sets as given: none changes which variant a unit gets.
DEFINITION_FIELDS = ("description", "correction", "alpha", "sequential", "sequential_tuning", "cuped")
DEFAULT_AGGREGATION = {"binomial": "any", "continuous": "sum", "ratio": "sum", "quantile": "mean"}
# A ratio sums its numerator and denominator per unit; a quantile is of units with data (their mean or max).
ALLOWED_AGGREGATIONS = {
    "binomial": {"any"},
    "continuous": {"sum", "mean", "count", "max"},
    "ratio": {"sum"},
    "quantile": {"mean", "max"},
}


class MetricService:
    def __init__(self, session: AsyncSession, sources: Mapping[str, ObservationSource]) -> None:
        self.session = session
        self.repository = MetricRepository(session)
        self.sources = sources
        self.audit = AuditLog(session)

    async def create(self, data: CreateMetric, actor: Actor) -> Metric:
        aggregation = data.aggregation or DEFAULT_AGGREGATION[data.kind]
        problems: list[FieldError] = []
        if aggregation not in ALLOWED_AGGREGATIONS[data.kind]:
            allowed = ", ".join(sorted(ALLOWED_AGGREGATIONS[data.kind]))
            problems.append(FieldError("aggregation", f"a {data.kind} metric aggregates with: {allowed}"))
        source = self.sources.get(data.source)
        if source is None:
            problems.append(FieldError("source", f"unknown source; available: {', '.join(sorted(self.sources))}"))
        elif not source.accepts_field(data.source_field):
            problems.append(FieldError("source_field", f"is not a field of source '{data.source}'"))
        problems += _kind_problems(data, source)
        column_problem = export_column_problem(data.key)
        if column_problem is not None:
            problems.append(FieldError("key", column_problem))
        if problems:
            raise MetricInvalidError("the metric is invalid", errors=problems)
        if await self.repository.exists(data.key):
            raise MetricExistsError(f"a metric named '{data.key}' already exists")
        metric = Metric(
            key=data.key,
            # Ratios and quantiles are of continuous values; the statistic says which (see ``Metric``).
            kind="continuous" if data.kind in ("ratio", "quantile") else data.kind,
            statistic=data.kind if data.kind in ("ratio", "quantile") else "mean",
            aggregation=aggregation,
            direction=data.direction,
            description=data.description,
            source=data.source,
            source_field=data.source_field,
            denominator_field=data.denominator_field,
            quantile=data.quantile,
            created_by=actor.name,
            updated_by=actor.name,
        )
        await self.repository.add(metric)
        await self.audit.record(actor, "metric.create", "metric", metric.key, after=_metric_snapshot(metric))
        return metric

    async def require(self, key: str) -> Metric:
        metric = await self.repository.get(key)
        if metric is None:
            raise MetricNotFoundError(f"no metric is named '{key}'")
        return metric

    async def list_metrics(self, page: PageRequest) -> Sequence[Metric]:
        return await self.repository.list_metrics(page)

    async def update(self, key: str, data: UpdateMetric, actor: Actor) -> Metric:
        """Only the description changes: a metric's meaning is fixed once results may depend on it."""
        metric = await self.require(key)
        before = _metric_snapshot(metric)
        metric.description = data.description
        metric.updated_at = utcnow()
        metric.updated_by = actor.name
        await self.session.flush()
        await self.audit.record(actor, "metric.update", "metric", key, before=before, after=_metric_snapshot(metric))
        return metric


def _window_problems(exposed_from: datetime | None, exposed_to: datetime | None) -> list[FieldError]:
    """What the export's window of first exposures must be, checked before its response starts (a naive time failed
    the stream after its first bytes, a reversed window answered an empty file)."""
    problems = [
        FieldError(field, "needs a time zone, such as 2026-01-31T00:00:00Z")
        for field, moment in (("exposed_from", exposed_from), ("exposed_to", exposed_to))
        if moment is not None and moment.utcoffset() is None
    ]
    if not problems and exposed_from is not None and exposed_to is not None and exposed_to <= exposed_from:
        problems.append(FieldError("exposed_to", "must be after exposed_from"))
    return problems


def _export_columns(metric: Metric) -> list[ExportColumn]:
    rule = MetricRule(metric.id, metric.aggregation, metric.analysis_kind)
    value = ExportColumn(metric.id, metric.key, rule.zero_filled)
    return (
        [value, ExportColumn(metric.id, f"{metric.key}{DENOMINATOR_SUFFIX}", False, True)] if rule.is_ratio else [value]
    )


def _kind_problems(data: CreateMetric, source: ObservationSource | None) -> list[FieldError]:
    """What a ratio's denominator and a quantile's level must be, each problem naming its field."""
    problems: list[FieldError] = []
    if data.kind == "ratio":
        if data.source_field is None:
            problems.append(FieldError("source_field", "a ratio metric needs a numerator field of its source"))
        if data.denominator_field is None:
            problems.append(FieldError("denominator_field", "a ratio metric needs a denominator field of its source"))
        elif source is not None and not source.accepts_field(data.denominator_field):
            problems.append(FieldError("denominator_field", f"is not a field of source '{data.source}'"))
    elif data.denominator_field is not None:
        problems.append(FieldError("denominator_field", "only a ratio metric has a denominator"))
    if data.kind == "quantile":
        if data.quantile is None or not 0 < data.quantile < 1:
            problems.append(FieldError("quantile", "a quantile metric needs a quantile strictly between 0 and 1"))
    elif data.quantile is not None:
        problems.append(FieldError("quantile", "only a quantile metric has a quantile"))
    return problems


def _metric_snapshot(metric: Metric) -> dict[str, Any]:
    return {
        "kind": metric.analysis_kind,
        "aggregation": metric.aggregation,
        "direction": metric.direction,
        "description": metric.description,
        "source": metric.source,
        "source_field": metric.source_field,
        "denominator_field": metric.denominator_field,
        "quantile": metric.quantile,
    }


async def _gate(
    session: AsyncSession, name: str, version: PromptVersion, current: PromptVersion | None, actor: Actor
) -> str | None:
    """The promotion gate's check of ``version`` entering production, as a promotion makes it: the lock first
    (a rollout holding the label answers as it does to a promotion), then the gate; its note for the history."""
    lock: PromotionLock | None = session.info.get(PROMOTION_LOCK)
    if lock is not None:
        await lock.check(session, "prompt", name)
    return await _gate_check(session, name, version, current, actor)


async def _gate_refusal(
    session: AsyncSession, name: str, version: PromptVersion, current: PromptVersion | None, actor: Actor
) -> str | None:
    """The promotion gate's refusal of ``version`` entering production, judged now as ``_gate`` judges it, or None.

    Nothing is written: a refusal raises before the gate records anything (only an override is audited)."""
    try:
        await _gate_check(session, name, version, current, actor)
    except InvalidInputError as refused:
        return refused.detail
    return None


async def _gate_check(
    session: AsyncSession, name: str, version: PromptVersion, current: PromptVersion | None, actor: Actor
) -> str | None:
    """The session's promotion gate on ``version`` entering production (none installed: no check); it raises its
    refusal, else returns its note."""
    gate: PromotionGate | None = session.info.get(PROMOTION_GATE)
    if gate is None:
        return None
    return await gate.check(session, GateCheck("prompt", name, version, State.PRODUCTION, current, actor, None))


def _snapshot(experiment: Experiment) -> dict[str, Any]:
    """What the audit log keeps of an experiment before and after a change: whatever decides what a unit gets and
    how the results judge it, so that each change shows in its entry (forced units are counted per variant: their
    keys are unit ids)."""
    return {
        "status": experiment.status,
        "phase": experiment.phase,
        "variants": {
            v.key: {"prompt_version": v.prompt_version, "weight": v.weight, "config": _config_of(v)}
            for v in experiment.variants
        },
        "coverage": experiment.coverage,
        "hash_seed": experiment.hash_seed,
        "hash_attribute": experiment.hash_attribute,
        "hash_version": experiment.hash_version,
        "namespace": None
        if experiment.namespace is None
        else [experiment.namespace, experiment.namespace_start, experiment.namespace_end],
        "forced_variants": dict(sorted(Counter(experiment.forced_variants.values()).items())),
        "metrics": {m.metric.key: m.role for m in experiment.metrics},
        "analysis": {
            "alpha": experiment.alpha,
            "correction": experiment.correction,
            "sequential": experiment.sequential,
            "sequential_tuning": experiment.sequential_tuning,
            "cuped": experiment.cuped,
            "cuped_lookback_days": experiment.cuped_lookback_days,
        },
    }


def _config_of(variant: ExperimentVariant) -> str | None:
    """The config version a variant runs with, as ``name@number`` (None: the prompt version's own)."""
    config = variant.config_version
    return None if config is None else f"{config.config.name}@{config.number}"


@dataclass(frozen=True, slots=True)
class _UpdatePlan:
    """Checked replacements: None leaves the variants (or the metrics) as they are."""

    variants: list[ExperimentVariant] | None
    metrics: list[ExperimentMetric] | None


@dataclass(frozen=True, slots=True)
class _TrafficChange:
    new_phase: bool
    changed: bool


class ExperimentService:
    def __init__(self, session: AsyncSession, prompt_limits: PromptLimits) -> None:
        self.session = session
        self.repository = ExperimentRepository(session)
        self.metrics = MetricRepository(session)
        self.statistics = StatisticsRepository(session)
        self.prompts = PromptService(session, prompt_limits)
        self.audit = AuditLog(session)

    # -- reading

    async def require(self, key: str, *, for_update: bool = False) -> Experiment:
        experiment = await self.repository.get(key, for_update=for_update)
        if experiment is None:
            raise ExperimentNotFoundError(f"no experiment is named '{key}'")
        return experiment

    async def list_experiments(
        self, page: PageRequest, *, status: str | None, prompt: str | None
    ) -> Sequence[Experiment]:
        return await self.repository.list_experiments(page, status=status, prompt=prompt)

    # -- definitions

    async def create(self, data: CreateExperiment, actor: Actor) -> Experiment:
        problems: list[FieldError] = []
        prompt = await self.prompts.repository.get_resource(data.prompt)
        if prompt is None:
            problems.append(FieldError("prompt", f"no prompt is named '{data.prompt}'"))
        configs: dict[int, ModelConfigVersion] = {}
        variants = await self._variants(prompt, data.variants, problems, configs)
        problems += _namespace_problems(data.namespace)
        problems += _forced_problems(data.forced_variants, [v.key for v in data.variants])
        links = await self._metric_links(data.primary_metric, data.guardrail_metrics, problems)
        if problems:
            raise ExperimentInvalidError("the experiment is invalid", errors=problems)
        assert prompt is not None
        await self._refuse_archived_configs(data.key, configs)
        if await self.repository.exists(data.key):
            raise ExperimentExistsError(f"an experiment named '{data.key}' already exists")
        experiment = Experiment(
            key=data.key,
            description=data.description,
            prompt_id=prompt.id,
            status="draft",
            phase=0,
            coverage=data.coverage,
            hash_seed=data.hash_seed or data.key,
            hash_attribute=data.hash_attribute,
            hash_version=data.hash_version,
            forced_variants=dict(data.forced_variants),
            correction=data.correction,
            alpha=data.alpha,
            sequential=data.sequential,
            sequential_tuning=data.sequential_tuning,
            cuped=data.cuped,
            cuped_lookback_days=data.cuped_lookback_days,
            created_by=actor.name,
            updated_by=actor.name,
            variants=variants,
            metrics=links,
            phases=[],
        )
        _set_namespace(experiment, data.namespace)
        await self.repository.add(experiment)
        experiment = await self.require(data.key)
        await self.audit.record(actor, "experiment.create", "experiment", data.key, after=_snapshot(experiment))
        self._changed(experiment, "created")
        return experiment

    async def _variants(
        self,
        prompt: Prompt | None,
        specs: Sequence[VariantIn],
        problems: list[FieldError],
        configs: dict[int, ModelConfigVersion],
    ) -> list[ExperimentVariant]:
        """The variants of ``specs``; each problem added to ``problems``, each named config to ``configs`` (by
        the variant's index), for the caller to refuse an archived one once the input is valid."""
        keys = [v.key for v in specs]
        if len(set(keys)) != len(keys):
            problems.append(FieldError("variants", "variant keys must be unique"))
        variants: list[ExperimentVariant] = []
        versions: list[tuple[int, str, PromptVersion]] = []
        for index, spec in enumerate(specs):
            config: ModelConfigVersion | None = None
            if prompt is not None:
                version = await self.prompts.repository.get_version(prompt.id, spec.prompt_version)
                if version is None:
                    problems.append(
                        FieldError(f"variants[{index}].prompt_version", f"prompt has no version {spec.prompt_version}")
                    )
                else:
                    versions.append((index, spec.key, version))
            if spec.config is not None:
                try:
                    config = configs[index] = await self.prompts.configs.resolve_ref(spec.config)
                except InvalidInputError as exc:
                    problems.append(FieldError(f"variants[{index}].config", exc.detail))
            variants.append(
                ExperimentVariant(
                    position=index,
                    key=spec.key,
                    prompt_version=spec.prompt_version,
                    config_version_id=config.id if config is not None else None,
                    weight=spec.weight,
                )
            )
        if prompt is not None:
            production = (await self.prompts.workflow.repository.holders(prompt.id)).get(State.PRODUCTION)
            problems += _variant_kind_problems(versions, production)
        return variants

    async def _refuse_archived_configs(self, key: str, configs: Mapping[int, ModelConfigVersion | None]) -> None:
        """Refuse (409) a variant whose config version was retired: its units would run a config taken out of use."""
        for index, config in sorted(configs.items()):
            await self.prompts.configs.refuse_archived(
                config, field=f"variants[{index}].config", use=f"experiment '{key}'"
            )

    async def _metric_links(
        self, primary: str | None, guardrails: Sequence[str], problems: list[FieldError]
    ) -> list[ExperimentMetric]:
        wanted = ([primary] if primary else []) + list(guardrails)
        if len(set(wanted)) != len(wanted):
            problems.append(FieldError("guardrail_metrics", "a metric may appear only once (primary or guardrail)"))
            return []
        found = await self.metrics.by_keys(wanted)
        problems += [FieldError("metrics", f"no metric is named '{key}'") for key in wanted if key not in found]
        return [
            ExperimentMetric(
                metric_id=found[key].id,
                metric=found[key],
                role="primary" if primary and position == 0 else "guardrail",
                position=position,
            )
            for position, key in enumerate(wanted)
            if key in found
        ]

    async def update(self, key: str, data: UpdateExperiment, actor: Actor, *, may_change_routing: bool) -> Experiment:
        """Apply a change. Only a running experiment routes units (drafts never do, stopped ones no longer),
        so on a running one whatever would change the version a unit gets needs ``may_change_routing``
        (the ``promote`` scope, as starting does); a draft is anyone's with ``write`` to edit."""
        experiment = await self.require(key, for_update=True)
        _refuse_rollout(experiment)
        before = _snapshot(experiment)
        status = experiment.status
        plan = await self._check_update(experiment, data)
        if status == "running" and not may_change_routing and changes_routing(experiment, data):
            raise ForbiddenError(
                "changing which version a running experiment's units get needs the 'promote' scope "
                "(weights, coverage, seed, namespace, forced variants)"
            )
        if plan.variants is not None:
            experiment.variants.clear()
            await self.session.flush()  # old keys leave before new ones arrive (unique per experiment)
            experiment.variants.extend(plan.variants)
        traffic = self._apply_traffic(experiment, data)
        if traffic.new_phase:
            if data.namespace is not UNSET:
                await self._check_namespace(experiment)
            self._start_phase(experiment, data.reason or "traffic changed")
        elif traffic.changed and status == "running":
            experiment.phases[-1].coverage = experiment.coverage
        if data.forced_variants is not UNSET:
            experiment.forced_variants = dict(data.forced_variants)
        # Hash version and attribute reach this point only on a draft (refused once running, as variants are).
        for name in (*DEFINITION_FIELDS, "hash_version", "hash_attribute"):
            value = getattr(data, name)
            if value is not UNSET:
                setattr(experiment, name, value)
        rebuild = plan.metrics is not None
        if data.cuped_lookback_days is not UNSET and data.cuped_lookback_days != experiment.cuped_lookback_days:
            experiment.cuped_lookback_days = data.cuped_lookback_days
            rebuild = True
        if plan.metrics is not None:
            experiment.metrics.clear()
            await self.session.flush()
            experiment.metrics.extend(plan.metrics)
        experiment.updated_at = utcnow()
        experiment.updated_by = actor.name
        await self.session.flush()
        if rebuild and status != "draft":
            await self._rebuild_statistics(experiment)
        experiment = await self._reloaded(experiment)
        await self.audit.record(
            actor, "experiment.update", "experiment", key, before=before, after=_snapshot(experiment)
        )
        self._changed(experiment, "updated")
        return experiment

    async def _check_update(self, experiment: Experiment, data: UpdateExperiment) -> _UpdatePlan:
        """Refuse what the status does not allow, and every invalid field at once, before anything changes."""
        identity = (data.variants, data.hash_version, data.hash_attribute)  # what a unit is and which variants exist
        if experiment.status != "draft" and any(f is not UNSET for f in identity):
            raise ExperimentStateError(
                "variants, hash version and hash attribute can only change while the experiment is a draft"
            )
        traffic_fields = (data.weights, data.coverage, data.hash_seed, data.namespace, data.forced_variants)
        if experiment.status == "stopped" and any(f is not UNSET for f in traffic_fields):
            raise ExperimentStateError("a stopped experiment's traffic can no longer change")
        problems: list[FieldError] = []
        variant_keys = [v.key for v in experiment.variants]
        variants = None
        configs: dict[int, ModelConfigVersion] = {}
        if data.variants is not UNSET:
            variants = await self._variants(experiment.prompt, data.variants, problems, configs)
            variant_keys = [v.key for v in data.variants]
        if data.weights is not UNSET and set(data.weights) != set(variant_keys):
            problems.append(FieldError("weights", f"give a weight for each variant: {', '.join(variant_keys)}"))
        if data.namespace is not UNSET:
            problems += _namespace_problems(data.namespace)
        forced = experiment.forced_variants if data.forced_variants is UNSET else data.forced_variants
        problems += _forced_problems(forced, variant_keys)
        metrics = None
        if data.primary_metric is not UNSET or data.guardrail_metrics is not UNSET:
            primary = next((m.metric.key for m in experiment.metrics if m.role == "primary"), None)
            guardrails = [m.metric.key for m in experiment.metrics if m.role == "guardrail"]
            metrics = await self._metric_links(
                primary if data.primary_metric is UNSET else data.primary_metric,
                guardrails if data.guardrail_metrics is UNSET else data.guardrail_metrics,
                problems,
            )
        if problems:
            raise ExperimentInvalidError("the update is invalid", errors=problems)
        await self._refuse_archived_configs(experiment.key, configs)
        return _UpdatePlan(variants=variants, metrics=metrics)

    def _apply_traffic(self, experiment: Experiment, data: UpdateExperiment) -> _TrafficChange:
        """Apply weights, seed, namespace and coverage; say whether the running phase must end."""
        new_phase = changed = False
        if data.weights is not UNSET:
            old = normalized([v.weight for v in experiment.variants])
            for variant in experiment.variants:
                variant.weight = data.weights[variant.key]
            if normalized([v.weight for v in experiment.variants]) != old:
                new_phase = changed = True
        if data.hash_seed is not UNSET and data.hash_seed != experiment.hash_seed:
            experiment.hash_seed = data.hash_seed
            new_phase = changed = True
        if data.namespace is not UNSET and _namespace_of(experiment) != data.namespace:
            _set_namespace(experiment, data.namespace)
            new_phase = changed = True
        if data.coverage is not UNSET and data.coverage != experiment.coverage:
            # Wider coverage widens every variant's bucket range: units already in keep their variant.
            # Narrower coverage drops units that were exposed, so their outcomes would mix: new phase.
            new_phase = new_phase or data.coverage < experiment.coverage
            experiment.coverage = data.coverage
            changed = True
        return _TrafficChange(new_phase=new_phase and experiment.status == "running", changed=changed)

    async def set_weights(self, experiment: Experiment, weights: Sequence[float], reason: str) -> None:
        """New variant weights on a running experiment, in a new phase (a rollout's next step)."""
        for variant, weight in zip(experiment.variants, weights, strict=True):
            variant.weight = weight
        if experiment.status == "running":
            self._start_phase(experiment, reason)
        experiment.updated_at = utcnow()
        await self.session.flush()
        self._changed(experiment, "updated")

    def _start_phase(self, experiment: Experiment, reason: str) -> None:
        now = utcnow()
        if experiment.phases:
            experiment.phases[-1].ended_at = now
        experiment.phase += 1
        experiment.phases.append(
            ExperimentPhase(
                number=experiment.phase,
                started_at=now,
                reason=reason[:200],
                seed=experiment.hash_seed,
                weights=normalized([v.weight for v in experiment.variants]),
                coverage=experiment.coverage,
            )
        )

    async def _rebuild_statistics(self, experiment: Experiment) -> None:
        await self.statistics.lock(wait=True)
        await self.statistics.forget_metric_values(experiment.id)
        await self.statistics.mark_experiment_units_changed(experiment.id)

    async def _reloaded(self, experiment: Experiment) -> Experiment:
        self.session.expunge(experiment)
        return await self.require(experiment.key)

    async def preview(self, key: str, data: PreviewRequest, catalog: PromptCatalog) -> RenderOut:
        """The render ``data.unit`` would get from this experiment if it ran now, forced variants included.

        Read from the database, not the router: a draft is never in the router, and a preview must show
        the definition as saved. The unit gets no exposure.
        """
        experiment = await self.require(key)
        if experiment.status == "stopped":
            raise ExperimentStateError(f"experiment '{key}' is stopped; it routes no unit any more")
        live = LiveExperiment.of(experiment)
        routing = routing_of(live, live.assign(data.unit).variation)
        rendering = await catalog.render(experiment.prompt.name, data.variables, version=routing.version)
        config = routing.config
        return msgspec.structs.replace(
            rendering.out,
            config=rendering.out.config
            if config is None
            else ConfigUsed(name=config.name, version=config.version, model=config.model),
            experiment=routing.experiment,
        )

    # -- lifecycle

    async def start(self, key: str, actor: Actor) -> Experiment:
        experiment = await self.require(key, for_update=True)
        if experiment.status != "draft":
            raise ExperimentStateError(f"experiment '{key}' is {experiment.status}; only a draft can start")
        if not any(m.role == "primary" for m in experiment.metrics):
            raise ExperimentInvalidError(
                "an experiment needs a primary metric to start",
                errors=[FieldError("primary_metric", "is required to start")],
            )
        other = await self.repository.running_on_prompt(experiment.prompt_id, other_than=experiment.id)
        if other is not None:
            raise ExperimentConflictError(
                f"experiment '{other}' is already running on prompt '{experiment.prompt.name}'"
            )
        await self._check_namespace(experiment)
        await self._check_variables(experiment)
        # A config archived since the draft was saved: starting would send units to it.
        await self._refuse_archived_configs(key, {i: v.config_version for i, v in enumerate(experiment.variants)})
        before = _snapshot(experiment)
        experiment.status = "running"
        experiment.started_at = experiment.updated_at = utcnow()
        experiment.updated_by = actor.name
        self._start_phase(experiment, "started")
        await self.session.flush()
        await self.audit.record(
            actor, "experiment.start", "experiment", key, before=before, after=_snapshot(experiment)
        )
        await emit_event(
            self.session,
            "experiment.started",
            key,
            {"experiment": key, "prompt": experiment.prompt.name, "variants": [v.key for v in experiment.variants]},
            actor,
        )
        self._changed(experiment, "started")
        return experiment

    async def _check_variables(self, experiment: Experiment) -> None:
        """Refuse a variant that cannot run any request production's callers send (``production_refusals``: its
        variables conflict with production's, or it is of the other kind, judged again here: production may have
        changed since the draft was saved); with no production, one of another kind than the first variant's."""
        workflow = self.prompts.workflow
        production = (await workflow.repository.holders(experiment.prompt_id)).get(State.PRODUCTION)
        versions: list[tuple[int, str, PromptVersion]] = []
        for index, variant in enumerate(experiment.variants):
            version = await workflow.repository.get_version(experiment.prompt_id, variant.prompt_version)
            if version is not None:
                versions.append((index, variant.key, version))
        if production is None:
            problems = _variant_kind_problems(versions, None)
        else:
            served = version_inputs(production)
            problems = [
                FieldError(f"variants[{index}].prompt_version", refusal)
                for index, _, version in versions
                if version.number != production.number
                for refusal in production_refusals(served, version_inputs(version))
            ]
        if problems:
            raise ExperimentInvalidError(
                "a variant cannot render what production's callers send; its units would all be refused",
                errors=problems,
            )

    async def _check_namespace(self, experiment: Experiment) -> None:
        if experiment.namespace_range is None:
            return
        name, start, end = experiment.namespace_range
        for other, other_start, other_end in await self.repository.running_in_namespace(name, other_than=experiment.id):
            if start < other_end and other_start < end:
                raise ExperimentConflictError(
                    f"namespace '{name}' range [{start}, {end}) overlaps running experiment "
                    f"'{other}' [{other_start}, {other_end})"
                )

    async def stop(
        self, key: str, data: StopExperiment, actor: Actor, *, for_rollout: bool = False
    ) -> tuple[Experiment, PromotedVersion | None]:
        """Stop the experiment; with a winner, promote its version to production (history and audit included).

        An experiment backing a rollout stops only through the rollout (``for_rollout``)."""
        experiment = await self.require(key, for_update=True)
        if not for_rollout:
            _refuse_rollout(experiment)
        if experiment.status != "running":
            raise ExperimentStateError(f"experiment '{key}' is {experiment.status}; only a running one can stop")
        winner = None
        if data.winner is not None:
            winner = next((v for v in experiment.variants if v.key == data.winner), None)
            if winner is None:
                raise ExperimentInvalidError(
                    "the winner is not a variant of the experiment",
                    errors=[FieldError("winner", f"is not one of {', '.join(v.key for v in experiment.variants)}")],
                )
            await self._check_winner(experiment, winner)
        before = _snapshot(experiment)
        now = utcnow()
        experiment.status = "stopped"
        experiment.stopped_at = experiment.updated_at = now
        experiment.updated_by = actor.name
        experiment.winner = data.winner
        experiment.stop_reason = data.reason
        if experiment.phases:
            experiment.phases[-1].ended_at = now
        await self.session.flush()
        promoted = await self._promote_winner(experiment, winner, actor) if winner is not None else None
        after = {**_snapshot(experiment), "winner": data.winner, "reason": data.reason}
        await self.audit.record(actor, "experiment.stop", "experiment", key, before=before, after=after)
        await emit_event(
            self.session,
            "experiment.stopped",
            key,
            {
                "experiment": key,
                "prompt": experiment.prompt.name,
                "winner": data.winner,
                "reason": data.reason,
                "promoted_version": promoted.version if promoted else None,
                "changed": promoted.changed if promoted else False,
            },
            actor,
        )
        self._changed(experiment, "stopped")
        return experiment, promoted

    async def unpromotable(self, prompt_id: int, version: PromptVersion) -> str | None:
        """Why ``version`` can never become production, or None: only a rollback brings an archived version back,
        and only one that was in production before (a new version of its content carrying a variant's or a
        rollout's config would bring back, under another number, a version taken out of use)."""
        if State(version.state) != State.ARCHIVED:
            return None
        if version.number in await self.prompts.workflow.repository.production_numbers(prompt_id):
            return None
        return f"version {version.number} is archived and was never in production, so it cannot be promoted"

    async def cannot_win(self, experiment: Experiment, variant: ExperimentVariant) -> str | None:
        """Why ``variant`` would be refused as the winner, or None: the stop refuses it, and the console's stop form
        does not offer it."""
        version = await self.prompts.workflow.require_version(experiment.prompt, variant.prompt_version)
        return await self.unpromotable(experiment.prompt_id, version)

    async def winner_refusals(
        self, experiment: Experiment, current: PromptVersion | None, actor: Actor
    ) -> dict[str, str]:
        """Why each variant the stop would refuse as winner now cannot win, by key: ``cannot_win``, else the refusal
        of the promotion gate on production, judged as the promotion judges the version the win would put there.

        ``current`` is the version in production as the caller read it (``production_version``): the console's stop
        form reads it once per page, for these refusals and for its "stays production" line alike, as it reads each
        variant's evidence once; the stop judges again when sent, as the evidence may change in between."""
        refusals = {}
        for variant in experiment.variants:
            refusal = await self.cannot_win(experiment, variant)
            if refusal is None:
                try:
                    version = await self._winning_version(experiment, variant)
                except InvalidInputError as refused:  # the version the win would create is refused, as at the stop
                    refusal = refused.detail
                else:
                    if current is None or version.id != current.id:  # the holder's win moves nothing: no gate
                        refusal = await _gate_refusal(self.session, experiment.prompt.name, version, current, actor)
            if refusal is not None:
                refusals[variant.key] = refusal
        return refusals

    async def production_version(self, experiment: Experiment) -> PromptVersion | None:
        """The version of the experiment's prompt in production now, if any."""
        return (await self.prompts.workflow.repository.holders(experiment.prompt_id)).get(State.PRODUCTION)

    async def _winning_version(self, experiment: Experiment, winner: ExperimentVariant) -> PromptVersion:
        """The version ``_promote`` would promote, without writing it: for a variant that ran its version with
        another config, the version carrying that config that ``create_version`` would return (the identical newest
        one, judged as it judges it) or store (the next, not stored). A refusal of that version raises as the stop's.
        """
        prompt = experiment.prompt
        version = await self.prompts.workflow.require_version(prompt, winner.prompt_version)
        if winner.config_version_id is None or winner.config_version_id == version.config_version_id:
            return version
        existing = await self.prompts.existing_version(prompt, _version_with_config(version, winner, experiment.key))
        if existing is not None:
            return existing
        return PromptVersion(
            prompt_id=prompt.id,
            number=prompt.latest_version + 1,
            kind=version.kind,
            template=version.template,
            messages=version.messages,
            input_schema=version.input_schema,
            config_version_id=winner.config_version_id,
            config_version=winner.config_version,
        )

    async def _check_winner(self, experiment: Experiment, winner: ExperimentVariant) -> None:
        """Refuse, before anything is written, a winner whose version can never be promoted."""
        unpromotable = await self.cannot_win(experiment, winner)
        if unpromotable is not None:
            refusal = f"{unpromotable}; stop without a winner to leave production as it is"
            raise ExperimentInvalidError(
                f"variant '{winner.key}' cannot win: {refusal}", errors=[FieldError("winner", refusal)]
            )

    async def _promote_winner(self, experiment: Experiment, winner: ExperimentVariant, actor: Actor) -> PromotedVersion:
        """``_promote``, its refusal naming ``winner`` (the promotion gate's names no field of the stop's)."""
        try:
            return await self._promote(experiment, winner, actor)
        except InvalidInputError as refused:
            if not refused.errors:
                refused.errors = [FieldError("winner", f"variant '{winner.key}' cannot win: {refused.detail}")]
            raise

    async def _promote(self, experiment: Experiment, winner: ExperimentVariant, actor: Actor) -> PromotedVersion:
        workflow = self.prompts.workflow
        prompt = experiment.prompt
        version: PromptVersion = await workflow.require_version(prompt, winner.prompt_version)
        created = False
        if winner.config_version_id is not None and winner.config_version_id != version.config_version_id:
            # The variant ran the version with another config: production gets a version carrying that config.
            version, created = await self.prompts.create_version(
                prompt.name, _version_with_config(version, winner, experiment.key), actor
            )
        reason = f"experiment '{experiment.key}' concluded: variant '{winner.key}' won"
        holders = await workflow.repository.holders(prompt.id)
        current = holders.get(State.PRODUCTION)
        expected = current.number if current is not None else None
        if State(version.state) == State.ARCHIVED:
            # Only a rollback brings an archived version back, and a rollback passes no gate (a person's way back
            # in an emergency); a winner is a promotion all the same, so it shows the gate's evidence first.
            note = await _gate(self.session, prompt.name, version, current, actor)
            if note:
                reason = f"{reason} ({note})"
            promotion = await workflow.rollback(
                prompt.name, RollbackRequest(reason=reason, version=version.number, expected_current=expected), actor
            )
        else:
            promotion = await workflow.promote(
                prompt.name,
                version.number,
                PromoteRequest(to="production", expected_current=expected, reason=reason),
                actor,
            )
        return PromotedVersion(
            prompt=prompt.name, version=version.number, created_version=created, changed=bool(promotion.changes)
        )

    # -- results

    @staticmethod
    def _phase(experiment: Experiment, phase: int | None) -> ExperimentPhase:
        if not experiment.phases:
            raise ExperimentStateError(f"experiment '{experiment.key}' has not started: it has no data yet")
        number = phase if phase is not None else experiment.phase
        record = next((p for p in experiment.phases if p.number == number), None)
        if record is None:
            raise PhaseNotFoundError(f"experiment '{experiment.key}' has no phase {number}")
        return record

    async def results(self, key: str, phase: int | None) -> ResultsOut:
        experiment = await self.require(key)
        data = await self.phase_data(experiment, phase)
        analysis = Analysis(
            alpha=experiment.alpha,
            correction=experiment.correction,  # type: ignore[arg-type]
            sequential=experiment.sequential,
            sequential_tuning=experiment.sequential_tuning,
            cuped=experiment.cuped,
        )
        return build_results(data, analysis, utcnow())

    async def phase_data(self, experiment: Experiment, phase: int | None) -> PhaseData:
        """A phase's per-variant sufficient statistics (the current phase by default)."""
        record = self._phase(experiment, phase)
        number = record.number
        variants = [v.key for v in experiment.variants]
        return PhaseData(
            experiment=experiment.key,
            phase=number,
            status=experiment.status,
            variants=variants,
            weights=record.weights,
            units=await self.statistics.variant_counts(experiment.id, number),
            units_in_multiple_variants=record.units_in_multiple_variants,
            pending_units=await self.statistics.pending_units(experiment.id, number),
            metrics=[
                MetricDefinition(
                    id=link.metric.id,
                    key=link.metric.key,
                    role=link.role,
                    kind=link.metric.analysis_kind,
                    aggregation=link.metric.aggregation,
                    direction=link.metric.direction,
                    quantile=link.metric.quantile,
                )
                for link in experiment.metrics
            ],
            sums=await self.statistics.metric_sums(experiment.id, number),
            histograms=await self.statistics.histograms(experiment.id, number),
        )

    async def timeseries(self, key: str, phase: int | None, interval: Interval | None) -> TimeseriesOut:
        """Units and the primary metric per variant over the phase, by the hour or day of first exposure."""
        experiment = await self.require(key)
        record = self._phase(experiment, phase)
        chosen = interval or default_interval(record.started_at, record.ended_at or utcnow())
        primary = next((link.metric for link in experiment.metrics if link.role == "primary"), None)
        # The per-hour rollups hold means of per-unit values: a ratio or a quantile metric has no curve (units only).
        charted = primary if primary is not None and primary.statistic == "mean" else None
        found = await self.statistics.exposure_timeline(
            experiment.id, record.number, charted.id if charted else None, bucket=chosen
        )
        rows = [TimelineRow(*row) for row in found]
        if point_count(rows, chosen) > MAX_POINTS:
            raise InvalidInputError(
                f"this phase spans more than {MAX_POINTS} {chosen}s; ask for interval=day",
                errors=[FieldError("interval", f"gives more than {MAX_POINTS} points")],
            )
        aggregation = charted.aggregation if charted else None
        series = cumulative_series(rows, [v.key for v in experiment.variants], chosen, aggregation)
        return TimeseriesOut(
            experiment=key,
            phase=record.number,
            interval=chosen,
            metric=primary.key if primary else None,
            aggregation=aggregation,
            variants=[
                VariantSeriesOut(
                    variant=variant,
                    points=[TimePointOut(p.at, p.units, p.cumulative_units, p.mean) for p in points],
                )
                for variant, points in series.items()
            ],
        )

    async def export_plan(
        self,
        key: str,
        *,
        phase: int | None,
        exposed_from: datetime | None,
        exposed_to: datetime | None,
        format: ExportFormat,
    ) -> ExportPlan:
        problems = _window_problems(exposed_from, exposed_to)
        if problems:
            raise InvalidInputError("the export's window is invalid", errors=problems)
        experiment = await self.require(key)
        record = self._phase(experiment, phase)
        return ExportPlan(
            experiment_id=experiment.id,
            experiment=key,
            phase=record.number,
            columns=[column for link in experiment.metrics for column in _export_columns(link.metric)],
            exposed_from=exposed_from,
            exposed_to=exposed_to,
            format=format,
        )

    def _changed(self, experiment: Experiment, action: str) -> None:
        record_change(self.session, Change("experiment", experiment.key, action))


def version_inputs(version: PromptVersion) -> VersionInputs:
    """What ``version`` takes from its callers, for ``production_refusals``."""
    return VersionInputs(version.number, version.kind, compile_version(version).input_schema)


async def running_variant_refusal(session: AsyncSession, production: PromptVersion) -> str | None:
    """Why ``production`` may not enter production now, or None: a variant of the experiment running on its prompt
    could not render what its callers will send (``production_refusals``, as ``start`` judges the variants against
    the production of then). Promoted anyway, every unit routed to that variant would be refused (422), after its
    exposure and before a completion is recorded, unseen by the results."""
    experiments = ExperimentRepository(session)
    key = await experiments.running_on_prompt(production.prompt_id, other_than=0)
    experiment = None if key is None else await experiments.get(key)
    if experiment is None:
        return None
    served = version_inputs(production)
    versions = PromptRepository(session)
    for variant in experiment.variants:
        if variant.prompt_version == production.number:
            continue
        version = await versions.get_version(production.prompt_id, variant.prompt_version)
        refusals = [] if version is None else production_refusals(served, version_inputs(version))
        if refusals:
            return (
                f"experiment '{key}' is running on prompt '{experiment.prompt.name}', and its variant "
                f"'{variant.key}' (version {variant.prompt_version}) {'; '.join(refusals)}; stop the experiment "
                "first, or promote a version its variants can serve"
            )
    return None


def _variant_kind_problems(
    versions: Sequence[tuple[int, str, PromptVersion]], production: PromptVersion | None
) -> list[FieldError]:
    """The variants (index, key, version) of another kind (text or chat) than production's, or, with no production,
    than the first variant's (``kind_refusal``): the experiment's arms would compare different callers, as a
    rollout's would."""
    if production is not None:
        reference, variant = production, None
    elif versions:
        _, variant, reference = versions[0]
    else:
        return []
    refusals = [
        (index, kind_refusal(version.kind, reference.kind, reference.number, variant)) for index, _, version in versions
    ]
    return [FieldError(f"variants[{index}].prompt_version", refusal) for index, refusal in refusals if refusal]


def _refuse_rollout(experiment: Experiment) -> None:
    if experiment.kind == "rollout":
        raise ExperimentStateError(
            f"experiment '{experiment.key}' backs a rollout: pause, abort or advance it through /v1/rollouts"
        )


def _version_with_config(version: PromptVersion, winner: ExperimentVariant, experiment: str) -> CreatePromptVersion:
    config = winner.config_version
    assert config is not None
    return CreatePromptVersion(
        kind="chat" if version.kind == "chat" else "text",
        template=version.template,
        messages=[MessageIn(role=m["role"], content=m["content"]) for m in version.messages]  # type: ignore[arg-type]
        if version.messages
        else None,
        input_schema=version.input_schema,
        config=ConfigRef(name=config.config.name, version=config.number),
        commit_message=f"version {version.number} with config {config.config.name}@{config.number}: "
        f"winner of experiment '{experiment}'",
    )


def changes_routing(experiment: Experiment, data: UpdateExperiment) -> bool:
    """Whether the update would change the variant (so the version or config) some unit gets.

    Variants, hash version and hash attribute cannot change once running (refused before this is
    asked). Values equal to the current ones change nothing, so a client may send the definition back.
    """
    if data.weights is not UNSET:
        current = {v.key: v.weight for v in experiment.variants}
        keys = list(current)
        if normalized([data.weights[k] for k in keys]) != normalized([current[k] for k in keys]):
            return True
    return (
        (data.hash_seed is not UNSET and data.hash_seed != experiment.hash_seed)
        or (data.coverage is not UNSET and data.coverage != experiment.coverage)
        or (data.namespace is not UNSET and data.namespace != _namespace_of(experiment))
        or (data.forced_variants is not UNSET and dict(data.forced_variants) != experiment.forced_variants)
    )


def _namespace_problems(namespace: NamespaceIn | None) -> list[FieldError]:
    if namespace is not None and namespace.start >= namespace.end:
        return [FieldError("namespace", "start must be below end")]
    return []


def _forced_problems(forced: Mapping[str, str], variant_keys: Sequence[str]) -> list[FieldError]:
    return [
        FieldError(f"forced_variants.{unit}", f"'{key}' is not a variant")
        for unit, key in forced.items()
        if key not in variant_keys
    ]


def _namespace_of(experiment: Experiment) -> NamespaceIn | None:
    if experiment.namespace_range is None:
        return None
    name, start, end = experiment.namespace_range
    return NamespaceIn(name=name, start=start, end=end)


def _set_namespace(experiment: Experiment, namespace: NamespaceIn | None) -> None:
    experiment.namespace = namespace.name if namespace else None
    experiment.namespace_start = namespace.start if namespace else None
    experiment.namespace_end = namespace.end if namespace else None
