"""rollouts: a candidate version taking a growing share of production traffic, backed by an experiment

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 22:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIGINT_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    # A plain ALTER TABLE (see 0010: a copy of ``experiments`` on SQLite would cascade into its children).
    op.add_column("experiments", sa.Column("kind", sa.String(length=16), server_default="experiment", nullable=False))
    op.create_table(
        "rollouts",
        sa.Column("prompt_id", BIGINT_ID, nullable=False),
        sa.Column("experiment_id", BIGINT_ID, nullable=False),
        sa.Column("candidate_version", sa.Integer(), nullable=False),
        sa.Column("production_version", sa.Integer(), nullable=True),
        sa.Column("config", sa.String(length=128), nullable=True),
        sa.Column("config_version", sa.Integer(), nullable=True),
        sa.Column("steps", JSON, nullable=False),
        sa.Column("guardrails", JSON, nullable=False),
        sa.Column("alpha", sa.Double(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("step_started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("evidence", JSON, nullable=True),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=128), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("id", BIGINT_ID, autoincrement=True, nullable=False),
        sa.CheckConstraint(
            "status IN ('running', 'paused', 'rolled_back', 'aborted', 'completed')",
            name=op.f("ck_rollouts_status"),
        ),
        sa.ForeignKeyConstraint(
            ["prompt_id"], ["prompts.id"], name=op.f("fk_rollouts_prompt_id_prompts"), ondelete="RESTRICT"
        ),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name=op.f("fk_rollouts_experiment_id_experiments"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollouts")),
        sa.UniqueConstraint("experiment_id", name=op.f("uq_rollouts_experiment_id")),
    )
    op.create_index(op.f("ix_rollouts_prompt_id"), "rollouts", ["prompt_id"], unique=False)
    op.create_index(
        "uq_rollouts_one_active",
        "rollouts",
        ["prompt_id"],
        unique=True,
        postgresql_where=sa.text("status IN ('running', 'paused')"),
        sqlite_where=sa.text("status IN ('running', 'paused')"),
    )
    op.create_table(
        "rollout_events",
        sa.Column("rollout_id", BIGINT_ID, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("detail", JSON, nullable=False),
        sa.Column("id", BIGINT_ID, autoincrement=True, nullable=False),
        sa.ForeignKeyConstraint(
            ["rollout_id"], ["rollouts.id"], name=op.f("fk_rollout_events_rollout_id_rollouts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollout_events")),
    )
    op.create_index(op.f("ix_rollout_events_rollout_id"), "rollout_events", ["rollout_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_rollout_events_rollout_id"), table_name="rollout_events")
    op.drop_table("rollout_events")
    op.drop_index("uq_rollouts_one_active", table_name="rollouts")
    op.drop_index(op.f("ix_rollouts_prompt_id"), table_name="rollouts")
    op.drop_table("rollouts")
    op.drop_column("experiments", "kind")
