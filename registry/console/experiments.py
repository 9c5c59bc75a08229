"""Experiment pages: the form's saves, start and stop through the experiment service, and the results' figures.

The service is the API's (``ExperimentService``), so the console refuses exactly what the API
refuses; its field errors are put next to the form's fields. A refused change is rolled back
before the form is shown again, so nothing of it is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from markupsafe import Markup
from sqlalchemy.ext.asyncio import AsyncSession

from registry.auth.principal import Actor
from registry.console import formatting
from registry.console.charts import IntervalRow, LineSeries, interval_plot, line_chart
from registry.console.experiments_form import (
    ExperimentForm,
    ExperimentFormError,
    create_request,
    metric_matches,
    service_errors,
    update_request,
    without_unchanged,
)
from registry.console.experiments_form import FormData as SentForm
from registry.experiments.errors import ExperimentExistsError
from registry.experiments.schemas import (
    ComparisonOut,
    EffectOut,
    ExperimentDefinition,
    MetricResultOut,
    ResultsOut,
    StopExperiment,
    TimeseriesOut,
)
from registry.experiments.service import ExperimentService
from registry.lib.errors import RegistryError
from registry.lib.pagination import PageRequest
from registry.prompts.service import PromptLimits

METRICS_OFFERED = 500


# --------------------------------------------------------------------------- figures (pure)


@dataclass(frozen=True, slots=True)
class ShownEffect:
    """The effect a metric row shows: relative when there is one, sequential when the experiment is."""

    effect: EffectOut
    relative: bool

    @classmethod
    def of(cls, comparison: ComparisonOut) -> ShownEffect:
        source = comparison.sequential or comparison
        if source.relative is not None:
            return cls(source.relative, True)
        return cls(source.absolute, False)

    def text(self, value: float) -> str:
        return formatting.signed_percent(value) if self.relative else formatting.estimate(value)

    @property
    def interval(self) -> str:
        return f"{self.text(self.effect.ci_low)} to {self.text(self.effect.ci_high)}"


def effect_chart(metric: MetricResultOut, results: ResultsOut, chart_id: str) -> Markup | None:
    """Each variant's effect on the metric against control, with its interval; None with nothing to compare."""
    shown = [(i, v, ShownEffect.of(v.vs_control)) for i, v in enumerate(metric.variants) if v.vs_control]
    if not shown:
        return None
    relative = all(s.relative for _, _, s in shown)
    kind = "always-valid sequential" if results.sequential else f"{(1 - results.alpha) * 100:g}%"
    rows = [
        IntervalRow(
            label=v.variant,
            estimate=s.effect.estimate,
            low=s.effect.ci_low,
            high=s.effect.ci_high,
            colour=i,
            text=f"{v.variant}: {s.text(s.effect.estimate)} ({s.interval})",
        )
        for i, v, s in shown
    ]
    better = "right" if metric.direction == "higher" else "left"
    return interval_plot(
        chart_id=chart_id,
        title=f"{'Relative' if relative else 'Absolute'} effect on {metric.metric}, with {kind} intervals",
        description=f"Each variant against {metric.variants[0].variant}; the line marks no effect and {better} of it "
        f"is better. " + "; ".join(r.text for r in rows) + ".",
        rows=rows,
        x_label=f"{'Relative' if relative else 'Absolute'} difference from {metric.variants[0].variant}",
        format_tick=formatting.percent_tick if relative else (lambda v, step: formatting.count_tick(v, step)),
    )


@dataclass(frozen=True, slots=True)
class SeriesRow:
    at: str
    cells: list[tuple[int, float | None]]  # per variant: cumulative units and mean


@dataclass(frozen=True, slots=True)
class TimeFigures:
    units_chart: Markup
    metric_chart: Markup | None
    variants: list[str]
    rows: list[SeriesRow]  # the charts' numbers as a table


def _bucket_label(series: TimeseriesOut) -> str:
    return "%m-%d %H:00" if series.interval == "hour" else "%m-%d"


