"""``propeller bench``: end-to-end task throughput/latency and manager memory at scale.

Layout (the ``split`` default, see docs/benchmarks.md for the measurements behind the choice): the
manager runs as a real ``propeller manager`` subprocess, with the embedded broker inside it as in
production; the proplets run in a second subprocess (``propeller bench proplets``); this process only
drives the REST API and observes MQTT. Each of the three keeps its own GIL, so on 2 cores the figures
show the manager's cost, not the load generator's. ``inprocess`` puts everything on one loop (used by
the quick pytest pass; slower, but starts in a fraction of the time).

Latency of one task = manager's ``finish_time`` (stamped when it accepts the result, in the same flush
that persists it) minus the client's wall clock just before ``POST /tasks``; all processes share the
host clock. Completion is noticed without polling: an observer subscribes to the results topic and
frees a concurrency slot when a task's result passes by. Figures are read back in pages afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from orchestrator import wire
from orchestrator.adapters.mqtt import MqttClient

MOSQUITTO_URL = os.environ.get("PROPELLER_BENCH_MOSQUITTO", "mqtt://127.0.0.1:1883")
ADD_WAT = '(module (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))'
TERMINAL = 3  # TaskState.COMPLETED and above
COMPLETED = 3


def add_module_b64() -> str:
    import wasmtime

    return base64.b64encode(wasmtime.wat2wasm(ADD_WAT)).decode()


# ---------------------------------------------------------------------- pure helpers


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def parse_histogram(metrics_text: str, name: str) -> list[tuple[float, float]]:
    """Cumulative ``(le, count)`` pairs of a Prometheus histogram in exposition text."""
    out: list[tuple[float, float]] = []
    prefix = f"{name}_bucket{{"
    for line in metrics_text.splitlines():
        if line.startswith(prefix):
            labels, _, value = line.partition("} ")
            le = labels.split('le="', 1)[1].split('"', 1)[0]
            out.append((float("inf") if le == "+Inf" else float(le), float(value)))
    return out


def parse_sample(metrics_text: str, name: str, labels: str = "") -> float:
    """Value of one sample (``name{labels} value``); 0 when absent."""
    key = f"{name}{{{labels}}}" if labels else name
    for line in metrics_text.splitlines():
        head, _, value = line.rpartition(" ")
        if head == key:
            return float(value)
    return 0.0


def histogram_quantile(
    before: list[tuple[float, float]], after: list[tuple[float, float]], q: float
) -> float:
    """Upper bucket bound holding quantile q (0..1) of the observations made between two scrapes."""
    prev = dict(before)
    deltas = [(le, count - prev.get(le, 0.0)) for le, count in after]
    total = deltas[-1][1] if deltas else 0.0
    if total <= 0:
        return float("nan")
    for le, count in deltas:
        if count >= q * total:
            return le
    return float("inf")


def parse_rfc3339(value: str) -> float:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _ms(seconds: float) -> str:
    return "-" if seconds != seconds else ("inf" if seconds == float("inf") else f"{seconds * 1000:.1f}")


# ---------------------------------------------------------------------- results


@dataclass
class RoundTrip:
    messages: int
    seconds: float
    p50_s: float
    p99_s: float

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0


@dataclass
class E2EResult:
    broker: str
    proplets: int
    layout: str
    tasks: int
    concurrency: int
    submit: str = "start"  # start: POST /tasks with start:true; two: + POST /start; batch: /tasks/batch
    broker_config: str = ""
    completed: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies_s: list[float] = field(default_factory=list, repr=False)
    manager_p50_le_s: float = float("nan")
    manager_p99_le_s: float = float("nan")
    manager_cpu_s: float = 0.0
    proplets_cpu_s: float = 0.0  # all proplet processes (split layout)
    client_cpu_s: float = 0.0
    # Mosquitto's process, when this machine shows it (the embedded broker is in the manager's CPU);
    # a shared Mosquitto's includes whatever else it carried meanwhile, as a shared Redis's does.
    broker_cpu_s: float | None = None
    # Every process of the run, each counted once: manager (with the embedded broker), proplets, the
    # load client, Mosquitto when seen; what Celery's all-cpu (worker pool, Redis, client) compares to.
    system_cpu_s: float = 0.0
    proplet_procs: int = 1
    broker_rtt: RoundTrip | None = None
    error_samples: list[str] = field(default_factory=list)
    round: int = 0  # with --rounds N: which of the N measurements of this row (Celery's of the same round)

    @property
    def tasks_per_s(self) -> float:
        return self.completed / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        lat = self.latencies_s
        out = {k: v for k, v in asdict(self).items() if k not in ("latencies_s", "broker_rtt")}
        out.update(
            tasks_per_s=round(self.tasks_per_s, 1),
            manager_cpu_per_task_ms=round(1000 * self.manager_cpu_s / self.completed, 3)
            if self.completed
            else None,
            system_cpu_per_task_ms=round(1000 * self.system_cpu_s / self.completed, 3)
            if self.completed
            else None,
            p50_s=percentile(lat, 50),
            p90_s=percentile(lat, 90),
            p99_s=percentile(lat, 99),
            max_s=max(lat) if lat else float("nan"),
        )
        if self.broker_rtt is not None:
            out["broker_rtt"] = {**asdict(self.broker_rtt), "msgs_per_s": round(self.broker_rtt.rate, 1)}
        return out


def e2e_table(results: Iterable[E2EResult]) -> str:
    head = (
        "broker     proplets  tasks  conc  tasks/s   p50ms   p90ms   p99ms   maxms  errors"
        "  mgr-p50<=  mgr-p99<=  mgr-cpu/task-ms  proplet-procs  proplets-cpu/task-ms  client-cpu/task-ms"
        "  broker-cpu/task-ms  all-cpu/task-ms  qos1-rtt msg/s  rtt-p50ms"
    )
    rows = [head, "-" * len(head)]
    for r in results:
        s = r.summary()
        rtt = r.broker_rtt
        per_task = r.manager_cpu_s / r.completed if r.completed else float("nan")
        proplets_cpu = r.proplets_cpu_s / r.completed if r.completed else float("nan")
        client_cpu = r.client_cpu_s / r.completed if r.completed else float("nan")
        broker_cpu = "-" if r.broker_cpu_s is None or not r.completed else _ms(r.broker_cpu_s / r.completed)
        all_cpu = r.system_cpu_s / r.completed if r.completed else float("nan")
        rows.append(
            f"{r.broker:<10} {r.proplets:>8} {r.tasks:>6} {r.concurrency:>5} {r.tasks_per_s:>8.1f}"
            f" {_ms(s['p50_s']):>7} {_ms(s['p90_s']):>7} {_ms(s['p99_s']):>7} {_ms(s['max_s']):>7}"
            f" {r.errors:>7} {_ms(r.manager_p50_le_s):>10} {_ms(r.manager_p99_le_s):>10}"
            f" {_ms(per_task):>16} {r.proplet_procs:>14} {_ms(proplets_cpu):>21} {_ms(client_cpu):>19}"
            f" {broker_cpu:>19} {_ms(all_cpu):>16}"
            f" {rtt.rate if rtt else 0:>15.0f} {_ms(rtt.p50_s) if rtt else '-':>10}"
        )
    return "\n".join(rows)


# ---------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator.cli", "--log-level", "warning", *args]


class Child:
    """A subprocess we started: stderr kept in a file so a failure can say why."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check(self, what: str) -> None:
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-1500:]
            raise RuntimeError(f"{what} exited with {self.proc.returncode}: {tail}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def cpu_seconds(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def cpu_seconds_of(pids: Iterable[int]) -> dict[int, float]:
    """``cpu_seconds`` of each of ``pids`` that is still running (a process that is not: left out)."""
    import psutil

    out = {}
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            out[pid] = cpu_seconds(pid)
    return out


def rss_bytes(pid: int) -> int:
    import psutil

    return int(psutil.Process(pid).memory_info().rss)


async def _until(check: Any, timeout: float, what: str, *children: Child) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in children:
            child.check(what)
        with contextlib.suppress(httpx.HTTPError):
            if await check():
                return
        await asyncio.sleep(0.02)
    raise TimeoutError(f"bench: timed out after {timeout:g} s waiting for {what}")


# The benchmarks drive the broker with raw clients (observers, round trips, raw discovery of thousands
# of proplets), which a closed broker refuses by design: they run the embedded broker open
# (`--broker-open`). What closing it costs is measured on its own (tests/bench/test_bench_identity.py).
OPEN_BROKER = ("--broker-open",)


@dataclass
class Cluster:
    api: httpx.AsyncClient
    broker_url: str  # as clients (proplets, observers) reach it
    domain: str
    channel: str
    manager_pid: int
    proplets_pids: tuple[int, ...]  # the process(es) running the proplets
    broker_config: str = ""  # which broker configuration the run used (describe_mosquitto)
    broker_pid: int | None = None  # Mosquitto's process, when this machine shows it


@contextlib.asynccontextmanager
async def cluster(
    broker: str,
    proplets: int,
    layout: str,
    tmp: Path,
    heartbeat: float = 1.0,
    profile: str | None = None,
    procs: int = 1,
    mosquitto: str = "shared",
) -> AsyncIterator[Cluster]:
    """Manager (+ embedded broker) and ``proplets`` Python proplets, all alive, on a fresh domain.
    ``split``: the proplets run in ``procs`` processes (as evenly as they divide), like the worker
    processes of a Celery pool, so they can use every core. ``mosquitto``: ``shared`` is the broker at
    ``MOSQUITTO_URL`` as it is configured; ``private`` starts one for this run on an ephemeral port with
    the recommended configuration (``MOSQUITTO_TUNING``)."""
    if broker not in ("embedded", "mosquitto"):
        raise ValueError(f"broker must be 'embedded' or 'mosquitto', got {broker!r}")
    if layout not in ("split", "inprocess"):
        raise ValueError(f"layout must be 'split' or 'inprocess', got {layout!r}")
    if mosquitto not in ("shared", "private"):
        raise ValueError(f"mosquitto must be 'shared' or 'private', got {mosquitto!r}")
    domain, channel = f"bench-{uuid.uuid4().hex[:10]}", "c"  # Mosquitto is shared: a domain per run
    prefix = f"{domain}-p"
    async with contextlib.AsyncExitStack() as stack:
        seen: MosquittoSeen | None = None  # the Mosquitto process serving the run
        if broker == "embedded":
            port = free_port() if layout == "split" else 0
            manager_broker, client_broker = f"embedded://127.0.0.1:{port}", f"mqtt://127.0.0.1:{port}"
            broker_config = "embedded (amqtt in the manager's process; asyncio sets TCP_NODELAY)"
        elif mosquitto == "private":
            from orchestrator.enrollment import MOSQUITTO_TUNING
            from twin.services import Broker

            private = Broker("mosquitto", tmp, tuning=MOSQUITTO_TUNING)
            await private.start()
            stack.push_async_callback(private.stop, signal.SIGTERM)
            manager_broker = client_broker = private.url
        else:
            manager_broker = client_broker = MOSQUITTO_URL
        if broker == "mosquitto":  # one look-up: its configuration line and its CPU name one process
            seen = _mosquitto_at(client_broker)
            broker_config = _described(client_broker, seen)
        if layout == "split":
            api_port = free_port()
            manager = Child(
                _cli(
                    "manager", "--broker", manager_broker, "--db", str(tmp / "manager.db"),
                    "--api", f"127.0.0.1:{api_port}", "--domain", domain, "--channel", channel,
                    "--heartbeat-interval", str(heartbeat), *OPEN_BROKER,
                ),
                tmp / "manager.log",
                {**os.environ, "PROPELLER_PROFILE": profile} if profile else None,
            )  # fmt: skip
            stack.callback(manager.stop)
            api = await stack.enter_async_context(
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=30)
            )
            await _until(lambda: _ok(api.get("/health")), 30, "the manager to serve /health", manager)
            manager_pid, guards = manager.pid, [manager]
            proplets_pids: tuple[int, ...] = (manager.pid,)
            pools = []
            for first, count in proplet_shares(proplets, procs):
                pool = Child(
                    _cli(
                        "bench", "proplets", "--broker", client_broker, "--count", str(count),
                        "--first", str(first), "--prefix", prefix, "--domain", domain, "--channel", channel,
                        "--heartbeat-interval", str(heartbeat), "--cache-dir", str(tmp / "cache"),
                    ),
                    tmp / f"proplets-{first}.log",
                    {**os.environ, "PROPELLER_PROFILE": profile.replace("manager-", f"proplets{first}-")}
                    if profile
                    else None,
                )  # fmt: skip
                stack.callback(pool.stop)
                pools.append(pool)
            if pools:
                proplets_pids, guards = tuple(p.pid for p in pools), pools
        else:
            from orchestrator.service import ManagerService, ManagerSettings

            service = ManagerService(
                ManagerSettings(
                    broker=manager_broker, db=str(tmp / "manager.db"), api_port=0, domain=domain,
                    channel=channel, heartbeat_interval=heartbeat, broker_open=bool(OPEN_BROKER),
                )
            )  # fmt: skip
            await service.start()
            stack.push_async_callback(service.stop)
            if broker == "embedded":
                client_broker = service.broker_url
            api = await stack.enter_async_context(
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.api_port}", timeout=30)
            )
            agents = await start_proplets(client_broker, proplets, prefix, domain, channel, heartbeat, tmp)
            stack.push_async_callback(stop_proplets, agents)
            manager_pid, proplets_pids = os.getpid(), (os.getpid(),)
            guards = []

        async def all_alive() -> bool:
            page = (await api.get("/proplets", params={"limit": 10_000})).json()
            return sum(1 for p in page["proplets"] if p["alive"] and p["id"].startswith(prefix)) >= proplets

        await _until(all_alive, 30 + proplets * 0.5, f"{proplets} proplets to be alive", *guards)
        yield Cluster(
            api, client_broker, domain, channel, manager_pid, proplets_pids, broker_config,
            seen[0] if seen else None,
        )  # fmt: skip


