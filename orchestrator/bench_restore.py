"""``propeller bench restore``: what a manager's (re)start — or a standby's takeover — costs against the
size of the stored history, on SQLite and PostgreSQL.

For each backend and size a fresh store (a SQLite file, or a PostgreSQL schema of its own, dropped
after) is filled with N finished tasks plus ``--queued`` waiting ones by bulk SQL (``INSERT ..
SELECT`` over a generated series, copying one template row the store itself wrote: not through the
API). Then, in a fresh interpreter each:

- *restore*: open the store, then the manager's restore path (``ManagerService._restore``: the live
  tasks, proplets and jobs into the engine). *RSS* is that process's resident memory afterwards.
- *drain*: a proplet without an instance limit announces itself and the restored queue leaves it.
- *dispatch*: ``--ops`` tasks created, dispatched and completed through the restored engine, each
  dispatch timed; *save* is one task written to the (large) store, as a dispatch's flush does.
- *full load* (sizes up to ``--full-max``): what the restore did before issue 10, every stored task
  through ``Store.load_tasks`` into a fresh engine, in its own process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from orchestrator.adapters.store import TASKS, Store
from orchestrator.bench_dispatch import WALL0, _announce, _child, _rss_mb, _sizes, _started, cycles
from orchestrator.core.engine import Engine, EngineConfig
from orchestrator.core.model import Task, TaskState
from orchestrator.settings import ManagerSettings

POSTGRES_URL = os.environ.get("PROPELLER_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
WASM = b"\x00asm\x01\x00\x00\x00"


# ---------------------------------------------------------------------------------------- filling


async def fill(url: str, schema: str | None, stored: int, queued: int) -> float:
    """``stored`` finished and ``queued`` waiting tasks by bulk SQL; returns the seconds it took."""
    store = await Store.open(url, schema=schema)
    try:
        template = Task(
            id="template",
            name="add",
            state=TaskState.COMPLETED,
            file=WASM,
            inputs=["1", "2"],
            results="3",
            attempt=1,
            proplet_id="old",
            created_at=WALL0,
            updated_at=WALL0,
            finish_time=WALL0,
        )
        await store.save_task(template)
        t0 = time.perf_counter()
        async with store.sa_engine.begin() as conn:
            for prefix, n, state, first_seq in (
                ("hist-", stored, TaskState.COMPLETED, 0),
                ("queued-", queued, TaskState.SCHEDULED, stored),
            ):
                if n:
                    await conn.execute(_bulk_insert(conn.dialect.name, prefix, n, state, first_seq))
            await conn.execute(sa.delete(TASKS).where(TASKS.c.id == "template"))
            if conn.dialect.name != "sqlite":
                await conn.execute(sa.text("ANALYZE tasks"))
        return time.perf_counter() - t0
    finally:
        await store.close()


def _bulk_insert(dialect: str, prefix: str, n: int, state: TaskState, first_seq: int) -> Any:
    """``INSERT INTO tasks SELECT`` n copies of the template row, each with its own id, seq and times."""
    varying = {
        "id": f"'{prefix}' || CAST(s.i AS TEXT)",
        "seq": f"s.i + {first_seq}",
        "state": str(int(state)),
        "proplet_id": "''" if state is TaskState.SCHEDULED else "'old-' || CAST(s.i % 50 AS TEXT)",
        "created_at": f"{WALL0} + s.i",
        "updated_at": f"{WALL0} + s.i",
    }
    if state is TaskState.SCHEDULED:
        varying.update(results="NULL", attempt="0", finish_time="NULL")
    columns = [c.name for c in TASKS.c]
    values = ", ".join(varying.get(c, f't."{c}"') for c in columns)
    names = ", ".join(f'"{c}"' for c in columns)
    if dialect == "sqlite":
        series = f"WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {n}) "
        source = "tasks t, s"
    else:
        series = ""
        source = f"tasks t CROSS JOIN generate_series(1, {n}) AS s(i)"
    select = f"SELECT {values} FROM {source} WHERE t.id = 'template'"
    return sa.text(f"INSERT INTO tasks ({names}) {series}{select}")


# -------------------------------------------------------------------------------------- measuring


async def measure(url: str, schema: str | None, ops: int) -> dict[str, Any]:
    """The manager's restore path on a filled store, then drain and dispatch through its engine."""
    from orchestrator.service import ManagerService

    gc.collect()
    base = _rss_mb()
    t0 = time.perf_counter()
    store = await Store.open(url, schema=schema)
    opened = time.perf_counter() - t0
    manager = ManagerService(ManagerSettings(db=url, domain="bench", channel="c"))
    manager.store = store
    try:
        t1 = time.perf_counter()
        await manager._restore()
        manager.engine.take_commands()
        restore_s = time.perf_counter() - t1
        gc.collect()
        rss = _rss_mb()
        engine = manager.engine
        out: dict[str, Any] = {
            "open_s": round(opened, 3),
            "restore_s": round(restore_s, 3),
            "rss_mb": round(rss, 1),
            "restore_rss_mb": round(rss - base, 1),
            "resident_tasks": len(engine.tasks.live),
        }
        queued = len(engine.queued())
        engine.link_restored(0.0, time.time())  # on the broker, as the manager is after its restore
        engine.take_commands()
        d0 = time.perf_counter()
        _announce(engine, "drain", 0.0)
        sent = len(_started(engine))
        out["drain_tasks_per_s"] = round(sent / (time.perf_counter() - d0)) if queued else None
        out["drained"] = sent
        out.update(cycles(engine, ops))
        saves = []
        for i in range(min(ops, 500)):
            task = Task(id=f"new-{i}", name="add", file=WASM, state=TaskState.RUNNING, proplet_id="p1")
            s0 = time.perf_counter()
            await store.save_task(task)
            saves.append(time.perf_counter() - s0)
        out["save_ms_p50"] = round(statistics.median(saves) * 1e3, 2)
        return out
    finally:
        await store.close()


