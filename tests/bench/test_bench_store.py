"""Store throughput: one awaited ``save_task`` per transaction (what the service did per PersistTask
before group commit), a 100-task ``save_tasks`` batch, 50 concurrent savers, and a flush window of 16
state changes through ``write`` (group commit, changed columns only: what the service does now), on
SQLite WAL and on PostgreSQL; and a busier window (inserts, updates, events, logs) on SQLite through
the raw ``sqlite3`` write path against the SQLAlchemy one it replaced.

Run with ``pytest tests/bench/test_bench_store.py --benchmark-enable``; under the default
``--benchmark-disable`` each body runs once, as a plain test.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.adapters.store import Store, TaskLogBatch, WriteBatch
from orchestrator.core.model import Task, TaskState
from tests.fixtures.store import PgSchema

BATCH = 100


@pytest.fixture(params=["sqlite", pytest.param("pg", marks=pytest.mark.postgres)])
def bench_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[asyncio.AbstractEventLoop, Store]]:
    # pytest-benchmark calls plain functions, so the test drives its own loop.
    loop = asyncio.new_event_loop()
    if request.param == "sqlite":
        store = loop.run_until_complete(Store.open(str(tmp_path / "bench.db")))
    else:
        schema: PgSchema = request.getfixturevalue("pg_schema")
        store = loop.run_until_complete(Store.open(schema.url, schema=schema.name))
    yield loop, store
    loop.run_until_complete(store.close())
    loop.close()


def _task(i: int) -> Task:
    return Task(
        id=f"bench-{i}",
        name="bench",
        state=TaskState.RUNNING,
        file=b"\x00asm" + bytes(1020),
        inputs=["1", "2"],
        env={"A": "b"},
        metadata={"owner": "bench"},
        created_at=1.0e9,
    )


def _run(
    benchmark: Callable[..., object], loop: asyncio.AbstractEventLoop, make: Callable[[int], object]
) -> None:
    counter = itertools.count()

    def once() -> None:
        loop.run_until_complete(make(next(counter)))  # type: ignore[arg-type]

    benchmark(once)


def test_bench_save_task(
    benchmark: Callable[..., object], bench_store: tuple[asyncio.AbstractEventLoop, Store]
) -> None:
    loop, store = bench_store
    _run(benchmark, loop, lambda i: store.save_task(_task(i % 500)))
    assert loop.run_until_complete(store.load_tasks())


def test_bench_save_tasks_batch_of_100(
    benchmark: Callable[..., object], bench_store: tuple[asyncio.AbstractEventLoop, Store]
) -> None:
    loop, store = bench_store
    _run(benchmark, loop, lambda i: store.save_tasks([_task(i * BATCH + k) for k in range(BATCH)]))
    assert len(loop.run_until_complete(store.load_tasks())) >= BATCH


def test_bench_50_concurrent_save_task(
    benchmark: Callable[..., object], bench_store: tuple[asyncio.AbstractEventLoop, Store]
) -> None:
    loop, store = bench_store

    async def fifty(i: int) -> None:
        await asyncio.gather(*(store.save_task(_task(k)) for k in range(50)))

    _run(benchmark, loop, fifty)
    assert len(loop.run_until_complete(store.load_tasks())) == 50


def test_bench_write_window_of_16_state_changes(
    benchmark: Callable[..., object], bench_store: tuple[asyncio.AbstractEventLoop, Store]
) -> None:
    """16 tasks already stored change state (dispatch or result) in one window: one transaction of
    partial UPDATEs. Compare with 16 x test_bench_save_task (whole rows, one transaction each)."""
    loop, store = bench_store
    tasks = [_task(k) for k in range(16)]
    loop.run_until_complete(store.write(WriteBatch(tasks={t.id: t for t in tasks})))

    async def window(i: int) -> None:
        for task in tasks:
            task.attempt, task.updated_at = i + 1, 1.0e9 + i
        assert not await store.write(WriteBatch(tasks={t.id: t for t in tasks}))

    _run(benchmark, loop, window)
    assert {t.attempt for t in loop.run_until_complete(store.load_tasks())} != {0}


@pytest.fixture(params=["raw", "sqlalchemy"])
def sqlite_write_path(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[asyncio.AbstractEventLoop, Store]]:
    """A SQLite store whose windows run on the raw sqlite3 path (the default) or on SQLAlchemy."""
    loop = asyncio.new_event_loop()
    store = loop.run_until_complete(Store.open(str(tmp_path / "bench.db")))
    if request.param == "sqlalchemy":
        store._raw = None
    yield loop, store
    loop.run_until_complete(store.close())
    loop.close()


def test_bench_flush_window_raw_vs_sqlalchemy(
    benchmark: Any, sqlite_write_path: tuple[asyncio.AbstractEventLoop, Store]
) -> None:
    """One busy flush window on SQLite: 8 tasks created (whole rows), 8 stored tasks finishing (partial
    UPDATEs), one timeline row per task, the output of 4 of them. Compare the two ``[raw]`` and
    ``[sqlalchemy]`` rows of one run (same group)."""
    benchmark.group = "flush window of 16 tasks, SQLite"
    loop, store = sqlite_write_path
    running = [_task(k) for k in range(8)]
    loop.run_until_complete(store.write(WriteBatch(tasks={t.id: t for t in running})))

    async def window(i: int) -> None:
        batch = WriteBatch()
        for k in range(8):
            task = _task(1000 + i * 8 + k)
            task.state = TaskState.PENDING
            batch.tasks[task.id] = task
        for task in running:
            task.state = TaskState.COMPLETED if i % 2 else TaskState.RUNNING
            task.attempt, task.updated_at, task.results = i + 1, 1.0e9 + i, str(i)
            batch.tasks[task.id] = dataclasses.replace(task)
        batch.events = [
            {
                "subject": "task",
                "subject_id": t,
                "at": 1.0e9 + i,
                "kind": "k",
                "cause": "",
                "fields": {"i": i},
            }
            for t in batch.tasks
        ]
        batch.task_logs = [
            TaskLogBatch(t.id, i + 1, "p1", [("stdout", f"line {i}\n")], final=True, timestamp=1.0e9 + i)
            for t in running[:4]
        ]
        assert not await store.write(batch)

    _run(benchmark, loop, window)
    assert len(loop.run_until_complete(store.load_tasks())) > 8
