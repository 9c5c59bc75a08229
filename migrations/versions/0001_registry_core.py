"""registry core: prompts, configs, keys, audit

Revision ID: 0001
Revises:
Create Date: 2026-11-23 14:54:31.260835
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("public_id", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column(
            "scopes", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_by", sa.String(length=128), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("public_id", name=op.f("uq_api_keys_public_id")),
    )
    op.create_table(
        "audit_log",
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("actor_key_id", sa.String(length=16), nullable=True),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("resource_type", sa.String(length=32), nullable=False),
        sa.Column("resource_name", sa.String(length=256), nullable=False),
        sa.Column(
            "before", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=True
        ),
        sa.Column(
            "after", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=True
        ),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_index("ix_audit_log_actor", "audit_log", ["actor", "id"], unique=False)
    op.create_index("ix_audit_log_resource", "audit_log", ["resource_type", "resource_name", "id"], unique=False)
    op.create_table(
        "model_configs",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("description", sa.String(length=2000), nullable=False),
        sa.Column(
            "tags", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("latest_version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=128), nullable=False),
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_configs")),
        sa.UniqueConstraint("name", name=op.f("uq_model_configs_name")),
    )
    op.create_table(
        "prompts",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("description", sa.String(length=2000), nullable=False),
        sa.Column(
            "tags", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("latest_version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=128), nullable=False),
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prompts")),
        sa.UniqueConstraint("name", name=op.f("uq_prompts_name")),
    )
    op.create_table(
        "model_config_transitions",
        sa.Column("config_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("version_number", sa.Integer(), nullable=False),
        sa.Column("from_state", sa.String(length=16), nullable=False),
        sa.Column("to_state", sa.String(length=16), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("actor_key_id", sa.String(length=16), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.ForeignKeyConstraint(
            ["config_id"],
            ["model_configs.id"],
            name=op.f("fk_model_config_transitions_config_id_model_configs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_config_transitions")),
    )
    op.create_index(
        "ix_model_config_transitions_history", "model_config_transitions", ["config_id", "id"], unique=False
    )
    op.create_table(
        "model_config_versions",
        sa.Column("config_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("backend", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=256), nullable=False),
        sa.Column(
            "params", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("input_price_per_mtok", sa.Double(), nullable=False),
        sa.Column("output_price_per_mtok", sa.Double(), nullable=False),
        sa.Column("max_context_tokens", sa.Integer(), nullable=True),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("content_sha256", sa.String(length=64), nullable=False),
        sa.Column("commit_message", sa.String(length=1000), nullable=False),
        sa.Column("author", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.CheckConstraint(
            "state IN ('draft', 'staging', 'production', 'archived')", name=op.f("ck_model_config_versions_state")
        ),
        sa.CheckConstraint("number >= 1", name=op.f("ck_model_config_versions_number_positive")),
        sa.ForeignKeyConstraint(
            ["config_id"],
            ["model_configs.id"],
            name=op.f("fk_model_config_versions_config_id_model_configs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_config_versions")),
        sa.UniqueConstraint("config_id", "number", name=op.f("uq_model_config_versions_config_id_number")),
    )
    op.create_index(
        "uq_model_config_versions_one_production",
        "model_config_versions",
        ["config_id"],
        unique=True,
        postgresql_where=sa.text("state = 'production'"),
        sqlite_where=sa.text("state = 'production'"),
    )
    op.create_index(
        "uq_model_config_versions_one_staging",
        "model_config_versions",
        ["config_id"],
        unique=True,
        postgresql_where=sa.text("state = 'staging'"),
        sqlite_where=sa.text("state = 'staging'"),
    )
    op.create_table(
        "prompt_transitions",
        sa.Column("prompt_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("version_number", sa.Integer(), nullable=False),
        sa.Column("from_state", sa.String(length=16), nullable=False),
        sa.Column("to_state", sa.String(length=16), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("actor_key_id", sa.String(length=16), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.ForeignKeyConstraint(
            ["prompt_id"], ["prompts.id"], name=op.f("fk_prompt_transitions_prompt_id_prompts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prompt_transitions")),
    )
    op.create_index("ix_prompt_transitions_history", "prompt_transitions", ["prompt_id", "id"], unique=False)
    op.create_table(
        "prompt_versions",
        sa.Column("prompt_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("template", sa.Text(), nullable=True),
        sa.Column(
            "messages", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=True
        ),
        sa.Column(
            "input_schema", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=True
        ),
        sa.Column("config_version_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("content_sha256", sa.String(length=64), nullable=False),
        sa.Column("commit_message", sa.String(length=1000), nullable=False),
        sa.Column("author", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.CheckConstraint("kind IN ('text', 'chat')", name=op.f("ck_prompt_versions_kind")),
        sa.CheckConstraint(
            "state IN ('draft', 'staging', 'production', 'archived')", name=op.f("ck_prompt_versions_state")
        ),
        sa.CheckConstraint("number >= 1", name=op.f("ck_prompt_versions_number_positive")),
        sa.ForeignKeyConstraint(
            ["config_version_id"],
            ["model_config_versions.id"],
            name=op.f("fk_prompt_versions_config_version_id_model_config_versions"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["prompt_id"], ["prompts.id"], name=op.f("fk_prompt_versions_prompt_id_prompts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prompt_versions")),
        sa.UniqueConstraint("prompt_id", "number", name=op.f("uq_prompt_versions_prompt_id_number")),
    )
    op.create_index(
        op.f("ix_prompt_versions_config_version_id"), "prompt_versions", ["config_version_id"], unique=False
    )
    op.create_index(
        "uq_prompt_versions_one_production",
        "prompt_versions",
        ["prompt_id"],
        unique=True,
        postgresql_where=sa.text("state = 'production'"),
        sqlite_where=sa.text("state = 'production'"),
    )
    op.create_index(
        "uq_prompt_versions_one_staging",
        "prompt_versions",
        ["prompt_id"],
        unique=True,
        postgresql_where=sa.text("state = 'staging'"),
        sqlite_where=sa.text("state = 'staging'"),
    )


def downgrade() -> None:
    op.drop_index(
        "uq_prompt_versions_one_staging",
        table_name="prompt_versions",
        postgresql_where=sa.text("state = 'staging'"),
        sqlite_where=sa.text("state = 'staging'"),
    )
    op.drop_index(
        "uq_prompt_versions_one_production",
        table_name="prompt_versions",
        postgresql_where=sa.text("state = 'production'"),
        sqlite_where=sa.text("state = 'production'"),
    )
    op.drop_index(op.f("ix_prompt_versions_config_version_id"), table_name="prompt_versions")
    op.drop_table("prompt_versions")
    op.drop_index("ix_prompt_transitions_history", table_name="prompt_transitions")
    op.drop_table("prompt_transitions")
    op.drop_index(
        "uq_model_config_versions_one_staging",
        table_name="model_config_versions",
        postgresql_where=sa.text("state = 'staging'"),
        sqlite_where=sa.text("state = 'staging'"),
    )
    op.drop_index(
        "uq_model_config_versions_one_production",
        table_name="model_config_versions",
        postgresql_where=sa.text("state = 'production'"),
        sqlite_where=sa.text("state = 'production'"),
    )
    op.drop_table("model_config_versions")
    op.drop_index("ix_model_config_transitions_history", table_name="model_config_transitions")
    op.drop_table("model_config_transitions")
    op.drop_table("prompts")
    op.drop_table("model_configs")
    op.drop_index("ix_audit_log_resource", table_name="audit_log")
    op.drop_index("ix_audit_log_actor", table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_table("api_keys")
