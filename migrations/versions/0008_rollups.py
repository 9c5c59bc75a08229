"""rollups: experiment units and metric sums per hour of first exposure; completions per day

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 21:00:00.000000

Both are filled from the rows already stored (the per-unit rows the aggregator derived, and the
completions), so the results over time and the usage reports read the same numbers after the
upgrade as before it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# What the usage rollup stores for a completion without a version, config, key or experiment; written into
# the statement rather than bound, so PostgreSQL sees the same expression in SELECT and GROUP BY.
NO_NAME: sa.ColumnElement[str] = sa.literal_column("''")
NO_NUMBER: sa.ColumnElement[int] = sa.literal_column("0")


def upgrade() -> None:
    op.create_table(
        "experiment_hourly_units",
        sa.Column("experiment_id", BIG_ID, nullable=False),
        sa.Column("phase", sa.Integer(), nullable=False),
        sa.Column("variant", sa.String(length=64), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("units", BIG_ID, nullable=False),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name=op.f("fk_experiment_hourly_units_experiment_id_experiments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("experiment_id", "phase", "variant", "hour", name=op.f("pk_experiment_hourly_units")),
    )
    op.create_table(
        "experiment_hourly_metric_sums",
        sa.Column("experiment_id", BIG_ID, nullable=False),
        sa.Column("phase", sa.Integer(), nullable=False),
        sa.Column("variant", sa.String(length=64), nullable=False),
        sa.Column("metric_id", BIG_ID, nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("n", BIG_ID, nullable=False),
        sa.Column("sum", sa.Double(), nullable=False),
        sa.Column("sum_squares", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name=op.f("fk_experiment_hourly_metric_sums_experiment_id_experiments"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["metric_id"],
            ["metrics.id"],
            name=op.f("fk_experiment_hourly_metric_sums_metric_id_metrics"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "experiment_id", "phase", "variant", "metric_id", "hour", name=op.f("pk_experiment_hourly_metric_sums")
        ),
    )
    op.create_table(
        "usage_daily",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("prompt", sa.String(length=128), nullable=False),
        sa.Column("prompt_version", sa.Integer(), nullable=False),
        sa.Column("config", sa.String(length=128), nullable=False),
        sa.Column("config_version", sa.Integer(), nullable=False),
        sa.Column("api_key_id", sa.String(length=16), nullable=False),
        sa.Column("experiment_key", sa.String(length=128), nullable=False),
        sa.Column("variant", sa.String(length=64), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("cached", sa.BigInteger(), nullable=False),
        sa.Column("fallbacks", sa.BigInteger(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost", sa.Double(), nullable=False),
        sa.Column("latency_ms_sum", sa.Double(), nullable=False),
        sa.Column("latency_count", sa.BigInteger(), nullable=False),
        sa.Column("ttft_ms_sum", sa.Double(), nullable=False),
        sa.Column("ttft_count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "day",
            "prompt",
            "prompt_version",
            "config",
            "config_version",
            "api_key_id",
            "experiment_key",
            "variant",
            name=op.f("pk_usage_daily"),
        ),
    )
    backfill(op.get_bind().dialect.name)


def backfill(dialect: str) -> None:
    """Fill the rollups from the rows stored, grouped as the aggregator and the usage recorder add to them."""
    units = _table("experiment_units", "experiment_id", "phase", "unit", "variant", "first_exposed_at")
    values = _table("unit_metric_values", "experiment_id", "phase", "metric_id", "unit", "variant", "value")
    completions = _table(
        "completions",
        *("created_at", "prompt", "prompt_version", "config", "config_version", "api_key_id", "experiment_key"),
        *("variant", "status", "cached", "fallback_used", "input_tokens", "output_tokens", "cost", "latency_ms"),
        "ttft_ms",
    )
    # The start of a first exposure's hour and a completion's day, in UTC, as the models store them (on
    # SQLite, SQLAlchemy writes datetimes with microseconds and dates as YYYY-MM-DD).
    if dialect == "postgresql":
        hour = sa.func.timezone("UTC", sa.func.date_trunc("hour", sa.func.timezone("UTC", units.c.first_exposed_at)))
        day = sa.func.date(sa.func.timezone("UTC", completions.c.created_at))
    else:
        hour = sa.func.strftime("%Y-%m-%d %H:00:00.000000", units.c.first_exposed_at)
        day = sa.func.date(completions.c.created_at)

    per_hour = [units.c.experiment_id, units.c.phase, units.c.variant, hour]
    counted = sa.select(*per_hour, sa.func.count()).where(units.c.variant.is_not(None)).group_by(*per_hour)
    units_columns = ["experiment_id", "phase", "variant", "hour", "units"]
    op.execute(sa.insert(_table("experiment_hourly_units", *units_columns)).from_select(units_columns, counted))

    per_metric_hour = [values.c.experiment_id, values.c.phase, values.c.variant, values.c.metric_id, hour]
    value = values.c.value
    summed = (
        sa.select(*per_metric_hour, sa.func.count(), sa.func.sum(value), sa.func.sum(value * value))
        .join(
            units,
            (units.c.experiment_id == values.c.experiment_id)
            & (units.c.phase == values.c.phase)
            & (units.c.unit == values.c.unit),
        )
        .where(values.c.variant.is_not(None), value.is_not(None))
        .group_by(*per_metric_hour)
    )
    sums_columns = ["experiment_id", "phase", "variant", "metric_id", "hour", "n", "sum", "sum_squares"]
    op.execute(sa.insert(_table("experiment_hourly_metric_sums", *sums_columns)).from_select(sums_columns, summed))

    c = completions.c
    groups = [
        day,
        c.prompt,
        sa.func.coalesce(c.prompt_version, NO_NUMBER),
        sa.func.coalesce(c.config, NO_NAME),
        sa.func.coalesce(c.config_version, NO_NUMBER),
        sa.func.coalesce(c.api_key_id, NO_NAME),
        sa.func.coalesce(c.experiment_key, NO_NAME),
        sa.func.coalesce(c.variant, NO_NAME),
    ]

    def count_where(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[int]:
        return sa.func.sum(sa.case((condition, 1), else_=0))

    per_day = sa.select(
        *groups,
        sa.func.count(),
        count_where(c.status != "ok"),
        count_where(c.cached == sa.true()),
        count_where(c.fallback_used == sa.true()),
        sa.func.coalesce(sa.func.sum(c.input_tokens), 0),
        sa.func.coalesce(sa.func.sum(c.output_tokens), 0),
        sa.func.coalesce(sa.func.sum(c.cost), 0.0),
        sa.func.coalesce(sa.func.sum(c.latency_ms), 0.0),
        sa.func.count(c.latency_ms),
        sa.func.coalesce(sa.func.sum(c.ttft_ms), 0.0),
        sa.func.count(c.ttft_ms),
    ).group_by(*groups)
    usage_columns = ["day", "prompt", "prompt_version", "config", "config_version", "api_key_id", "experiment_key"]
    usage_columns += ["variant", "requests", "errors", "cached", "fallbacks", "input_tokens", "output_tokens", "cost"]
    usage_columns += ["latency_ms_sum", "latency_count", "ttft_ms_sum", "ttft_count"]
    op.execute(sa.insert(_table("usage_daily", *usage_columns)).from_select(usage_columns, per_day))


def _table(name: str, *columns: str) -> sa.TableClause:
    return sa.table(name, *(sa.column(column) for column in columns))


def downgrade() -> None:
    op.drop_table("usage_daily")
    op.drop_table("experiment_hourly_metric_sums")
    op.drop_table("experiment_hourly_units")
