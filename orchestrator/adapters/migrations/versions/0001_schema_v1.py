"""Schema version 1: tasks, proplets, jobs, task and proplet metrics.

Unlike upstream's SQL stores, every Task field has a column, including ``schedule``, ``next_run``,
``priority``, ``is_recurring`` and ``timezone`` (reference §11 quirk), so cron tasks survive a restart.

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

# SQLite only auto-increments INTEGER PRIMARY KEY; elsewhere 64 bits, since metrics rows pile up.
_METRICS_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("state", sa.SmallInteger(), nullable=False),
        sa.Column("image_url", sa.Text(), nullable=False),
        sa.Column("file", sa.LargeBinary(), nullable=False),
        sa.Column("cli_args", sa.JSON(), nullable=False),
        sa.Column("inputs", sa.JSON(), nullable=False),
        sa.Column("env", sa.JSON(), nullable=False),
        sa.Column("daemon", sa.Boolean(), nullable=False),
        sa.Column("latent", sa.Boolean(), nullable=False),
        sa.Column("encrypted", sa.Boolean(), nullable=False),
        sa.Column("proplet_id", sa.String(255), nullable=False),
        sa.Column("depends_on", sa.JSON(), nullable=False),
        sa.Column("run_if", sa.Text(), nullable=False),
        sa.Column("workflow_id", sa.String(255), nullable=False),
        sa.Column("job_id", sa.String(255), nullable=False),
        sa.Column("results", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("broadcast", sa.Boolean(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("schedule", sa.Text(), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("is_recurring", sa.Boolean(), nullable=False),
        sa.Column("next_run", sa.Double(), nullable=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("memory_bytes", sa.BigInteger(), nullable=False),
        sa.Column("limits", sa.JSON(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("targets", sa.JSON(), nullable=False),
        sa.Column("start_time", sa.Double(), nullable=True),
        sa.Column("finish_time", sa.Double(), nullable=True),
        sa.Column("created_at", sa.Double(), nullable=True),
        sa.Column("updated_at", sa.Double(), nullable=True),
        sa.Column("extras", sa.JSON(), nullable=False),
    )
    op.create_index("ix_tasks_state", "tasks", ["state"])
    op.create_index("ix_tasks_job_id", "tasks", ["job_id"])
    op.create_index("ix_tasks_workflow_id", "tasks", ["workflow_id"])
    op.create_index("ix_tasks_proplet_id", "tasks", ["proplet_id"])

    op.create_table(
        "proplets",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("namespace", sa.Text(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("alive", sa.Boolean(), nullable=False),
        sa.Column("last_seen", sa.Double(), nullable=True),
        sa.Column("alive_history", sa.JSON(), nullable=False),
        sa.Column("task_count", sa.Integer(), nullable=False),
        sa.Column("extras", sa.JSON(), nullable=False),
    )
    op.create_index("ix_proplets_alive", "proplets", ["alive"])

    op.create_table(
        "jobs",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("execution_mode", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=True),
        sa.Column("updated_at", sa.Double(), nullable=True),
    )

    op.create_table(
        "task_metrics",
        sa.Column("id", _METRICS_ID, primary_key=True, autoincrement=True),
        sa.Column("task_id", sa.String(255), nullable=False),
        sa.Column("proplet_id", sa.String(255), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("aggregated", sa.JSON(), nullable=True),
        sa.Column("timestamp", sa.Double(), nullable=False),
    )
    op.create_index("ix_task_metrics_task_id_timestamp", "task_metrics", ["task_id", "timestamp"])
    op.create_index("ix_task_metrics_timestamp", "task_metrics", ["timestamp"])

    op.create_table(
        "proplet_metrics",
        sa.Column("id", _METRICS_ID, primary_key=True, autoincrement=True),
        sa.Column("proplet_id", sa.String(255), nullable=False),
        sa.Column("namespace", sa.Text(), nullable=False),
        sa.Column("cpu_metrics", sa.JSON(), nullable=False),
        sa.Column("memory_metrics", sa.JSON(), nullable=False),
        sa.Column("timestamp", sa.Double(), nullable=False),
    )
    op.create_index("ix_proplet_metrics_proplet_id_timestamp", "proplet_metrics", ["proplet_id", "timestamp"])
    op.create_index("ix_proplet_metrics_timestamp", "proplet_metrics", ["timestamp"])


def downgrade() -> None:
    for table in ("proplet_metrics", "task_metrics", "jobs", "proplets", "tasks"):
        op.drop_table(table)
