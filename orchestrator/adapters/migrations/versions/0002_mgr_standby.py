"""The leader lease of standby managers (``propeller manager --ha``): one row per lease.

Revision ID: mgr_standby
Revises: timeline
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "mgr_standby"
down_revision: str | None = "trust_identity"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "leader_lease",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(255), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.Column("acquired_at", sa.Double(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("leader_lease")
