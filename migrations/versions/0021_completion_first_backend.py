"""completion first backend: the backend a failed-over completion tried first, and how it failed there

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-06 03:00:00.000000

A completion that failed over is one record under the fallback's backend, with its last failure's type only: a first
backend's refusals by its open breaker behind a working fallback never reached ``breaker_open`` rules, and rules by
backend worked out the backend tried first from the configs (``failed_over_backend``) unless the record named its
first config (only when that backend spent tokens). Every failed-over completion now names that backend and the
type of the failure that made it fail over. Completions recorded before have neither (NULL): rules go on working
the backend out for them as they did, and count none of their first attempts' refusals.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0021"
down_revision: str | Sequence[str] | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ALTER TABLE, never a copy of the table (see 0010), as 0013, 0017 and 0018 added theirs.
    op.add_column("completions", sa.Column("first_backend", sa.String(length=64), nullable=True))
    op.add_column("completions", sa.Column("first_error_type", sa.String(length=64), nullable=True))


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN (SQLite 3.35 and later), for the reason given in upgrade().
    op.drop_column("completions", "first_error_type")
    op.drop_column("completions", "first_backend")
