"""Attempt numbers are never reused: ``uncounted_attempts`` says how many of a task's attempts do not
count against ``max_attempts`` (starts refused or lost, attempts of an earlier run of a restarted task).

Before it, a refused or lost start gave its number back and the next start reused it, so a stop aimed
at the superseded attempt could end the new one. Existing rows count every attempt, as before.

Revision ID: attempts
Revises: mgr_restore
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "attempts"
down_revision: str | None = "mgr_restore"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("uncounted_attempts", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("uncounted_attempts")
