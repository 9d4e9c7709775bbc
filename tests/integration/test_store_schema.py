"""Alembic migrations of the store: upgrade from empty, no-op at head, refusal of unknown revisions, and
agreement between the migrations, the query tables and the domain model."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from orchestrator.adapters.store import METADATA, PROPLETS, TASKS, Store, StoreError
from orchestrator.core.model import Proplet, Task
from tests.fixtures.store import PgSchema

# every revision, oldest first
REVISIONS = (
    "0001",
    "trust_receipts",
    "mgr_throughput",
    "task_output",
    "timeline",
    "trust_identity",
    "mgr_standby",
    "hal",
    "mgr_restore",
    "attempts",
)
HEAD = REVISIONS[-1]


def _sqlite_schema(path: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(path) as db:
        return sorted(db.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL").fetchall())


def test_every_model_field_has_a_column() -> None:
    # Fields without a column would be parked in `extras`; that must stay a stop-gap, not a habit.
    assert {f.name for f in dataclasses.fields(Task)} == set(TASKS.c.keys()) - {"seq", "extras"}
    assert {f.name for f in dataclasses.fields(Proplet)} == set(PROPLETS.c.keys()) - {"extras"}


async def test_sqlite_upgrades_an_empty_file_then_reopen_is_a_noop(sqlite_path: Path) -> None:
    sqlite_path.parent.mkdir(parents=True)
    sqlite_path.touch()  # an existing, empty database file
    async with await Store.open(str(sqlite_path)) as store:
        assert store.applied_revisions == REVISIONS
        assert await store.schema_version() == HEAD
        await store.save_task(Task(id="t", name="kept"))
    schema = _sqlite_schema(sqlite_path)
    tables = {"tasks", "proplets", "jobs", "task_metrics", "proplet_metrics", "identities", "alembic_version"}
    assert tables <= {name for name, _ in schema}
    assert {"ix_tasks_state", "ix_tasks_job_id", "ix_tasks_workflow_id"} <= {name for name, _ in schema}

    async with await Store.open(str(sqlite_path)) as again:
        assert again.applied_revisions == ()
        assert await again.schema_version() == HEAD
        assert await again.load_tasks() == [Task(id="t", name="kept")]
    assert _sqlite_schema(sqlite_path) == schema
    with sqlite3.connect(sqlite_path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


@pytest.mark.postgres
async def test_postgres_upgrades_an_empty_schema_then_reopen_is_a_noop(pg_schema: PgSchema) -> None:
    pg_schema.execute(f'CREATE SCHEMA "{pg_schema.name}"')
    async with await Store.open(pg_schema.url, schema=pg_schema.name) as store:
        assert store.applied_revisions == REVISIONS
        await store.save_task(Task(id="t", name="kept"))
    async with await Store.open(pg_schema.url, schema=pg_schema.name) as again:
        assert again.applied_revisions == ()
        assert await again.schema_version() == HEAD
        assert await again.load_tasks() == [Task(id="t", name="kept")]


@pytest.mark.postgres
async def test_postgres_schemas_are_isolated(pg_schema: PgSchema, pg_store: Store) -> None:
    await pg_store.save_task(Task(id="mine", name="m"))
    other = f"{pg_schema.name}_b"
    try:
        async with await Store.open(pg_schema.url, schema=other) as neighbour:
            assert await neighbour.load_tasks() == []
    finally:
        pg_schema.execute(f'DROP SCHEMA IF EXISTS "{other}" CASCADE')


async def test_unknown_newer_revision_is_refused(sqlite_path: Path) -> None:
    async with await Store.open(str(sqlite_path)):
        pass
    with sqlite3.connect(sqlite_path) as db:
        db.execute("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(StoreError, match=rf"revision '9999', unknown to this version \(head '{HEAD}'\)"):
        await Store.open(str(sqlite_path))


async def test_migrations_match_the_query_tables(store: Store) -> None:
    # compare_metadata is what `alembic revision --autogenerate` would emit: it must find nothing.
    engine = store._engine

    def diff(conn: sa.Connection) -> list[object]:
        return list(compare_metadata(MigrationContext.configure(conn), METADATA))

    async with engine.connect() as conn:
        assert await conn.run_sync(diff) == []


async def test_a_version_1_database_gains_unverified_receipt_columns_keeping_rows(sqlite_path: Path) -> None:
    from alembic import command
    from alembic.config import Config

    from orchestrator.adapters.store import MIGRATIONS_DIR

    sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    engine = sa.create_engine(f"sqlite:///{sqlite_path}")
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0001")
    engine.dispose()
    row: dict[str, object] = {
        "id": "old", "seq": 1, "name": "n", "kind": "standard", "state": 3, "image_url": "", "file": b"",
        "cli_args": "[]", "inputs": "[]", "env": "{}", "daemon": 0, "latent": 0, "encrypted": 0,
        "proplet_id": "p", "depends_on": "[]", "run_if": "", "workflow_id": "", "job_id": "",
        "results": '"42"', "error": "", "priority": 50, "broadcast": 0, "metadata": "{}", "schedule": "",
        "timezone": "UTC", "is_recurring": 0, "sha256": "", "memory_bytes": 0, "limits": "{}", "attempt": 1,
        "max_attempts": 3, "targets": "[]", "extras": "{}",
    }  # fmt: skip
    with sqlite3.connect(sqlite_path) as db:
        columns = ", ".join(row)
        db.execute(f"INSERT INTO tasks ({columns}) VALUES ({', '.join('?' * len(row))})", list(row.values()))
    async with await Store.open(str(sqlite_path)) as store:
        assert store.applied_revisions == REVISIONS[1:]  # every later revision, in order
        (task,) = await store.load_tasks()
        assert task.id == "old" and task.results == "42" and task.receipt is None and task.verified is False
        assert (task.monitoring_profile, task.kbs_resource_path, task.hal_storage_path) == (None, "", None)
        assert task.result_type == ""  # task_output: results of old rows are not typed
        task.receipt, task.verified = {"v": 1}, True
        await store.save_task(task)
        assert (await store.load_tasks())[0].verified is True
