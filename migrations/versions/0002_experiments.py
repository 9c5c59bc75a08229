"""experiments: metrics, exposures, outcome events, derived statistics

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 15:15:12.570917
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "metrics",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("description", sa.String(length=2000), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("aggregation", sa.String(length=8), nullable=False),
        sa.Column("direction", sa.String(length=8), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("source_field", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=128), nullable=False),
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.CheckConstraint(
            "aggregation IN ('sum', 'mean', 'count', 'max', 'any')", name=op.f("ck_metrics_aggregation")
        ),
        sa.CheckConstraint("direction IN ('higher', 'lower')", name=op.f("ck_metrics_direction")),
        sa.CheckConstraint("kind IN ('binomial', 'continuous')", name=op.f("ck_metrics_kind")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_metrics")),
        sa.UniqueConstraint("key", name=op.f("uq_metrics_key")),
    )
    op.create_table(
        "unit_changes",
        sa.Column("unit", sa.String(length=256), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("unit", name=op.f("pk_unit_changes")),
    )
    op.create_index("ix_unit_changes_changed_at", "unit_changes", ["changed_at"], unique=False)
    op.create_table(
        "experiments",
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("description", sa.String(length=2000), nullable=False),
        sa.Column("prompt_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("phase", sa.Integer(), nullable=False),
        sa.Column("coverage", sa.Double(), nullable=False),
        sa.Column("hash_seed", sa.String(length=128), nullable=False),
        sa.Column("hash_attribute", sa.String(length=64), nullable=False),
        sa.Column("hash_version", sa.Integer(), nullable=False),
        sa.Column("namespace", sa.String(length=64), nullable=True),
        sa.Column("namespace_start", sa.Double(), nullable=True),
        sa.Column("namespace_end", sa.Double(), nullable=True),
        sa.Column(
            "forced_variants",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("correction", sa.String(length=24), nullable=False),
        sa.Column("alpha", sa.Double(), nullable=False),
        sa.Column("sequential", sa.Boolean(), nullable=False),
        sa.Column("sequential_tuning", sa.Double(), nullable=False),
        sa.Column("cuped", sa.Boolean(), nullable=False),
        sa.Column("cuped_lookback_days", sa.Integer(), nullable=False),
        sa.Column("winner", sa.String(length=64), nullable=True),
        sa.Column("stop_reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=128), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.CheckConstraint(
            "correction IN ('holm', 'benjamini-hochberg', 'none')", name=op.f("ck_experiments_correction")
        ),
        sa.CheckConstraint("status IN ('draft', 'running', 'stopped')", name=op.f("ck_experiments_status")),
        sa.CheckConstraint("coverage >= 0 AND coverage <= 1", name=op.f("ck_experiments_coverage")),
        sa.CheckConstraint("hash_version IN (1, 2)", name=op.f("ck_experiments_hash_version")),
        sa.CheckConstraint(
            "namespace IS NULL OR (namespace_start >= 0 AND namespace_start < namespace_end AND namespace_end <= 1)",
            name=op.f("ck_experiments_namespace_range"),
        ),
        sa.ForeignKeyConstraint(
            ["prompt_id"], ["prompts.id"], name=op.f("fk_experiments_prompt_id_prompts"), ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_experiments")),
        sa.UniqueConstraint("key", name=op.f("uq_experiments_key")),
    )
    op.create_index("ix_experiments_namespace", "experiments", ["namespace", "status"], unique=False)
    op.create_index(op.f("ix_experiments_prompt_id"), "experiments", ["prompt_id"], unique=False)
    op.create_index(
        "uq_experiments_one_running",
        "experiments",
        ["prompt_id"],
        unique=True,
        postgresql_where=sa.text("status = 'running'"),
        sqlite_where=sa.text("status = 'running'"),
    )
    op.create_table(
        "experiment_metric_sums",
        sa.Column("experiment_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("phase", sa.Integer(), nullable=False),
        sa.Column("variant", sa.String(length=64), nullable=False),
        sa.Column("metric_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("n", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("sum", sa.Double(), nullable=False),
        sa.Column("sum_squares", sa.Double(), nullable=False),
        sa.Column("pre_sum", sa.Double(), nullable=False),
        sa.Column("pre_sum_squares", sa.Double(), nullable=False),
        sa.Column("cross_sum", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name=op.f("fk_experiment_metric_sums_experiment_id_experiments"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["metric_id"], ["metrics.id"], name=op.f("fk_experiment_metric_sums_metric_id_metrics"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint(
            "experiment_id", "phase", "variant", "metric_id", name=op.f("pk_experiment_metric_sums")
        ),
    )
    op.create_table(
        "experiment_metrics",
        sa.Column("experiment_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("metric_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.CheckConstraint("role IN ('primary', 'guardrail')", name=op.f("ck_experiment_metrics_role")),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name=op.f("fk_experiment_metrics_experiment_id_experiments"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["metric_id"], ["metrics.id"], name=op.f("fk_experiment_metrics_metric_id_metrics"), ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_experiment_metrics")),
        sa.UniqueConstraint("experiment_id", "metric_id", name=op.f("uq_experiment_metrics_experiment_id_metric_id")),
    )
    op.create_index(op.f("ix_experiment_metrics_metric_id"), "experiment_metrics", ["metric_id"], unique=False)
    op.create_table(
        "experiment_phases",
        sa.Column("experiment_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.Column("seed", sa.String(length=128), nullable=False),
        sa.Column(
            "weights", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("coverage", sa.Double(), nullable=False),
        sa.Column("units_in_multiple_variants", sa.Integer(), nullable=False),
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name=op.f("fk_experiment_phases_experiment_id_experiments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_experiment_phases")),
        sa.UniqueConstraint("experiment_id", "number", name=op.f("uq_experiment_phases_experiment_id_number")),
    )
    op.create_table(
        "experiment_units",
        sa.Column("experiment_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("phase", sa.Integer(), nullable=False),
        sa.Column("unit", sa.String(length=256), nullable=False),
        sa.Column("variant", sa.String(length=64), nullable=True),
        sa.Column("first_exposed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name=op.f("fk_experiment_units_experiment_id_experiments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("experiment_id", "phase", "unit", name=op.f("pk_experiment_units")),
    )
    op.create_index("ix_experiment_units_unit", "experiment_units", ["unit"], unique=False)
    op.create_table(
        "experiment_variant_counts",
        sa.Column("experiment_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("phase", sa.Integer(), nullable=False),
        sa.Column("variant", sa.String(length=64), nullable=False),
        sa.Column("units", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name=op.f("fk_experiment_variant_counts_experiment_id_experiments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("experiment_id", "phase", "variant", name=op.f("pk_experiment_variant_counts")),
    )
    op.create_table(
        "experiment_variants",
        sa.Column("experiment_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("prompt_version", sa.Integer(), nullable=False),
        sa.Column("config_version_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("weight", sa.Double(), nullable=False),
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.CheckConstraint("weight > 0", name=op.f("ck_experiment_variants_weight_positive")),
        sa.ForeignKeyConstraint(
            ["config_version_id"],
            ["model_config_versions.id"],
            name=op.f("fk_experiment_variants_config_version_id_model_config_versions"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name=op.f("fk_experiment_variants_experiment_id_experiments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_experiment_variants")),
        sa.UniqueConstraint("experiment_id", "key", name=op.f("uq_experiment_variants_experiment_id_key")),
        sa.UniqueConstraint("experiment_id", "position", name=op.f("uq_experiment_variants_experiment_id_position")),
    )
    op.create_index(
        op.f("ix_experiment_variants_config_version_id"), "experiment_variants", ["config_version_id"], unique=False
    )
    op.create_table(
        "exposures",
        sa.Column("experiment_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("phase", sa.Integer(), nullable=False),
        sa.Column("unit", sa.String(length=256), nullable=False),
        sa.Column("variant", sa.String(length=64), nullable=False),
        sa.Column("exposed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name=op.f("fk_exposures_experiment_id_experiments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("experiment_id", "phase", "unit", "variant", name=op.f("pk_exposures")),
    )
    op.create_index("ix_exposures_unit", "exposures", ["unit"], unique=False)
    op.create_table(
        "outcome_events",
        sa.Column("idempotency_key", sa.String(length=128), nullable=False),
        sa.Column("unit", sa.String(length=256), nullable=False),
        sa.Column("metric_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("experiment_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name=op.f("fk_outcome_events_experiment_id_experiments"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["metric_id"], ["metrics.id"], name=op.f("fk_outcome_events_metric_id_metrics"), ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outcome_events")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_outcome_events_idempotency_key")),
    )
    op.create_index(op.f("ix_outcome_events_experiment_id"), "outcome_events", ["experiment_id"], unique=False)
    op.create_index(op.f("ix_outcome_events_metric_id"), "outcome_events", ["metric_id"], unique=False)
    op.create_index("ix_outcome_events_unit", "outcome_events", ["unit", "occurred_at"], unique=False)
    op.create_table(
        "unit_metric_values",
        sa.Column("experiment_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("phase", sa.Integer(), nullable=False),
        sa.Column("metric_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("unit", sa.String(length=256), nullable=False),
        sa.Column("variant", sa.String(length=64), nullable=True),
        sa.Column("value", sa.Double(), nullable=True),
        sa.Column("pre_value", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name=op.f("fk_unit_metric_values_experiment_id_experiments"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["metric_id"], ["metrics.id"], name=op.f("fk_unit_metric_values_metric_id_metrics"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("experiment_id", "phase", "metric_id", "unit", name=op.f("pk_unit_metric_values")),
    )
    op.create_index("ix_unit_metric_values_unit", "unit_metric_values", ["unit"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_unit_metric_values_unit", table_name="unit_metric_values")
    op.drop_table("unit_metric_values")
    op.drop_index("ix_outcome_events_unit", table_name="outcome_events")
    op.drop_index(op.f("ix_outcome_events_metric_id"), table_name="outcome_events")
    op.drop_index(op.f("ix_outcome_events_experiment_id"), table_name="outcome_events")
    op.drop_table("outcome_events")
    op.drop_index("ix_exposures_unit", table_name="exposures")
    op.drop_table("exposures")
    op.drop_index(op.f("ix_experiment_variants_config_version_id"), table_name="experiment_variants")
    op.drop_table("experiment_variants")
    op.drop_table("experiment_variant_counts")
    op.drop_index("ix_experiment_units_unit", table_name="experiment_units")
    op.drop_table("experiment_units")
    op.drop_table("experiment_phases")
    op.drop_index(op.f("ix_experiment_metrics_metric_id"), table_name="experiment_metrics")
    op.drop_table("experiment_metrics")
    op.drop_table("experiment_metric_sums")
    op.drop_index(
        "uq_experiments_one_running",
        table_name="experiments",
        postgresql_where=sa.text("status = 'running'"),
        sqlite_where=sa.text("status = 'running'"),
    )
    op.drop_index(op.f("ix_experiments_prompt_id"), table_name="experiments")
    op.drop_index("ix_experiments_namespace", table_name="experiments")
    op.drop_table("experiments")
    op.drop_index("ix_unit_changes_changed_at", table_name="unit_changes")
    op.drop_table("unit_changes")
    op.drop_table("metrics")
