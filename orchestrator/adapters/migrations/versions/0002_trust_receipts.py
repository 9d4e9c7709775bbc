"""Trust: the signed execution receipt of a task's accepted result, and whether it verified.

``receipt`` is the receipt's JSON (orchestrator/core/receipts.py; a broadcast keeps one per target,
by proplet id); ``verified`` is true only when the manager checked it against the enrolled key.
Existing rows become unverified with no receipt.

Revision ID: trust_receipts
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "trust_receipts"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("receipt", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("verified", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("verified")
        batch.drop_column("receipt")
