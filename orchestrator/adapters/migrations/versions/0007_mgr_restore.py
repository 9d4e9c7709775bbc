"""An index on ``next_run``, so a (re)starting manager finds the cron tasks it must keep without
reading every stored task (``Store.load_live_tasks``).

Revision ID: mgr_restore
Revises: hal
"""

from __future__ import annotations

from alembic import op

revision = "mgr_restore"
down_revision: str | None = "hal"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_index("ix_tasks_next_run", "tasks", ["next_run"])


def downgrade() -> None:
    op.drop_index("ix_tasks_next_run", table_name="tasks")