def time_figures(series: TimeseriesOut) -> TimeFigures | None:
    """Cumulative units and the primary metric's mean per variant, over the phase; None before any exposure."""
    if not series.variants or not series.variants[0].points:
        return None
    when = _bucket_label(series)
    categories = [p.at.strftime(when) for p in series.variants[0].points]
    unit = "hour" if series.interval == "hour" else "day"
    axis = f"First exposure, by {unit} (UTC)"
    units = line_chart(
        chart_id="units-over-time",
        title="Units per variant over time",
        description=f"Units first exposed so far, per variant, by {unit}; at the end: "
        + "; ".join(f"{s.variant} {formatting.count(s.points[-1].cumulative_units)}" for s in series.variants)
        + ". The table below holds every point.",
        categories=categories,
        series=[
            LineSeries(s.variant, [float(p.cumulative_units) for p in s.points], i)
            for i, s in enumerate(series.variants)
        ],
        x_label=axis,
        y_label="Units",
        format_value=lambda v: formatting.count(int(v)),
        format_tick=formatting.count_tick,
    )
    metric = None
    if series.metric is not None:
        metric = line_chart(
            chart_id="metric-over-time",
            title=f"{series.metric} per variant over time",
            description=f"Mean of {series.metric} over the units first exposed so far, per variant, by {unit}; "
            "at the end: "
            + "; ".join(f"{s.variant} {formatting.estimate(s.points[-1].mean)}" for s in series.variants)
            + ". The table below holds every point.",
            categories=categories,
            series=[LineSeries(s.variant, [p.mean for p in s.points], i) for i, s in enumerate(series.variants)],
            x_label=axis,
            y_label=f"Mean {series.metric}",
            format_value=formatting.estimate,
            format_tick=lambda v, step: f"{v:.{max(formatting.decimals_for(step), 0)}f}",
        )
    rows = [
        SeriesRow(category, [(s.points[i].cumulative_units, s.points[i].mean) for s in series.variants])
        for i, category in enumerate(categories)
    ]
    return TimeFigures(units, metric, [s.variant for s in series.variants], rows)


def results_refresh_ms(*, console_seconds: float, statistics_seconds: float) -> int:
    """How often a running experiment's results page asks for its moving parts (``static/live.js``).

    The service folds new exposures and events in every ``statistics_seconds``: asking sooner shows nothing new.
    """
    return round(max(console_seconds, statistics_seconds) * 1000)


@dataclass(frozen=True, slots=True)
class ResultsPage:
    """The experiment, and once it has started, its results exactly as ``GET .../results`` returns them."""

    experiment: ExperimentDefinition
    results: ResultsOut | None
    effects: dict[str, Markup] = field(default_factory=dict)  # per metric key
    over_time: TimeFigures | None = None

    @property
    def active(self) -> bool:
        """Still taking exposures and events: its results page refreshes itself."""
        return self.experiment.status == "running" and self.results is not None


# --------------------------------------------------------------------------- pages


@dataclass(frozen=True, slots=True)
class FormPage:
    """The form to show: its values, the problems by field, and what the page may offer."""

    form: ExperimentForm
    errors: dict[str, str]
    metrics: Sequence[str]  # offered as choices; any other metric's key may be typed
    experiment: ExperimentDefinition | None = None  # None: a new experiment
    more_metrics: bool = False  # more metrics exist than are offered
    status_code: int = 422  # the status a refused form is answered with (409 when the experiment's state refused it)

    @property
    def guardrail_choices(self) -> list[str]:
        """The metrics offered, and after them any the form chose that are not offered (they stay chosen)."""
        offered = set(self.metrics)
        return [*self.metrics, *(m for m in dict.fromkeys(self.form.guardrail_metrics) if m not in offered)]

    @property
    def guardrail_rows(self) -> list[GuardrailRow]:
        """Every guardrail choice, each shown when it matches the filter or is chosen (a chosen one never hides)."""
        chosen = set(self.form.guardrail_metrics)
        wanted = self.form.guardrail_filter
        return [
            GuardrailRow(m, m in chosen, m in chosen or not wanted or metric_matches(m, wanted))
            for m in self.guardrail_choices
        ]


@dataclass(frozen=True, slots=True)
class GuardrailRow:
    """One guardrail checkbox: the metric, whether it is ticked, whether the filter shows it."""

    metric: str
    chosen: bool
    shown: bool


@dataclass(frozen=True, slots=True)
class ChangePage:
    """A start or stop confirmation: the experiment, and why each variant the stop would refuse as winner cannot win
    (archived, or refused by the promotion gate; the stop form offers the others)."""

    experiment: ExperimentDefinition
    cannot_win: dict[str, str] = field(default_factory=dict)  # per variant key
    production: int | None = None  # the number of the prompt's version in production (the stop form's)


