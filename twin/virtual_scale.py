"""``propeller twin scale --mode virtual``: how large a fleet, for how long, virtual time simulates.

One point: N esp32s3 devices (the real ``SimDevice`` path: proplet engine, ESP32-S3 timing and memory
models, a ``ModelClient`` each), the manager's ``Engine`` tracking every proplet (``VirtualManager``),
the ``BrokerModel`` between them, for ``duration`` simulated seconds with heartbeats every
``heartbeat`` seconds. Every heartbeat is a real wire message: encoded by the proplet engine, routed by
the broker model, decoded and applied by the manager's engine. Power-on is spread over the first
heartbeat interval, so heartbeats arrive evenly, as in a fleet that has been up for a while.

The point reports wall time, CPU, peak RSS, heartbeats sent and received, and how many proplets the
manager holds alive at the end (all of them, or the point is wrong, not slow).

One difference from the live manager, on purpose: the live ``ManagerService`` also wakes its timers
every min(1 s, liveness / 10) and after every message, and each wake walks every proplet. That is
harmless in wall-clock time but, compressed 60x or more, it is the whole cost at 100k proplets
(O(N) per message). Here the engine's timers run at its own deadlines (``next_deadline``), which
decides the same deaths at the same instants.
"""

from __future__ import annotations

import collections
import cProfile
import gc
import io
import itertools
import pstats
import random
import resource
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from heapq import heappop, heappush
from typing import Any

import simpy
from simpy.events import NORMAL, EventPriority

from twin.device import DeviceConfig, SimDevice
from twin.devices.esp32s3 import ESP32S3
from twin.fleet import proplet_id
from twin.scenario.spec import Timers
from twin.scenario.trace import Trace
from twin.session import SessionConfig, TwinSession


