"""eval scorer errors: an item whose scorer (a judge) failed is neither passed nor failed

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-06 02:30:00.000000

A judge that fails for its own reasons (its backend refuses its request, it answers something that is no
verdict) says nothing of the output it was asked about. Such an item's outcome is ``scorer_error``, a status of
its own, and ``eval_runs.items_scorer_errors`` counts them, so pass rates leave them out and a gate names them.

The new status changes ``ck_eval_run_items_status``: on SQLite only a copy of ``eval_run_items`` can, which is
safe for it (unlike ``eval_runs``, see 0010 and 0019): no table refers to it. 0 for every run made before.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | Sequence[str] | None = "0019"  # after 0019_eval_pending_spend
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WITH = "status IN ('scored', 'invalid', 'error', 'scorer_error')"
WITHOUT = "status IN ('scored', 'invalid', 'error')"


def upgrade() -> None:
    # Plain ALTER TABLE for eval_runs: eval_run_items refers to it.
    op.add_column("eval_runs", sa.Column("items_scorer_errors", sa.Integer(), server_default="0", nullable=False))
    with op.batch_alter_table("eval_run_items") as batch:
        batch.drop_constraint(op.f("ck_eval_run_items_status"), type_="check")
        batch.create_check_constraint(op.f("ck_eval_run_items_status"), sa.text(WITH))


def downgrade() -> None:
    # Their outcomes say nothing of the output: going back, they are errors (neither stored status passes).
    op.execute("UPDATE eval_run_items SET status = 'error' WHERE status = 'scorer_error'")
    op.execute("UPDATE eval_runs SET items_errored = items_errored + items_scorer_errors")
    with op.batch_alter_table("eval_run_items") as batch:
        batch.drop_constraint(op.f("ck_eval_run_items_status"), type_="check")
        batch.create_check_constraint(op.f("ck_eval_run_items_status"), sa.text(WITHOUT))
    op.drop_column("eval_runs", "items_scorer_errors")
