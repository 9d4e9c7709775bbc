"""The raw SQLite write path (``Store.write`` on ``sqlite3`` with pre-compiled statements) against the
SQLAlchemy path it replaces: the same windows written both ways give the same statements in the same
order, the same stored bytes and types, the same rows read back and the same refusals."""

from __future__ import annotations

import dataclasses
import re
import sqlite3
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from orchestrator.adapters.store import (
    _TASK_COLUMNS,
    METADATA,
    TIMELINE_LIMIT,
    Refusals,
    Store,
    TaskLogBatch,
    WriteBatch,
    _RawSqlite,
)
from orchestrator.core.model import Job, Proplet, Task, TaskState


def _task(i: int, **fields: Any) -> Task:
    return Task(
        id=f"t{i}",
        name=f"n{i} ünï \U0001f600",
        state=TaskState.PENDING,
        file=b"\x00asm\x01\x00" + bytes(range(256)) * i,
        cli_args=["--x", "\u0000y"],
        inputs=["1", "2.5"],
        results=[1, 2.5, None, True, 2**70],
        env={"K": "v"},
        daemon=i % 2 == 0,
        metadata={"owner": f"o{i % 2}", "nested": {"deep": [i, {"q": "\\"}]}},
        priority=-(2**31),
        memory_bytes=2**62,
        created_at=1,  # an int in a Double column: SQLAlchemy binds it as 1.0
        next_run=float(i) if i % 3 == 0 else None,
        **fields,
    )


def _windows() -> list[WriteBatch]:
    """A task's life in windows: inserts, partial updates, proplets, jobs, metrics, logs (a final record
    replaced), events, deletes."""
    tasks = {f"t{i}": _task(i) for i in range(6)}
    first = WriteBatch(tasks={k: dataclasses.replace(v) for k, v in tasks.items()})
    first.proplets["p1"] = Proplet(id="p1", name="one", alive=True, last_seen=3, alive_history=[1.0, 2])
    first.jobs["j"] = Job(id="j", name="job", created_at=2)
    first.events = [
        {"subject": "task", "subject_id": f"t{i}", "at": 1.5, "kind": "created", "cause": "", "fields": {}}
        for i in range(6)
    ]
    second = WriteBatch()
    for i in (0, 1, 2):
        task = tasks[f"t{i}"]
        task.state, task.attempt, task.proplet_id, task.start_time = TaskState.RUNNING, 1, "p1", 4
        second.tasks[task.id] = dataclasses.replace(task)
    tasks["t3"].results = {"r": [1, "x"]}
    tasks["t3"].verified = True
    second.tasks["t3"] = dataclasses.replace(tasks["t3"])
    second.task_metrics = [
        {"task_id": "t0", "proplet_id": "p1", "metrics": {"cpu": 1}, "aggregated": None, "timestamp": 5},
        {"task_id": "t1", "proplet_id": "p1", "metrics": {}, "aggregated": {"a": 1.25}, "timestamp": 6.5},
    ]
    second.proplet_metrics = [
        {"proplet_id": "p1", "namespace": "ns", "cpu_metrics": {"c": 1}, "memory_metrics": {}, "timestamp": 7}
    ]
    second.task_logs = [
        TaskLogBatch("t0", 1, "p1", [("stdout", "a\n"), ("stderr", "b")], final=False, timestamp=8, seq=0),
        TaskLogBatch("t0", 1, "p1", [("stdout", "a\nb")], final=True, timestamp=9),
    ]
    second.events = [
        {
            "subject": "task",
            "subject_id": "t0",
            "at": 4.0,
            "kind": "dispatched",
            "cause": "c",
            "fields": {"p": 1},
        },
        {"subject": "proplet", "subject_id": "p1", "at": 4.5, "kind": "alive", "cause": "", "fields": {}},
    ]
    third = WriteBatch()
    tasks["t0"].state, tasks["t0"].finish_time = TaskState.COMPLETED, 10.25
    third.tasks["t0"] = dataclasses.replace(tasks["t0"])
    third.task_logs = [
        TaskLogBatch("t0", 1, "p1", [("stdout", "final")], final=True, timestamp=11, replace=True)
    ]
    third.delete_task("t5")
    third.delete_proplet("gone")
    third.jobs["j"] = Job(id="j", name="job renamed", created_at=2, updated_at=12)
    third.events = [
        {"subject": "task", "subject_id": "t0", "at": 10.0, "kind": "completed", "cause": "", "fields": {}}
    ]
    return [first, second, third]


def _poison() -> WriteBatch:
    """Rows the checks let through but the database or a bind processor refuses, and a metrics row
    missing a key the first one has: each path must isolate the same rows."""
    batch = WriteBatch(tasks={"ok": _task(7), "bad": _task(8, start_time="soon")})  # not a float
    batch.tasks["ok"].id, batch.tasks["bad"].id = "ok", "bad"
    batch.task_metrics = [
        {"task_id": "ok", "proplet_id": "p", "metrics": {}, "aggregated": None, "timestamp": 1.0},
        {"task_id": "ok", "proplet_id": "p", "metrics": {}, "timestamp": 2.0},
    ]
    return batch