class ExperimentPages:
    def __init__(self, session: AsyncSession, limits: PromptLimits) -> None:
        self.session = session
        self.experiments = ExperimentService(session, limits)

    async def definition(self, key: str) -> ExperimentDefinition:
        return ExperimentDefinition.of(await self.experiments.require(key))

    async def start_page(self, key: str) -> ChangePage:
        return ChangePage(await self.definition(key))

    async def stop_page(self, key: str, actor: Actor) -> ChangePage:
        """The experiment, and while it runs (the stop form shows), the service's reason for each variant it would
        refuse as ``actor``'s winner: one that can never be promoted, or one the promotion gate refuses now."""
        experiment = await self.experiments.require(key)
        cannot_win, production = {}, None
        if experiment.status == "running":
            current = await self.experiments.production_version(experiment)
            cannot_win = await self.experiments.winner_refusals(experiment, current, actor)
            production = current.number if current is not None else None
        return ChangePage(ExperimentDefinition.of(experiment), cannot_win, production)

    async def metric_keys(self) -> tuple[list[str], bool]:
        """The first metrics by key to offer, and whether there are more (the form takes their keys typed)."""
        found = await self.experiments.metrics.list_metrics(PageRequest(limit=METRICS_OFFERED, after=None))
        return [m.key for m in found[:METRICS_OFFERED]], len(found) > METRICS_OFFERED

    async def results(self, key: str, phase: int | None) -> ResultsPage:
        experiment = await self.definition(key)
        if not experiment.phases:
            return ResultsPage(experiment, None)
        results = await self.experiments.results(key, phase)
        series = await self.experiments.timeseries(key, phase, None)
        effects = {
            m.metric: chart
            for index, m in enumerate(results.metrics)
            if (chart := effect_chart(m, results, f"effect-{index + 1}")) is not None
        }
        return ResultsPage(experiment, results, effects, time_figures(series))

    async def new_form(self, form: ExperimentForm, errors: dict[str, str] | None = None) -> FormPage:
        metrics, more = await self.metric_keys()
        return FormPage(form, errors or {}, metrics, more_metrics=more)

    async def edit_form(
        self, key: str, form: ExperimentForm | None = None, errors: dict[str, str] | None = None
    ) -> FormPage:
        experiment = await self.definition(key)
        metrics, more = await self.metric_keys()
        return FormPage(form or ExperimentForm.of(experiment), errors or {}, metrics, experiment, more_metrics=more)

    async def create(self, form: ExperimentForm, actor: Actor) -> FormPage | None:
        """Create the draft; the form again with its problems when it is refused (nothing kept)."""
        try:
            await self.experiments.create(create_request(form), actor)
        except ExperimentFormError as exc:
            return await self.new_form(form, exc.errors)
        except ExperimentExistsError as exc:
            await self.session.rollback()
            return await self.new_form(form, {"key": exc.detail})
        except RegistryError as exc:
            if exc.status_code != 422:
                raise
            await self.session.rollback()
            errors = service_errors(exc.errors, form.guardrail_metrics)
            return await self.new_form(form, errors or {"form": exc.detail})
        return None

    async def update(
        self, key: str, form: ExperimentForm, sent: SentForm, actor: Actor, *, may_change_routing: bool
    ) -> FormPage | None:
        """Apply the form as ``PATCH`` would; a key without ``promote`` changing a running one's routing gets 403."""
        current = await self.definition(key)
        try:
            request = without_unchanged(update_request(form, status=current.status, sent=sent), current)
            await self.experiments.update(key, request, actor, may_change_routing=may_change_routing)
        except ExperimentFormError as exc:
            return await self.edit_form(key, form, exc.errors)
        except RegistryError as exc:
            if exc.status_code not in (409, 422):
                raise
            await self.session.rollback()
            errors = service_errors(exc.errors, form.guardrail_metrics)
            page = await self.edit_form(key, form, errors or {"form": exc.detail})
            return replace(page, status_code=exc.status_code)  # 409: the experiment's state refuses it
        return None

    async def start(self, key: str, actor: Actor) -> str | None:
        """Start; the reason it cannot when it is refused (a missing primary metric, another one running)."""
        try:
            await self.experiments.start(key, actor)
        except RegistryError as exc:
            if exc.status_code not in (409, 422):
                raise
            await self.session.rollback()
            return "; ".join([exc.detail, *(f"{e.field} {e.message}" for e in exc.errors)])
        return None

    async def stop(self, key: str, data: StopExperiment, actor: Actor) -> str | None:
        """Stop, promoting the winner's version; the reason when refused."""
        try:
            await self.experiments.stop(key, data, actor)
        except RegistryError as exc:
            if exc.status_code not in (409, 422):
                raise
            await self.session.rollback()
            return exc.detail
        return None
