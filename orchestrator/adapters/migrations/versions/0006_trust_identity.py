"""Enrolled identities: broker credentials (hash only) and Ed25519 public keys.

Revision ID: trust_identity
Revises: timeline
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "trust_identity"
down_revision: str | None = "timeline"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "identities",
        sa.Column("proplet_id", sa.String(128), primary_key=True),
        sa.Column("client_id", sa.String(128), nullable=False),
        sa.Column("username", sa.String(128), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("public_key", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("revoked_at", sa.Double(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("identities")