def _dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every stored value with its SQLite type, table by table, in rowid order."""
    conn = sqlite3.connect(path)
    try:
        out = {}
        for table in METADATA.sorted_tables:
            columns = ", ".join(f'"{c.name}", typeof("{c.name}")' for c in table.c)
            out[table.name] = conn.execute(f'SELECT {columns} FROM "{table.name}" ORDER BY rowid').fetchall()
        return out
    finally:
        conn.close()


async def _write_all(tmp_path: Path, raw: bool) -> tuple[list[Refusals], list[str], Path, dict[str, Any]]:
    path = tmp_path / ("raw" if raw else "sqlalchemy") / "store.db"
    store = await Store.open(str(path))
    assert store._raw is not None
    if not raw:
        store._raw = None
    statements: list[str] = []

    def capture(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(re.sub(r"SAVEPOINT \w+", "SAVEPOINT sp", " ".join(statement.split())))

    assert store._writer is not None
    sa.event.listen(store._writer, "before_cursor_execute", capture)
    refusals = []
    try:
        for window in _windows():
            refusals.append(await store.write(window))
        store._event_counts[("task", "t0")] = 2 * TIMELINE_LIMIT  # the next window prunes t0's timeline
        refusals.append(
            await store.write(
                WriteBatch(
                    events=[
                        {
                            "subject": "task",
                            "subject_id": "t0",
                            "at": 13.0,
                            "kind": "k",
                            "cause": "",
                            "fields": {},
                        }
                    ]
                )
            )
        )
        refusals.append(await store.write(_poison()))
        reads = {
            "tasks": await store.load_tasks(),
            "page": await store.list_tasks(0, 100, metadata={"owner": "o0"}),
            "proplets": await store.load_proplets(),
            "jobs": await store.load_jobs(),
            "events": [await store.list_events("task", f"t{i}") for i in range(6)],
            "proplet events": await store.list_events("proplet", "p1"),
            "logs": await store.list_task_logs("t0", 1),
            "task metrics": [await store.list_task_metrics(i) for i in ("t0", "t1", "ok")],
            "proplet metrics": await store.list_proplet_metrics("p1"),
        }
    finally:
        sa.event.remove(store._writer, "before_cursor_execute", capture)
        await store.close()
    return refusals, statements, path, reads


def test_this_sqlalchemy_has_what_the_raw_path_reads() -> None:
    # Otherwise the store silently falls back to SQLAlchemy's execute (correct, but slower): say so here.
    assert _RawSqlite.supported(), "SQLAlchemy's compiler internals moved: see _COMPILER_INTERNALS"


async def test_the_raw_path_writes_what_the_sqlalchemy_path_writes(tmp_path: Path) -> None:
    raw = await _write_all(tmp_path, raw=True)
    reference = await _write_all(tmp_path, raw=False)
    assert raw[0] == reference[0]
    assert raw[0][:4] == [Refusals()] * 4
    assert set(raw[0][4].tasks) == {"bad"} and "ValueError" in raw[0][4].tasks["bad"], raw[0][4]
    assert raw[1] == reference[1]  # the same statements, in the same order
    assert any(s.startswith("SAVEPOINT") for s in raw[1]) and any(
        s.startswith("DELETE FROM timeline") for s in raw[1]
    )
    assert _dump(raw[2]) == _dump(reference[2])  # the same values, with the same SQLite types
    assert raw[3] == reference[3]
    tasks = {t.id: t for t in raw[3]["tasks"]}
    assert set(tasks) == {"t0", "t1", "t2", "t3", "t4", "ok"}
    assert tasks["t0"].state is TaskState.COMPLETED and tasks["t0"].file == _task(0).file
    assert tasks["t3"].verified is True and tasks["t3"].results == {"r": [1, "x"]}
    assert [(r.final, r.data) for r in raw[3]["logs"]] == [(False, "a\n"), (False, "b"), (True, "final")]


async def test_a_row_sqlite_refuses_past_the_checks_is_isolated(sqlite_store: Store) -> None:
    """As the PostgreSQL test in test_store_batch.py: a NOT NULL the checks were told to let through
    fails the window, which is re-run with one savepoint per row, and only that row is refused."""
    await sqlite_store.save_task(Task(id="old", name="old"))
    checks = zip(_TASK_COLUMNS, sqlite_store._task_checks, strict=True)
    sqlite_store._task_checks = [(lambda v, _o: v) if n == "name" else c for n, c in checks]
    batch = WriteBatch()
    batch.tasks["a"] = Task(id="a", name="a")
    batch.tasks["bad"] = Task(id="bad", name=None)  # type: ignore[arg-type]
    batch.tasks["old"] = Task(id="old", name="old", attempt=2)
    batch.delete_task("gone")
    refused = await sqlite_store.write(batch)
    assert set(refused.tasks) == {"bad"} and "IntegrityError" in refused.tasks["bad"], refused
    assert {t.id: t.attempt for t in await sqlite_store.load_tasks()} == {"old": 2, "a": 0}
