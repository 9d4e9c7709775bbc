"""``propeller twin scale``: the largest fleet one twin process holds live, with heartbeats flowing.

One *point* is (broker kind, N devices). For a point: start the broker as its own process (and, with
``manager``, the real manager so it has to track N proplets too), boot N simulated esp32s3 devices in
this process through the real ``SimDevice`` path (engine + device model + one ``MqttClient`` each, all
on one asyncio loop and one simpy ``Environment``), ramped at ``ramp`` devices per second; wait until all
are online, then run ``duration`` seconds with heartbeats at ``heartbeat`` seconds. A monitor client
subscribed to the heartbeat topic counts what arrives. At the end the simulation is frozen (no more
heartbeats), in-flight messages drain for ``drain`` seconds, and the counts are compared.

The point *holds* (``judge``) when every device is online at the end and none dropped its link during
the run, at least 99 % of the heartbeats sent arrived, and the event loop's p99 oversleep stayed under
1 s (a device whose loop lags a second answers pings late; keep-alive is tens of seconds, but beyond a
second the simulated timings are no longer believable). The figures go to docs/twin-scale.md.

By default the CLI runs each point in a fresh child process (``python -m twin.scale POINT_JSON``), so
the RSS of one point is not inflated by the arenas of the previous one and leaked fds cannot carry over.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import random
import resource
import shutil
import signal
import sys
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import httpx
import psutil
import simpy

from orchestrator import wire
from orchestrator.adapters.aio import cancel_and_wait
from orchestrator.adapters.mqtt import BrokerUrl, MqttClient
from proplets.core import Publish
from twin.clock import AsyncSimClock
from twin.device import DeviceConfig, Shared, SimDevice, shutdown_all
from twin.devices.esp32s3 import ESP32S3
from twin.scenario.spec import Timers
from twin.scenario.trace import Trace
from twin.services import Broker, Manager
from twin.session import SessionConfig, TwinSession

BROKERS = ("embedded", "mosquitto")
FDS_PER_DEVICE = 2  # measured: 1 (5010 fds at 5000 devices); margin for a paho with a socketpair
MIN_DELIVERY = 0.99
MAX_LOOP_LAG_P99_S = 1.0
PROBE_S = 0.05  # the loop-lag probe's sleep


@dataclass(frozen=True)
class ScaleConfig:
    devices: int
    broker: str = "mosquitto"
    heartbeat: float = 10.0
    duration: float = 60.0
    manager: bool = False
    ramp: float = 1000.0  # devices powered on per second
    keepalive: float = 30.0
    connect_timeout: float = 120.0  # beyond the ramp itself
    drain: float = 3.0
    seed: int = 1

    def __post_init__(self) -> None:
        if not (isinstance(self.devices, int) and self.devices > 0):
            raise ValueError(f"devices must be a whole number > 0, got {self.devices!r}")
        if self.broker not in BROKERS:
            raise ValueError(f"broker must be one of {', '.join(BROKERS)}, got {self.broker!r}")
        for name in ("heartbeat", "duration", "ramp", "keepalive", "connect_timeout"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if not (math.isfinite(self.drain) and self.drain >= 0):
            raise ValueError(f"drain must be a finite number >= 0, got {self.drain!r}")


@dataclass
class ScaleResult:
    broker: str
    devices: int
    heartbeat_s: float
    duration_s: float
    manager: bool
    connect_s: float | None = None  # first power-on to the last device online; None: not all came up
    online_start: int = 0
    online_end: int = 0
    link_drops: int = 0  # connects beyond the first, per device, summed
    hb_sent: int = 0
    hb_received: int = 0
    manager_active: int | None = None  # GET /proplets?status=active at the end of the window
    runner_cpu_pct: float = 0.0  # of one core, over the steady window
    runner_rss_mib: float = 0.0
    runner_fds: int = 0
    broker_cpu_pct: float | None = None
    broker_rss_mib: float | None = None
    manager_cpu_pct: float | None = None
    manager_rss_mib: float | None = None
    connect_cpu_pct: float = 0.0  # runner, during the ramp
    loop_lag_ms: dict[str, float] = field(default_factory=dict)  # p50 / p99 / max, steady window
    sim_lag_ms: dict[str, float] = field(default_factory=dict)  # AsyncSimClock, steady window
    fd_limit: int = 0
    holds: bool = False
    why_not: list[str] = field(default_factory=list)
    error: str | None = None
    logs: str | None = None  # the broker's and manager's logs, kept when the point does not hold

    @property
    def delivery(self) -> float:
        return self.hb_received / self.hb_sent if self.hb_sent else 0.0


# ---------------------------------------------------------------------------------------------- pure
def judge(r: ScaleResult) -> list[str]:
    """Why this point does not hold (empty: it holds)."""
    why: list[str] = []
    if r.error:
        why.append(f"error: {r.error}")
    if r.online_end < r.devices:
        why.append(f"{r.devices - r.online_end} of {r.devices} devices offline at the end")
    if r.link_drops:
        why.append(f"{r.link_drops} link drops during the run")
    if r.hb_sent == 0 or r.delivery < MIN_DELIVERY:
        why.append(f"heartbeats delivered {r.hb_received}/{r.hb_sent} < {MIN_DELIVERY:.0%}")
    p99 = r.loop_lag_ms.get("p99", math.inf) / 1e3
    if p99 >= MAX_LOOP_LAG_P99_S:
        why.append(f"event-loop lag p99 {p99:.2f} s >= {MAX_LOOP_LAG_P99_S:g} s")
    return why


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50 / p99 / max of samples given in seconds, in milliseconds."""
    if not samples:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0}
    s = sorted(samples)
    n = len(s)
    return {"p50": round(s[n // 2] * 1e3, 2), "p99": round(s[min(n - 1, math.ceil(0.99 * n) - 1)] * 1e3, 2),
            "max": round(s[-1] * 1e3, 2)}  # fmt: skip


def parse_devices(text: str) -> list[int]:
    """``"1000,2000,5000"`` -> [1000, 2000, 5000]; a clear error for anything else."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) <= 0:
            raise ValueError(f"--devices wants positive whole numbers separated by commas, got {part!r}")
        out.append(int(part))
    return out


def table(results: list[ScaleResult]) -> str:
    head = ("broker", "N", "connect s", "online", "drops", "hb recv/sent", "runner cpu%", "runner MiB",
            "broker cpu%", "broker MiB", "loop p99 ms", "sim p99 ms", "holds")  # fmt: skip
    rows = [head]
    for r in results:
        def opt(v: float | None) -> str:
            return "-" if v is None else f"{v:g}"
        rows.append((
            r.broker, str(r.devices), opt(r.connect_s), f"{r.online_end}/{r.devices}", str(r.link_drops),
            f"{r.hb_received}/{r.hb_sent} ({r.delivery:.1%})", f"{r.runner_cpu_pct:g}",
            f"{r.runner_rss_mib:g}",
            opt(r.broker_cpu_pct), opt(r.broker_rss_mib), f"{r.loop_lag_ms.get('p99', 0):g}",
            f"{r.sim_lag_ms.get('p99', 0):g}", "yes" if r.holds else "no",
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    for r in results:
        if r.why_not:
            lines.append(f"{r.broker} N={r.devices} does not hold: {'; '.join(r.why_not)} (logs: {r.logs})")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- I/O
def raise_fd_limit(needed: int) -> int:
    """Raise the soft RLIMIT_NOFILE toward the hard one; children (the broker) inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        soft = want
    if soft < needed:
        raise ValueError(f"{needed} file descriptors needed, but the hard limit is {soft} (ulimit -Hn)")
    return int(soft)


class ScaleDevice(SimDevice):
    """A SimDevice that counts the heartbeats it hands to a connected client."""

    def __init__(self, config: DeviceConfig, shared: Shared, rng: random.Random) -> None:
        super().__init__(config, shared, rng)
        self.heartbeats_sent = 0

    def _execute(self, command: Any) -> None:
        engine = self.engine
        if (isinstance(command, Publish) and engine is not None and command.topic == engine.topics.alive
                and self.mqtt is not None and self.mqtt.connected):  # fmt: skip
            self.heartbeats_sent += 1
        super()._execute(command)


class LoopLagProbe:
    """How late a ``PROBE_S`` sleep wakes up: the event loop's responsiveness."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(PROBE_S)
            self.samples.append(max(0.0, loop.time() - t - PROBE_S))

    async def stop(self) -> None:
        await cancel_and_wait([self._task], "loop lag probe stop")


class _Usage:
    """CPU seconds of a process between two marks, and its RSS."""

    def __init__(self, pid: int | None) -> None:
        self.proc = psutil.Process(pid) if pid is not None else None
        self.cpu0 = self._cpu()

    def _cpu(self) -> float:
        if self.proc is None:
            return 0.0
        with contextlib.suppress(psutil.Error):
            t = self.proc.cpu_times()
            return float(t.user + t.system)
        return 0.0

    def cpu_pct(self, wall: float) -> float:
        return round(100.0 * (self._cpu() - self.cpu0) / wall, 1) if wall > 0 else 0.0

    def rss_mib(self) -> float | None:
        if self.proc is None:
            return None
        with contextlib.suppress(psutil.Error):
            return round(self.proc.memory_info().rss / 2**20, 1)
        return None


async def run_point(cfg: ScaleConfig, work_dir: Path | None = None) -> ScaleResult:
    """Run one point and return its figures; every process and client it starts is stopped."""
    work = work_dir or Path(tempfile.mkdtemp(prefix=f"twin-scale-{cfg.broker}-{cfg.devices}-"))
    work.mkdir(parents=True, exist_ok=True)
    result = ScaleResult(cfg.broker, cfg.devices, cfg.heartbeat, cfg.duration, cfg.manager)
    result.fd_limit = raise_fd_limit(cfg.devices * FDS_PER_DEVICE + 200)
    quiet = logging.getLogger("orchestrator.adapters.mqtt")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # thousands of devices would each log their reconnects
    point = _Point(cfg, work, result)
    try:
        await point.execute()
    except Exception as exc:  # a point that breaks is a figure too: report it, go on with the next
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        await point.teardown()
        quiet.setLevel(level)
    result.why_not = judge(result)
    result.holds = not result.why_not
    if result.holds and work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    else:
        result.logs = str(work)
    return result


class _Point:
    def __init__(self, cfg: ScaleConfig, work: Path, result: ScaleResult) -> None:
        self.cfg, self.work, self.r = cfg, work, result
        self.env = simpy.Environment()
        self.clock = AsyncSimClock(self.env, 1.0)
        self.domain = f"scale-{uuid.uuid4().hex[:10]}"
        self.topics = wire.Topics(self.domain, "default")
        config = SessionConfig(self.domain, cfg.heartbeat, 3 * cfg.heartbeat, broker=cfg.broker,
                               manager=cfg.manager, wasm_workers=1)  # fmt: skip
        self.session = TwinSession(config, Trace(f"scale-{cfg.devices}"), work_dir=work, env=self.env,
                                   clock=self.clock)  # fmt: skip
        self.broker: Broker | None = None
        self.manager: Manager | None = None
        self.monitor: MqttClient | None = None
        self.devices: list[ScaleDevice] = []
        self.shared: Shared | None = None
        self.clock_task: asyncio.Task[None] | None = None
        self.probe = LoopLagProbe()
        self.received = 0

    def _on_monitor(self, topic: str, payload: bytes) -> None:
        if topic == self.topics.alive and b'"alive"' in payload:  # not the wills ("offline")
            self.received += 1

    async def execute(self) -> None:
        cfg, r = self.cfg, self.r
        await self.session.__aenter__()
        session = self.session
        self.broker, self.manager, self.shared = session.broker, session.manager, session.shared
        assert self.broker is not None and self.shared is not None and session.identities is not None
        # A closed broker, as in production: the monitor and every device are enrolled for the run.
        identities = session.identities
        monitor_id = f"scale-monitor-{self.domain}"
        watcher = identities.observer(monitor_id)
        await session.commit_identities()
        host, port = self.broker.host, self.broker.port
        monitor_url = BrokerUrl("mqtt", host, port, watcher.username, watcher.password)
        self.monitor = MqttClient(monitor_url, monitor_id, keepalive=60, on_message=self._on_monitor)
        await self.monitor.connect()
        await self.monitor.subscribe_and_wait(self.topics.alive, 1)
        timers = Timers(heartbeat_interval=cfg.heartbeat, liveness_timeout=3 * cfg.heartbeat,
                        keepalive=cfg.keepalive, reconnect_min=1.0, reconnect_max=30.0)  # fmt: skip
        rng = random.Random(cfg.seed)
        host, port = self.broker.host, self.broker.port
        for i in range(cfg.devices):
            pid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            creds = identities.device("esp32s3", pid)
            config = DeviceConfig(f"esp-{i:05d}", "esp32s3", pid, self.domain, host, port, timers, ESP32S3,
                                  username=creds.username, password=creds.password,
                                  signing_key=creds.signing_key)  # fmt: skip
            self.devices.append(ScaleDevice(config, self.shared, random.Random(rng.random())))
        await session.commit_identities()
        me = _Usage(psutil.Process().pid)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for i, device in enumerate(self.devices):
            device.power_on(i / cfg.ramp)
        self.clock_task = loop.create_task(self.clock.run(math.inf))
        deadline = t0 + cfg.devices / cfg.ramp + cfg.connect_timeout
        while loop.time() < deadline and not all(d.online for d in self.devices):
            if self.clock_task.done():
                self.clock_task.result()  # the simulation died: raise its error
            await asyncio.sleep(0.1)
        online = [d.stats.first_online for d in self.devices if d.stats.first_online is not None]
        if len(online) == cfg.devices:
            r.connect_s = round(max(online), 2)
        r.connect_cpu_pct = me.cpu_pct(loop.time() - t0)
        r.online_start = sum(d.online for d in self.devices)
        connects0 = sum(d.stats.connects for d in self.devices)
        await self._window(connects0)

    async def _window(self, connects0: int) -> None:
        cfg, r = self.cfg, self.r
        loop = asyncio.get_running_loop()
        me = _Usage(psutil.Process().pid)
        broker = _Usage(self.broker.process.pid if self.broker else None)
        manager = _Usage(self.manager.process.pid if self.manager else None)
        self.clock._lags.clear()  # the steady window only; the ramp's bursts are reported as connect_s
        self.probe.start()
        t0 = loop.time()
        await asyncio.sleep(cfg.duration)
        wall = loop.time() - t0
        await self.probe.stop()
        r.runner_cpu_pct, r.broker_cpu_pct = me.cpu_pct(wall), broker.cpu_pct(wall) if self.broker else None
        if self.manager is not None:
            r.manager_cpu_pct, r.manager_rss_mib = manager.cpu_pct(wall), manager.rss_mib()
            r.manager_active = await self._manager_active()
        r.online_end = sum(d.online for d in self.devices)
        r.link_drops = sum(d.stats.connects for d in self.devices) - connects0
        lag = self.clock.lag_stats()
        r.sim_lag_ms = {"p50": round(lag.median_s * 1e3, 2), "p99": round(lag.p99_s * 1e3, 2),
                        "max": round(lag.max_s * 1e3, 2)}  # fmt: skip
        r.loop_lag_ms = percentiles(self.probe.samples)
        # Freeze the simulation (no more heartbeats), let the in-flight ones arrive, then count.
        await cancel_and_wait([self.clock_task], "twin scale: simulation clock")
        await asyncio.sleep(cfg.drain)
        r.hb_sent = sum(d.heartbeats_sent for d in self.devices)
        r.hb_received = self.received
        r.runner_rss_mib = me.rss_mib() or 0.0
        r.broker_rss_mib = broker.rss_mib()
        r.runner_fds = psutil.Process().num_fds()

    async def _manager_active(self) -> int | None:
        assert self.manager is not None
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            async with httpx.AsyncClient(timeout=10.0) as client:
                resp = await client.get(f"{self.manager.api_url}/proplets", params={"status": "active",
                                                                                   "limit": 1})  # fmt: skip
                return int(resp.json()["total"])
        return None

    async def teardown(self) -> None:
        """Stop everything this point started, whatever happened; never raises."""
        await self.probe.stop()
        await cancel_and_wait([self.clock_task], "twin scale: simulation clock")
        shutdown_all(list(self.devices))
        if self.monitor is not None:
            self.monitor.abort()
        await self.session.__aexit__(None, None, None)  # the Wasm jobs, the manager, the broker
        await asyncio.sleep(0)  # let the aborted sockets' close callbacks run


async def run_point_isolated(cfg: ScaleConfig, timeout: float | None = None) -> ScaleResult:
    """``run_point`` in a fresh child interpreter: clean RSS and fd figures per point."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "twin.scale", json.dumps(asdict(cfg)),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    limit = timeout or (cfg.devices / cfg.ramp + cfg.connect_timeout + cfg.duration + cfg.drain + 60)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limit)
    except (TimeoutError, asyncio.CancelledError):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)  # lets the child stop its broker and manager
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        raise
    lines = out.decode().strip().splitlines()
    if proc.returncode != 0 or not lines:
        r = ScaleResult(cfg.broker, cfg.devices, cfg.heartbeat, cfg.duration, cfg.manager)
        r.error = f"child exited {proc.returncode}: {err.decode()[-500:]}"
        r.why_not = judge(r)
        return r
    data = json.loads(lines[-1])
    return ScaleResult(**data)


def _child(arg: str) -> int:
    cfg = ScaleConfig(**json.loads(arg))
    try:
        result = asyncio.run(run_point(cfg))
    except KeyboardInterrupt:
        return 130
    print(json.dumps(asdict(result)))
    return 0


# ---------------------------------------------------------------------------------------------- CLI
def add_twin_subcommands(sub: argparse._SubParsersAction) -> None:
    tw = sub.add_parser("twin", help="digital-twin tools")
    tsub = tw.add_subparsers(dest="twin_cmd", required=True)
    sc = tsub.add_parser("scale", help="the largest fleet one twin process holds live (benchmark)")
    d = " (default: %(default)s)"
    sc.add_argument("--devices", default="1000,2000,5000", help="fleet sizes, comma-separated" + d)
    sc.add_argument("--broker", default="both", choices=(*BROKERS, "both"), help="broker process" + d)
    sc.add_argument("--heartbeat", type=float, default=10.0, help="heartbeat interval, s" + d)
    sc.add_argument("--duration", type=float, default=60.0, help="steady window, s" + d)
    sc.add_argument("--manager", action=argparse.BooleanOptionalAction, default=False,
                    help="also run the real manager, tracking every proplet (default: off)")
    sc.add_argument("--ramp", type=float, default=1000.0, help="devices powered on per second" + d)
    sc.add_argument("--keepalive", type=float, default=30.0, help="MQTT keep-alive, s" + d)
    sc.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=True,
                    help="run each point in a fresh child process (default: on)")
    from orchestrator.cli_api import output_arg

    output_arg(sc, "write every point's figures (JSON) to FILE")
    sc.add_argument("--mode", default="live", choices=("live", "virtual"),
                    help="live: real broker and MQTT clients in wall-clock time, --duration is the steady "
                         "window; virtual: broker model, manager engine and devices on simpy's clock, "
                         "--duration is simulated time" + d)
    sc.add_argument("--profile", action="store_true", help="virtual mode: print the 25 hottest functions")
    sc.add_argument("--cohort", action=argparse.BooleanOptionalAction, default=True,
                    help="virtual mode: steady devices' heartbeats reach the manager's engine in bulk, "
                         "one batch per simulated second (twin/cohort.py; same verdicts)" + d)
    sc.add_argument("--fast-exit", action=argparse.BooleanOptionalAction, default=True,
                    help="virtual mode: once the figures are printed and written, end the process "
                         "without freeing the fleet (os._exit)" + d)
    sc.set_defaults(func=cmd_scale)  # fmt: skip


