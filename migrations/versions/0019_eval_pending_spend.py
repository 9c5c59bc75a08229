"""eval pending spend: what a run's attempts still under way have spent

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06 01:30:00.000000

Each completion of an evaluation run is added to the run's cost as it ends, before its item's outcome is
stored (a worker killed in between leaves it there). ``pending_cost`` and ``pending_input_tokens`` /
``pending_output_tokens`` hold the part of it that the lease owner's attempts still under way spent, so a run's
discarded spend (its cost less its stored outcomes' and these) counts only attempts actually given up, while the
run works too. 0 for every run made before: none of them has an attempt of this revision's under way.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | Sequence[str] | None = "0018"  # after 0018_completion_first_config
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ALTER TABLE, never a copy of the table (see 0010): eval_run_items refers to eval_runs.
    op.add_column("eval_runs", sa.Column("pending_cost", sa.Float(), server_default="0", nullable=False))
    op.add_column("eval_runs", sa.Column("pending_input_tokens", sa.Integer(), server_default="0", nullable=False))
    op.add_column("eval_runs", sa.Column("pending_output_tokens", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN (SQLite 3.35 and later), for the reason given in upgrade().
    op.drop_column("eval_runs", "pending_output_tokens")
    op.drop_column("eval_runs", "pending_input_tokens")
    op.drop_column("eval_runs", "pending_cost")
