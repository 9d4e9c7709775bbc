"""SQLite group-commit windows on the event loop's thread (``Store._run_sqlite``): a window never holds
the loop while another process holds the write lock, large windows go to the writer thread, and the
WAL is checkpointed there (the window's own connection never does it)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from orchestrator.adapters import store as store_module
from orchestrator.adapters.store import INLINE_ROWS, Store, WriteBatch
from orchestrator.core.model import Task, TaskState


def window(*ids: str) -> WriteBatch:
    return WriteBatch(tasks={i: Task(id=i, name="add", state=TaskState.RUNNING) for i in ids})


async def test_a_window_waits_for_another_process_write_lock_then_is_written(tmp_path: Path) -> None:
    store = await Store.open(str(tmp_path / "m.db"))
    other = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process's write transaction holds the lock
        other.execute("UPDATE tasks SET name = name")
        on_writer = threading.Event()
        waiting = store._apply_waiting

        def apply_waiting(*args: Any) -> None:
            on_writer.set()  # the inline try met the lock: the window now waits on the writer thread
            waiting(*args)

        store._apply_waiting = apply_waiting  # type: ignore[method-assign]
        write = asyncio.ensure_future(store.write(window("t1")))
        # The window cannot be written while the lock is held: it must wait, not fail with "database
        # is locked". Positive signals, not a sleep: it reaches the writer thread, and this coroutine
        # keeps running on the loop meanwhile (the loop is not held by the wait).
        for _ in range(1000):
            if on_writer.is_set():
                break
            await asyncio.sleep(0.01)
        assert on_writer.is_set(), "the window never went to the writer thread"
        for _ in range(5):
            await asyncio.sleep(0)  # the loop turns while the writer thread waits for the lock
        assert not write.done()
        other.execute("COMMIT")
        refused = await asyncio.wait_for(write, 30)
        assert not refused
        stored = await store.get_task("t1")
        assert stored is not None and stored.state is TaskState.RUNNING
        assert not await store.write(window("t2"))  # and the next window goes as usual
    finally:
        other.close()
        await store.close()


async def test_small_windows_run_on_the_loop_and_large_ones_on_the_writer_thread(tmp_path: Path) -> None:
    store = await Store.open(str(tmp_path / "m.db"))
    threads: list[str] = []

    def seen(*_args: Any) -> None:
        threads.append(threading.current_thread().name)

    assert store._writer is not None
    event.listen(store._writer, "before_cursor_execute", seen)
    try:
        await store.write(window("small"))
        assert set(threads) == {threading.current_thread().name}
        threads.clear()
        await store.write(window(*(f"big-{i}" for i in range(INLINE_ROWS + 1))))
        assert set(threads) == {"store-writer_0"}
        assert len(await store.load_tasks()) == INLINE_ROWS + 2
    finally:
        await store.close()


async def wal_bytes_after(tmp_path: Path, name: str, windows: int) -> int:
    store = await Store.open(str(tmp_path / name))
    assert (store._raw is not None) == store_module._RawSqlite.supported()
    try:
        for i in range(windows):
            await store.write(window(f"t{i}"))
            await asyncio.sleep(0)  # as the manager's flush loop does between windows
        if store._checkpointing is not None:
            await store._checkpointing
        return (tmp_path / f"{name}-wal").stat().st_size
    finally:
        await store.close()


@pytest.mark.parametrize("raw", [True, False], ids=["raw-sqlite3", "sqlalchemy"])
async def test_the_writer_thread_checkpoints_the_wal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, raw: bool
) -> None:
    if not raw:  # the path windows take when this SQLAlchemy lacks what _RawSqlite reads
        monkeypatch.setattr(store_module._RawSqlite, "supported", staticmethod(lambda: False))
    monkeypatch.setattr(store_module, "CHECKPOINT_EVERY", 10**9)
    unchecked = await wal_bytes_after(tmp_path, "never.db", 300)
    monkeypatch.setattr(store_module, "CHECKPOINT_EVERY", 20)
    checked = await wal_bytes_after(tmp_path, "every20.db", 300)
    # Checkpointed WAL is reused from its start, so it stays near 20 windows' worth of pages.
    assert checked * 4 < unchecked