# A running Mosquitto as _mosquitto_at finds it: pid, its config file, that file's lines split into words.
MosquittoSeen = tuple[int, Path, list[list[str]]]

# The Mosquitto settings that change these figures, with Mosquitto 2.0's defaults.
MOSQUITTO_SETTINGS = {
    "set_tcp_nodelay": "false",
    "max_inflight_messages": "20",
    "max_queued_messages": "1000",
}


def _mosquitto_at(url: str) -> MosquittoSeen | None:
    """(pid, config file, its lines split into words) of the Mosquitto listening at ``url``'s port,
    found by the ``listener`` lines of each running Mosquitto's ``-c`` file; None when not visible."""
    import psutil

    port = url.rsplit(":", 1)[-1].strip("/")
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["name"] != "mosquitto" or "-c" not in cmdline[:-1]:
            continue
        try:
            conf = Path(proc.cwd()) / cmdline[cmdline.index("-c") + 1]  # as given: maybe relative
            lines = [line.split() for line in conf.read_text(errors="replace").splitlines()]
        except (OSError, psutil.Error):
            continue
        if any(words[:2] == ["listener", port] for words in lines):
            return int(proc.pid), conf, lines
    return None


def describe_mosquitto(url: str) -> str:
    """Which configuration the Mosquitto serving ``url`` runs with, as far as this machine shows it:
    the process listening there, its ``-c`` file and that file's ``MOSQUITTO_SETTINGS``."""
    return _described(url, _mosquitto_at(url))


