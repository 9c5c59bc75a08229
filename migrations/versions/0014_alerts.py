"""alerts: alert rules and incidents

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05 00:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIGINT_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
KINDS = "'error_rate', 'latency_p95', 'ttft_p95', 'cost_per_hour', 'breaker_open', 'budget', 'rollout_rolled_back'"


def upgrade() -> None:
    op.create_table(
        "alert_rules",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("threshold", sa.Double(), nullable=False),
        sa.Column("resolve_threshold", sa.Double(), nullable=True),
        sa.Column("window_seconds", sa.Integer(), nullable=False),
        sa.Column("for_seconds", sa.Integer(), nullable=False),
        sa.Column("min_count", sa.Integer(), nullable=False),
        sa.Column("prompt", sa.String(length=128), nullable=True),
        sa.Column("backend", sa.String(length=64), nullable=True),
        sa.Column("api_key", sa.String(length=16), nullable=True),
        sa.Column("group_by", sa.String(length=16), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("pending", JSON, nullable=False),
        sa.Column("last_evaluated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=128), nullable=False),
        sa.Column("id", BIGINT_ID, autoincrement=True, nullable=False),
        sa.CheckConstraint(f"kind IN ({KINDS})", name=op.f("ck_alert_rules_kind")),
        sa.CheckConstraint(
            "group_by IS NULL OR group_by IN ('prompt', 'backend', 'key')", name=op.f("ck_alert_rules_group_by")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_rules")),
        sa.UniqueConstraint("name", name=op.f("uq_alert_rules_name")),
    )
    op.create_table(
        "alert_incidents",
        sa.Column("rule_id", BIGINT_ID, nullable=True),
        sa.Column("rule_name", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("subject", sa.String(length=256), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.Column("peak_value", sa.Double(), nullable=False),
        sa.Column("last_value", sa.Double(), nullable=True),
        sa.Column("threshold", sa.Double(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolution", sa.String(length=64), nullable=True),
        sa.Column("id", BIGINT_ID, autoincrement=True, nullable=False),
        sa.CheckConstraint("status IN ('firing', 'resolved')", name=op.f("ck_alert_incidents_status")),
        sa.ForeignKeyConstraint(
            ["rule_id"], ["alert_rules.id"], name=op.f("fk_alert_incidents_rule_id_alert_rules"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_incidents")),
    )
    op.create_index(op.f("ix_alert_incidents_rule_id"), "alert_incidents", ["rule_id"], unique=False)
    op.create_index(
        "uq_alert_incidents_one_firing",
        "alert_incidents",
        ["rule_id", "subject"],
        unique=True,
        postgresql_where=sa.text("status = 'firing'"),
        sqlite_where=sa.text("status = 'firing'"),
    )
    # Rollbacks in a window are read by time.
    op.create_index("ix_rollout_events_at", "rollout_events", ["at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_rollout_events_at", table_name="rollout_events")
    op.drop_index("uq_alert_incidents_one_firing", table_name="alert_incidents")
    op.drop_index(op.f("ix_alert_incidents_rule_id"), table_name="alert_incidents")
    op.drop_table("alert_incidents")
    op.drop_table("alert_rules")
