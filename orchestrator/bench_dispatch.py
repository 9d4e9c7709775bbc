"""``propeller bench dispatch``: the engine's cost per dispatch against the size of its history.

Each size runs in a fresh process: the engine is restored (as after a restart) with N terminal tasks,
then two proplets announce themselves and ``--ops`` tasks are created, dispatched and completed one
after another, each step timed. RSS is the process's resident memory after the restore. The drain
part queues ``--drain`` tasks while no proplet is alive, then measures how fast they leave the queue:
all at once (a proplet without an instance limit appears), through 16 slots (each result frees one),
and through 16 slots behind 1,000 higher-priority tasks that can never be placed.

Only the sans-I/O engine is measured (no broker, no store): the cost that grows — or not — with
history lives there.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import psutil

from orchestrator import wire
from orchestrator.core.commands import MessageReceived
from orchestrator.core.engine import Engine, EngineConfig
from orchestrator.core.model import Task, TaskState

WASM = b"\x00asm\x01\x00\x00\x00"
T = wire.Topics("bench", "c")
WALL0 = 1_700_000_000.0


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def _history(n: int) -> Iterator[Task]:
    """N finished tasks as the store returns them after a restart (small inline module, a result)."""
    for i in range(n):
        yield Task(
            id=f"hist-{i:09d}",
            name="add",
            state=TaskState.COMPLETED,
            file=WASM,
            inputs=["1", "2"],
            results="3",
            attempt=1,
            proplet_id=f"old-{i % 50}",
            created_at=WALL0 + i,
            updated_at=WALL0 + i,
            finish_time=WALL0 + i,
        )


def _send(engine: Engine, topic: str, message: wire.Message, now: float) -> None:
    engine.handle(MessageReceived(topic, wire.encode(message)), now, WALL0 + now)


def _announce(engine: Engine, proplet_id: str, now: float, **metadata: Any) -> None:
    _send(engine, T.create, wire.Discovery(proplet_id, "default", metadata), now)


def _started(engine: Engine) -> list[str]:
    out = []
    for c in engine.take_commands():
        if getattr(c, "topic", None) == T.start:
            out.append(json.loads(c.payload)["id"])  # type: ignore[union-attr]
    return out


def _result(engine: Engine, task_id: str, now: float) -> None:
    task = engine.tasks[task_id]
    _send(engine, T.results, wire.TaskResult(task_id, "3", None, task.proplet_id, task.attempt), now)


def one_size(stored: int, ops: int) -> dict[str, Any]:
    gc.collect()
    base = _rss_mb()
    engine = Engine(EngineConfig(domain="bench", channel="c"))
    t0 = time.perf_counter()
    engine.restore(_history(stored), [], now=0.0, wall=WALL0)
    engine.link_restored(0.0, WALL0)  # on the broker, as a manager is after its restore
    engine.take_commands()
    restore_s = time.perf_counter() - t0
    gc.collect()
    rss = _rss_mb()
    return {
        "stored": stored,
        "restore_s": round(restore_s, 2),
        "rss_mb": round(rss, 1),
        "engine_rss_mb": round(rss - base, 1),
        "resident_tasks": len(engine.tasks.live),
        "cached_tasks": len(engine.tasks.recent),
        **cycles(engine, ops),
    }


def cycles(engine: Engine, ops: int) -> dict[str, float]:
    """Two proplets announce themselves, then ``ops`` tasks are created, dispatched and completed."""
    for pid in ("p1", "p2"):
        _announce(engine, pid, 0.0)
    engine.take_commands()
    dispatch, cycle = [], []
    spec = {"name": "add", "file": "AGFzbQEAAAA=", "inputs": [1, 2]}
    for i in range(ops):
        now = 1.0 + i * 1e-3
        c0 = time.perf_counter()
        task = engine.create_task(spec, WALL0 + now)
        d0 = time.perf_counter()
        engine.start_task(task.id, now, WALL0 + now)
        dispatch.append(time.perf_counter() - d0)
        engine.take_commands()
        _result(engine, task.id, now)
        engine.take_commands()
        cycle.append(time.perf_counter() - c0)
    return {
        "dispatch_us_p50": round(statistics.median(dispatch) * 1e6, 1),
        "dispatch_us_mean": round(statistics.fmean(dispatch) * 1e6, 1),
        "cycle_us_p50": round(statistics.median(cycle) * 1e6, 1),
    }


def drain(queued: int) -> dict[str, Any]:
    out: dict[str, Any] = {"queued": queued}
    spec = {"name": "add", "file": "AGFzbQEAAAA=", "inputs": [1, 2]}

    def fill(engine: Engine, n: int, **extra: Any) -> None:
        for _ in range(n):
            task = engine.create_task({**spec, **extra}, WALL0)
            engine.start_task(task.id, 0.0, WALL0)
        engine.take_commands()

    # Burst: 10k waiting, then one proplet without an instance limit appears.
    engine = Engine(EngineConfig(domain="bench", channel="c"))
    fill(engine, queued)
    t0 = time.perf_counter()
    _announce(engine, "p1", 1.0)
    sent = len(_started(engine))
    out["burst_tasks_per_s"] = round(sent / (time.perf_counter() - t0))

    # Steady: 16 slots; every result frees one and the drain dispatches the next.
    def steady(engine: Engine, **metadata: Any) -> float:
        _announce(engine, "p1", 1.0, max_instances=16, **metadata)
        running = _started(engine)
        done = 0
        t0 = time.perf_counter()
        while running:
            task_id = running.pop(0)
            _result(engine, task_id, 2.0)
            done += 1
            running.extend(i for i in _started(engine) if engine.tasks[i].memory_bytes == 0)
        return done / (time.perf_counter() - t0)

    engine = Engine(EngineConfig(domain="bench", channel="c"))
    fill(engine, queued)
    out["steady_16_slots_tasks_per_s"] = round(steady(engine))

    # Steady behind 1,000 higher-priority tasks that never fit (the proplet announces 64 MiB).
    engine = Engine(EngineConfig(domain="bench", channel="c"))
    fill(engine, 1000, priority=90)
    for task in engine.tasks.live.values():
        task.memory_bytes = 2**30  # as a module declaring 1 GiB of linear memory would
    fill(engine, queued)
    out["steady_behind_1000_unplaceable_tasks_per_s"] = round(steady(engine, free_memory_bytes=64 * 2**20))
    return out


def run(sizes: list[int], ops: int, queued: int) -> dict[str, Any]:
    """Each measurement in a fresh interpreter, so one size's garbage does not weigh on the next."""
    results: dict[str, Any] = {"sizes": [], "drain": None}
    for n in sizes:
        results["sizes"].append(_child(["--one", str(n), "--ops", str(ops)]))
    if queued:
        results["drain"] = _child(["--drain", str(queued)])
    return results


