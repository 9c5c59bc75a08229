"""completion metrics: ratio and quantile metric kinds, per-variant histograms of quantile metrics, and
completions found by unit

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 21:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIGINT_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # Plain ALTER TABLE, never a copy of the table: on SQLite a copy drops ``metrics``, and with foreign keys
    # on that deletes every row that references a metric (or fails). So the statistic is a column of its own
    # rather than new values of ``kind`` (whose CHECK constraint only a copy could change).
    op.add_column("metrics", sa.Column("statistic", sa.String(length=16), server_default="mean", nullable=False))
    op.add_column("metrics", sa.Column("denominator_field", sa.String(length=64), nullable=True))
    op.add_column("metrics", sa.Column("quantile", sa.Double(), nullable=True))
    op.create_table(
        "experiment_metric_histograms",
        sa.Column("experiment_id", BIGINT_ID, nullable=False),
        sa.Column("phase", sa.Integer(), nullable=False),
        sa.Column("variant", sa.String(length=64), nullable=False),
        sa.Column("metric_id", BIGINT_ID, nullable=False),
        sa.Column("bucket", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("units", BIGINT_ID, nullable=False),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name=op.f("fk_experiment_metric_histograms_experiment_id_experiments"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["metric_id"],
            ["metrics.id"],
            name=op.f("fk_experiment_metric_histograms_metric_id_metrics"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "experiment_id", "phase", "variant", "metric_id", "bucket", name=op.f("pk_experiment_metric_histograms")
        ),
    )
    op.create_index("ix_completions_unit", "completions", ["unit", "created_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_completions_unit", table_name="completions")
    op.drop_table("experiment_metric_histograms")
    # ALTER TABLE ... DROP COLUMN (SQLite 3.35 and later), for the reason given in upgrade().
    op.drop_column("metrics", "quantile")
    op.drop_column("metrics", "denominator_field")
    op.drop_column("metrics", "statistic")
