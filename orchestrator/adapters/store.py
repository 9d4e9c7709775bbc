"""Persistent store: SQLAlchemy async over SQLite (default) or PostgreSQL, schema managed by Alembic.

The engine keeps authoritative state in memory and emits ``PersistTask`` / ``PersistProplet``; the
service awaits the matching ``save_*`` before publishing anything, and on (re)start rebuilds the engine
from ``load_live_tasks()`` / ``load_proplets()`` (finished tasks stay in the store). So the contract
is: once ``save_*`` returns, the row survives a SIGKILL of the process.

Choices, and why:
- SQLite runs in WAL mode with ``synchronous=NORMAL``: a committed transaction survives a crash of the
  process (SIGKILL); after an OS crash or power loss the last few commits may roll back (never corrupt).
- SQLite gets explicit ``BEGIN`` (pysqlite's implicit transactions skip DDL, which would make a
  migration half-apply) and one in-process write lock (SQLite has one writer anyway; queueing in asyncio
  beats spinning on SQLITE_BUSY). In-memory SQLite is refused: not durable, and with a shared connection
  it loses concurrent updates.
- Core statements, upserts (``INSERT .. ON CONFLICT DO UPDATE``) and column ``UPDATE``s, not the ORM:
  the engine owns the objects, the store only mirrors rows.
- JSON columns use the SQL ``JSON`` type (PostgreSQL ``json``, not ``jsonb``): it keeps the text as
  written, so strings holding ``\\u0000`` round-trip. NaN/Infinity are refused on both backends, since
  PostgreSQL cannot store them in JSON. Plain text columns cannot hold NUL on PostgreSQL.
- Group commit: the service hands ``write(batch)`` everything one flush window changed and it goes in
  one transaction. A task row is written whole only the first time this process sees it; after that
  only the columns that differ from what this process last wrote (a bounded cache of written rows).
  Each row is checked in Python before the transaction (text the backend cannot hold, integers out of
  range, JSON that cannot be encoded or is nested deeper than ``MAX_JSON_DEPTH``): a refused row is
  reported by id and the rest of the batch is still written. On SQLite the whole transaction runs in
  one call over a plain ``sqlite3`` connection, not one aiosqlite thread hand-off per statement: on
  the event loop's thread when the window is small and the write lock is free within
  ``INLINE_BUSY_MS`` (it is, unless another process writes the file), else on a writer thread. On the
  2-core machines we measure, a thread hand-off there and back costs more CPU than the few rows of a
  typical window (docs/benchmarks.md). That connection does not checkpoint the WAL as it commits (the
  fsyncs would hold the loop): every ``CHECKPOINT_EVERY`` commits a checkpoint takes a window's turn
  on the writer thread.
- The window's statements bypass SQLAlchemy's execution layer (``_RawSqlite``): each
  Core statement is compiled once by SQLAlchemy's SQLite dialect to positional SQL and run with
  ``sqlite3``'s ``executemany``. Per execute SQLAlchemy spends more Python (connection checkout,
  compiled-cache lookup, bind processors, result setup) than SQLite spends writing the rows: it was
  ~40 % of the writer thread, itself a third of the manager's CPU under load. The SQL text, parameter
  values (the column checks already produce what the skipped bind processors would), error classes
  and transaction boundaries are SQLAlchemy's own (tests/integration/test_store_raw_sqlite.py writes
  the same windows both ways and compares statements and stored bytes). Reads, migrations, the
  one-off writes and fenced (``--ha``) windows stay on SQLAlchemy, and so does PostgreSQL.
- ``load_tasks()`` and ``load_live_tasks()`` return tasks in first-save order (a ``seq`` column),
  since sequential jobs start their roots in list order.
- PostgreSQL may be given a ``schema=``: it is created if missing and put on ``search_path``, so every
  table (and ``alembic_version``) lives there; tests use one schema each.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import json
import logging
import operator
import re
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError, StatementError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from orchestrator.adapters.workers import Workers
from orchestrator.core.identity import Identity
from orchestrator.core.model import Job, Proplet, PropletMetadata, Task, TaskState

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_SCHEMA_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_PASSWORD_RE = re.compile(r"(://[^:/@]*:)[^@/]*@")


class StoreError(Exception):
    """Any failure of the store; the message names the URL (password hidden), the operation and the cause."""

    def __init__(self, url: str, what: str, cause: BaseException | None = None) -> None:
        self.url = url
        self.what = what
        self.cause = cause
        message = f"store {url}: {what}"
        if cause is not None:
            message += f": {_describe(cause)}"
        super().__init__(message)


JobRecord = Job  # the job model lives in orchestrator.core.model


@dataclass(frozen=True)
class TaskMetricsRecord:
    task_id: str
    proplet_id: str
    metrics: dict[str, Any]
    aggregated: dict[str, Any] | None
    timestamp: float


@dataclass(frozen=True)
class TaskLogBatch:
    """Lines of one attempt's output to store: a live piece, or the final record (replaces one)."""

    task_id: str
    attempt: int
    proplet_id: str
    lines: Sequence[tuple[str, str]]
    final: bool
    timestamp: float
    seq: int | None = None
    replace: bool = False  # a final record that replaces one stored before (same attempt, proplet)


@dataclass(frozen=True)
class TaskLogRecord:
    id: int
    task_id: str
    attempt: int
    proplet_id: str
    seq: int | None
    final: bool
    stream: str
    data: str
    timestamp: float


@dataclass(frozen=True)
class PropletMetricsRecord:
    proplet_id: str
    namespace: str
    cpu_metrics: dict[str, Any]
    memory_metrics: dict[str, Any]
    timestamp: float


# Mirrors migrations/versions; tests/integration/test_store_schema.py checks that they agree.
METADATA = sa.MetaData()
_METRICS_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

