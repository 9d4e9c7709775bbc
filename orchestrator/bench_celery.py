"""Celery + Redis doing the same trivial work as ``propeller bench e2e`` (add two integers), to compare
against in the same run. Needs the optional extra: ``pip install 'propeller-continuum[celery]'``.

The worker is a real ``celery worker`` subprocess (prefork pool, one process per "proplet"); this
process submits with ``apply_async`` and waits for each result through the Redis result backend, with
``concurrency`` tasks in flight, like the e2e load. Each run uses its own queue name, so a shared Redis
is fine; results expire after five minutes.
"""

from __future__ import annotations

import collections
import functools
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REDIS_URL = os.environ.get("PROPELLER_BENCH_REDIS", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("PROPELLER_BENCH_CELERY_QUEUE", "propeller-bench")


def make_app(url: str = REDIS_URL, queue: str = QUEUE) -> Any:
    from celery import Celery

    app = Celery("propeller_bench", broker=url, backend=url)
    app.conf.update(
        task_default_queue=queue,
        result_expires=300,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
    )

    @app.task(name="propeller_bench.add")
    def add(a: int, b: int) -> int:
        return a + b

    return app


def __getattr__(name: str) -> Any:
    """``app``, built on first use: what ``celery -A orchestrator.bench_celery worker`` loads (the
    bench process builds its own client app per run and must not register the task twice)."""
    if name == "app":
        return make_app()
    raise AttributeError(name)


def available() -> str | None:
    """None when Celery can be compared against; otherwise why not."""
    try:
        import celery  # noqa: F401
        import redis
    except ImportError:
        return "the 'celery' extra is not installed (pip install 'propeller-continuum[celery]')"
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except Exception as err:
        return f"Redis at {REDIS_URL} is not reachable: {err}"
    return None


@dataclass
class CeleryResult:
    workers: int
    tasks: int
    concurrency: int
    completed: int = 0
    errors: int = 0
    seconds: float = 0.0
    worker_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    redis_cpu_s: float | None = None
    latencies_s: list[float] = field(default_factory=list, repr=False)

    @property
    def tasks_per_s(self) -> float:
        return self.completed / self.seconds if self.seconds > 0 else 0.0


@functools.cache
def _client() -> Any:
    """One client app per process (a task name may be registered once); the queue is per call."""
    return make_app(REDIS_URL)


def _tree_cpu(pid: int) -> float:
    import psutil

    total = 0.0
    proc = psutil.Process(pid)
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _redis_pid() -> int | None:
    """The local redis-server, if we can see it (its CPU is part of Celery's cost)."""
    import psutil

    for p in psutil.process_iter(["name"]):
        if p.info["name"] == "redis-server":
            return int(p.pid)
    return None


def run_celery(workers: int, tasks: int, concurrency: int, tmp: Path) -> CeleryResult:
    import subprocess

    from orchestrator.bench import cpu_seconds

    queue = f"propeller-bench-{uuid.uuid4().hex[:10]}"
    env = {**os.environ, "PROPELLER_BENCH_CELERY_QUEUE": queue, "PROPELLER_BENCH_REDIS": REDIS_URL}
    log = tmp / "celery.log"
    with log.open("ab") as out:
        worker = subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "orchestrator.bench_celery", "worker",
                "--pool", "prefork", "--concurrency", str(workers), "-Q", queue, "--loglevel", "warning",
                "--without-gossip", "--without-mingle", "--without-heartbeat", "--prefetch-multiplier", "4",
            ],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    result = CeleryResult(workers, tasks, concurrency)
    add = _client().tasks["propeller_bench.add"]
    try:
        # Warm-up: the worker is up and every pool process has run once.
        deadline = time.monotonic() + 60
        while True:
            if worker.poll() is not None:
                raise RuntimeError(f"celery worker exited: {log.read_text(errors='replace')[-1500:]}")
            try:
                [add.apply_async((1, 1), queue=queue) for _ in range(workers * 2)][-1].get(timeout=5)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
        redis_pid = _redis_pid()
        cpu0 = (_tree_cpu(worker.pid), cpu_seconds(os.getpid()), _tree_cpu(redis_pid) if redis_pid else 0.0)
        inflight: collections.deque[tuple[Any, float, int]] = collections.deque()
        submitted = 0
        t0 = time.perf_counter()
        while submitted < tasks or inflight:
            while submitted < tasks and len(inflight) < concurrency:
                sent = add.apply_async((submitted, 1), queue=queue)
                inflight.append((sent, time.perf_counter(), submitted))
                submitted += 1
            pending, started, i = inflight.popleft()
            try:
                value = pending.get(timeout=60)
            except Exception:
                result.errors += 1
                continue
            if value == i + 1:
                result.completed += 1
                result.latencies_s.append(time.perf_counter() - started)
            else:
                result.errors += 1
        result.seconds = time.perf_counter() - t0
        cpu1 = (_tree_cpu(worker.pid), cpu_seconds(os.getpid()), _tree_cpu(redis_pid) if redis_pid else 0.0)
        result.worker_cpu_s = cpu1[0] - cpu0[0]
        result.client_cpu_s = cpu1[1] - cpu0[1]
        result.redis_cpu_s = cpu1[2] - cpu0[2] if redis_pid else None
    finally:
        worker.terminate()
        try:
            worker.wait(15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(5)
    return result
