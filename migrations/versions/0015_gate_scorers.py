"""gate scorers: the scoring a promotion gate takes as evidence

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05 22:10:00.000000

A gate's ``scorers`` (the normalised scorer specs) and ``pass_rule`` name the scoring a run must have
used to count as the gate's evidence; NULL, as every gate set before this revision has, takes a run
scored any way, as those gates did.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0015"
down_revision: str | Sequence[str] | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("eval_gates") as batch:
        batch.add_column(sa.Column("scorers", JSON, nullable=True))
        batch.add_column(sa.Column("pass_rule", JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("eval_gates") as batch:
        batch.drop_column("pass_rule")
        batch.drop_column("scorers")
