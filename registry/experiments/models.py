"""Experiments, metrics, exposures, outcome events, and the statistics derived from them.

Raw facts (``exposures``, ``events``) are written by requests and the
exposure buffer. Derived rows (``experiment_units``, ``unit_metric_values``,
``experiment_variant_counts``, ``experiment_metric_sums`` and their per-hour
``experiment_hourly_units``, ``experiment_hourly_metric_sums``) are maintained by
the statistics aggregator only (see ``registry.experiments.aggregator``);
``unit_changes`` is its queue of units to recompute.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Double,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from registry.configs.models import ModelConfigVersion
from registry.db.base import Base, BigIntId, IdMixin, JSONValue, utcnow
from registry.prompts.models import Prompt

UNIT_LENGTH = 256


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


EXPERIMENT_STATUSES = ("draft", "running", "stopped")
METRIC_KINDS = ("binomial", "continuous")
# What the analysis compares: the mean of per-unit values, a ratio of two per-unit sums, or a quantile.
METRIC_STATISTICS = ("mean", "ratio", "quantile")
AGGREGATIONS = ("sum", "mean", "count", "max", "any")
DIRECTIONS = ("higher", "lower")
CORRECTIONS = ("holm", "benjamini-hochberg", "none")
METRIC_ROLES = ("primary", "guardrail")


class Metric(IdMixin, Base):
    """What an outcome is and how a unit's events become one number for the analysis.

    ``statistic`` says what the analysis compares: ``mean`` of the per-unit values, ``ratio`` (the
    unit sums ``source_field`` as numerator and ``denominator_field`` as denominator, and variants
    compare the ratios of their totals) or ``quantile`` (the ``quantile``, for example 0.95, of the
    per-unit values across units). The API names a ratio's or a quantile's kind by its statistic.
    """

    __tablename__ = "metrics"
    __table_args__ = (
        CheckConstraint(_in("kind", METRIC_KINDS), name="kind"),
        CheckConstraint(_in("aggregation", AGGREGATIONS), name="aggregation"),
        CheckConstraint(_in("direction", DIRECTIONS), name="direction"),
    )

    key: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(String(2000), default="")
    kind: Mapped[str] = mapped_column(String(16))
    aggregation: Mapped[str] = mapped_column(String(8))
    direction: Mapped[str] = mapped_column(String(8))
    source: Mapped[str] = mapped_column(String(32), default="events")
    source_field: Mapped[str | None] = mapped_column(String(64))
    statistic: Mapped[str] = mapped_column(String(16), default="mean", server_default="mean")
    denominator_field: Mapped[str | None] = mapped_column(String(64))
    quantile: Mapped[float | None] = mapped_column(Double)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(128))

    @property
    def analysis_kind(self) -> str:
        """The kind the API shows and the results analyse: ``ratio``, ``quantile``, or the values' kind."""
        return self.kind if self.statistic == "mean" else self.statistic