TASKS = sa.Table(
    "tasks",
    METADATA,
    sa.Column("id", sa.String(255), primary_key=True),
    sa.Column("seq", sa.BigInteger(), nullable=False),
    sa.Column("name", sa.Text(), nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("state", sa.SmallInteger(), nullable=False, index=True),
    sa.Column("image_url", sa.Text(), nullable=False),
    sa.Column("file", sa.LargeBinary(), nullable=False),
    sa.Column("cli_args", sa.JSON(), nullable=False),
    sa.Column("inputs", sa.JSON(), nullable=False),
    sa.Column("env", sa.JSON(), nullable=False),
    sa.Column("daemon", sa.Boolean(), nullable=False),
    sa.Column("latent", sa.Boolean(), nullable=False),
    sa.Column("encrypted", sa.Boolean(), nullable=False),
    sa.Column("proplet_id", sa.String(255), nullable=False, index=True),
    sa.Column("depends_on", sa.JSON(), nullable=False),
    sa.Column("run_if", sa.Text(), nullable=False),
    sa.Column("workflow_id", sa.String(255), nullable=False, index=True),
    sa.Column("job_id", sa.String(255), nullable=False, index=True),
    sa.Column("results", sa.JSON(), nullable=True),
    sa.Column("result_type", sa.String(16), nullable=False, server_default=""),
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
    # 0002_trust_receipts
    sa.Column("receipt", sa.JSON(), nullable=True),
    sa.Column("verified", sa.Boolean(), nullable=False, server_default=sa.false()),
    # 0002_mgr_throughput
    sa.Index("ix_tasks_seq", "seq"),
    sa.Index("ix_tasks_state_seq", "state", "seq"),
    sa.Index("ix_tasks_proplet_id_seq", "proplet_id", "seq"),
    sa.Index("ix_tasks_name_seq", "name", "seq"),
    # 0002_hal
    sa.Column("monitoring_profile", sa.JSON(), nullable=True),
    sa.Column("kbs_resource_path", sa.Text(), nullable=False, server_default=""),
    sa.Column("hal_storage_path", sa.Text(), nullable=True),
    # 0007_mgr_restore
    sa.Index("ix_tasks_next_run", "next_run"),
    # 0008_attempts
    sa.Column("uncounted_attempts", sa.Integer(), nullable=False, server_default="0"),
)
PROPLETS = sa.Table(
    "proplets",
    METADATA,
    sa.Column("id", sa.String(255), primary_key=True),
    sa.Column("name", sa.Text(), nullable=False),
    sa.Column("namespace", sa.Text(), nullable=False),
    sa.Column("metadata", sa.JSON(), nullable=False),
    sa.Column("alive", sa.Boolean(), nullable=False, index=True),
    sa.Column("last_seen", sa.Double(), nullable=True),
    sa.Column("alive_history", sa.JSON(), nullable=False),
    sa.Column("task_count", sa.Integer(), nullable=False),
    sa.Column("extras", sa.JSON(), nullable=False),
)
JOBS = sa.Table(
    "jobs",
    METADATA,
    sa.Column("id", sa.String(255), primary_key=True),
    sa.Column("name", sa.Text(), nullable=False),
    sa.Column("execution_mode", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Double(), nullable=True),
    sa.Column("updated_at", sa.Double(), nullable=True),
)
TASK_METRICS = sa.Table(
    "task_metrics",
    METADATA,
    sa.Column("id", _METRICS_ID, primary_key=True, autoincrement=True),
    sa.Column("task_id", sa.String(255), nullable=False),
    sa.Column("proplet_id", sa.String(255), nullable=False),
    sa.Column("metrics", sa.JSON(), nullable=False),
    sa.Column("aggregated", sa.JSON(), nullable=True),
    sa.Column("timestamp", sa.Double(), nullable=False, index=True),
    sa.Index("ix_task_metrics_task_id_timestamp", "task_id", "timestamp"),
)
TIMELINE = sa.Table(
    "timeline_events",
    METADATA,
    sa.Column("id", _METRICS_ID, primary_key=True, autoincrement=True),
    sa.Column("subject", sa.String(16), nullable=False),  # "task" or "proplet"
    sa.Column("subject_id", sa.String(255), nullable=False),
    sa.Column("at", sa.Double(), nullable=False),  # UNIX seconds of its first event
    # The subject's events of one flush window, in order: [{"at", "kind", "cause", "fields"}, ...]
    # (one row per window, not per event: a task's happy path is 2-3 rows, half the write cost).
    sa.Column("events", sa.JSON(), nullable=False),
    sa.Index("ix_timeline_events_subject_id", "subject", "subject_id", "id"),
)
# Rows (flush windows of events) kept per task or proplet: older ones are pruned once a subject has
# TIMELINE_LIMIT more.
TIMELINE_LIMIT = 200
PROPLET_METRICS = sa.Table(
    "proplet_metrics",
    METADATA,
    sa.Column("id", _METRICS_ID, primary_key=True, autoincrement=True),
    sa.Column("proplet_id", sa.String(255), nullable=False),
    sa.Column("namespace", sa.Text(), nullable=False),
    sa.Column("cpu_metrics", sa.JSON(), nullable=False),
    sa.Column("memory_metrics", sa.JSON(), nullable=False),
    sa.Column("timestamp", sa.Double(), nullable=False, index=True),
    sa.Index("ix_proplet_metrics_proplet_id_timestamp", "proplet_id", "timestamp"),
)

IDENTITIES = sa.Table(
    "identities",
    METADATA,
    sa.Column("proplet_id", sa.String(128), primary_key=True),
    sa.Column("client_id", sa.String(128), nullable=False),
    sa.Column("username", sa.String(128), nullable=False),
    sa.Column("password_hash", sa.Text(), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("public_key", sa.LargeBinary(), nullable=True),
    sa.Column("created_at", sa.Double(), nullable=False),
    sa.Column("revoked_at", sa.Double(), nullable=True),
)
TASK_LOGS = sa.Table(
    "task_logs",
    METADATA,
    sa.Column("id", _METRICS_ID, primary_key=True, autoincrement=True),
    sa.Column("task_id", sa.String(255), nullable=False),
    sa.Column("attempt", sa.Integer(), nullable=False),
    sa.Column("proplet_id", sa.String(255), nullable=False),
    sa.Column("seq", sa.BigInteger(), nullable=True),
    sa.Column("final", sa.Boolean(), nullable=False),
    sa.Column("stream", sa.String(32), nullable=False),
    sa.Column("data", sa.Text(), nullable=False),
    sa.Column("timestamp", sa.Double(), nullable=False),
    sa.Index("ix_task_logs_task_id_attempt", "task_id", "attempt", "id"),
)

# One row per lease (orchestrator/adapters/lease.py): who leads, with which epoch, until when.
LEADER_LEASE = sa.Table(
    "leader_lease",
    METADATA,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("holder", sa.String(255), nullable=False),
    sa.Column("epoch", sa.BigInteger(), nullable=False),
    sa.Column("expires_at", sa.Double(), nullable=False),
    sa.Column("acquired_at", sa.Double(), nullable=True),
)

_TASK_FIELDS = tuple(f.name for f in dataclasses.fields(Task))
_PROPLET_FIELDS = tuple(f.name for f in dataclasses.fields(Proplet))
_JOB_FIELDS = tuple(f.name for f in dataclasses.fields(JobRecord))
# PostgreSQL's json type refuses NaN/Infinity; refusing them everywhere keeps the backends alike.
_json_dumps = functools.partial(json.dumps, allow_nan=False, separators=(",", ":"))
# One encoder, reused: json.dumps with options builds a new JSONEncoder on every call.
_json_encode = json.JSONEncoder(allow_nan=False, separators=(",", ":")).encode

# JSON nested deeper than this is refused: Python's json needs a stack frame per level, so a deeper
# value could be written but not read back (a store that cannot be loaded at restart).
MAX_JSON_DEPTH = 100
_LIVE = frozenset(int(s) for s in TaskState if not s.is_terminal)
# Rows this process last wrote (fingerprints), kept to write only changed columns next time (LRU).
WRITTEN_ROWS_CACHE = 10_000
# Tasks in flight whose last checked values are kept (Store._task_values); more only costs re-checks.
LAST_CHECKED_TASKS = 4096
# Values a check may be skipped for when they are the very object checked before (never mutated).
_IMMUTABLE = frozenset({str, int, float, bool, bytes, type(None)})

# SQLite group-commit windows (see _sqlite_writer and Store._run_sqlite):
BUSY_TIMEOUT_MS = 10_000  # how long a write waits for another process's lock before it fails
INLINE_BUSY_MS = 50  # ... when it runs on the event loop; past it the window waits on the writer thread
INLINE_ROWS = 128  # a window with more rows than this runs on the writer thread (a long one holds the loop)
# Commits between two WAL checkpoints: a window of a few tasks adds about ten 4 KiB pages (row and
# indexes), so about SQLite's own 1,000-page autocheckpoint.
CHECKPOINT_EVERY = 100


class RawJson(str):
    """JSON text the store already encoded (and checked); the engines' serializer passes it through."""


def _serialize(value: Any) -> str:
    return value if type(value) is RawJson else _json_dumps(value)


# The empty JSON values, which most JSON columns hold, both ways: written without the encoder
# (check_json) and read without the parser (_json_loads).
_EMPTY_JSON: dict[type, RawJson] = {
    list: RawJson("[]"), dict: RawJson("{}"), type(None): RawJson("null"), str: RawJson('""')
}  # fmt: skip
_EMPTY_JSON_READS: dict[str | bytes, type] = {
    form: kind for kind, text in _EMPTY_JSON.items() for form in (str(text), text.encode())
}


def _json_loads(text: str | bytes | bytearray) -> Any:
    """``json.loads`` for the JSON columns, with the empty values answered without the parser: a task
    row has 11 JSON columns, mostly empty, and parsing them was half the store's time in reading a
    2,000-task workflow (docs/benchmarks.md). SQLite hands over text, psycopg bytes. A list or dict
    is a new one each time: a task read back may be changed by its reader."""
    if len(text) <= 4 and not isinstance(text, bytearray):  # a bytearray cannot be a dict key
        kind = _EMPTY_JSON_READS.get(text)
        if kind is not None:
            return kind()
    return json.loads(text)


class Unstorable(ValueError):
    """A value the backend cannot hold; the message names the row and the field."""


@dataclass
class WriteBatch:
    """What one flush window changed, written in one transaction by ``Store.write``.

    Persisting a task or proplet twice keeps the latest snapshot; a delete drops an earlier persist of
    the same id in the batch (deletes run first in the transaction, so a later re-create survives).
    """

    tasks: dict[str, Task] = dataclasses.field(default_factory=dict)
    proplets: dict[str, Proplet] = dataclasses.field(default_factory=dict)
    jobs: dict[str, Job] = dataclasses.field(default_factory=dict)
    deleted_tasks: list[str] = dataclasses.field(default_factory=list)
    deleted_proplets: list[str] = dataclasses.field(default_factory=list)
    task_metrics: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    proplet_metrics: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    task_logs: list[TaskLogBatch] = dataclasses.field(default_factory=list)  # task output, per attempt
    # Timeline rows: subject ("task"/"proplet"), subject_id, at, kind, cause, fields.
    events: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.tasks or self.proplets or self.jobs or self.deleted_tasks or self.deleted_proplets
            or self.task_metrics or self.proplet_metrics or self.task_logs or self.events
        )  # fmt: skip

    def delete_task(self, task_id: str) -> None:
        self.tasks.pop(task_id, None)
        self.deleted_tasks.append(task_id)

    def delete_proplet(self, proplet_id: str) -> None:
        self.proplets.pop(proplet_id, None)
        self.deleted_proplets.append(proplet_id)


@dataclass
class Refusals:
    """Rows of a batch that the store refused (by id, with the reason); everything else was written."""

    tasks: dict[str, str] = dataclasses.field(default_factory=dict)
    proplets: dict[str, str] = dataclasses.field(default_factory=dict)
    jobs: dict[str, str] = dataclasses.field(default_factory=dict)
    metrics: list[str] = dataclasses.field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.tasks or self.proplets or self.jobs or self.metrics)


@dataclass(frozen=True)
class ModuleEnds:
    """A stored module without its body: its size, its first 9 bytes, and its bytes from the last
    3-byte boundary that leaves at least 9 (the whole module when it is at most 15 bytes): what the
    redacted base64 view needs (``orchestrator.views.redacted_module``)."""

    size: int
    head: bytes
    tail: bytes


_MODULE_WHOLE = 15  # up to here the tail is the whole module (its base64 is shown unredacted)


@dataclass(frozen=True)
class EventRecord:
    """One stored timeline entry."""

    at: float
    kind: str
    cause: str
    fields: dict[str, Any]


@dataclass(frozen=True)
class WorkflowRow:
    """A workflow (tasks sharing a ``workflow_id``): when its first task was created, tasks per state."""

    workflow_id: str
    created_at: float | None
    states: dict[int, int]


@dataclass(frozen=True)
class TaskPage:
    """A page of tasks. Their ``file`` is left empty (b""); ``modules`` has the ends of each one."""

    total: int
    tasks: list[Task]
    modules: dict[str, ModuleEnds] = dataclasses.field(default_factory=dict)


