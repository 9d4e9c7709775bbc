"""Timelines: what happened to a task or a proplet, when and why (``GET /tasks/{id}/events``).

One row per subject and flush window: ``subject`` is ``task`` or ``proplet``, ``events`` the list of
what happened in that window, in order, each ``{"at", "kind", "cause", "fields"}`` (kind: placed,
died...; cause: why; fields: proplet id, attempt, candidates...). The store keeps the newest rows of
each subject (orchestrator/adapters/store.py TIMELINE_LIMIT).

Revision ID: timeline
Revises: task_output
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "timeline"
down_revision: str | None = "task_output"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "timeline_events",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
        ),
        sa.Column("subject", sa.String(16), nullable=False),
        sa.Column("subject_id", sa.String(255), nullable=False),
        sa.Column("at", sa.Double(), nullable=False),
        sa.Column("events", sa.JSON(), nullable=False),
    )
    op.create_index("ix_timeline_events_subject_id", "timeline_events", ["subject", "subject_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_timeline_events_subject_id", table_name="timeline_events")
    op.drop_table("timeline_events")