class Experiment(IdMixin, Base):
    """An A/B test on one prompt: variants, traffic settings, metrics and analysis settings."""

    __tablename__ = "experiments"
    __table_args__ = (
        CheckConstraint(_in("status", EXPERIMENT_STATUSES), name="status"),
        CheckConstraint(_in("correction", CORRECTIONS), name="correction"),
        CheckConstraint("coverage >= 0 AND coverage <= 1", name="coverage"),
        CheckConstraint("hash_version IN (1, 2)", name="hash_version"),
        CheckConstraint(
            "namespace IS NULL OR (namespace_start >= 0 AND namespace_start < namespace_end AND namespace_end <= 1)",
            name="namespace_range",
        ),
        Index("ix_experiments_namespace", "namespace", "status"),
        # One running experiment per prompt: the router sends a prompt's units through one experiment.
        Index(
            "uq_experiments_one_running",
            "prompt_id",
            unique=True,
            postgresql_where=text("status = 'running'"),
            sqlite_where=text("status = 'running'"),
        ),
    )

    key: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(String(2000), default="")
    prompt_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("prompts.id", ondelete="RESTRICT"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="draft")
    phase: Mapped[int] = mapped_column(Integer, default=0)
    coverage: Mapped[float] = mapped_column(Double, default=1.0)
    hash_seed: Mapped[str] = mapped_column(String(128))
    hash_attribute: Mapped[str] = mapped_column(String(64), default="id")
    hash_version: Mapped[int] = mapped_column(Integer, default=2)
    # "rollout": the experiment backs a progressive rollout (registry.rollouts), whose units are routed by
    # the rollout's percentage assignment (the candidate's share only grows) instead of bucket ranges.
    kind: Mapped[str] = mapped_column(String(16), default="experiment", server_default="experiment")
    namespace: Mapped[str | None] = mapped_column(String(64))
    namespace_start: Mapped[float | None] = mapped_column(Double)
    namespace_end: Mapped[float | None] = mapped_column(Double)
    forced_variants: Mapped[dict[str, Any]] = mapped_column(JSONValue, default=dict)
    correction: Mapped[str] = mapped_column(String(24), default="holm")
    alpha: Mapped[float] = mapped_column(Double, default=0.05)
    sequential: Mapped[bool] = mapped_column(Boolean, default=False)
    sequential_tuning: Mapped[float] = mapped_column(Double, default=5000.0)
    cuped: Mapped[bool] = mapped_column(Boolean, default=False)
    cuped_lookback_days: Mapped[int] = mapped_column(Integer, default=14)
    winner: Mapped[str | None] = mapped_column(String(64))
    stop_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(128))
    started_at: Mapped[datetime | None]
    stopped_at: Mapped[datetime | None]

    prompt: Mapped[Prompt] = relationship(lazy="raise")
    variants: Mapped[list[ExperimentVariant]] = relationship(
        lazy="raise", order_by="ExperimentVariant.position", cascade="all, delete-orphan"
    )
    metrics: Mapped[list[ExperimentMetric]] = relationship(
        lazy="raise", order_by="ExperimentMetric.position", cascade="all, delete-orphan"
    )
    phases: Mapped[list[ExperimentPhase]] = relationship(
        lazy="raise", order_by="ExperimentPhase.number", cascade="all, delete-orphan"
    )

    @property
    def namespace_range(self) -> tuple[str, float, float] | None:
        """GrowthBook's namespace triple (name, start, end), or None."""
        if self.namespace is None or self.namespace_start is None or self.namespace_end is None:
            return None
        return (self.namespace, self.namespace_start, self.namespace_end)


class ExperimentVariant(IdMixin, Base):
    """One arm: a prompt version, optionally run with another model config version. Position 0 is the control."""

    __tablename__ = "experiment_variants"
    __table_args__ = (
        UniqueConstraint("experiment_id", "key"),
        UniqueConstraint("experiment_id", "position"),
        CheckConstraint("weight > 0", name="weight_positive"),
    )

    experiment_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("experiments.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    key: Mapped[str] = mapped_column(String(64))
    prompt_version: Mapped[int] = mapped_column(Integer)
    config_version_id: Mapped[int | None] = mapped_column(
        BigIntId, ForeignKey("model_config_versions.id", ondelete="RESTRICT"), index=True
    )
    weight: Mapped[float] = mapped_column(Double)

    config_version: Mapped[ModelConfigVersion | None] = relationship(lazy="raise")


class ExperimentMetric(IdMixin, Base):
    """A metric the experiment is judged on: the primary one, or a guardrail."""

    __tablename__ = "experiment_metrics"
    __table_args__ = (
        UniqueConstraint("experiment_id", "metric_id"),
        CheckConstraint(_in("role", METRIC_ROLES), name="role"),
    )

    experiment_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("experiments.id", ondelete="CASCADE"))
    metric_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("metrics.id", ondelete="RESTRICT"), index=True)
    role: Mapped[str] = mapped_column(String(16))
    position: Mapped[int] = mapped_column(Integer)

    metric: Mapped[Metric] = relationship(lazy="raise")