class Store:
    """One database. Open with ``await Store.open(url)``; every method is a coroutine."""

    def __init__(
        self,
        engine: AsyncEngine,
        shown_url: str,
        applied: tuple[str, ...],
        next_seq: int,
        writer: sa.Engine | None = None,
    ) -> None:
        self._engine = engine
        self.url = shown_url
        # Alembic revisions this open() applied; empty when the database was already at head.
        self.applied_revisions = applied
        self._next_seq = next_seq
        self._closed = False
        # Run first in every write transaction when set (a standby manager's fencing-token check,
        # orchestrator/adapters/lease.py): raising there rolls the write back. Synchronous, on the
        # transaction's sa.Connection, so it also fits code that writes inside run_sync.
        self.fence: Callable[[sa.Connection], None] | None = None
        sqlite_backend = engine.dialect.name == "sqlite"
        self._insert = sqlite.insert if sqlite_backend else postgresql.insert
        self._write_lock: contextlib.AbstractAsyncContextManager[Any] = (
            asyncio.Lock() if sqlite_backend else contextlib.nullcontext()
        )
        # SQLite: small windows run on the loop; waiting or large ones, and checkpoints, on this thread.
        self._writer = writer
        self._writer_thread = Workers(1, "store-writer") if writer else None
        self._commits_since_checkpoint = 0
        self._checkpointing: asyncio.Future[None] | None = None
        # Group-commit windows skip SQLAlchemy's per-execute Python on it (see the module docstring).
        self._raw = _RawSqlite(writer) if writer and _RawSqlite.supported() else None
        # Built once: constructing `excluded` costs about a millisecond, more than the write itself.
        # A task keeps its first `seq`: that is its place in load order.
        self._upserts = {
            table.name: self._build_upsert(table, keep=("id", "seq")) for table in (TASKS, PROPLETS, JOBS)
        }
        self._batch_lock = asyncio.Lock()
        self._written: collections.OrderedDict[str, tuple[Any, ...]] = collections.OrderedDict()
        self._checks = {t.name: _column_checks(t) for t in (TASKS, PROPLETS, JOBS)}
        self._task_checks = [self._checks["tasks"][name] for name in (*_TASK_PLAIN, "state", "extras")]
        # task id -> (raw values, checked values) of its last write, while it is in flight (_task_values)
        self._last_checked: dict[str, tuple[list[Any], tuple[Any, ...]]] = {}
        self._metric_checks = {
            t.name: _column_checks(t, skip=("id",))
            for t in (TASK_METRICS, PROPLET_METRICS, TASK_LOGS, TIMELINE)
        }
        # Events written per subject since this store opened (or last pruned): decides when to prune.
        self._event_counts: collections.OrderedDict[tuple[str, str], int] = collections.OrderedDict()

    @classmethod
    async def open(cls, url: str, *, schema: str | None = None) -> Store:
        """Connect and migrate to head. ``url``: a path, ``sqlite:///path.db`` or ``postgresql://...``."""
        resolved = _resolve_url(url)
        shown = resolved.render_as_string(hide_password=True)
        if schema is not None:
            if resolved.get_backend_name() != "postgresql":
                raise StoreError(shown, f"schema={schema!r} is only supported on PostgreSQL")
            if not _SCHEMA_RE.fullmatch(schema):
                raise StoreError(shown, f"schema name {schema!r} must match {_SCHEMA_RE.pattern}")
        engine = _create_engine(resolved, shown, schema)
        try:
            if schema is not None:
                async with engine.begin() as conn:
                    await conn.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            async with engine.begin() as conn:
                applied = await conn.run_sync(functools.partial(_migrate, shown))
                top = await conn.scalar(sa.select(sa.func.max(TASKS.c.seq)))
        except StoreError:
            await engine.dispose()
            raise
        except (SQLAlchemyError, OSError) as exc:
            await engine.dispose()
            raise StoreError(shown, "cannot open the database", exc) from exc
        writer = _sqlite_writer(resolved) if resolved.get_backend_name() == "sqlite" else None
        return cls(engine, shown, tuple(applied), int(top or 0) + 1, writer)

    @property
    def sa_engine(self) -> AsyncEngine:
        return self._engine

    async def refresh_seq(self) -> None:
        """Continue the load order after rows another manager wrote since this store was opened."""
        async with self._read("read the task sequence") as conn:
            top = await conn.scalar(sa.select(sa.func.max(TASKS.c.seq)))
        self._next_seq = max(self._next_seq, int(top or 0) + 1)

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._writer_thread is not None and self._writer is not None:
                if self._checkpointing is not None:
                    with contextlib.suppress(Exception):
                        await self._checkpointing
                close = self._raw.close if self._raw is not None else self._writer.dispose
                await self._writer_thread.run(close)
                self._writer_thread.shutdown(wait=True)
            await self._engine.dispose()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def schema_version(self) -> str | None:
        async with self._read("read the schema version") as conn:
            return await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())

    # -- tasks ---------------------------------------------------------------------------------------

    async def save_task(self, task: Task) -> None:
        await self.save_tasks([task])

    async def save_tasks(self, tasks: Sequence[Task]) -> None:
        """Save whole tasks, all in one transaction: either every task is saved or none is."""
        if not tasks:
            return
        what = f"save task {tasks[0].id!r}" if len(tasks) == 1 else f"save {len(tasks)} tasks"
        try:
            plan = self._prepare(WriteBatch(tasks={t.id: t for t in tasks}), Refusals(), strict=True)
        except Unstorable as exc:
            raise StoreError(self.url, f"{what} ({exc})", exc) from exc
        async with self._batch_lock, self._write_lock:  # plans diff against rows written before them
            self._plan(plan)
            await self._run(plan, what)

    async def write(self, batch: WriteBatch) -> Refusals:
        """Write a flush window's changes in one transaction; returns the rows refused.

        A row the backend cannot hold is refused and named, and the rest of the batch is still
        written, so one bad input never costs anyone else's work. ``StoreError`` means nothing was
        written (the database is unreachable, full, ...): the caller may retry the same batch.
        """
        refused = Refusals()
        if not batch:
            return refused
        plan = self._prepare(batch, refused, strict=False)  # before any await: see PersistTask
        what = f"write {len(batch.tasks)} tasks"
        async with self._batch_lock, self._write_lock:
            self._plan(plan)
            try:
                await self._run(plan, what)
            except StoreError as exc:
                if not _is_data_error(exc.cause):
                    raise
                # The database refused something the checks let through: find it, item by item.
                try:
                    await self._run(plan, what, isolate=refused)
                except StoreError as again:
                    if not _is_data_error(again.cause):
                        raise
                    # Cannot be pinned on one row: refuse the whole window rather than retry it
                    # forever (a poison batch would stall every later write).
                    why = f"the batch was refused: {_describe(again.cause or again)}"
                    refused.tasks.update(dict.fromkeys(batch.tasks, why))
                    refused.proplets.update(dict.fromkeys(batch.proplets, why))
                    refused.jobs.update(dict.fromkeys(batch.jobs, why))
        return refused

    async def delete_task(self, task_id: str) -> None:
        """Delete the task and its metrics; deleting an unknown id is not an error."""
        self._written.pop(task_id, None)
        async with self._write(f"delete task {task_id!r}") as conn:
            await conn.execute(sa.delete(TASK_METRICS).where(TASK_METRICS.c.task_id == task_id))
            await conn.execute(sa.delete(TASK_LOGS).where(TASK_LOGS.c.task_id == task_id))
            await conn.execute(sa.delete(TASKS).where(TASKS.c.id == task_id))

    async def get_task(self, task_id: str) -> Task | None:
        async with self._read(f"get task {task_id!r}") as conn:
            row = (await conn.execute(sa.select(TASKS).where(TASKS.c.id == task_id))).first()
        return None if row is None else self._task_from_row(row._mapping)

    async def load_tasks(self) -> list[Task]:
        """Every task, in the order each was first saved."""
        async with self._read("load tasks") as conn:
            rows = (await conn.execute(sa.select(TASKS).order_by(TASKS.c.seq, TASKS.c.id))).all()
        return [self._task_from_row(r._mapping) for r in rows]

    async def load_live_tasks(self) -> list[Task]:
        """What a (re)starting manager's engine needs, in first-save order; not the finished history.

        Unfinished tasks; cron tasks (``next_run`` set) and job tasks, which start again; and every
        task of a workflow that still has an unfinished one (its parents' results feed the rest).
        One query per kind, each an index range (an ``OR`` of them makes PostgreSQL scan every
        row), so the cost follows the live work, not the stored history.
        """
        live = TASKS.c.state.in_(sorted(_LIVE))
        rows: dict[str, Any] = {}
        async with self._read("load live tasks") as conn:
            # next_run as a range: SQLite answers ``IS NOT NULL`` with a scan of the table.
            cron = TASKS.c.next_run >= -sys.float_info.max
            for where in (live, cron, TASKS.c.job_id > ""):
                for r in (await conn.execute(sa.select(TASKS).where(where))).all():
                    rows[r.id] = r
            workflows = sorted({r.workflow_id for r in rows.values() if r.workflow_id and r.state in _LIVE})
            for i in range(0, len(workflows), 500):
                chunk = TASKS.c.workflow_id.in_(workflows[i : i + 500])
                for r in (await conn.execute(sa.select(TASKS).where(chunk))).all():
                    rows[r.id] = r
        ordered = sorted(rows.values(), key=lambda r: (r.seq, r.id))
        return [self._task_from_row(r._mapping) for r in ordered]

    async def list_tasks(
        self,
        offset: int = 0,
        limit: int = 100,
        *,
        state: int | None = None,
        proplet_id: str | None = None,
        name: str | None = None,
        metadata: dict[str, Any] | None = None,
        workflow_id: str | None = None,
        job_id: str | None = None,
    ) -> TaskPage:
        """(total, page) of the stored tasks in first-save order, filtered in SQL.

        ``metadata`` keeps tasks whose metadata has each key equal to the given scalar value.
        """
        if offset < 0 or limit < 0:
            raise ValueError(f"offset and limit must be >= 0, got offset={offset} limit={limit}")
        where: list[Any] = []
        if state is not None:
            where.append(TASKS.c.state == int(state))
        if proplet_id is not None:
            where.append(TASKS.c.proplet_id == proplet_id)
        if name is not None:
            where.append(TASKS.c.name == name)
        if workflow_id is not None:
            where.append(TASKS.c.workflow_id == workflow_id)
        if job_id is not None:
            where.append(TASKS.c.job_id == job_id)
        for key, value in (metadata or {}).items():
            where.append(_json_equals(TASKS.c.metadata[key], value, pg=self._engine.dialect.name != "sqlite"))
        # Not the modules themselves (a page of 100 tasks could be hundreds of MB): their length and
        # enough bytes at each end for the API's redacted view.
        size = sa.func.length(TASKS.c.file)
        tail_at = sa.case((size > _MODULE_WHOLE, ((size + 2) // 3 - 3) * 3), else_=0)
        columns = [c for c in TASKS.c if c.name != "file"]
        ends = (
            size.label("file_size"),
            sa.func.substr(TASKS.c.file, 1, 9).label("file_head"),
            sa.func.substr(TASKS.c.file, tail_at + 1).label("file_tail"),
        )
        async with self._read("list tasks") as conn:
            total = await conn.scalar(sa.select(sa.func.count()).select_from(TASKS).where(*where))
            query = sa.select(*columns, *ends).where(*where).order_by(TASKS.c.seq, TASKS.c.id)
            rows = (await conn.execute(query.offset(offset).limit(limit))).all()
        tasks, modules = [], {}
        for row in rows:
            values = dict(row._mapping)
            size_, head, tail = values.pop("file_size"), values.pop("file_head"), values.pop("file_tail")
            values["file"] = b""
            tasks.append(self._task_from_row(values))
            if size_:
                modules[values["id"]] = ModuleEnds(int(size_), bytes(head), bytes(tail))
        return TaskPage(int(total or 0), tasks, modules)

    async def list_workflows(self, offset: int = 0, limit: int = 100) -> tuple[int, list[WorkflowRow]]:
        """(total, page) of the workflows, newest first: each with its tasks counted by state."""
        grouped = TASKS.c.workflow_id != ""
        first = sa.func.min(TASKS.c.seq).label("first")
        heads_query = (
            sa.select(TASKS.c.workflow_id, sa.func.min(TASKS.c.created_at).label("created"), first)
            .where(grouped).group_by(TASKS.c.workflow_id).order_by(first.desc()).offset(offset).limit(limit)
        )  # fmt: skip
        async with self._read("list workflows") as conn:
            count = sa.select(sa.func.count(sa.distinct(TASKS.c.workflow_id))).where(grouped)
            total = await conn.scalar(count)
            heads = (await conn.execute(heads_query)).all()
            ids = [h.workflow_id for h in heads]
            by_state = (
                sa.select(TASKS.c.workflow_id, TASKS.c.state, sa.func.count())
                .where(TASKS.c.workflow_id.in_(ids)).group_by(TASKS.c.workflow_id, TASKS.c.state)
            )  # fmt: skip
            counts = (await conn.execute(by_state)).all() if ids else []
        states: dict[str, dict[int, int]] = {i: {} for i in ids}
        for workflow_id, state, n in counts:
            states[workflow_id][int(state)] = int(n)
        rows = [WorkflowRow(h.workflow_id, h.created, states[h.workflow_id]) for h in heads]
        return int(total or 0), rows

    # -- proplets ------------------------------------------------------------------------------------

    async def save_proplet(self, proplet: Proplet) -> None:
        row = _to_row(proplet, PROPLETS, _PROPLET_FIELDS)
        row["metadata"] = dataclasses.asdict(proplet.metadata)
        row["alive_history"] = list(proplet.alive_history)
        await self._upsert(PROPLETS, row, f"save proplet {proplet.id!r}")

    async def delete_proplet(self, proplet_id: str) -> None:
        """Delete the proplet and its metrics; deleting an unknown id is not an error."""
        async with self._write(f"delete proplet {proplet_id!r}") as conn:
            await conn.execute(sa.delete(PROPLET_METRICS).where(PROPLET_METRICS.c.proplet_id == proplet_id))
            await conn.execute(sa.delete(PROPLETS).where(PROPLETS.c.id == proplet_id))

    async def load_proplets(self) -> list[Proplet]:
        async with self._read("load proplets") as conn:
            rows = (await conn.execute(sa.select(PROPLETS).order_by(PROPLETS.c.id))).all()
        out = []
        for r in rows:
            values = _from_row(r._mapping, _PROPLET_FIELDS)
            values["metadata"] = PropletMetadata.from_json(values["metadata"] or {})
            values["alive_history"] = [float(x) for x in values["alive_history"]]
            out.append(Proplet(**values))
        return out

    # -- jobs ----------------------------------------------------------------------------------------

    async def save_job(self, job: JobRecord) -> None:
        await self._upsert(JOBS, dataclasses.asdict(job), f"save job {job.id!r}")

    async def delete_job(self, job_id: str) -> None:
        async with self._write(f"delete job {job_id!r}") as conn:
            await conn.execute(sa.delete(JOBS).where(JOBS.c.id == job_id))

    async def load_jobs(self) -> list[JobRecord]:
        async with self._read("load jobs") as conn:
            rows = (await conn.execute(sa.select(JOBS).order_by(JOBS.c.created_at, JOBS.c.id))).all()
        return [JobRecord(**dict(r._mapping)) for r in rows]

    # -- identities ----------------------------------------------------------------------------------

    async def save_identity(self, identity: Identity) -> None:
        """Upsert one identity (enrolment, revocation); only the password's hash is ever stored."""
        await self.save_identities([identity])

    async def save_identities(self, identities: Sequence[Identity]) -> None:
        """Upsert identities in one transaction (a fleet enrolled at once)."""
        if not identities:
            return
        rows = [dataclasses.asdict(i) for i in identities]
        stmt = self._insert(IDENTITIES)
        stmt = stmt.on_conflict_do_update(
            index_elements=["proplet_id"],
            set_={c.name: stmt.excluded[c.name] for c in IDENTITIES.c if c.name != "proplet_id"},
        )
        first = identities[0].proplet_id
        what = f"save identity {first!r}" if len(rows) == 1 else f"save {len(rows)} identities"
        async with self._write(what, rows) as conn:
            await conn.execute(stmt, rows[0] if len(rows) == 1 else rows)

    async def identities_version(self) -> tuple[Any, ...]:
        """A cheap fingerprint of the identities table: it changes with every enrolment or revocation
        (readers poll it, and re-load the table only when it moved)."""
        query = sa.select(
            sa.func.count(),
            sa.func.max(IDENTITIES.c.created_at),
            sa.func.max(IDENTITIES.c.revoked_at),
            sa.func.count(IDENTITIES.c.revoked_at),
        )
        async with self._read("read the identities version") as conn:
            row = (await conn.execute(query)).one()
        return tuple(row)

    async def load_identities(self) -> list[Identity]:
        async with self._read("load identities") as conn:
            rows = (await conn.execute(sa.select(IDENTITIES).order_by(IDENTITIES.c.proplet_id))).all()
        out = []
        for r in rows:
            values = dict(r._mapping)
            if values["public_key"] is not None:
                values["public_key"] = bytes(values["public_key"])
            out.append(Identity(**values))
        return out

    # -- logs ----------------------------------------------------------------------------------------

    async def add_task_logs(
        self,
        task_id: str,
        attempt: int,
        proplet_id: str,
        lines: Sequence[tuple[str, str]],
        *,
        final: bool,
        timestamp: float,
        seq: int | None = None,
        replace: bool = False,
    ) -> None:
        """Append an attempt's output: a live piece, or (``final``) the record sent with its result.

        With ``replace``, a final record replaces an earlier final record of the same attempt and
        proplet (a duplicate result); live pieces are kept, so a follower never sees them vanish.
        """
        batch = TaskLogBatch(task_id, attempt, proplet_id, lines, final, timestamp, seq, replace)
        refused = await self.write(WriteBatch(task_logs=[batch]))
        if refused:
            raise StoreError(self.url, f"add logs of task {task_id!r}: {'; '.join(refused.metrics)}")

    async def list_task_logs(
        self, task_id: str, attempt: int, *, after: int = 0, limit: int = 1000, final: bool | None = None
    ) -> list[TaskLogRecord]:
        """The attempt's log rows with ``id > after``, oldest first; ``final`` picks the final record
        (True) or the live pieces (False), None both."""
        t = TASK_LOGS.c
        where = (t.task_id == task_id) & (t.attempt == attempt) & (t.id > after)
        if final is not None:
            where = where & (t.final == final)
        query = sa.select(TASK_LOGS).where(where).order_by(t.id).limit(limit)
        async with self._read(f"list logs of task {task_id!r}") as conn:
            rows = (await conn.execute(query)).all()
        return [TaskLogRecord(**dict(r._mapping)) for r in rows]

    # -- metrics -------------------------------------------------------------------------------------

    async def add_task_metrics(
        self,
        task_id: str,
        proplet_id: str,
        metrics: dict[str, Any],
        aggregated: dict[str, Any] | None,
        timestamp: float,
    ) -> None:
        row = {
            "task_id": task_id,
            "proplet_id": proplet_id,
            "metrics": metrics,
            "aggregated": aggregated,
            "timestamp": float(timestamp),
        }
        async with self._write(f"add metrics of task {task_id!r}", [row]) as conn:
            await conn.execute(sa.insert(TASK_METRICS), [row])

    async def list_task_metrics(
        self, task_id: str, offset: int = 0, limit: int = 100
    ) -> tuple[int, list[TaskMetricsRecord]]:
        """(total, page) of the task's samples, newest first, as upstream's ``GET /tasks/{id}/metrics``."""
        total, rows = await self._page(TASK_METRICS, TASK_METRICS.c.task_id, task_id, offset, limit)
        return total, [TaskMetricsRecord(**r) for r in rows]

    async def list_events(self, subject: str, subject_id: str, limit: int = 1000) -> list[EventRecord]:
        """The timeline of a task or proplet, oldest first (at most ``limit``, the newest ones)."""
        query = (
            sa.select(TIMELINE.c.events)
            .where(TIMELINE.c.subject == subject, TIMELINE.c.subject_id == subject_id)
            .order_by(TIMELINE.c.id.desc())
            .limit(limit)
        )
        async with self._read(f"list events of {subject} {subject_id!r}") as conn:
            rows = (await conn.execute(query)).scalars().all()
        out = [
            EventRecord(float(e["at"]), str(e["kind"]), str(e.get("cause", "")), dict(e.get("fields") or {}))
            for window in reversed(rows)
            for e in window
        ]
        # In time order: events reported from outside (a twin fault, a console line) may arrive after
        # the manager's own later ones. Stable: the events of one instant keep their recorded order.
        out.sort(key=lambda e: e.at)
        return out[-limit:] if limit else []

    async def add_proplet_metrics(
        self,
        proplet_id: str,
        namespace: str,
        cpu_metrics: dict[str, Any],
        memory_metrics: dict[str, Any],
        timestamp: float,
    ) -> None:
        row = {
            "proplet_id": proplet_id,
            "namespace": namespace,
            "cpu_metrics": cpu_metrics,
            "memory_metrics": memory_metrics,
            "timestamp": float(timestamp),
        }
        async with self._write(f"add metrics of proplet {proplet_id!r}", [row]) as conn:
            await conn.execute(sa.insert(PROPLET_METRICS), [row])

    async def list_proplet_metrics(
        self, proplet_id: str, offset: int = 0, limit: int = 100
    ) -> tuple[int, list[PropletMetricsRecord]]:
        """(total, page) of the proplet's samples, newest first."""
        total, rows = await self._page(
            PROPLET_METRICS, PROPLET_METRICS.c.proplet_id, proplet_id, offset, limit
        )
        return total, [PropletMetricsRecord(**r) for r in rows]

    async def prune_metrics(self, older_than: float) -> int:
        """Delete task and proplet samples with ``timestamp < older_than``; returns how many."""
        async with self._write("prune metrics") as conn:
            removed = 0
            for table in (TASK_METRICS, PROPLET_METRICS):
                result = await conn.execute(sa.delete(table).where(table.c.timestamp < older_than))
                removed += result.rowcount
        return removed

    # -- internals -----------------------------------------------------------------------------------

    # -- batch writes --------------------------------------------------------------------------------

    def _task_values(self, task: Task) -> tuple[Any, ...]:
        """The task's column values in ``_TASK_COLUMNS`` order, checked; raises ``Unstorable``.

        A check is a pure function of the value, so an immutable value that is the very object checked
        at the task's previous write keeps its checked form (most columns of a running task do not
        change between its writes). Only tasks still in flight are remembered: their values are held
        by the engine anyway, and a settled task's module must not stay alive here.
        """
        fields = task.__dict__
        values = [fields[name] for name in _TASK_PLAIN]  # every column but state and extras
        values.append(int(task.state))
        values.append({f: fields[f] for f in _TASK_EXTRAS})
        owner = task.id
        checks = self._task_checks
        last = self._last_checked.pop(owner, None)
        if last is None:
            checked = tuple([check(v, owner) for check, v in zip(checks, values)])  # noqa: B905
        else:
            same, immutable = last[0], _IMMUTABLE
            checked = tuple([
                done if v is was and type(v) in immutable else check(v, owner)
                for check, v, was, done in zip(checks, values, same, last[1])  # noqa: B905
            ])  # fmt: skip
        if not task.state.is_terminal:
            self._last_checked[owner] = (values, checked)
            if len(self._last_checked) > LAST_CHECKED_TASKS:
                del self._last_checked[next(iter(self._last_checked))]
        return checked

    def _checked(self, table: str, row: dict[str, Any], owner: str) -> dict[str, Any]:
        checks = self._checks[table] if table in self._checks else self._metric_checks[table]
        return {k: checks[k](v, owner) for k, v in row.items()}

    def _prepare(self, batch: WriteBatch, refused: Refusals, *, strict: bool) -> _Plan:
        """Check and encode every row now (JSON to text): the result no longer shares anything with the
        caller's objects, so the engine may go on mutating them. A refused row goes to ``refused`` (or
        raises ``Unstorable`` when ``strict``)."""
        plan = _Plan(_storable_ids(batch.deleted_tasks), _storable_ids(batch.deleted_proplets))
        for task in batch.tasks.values():
            try:
                plan.written[task.id] = self._task_values(task)
            except Unstorable as exc:
                if strict:
                    raise
                refused.tasks[task.id] = str(exc)
        for proplet in batch.proplets.values():
            row = _to_row(proplet, PROPLETS, _PROPLET_FIELDS)
            row["metadata"] = dataclasses.asdict(proplet.metadata)
            row["alive_history"] = list(proplet.alive_history)
            try:
                plan.proplets.append(self._checked("proplets", row, proplet.id))
            except Unstorable as exc:
                if strict:
                    raise
                refused.proplets[proplet.id] = str(exc)
        for job in batch.jobs.values():
            try:
                plan.jobs.append(self._checked("jobs", dataclasses.asdict(job), job.id))
            except Unstorable as exc:
                if strict:
                    raise
                refused.jobs[job.id] = str(exc)
        for table, rows, out in (
            ("task_metrics", batch.task_metrics, plan.task_metrics),
            ("proplet_metrics", batch.proplet_metrics, plan.proplet_metrics),
            ("timeline_events", self._event_rows(batch), plan.events),
        ):
            for row in rows:
                owner = str(row.get("task_id") or row.get("proplet_id") or row.get("subject_id"))
                try:
                    out.append(self._checked(table, row, owner))
                except Unstorable as exc:
                    if strict:
                        raise
                    refused.metrics.append(str(exc))
        for logs in batch.task_logs:
            try:
                rows = [self._checked("task_logs", row, logs.task_id) for row in _log_rows(logs)]
            except Unstorable as exc:
                if strict:
                    raise
                refused.metrics.append(str(exc))
                continue
            if logs.final and logs.replace:
                plan.replaced_logs.append(
                    {"_id": logs.task_id, "_attempt": logs.attempt, "_proplet": logs.proplet_id}
                )
            plan.task_logs.extend(rows)
        for row in plan.events:
            key = (row["subject"], row["subject_id"])
            count = self._event_counts.pop(key, 0) + 1
            if count > 2 * TIMELINE_LIMIT:
                plan.prune.append({"_subject": key[0], "_id": key[1]})
                count = TIMELINE_LIMIT
            self._event_counts[key] = count
        while len(self._event_counts) > WRITTEN_ROWS_CACHE:
            self._event_counts.popitem(last=False)
        return plan

    @staticmethod
    def _event_rows(batch: WriteBatch) -> list[dict[str, Any]]:
        """One row per subject of the window's events (in order), none for subjects deleted in it."""
        if not batch.events:
            return []
        windows: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for e in batch.events:
            windows.setdefault((e["subject"], e["subject_id"]), []).append(
                {"at": e["at"], "kind": e["kind"], "cause": e["cause"], "fields": e["fields"]}
            )
        gone = {("task", i) for i in batch.deleted_tasks} | {("proplet", i) for i in batch.deleted_proplets}
        return [
            {"subject": key[0], "subject_id": key[1], "at": events[0]["at"], "events": events}
            for key, events in windows.items()
            if key not in gone
        ]

    def _plan(self, plan: _Plan) -> None:
        """Split the encoded tasks into whole-row inserts (first time seen) and updates of the columns
        that differ from what this store last wrote. Runs under the batch lock."""
        for task_id, values in list(plan.written.items()):
            fingerprints = plan.fingerprints[task_id] = _fingerprints(values)  # kept once written (_run)
            old = self._written.get(task_id)
            if old is None:
                row = dict(zip(_TASK_COLUMNS, values, strict=True))
                row["seq"] = self._next_seq
                self._next_seq += 1
                plan.inserts.append(row)
                continue
            changed = {c: v for c, v, f, o in zip(_TASK_COLUMNS, values, fingerprints, old) if f != o}  # noqa: B905
            if changed:
                plan.updates.setdefault(tuple(changed), []).append({"_id": task_id, **changed})

    async def _run(self, plan: _Plan, what: str, isolate: Refusals | None = None) -> None:
        """Apply ``plan`` in one transaction; with ``isolate``, each row in its own savepoint."""
        self._check_open(what)
        try:
            if self._writer_thread is not None:
                await self._run_sqlite(plan, isolate)
            else:
                async with self._engine.begin() as conn:
                    await conn.run_sync(self._apply, plan, isolate)
        except (SQLAlchemyError, OSError, TypeError, ValueError) as exc:
            raise StoreError(self.url, what, exc) from exc
        for task_id in plan.deleted_tasks:
            self._written.pop(task_id, None)
        for task_id, fingerprints in plan.fingerprints.items():
            if isolate is None or task_id not in isolate.tasks:
                self._written[task_id] = fingerprints
                self._written.move_to_end(task_id)
        while len(self._written) > WRITTEN_ROWS_CACHE:
            self._written.popitem(last=False)

    async def _run_sqlite(self, plan: _Plan, isolate: Refusals | None) -> None:
        """One window on SQLite: on the loop's thread when it is small and the lock is free at once
        (a thread hand-off there and back cost more CPU than writing a few rows: docs/benchmarks.md),
        else on the writer thread, waiting up to ``BUSY_TIMEOUT_MS`` for the lock."""
        assert self._writer_thread is not None
        if _plan_rows(plan) <= INLINE_ROWS:
            try:
                self._apply_on_writer(plan, isolate)
            except DBAPIError as exc:
                if not _is_busy(exc):
                    raise
                await self._writer_thread.run(self._apply_waiting, plan, isolate)
        else:
            await self._writer_thread.run(self._apply_waiting, plan, isolate)
        self._commits_since_checkpoint += 1
        if self._commits_since_checkpoint >= CHECKPOINT_EVERY and (
            self._checkpointing is None or self._checkpointing.done()
        ):
            self._commits_since_checkpoint = 0
            self._checkpointing = asyncio.ensure_future(self._checkpoint_window())
            self._checkpointing.add_done_callback(_log_checkpoint_failure)

    async def _checkpoint_window(self) -> None:
        """A checkpoint takes a window's turn (the write locks), on the writer thread: windows wait
        for it in asyncio, not on the loop's thread, and with no write beside it the checkpoint
        copies the whole WAL, so the next window starts the WAL over (a checkpoint racing writes
        never catches up, and the WAL file would only grow)."""
        assert self._writer_thread is not None
        async with self._batch_lock, self._write_lock:
            if not self._closed:
                await self._writer_thread.run(self._checkpoint)

    def _apply_waiting(self, plan: _Plan, isolate: Refusals | None) -> None:
        """The window on the writer thread, retried while another process holds the lock, for up to
        ``BUSY_TIMEOUT_MS`` (each try itself waits ``INLINE_BUSY_MS``)."""
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                self._apply_on_writer(plan, isolate)
                return
            except DBAPIError as exc:
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise

    def _checkpoint(self) -> None:
        """Copy the WAL into the database file (PASSIVE: readers of other processes are not waited
        for), on the group-commit connection, whose own automatic checkpoints are off."""
        if self._raw is not None:
            self._raw.checkpoint()
            return
        assert self._writer is not None
        with contextlib.closing(self._writer.raw_connection()) as conn:  # not in a transaction: no BEGIN
            assert isinstance(conn.driver_connection, sqlite3.Connection)
            _wal_checkpoint(conn.driver_connection)

    def _apply_on_writer(self, plan: _Plan, isolate: Refusals | None) -> None:
        assert self._writer is not None
        if self._raw is not None and self.fence is None:
            with self._raw.begin() as raw:
                self._apply(raw, plan, isolate)
            return
        with self._writer.begin() as conn:  # the fence takes an sa.Connection
            self._apply(conn, plan, isolate)

    def _apply(self, conn: sa.Connection | _RawSqlite, plan: _Plan, isolate: Refusals | None) -> None:
        """Runs inside one transaction (writer thread on SQLite, greenlet on PostgreSQL)."""
        if self.fence is not None:
            assert isinstance(conn, sa.Connection)  # _apply_on_writer keeps fenced writes on SQLAlchemy
            self.fence(conn)  # first: the window of a deposed --ha leader commits nothing

        def run(stmt: Any, rows: list[dict[str, Any]], refuse: Callable[[dict[str, Any], str], None]) -> None:
            if not rows:
                return
            if isolate is None:
                conn.execute(stmt, rows[0] if len(rows) == 1 else rows)
                return
            for row in rows:
                try:
                    with conn.begin_nested():
                        conn.execute(stmt, row)
                except (SQLAlchemyError, TypeError, ValueError) as exc:
                    if not _is_data_error(exc):
                        raise
                    refuse(row, _describe(exc))

        refusals = isolate if isolate is not None else Refusals()  # (an empty Refusals is falsy)

        def task(row: dict[str, Any], why: str) -> None:
            refusals.tasks[row.get("id") or row["_id"]] = why

        def ignore(row: dict[str, Any], why: str) -> None:
            pass  # deleting a row that cannot be there

        run(_DELETE_TASK_METRICS, [{"_id": i} for i in plan.deleted_tasks], ignore)
        run(_DELETE_TASK_LOGS, [{"_id": i} for i in plan.deleted_tasks], ignore)
        run(_DELETE_EVENTS, [{"_subject": "task", "_id": i} for i in plan.deleted_tasks], ignore)
        run(_DELETE_EVENTS, [{"_subject": "proplet", "_id": i} for i in plan.deleted_proplets], ignore)
        run(_DELETE_TASK, [{"_id": i} for i in plan.deleted_tasks], ignore)
        run(_DELETE_PROPLET_METRICS, [{"_id": i} for i in plan.deleted_proplets], ignore)
        run(_DELETE_PROPLET, [{"_id": i} for i in plan.deleted_proplets], ignore)
        run(self._upserts["tasks"], plan.inserts, task)
        for rows in plan.updates.values():
            run(_UPDATE_TASK, rows, task)
        run(
            self._upserts["proplets"],
            plan.proplets,
            lambda r, why: refusals.proplets.__setitem__(r["id"], why),
        )
        run(self._upserts["jobs"], plan.jobs, lambda r, why: refusals.jobs.__setitem__(r["id"], why))
        run(_INSERT_TASK_METRICS, plan.task_metrics, lambda r, why: refusals.metrics.append(why))
        run(_INSERT_PROPLET_METRICS, plan.proplet_metrics, lambda r, why: refusals.metrics.append(why))
        run(_DELETE_FINAL_LOGS, plan.replaced_logs, ignore)
        run(_INSERT_TASK_LOGS, plan.task_logs, lambda r, why: refusals.metrics.append(why))
        run(_INSERT_TIMELINE, plan.events, lambda r, why: refusals.metrics.append(why))
        run(_PRUNE_TIMELINE, plan.prune, ignore)

    def _task_from_row(self, values: Any) -> Task:
        data = _from_row(values, _TASK_FIELDS)
        try:
            data["state"] = TaskState(values["state"])
        except ValueError as exc:
            raise StoreError(
                self.url, f"task {values['id']!r} has unknown state {values['state']!r}"
            ) from exc
        data["file"] = bytes(values["file"])
        return Task(**data)

    def _build_upsert(self, table: sa.Table, keep: tuple[str, ...]) -> Any:
        stmt = self._insert(table)
        return stmt.on_conflict_do_update(
            index_elements=["id"], set_={c.name: stmt.excluded[c.name] for c in table.c if c.name not in keep}
        )

    async def _upsert(self, table: sa.Table, row: dict[str, Any], what: str) -> None:
        async with self._write(what, [row]) as conn:
            await conn.execute(self._upserts[table.name], row)

    async def _page(
        self, table: sa.Table, key: sa.Column[Any], value: str, offset: int, limit: int
    ) -> tuple[int, list[dict[str, Any]]]:
        if offset < 0 or limit < 0:
            raise ValueError(f"offset and limit must be >= 0, got offset={offset} limit={limit}")
        async with self._read(f"list {table.name} of {value!r}") as conn:
            total = await conn.scalar(sa.select(sa.func.count()).select_from(table).where(key == value))
            query = (
                sa.select(*[c for c in table.c if c.name != "id"])
                .where(key == value)
                .order_by(table.c.timestamp.desc(), table.c.id.desc())
                .offset(offset)
                .limit(limit)
            )
            rows = (await conn.execute(query)).all()
        return int(total or 0), [dict(r._mapping) for r in rows]

    @contextlib.asynccontextmanager
    async def _write(self, what: str, rows: Sequence[dict[str, Any]] = ()) -> AsyncIterator[AsyncConnection]:
        self._check_open(what)
        async with self._write_lock:
            try:
                async with self._engine.begin() as conn:
                    if self.fence is not None:
                        await conn.run_sync(self.fence)
                    yield conn
            except StatementError as exc:
                raise StoreError(self.url, f"{what}{_json_culprit(rows)}", exc) from exc
            except (TypeError, ValueError) as exc:
                # psycopg encodes JSON itself, outside SQLAlchemy's error wrapping.
                culprit = _json_culprit(rows)
                if not culprit:
                    raise
                raise StoreError(self.url, f"{what}{culprit}", exc) from exc
            except (SQLAlchemyError, OSError) as exc:
                raise StoreError(self.url, what, exc) from exc

    @contextlib.asynccontextmanager
    async def _read(self, what: str) -> AsyncIterator[AsyncConnection]:
        self._check_open(what)
        try:
            async with self._engine.connect() as conn:
                yield conn
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(self.url, what, exc) from exc

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise StoreError(self.url, f"{what}: the store is closed")


_TASK_PLAIN = tuple(c.name for c in TASKS.c if c.name not in ("seq", "state", "extras"))
_TASK_COLUMNS = (*_TASK_PLAIN, "state", "extras")  # the order of _task_values
_TASK_EXTRAS = tuple(f for f in _TASK_FIELDS if f not in TASKS.c)
# executemany UPDATE: the SET clause comes from the keys of the parameter rows (all alike per call).
_UPDATE_TASK = sa.update(TASKS).where(TASKS.c.id == sa.bindparam("_id"))
# Built once, like the statements around them: SQLAlchemy memoizes a statement's cache key on the
# object, and a fresh sa.insert() per write costs ~10 µs of key generation on the writer thread.
_INSERT_TASK_METRICS = sa.insert(TASK_METRICS)
_INSERT_PROPLET_METRICS = sa.insert(PROPLET_METRICS)
_INSERT_TASK_LOGS = sa.insert(TASK_LOGS)
_INSERT_TIMELINE = sa.insert(TIMELINE)
_DELETE_TASK = sa.delete(TASKS).where(TASKS.c.id == sa.bindparam("_id"))
_DELETE_TASK_METRICS = sa.delete(TASK_METRICS).where(TASK_METRICS.c.task_id == sa.bindparam("_id"))
_DELETE_TASK_LOGS = sa.delete(TASK_LOGS).where(TASK_LOGS.c.task_id == sa.bindparam("_id"))
_DELETE_FINAL_LOGS = sa.delete(TASK_LOGS).where(
    (TASK_LOGS.c.task_id == sa.bindparam("_id"))
    & (TASK_LOGS.c.attempt == sa.bindparam("_attempt"))
    & (TASK_LOGS.c.proplet_id == sa.bindparam("_proplet"))
    & TASK_LOGS.c.final
)


def _log_rows(batch: TaskLogBatch) -> list[dict[str, Any]]:
    return [
        {"task_id": batch.task_id, "attempt": int(batch.attempt), "proplet_id": batch.proplet_id,
         "seq": batch.seq, "final": batch.final, "stream": stream, "data": data,
         "timestamp": float(batch.timestamp)}
        for stream, data in batch.lines
    ]  # fmt: skip


def _prune_statement(limit: int) -> Any:
    """Delete a subject's events older than its newest ``limit``."""
    newest_kept = (
        sa.select(TIMELINE.c.id)
        .where(TIMELINE.c.subject == sa.bindparam("_subject"), TIMELINE.c.subject_id == sa.bindparam("_id"))
        .order_by(TIMELINE.c.id.desc())
        .offset(limit)
        .limit(1)
        .scalar_subquery()
    )
    return sa.delete(TIMELINE).where(
        TIMELINE.c.subject == sa.bindparam("_subject"),
        TIMELINE.c.subject_id == sa.bindparam("_id"),
        TIMELINE.c.id <= newest_kept,
    )


_PRUNE_TIMELINE = _prune_statement(TIMELINE_LIMIT)
_DELETE_EVENTS = sa.delete(TIMELINE).where(
    TIMELINE.c.subject == sa.bindparam("_subject"), TIMELINE.c.subject_id == sa.bindparam("_id")
)
_DELETE_PROPLET = sa.delete(PROPLETS).where(PROPLETS.c.id == sa.bindparam("_id"))
_DELETE_PROPLET_METRICS = sa.delete(PROPLET_METRICS).where(
    PROPLET_METRICS.c.proplet_id == sa.bindparam("_id")
)


@dataclass
class _Plan:
    deleted_tasks: list[str]
    deleted_proplets: list[str]
    inserts: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    updates: dict[tuple[str, ...], list[dict[str, Any]]] = dataclasses.field(default_factory=dict)
    proplets: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    jobs: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    task_metrics: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    proplet_metrics: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    task_logs: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    replaced_logs: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # final records redone
    events: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    prune: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    written: dict[str, tuple[Any, ...]] = dataclasses.field(default_factory=dict)
    fingerprints: dict[str, tuple[Any, ...]] = dataclasses.field(default_factory=dict)  # of written, by _plan


def _column_checks(table: sa.Table, *, skip: tuple[str, ...] = ()) -> dict[str, Callable[[Any, str], Any]]:
    """Per column, a function (value, owner id) -> value to bind, raising ``Unstorable`` with the row
    and field named for what the backend would refuse. Both backends get the same rules, so a row
    that SQLite takes is one PostgreSQL takes too."""
    checks: dict[str, Callable[[Any, str], Any]] = {}
    for column in table.c:
        if column.name in skip:
            continue
        checks[column.name] = _check_for(column, column.name)
    return checks


def _check_for(column: sa.Column[Any], name: str) -> Callable[[Any, str], Any]:
    nullable = bool(column.nullable)
    kind = column.type

    def none(owner: str) -> None:
        if not nullable:
            raise Unstorable(f"{owner!r} field {name!r} must not be null")

    if isinstance(kind, sa.JSON):

        def check_json(value: Any, owner: str) -> Any:
            if not value and type(value) in _EMPTY_JSON:  # most JSON fields are empty
                return _EMPTY_JSON[type(value)]
            try:
                text = _json_encode(value)
            except (TypeError, ValueError, RecursionError) as exc:
                raise Unstorable(f"{owner!r} field {name!r} is not JSON-encodable: {exc}") from None
            if text.count("[") + text.count("{") > MAX_JSON_DEPTH and _json_depth(value) > MAX_JSON_DEPTH:
                raise Unstorable(f"{owner!r} field {name!r} is nested deeper than {MAX_JSON_DEPTH} levels")
            return RawJson(text)

        return check_json
    if isinstance(kind, sa.String):  # Text too
        limit = kind.length
        bound = limit if limit is not None else sys.maxsize

        def check_text(value: Any, owner: str) -> Any:
            if type(value) is str and value.isascii() and "\x00" not in value and len(value) <= bound:
                return value  # the common case, in one test
            if value is None:
                return none(owner)
            if not isinstance(value, str):
                raise Unstorable(f"{owner!r} field {name!r} must be text, got {type(value).__name__}")
            if not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    raise Unstorable(
                        f"{owner!r} field {name!r} is not valid Unicode (it holds a lone surrogate)"
                    ) from None
            if "\x00" in value:
                raise Unstorable(f"{owner!r} field {name!r} contains a NUL character (PostgreSQL refuses it)")
            if limit is not None and len(value) > limit:
                raise Unstorable(f"{owner!r} field {name!r} is longer than {limit} characters")
            return value

        return check_text
    if isinstance(kind, sa.Boolean):
        return lambda value, owner: none(owner) if value is None else bool(value)
    if isinstance(kind, sa.Integer):  # SmallInteger and BigInteger too
        bits = 63 if isinstance(kind, sa.BigInteger) else 15 if isinstance(kind, sa.SmallInteger) else 31

        def check_int(value: Any, owner: str) -> Any:
            if value is None:
                return none(owner)
            if not -(2**bits) <= value < 2**bits:
                raise Unstorable(
                    f"{owner!r} field {name!r} = {value} is out of range ({bits + 1}-bit integer)"
                )
            return value

        return check_int
    if isinstance(kind, sa.LargeBinary):
        return lambda value, owner: none(owner) if value is None else bytes(value)
    return lambda value, owner: none(owner) if value is None else value


_HASHED = frozenset({str, RawJson, bytes})


def _fingerprints(values: tuple[Any, ...]) -> tuple[Any, ...]:
    """What the written-rows cache keeps of a row's values: small ones as they are, long text and bytes
    (a module, a big result) as (length, hash), so the cache does not hold every module it wrote. str
    and bytes cache their hash, so an unchanged object costs nothing to compare again. One
    comprehension, no call per value: it runs for every column of every row written."""
    hashed = _HASHED
    return tuple((len(v), hash(v)) if type(v) in hashed and len(v) > 64 else v for v in values)


def _storable_ids(ids: list[str]) -> list[str]:
    """Ids that a row could have: deleting one the store cannot hold is a no-op, not an error."""
    if not ids:
        return []  # the usual window deletes nothing
    check = _check_for(TASKS.c.id, "id")
    out = []
    for i in ids:
        try:
            out.append(check(i, i))
        except Unstorable:
            continue
    return out


def _put(refused: dict[str, str], key: str, why: str) -> None:
    refused[key] = why


def _json_depth(value: Any) -> int:
    """Nesting depth of lists/dicts, without recursion (stops counting past the bound)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_JSON_DEPTH:
            break
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _json_equals(element: Any, value: Any, *, pg: bool) -> Any:
    """SQL: this JSON element equals the scalar ``value`` (a string, number or boolean).

    PostgreSQL compares the element's JSON text (``->``: the ``json`` type keeps the text our encoder
    wrote), never a cast to the value's type, so a task whose value has another type simply does not
    match (a cast would fail the whole query). SQLite's ``json_extract`` returns typed values."""
    if not isinstance(value, str | int | float):  # bool is an int
        raise ValueError(f"metadata filter values must be strings, numbers or booleans, got {value!r}")
    if pg:
        return sa.cast(element, sa.Text) == _json_encode(value)
    if isinstance(value, str):
        return element.as_string() == value
    if isinstance(value, bool):
        return element.as_boolean() == value
    if isinstance(value, int):
        return element.as_integer() == value
    return element.as_float() == value


def _is_data_error(exc: BaseException | None) -> bool:
    """The database refused the data (retrying the same row cannot help), not the connection."""
    if isinstance(exc, DBAPIError):
        return isinstance(exc, sa.exc.DataError | sa.exc.IntegrityError) or isinstance(
            exc.orig, UnicodeError | ValueError
        )
    return isinstance(exc, StatementError | TypeError | ValueError | RecursionError)


def _is_busy(exc: DBAPIError) -> bool:
    """SQLite could not take the write lock in time (another connection holds it): worth waiting for."""
    code = getattr(exc.orig, "sqlite_errorcode", None)
    return code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "database is locked" in str(exc.orig)


def _plan_rows(plan: _Plan) -> int:
    """About how many rows a window writes (what decides whether it may run on the event loop)."""
    return (
        len(plan.inserts) + sum(map(len, plan.updates.values())) + len(plan.proplets) + len(plan.jobs)
        + len(plan.task_metrics) + len(plan.proplet_metrics) + len(plan.task_logs) + len(plan.events)
        + len(plan.deleted_tasks) + len(plan.deleted_proplets)
    )  # fmt: skip


def _wal_checkpoint(conn: sqlite3.Connection) -> None:
    """PASSIVE: copies what it can without waiting for other connections' readers."""
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


def _log_checkpoint_failure(done: asyncio.Future[None]) -> None:
    if not done.cancelled() and done.exception() is not None:
        log.warning(json.dumps({"event": "wal_checkpoint_failed", "error": str(done.exception())}))


def _sqlite_writer(url: URL) -> sa.Engine:
    """A plain (synchronous) sqlite3 engine for group-commit windows, set up like the async one, with
    one connection. Windows run on the event loop's thread and, when they must wait for a lock or are
    large, on the store's writer thread: never two at once (the store's write locks), so the
    connection may move between the two (``check_same_thread=False``). It waits briefly for a lock
    (``INLINE_BUSY_MS``: the wait holds the loop) and does not checkpoint as it commits
    (``Store._checkpoint_window`` does, on the writer thread, where the fsyncs cannot hold the loop)."""
    engine = sa.create_engine(
        url.set(drivername="sqlite+pysqlite"),
        json_serializer=_serialize,
        json_deserializer=_json_loads,
        poolclass=sa.pool.StaticPool,
        connect_args={"check_same_thread": False},
    )
    _sqlite_hooks(engine, busy_ms=INLINE_BUSY_MS, autocheckpoint=0)
    return engine


# Bind processors the raw path leaves out: the column checks already give these types exactly what the
# processor would hand sqlite3 (JSON: ``RawJson`` text, which the serializer passes through; Boolean:
# a bool, which sqlite3 binds as the same 0/1; LargeBinary: bytes, bound as the same BLOB as the
# processor's memoryview). Every other processor (``to_float`` of Double columns) still runs.
_CHECKED_BIND_TYPES = (sa.JSON, sa.Boolean, sa.LargeBinary)
# What _RawSqlite reads from a compiled statement beyond its public string (see ``supported``).
_COMPILER_INTERNALS = (
    "_bind_processors", "positiontup", "literal_execute_params", "post_compile_params",
    "insert_prefetch", "update_prefetch",
)  # fmt: skip


@dataclass(frozen=True)
class _RawStatement:
    """One Core statement compiled once for the raw path: its SQL, and how a row becomes parameters."""

    sql: str
    names: tuple[str, ...]  # the positional parameters, by bind name
    get: Callable[[dict[str, Any]], Sequence[Any]]  # a row's values in ``names`` order
    processors: tuple[tuple[int, Callable[[Any], Any]], ...]
    stmt: Any  # held so that the cache key's id() stays this statement's

    def params(self, rows: Sequence[dict[str, Any]]) -> list[Any]:
        get, processors = self.get, self.processors
        try:
            if not processors:
                return [get(row) for row in rows]
            out: list[Any] = []
            for row in rows:
                values = list(get(row))
                for i, process in processors:
                    values[i] = process(values[i])
                out.append(values)
            return out
        except KeyError as exc:
            # What SQLAlchemy raises for a row missing a key the first row had (a data error).
            group = next(i for i, row in enumerate(rows, 1) if not all(n in row for n in self.names))
            message = f"A value is required for bind parameter {exc.args[0]!r}, in parameter group {group}"
            raise StatementError(message, self.sql, None, sa.exc.InvalidRequestError(message)) from None


def _row_getter(
    names: tuple[str, ...], constants: dict[str, Any]
) -> Callable[[dict[str, Any]], Sequence[Any]]:
    pick: Callable[[dict[str, Any]], Sequence[Any]]
    if len(names) == 1:  # itemgetter of one name returns the value, not a tuple
        (name,) = names
        pick = lambda row: (row[name],)  # noqa: E731
    else:
        pick = operator.itemgetter(*names) if names else lambda row: ()
    if constants:  # a row's own value wins, as in SQLAlchemy
        return lambda row: pick({**constants, **row})
    return pick


class _RawSqlite:
    """The writer thread's plain ``sqlite3`` connection running the store's Core statements, each compiled
    once by SQLAlchemy's SQLite dialect to positional SQL (see the module docstring).

    It offers the two ``sa.Connection`` methods that ``Store._apply`` uses (``execute`` of one row or
    an executemany, ``begin_nested``), turns ``sqlite3`` errors into the ``DBAPIError`` subclasses
    SQLAlchemy would raise, and fires the writer engine's ``before/after_cursor_execute`` listeners
    (with no connection, cursor or context; return values ignored), so callers and statement hooks
    cannot tell the two paths apart. Used by one window at a time (the store's write locks), on the
    loop's thread or the writer thread.
    """

    @staticmethod
    def supported() -> bool:
        """Whether this SQLAlchemy still has the compiler internals the raw path reads (checked on 2.0
        and 2.1); if not, windows go through SQLAlchemy's execute as before, slower but the same."""
        compiler = sa.sql.compiler.SQLCompiler
        return all(hasattr(compiler, name) for name in _COMPILER_INTERNALS)

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine  # the writer engine: its "connect" hook sets the pragmas, autocommit
        self._fairy: Any = None  # the pool's checkout, held while the store is open
        self._compiled: dict[tuple[int, tuple[str, ...], bool], _RawStatement] = {}

    @contextlib.contextmanager
    def begin(self) -> Iterator[_RawSqlite]:
        """One transaction (``BEGIN`` … ``COMMIT``, ``ROLLBACK`` on any error), as ``Engine.begin``."""
        if self._fairy is None:
            self._fairy = self._engine.raw_connection()
        conn: sqlite3.Connection = self._fairy.driver_connection
        self._sql("BEGIN")
        try:
            yield self
            try:
                conn.commit()
            except sqlite3.Error as exc:
                raise self._error(exc, "COMMIT", None, False) from exc
        except BaseException:
            try:
                if conn.in_transaction:
                    conn.rollback()
            except sqlite3.Error:
                self._drop()  # a connection that cannot roll back is not reused
            raise

    @contextlib.contextmanager
    def begin_nested(self) -> Iterator[None]:
        self._sql("SAVEPOINT raw_row")
        try:
            yield
        except BaseException:
            if self._fairy is not None:  # not when the error was a lost connection
                self._sql("ROLLBACK TO SAVEPOINT raw_row")
            raise
        self._sql("RELEASE SAVEPOINT raw_row")

    def execute(self, stmt: Any, rows: dict[str, Any] | list[dict[str, Any]]) -> None:
        """Like ``sa.Connection.execute``: a dict runs once, a list of dicts as an executemany."""
        many = isinstance(rows, list)
        batch = rows if isinstance(rows, list) else [rows]
        compiled = self._compile(stmt, batch[0], many)
        params = compiled.params(batch)
        self._sql(compiled.sql, params if many else params[0], many)

    def checkpoint(self) -> None:
        if self._fairy is None:
            self._fairy = self._engine.raw_connection()
        _wal_checkpoint(self._fairy.driver_connection)

    def close(self) -> None:
        if self._fairy is not None:
            self._fairy.close()
            self._fairy = None
        self._engine.dispose()

    def _compile(self, stmt: Any, row: dict[str, Any], many: bool) -> _RawStatement:
        keys = tuple(row)
        key = (id(stmt), keys, many)
        found = self._compiled.get(key)
        if found is not None:
            return found
        # As Connection.execute compiles it: the first row's keys, sorted.
        compiled: Any = stmt.compile(
            dialect=self._engine.dialect, column_keys=sorted(keys), for_executemany=many
        )
        if (
            compiled.literal_execute_params or compiled.post_compile_params
            or compiled.insert_prefetch or compiled.update_prefetch
        ):  # fmt: skip
            raise sa.exc.CompileError(f"the raw SQLite path cannot run {compiled.string!r}")
        names = tuple(compiled.positiontup)
        constants: dict[str, Any] = {}
        for name in names:
            if name not in row:
                bind = compiled.binds[name]
                if bind.required:
                    message = f"A value is required for bind parameter {name!r}"
                    raise StatementError(message, compiled.string, None, sa.exc.InvalidRequestError(message))
                constants[name] = bind.effective_value
        processors = tuple(
            (i, process)
            for i, name in enumerate(names)
            if (process := compiled._bind_processors.get(name)) is not None
            and name not in constants
            and not isinstance(compiled.binds[name].type, _CHECKED_BIND_TYPES)
        )
        found = _RawStatement(compiled.string, names, _row_getter(names, constants), processors, stmt)
        self._compiled[key] = found
        return found

    def _sql(self, sql: str, params: Any = (), many: bool = False) -> None:
        dispatch = self._engine.dispatch
        if dispatch.before_cursor_execute:
            dispatch.before_cursor_execute(None, None, sql, params, None, many)
        conn = self._fairy.driver_connection
        try:
            if many:
                conn.executemany(sql, params)
            else:
                conn.execute(sql, params)
        except sqlite3.Error as exc:
            raise self._error(exc, sql, params, many) from exc
        if dispatch.after_cursor_execute:
            dispatch.after_cursor_execute(None, None, sql, params, None, many)

    def _error(self, exc: sqlite3.Error, sql: str, params: Any, many: bool) -> BaseException:
        """What SQLAlchemy would raise for ``exc``: IntegrityError, OperationalError, ... (DBAPIError)."""
        dialect = self._engine.dialect
        invalidated = dialect.is_disconnect(exc, None, None)  # type: ignore[arg-type]
        if invalidated:
            self._drop()
        return DBAPIError.instance(
            sql, params, exc, sqlite3.Error, connection_invalidated=invalidated, dialect=dialect, ismulti=many
        )

    def _drop(self) -> None:
        if self._fairy is not None:
            self._fairy.invalidate()
            self._fairy = None


def _resolve_url(raw: str) -> URL:
    hint = "use a file path, sqlite:///path.db or postgresql://user@host/db"
    if not raw or not raw.strip():
        raise StoreError(repr(raw), f"empty store URL; {hint}")
    if "://" not in raw:
        return URL.create("sqlite+aiosqlite", database=str(Path(raw).expanduser()))
    shown = _PASSWORD_RE.sub(r"\1***@", raw)
    try:
        url = make_url(raw)
    except ArgumentError as exc:
        raise StoreError(shown, f"cannot parse the store URL; {hint}", exc) from exc
    backend, _, driver = url.drivername.partition("+")
    if backend == "sqlite":
        if driver not in ("", "aiosqlite"):
            raise StoreError(shown, f"SQLite driver {driver!r} is not supported; use aiosqlite or none")
        database = url.database or ""
        if database in ("", ":memory:") or database.startswith("file::memory:") or "mode=memory" in raw:
            raise StoreError(
                shown,
                "in-memory SQLite is not supported (not durable, loses concurrent updates); give a file",
            )
        return url.set(drivername="sqlite+aiosqlite", database=str(Path(database).expanduser()))
    if backend in ("postgresql", "postgres"):
        if driver not in ("", "psycopg"):
            raise StoreError(shown, f"PostgreSQL driver {driver!r} is not supported; use psycopg or none")
        if not url.database:
            raise StoreError(shown, "the PostgreSQL URL names no database, e.g. postgresql://user@host/db")
        return url.set(drivername="postgresql+psycopg")
    raise StoreError(shown, f"unsupported scheme {url.drivername!r}; {hint}")


def _create_engine(url: URL, shown: str, schema: str | None) -> AsyncEngine:
    common: dict[str, Any] = {"json_serializer": _serialize, "json_deserializer": _json_loads}
    if url.get_backend_name() != "sqlite":
        connect_args: dict[str, Any] = {"connect_timeout": 10}
        if schema is not None:
            connect_args["options"] = f"-csearch_path={schema}"
        # Overflow connections are closed on return, so a burst above pool_size pays a connect each;
        # 10 covers the service's usual fan-out.
        return create_async_engine(
            url, connect_args=connect_args, pool_pre_ping=True, pool_size=10, max_overflow=10, **common
        )

    try:
        Path(url.database or "").parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(shown, "cannot create the directory of the SQLite file", exc) from exc
    engine = create_async_engine(url, **common)
    _sqlite_hooks(engine.sync_engine)
    return engine


def _sqlite_hooks(engine: sa.Engine, *, busy_ms: int = BUSY_TIMEOUT_MS, autocheckpoint: int = 1000) -> None:
    pragmas = (
        "journal_mode=WAL", "synchronous=NORMAL", f"busy_timeout={busy_ms}", "foreign_keys=ON",
        f"wal_autocheckpoint={autocheckpoint}",
    )  # fmt: skip

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (see module docstring)
        cursor = dbapi_connection.cursor()
        for pragma in pragmas:
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN")


def _migrate(shown: str, connection: sa.Connection) -> list[str]:
    """Upgrade to head inside the caller's transaction; returns the revisions applied, oldest first."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    script = ScriptDirectory.from_config(config)
    head = script.get_current_head()
    if connection.dialect.name == "postgresql":
        # Two managers starting at once on an empty database must not both create the tables.
        connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7079658)")
    current = MigrationContext.configure(connection).get_current_revision()
    if current == head:
        return []
    known = {s.revision for s in script.walk_revisions()}
    if current is not None and current not in known:
        raise StoreError(
            shown,
            f"the database schema is at revision {current!r}, unknown to this version (head {head!r}); "
            "it was probably written by a newer propeller",
        )
    assert head is not None
    pending = [s.revision for s in script.iterate_revisions(head, current or "base")]
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
    return list(reversed(pending))


def _to_row(obj: Any, table: sa.Table, fields: tuple[str, ...]) -> dict[str, Any]:
    """Columns by field name; a field the schema has no column for yet goes to the ``extras`` JSON.

    The model grows while the schema lags one migration behind; parking new fields in ``extras`` keeps
    them durable meanwhile instead of silently dropping them (tests assert that ``extras`` stays empty).
    """
    row: dict[str, Any] = {}
    extras: dict[str, Any] = {}
    for name in fields:
        (row if name in table.c else extras)[name] = getattr(obj, name)
    row["extras"] = extras
    return row


def _from_row(values: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    extras = values["extras"] or {}
    # A field since removed from the model may linger in extras; it is dropped here.
    return {
        name: values[name] if name in values else extras[name]
        for name in fields
        if name in values or name in extras
    }


def _json_culprit(rows: Sequence[dict[str, Any]]) -> str:
    """Name the row field that JSON cannot encode, if that is what failed (only run on the error path)."""
    for row in rows:
        for key, value in row.items():
            if isinstance(value, str | bytes | int | float | bool) or value is None:
                continue
            try:
                _json_dumps(value)
            except (TypeError, ValueError) as exc:
                owner = row.get("id") or row.get("task_id") or row.get("proplet_id")
                return f" ({owner!r} field {key!r} is not JSON-encodable: {exc})"
    return ""


def _describe(exc: BaseException) -> str:
    cause: BaseException = exc
    if isinstance(exc, DBAPIError | StatementError) and exc.orig is not None:
        cause = exc.orig
    text = " ".join(str(cause).split())
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__
