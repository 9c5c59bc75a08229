"""completions: usage records, key budgets, config fallback, prompt storage policy

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 15:07:46.690875
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIGINT_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "completions",
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("prompt", sa.String(length=128), nullable=False),
        sa.Column("prompt_version", sa.Integer(), nullable=True),
        sa.Column("config", sa.String(length=128), nullable=True),
        sa.Column("config_version", sa.Integer(), nullable=True),
        sa.Column("backend", sa.String(length=64), nullable=True),
        sa.Column("model", sa.String(length=256), nullable=True),
        sa.Column("experiment_key", sa.String(length=128), nullable=True),
        sa.Column("experiment_phase", sa.Integer(), nullable=True),
        sa.Column("variant", sa.String(length=64), nullable=True),
        sa.Column("unit", sa.String(length=256), nullable=True),
        sa.Column("api_key_id", sa.String(length=16), nullable=True),
        sa.Column("stream", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error_type", sa.String(length=64), nullable=True),
        sa.Column("finish_reason", sa.String(length=32), nullable=True),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("cost", sa.Double(), nullable=False),
        sa.Column("latency_ms", sa.Double(), nullable=True),
        sa.Column("ttft_ms", sa.Double(), nullable=True),
        sa.Column("fallback_used", sa.Boolean(), nullable=False),
        sa.Column("cached", sa.Boolean(), nullable=False),
        sa.Column("prompt_text", sa.Text(), nullable=True),
        sa.Column("completion_text", sa.Text(), nullable=True),
        sa.Column("id", BIGINT_ID, autoincrement=True, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_completions")),
    )
    op.create_index("ix_completions_created_at", "completions", ["created_at"], unique=False)
    op.create_index("ix_completions_experiment", "completions", ["experiment_key", "variant"], unique=False)
    op.create_index("ix_completions_key", "completions", ["api_key_id", "created_at"], unique=False)
    op.create_index("ix_completions_prompt", "completions", ["prompt", "prompt_version", "created_at"], unique=False)
    op.create_table(
        "api_key_budgets",
        sa.Column("api_key_id", BIGINT_ID, nullable=False),
        sa.Column("monthly_tokens", sa.Integer(), nullable=True),
        sa.Column("monthly_cost", sa.Double(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(
            ["api_key_id"], ["api_keys.id"], name=op.f("fk_api_key_budgets_api_key_id_api_keys"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("api_key_id", name=op.f("pk_api_key_budgets")),
    )
    # Batch mode: SQLite cannot add a foreign key to an existing table without recreating it.
    with op.batch_alter_table("model_config_versions") as batch_op:
        batch_op.add_column(sa.Column("fallback_version_id", BIGINT_ID, nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_model_config_versions_fallback_version_id_model_config_versions"),
            "model_config_versions",
            ["fallback_version_id"],
            ["id"],
            ondelete="RESTRICT",
        )
    with op.batch_alter_table("prompts") as batch_op:
        batch_op.add_column(sa.Column("store_io", sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("prompts") as batch_op:
        batch_op.drop_column("store_io")
    with op.batch_alter_table("model_config_versions") as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_model_config_versions_fallback_version_id_model_config_versions"), type_="foreignkey"
        )
        batch_op.drop_column("fallback_version_id")
    op.drop_table("api_key_budgets")
    op.drop_index("ix_completions_prompt", table_name="completions")
    op.drop_index("ix_completions_key", table_name="completions")
    op.drop_index("ix_completions_experiment", table_name="completions")
    op.drop_index("ix_completions_created_at", table_name="completions")
    op.drop_table("completions")
