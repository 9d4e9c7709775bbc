"""``TwinSession``: the broker, the manager and the devices' plumbing of one twin run, live or virtual.

The scenario runners (``twin.runner``, ``twin.virtual``), the pytest harness (``twin.harness``) and the
scale benchmarks start the same things in the same order and must stop them on every exit path::

    async with TwinSession(SessionConfig(mode="live", broker="mosquitto", domain=d, ...), trace,
                           observer=observer, work_dir=work) as session:
        fleet = await session.fleet(scenario, on_fleet_fault)
        ...

Live: the broker and ``propeller manager`` as processes (``twin.services``), wasmtime in a thread pool,
``LiveTransport``. Virtual: ``BrokerModel``, ``VirtualManager``, ``VirtualTransport`` on one simpy
``Environment``. Everything started is registered on an ``AsyncExitStack``, so ``__aexit__`` (or a
failed ``__aenter__``) stops exactly what was started, last first; callers add their own teardown with
``session.stack``.
"""

from __future__ import annotations

import contextlib
import random
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import simpy

from orchestrator.adapters.aio import cancel_and_wait
from twin.broker_model import BrokerModel
from twin.clock import AsyncSimClock
from twin.cohort import HeartbeatCohort
from twin.device import Shared
from twin.fleet import Fleet
from twin.identities import TwinIdentities, VirtualIdentities
from twin.observer import ManagerObserver
from twin.scenario.spec import FaultSpec, Scenario
from twin.scenario.trace import Trace
from twin.services import MAX_QUEUED_MESSAGES, Broker, Manager, ManagerOptions
from twin.timeline_feed import ApiSink, EngineSink, TimelineFeed
from twin.transport import VirtualTransport
from twin.vmanager import WALL_EPOCH, ManagerConfig, VirtualManager

MODES = ("live", "virtual")
OnEvent = Callable[[Mapping[str, Any], float], None]


@dataclass(frozen=True)
class SessionConfig:
    domain: str
    heartbeat_interval: float
    liveness_timeout: float
    mode: str = "live"
    broker: str = "embedded"  # live: embedded | mosquitto (a process either way)
    placement: str = "round_robin"
    max_attempts: int = 3
    queue_timeout: float | None = None
    # Live: the other ManagerSettings fields the scenario sets (twin.scenario.spec.ManagerSpec.settings).
    manager_settings: tuple[tuple[str, Any], ...] = ()
    manager: bool = True  # start the manager too
    seed: int = 0  # virtual: the manager's task ids
    wasm_workers: int = 2  # live: threads running wasmtime
    # Virtual: the manager's timer loop as the live one (woken by every message, at least every
    # min(1 s, liveness / 10)), or only at the engine's deadlines (fleet-scale runs).
    manager_live_timers: bool = True
    # Virtual: steady devices' heartbeats reach the manager in bulk (twin.cohort); same verdicts.
    cohort: bool = False
    # Virtual: the broker model admits anyone (the fleet-scale benchmark's bare devices); by default it
    # is closed like live mode's broker, and the session enrolls the manager and every device.
    broker_open: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")


async def _stop(process: Broker | Manager) -> None:
    with contextlib.suppress(Exception):
        await process.process.kill(signal.SIGTERM)


