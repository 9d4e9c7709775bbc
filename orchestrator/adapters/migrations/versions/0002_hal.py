"""Upstream task fields kept end to end: ``monitoring_profile``, ``kbs_resource_path``, ``hal_storage_path``.

They are sent to the proplet in the start message (wire reference §2.3); before this they were
accepted by the API and dropped. Existing rows get no profile, no KBS path and the default HAL root.

Revision ID: hal
Revises: timeline
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "hal"
down_revision: str | None = "mgr_standby"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("monitoring_profile", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("kbs_resource_path", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("hal_storage_path", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("hal_storage_path")
        batch.drop_column("kbs_resource_path")
        batch.drop_column("monitoring_profile")
