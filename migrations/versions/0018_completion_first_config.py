"""completion first config: what the first config's backend spent on a request that failed over

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06 02:00:00.000000

A request whose backend broke off its answer and that then ran on its config's fallback was recorded under the
fallback config with both backends' tokens and cost: usage by config showed the first config's part as the
fallback's. The record keeps its totals (what the key was charged) and now names the first config and what its
backend spent, so usage by config counts that part under it. Completions recorded before have none (NULL and zeros):
they stay counted whole under the config that served them, as they were.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | Sequence[str] | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ALTER TABLE, never a copy of the table (see 0010), as 0013 and 0017 added theirs.
    op.add_column("completions", sa.Column("first_config", sa.String(length=128), nullable=True))
    op.add_column("completions", sa.Column("first_config_version", sa.Integer(), nullable=True))
    op.add_column("completions", sa.Column("first_input_tokens", sa.Integer(), server_default="0", nullable=False))
    op.add_column("completions", sa.Column("first_output_tokens", sa.Integer(), server_default="0", nullable=False))
    op.add_column("completions", sa.Column("first_cost", sa.Double(), server_default="0", nullable=False))


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN (SQLite 3.35 and later), for the reason given in upgrade().
    op.drop_column("completions", "first_cost")
    op.drop_column("completions", "first_output_tokens")
    op.drop_column("completions", "first_input_tokens")
    op.drop_column("completions", "first_config_version")
    op.drop_column("completions", "first_config")