class TwinSession:
    def __init__(self, config: SessionConfig, trace: Trace, *, observer: ManagerObserver | None = None,
                 work_dir: Path | None = None, env: simpy.Environment | None = None,
                 clock: AsyncSimClock | None = None,
                 on_manager_event: OnEvent | None = None) -> None:  # fmt: skip
        if config.mode == "live" and work_dir is None:
            raise ValueError("a live session needs a work_dir for the broker's and manager's logs")
        self.config, self.trace, self.observer, self.work_dir = config, trace, observer, work_dir
        self.on_manager_event = on_manager_event  # virtual: instead of the observer
        self.env = env if env is not None else simpy.Environment()
        self.clock = clock if clock is not None else AsyncSimClock(self.env, 1.0)
        self.stack = contextlib.AsyncExitStack()
        self.broker: Broker | None = None  # live
        self.manager: Manager | None = None  # live
        self.broker_model: BrokerModel | None = None  # virtual
        self.virtual_manager: VirtualManager | None = None  # virtual
        self.runtime: Any = None
        self.shared: Shared | None = None
        self.identities: TwinIdentities | None = None  # live: the run's enrolled identities
        self.feed: TimelineFeed | None = None  # reports faults and console lines to the manager
        self.virtual_identities: VirtualIdentities | None = None  # virtual, closed: in memory, seeded

    @property
    def virtual(self) -> bool:
        return self.config.mode == "virtual"

    @property
    def broker_address(self) -> tuple[str, int]:
        """Where devices dial: the broker process, or the model (no address)."""
        if self.broker is not None:
            return self.broker.host, self.broker.port
        return "model", 0

    async def __aenter__(self) -> TwinSession:
        try:
            await self._start()
        except BaseException:
            await self.stack.aclose()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:  # fmt: skip
        await self.stack.aclose()

    async def _start(self) -> None:
        from proplets.runtime import WasmtimeRuntime  # lazy: wasmtime is heavy to import

        self.runtime = WasmtimeRuntime()
        self.stack.callback(self.runtime.close)
        if self.virtual:
            self._start_virtual()
        else:
            await self._start_live()

    async def _start_live(self) -> None:
        c, work = self.config, self.work_dir
        assert work is not None
        # A closed broker, like a real fleet: the manager and every device are enrolled for this run.
        identities = self.identities = TwinIdentities(work)
        manager_identity = await identities.bootstrap(c.domain)
        broker = self.broker = Broker(c.broker, work, identities=identities.db)
        self.stack.push_async_callback(_stop, broker)  # registered first: a half-started one is killed too
        await broker.start()
        if c.manager:
            opts = ManagerOptions(c.domain, c.heartbeat_interval, c.liveness_timeout, c.placement,
                                  c.max_attempts, c.queue_timeout, settings=c.manager_settings)  # fmt: skip
            on_line = self.observer.on_line if self.observer is not None else None
            manager = self.manager = Manager(broker.url, opts, work, on_line, identity=manager_identity)
            self.trace.meta["manager_log"] = str(manager.process.log_path)
            self.stack.push_async_callback(_stop, manager)
            await manager.start()
            # Faults and console lines join the manager's task timelines (twin/timeline_feed.py).
            clock = self.clock
            sink = ApiSink(manager.api_url)
            feed = self.feed = TimelineFeed(lambda t: time.time() - (clock.target() - t), sink)
            self.trace.listeners.append(feed.on_event)
            await sink.start()
            self.stack.push_async_callback(
                _close_feed, self.trace, feed, sink.close
            )  # before the manager stops
        executor = ThreadPoolExecutor(max_workers=c.wasm_workers, thread_name_prefix="twin-wasm")
        self.stack.callback(executor.shutdown, wait=True, cancel_futures=True)
        shared = self.shared = Shared(self.env, self.clock, self.trace, self.runtime, executor)
        self.stack.push_async_callback(_cancel_jobs, shared)

    def _start_virtual(self) -> None:
        c = self.config
        # A closed broker model, like live mode's broker: the manager and every device are enrolled in
        # memory, their secrets drawn from the seed.
        ids = None if c.broker_open else VirtualIdentities(c.seed, WALL_EPOCH)
        self.virtual_identities = ids
        # Sessions and retained messages do not survive a restart: the live runner's brokers keep none.
        registry = ids.registry if ids is not None else None
        broker = self.broker_model = BrokerModel(self.env, persistence=False, max_queued=MAX_QUEUED_MESSAGES,
                                                 identities=registry)  # fmt: skip
        transport = VirtualTransport(self.env, broker, self.runtime)
        self.shared = Shared(self.env, self.clock, self.trace, self.runtime, None, transport)
        if c.manager and c.manager_settings:
            keys = ", ".join(f"manager.{k}" for k, _ in c.manager_settings)
            raise ValueError(f"{keys}: the virtual manager models only placement, max_attempts and "
                             "queue_timeout; run this scenario with --mode live")  # fmt: skip
        if c.manager:
            on_event = self.on_manager_event or (self.observer.on_event if self.observer else _ignore)
            mc = ManagerConfig(c.domain, c.heartbeat_interval, c.liveness_timeout, c.placement,
                               c.max_attempts, c.queue_timeout, timer_on_message=c.manager_live_timers,
                               timer_cap=None if c.manager_live_timers else 0)  # fmt: skip
            rng = random.Random(f"{c.seed}:manager")
            vm = self.virtual_manager = VirtualManager(self.env, broker, mc, on_event, rng)
            if ids is not None:
                creds = ids.manager(vm.client_id)
                vm.credentials = (creds.username, creds.password)
            vm.start()
            self.stack.callback(vm.kill, 15)
            # Faults and console lines join the task timelines, as in live runs, at the simulated time.
            feed = self.feed = TimelineFeed(lambda t: WALL_EPOCH + t, EngineSink(vm))
            self.trace.listeners.append(feed.on_event)
            self.stack.push_async_callback(_close_feed, self.trace, feed, None)  # before the manager stops
            if c.cohort:
                self.shared.cohort = HeartbeatCohort(self.env, broker, vm, c.heartbeat_interval,
                                                     c.liveness_timeout)  # fmt: skip

    async def commit_identities(self) -> None:
        """Write the identities enrolled since the last commit; returns once the broker admits them."""
        if self.identities is None or self.broker is None:
            return
        pid = self.broker.process.pid if self.broker.kind == "mosquitto" else None
        await self.identities.commit(self.broker.host, self.broker.port, pid)

    async def fleet(self, scenario: Scenario, on_fleet_fault: Callable[[FaultSpec], None], *,
                    start: bool = True, **options: Any) -> Fleet:  # fmt: skip
        """The scenario's fleet on this session's broker, started (``start``: else the caller adds
        devices itself); closed with the session, before the manager and the broker stop."""
        assert self.shared is not None, "start the session first (async with)"
        host, port = self.broker_address
        if self.virtual:
            options.setdefault("boards_as_devices", True)
            if self.virtual_identities is not None:
                options.setdefault("credentials", self.virtual_identities.device)
        elif self.identities is not None:
            options.setdefault("credentials", self.identities.device)
            options.setdefault("before_power_on", self.commit_identities)
        fleet = Fleet(scenario, self.shared, host, port, self.config.domain, on_fleet_fault, **options)
        self.stack.push_async_callback(_close_fleet, fleet)
        if start:
            await fleet.start()
        return fleet


async def _close_feed(trace: Trace, feed: TimelineFeed, close: Callable[[], Awaitable[None]] | None) -> None:
    trace.listeners.remove(feed.on_event)
    if close is not None:
        await close()
    trace.meta["timeline_feed"] = {"sent": feed.sent, "dropped": feed.dropped}


def _ignore(_event: Any, _t: float) -> None:
    pass


async def _close_fleet(fleet: Fleet) -> None:
    with contextlib.suppress(Exception):
        await fleet.close()


async def _cancel_jobs(shared: Shared) -> None:
    await cancel_and_wait(list(shared.jobs), "twin session: device jobs")
