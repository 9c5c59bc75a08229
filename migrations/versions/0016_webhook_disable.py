"""webhook disable: a webhook whose receiver keeps failing is disabled

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-05 22:30:00.000000

``consecutive_failures`` and ``failing_since`` track the current run of failed attempts (0 and NULL for
every webhook made before, as if its last attempt had been delivered); ``disabled_at`` and
``disabled_reason`` say since when and why nothing is sent to it (NULL: enabled, as every webhook was).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | Sequence[str] | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("webhooks") as batch:
        batch.add_column(sa.Column("consecutive_failures", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("failing_since", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("disabled_reason", sa.String(length=500), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("webhooks") as batch:
        batch.drop_column("disabled_reason")
        batch.drop_column("disabled_at")
        batch.drop_column("failing_since")
        batch.drop_column("consecutive_failures")
