"""guards: input and output guards on config versions, and their outcomes

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05 00:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    # Plain ALTER TABLE on both databases (see 0010: a copy of a table on SQLite cascades into its children).
    # A config version's guards are part of its immutable body, beside its params; NULL: none.
    op.add_column("model_config_versions", sa.Column("guards", JSON, nullable=True))
    # What each completion's guards found: the outcomes (flagged, redacted, blocked, error) per guard,
    # the guard that blocked it, and whether any flagged it (read by metrics and experiments).
    op.add_column("completions", sa.Column("guard_outcomes", JSON, nullable=True))
    op.add_column("completions", sa.Column("guard_blocked", sa.String(length=64), nullable=True))
    op.add_column("completions", sa.Column("guard_flagged", sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN (SQLite 3.35 and later), for the reason given in upgrade().
    op.drop_column("completions", "guard_flagged")
    op.drop_column("completions", "guard_blocked")
    op.drop_column("completions", "guard_outcomes")
    op.drop_column("model_config_versions", "guards")
