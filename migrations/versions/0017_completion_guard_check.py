"""completion guard check: completions made by a model guard's classifier are marked

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-05 23:00:00.000000

``guard_check`` is true for a completion a model guard's classifier made to check another one (it carries that
completion's unit): experiments' and rollouts' completion metrics leave it out, usage and spend count it. Every
completion recorded before is false, as if no classifier had made it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | Sequence[str] | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ALTER TABLE, never a copy of the table (see 0010), as 0013 added the guards' columns.
    op.add_column("completions", sa.Column("guard_check", sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    op.drop_column("completions", "guard_check")  # ALTER TABLE ... DROP COLUMN (SQLite 3.35 and later)