def _child(args: list[str], module: str = "orchestrator.bench_dispatch") -> dict[str, Any]:
    """Run ``python -m module args`` and return the JSON object of its last output line."""
    done = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"bench child {module} {args} failed:\n{done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def format_table(results: dict[str, Any]) -> str:
    lines = [
        f"{'stored':>9} {'restore s':>9} {'rss MB':>7} {'engine MB':>9} {'resident':>8} "
        f"{'dispatch p50 µs':>15} {'mean µs':>8} {'cycle p50 µs':>12}"
    ]
    for r in results["sizes"]:
        lines.append(
            f"{r['stored']:>9} {r['restore_s']:>9} {r['rss_mb']:>7} {r['engine_rss_mb']:>9} "
            f"{r['resident_tasks'] + r['cached_tasks']:>8} {r['dispatch_us_p50']:>15} "
            f"{r['dispatch_us_mean']:>8} {r['cycle_us_p50']:>12}"
        )
    d = results.get("drain")
    if d:
        lines.append(
            f"drain of {d['queued']} queued: burst {d['burst_tasks_per_s']}/s, 16 slots "
            f"{d['steady_16_slots_tasks_per_s']}/s, 16 slots behind 1000 unplaceable "
            f"{d['steady_behind_1000_unplaceable_tasks_per_s']}/s"
        )
    return "\n".join(lines)


def _sizes(text: str) -> list[int]:
    return [int(x.replace("_", "").replace("k", "000").replace("M", "000000")) for x in text.split(",") if x]


def cmd_dispatch(args: argparse.Namespace) -> int:
    results = run(args.stored, args.ops, args.drain)
    print(format_table(results))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=2)
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stored", type=_sizes, default=[1000, 100_000, 1_000_000], help="e.g. 1k,100k,1M")
    p.add_argument("--ops", type=int, default=2000, help="tasks created, dispatched and completed per size")
    p.add_argument("--drain", type=int, default=10_000, help="queued tasks for the drain rate (0: skip)")
    from orchestrator.cli_api import output_arg

    output_arg(p)
    p.set_defaults(func=cmd_dispatch)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--one", type=int, default=None)
    parser.add_argument("--ops", type=int, default=2000)
    parser.add_argument("--drain", type=int, default=None)
    a = parser.parse_args()
    print(json.dumps(one_size(a.one, a.ops) if a.one is not None else drain(a.drain)))
