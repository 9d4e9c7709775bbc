"""Proplet metrics I/O: sampling the process, and a Prometheus endpoint (upstream serves it on :9092).

`ProcessSampler` reads the proplet's own process (psutil: cpu times from /proc/self/stat, rss, threads,
fds, io counters; cgroup v2/v1 memory files) into a `proplets.core.ProcessSample`. It computes the CPU
percentage itself from the change in cpu time since its previous call, so independent samplers (the
periodic MQTT metrics and the Prometheus scrape) do not disturb each other's readings.

`MetricsServer` is a tiny asyncio HTTP server (no thread per request, nothing left behind by `stop()`)
that answers ``GET /metrics`` with the text exposition of a private `CollectorRegistry`, so several
proplets in one process (tests, the twin) never clash on the global registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import psutil
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from orchestrator.adapters.aio import cancel_and_wait
from proplets.core import ProcessSample

_CGROUP_FILES = (
    ("/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory.max"),  # v2
    ("/sys/fs/cgroup/memory/memory.usage_in_bytes", "/sys/fs/cgroup/memory/memory.limit_in_bytes"),  # v1
)
_T = TypeVar("_T")
_UNLIMITED = 1 << 62  # cgroup v1 writes a huge number for "no limit"


class ProcessSampler:
    def __init__(self, pid: int | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._proc = psutil.Process(pid or os.getpid())
        self._clock = clock
        self._cpus = psutil.cpu_count() or 1
        times = self._proc.cpu_times()
        self._last = (clock(), times.user + times.system)

    def sample(self) -> ProcessSample:
        proc = self._proc
        with proc.oneshot():
            times = proc.cpu_times()
            rss = int(proc.memory_info().rss)
            threads = proc.num_threads()
            fds = _safe(proc.num_fds)
            io = _safe(proc.io_counters)
            mem_percent = float(proc.memory_percent())
        now, busy = self._clock(), times.user + times.system
        elapsed = now - self._last[0]
        # Average over all CPUs, as upstream's `percent` (sysinfo) and bounded to 0..100.
        percent = (
            0.0 if elapsed <= 0 else max(0.0, min(100.0, (busy - self._last[1]) / elapsed / self._cpus * 100))
        )
        self._last = (now, busy)
        usage, limit = container_memory()
        return ProcessSample(
            cpu_user_seconds=float(times.user),
            cpu_system_seconds=float(times.system),
            cpu_percent=round(percent, 3),
            rss_bytes=rss,
            memory_percent=round(mem_percent, 3),
            thread_count=int(threads),
            fd_count=int(fds or 0),
            disk_read_bytes=int(getattr(io, "read_bytes", 0)),
            disk_write_bytes=int(getattr(io, "write_bytes", 0)),
            container_usage_bytes=usage,
            container_limit_bytes=limit,
        )


def _safe(read: Callable[[], _T]) -> _T | None:
    try:
        return read()
    except (psutil.Error, OSError, NotImplementedError):  # not permitted or not on this platform
        return None


def container_memory() -> tuple[int | None, int | None]:
    """(usage, limit) bytes of the cgroup we run in; None where unknown or unlimited."""
    for current, maximum in _CGROUP_FILES:
        usage = _read_int(current)
        if usage is None:
            continue
        limit = _read_int(maximum)
        return usage, limit if limit is not None and limit < _UNLIMITED else None
    return None, None


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # cgroup v2 writes "max" for no limit


# ---------------------------------------------------------------------- Prometheus


@dataclass
class PropletStats:
    """What the collector reads at scrape time; the agent keeps it current."""

    counters: Callable[[], dict[str, int]]
    running: Callable[[], int]
    reconnects: int = 0
    fetch_bytes: int = 0
    fetch_refused: int = 0  # module fetches the fetch allow-list refused


class PropletCollector(Collector):
    def __init__(self, stats: PropletStats, sampler: ProcessSampler | None = None) -> None:
        self.stats = stats
        self.sampler = sampler or ProcessSampler()

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        counters = self.stats.counters()
        for name, key, doc in (
            ("proplet_tasks_started", "tasks_started", "Tasks accepted and started"),
            ("proplet_tasks_completed", "tasks_completed", "Tasks that finished without error"),
            ("proplet_tasks_failed", "tasks_failed", "Tasks that finished with an error"),
        ):
            yield CounterMetricFamily(name, doc, value=counters.get(key, 0))
        yield GaugeMetricFamily("proplet_tasks_running", "Tasks running now", value=self.stats.running())
        yield CounterMetricFamily(
            "proplet_mqtt_reconnects", "MQTT reconnections after a lost link", value=self.stats.reconnects
        )
        yield CounterMetricFamily(
            "proplet_wasm_fetch_bytes", "Wasm binary bytes fetched", value=self.stats.fetch_bytes
        )
        yield CounterMetricFamily(
            "proplet_wasm_fetch_refused",
            "Module fetches refused by the fetch allow-list (--fetch-allow)",
            value=self.stats.fetch_refused,
        )
        s = self.sampler.sample()
        yield GaugeMetricFamily(
            "proplet_cpu_usage_ratio", "Process CPU use, 0..1 of all CPUs", value=s.cpu_percent / 100
        )
        yield GaugeMetricFamily(
            "proplet_cpu_user_seconds", "Process user CPU seconds", value=s.cpu_user_seconds
        )
        yield GaugeMetricFamily(
            "proplet_cpu_system_seconds", "Process system CPU seconds", value=s.cpu_system_seconds
        )
        yield GaugeMetricFamily("proplet_memory_rss_bytes", "Process resident set size", value=s.rss_bytes)
        yield GaugeMetricFamily(
            "proplet_memory_percent", "Process RSS as percent of RAM", value=s.memory_percent
        )
        yield GaugeMetricFamily("proplet_threads", "Process threads", value=s.thread_count)


class MetricsServer:
    """``GET /metrics`` over a minimal asyncio HTTP/1.1 server, one response per connection."""

    def __init__(self, registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 9092) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"metrics port {port} is out of range 0..65535")
        self.registry, self.host, self._requested = registry, host, port
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("metrics server is not running")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self._requested)
        except OSError as err:
            raise OSError(
                f"cannot serve proplet metrics on {self.host}:{self._requested}: {err.strerror or err}"
            ) from err

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        await cancel_and_wait(list(self._clients), "proplet metrics server stop")
        with contextlib.suppress(Exception):
            await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        try:
            async with asyncio.timeout(5):
                head = await reader.readuntil(b"\r\n\r\n")
            method, _, rest = head.decode("latin-1").partition(" ")
            path = rest.partition(" ")[0].partition("?")[0]
            if method != "GET":
                status, body, ctype = "405 Method Not Allowed", b"only GET\n", "text/plain"
            elif path not in ("/metrics", "/"):
                status, body, ctype = "404 Not Found", b"try /metrics\n", "text/plain"
            else:
                status, body, ctype = "200 OK", generate_latest(self.registry), CONTENT_TYPE_LATEST
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode("latin-1")
                + body
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass  # a client that sends no request, or goes away, gets nothing
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            if task is not None:
                self._clients.discard(task)