def cmd_virtual_scale(args: Any) -> int:
    from twin.virtual_scale import VirtualScaleConfig, as_dict, run_virtual_point, summary

    try:
        configs = [VirtualScaleConfig(n, args.duration, args.heartbeat, args.keepalive, profile=args.profile,
                                      cohort=args.cohort)
                   for n in parse_devices(args.devices)]  # fmt: skip
    except ValueError as exc:
        print(f"propeller twin scale: {exc}", file=sys.stderr)
        return 2
    results = []
    for i, cfg in enumerate(configs):
        print(f"running virtual N={cfg.devices} for {cfg.duration:g} simulated s ...", file=sys.stderr,
              flush=True)  # fmt: skip
        last = i == len(configs) - 1
        r = asyncio.run(run_virtual_point(cfg, restore_gc=not (args.fast_exit and last)))
        results.append(r)
        print(summary(r), flush=True)
        if r.profile:
            print(r.profile)
    if args.output:
        Path(args.output).write_text(json.dumps([as_dict(r) for r in results], indent=2), encoding="utf-8")
    code = 0 if all(r.alive_at_end == r.devices for r in results) else 1
    if args.fast_exit:
        exit_now(code)
    return code


def exit_now(code: int) -> NoReturn:
    """End the process with ``code`` once everything printed is flushed, without tearing the heap down:
    freeing a 100,000-device fleet object by object took longer than a third of the simulated hour."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def cmd_scale(args: Any) -> int:
    if args.mode == "virtual":
        return cmd_virtual_scale(args)
    try:
        sizes = parse_devices(args.devices)
        brokers = list(BROKERS) if args.broker == "both" else [args.broker]
        configs = [ScaleConfig(n, b, args.heartbeat, args.duration, args.manager, args.ramp, args.keepalive)
                   for b in brokers for n in sizes]  # fmt: skip
    except ValueError as exc:
        print(f"propeller twin scale: {exc}", file=sys.stderr)
        return 2
    results: list[ScaleResult] = []

    async def go() -> None:
        for cfg in configs:
            print(f"running {cfg.broker} N={cfg.devices} ...", file=sys.stderr, flush=True)
            r = await (run_point_isolated(cfg) if args.isolate else run_point(cfg))
            results.append(r)

    try:
        asyncio.run(go())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    print(table(results))
    for b in brokers:
        held = [r.devices for r in results if r.broker == b and r.holds]
        print(f"largest fleet held with {b}: {max(held) if held else 'none of those tried'}")
    if args.output:
        Path(args.output).write_text(json.dumps([{**asdict(r), "delivery": r.delivery} for r in results],
                                              indent=2), encoding="utf-8")  # fmt: skip
    return 0 if len(results) == len(configs) and not any(r.error for r in results) else 1


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m twin.scale POINT_JSON (internal: use `propeller twin scale`)",
              file=sys.stderr)
        sys.exit(2)
    sys.exit(_child(sys.argv[1]))