def _described(url: str, found: MosquittoSeen | None) -> str:
    if found is None:
        return f"mosquitto at {url}: configuration not visible from here (set_tcp_nodelay unknown)"
    pid, conf, lines = found
    said = []
    for name, default in MOSQUITTO_SETTINGS.items():
        value = next((w[1] for w in lines if len(w) > 1 and w[0] == name), None)
        said.append(f"{name} {value}" if value else f"{name} {default} (default)")
    return f"mosquitto at {url}, pid {pid}, {conf}: {', '.join(said)}"


def proplet_shares(proplets: int, procs: int) -> list[tuple[int, int]]:
    """``(first index, count)`` of each proplet process: ``proplets`` split over ``procs`` (at most one
    process per proplet)."""
    if procs < 1:
        raise ValueError(f"proplet processes must be >= 1, got {procs}")
    procs = min(procs, proplets)
    out, first = [], 0
    for k in range(procs):
        count = proplets // procs + (1 if k < proplets % procs else 0)
        out.append((first, count))
        first += count
    return out


async def _ok(request: Any) -> bool:
    return bool((await request).status_code == 200)


async def start_proplets(
    broker: str,
    count: int,
    prefix: str,
    domain: str,
    channel: str,
    heartbeat: float,
    tmp: Path,
    first: int = 0,
) -> list[Any]:
    from proplets.agent import AgentSettings, PropletAgent

    agents = []
    for i in range(first, first + count):
        agent = PropletAgent(
            AgentSettings(
                broker=broker, proplet_id=f"{prefix}{i}", domain=domain, channel=channel,
                heartbeat_interval=heartbeat, cache_dir=str(tmp / "cache"),
            )
        )  # fmt: skip
        await agent.start()
        agents.append(agent)
    return agents


async def stop_proplets(agents: list[Any]) -> None:
    for agent in agents:
        with contextlib.suppress(Exception):
            await agent.stop()


# ---------------------------------------------------------------------- measurements


async def broker_roundtrip(url: str, topic: str, messages: int = 5000, window: int = 50) -> RoundTrip:
    """QoS 1 publish → broker → subscriber, ``window`` messages in flight, through MqttClient."""
    loop = asyncio.get_running_loop()
    sent: dict[int, float] = {}
    latencies: list[float] = []
    done: asyncio.Future[None] = loop.create_future()
    next_seq = 0
    tag = uuid.uuid4().hex[:8]
    pub = MqttClient(url, f"bench-pub-{tag}", max_inflight=window * 2)

    def send() -> None:
        nonlocal next_seq
        sent[next_seq] = time.perf_counter()
        pub.publish(topic, next_seq.to_bytes(4, "big"), 1)
        next_seq += 1

    def on_message(_topic: str, payload: bytes) -> None:
        latencies.append(time.perf_counter() - sent.pop(int.from_bytes(payload, "big")))
        if next_seq < messages:
            send()
        elif len(latencies) >= messages and not done.done():
            done.set_result(None)

    sub = MqttClient(url, f"bench-sub-{tag}", on_message=on_message)
    await sub.connect()
    await pub.connect()
    try:
        await sub.subscribe_and_wait(topic, 1)
        t0 = time.perf_counter()
        for _ in range(min(window, messages)):
            send()
        await asyncio.wait_for(done, 30 + messages / 100)
        elapsed = time.perf_counter() - t0
    finally:
        await pub.disconnect()
        await sub.disconnect()
    return RoundTrip(messages, elapsed, percentile(latencies, 50), percentile(latencies, 99))


