"""Crash safety: a writer process is SIGKILLed mid-stream; every save that returned is back, intact, and
the SQLite file passes integrity_check. Two kills in a row, so recovery from a killed WAL is covered too."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

from orchestrator.adapters.store import Store
from orchestrator.core.model import Task, TaskState

ROOT = Path(__file__).resolve().parents[2]

# The child prints a line only after the awaited save returned: each line is a promise the store made.
CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from orchestrator.adapters.store import Store
    from tests.integration.test_store_durability import make_task

    async def main(path: str, start: int) -> None:
        store = await Store.open(path)
        print("open", flush=True)
        i = start
        while True:
            await store.save_task(make_task(i, done=False))
            print("saved", i, flush=True)
            await store.save_task(make_task(i, done=True))
            print("done", i, flush=True)
            i += 1

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)


def make_task(i: int, *, done: bool) -> Task:
    return Task(
        id=f"t{i:06d}",
        name=f"task {i} ☃",
        state=TaskState.COMPLETED if done else TaskState.RUNNING,
        file=bytes([i % 256, 0]) * 2048,
        inputs=[str(i)],
        results={"sum": i * 2, "text": "x\u0000" * 10} if done else None,
        metadata={"i": i},
        start_time=float(i),
        finish_time=float(i) + 0.5 if done else None,
    )


def _run_and_kill(path: Path, start: int, after_lines: int) -> tuple[set[int], set[int]]:
    """Start a writer at task `start`, SIGKILL it after `after_lines` promises; returns (saved, done)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(start)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.split("\n")[0])
            if len(lines) > after_lines:
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        # Read the rest through the same file object: the loop above may have read ahead past the line
        # it stopped at, and communicate() reads the raw pipe, losing what sits in that buffer.
        assert proc.stderr is not None
        rest, err = proc.stdout.read(), proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines.extend(rest.splitlines())
    assert proc.returncode == -signal.SIGKILL, f"writer died by itself: {err[-2000:]}"
    assert lines and lines[0] == "open"
    saved = {int(x.split()[1]) for x in lines if x.startswith("saved ")}
    done = {int(x.split()[1]) for x in lines if x.startswith("done ")}
    return saved, done


async def _check(path: Path, saved: set[int], done: set[int]) -> None:
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    async with await Store.open(str(path)) as store:
        by_id = {t.id: t for t in await store.load_tasks()}
    for i in saved:
        got = by_id.get(f"t{i:06d}")
        assert got is not None, f"task {i} was acknowledged but is gone"
        if i in done:
            assert got == make_task(i, done=True)
        else:  # the completion may have committed without being acknowledged yet
            assert got in (make_task(i, done=False), make_task(i, done=True))
    # Nothing beyond what was in flight at the kill: at most one unacknowledged task.
    assert len(by_id) - len(saved) <= 1


async def test_sigkill_loses_no_acknowledged_task(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    saved, done = _run_and_kill(path, start=0, after_lines=400)
    assert len(done) >= 150
    await _check(path, saved, done)

    # Restart on the killed file (its WAL not checkpointed) and kill again.
    saved2, done2 = _run_and_kill(path, start=max(saved) + 1, after_lines=200)
    await _check(path, saved | saved2, done | done2)
