"""semantic_cache: semantic cache entries and per-prompt settings

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 00:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIGINT_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    # Plain ALTER TABLE on both databases (see 0010: a copy of a table on SQLite cascades into its children).
    # A semantic cache hit's similarity; NULL for every other completion.
    op.add_column("completions", sa.Column("cache_similarity", sa.Double(), nullable=True))
    op.create_table(
        "semantic_cache_settings",
        sa.Column("prompt_id", BIGINT_ID, nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("threshold", sa.Double(), nullable=False),
        sa.Column("exact_variables", JSON, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(
            ["prompt_id"], ["prompts.id"], name=op.f("fk_semantic_cache_settings_prompt_id_prompts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("prompt_id", name=op.f("pk_semantic_cache_settings")),
    )
    op.create_table(
        "semantic_cache_entries",
        sa.Column("scope", sa.String(length=64), nullable=False),
        sa.Column("prompt", sa.String(length=128), nullable=False),
        sa.Column("prompt_version", sa.Integer(), nullable=False),
        sa.Column("config", sa.String(length=128), nullable=False),
        sa.Column("config_version", sa.Integer(), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("finish_reason", sa.String(length=32), nullable=True),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        # The digest of the unit whose request it answered (registry.experiments.privacy.unit_digest), so
        # erasing the unit's data deletes it; NULL for a request without a unit.
        sa.Column("unit_digest", sa.String(length=48), nullable=True),
        sa.Column("id", BIGINT_ID, autoincrement=True, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_semantic_cache_entries")),
    )
    op.create_index("ix_semantic_cache_entries_scope", "semantic_cache_entries", ["scope", "created_at"], unique=False)
    op.create_index("ix_semantic_cache_entries_expires_at", "semantic_cache_entries", ["expires_at"], unique=False)
    op.create_index("ix_semantic_cache_entries_unit_digest", "semantic_cache_entries", ["unit_digest"], unique=False)
    op.create_index("ix_semantic_cache_entries_prompt", "semantic_cache_entries", ["prompt"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_semantic_cache_entries_prompt", table_name="semantic_cache_entries")
    op.drop_index("ix_semantic_cache_entries_unit_digest", table_name="semantic_cache_entries")
    op.drop_index("ix_semantic_cache_entries_expires_at", table_name="semantic_cache_entries")
    op.drop_index("ix_semantic_cache_entries_scope", table_name="semantic_cache_entries")
    op.drop_table("semantic_cache_entries")
    op.drop_table("semantic_cache_settings")
    # ALTER TABLE ... DROP COLUMN (SQLite 3.35 and later), for the reason given in upgrade().
    op.drop_column("completions", "cache_similarity")