class ExperimentPhase(IdMixin, Base):
    """A period with fixed seed and weights; results never mix phases."""

    __tablename__ = "experiment_phases"
    __table_args__ = (UniqueConstraint("experiment_id", "number"),)

    experiment_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("experiments.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None]
    reason: Mapped[str] = mapped_column(String(200))
    seed: Mapped[str] = mapped_column(String(128))
    weights: Mapped[list[float]] = mapped_column(JSONValue)
    coverage: Mapped[float] = mapped_column(Double)
    units_in_multiple_variants: Mapped[int] = mapped_column(Integer, default=0)


class Exposure(Base):
    """A unit seen in a variant, first time in the phase. Several variants for one unit are kept, then excluded."""

    __tablename__ = "exposures"
    __table_args__ = (Index("ix_exposures_unit", "unit"),)

    experiment_id: Mapped[int] = mapped_column(
        BigIntId, ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    phase: Mapped[int] = mapped_column(Integer, primary_key=True)
    unit: Mapped[str] = mapped_column(String(UNIT_LENGTH), primary_key=True)
    variant: Mapped[str] = mapped_column(String(64), primary_key=True)
    exposed_at: Mapped[datetime]


class OutcomeEvent(IdMixin, Base):
    """An outcome reported by an app, kept once per idempotency key."""

    __tablename__ = "outcome_events"
    __table_args__ = (Index("ix_outcome_events_unit", "unit", "occurred_at"),)

    idempotency_key: Mapped[str] = mapped_column(String(128), unique=True)
    unit: Mapped[str] = mapped_column(String(UNIT_LENGTH))
    metric_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("metrics.id", ondelete="RESTRICT"), index=True)
    value: Mapped[float] = mapped_column(Double)
    occurred_at: Mapped[datetime]
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    experiment_id: Mapped[int | None] = mapped_column(
        BigIntId, ForeignKey("experiments.id", ondelete="CASCADE"), index=True
    )


class UnitChange(Base):
    """A unit whose exposures or events changed since the aggregator last looked at it."""

    __tablename__ = "unit_changes"
    __table_args__ = (Index("ix_unit_changes_changed_at", "changed_at"),)

    unit: Mapped[str] = mapped_column(String(UNIT_LENGTH), primary_key=True)
    changed_at: Mapped[datetime] = mapped_column(default=utcnow)


class ExperimentUnit(Base):
    """Derived: a unit's standing in a phase. ``variant`` is NULL when it was seen in several variants."""

    __tablename__ = "experiment_units"
    __table_args__ = (Index("ix_experiment_units_unit", "unit"),)

    experiment_id: Mapped[int] = mapped_column(
        BigIntId, ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    phase: Mapped[int] = mapped_column(Integer, primary_key=True)
    unit: Mapped[str] = mapped_column(String(UNIT_LENGTH), primary_key=True)
    variant: Mapped[str | None] = mapped_column(String(64))
    first_exposed_at: Mapped[datetime]


class UnitMetricValue(Base):
    """Derived: a unit's value of one metric after exposure, and before it (the CUPED covariate).

    For a ``ratio`` metric ``value`` is the unit's numerator and ``pre_value`` its denominator (ratio
    metrics have no covariate), so the sums' ``pre_*`` and ``cross_sum`` are the denominator's sums
    and the sum of products that the delta method needs.

    ``variant`` is where this row was added to the sums (NULL: not counted), so
    the aggregator can take exactly that contribution out again.
    """

    __tablename__ = "unit_metric_values"
    __table_args__ = (Index("ix_unit_metric_values_unit", "unit"),)

    experiment_id: Mapped[int] = mapped_column(
        BigIntId, ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    phase: Mapped[int] = mapped_column(Integer, primary_key=True)
    metric_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("metrics.id", ondelete="CASCADE"), primary_key=True)
    unit: Mapped[str] = mapped_column(String(UNIT_LENGTH), primary_key=True)
    variant: Mapped[str | None] = mapped_column(String(64))
    value: Mapped[float | None] = mapped_column(Double)
    pre_value: Mapped[float] = mapped_column(Double, default=0.0)


class ExperimentVariantCount(Base):
    """Derived: units analysed per variant and phase (those seen in exactly one variant)."""

    __tablename__ = "experiment_variant_counts"

    experiment_id: Mapped[int] = mapped_column(
        BigIntId, ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    phase: Mapped[int] = mapped_column(Integer, primary_key=True)
    variant: Mapped[str] = mapped_column(String(64), primary_key=True)
    units: Mapped[int] = mapped_column(BigIntId, default=0)


class ExperimentMetricSums(Base):
    """Derived: sufficient statistics of a metric's per-unit values, per variant and phase."""

    __tablename__ = "experiment_metric_sums"

    experiment_id: Mapped[int] = mapped_column(
        BigIntId, ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    phase: Mapped[int] = mapped_column(Integer, primary_key=True)
    variant: Mapped[str] = mapped_column(String(64), primary_key=True)
    metric_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("metrics.id", ondelete="CASCADE"), primary_key=True)
    n: Mapped[int] = mapped_column(BigIntId, default=0)
    sum: Mapped[float] = mapped_column(Double, default=0.0)
    sum_squares: Mapped[float] = mapped_column(Double, default=0.0)
    pre_sum: Mapped[float] = mapped_column(Double, default=0.0)
    pre_sum_squares: Mapped[float] = mapped_column(Double, default=0.0)
    cross_sum: Mapped[float] = mapped_column(Double, default=0.0)


class ExperimentMetricHistogram(Base):
    """Derived: how many units' values of a ``quantile`` metric fall in each bucket of the fixed
    log-spaced histogram (``registry.stats.quantiles``), per variant and phase. Kept by the aggregator
    by the same differences as the sums; a bucket may fall to zero units and stay.
    """

    __tablename__ = "experiment_metric_histograms"

    experiment_id: Mapped[int] = mapped_column(
        BigIntId, ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    phase: Mapped[int] = mapped_column(Integer, primary_key=True)
    variant: Mapped[str] = mapped_column(String(64), primary_key=True)
    metric_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("metrics.id", ondelete="CASCADE"), primary_key=True)
    bucket: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    units: Mapped[int] = mapped_column(BigIntId, default=0)


class ExperimentHourlyUnits(Base):
    """Derived: units per hour (UTC) of first exposure, variant and phase, for the results over time.

    Kept by the aggregator beside ``experiment_variant_counts`` and by the same differences, so the
    charts read a few rows per hour instead of grouping the phase's per-unit rows. Units seen in
    several variants are not counted, as in the results; a row may fall to zero units and stay.
    """

    __tablename__ = "experiment_hourly_units"

    experiment_id: Mapped[int] = mapped_column(
        BigIntId, ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    phase: Mapped[int] = mapped_column(Integer, primary_key=True)
    variant: Mapped[str] = mapped_column(String(64), primary_key=True)
    hour: Mapped[datetime] = mapped_column(primary_key=True)
    units: Mapped[int] = mapped_column(BigIntId, default=0)


class ExperimentHourlyMetricSums(Base):
    """Derived: a metric's per-unit values summed by hour (UTC) of the unit's first exposure, variant and phase.

    ``n`` counts the units with a stored value (as ``experiment_metric_sums`` does), so a zero-filled
    metric's units without data are in ``experiment_hourly_units`` only.
    """

    __tablename__ = "experiment_hourly_metric_sums"

    experiment_id: Mapped[int] = mapped_column(
        BigIntId, ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    phase: Mapped[int] = mapped_column(Integer, primary_key=True)
    variant: Mapped[str] = mapped_column(String(64), primary_key=True)
    metric_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("metrics.id", ondelete="CASCADE"), primary_key=True)
    hour: Mapped[datetime] = mapped_column(primary_key=True)
    n: Mapped[int] = mapped_column(BigIntId, default=0)
    sum: Mapped[float] = mapped_column(Double, default=0.0)
    sum_squares: Mapped[float] = mapped_column(Double, default=0.0)
