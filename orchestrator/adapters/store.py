"""Persistent store: SQLAlchemy async over SQLite (default) or PostgreSQL, schema managed by Alembic.

The engine keeps authoritative state in memory and emits ``PersistTask`` / ``PersistProplet``; the
service awaits the matching ``save_*`` before publishing anything, and on (re)start rebuilds the engine
from ``load_tasks()`` / ``load_proplets()``. So the contract is: once ``save_*`` returns, the row survives
a SIGKILL of the process.

Choices, and why:
- SQLite runs in WAL mode with ``synchronous=NORMAL``: a committed transaction survives a crash of the
  process (SIGKILL); after an OS crash or power loss the last few commits may roll back (never corrupt).
- SQLite gets explicit ``BEGIN`` (pysqlite's implicit transactions skip DDL, which would make a
  migration half-apply) and one in-process write lock (SQLite has one writer anyway; queueing in asyncio
  beats spinning on SQLITE_BUSY). In-memory SQLite is refused: not durable, and with a shared connection
  it loses concurrent updates.
- Core statements and whole-row upserts (``INSERT .. ON CONFLICT DO UPDATE``), not the ORM: the engine
  owns the objects, the store only mirrors rows.
- JSON columns use the SQL ``JSON`` type (PostgreSQL ``json``, not ``jsonb``): it keeps the text as
  written, so strings holding ``\\u0000`` round-trip. NaN/Infinity are refused on both backends, since
  PostgreSQL cannot store them in JSON. Plain text columns cannot hold NUL on PostgreSQL.
- ``load_tasks()`` returns tasks in first-save order (a ``seq`` column), since sequential jobs start
  their roots in list order.
- PostgreSQL may be given a ``schema=``: it is created if missing and put on ``search_path``, so every
  table (and ``alembic_version``) lives there; tests use one schema each.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import re
from collections.abc import AsyncIterator, Sequence
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

from orchestrator.core.model import Job, Proplet, PropletMetadata, Task, TaskState

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
    # 0002_hal
    sa.Column("monitoring_profile", sa.JSON(), nullable=True),
    sa.Column("kbs_resource_path", sa.Text(), nullable=False, server_default=""),
    sa.Column("hal_storage_path", sa.Text(), nullable=True),
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

_TASK_FIELDS = tuple(f.name for f in dataclasses.fields(Task))
_PROPLET_FIELDS = tuple(f.name for f in dataclasses.fields(Proplet))
_JOB_FIELDS = tuple(f.name for f in dataclasses.fields(JobRecord))
# PostgreSQL's json type refuses NaN/Infinity; refusing them everywhere keeps the backends alike.
_json_dumps = functools.partial(json.dumps, allow_nan=False, separators=(",", ":"))


class Store:
    """One database. Open with ``await Store.open(url)``; every method is a coroutine."""

    def __init__(self, engine: AsyncEngine, shown_url: str, applied: tuple[str, ...], next_seq: int) -> None:
        self._engine = engine
        self.url = shown_url
        # Alembic revisions this open() applied; empty when the database was already at head.
        self.applied_revisions = applied
        self._next_seq = next_seq
        self._closed = False
        sqlite_backend = engine.dialect.name == "sqlite"
        self._insert = sqlite.insert if sqlite_backend else postgresql.insert
        self._write_lock: contextlib.AbstractAsyncContextManager[Any] = (
            asyncio.Lock() if sqlite_backend else contextlib.nullcontext()
        )
        # Built once: constructing `excluded` costs about a millisecond, more than the write itself.
        # A task keeps its first `seq`: that is its place in load order.
        self._upserts = {
            table.name: self._build_upsert(table, keep=("id", "seq")) for table in (TASKS, PROPLETS, JOBS)
        }

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
        return cls(engine, shown, tuple(applied), int(top or 0) + 1)

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
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
        """Upsert whole rows, all in one transaction: either every task is saved or none is."""
        if not tasks:
            return
        rows = [self._task_row(t) for t in tasks]
        what = f"save task {tasks[0].id!r}" if len(tasks) == 1 else f"save {len(tasks)} tasks"
        async with self._write(what, rows) as conn:
            await conn.execute(self._upserts["tasks"], rows[0] if len(rows) == 1 else rows)

    async def delete_task(self, task_id: str) -> None:
        """Delete the task and its metrics; deleting an unknown id is not an error."""
        async with self._write(f"delete task {task_id!r}") as conn:
            await conn.execute(sa.delete(TASK_METRICS).where(TASK_METRICS.c.task_id == task_id))
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

    def _task_row(self, task: Task) -> dict[str, Any]:
        row = _to_row(task, TASKS, _TASK_FIELDS)
        row["state"] = int(task.state)
        row["file"] = bytes(task.file)
        row["seq"] = self._next_seq
        self._next_seq += 1
        return row

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
    common: dict[str, Any] = {"json_serializer": _json_dumps, "json_deserializer": json.loads}
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

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (see module docstring)
        cursor = dbapi_connection.cursor()
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=10000", "foreign_keys=ON"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN")

    return engine


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
