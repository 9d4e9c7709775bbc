"""Task output: the type of a task's result, and the logs of each attempt.

``tasks.result_type`` says how to read ``results`` (json, text, binary = base64; '' = not said).
``task_logs`` keeps each attempt's output apart from its result: live pieces (``final`` false, in
arrival order) and the bounded record that came with the result (``final`` true).

Revision ID: task_output
Revises: mgr_throughput
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "task_output"  # branch task-output; alembic refuses "-" in ids
down_revision: str | None = "mgr_throughput"
branch_labels: str | None = None
depends_on: str | None = None

_LOG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("result_type", sa.String(16), nullable=False, server_default=""))
    op.create_table(
        "task_logs",
        sa.Column("id", _LOG_ID, primary_key=True, autoincrement=True),
        sa.Column("task_id", sa.String(255), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("proplet_id", sa.String(255), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=True),
        sa.Column("final", sa.Boolean(), nullable=False),
        sa.Column("stream", sa.String(32), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("timestamp", sa.Double(), nullable=False),
    )
    op.create_index("ix_task_logs_task_id_attempt", "task_logs", ["task_id", "attempt", "id"])


def downgrade() -> None:
    op.drop_table("task_logs")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("result_type")