async def run_load(
    c: Cluster, result: E2EResult, module: str, on_settled: Callable[[], None] | None = None
) -> None:
    """Closed loop: ``concurrency`` tasks in flight; a slot frees when the task's result is published."""
    loop = asyncio.get_running_loop()
    topics = wire.Topics(c.domain, c.channel)
    waiters: dict[str, asyncio.Future[None]] = {}
    early: set[str] = set()

    def on_result(topic: str, payload: bytes) -> None:
        with contextlib.suppress(wire.CodecError):
            msg = wire.decode(topics, topic, payload)
            if isinstance(msg, wire.TaskResult):
                waiter = waiters.get(msg.task_id)
                if waiter is None:
                    early.add(msg.task_id)  # with start:true the result may beat the 201 response
                elif not waiter.done():
                    waiter.set_result(None)

    # The load's own HTTP client: its CPU shares the machine with what is measured, and aiohttp spends
    # about half of httpx's per request here (docs/benchmarks.md); the rest of the bench uses c.api.
    load: aiohttp.ClientSession  # opened just before the load starts, closed after it

    async def call(path: str, body: Any = None) -> tuple[int, Any]:
        """(status, JSON body or text) of one load request (a POST); a failed connection is a
        ConnectionError naming the request (aiohttp's errors stop here)."""
        try:
            async with load.post(path, json=body) as response:
                if response.content_type == "application/json":
                    return response.status, await response.json()
                return response.status, await response.text()
        except aiohttp.ClientError as err:
            raise ConnectionError(f"POST {path} to the manager at {c.api.base_url}: {err}") from err

    observer = MqttClient(c.broker_url, f"bench-obs-{uuid.uuid4().hex[:8]}", on_message=on_result)
    await observer.connect()
    await observer.subscribe_and_wait(topics.results, 1)
    submitted: dict[str, tuple[float, int]] = {}
    counter = iter(range(result.tasks))

    def fail(reason: str) -> None:
        result.errors += 1
        if len(result.error_samples) < 5:
            result.error_samples.append(reason)

    def expect(task_id: str) -> asyncio.Future[None]:
        """Done when the task's result passes the observer (which may have seen it already)."""
        waiters[task_id] = waiter = loop.create_future()
        if task_id in early:
            waiter.set_result(None)
        return waiter

    async def worker() -> None:
        for i in counter:
            t0 = time.time()
            spec: dict[str, Any] = {"name": "add", "file": module, "inputs": [i, 1]}
            if result.submit == "start":
                spec["start"] = True  # create and start in one request
            status, created = await call("/tasks", spec)
            if status != 201:
                fail(f"POST /tasks: {status} {str(created)[:200]}")
                continue
            task_id = created["id"]
            waiter = expect(task_id)
            if result.submit == "two":
                status, started = await call(f"/tasks/{task_id}/start")
                if status != 200:
                    fail(f"POST /tasks/{task_id}/start: {status} {str(started)[:200]}")
                    continue
            submitted[task_id] = (t0, i)
            with contextlib.suppress(TimeoutError):  # counted below from its stored state
                await asyncio.wait_for(waiter, 60)

    async def batcher() -> None:
        """The same window of ``concurrency`` tasks in flight, refilled by POST /tasks/batch (start:
        true) whenever a quarter of it is free: one request per several tasks. A request goes out
        as soon as its slots are free, without waiting for the previous one's answer (as a client
        of a queue does not wait for the worker); a task holds its slot from its request to its
        result."""
        chunk = max(1, result.concurrency // 4)
        slots = asyncio.Semaphore(result.concurrency)
        posts: list[asyncio.Task[None]] = []
        pending: list[asyncio.Future[None]] = []
        broken: list[BaseException] = []  # a request that raised (the manager went away, ...)

        async def post(first: int, n: int) -> None:
            t0 = time.time()
            specs = [{"name": "add", "file": module, "inputs": [j, 1]} for j in range(first, first + n)]
            try:
                status, created = await call("/tasks/batch", {"start": True, "tasks": specs})
            except Exception as err:
                broken.append(err)
                status, created = 0, None
            if status != 201:
                if status:
                    fail(f"POST /tasks/batch: {status} {str(created)[:200]}")
                for _ in range(n):
                    slots.release()
                return
            for j, item in enumerate(created["results"]):
                waiter = expect(item["task"]["id"])
                waiter.add_done_callback(lambda _done: slots.release())
                pending.append(waiter)
                submitted[item["task"]["id"]] = (t0, first + j)

        i = 0
        while i < result.tasks and not broken:
            n = min(chunk, result.tasks - i)
            try:
                for _ in range(n):
                    await asyncio.wait_for(slots.acquire(), 60)
            except TimeoutError:  # no result for a minute: stop; what was sent is counted from the store
                fail(f"no slot freed in 60 s after {i} tasks: submitting stopped")
                break
            posts.append(asyncio.create_task(post(i, n)))
            i += n
        await asyncio.gather(*posts)
        if broken:
            raise broken[0]  # as a request of the sequential loop would have
        if pending:
            await asyncio.wait(pending, timeout=60)

    load = aiohttp.ClientSession(str(c.api.base_url), headers=dict(c.api.headers))
    try:
        if result.submit == "batch":
            await batcher()
        else:
            await asyncio.gather(*(worker() for _ in range(result.concurrency)))
    finally:
        await observer.disconnect()
        await load.close()

    # The observer can see a result a moment before the manager has stored it. Wait with a cheap
    # count (the store filters by state) so the CPU window holds the manager's work for every task
    # but not the read-back of all of them below.
    async def settled() -> bool:
        busy = 0
        for state in ("pending", "scheduled", "running"):
            busy += (await c.api.get("/tasks", params={"state": state, "limit": 1})).json()["total"]
        return busy == 0

    with contextlib.suppress(TimeoutError):
        await _until(settled, 30, "results to be stored")
    if on_settled is not None:
        on_settled()
    stored: dict[str, dict[str, Any]] = {}

    async def all_stored() -> bool:
        nonlocal stored
        stored = await read_tasks(c.api)
        return all(t in stored and stored[t]["state"] >= TERMINAL for t in submitted)

    with contextlib.suppress(TimeoutError):
        await _until(all_stored, 30, "results to be stored")
    finishes: list[float] = []
    for task_id, (t0, i) in submitted.items():
        task = stored.get(task_id)
        if task is None or task["state"] != COMPLETED or task.get("results") != str(i + 1):
            state = "missing" if task is None else f"state {task['state']} {task.get('error', '')}"
            fail(f"task {task_id}: {state}")
            continue
        finish = parse_rfc3339(task["finish_time"])
        finishes.append(finish)
        result.latencies_s.append(max(0.0, finish - t0))
    result.completed = len(finishes)
    if finishes:
        result.seconds = max(finishes) - min(t0 for t0, _ in submitted.values())


async def read_tasks(api: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    offset = 0
    while True:
        page = (await api.get("/tasks", params={"offset": offset, "limit": 100})).json()
        out.update({t["id"]: t for t in page["tasks"]})
        offset += len(page["tasks"])
        if not page["tasks"] or offset >= page["total"]:
            return out


async def warm_up(c: Cluster, proplets: int, module: str) -> None:
    """One task pinned to each proplet, so compile-on-first-use stays out of the figures."""
    ids = []
    for i in range(proplets):
        spec = {"name": "add", "file": module, "inputs": [1, 1], "proplet_id": f"{c.domain}-p{i}"}
        created = (await c.api.post("/tasks", json=spec)).json()
        (await c.api.post(f"/tasks/{created['id']}/start")).raise_for_status()
        ids.append(created["id"])

    async def all_done() -> bool:
        tasks = await read_tasks(c.api)
        return all(tasks[t]["state"] >= TERMINAL for t in ids)

    await _until(all_done, 30 + proplets, "warm-up tasks")


async def run_e2e(
    broker: str,
    proplets: int,
    tasks: int,
    concurrency: int,
    layout: str = "split",
    rtt_messages: int = 5000,
    submit: str = "start",
    profile: str | None = None,
    py_spy: str | None = None,
    proplet_procs: int = 1,
    mosquitto: str = "shared",
) -> E2EResult:
    if proplets < 1 or tasks < 1 or concurrency < 1:
        raise ValueError(
            f"proplets, tasks and concurrency must be >= 1, got {proplets}/{tasks}/{concurrency}"
        )
    result = E2EResult(broker, proplets, layout, tasks, concurrency, submit)
    module = add_module_b64()
    with tempfile.TemporaryDirectory(prefix="propeller-bench-") as tmp:
        async with cluster(
            broker, proplets, layout, Path(tmp), profile=profile, procs=proplet_procs, mosquitto=mosquitto
        ) as c:
            result.broker_config = c.broker_config
            await warm_up(c, proplets, module)
            if rtt_messages > 0:
                topic = f"bench-rtt/{c.domain}/echo"
                result.broker_rtt = await broker_roundtrip(c.broker_url, topic, rtt_messages)
            before = (await c.api.get("/metrics")).text
            # every process of the run once (in-process: the manager, client and proplets are one);
            # Mosquitto's only when it is there at both ends (a broker restarted meanwhile: unknown)
            pids = [*dict.fromkeys((c.manager_pid, os.getpid(), *c.proplets_pids))]
            broker_pids = [] if c.broker_pid is None else [c.broker_pid]
            spies = []
            if py_spy:  # the manager, and the proplets' process(es) when they are separate ones
                spies.append(_start_py_spy(c.manager_pid, py_spy))
                for k, pid in enumerate(p for p in c.proplets_pids if p != c.manager_pid):
                    spies.append(_start_py_spy(pid, py_spy.replace("manager-", f"proplets{k}-")))
            cpu0 = {p: cpu_seconds(p) for p in pids} | cpu_seconds_of(broker_pids)
            cpu1: dict[int, float] = {}

            def settled() -> None:
                cpu1.update({p: cpu_seconds(p) for p in pids} | cpu_seconds_of(broker_pids))
                for spy in spies:
                    _stop_py_spy(spy)

            await run_load(c, result, module, settled)
            after = (await c.api.get("/metrics")).text
            if result.errors:  # the children's warnings usually say why
                for log in sorted(Path(tmp).glob("*.log")):
                    result.error_samples.append(f"{log.name}: {log.read_text(errors='replace')[-1500:]}")
    name = "propeller_dispatch_latency_seconds"
    h0, h1 = parse_histogram(before, name), parse_histogram(after, name)
    result.manager_p50_le_s = histogram_quantile(h0, h1, 0.5)
    result.manager_p99_le_s = histogram_quantile(h0, h1, 0.99)
    used = {p: cpu1[p] - cpu0[p] for p in cpu1 if p in cpu0}
    result.manager_cpu_s = used[c.manager_pid]
    result.client_cpu_s = used[os.getpid()]
    result.proplets_cpu_s = sum(used[p] for p in c.proplets_pids)  # inprocess: the whole process
    result.system_cpu_s = sum(used.values())
    if c.broker_pid is not None:
        result.broker_cpu_s = used.get(c.broker_pid)
    result.proplet_procs = len(c.proplets_pids)
    return result


def _start_py_spy(pid: int, out: str) -> subprocess.Popen[bytes]:
    """Sample the manager with py-spy during the load only (collapsed stacks, native frames off).

    ``--gil``: only the thread holding the GIL, so a thread that waits (the store writer's queue,
    aiosqlite's connection thread, the runtime's epoch ticker) does not show up as busy; without it
    those waits were a third of the manager's samples."""
    import shutil

    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    proc = subprocess.Popen(
        [exe, "record", "--pid", str(pid), "--rate", "250", "--format", "raw", "--output", out, "--gil"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    time.sleep(0.5)  # attach before the load starts
    return proc


def _stop_py_spy(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def py_spy_top(path: Path, count: int = 25) -> str:
    """Share of samples per function (inclusive), from py-spy's collapsed stacks: where the CPU goes."""
    from collections import Counter

    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        samples = int(n)
        total += samples
        seen = set()
        for frame in stack.split(";"):
            name, _, location = frame.partition(" (")  # "function (path/to/file.py:line)"
            key = f"{name} ({'/'.join(location.rstrip(')').rsplit('/', 2)[-2:])})" if location else name
            if key not in seen:
                seen.add(key)
                inclusive[key] += samples
    rows = [f"{total} samples"]
    rows += [f"{100 * n / total:6.1f}%  {key}" for key, n in inclusive.most_common(count) if total]
    return "\n".join(rows)


# ---------------------------------------------------------------------- registry scale


@dataclass
class RegistryResult:
    broker: str
    proplets: int
    rss_before: int = 0
    rss_registered: int = 0
    rss_after_heartbeats: int = 0
    register_s: float = 0.0
    heartbeats: int = 0
    heartbeat_s: float = 0.0
    heartbeat_cpu_s: float = 0.0

    @property
    def rss_per_proplet(self) -> float:
        return (self.rss_after_heartbeats - self.rss_before) / self.proplets

    @property
    def heartbeats_per_s(self) -> float:
        return self.heartbeats / self.heartbeat_s if self.heartbeat_s > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "rss_per_proplet": round(self.rss_per_proplet),
            "heartbeats_per_s": round(self.heartbeats_per_s, 1),
            "manager_cpu_per_heartbeat_us": round(1e6 * self.heartbeat_cpu_s / max(1, self.heartbeats), 1),
        }


def registry_table(r: RegistryResult) -> str:
    mib = 1024 * 1024
    s = r.summary()
    return "\n".join(
        [
            f"broker {r.broker}, {r.proplets} proplets registered by raw discovery publishes",
            f"manager RSS before           {r.rss_before / mib:8.1f} MiB",
            f"manager RSS registered       {r.rss_registered / mib:8.1f} MiB  ({r.register_s:.2f} s)",
            f"manager RSS after heartbeats {r.rss_after_heartbeats / mib:8.1f} MiB",
            f"RSS per proplet              {r.rss_per_proplet / 1024:8.1f} KiB",
            f"heartbeats processed         {r.heartbeats:8d} in {r.heartbeat_s:.2f} s"
            f" = {r.heartbeats_per_s:,.0f}/s, manager CPU {s['manager_cpu_per_heartbeat_us']} us each",
        ]
    )


async def _publish_batches(
    client: MqttClient, messages: list[tuple[str, bytes]], sentinel: Any, batch: int = 500
) -> None:
    """Publish in batches, each followed by a check that the manager has taken it in (``sentinel``),
    so no broker queue overflows (Mosquitto drops QoS 1 beyond 1000 queued per client)."""
    for start in range(0, len(messages), batch):
        for topic, payload in messages[start : start + batch]:
            client.publish(topic, payload, 1)
        await sentinel(start // batch + 1)


async def run_registry(broker: str, proplets: int, rounds: int = 5) -> RegistryResult:
    """Manager RSS before/after ``proplets`` register (one client publishing every discovery with a
    distinct proplet id), then ``rounds`` heartbeats from each."""
    if proplets < 1 or rounds < 1:
        raise ValueError(f"proplets and rounds must be >= 1, got {proplets}/{rounds}")
    result = RegistryResult(broker, proplets)
    with tempfile.TemporaryDirectory(prefix="propeller-bench-") as tmp:
        # Heartbeat interval long enough that no simulated proplet is declared dead mid-run.
        async with cluster(broker, 0, "split", Path(tmp), heartbeat=60.0) as c:
            topics = wire.Topics(c.domain, c.channel)
            client = MqttClient(c.broker_url, f"bench-reg-{uuid.uuid4().hex[:8]}", max_queued=100_000)
            await client.connect()
            try:
                await asyncio.sleep(1.0)  # let the manager settle after start-up
                result.rss_before = rss_bytes(c.manager_pid)
                meta = {"description": "bench", "tags": ["bench"], "os": "linux", "cpu_arch": "x86_64"}
                ids = [f"{c.domain}-sim-{i}" for i in range(proplets)]
                discoveries = [(topics.create, wire.encode(wire.Discovery(p, "default", meta))) for p in ids]

                async def known(batch: int) -> None:
                    want = min(proplets, batch * 500)
                    await _until(
                        lambda: _metric_at_least(c.api, "propeller_proplets_known", "", want), 60, "discovery"
                    )

                t0 = time.perf_counter()
                await _publish_batches(client, discoveries, known)
                result.register_s = time.perf_counter() - t0
                result.rss_registered = rss_bytes(c.manager_pid)
                beat = [
                    (topics.alive, wire.encode(wire.Heartbeat(p, "alive", "default", running=())))
                    for p in ids
                ]
                sentinels = 0

                async def processed(batch: int) -> None:
                    # A malformed message on the same topic is ordered after the batch and leaves no
                    # state behind; the manager counts it once it has handled everything before it.
                    nonlocal sentinels
                    client.publish(topics.alive, b"{}", 1)
                    sentinels += 1
                    await _until(
                        lambda: _metric_at_least(
                            c.api,
                            "propeller_messages_malformed_total",
                            'topic="control/proplet/alive"',
                            sentinels,
                        ),
                        60,
                        "heartbeats",
                    )

                cpu0 = cpu_seconds(c.manager_pid)
                t0 = time.perf_counter()
                await _publish_batches(client, beat * rounds, processed)
                result.heartbeat_s = time.perf_counter() - t0
                result.heartbeat_cpu_s = cpu_seconds(c.manager_pid) - cpu0
                result.heartbeats = len(beat) * rounds
                result.rss_after_heartbeats = rss_bytes(c.manager_pid)
            finally:
                await client.disconnect()
    return result


async def _metric_at_least(api: httpx.AsyncClient, name: str, labels: str, want: float) -> bool:
    return parse_sample((await api.get("/metrics")).text, name, labels) >= want


# ---------------------------------------------------------------------- CLI


def _int_list(value: str) -> list[int]:
    try:
        numbers = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from None
    if not numbers or any(n < 1 for n in numbers):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {value!r}")
    return numbers


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return int(value)


def _brokers(choice: str) -> list[str]:
    return ["embedded", "mosquitto"] if choice == "both" else [choice]


def _write_json(path: str | None, data: Any) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=2, default=str) + "\n")


def _conditions() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "python": sys.version.split()[0],
    }


def celery_table(results: Iterable[E2EResult], celery: dict[int, list[Any]]) -> str:
    """Celery + Redis beside propeller, per worker count (and round): tasks/s, CPU per task, the ratio."""
    head = (
        "workers  round  celery tasks/s  p50ms  p99ms   maxms  worker-cpu/task-ms  redis-cpu/task-ms"
        "  client-cpu/task-ms  all-cpu/task-ms  | propeller (broker) tasks/s  mgr-cpu/task-ms"
        "  all-cpu/task-ms  ratio  cpu-ratio"
    )
    rows = [head, "-" * len(head)]
    for r in results:
        c = _paired(r, celery)
        if c is None:
            continue
        per = 1000 / c.completed
        redis = f"{c.redis_cpu_s * per:.2f}" if c.redis_cpu_s is not None else "-"
        mgr = 1000 * r.manager_cpu_s / r.completed if r.completed else float("nan")
        theirs = per * (c.worker_cpu_s + c.client_cpu_s + (c.redis_cpu_s or 0.0))  # ms per task
        ours = 1000 * r.system_cpu_s / r.completed if r.completed else float("nan")
        # how many times the CPU per task Celery + Redis spend: the ratio no other load on the machine skews
        cpu_ratio = theirs / ours if ours else float("nan")
        rows.append(
            f"{c.workers:>7} {r.round + 1:>6} {c.tasks_per_s:>15.1f} {_ms(percentile(c.latencies_s, 50)):>6}"
            f" {_ms(percentile(c.latencies_s, 99)):>6} {_ms(max(c.latencies_s, default=float('nan'))):>7}"
            f" {c.worker_cpu_s * per:>19.2f} {redis:>18} {c.client_cpu_s * per:>19.2f} {theirs:>16.2f}"
            f"  | {r.tasks_per_s:>13.1f} ({r.broker:<9}) {mgr:>16.2f} {ours:>16.2f}"
            f" {r.tasks_per_s / c.tasks_per_s:>5.2f}x {cpu_ratio:>9.2f}x"
        )
    return "\n".join(rows)


def _paired(r: E2EResult, celery: dict[int, list[Any]]) -> Any:
    """The Celery measurement taken right after ``r`` (same worker count and round), if it completed."""
    rounds = celery.get(r.proplets, [])
    c = rounds[r.round] if r.round < len(rounds) else None
    return c if c is not None and c.completed and c.tasks_per_s else None


def _celery_summary(c: Any) -> dict[str, Any]:
    lat = c.latencies_s
    return {
        **{k: v for k, v in asdict(c).items() if k != "latencies_s"},
        "tasks_per_s": c.tasks_per_s,
        "p50_s": percentile(lat, 50) if lat else None,
        "p99_s": percentile(lat, 99) if lat else None,
        "max_s": max(lat, default=None),
    }


def rounds_table(results: Sequence[E2EResult], celery: dict[int, list[Any]]) -> str:
    """Per row measured in several rounds: median tasks/s of each side and the median, lowest and
    highest of the per-round ratios (each round's two measurements were taken one after the other)."""
    import statistics

    head = "broker     proplets  rounds  propeller tasks/s  celery tasks/s  ratio median  ratio min..max"
    rows = [head, "-" * len(head)]
    for key in dict.fromkeys((r.broker, r.proplets) for r in results):
        mine = [r for r in results if (r.broker, r.proplets) == key]
        pairs = [(r, c) for r in mine if (c := _paired(r, celery)) is not None]
        ratios = [r.tasks_per_s / c.tasks_per_s for r, c in pairs]
        theirs = statistics.median(c.tasks_per_s for _, c in pairs) if pairs else float("nan")
        spread = f"{min(ratios):.2f}..{max(ratios):.2f}" if ratios else "-"
        rows.append(
            f"{key[0]:<10} {key[1]:>8} {len(mine):>7} {statistics.median(r.tasks_per_s for r in mine):>18.1f}"
            f" {theirs:>15.1f} {statistics.median(ratios) if ratios else float('nan'):>12.2f}x {spread:>15}"
        )
    return "\n".join(rows)


def cmd_e2e(args: argparse.Namespace) -> int:
    from orchestrator import bench_celery
    from orchestrator.cli import run_loop  # the bench's client on uvloop too, as the manager and proplets

    results: list[E2EResult] = []
    celery: dict[int, list[Any]] = {}  # per worker count, one measurement per round
    print(f"conditions: {_conditions()}", flush=True)
    why_not = "skipped (--no-celery)" if args.no_celery else bench_celery.available()
    for out_dir in (args.profile, args.py_spy):
        if out_dir:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
    try:
        for broker in _brokers(args.broker):
            for n in args.proplets:
                for round_ in range(args.rounds):  # each round: propeller, then Celery right after it
                    tag = f"{broker}-{n}" + (f"-r{round_ + 1}" if args.rounds > 1 else "")
                    profile = str(Path(args.profile) / f"manager-{tag}.prof") if args.profile else None
                    spy = str(Path(args.py_spy) / f"manager-{tag}.txt") if args.py_spy else None
                    shown = f"{broker} x{n}" + (f" round {round_ + 1}" if args.rounds > 1 else "")
                    r = run_loop(
                        run_e2e(
                            broker, n, args.tasks, args.concurrency, args.layout, args.rtt_messages,
                            args.submit, profile, spy, args.proplet_procs or os.cpu_count() or 1,
                            args.mosquitto,
                        )
                    )  # fmt: skip
                    r.round = round_
                    results.append(r)
                    print(f"done: {shown}: {r.tasks_per_s:.1f} tasks/s, {r.errors} errors", flush=True)
                    for sample in r.error_samples:
                        print(f"  error: {sample}", file=sys.stderr)
                    if why_not is None and len(celery.setdefault(n, [])) <= round_:
                        with tempfile.TemporaryDirectory(prefix="propeller-bench-") as tmp:
                            c = bench_celery.run_celery(n, args.tasks, args.concurrency, Path(tmp))
                        celery[n].append(c)
                        print(
                            f"done: celery x{n} round {round_ + 1}: {c.tasks_per_s:.1f} tasks/s", flush=True
                        )
    except (OSError, RuntimeError, TimeoutError, ValueError) as err:
        print(f"propeller bench e2e: {err}", file=sys.stderr)
        return 1
    for config in dict.fromkeys(r.broker_config for r in results):
        print(f"broker: {config}")
    print(e2e_table(results))
    if celery:
        print()
        print(celery_table(results, celery))
        if args.rounds > 1:
            print()
            print(rounds_table(results, celery))
    else:
        print(f"\nCelery + Redis comparison: {why_not}")
    if args.py_spy:
        for raw in sorted(Path(args.py_spy).glob("*.txt")):
            print(f"\npy-spy {raw} (share of samples, inclusive):")
            print(py_spy_top(raw, 40))
    if args.profile:
        for prof in sorted(Path(args.profile).glob("*.prof")):
            print(f"\nprofile {prof} (top 25 by own time):")
            print(profile_top(prof, 25))
    _write_json(
        args.output,
        {
            "conditions": _conditions(),
            "e2e": [r.summary() for r in results],
            # The first round's, as before --rounds; every round's in celery_rounds.
            "celery": {n: _celery_summary(rounds[0]) for n, rounds in celery.items() if rounds},
            "celery_rounds": {n: [_celery_summary(c) for c in rounds] for n, rounds in celery.items()},
        },
    )
    return 1 if any(r.errors for r in results) else 0


def profile_top(path: Path, count: int) -> str:
    import io
    import pstats

    out = io.StringIO()
    pstats.Stats(str(path), stream=out).sort_stats("tottime").print_stats(count)
    return out.getvalue()


def cmd_registry(args: argparse.Namespace) -> int:
    out = []
    try:
        for broker in _brokers(args.broker):
            r = asyncio.run(run_registry(broker, args.proplets, args.rounds))
            print(registry_table(r), flush=True)
            out.append(r.summary())
    except (OSError, RuntimeError, TimeoutError, ValueError) as err:
        print(f"propeller bench registry: {err}", file=sys.stderr)
        return 1
    _write_json(args.output, {"conditions": _conditions(), "registry": out})
    return 0


def cmd_proplets(args: argparse.Namespace) -> int:
    from orchestrator.cli import run_loop, serve_until_signal

    tmp = Path(args.cache_dir or tempfile.mkdtemp(prefix="propeller-bench-cache-"))
    agents: list[Any] = []

    async def start() -> None:
        a = args
        started = await start_proplets(
            a.broker, a.count, a.prefix, a.domain, a.channel, a.heartbeat_interval, tmp, a.first
        )
        agents.extend(started)
        print(f"propeller bench proplets: {len(agents)} proplets running", flush=True)

    async def stop() -> None:
        await stop_proplets(agents)

    try:
        run_loop(serve_until_signal(start, stop))  # as `propeller proplet` runs (and settles its heap)
    except Exception as err:
        print(f"propeller bench proplets: {err}", file=sys.stderr)
        return 1
    return 0


def add_bench_subcommands(sub: argparse._SubParsersAction) -> None:
    from orchestrator.cli_api import output_arg

    bench = sub.add_parser("bench", help="measure end-to-end throughput/latency and manager memory")
    bsub = bench.add_subparsers(dest="bench_cmd", required=True)

    e = bsub.add_parser("e2e", help="tasks/s and latency, API submit -> result stored")
    e.add_argument("--proplets", type=_int_list, default=[1, 10, 50], help="comma-separated counts")
    e.add_argument("--broker", choices=["embedded", "mosquitto", "both"], default="both", help="broker(s)")
    e.add_argument(
        "--mosquitto", choices=["shared", "private"], default="shared",
        help="shared: the Mosquitto at PROPELLER_BENCH_MOSQUITTO as configured (the output says how, when"
        " it can see); private: one started for the run on an ephemeral port with the recommended"
        " configuration (set_tcp_nodelay true)",
    )  # fmt: skip
    e.add_argument(
        "--tasks", type=_positive, default=5000,
        help="tasks per measurement (default 5000: long enough to hold each side's periodic pauses, e.g."
        " Celery's result waits of up to ~1 s a few times per 5,000 tasks; see docs/benchmarks.md)",
    )  # fmt: skip
    e.add_argument("--concurrency", type=_positive, default=16, help="tasks in flight at once")
    e.add_argument(
        "--layout",
        choices=["split", "inprocess"],
        default="split",
        help="split: manager and proplets in processes of their own; inprocess: one process",
    )
    e.add_argument("--rtt-messages", type=int, default=5000, help="raw QoS 1 round trips (0: skip)")
    e.add_argument(
        "--submit", choices=["start", "two", "batch"], default="start",
        help="start: POST /tasks with start:true (default); two: POST /tasks then POST /tasks/{id}/start;"
        " batch: POST /tasks/batch of concurrency/4 tasks whenever that many slots are free (without"
        " waiting for the previous request's answer)",
    )  # fmt: skip
    e.add_argument(
        "--proplet-procs", type=_positive, default=None,
        help="processes the proplets of a row are spread over (default: one per core, at most one per"
        " proplet; Celery's prefork pool runs one process per worker)",
    )  # fmt: skip
    e.add_argument("--no-celery", action="store_true", help="skip the Celery + Redis comparison")
    e.add_argument(
        "--rounds", type=_positive, default=1,
        help="measure each row this many times, each followed by Celery's (a shared machine's load"
        " drifts between runs): medians and the spread of the per-round ratios are printed too",
    )  # fmt: skip
    e.add_argument("--profile", default=None, help="directory: cProfile the manager (split layout) into it")
    e.add_argument(
        "--py-spy", default=None, help="directory: py-spy samples of the manager and proplets during the load"
    )
    output_arg(e)
    e.set_defaults(func=cmd_e2e)

    r = bsub.add_parser("registry", help="manager RSS with many registered proplets")
    r.add_argument("--proplets", type=_positive, default=1000, help="proplets registered")
    r.add_argument("--rounds", type=_positive, default=5, help="heartbeats per proplet")
    r.add_argument(
        "--broker", choices=["embedded", "mosquitto", "both"], default="embedded", help="broker(s) to measure"
    )
    output_arg(r)
    r.set_defaults(func=cmd_registry)

    from orchestrator.bench_dispatch import add_arguments as add_dispatch_arguments

    add_dispatch_arguments(bsub.add_parser("dispatch", help="engine cost per dispatch vs stored history"))

    from orchestrator.bench_restore import add_arguments as add_restore_arguments

    add_restore_arguments(bsub.add_parser("restore", help="manager restore time and RSS vs stored history"))

    p = bsub.add_parser("proplets", help="run N Python proplets in one process (load for e2e)")
    p.add_argument("--broker", required=True, help="mqtt://HOST:PORT")
    p.add_argument("--count", type=_positive, required=True, help="proplets to run")
    p.add_argument("--prefix", default="bench-p", help="proplet ids are PREFIX<index>")
    p.add_argument("--first", type=int, default=0, help="index of the first proplet (ids PREFIX<index>)")
    p.add_argument("--domain", default="default", help="tenant/domain id in m/{domain}/c/{channel}")
    p.add_argument("--channel", default="default", help="channel id in m/{domain}/c/{channel}")
    p.add_argument("--heartbeat-interval", type=float, default=1.0, help="seconds between heartbeats")
    p.add_argument("--cache-dir", default=None, help="directory of compiled modules (default: none)")
    p.set_defaults(func=cmd_proplets)