@dataclass(frozen=True)
class VirtualScaleConfig:
    devices: int
    duration: float = 3600.0
    heartbeat: float = 10.0
    keepalive: float = 30.0
    seed: int = 1
    profile: bool = False
    cohort: bool = True  # steady devices' heartbeats in bulk (twin.cohort)

    def __post_init__(self) -> None:
        if not (isinstance(self.devices, int) and self.devices > 0):
            raise ValueError(f"devices must be a whole number > 0, got {self.devices!r}")
        for name in ("duration", "heartbeat", "keepalive"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")


@dataclass
class VirtualScaleResult:
    devices: int
    duration_s: float
    heartbeat_s: float
    setup_s: float = 0.0
    wall_s: float = 0.0  # the simulated run, setup excluded
    cpu_s: float = 0.0
    peak_rss_mib: float = 0.0
    heartbeats_sent: int = 0
    heartbeats_received: int = 0  # by the manager's engine (decoded and applied)
    alive_at_end: int = 0  # proplets the manager holds alive at the end
    deaths: int = 0  # proplets the manager declared dead during the run (should be 0)
    sim_events: int = 0
    cohort: int = 0  # devices whose heartbeats went in bulk at the end
    profile: str = field(default="", repr=False)

    @property
    def heartbeats_per_s(self) -> float:
        return self.heartbeats_received / self.wall_s if self.wall_s else 0.0

    @property
    def speedup(self) -> float:
        return self.duration_s / self.wall_s if self.wall_s else 0.0


class _CountingEnv(simpy.Environment):
    """A simpy Environment that keeps the events due at the current instant in a FIFO beside its heap,
    and tells how many events it processed.

    simpy processes events in (time, priority, id) order. Most of a booting fleet's events are due at
    once (a zero-delay link: CONNECT, CONNACK, SUBSCRIBEs, PUBLISHes and their PUBACKs all happen at the
    same simulated instant), and each costs a push and a pop on a heap of 100,000+ pending timers. Such
    an event (delay 0, normal priority) goes to the FIFO instead: all of its entries are due now, their
    ids grow, so its head is its least, and ``step`` takes whichever of the heap's head and the FIFO's
    head comes first in that order. The order of events is exactly simpy's."""

    def __init__(self, initial_time: float = 0) -> None:
        super().__init__(initial_time)
        self._due_now: collections.deque[tuple[int, simpy.events.Event]] = collections.deque()

    def schedule(self, event: simpy.events.Event, priority: EventPriority = NORMAL, delay: float = 0) -> None:
        if delay == 0 and priority == NORMAL:
            self._due_now.append((next(self._eid), event))
        else:
            heappush(self._queue, (self._now + delay, priority, next(self._eid), event))

    def peek(self) -> float:
        return self._now if self._due_now else super().peek()

    def step(self) -> None:
        due, queue = self._due_now, self._queue
        if due:
            head = queue[0] if queue else None
            # the heap's head first only if it is due now too and comes first by (priority, id)
            if head is not None and head[0] == self._now and (head[1], head[2]) < (NORMAL, due[0][0]):
                self._now, _, _, event = heappop(queue)
            else:
                event = due.popleft()[1]
        else:
            try:
                self._now, _, _, event = heappop(queue)
            except IndexError:
                raise simpy.core.EmptySchedule from None
        # From here on, simpy's Environment.step.
        callbacks, event.callbacks = event.callbacks, None  # type: ignore[assignment]
        try:
            for callback in callbacks:
                callback(event)
        except simpy.core.StopSimulation:
            event.callbacks = callbacks[callbacks.index(callback) + 1 :]
            self.schedule(event, EventPriority(-1))
            raise
        if not event._ok and not hasattr(event, "_defused"):
            exc = type(event._value)(*event._value.args)
            exc.__cause__ = event._value
            raise exc

    @property
    def steps(self) -> int:
        # Every event scheduled took an id; those not waiting any more were processed. (Counting in
        # step() cost a Python call per event: millions at fleet scale.)
        issued = next(self._eid)  # ids 0..issued-1 were handed out
        self._eid = itertools.count(issued)  # and the next one is still this one
        return issued - len(self._queue) - len(self._due_now)


async def run_virtual_point(
    cfg: VirtualScaleConfig,
    before_run: Callable[[TwinSession, list[SimDevice]], None] | None = None,
    *,
    restore_gc: bool = True,
) -> VirtualScaleResult:
    """One point. ``before_run`` (tests) sees the session and the powered-on fleet before the clock runs
    (to schedule faults) and may read the session after this returns. ``restore_gc=False`` leaves the
    garbage collector frozen and off afterwards: for a process that ends right after (``os._exit``), so
    nothing walks or frees the fleet's millions of objects."""
    # The fleet is millions of long-lived objects and makes few cycles: a collection while it is built
    # or while it runs walks all of them (seconds each at 100k devices), so the collector stays off for
    # the whole point and (``restore_gc``) is turned back on after.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return await _run_point(cfg, before_run)
    finally:
        if restore_gc and enabled:
            gc.enable()


async def _run_point(
    cfg: VirtualScaleConfig, before_run: Callable[[TwinSession, list[SimDevice]], None] | None
) -> VirtualScaleResult:
    t0 = time.monotonic()
    result = VirtualScaleResult(cfg.devices, cfg.duration, cfg.heartbeat)
    env = _CountingEnv()
    domain = f"scale-{cfg.seed}"
    deaths: list[str] = []

    def on_event(event: Mapping[str, Any], _t: float) -> None:  # the manager's view: only its deaths
        if event.get("event") in ("proplet_dead", "proplet_left"):
            deaths.append(str(event.get("proplet_id")))

    # An open broker model: the benchmark measures the transport and the manager, not enrollment
    # (its bare devices carry no credentials).
    config = SessionConfig(domain, cfg.heartbeat, 3 * cfg.heartbeat, mode="virtual", seed=cfg.seed,
                           manager_live_timers=False, cohort=cfg.cohort, broker_open=True)  # fmt: skip
    trace = Trace(f"virtual-scale-{cfg.devices}")
    async with TwinSession(config, trace, env=env, on_manager_event=on_event) as session:
        shared, manager = session.shared, session.virtual_manager
        assert shared is not None and manager is not None
        timers = Timers(heartbeat_interval=cfg.heartbeat, liveness_timeout=3 * cfg.heartbeat,
                        keepalive=cfg.keepalive)  # fmt: skip
        rng = random.Random(cfg.seed)
        ids = random.Random(rng.random())
        devices = []
        for i in range(cfg.devices):
            name = f"esp-{i + 1}"
            dc = DeviceConfig(name, "esp32s3", proplet_id(ids), domain, "model", 0, timers, ESP32S3)
            device = SimDevice(dc, shared, random.Random(rng.random()))
            device.power_on(rng.uniform(0.0, cfg.heartbeat))
            devices.append(device)
        if before_run is not None:
            before_run(session, devices)
        result.setup_s = round(time.monotonic() - t0, 3)
        # CPU time, not wall: on a shared host a wall-clock profile charges whoever was descheduled.
        profiler = cProfile.Profile(time.process_time) if cfg.profile else None
        cpu0, w0 = time.process_time(), time.monotonic()
        if profiler is not None:
            profiler.enable()
        env.run(until=cfg.duration)
        if profiler is not None:
            profiler.disable()
        result.wall_s = round(time.monotonic() - w0, 3)
        result.cpu_s = round(time.process_time() - cpu0, 3)
        result.peak_rss_mib = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        cohort = shared.cohort
        result.cohort = len(cohort) if cohort is not None else 0
        if cohort is not None:  # heartbeats due before the end, still in the last tick, are sent now
            cohort.finish()
        result.heartbeats_sent = sum(d._heartbeats for d in devices)
        result.heartbeats_received = manager.heartbeats
        engine = manager.engine
        assert engine is not None
        now = float(env.now)
        result.alive_at_end = sum(1 for p in engine.proplets.values() if engine.is_alive(p, now))
        result.deaths = len(deaths)
        result.sim_events = env.steps
        if profiler is not None:
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
            result.profile = out.getvalue()
    return result


def summary(r: VirtualScaleResult) -> str:
    return (
        f"{r.devices} devices x {r.duration_s:g} s simulated, heartbeats every {r.heartbeat_s:g} s: "
        f"{r.wall_s:.1f} s wall ({r.speedup:.0f}x real time; setup {r.setup_s:.1f} s), cpu {r.cpu_s:.1f} s, "
        f"peak RSS {r.peak_rss_mib:.0f} MiB\n"
        f"  heartbeats sent {r.heartbeats_sent}, decoded by the manager {r.heartbeats_received} "
        f"({r.heartbeats_per_s:,.0f}/s wall), {r.sim_events} simpy events; manager holds "
        f"{r.alive_at_end}/{r.devices} alive at the end, {r.deaths} died"
    )


def as_dict(r: VirtualScaleResult) -> dict[str, Any]:
    out = asdict(r)
    out.pop("profile", None)
    return {**out, "heartbeats_per_s": round(r.heartbeats_per_s), "speedup": round(r.speedup, 1)}
