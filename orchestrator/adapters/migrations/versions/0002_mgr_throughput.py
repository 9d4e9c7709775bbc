"""Indexes for listing tasks from the store: pages in first-save order (``seq``), filtered by state,
proplet or name, without sorting the whole table.

Revision ID: mgr_throughput
Revises: trust_receipts
"""

from __future__ import annotations

from alembic import op

revision = "mgr_throughput"
down_revision: str | None = "trust_receipts"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_index("ix_tasks_seq", "tasks", ["seq"])
    op.create_index("ix_tasks_state_seq", "tasks", ["state", "seq"])
    op.create_index("ix_tasks_proplet_id_seq", "tasks", ["proplet_id", "seq"])
    op.create_index("ix_tasks_name_seq", "tasks", ["name", "seq"])


def downgrade() -> None:
    for name in ("ix_tasks_name_seq", "ix_tasks_proplet_id_seq", "ix_tasks_state_seq", "ix_tasks_seq"):
        op.drop_index(name, table_name="tasks")