async def measure_full(url: str, schema: str | None) -> dict[str, Any]:
    """Before issue 10: every stored task loaded and handed to the engine."""
    gc.collect()
    base = _rss_mb()
    store = await Store.open(url, schema=schema)
    try:
        t0 = time.perf_counter()
        tasks = await store.load_tasks()
        engine = Engine(EngineConfig(domain="bench", channel="c"))
        engine.restore(tasks, await store.load_proplets(), 0.0, time.time(), [])
        del tasks
        took = time.perf_counter() - t0
        gc.collect()
        return {"full_restore_s": round(took, 3), "full_rss_mb": round(_rss_mb() - base, 1)}
    finally:
        await store.close()


# ------------------------------------------------------------------------------------------ driver


@contextlib.contextmanager
def _backend(name: str, tmp: Path) -> Any:
    """(url, schema) of a fresh, empty store; removed afterwards."""
    if name == "sqlite":
        path = tmp / f"restore-{secrets.token_hex(4)}.db"
        try:
            yield str(path), None
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        return
    schema = f"bench_restore_{secrets.token_hex(4)}"
    try:
        yield POSTGRES_URL, schema
    finally:
        engine = sa.create_engine(sa.make_url(POSTGRES_URL).set(drivername="postgresql+psycopg"))
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


def run(backends: list[str], sizes: list[int], queued: int, ops: int, full_max: int) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="propeller-bench-restore-") as tmp:
        for backend in backends:
            for n in sizes:
                with _backend(backend, Path(tmp)) as (url, schema):
                    fill_s = asyncio.run(fill(url, schema, n, queued))
                    row: dict[str, Any] = {"backend": backend, "stored": n, "queued": queued}
                    row["fill_s"] = round(fill_s, 1)
                    where = ["--url", url] + (["--schema", schema] if schema else [])
                    row.update(_child([*where, "--ops", str(ops)], "orchestrator.bench_restore"))
                    if n <= full_max:
                        row.update(_child([*where, "--full"], "orchestrator.bench_restore"))
                    rows.append(row)
                    print(format_row(row), file=sys.stderr, flush=True)
    return rows


HEADER = (
    f"{'backend':>7} {'stored':>9} {'queued':>6} {'restore s':>9} {'rss MB':>7} {'resident':>8} "
    f"{'drain/s':>7} {'dispatch p50 µs':>15} {'save p50 ms':>11} {'full load s':>11} {'full MB':>7}"
)


def format_row(r: dict[str, Any]) -> str:
    return (
        f"{r['backend']:>7} {r['stored']:>9} {r['queued']:>6} {r['restore_s']:>9} {r['rss_mb']:>7} "
        f"{r['resident_tasks']:>8} {r['drain_tasks_per_s'] or '-':>7} {r['dispatch_us_p50']:>15} "
        f"{r['save_ms_p50']:>11} {r.get('full_restore_s', '-'):>11} {r.get('full_rss_mb', '-'):>7}"
    )


def cmd_restore(args: argparse.Namespace) -> int:
    print(HEADER, file=sys.stderr)
    rows = run(args.backend, args.stored, args.queued, args.ops, args.full_max)
    print(HEADER)
    for r in rows:
        print(format_row(r))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stored", type=_sizes, default=[1000, 100_000, 1_000_000], help="e.g. 1k,100k,1M")
    p.add_argument(
        "--backend",
        type=_backends,
        default="sqlite,pg",
        help="sqlite, pg or both (PostgreSQL from "
        "PROPELLER_BENCH_POSTGRES, default postgresql://postgres@127.0.0.1:5432/test)",
    )
    p.add_argument("--queued", type=int, default=100, help="waiting tasks stored beside the history")
    p.add_argument("--ops", type=int, default=2000, help="tasks dispatched through the restored engine")
    p.add_argument(
        "--full-max",
        type=_sizes_one,
        default=100_000,
        help="also time the pre-issue-10 full load up to this many stored tasks (0: never)",
    )
    from orchestrator.cli_api import output_arg

    output_arg(p)
    p.set_defaults(func=cmd_restore)


def _backends(text: str) -> list[str]:
    backends = [b for b in text.split(",") if b]
    unknown = sorted(set(backends) - {"sqlite", "pg"})
    if unknown or not backends:
        named = ", ".join(unknown) or "empty"
        raise argparse.ArgumentTypeError(f"unknown {named}: use sqlite, pg or sqlite,pg")
    return backends


def _sizes_one(text: str) -> int:
    return _sizes(text)[0]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--schema", default=None)
    parser.add_argument("--ops", type=int, default=2000)
    parser.add_argument("--full", action="store_true")
    a = parser.parse_args()
    coro = measure_full(a.url, a.schema) if a.full else measure(a.url, a.schema, a.ops)
    print(json.dumps(asyncio.run(coro)))
