"""``TwinCluster``: a broker, a manager and a simulated fleet that a test drives step by step.

The live runner plays a scenario written in advance; a test instead wants to act, then look::

    async with TwinCluster(broker="embedded", timers=Timers(0.5, 1.5, 2.0)) as c:
        await c.add_devices(kind="esp32s3", count=3, prefix="esp-")
        task = await c.submit("fib", inputs=[27], target="esp-1")
        await c.power_loss("esp-1")
        await c.wait_dead("esp-1", within=2.0)
        assert (await c.wait_task(task, timeout=20))["state"] == TaskState.COMPLETED

The parts are the runner's own: the broker and ``propeller manager`` as real processes
(``twin.services``), simulated devices behind per-device TCP link proxies (``twin.device``,
``twin.links``), faults through ``Fleet.inject`` so the trace records them as a scenario's faults do,
and the manager's log read by ``ManagerObserver``. The simulation runs at speed 1.0 from a background
task for as long as the cluster is open; trace times are seconds since the cluster started.

Waits measure from the last fault aimed at the device (its start for ``wait_dead``, its end for
``wait_alive``), or from the call when there was none, and fail with an ``AssertionError`` that says
what the manager last thought: they are the test's assertions.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

import httpx
import simpy

from orchestrator.adapters.aio import cancel_and_wait
from orchestrator.core.model import TaskState
from twin.clock import AsyncSimClock, LoopLagProbe
from twin.device import DeviceConfig, Shared, SimDevice, esp_spec
from twin.devices.host import HOST
from twin.fleet import Fleet
from twin.link_profile import CLEAN, LinkProfile
from twin.observer import ManagerObserver
from twin.scenario.expectations import Expectation, Verdict
from twin.scenario.fidelity import Fidelity, lag_budget
from twin.scenario.result import ScenarioResult
from twin.scenario.spec import DeviceRef, FleetGroup, ManagerSpec, Scenario, Target, Timers, WorkloadItem
from twin.scenario.trace import TERMINAL, Trace, TraceEvent
from twin.services import PLACEMENTS, Broker, Manager
from twin.session import SessionConfig, TwinSession
from twin.workload import Submission, Submitter, load_module

KINDS = ("esp32s3", "host", "upstream-firmware")
BUILTIN_FUNCTIONS = {"add": "add", "fib": "fib", "mem64k": "main"}
POLL_S = 0.02
FOREVER_S = 1e9  # the clock's horizon: the cluster runs until it is closed


@dataclass
class _Window:
    """The last fault aimed at a device: where ``wait_dead``/``wait_alive`` measure from."""

    start: float
    end: float | None  # None: until power_on
    lethal: bool  # the manager cannot miss it (the Last Will fires): alive again means a new alive event


class TwinCluster:
    """A started broker + manager + fleet; use as ``async with TwinCluster(...) as c``."""

    def __init__(
        self, broker: str = "embedded", timers: Timers | None = None, placement: str = "round_robin", *,
        max_attempts: int = 3, queue_timeout: float | None = None, seed: int = 0,
        work_dir: str | Path | None = None, name: str = "twin-cluster",
    ) -> None:  # fmt: skip
        if broker not in ("embedded", "mosquitto"):
            raise ValueError(f"TwinCluster broker must be 'embedded' or 'mosquitto', got {broker!r}")
        if placement not in PLACEMENTS:
            raise ValueError(f"TwinCluster placement must be one of {', '.join(PLACEMENTS)}, "
                             f"got {placement!r}")
        if timers is not None and not isinstance(timers, Timers):
            raise TypeError(f"TwinCluster timers must be a Timers, got {type(timers).__name__}")
        self.broker_kind, self.timers, self.placement = broker, timers or Timers(), placement
        self.max_attempts, self.queue_timeout, self.seed, self.name = max_attempts, queue_timeout, seed, name
        self._own_dir = work_dir is None
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="twin-cluster-"))
        self.domain = f"twin-{uuid.uuid4().hex[:12]}"
        meta = {"runner": "harness", "broker": broker, "work_dir": str(self.work_dir)}
        self.trace = Trace(name, seed, meta)
        self.env = simpy.Environment()
        self.clock = AsyncSimClock(self.env, 1.0)
        self.probe = LoopLagProbe()  # is this host keeping up with the timers? (fidelity())
        self.observer = ManagerObserver(self.trace, now=self.clock.target)
        self.broker: Broker | None = None
        self.manager: Manager | None = None
        self.fleet: Fleet | None = None
        self._api: httpx.AsyncClient | None = None
        self._shared: Shared | None = None
        self._session: TwinSession | None = None
        self._clock_task: asyncio.Task[None] | None = None
        self._submitter: Submitter | None = None
        self._groups: list[FleetGroup] = []
        self._refs: list[DeviceRef] = []
        self._ids: dict[str, str] = {}  # device name -> proplet id
        self._windows: dict[str, _Window] = {}
        self._task_names: dict[str, str] = {}  # task id -> trace name
        self._submitted = 0
        self._started = 0.0

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> TwinCluster:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close(keep_dir=exc_type is not None)

    async def start(self) -> None:
        """Start the broker, the manager and the simulation clock (``async with`` does this)."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._started = time.monotonic()
        t = self.timers
        config = SessionConfig(self.domain, t.heartbeat_interval, t.liveness_timeout, broker=self.broker_kind,
                               placement=self.placement, max_attempts=self.max_attempts,
                               queue_timeout=self.queue_timeout)  # fmt: skip
        session = TwinSession(config, self.trace, observer=self.observer, work_dir=self.work_dir,
                              env=self.env, clock=self.clock)  # fmt: skip
        self._session = session
        await session.__aenter__()
        self.broker, self.manager, self._shared = session.broker, session.manager, session.shared
        assert self.manager is not None
        self.fleet = await session.fleet(self.scenario, self._fleet_fault, start=False)
        self._clock_task = asyncio.get_running_loop().create_task(self.clock.run(FOREVER_S))
        self._api = httpx.AsyncClient(base_url=self.manager.api_url, timeout=10.0)
        self._submitter = Submitter(self.manager.api_url, self.observer, self._refs, self._ids,
                                    random.Random(f"{self.seed}:workload"), self.max_attempts,
                                    self.clock.target)  # fmt: skip
        await self._submitter.__aenter__()
        self.probe.start()  # after the start-up's one-off costs (e.g. the HTTP client's TLS context)

    def fidelity(self) -> Fidelity:
        """This cluster's scheduling lag so far against the budget its timers allow: when it is not
        ``faithful``, a missed bound may be the host's, not the system's (the pytest plugin then
        reports a failed test as skipped, with ``reason``)."""
        loop, sim = self.probe.stats(), self.clock.lag_stats()
        return Fidelity(lag_budget(self.timers), loop.p99_s, sim.p99_s, loop.max_s, loop.events)

    async def close(self, keep_dir: bool = False) -> None:
        """Stop everything started, whatever state it is in; never raises. The work directory (logs)
        is removed when the cluster made it and ``keep_dir`` is false."""
        self.observer.closed = True  # the teardown's deaths are not facts of the test
        self.probe.stop()
        if self._submitter is not None:
            with contextlib.suppress(Exception):
                await self._submitter.__aexit__(None, None, None)
        if self.fleet is not None:
            with contextlib.suppress(Exception):
                await self.fleet.close()
        await cancel_and_wait([self._clock_task], f"twin cluster {self.name} close")
        if self._api is not None:
            with contextlib.suppress(Exception):
                await self._api.aclose()
        if self._session is not None:  # the Wasm jobs, the manager, the broker, the runtime
            await self._session.__aexit__(None, None, None)
        self._submitter = self._api = self._clock_task = self._session = None
        self.fleet = None
        if self._own_dir and not keep_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    # ------------------------------------------------------------------ views
    @property
    def api(self) -> httpx.AsyncClient:
        """An httpx client on the manager's REST API (``await c.api.get("/proplets")``)."""
        if self._api is None:
            raise RuntimeError("the TwinCluster is not started (use `async with TwinCluster(...) as c`)")
        return self._api

    @property
    def now(self) -> float:
        """Seconds since the cluster started, on the trace's clock."""
        return float(self.clock.target())

    @property
    def devices(self) -> list[str]:
        return [d.name for d in self._refs]

    def proplet_id(self, device: str) -> str:
        return self._ids[self._check_device(device)]

    def alive(self, device: str) -> bool:
        """Whether the manager holds ``device`` alive, from its log."""
        return self.observer.alive(self._check_device(device))

    @property
    def scenario(self) -> Scenario:
        """The cluster described as a Scenario (fleet, timers, manager), for ``Expectation.evaluate``."""
        manager = ManagerSpec(self.placement, self.max_attempts, self.queue_timeout)
        return Scenario(self.name, self.seed, max(self.now, 0.001), tuple(self._groups), (),
                        broker=self.broker_kind, manager=manager, timers=self.timers,
                        source="<TwinCluster>")  # fmt: skip

    # ------------------------------------------------------------------ fleet
    async def add_devices(
        self, kind: str = "esp32s3", count: int = 1, prefix: str = "esp-", link: LinkProfile | None = None, *,
        tags: Sequence[str] = (), memory_bytes: int | None = None, online_within: float = 30.0,
    ) -> list[str]:  # fmt: skip
        """Power on ``count`` devices named ``prefix`` + index and wait until the manager holds each
        alive. Every device talks to the broker through its own link proxy (``link``, default clean),
        so ``link()`` faults work on any of them."""
        fleet, shared = self._started_fleet()
        if kind not in KINDS:
            raise ValueError(f"add_devices kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ValueError(f"add_devices count must be an integer >= 1, got {count!r}")
        if link is not None and not isinstance(link, LinkProfile):
            raise TypeError(f"add_devices link must be a LinkProfile, got {type(link).__name__}")
        group = FleetGroup(kind, count, prefix, tags=tuple(tags), memory_bytes=memory_bytes)
        first = self._extend_group(group)
        names = [f"{prefix}{i}" for i in range(first, first + count)]
        profile = link or CLEAN
        host_spec = replace(HOST, wasm_memory_budget_bytes=memory_bytes) if memory_bytes else HOST
        ids = random.Random(f"{self.seed}:proplet-ids:{len(self._refs)}")
        assert self.broker is not None
        for name in names:
            rng = random.Random(f"{self.seed}:link:{name}")
            broker = self.broker.host, self.broker.port
            control, host, port = await shared.net.link(name, *broker, profile, rng)
            fleet.links[name], fleet.link_profiles[name] = control, profile
            pid = str(uuid.UUID(int=ids.getrandbits(128), version=4))
            spec = esp_spec(group) if kind != "host" else host_spec
            config = DeviceConfig(name, kind, pid, self.domain, host, port, self.timers, spec,
                                  tuple(tags))  # fmt: skip
            if self._session is not None and self._session.identities is not None:  # a closed broker
                creds = self._session.identities.device(kind, pid)
                config = replace(config, username=creds.username, password=creds.password,
                                 signing_key=creds.signing_key)  # fmt: skip
            device = SimDevice(config, shared, random.Random(f"{self.seed}:device:{name}"))
            device.cut = control.sever  # a power loss or reset vanishes through the link, without a packet
            fleet.devices[name] = device
            self._ids[name] = pid
            self._refs.append(DeviceRef(name, kind, len(self._groups) - 1, tuple(tags)))
        self.observer.proplet_names = {pid: name for name, pid in self._ids.items()}
        if self._session is not None:
            await self._session.commit_identities()  # admitted by the broker before they power on
        for name in names:
            self.clock.inject(fleet.devices[name].power_on, 0.0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + online_within
        while not all(self.observer.alive(n) for n in names):
            if loop.time() > deadline:
                late = [f"{n} ({fleet.devices[n].summary()['state'] or 'off'})" for n in names
                        if not self.observer.alive(n)]  # fmt: skip
                raise AssertionError(f"{', '.join(late)} did not come online within {online_within:g} s "
                                     f"(manager log: {self.work_dir / 'manager.log'})")  # fmt: skip
            await asyncio.sleep(POLL_S)
        return names

    def _extend_group(self, group: FleetGroup) -> int:
        """Record ``group`` in the scenario's fleet; returns the first index of its new devices. A
        prefix used again continues its numbering, if the devices are alike."""
        for i, old in enumerate(self._groups):
            if old.prefix == group.prefix:
                if replace(old, count=group.count) != group:
                    raise ValueError(f"add_devices prefix {group.prefix!r} is already used by devices of "
                                     f"another kind or configuration ({old.kind}); pick another "
                                     "prefix")  # fmt: skip
                self._groups[i] = replace(old, count=old.count + group.count)
                return old.count + 1
        self._groups.append(group)
        return 1

    def _started_fleet(self) -> tuple[Fleet, Shared]:
        if self.fleet is None or self._shared is None:
            raise RuntimeError("the TwinCluster is not started (use `async with TwinCluster(...) as c`)")
        return self.fleet, self._shared

    def _check_device(self, device: str) -> str:
        if device not in self._ids:
            known = ", ".join(self._ids) or "none yet: call add_devices first"
            raise ValueError(f"no device named {device!r} in this cluster (devices: {known})")
        return device

    # ------------------------------------------------------------------ tasks
    async def submit(
        self, module: str = "add", *, name: str | None = None, function: str | None = None,
        inputs: Sequence[Any] = (), target: str | None = None, memory_bytes: int | None = None,
        limits: dict[str, float] | None = None,
    ) -> str:  # fmt: skip
        """Create and start a task; returns the manager's task id.

        ``module``: add, fib, mem64k or a .wat/.wasm path. ``function``: the export to call (default:
        the built-in's, else ``main``). ``name``: the task's name in the trace (default
        ``<function>-<n>``). ``target``: a device name to pin the task to (None: the manager places it)."""
        self._started_fleet()
        assert self._submitter is not None
        if target is not None:
            self._check_device(target)
        self._submitted += 1
        fn = function or BUILTIN_FUNCTIONS.get(module, "main")
        label = name or f"{fn}-{self._submitted}"
        item = WorkloadItem(fn, module, fn, inputs=tuple(inputs), memory_bytes=memory_bytes,
                            target=Target(device=target) if target else None,
                            limits=dict(limits or {}))  # fmt: skip
        load_module(module)  # a bad module is the caller's mistake: raise here, not as a failed submission
        errors = len(self._submitter.errors)
        task_id = await self._submitter.submit(Submission(item, label, self.now))
        if task_id is None:
            reason = "; ".join(self._submitter.errors[errors:]) or "unknown error"
            raise RuntimeError(f"task {label} could not be submitted: {reason}")
        self._task_names[task_id] = label
        return task_id

    async def wait_task(self, task_id: str, timeout: float = 30.0) -> dict[str, Any]:
        """The task's JSON once it is terminal (``state`` is a TaskState number); AssertionError when
        it is not within ``timeout`` seconds. Retries while the manager is away."""
        __tracebackhide__ = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        view: dict[str, Any] = {}
        while True:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                response = await self.api.get(f"/tasks/{task_id}")
                if response.status_code == 404:
                    raise ValueError(f"the manager has no task {task_id}")
                if response.status_code == 200:
                    view = response.json()
                    if TaskState(int(view.get("state", -1))).is_terminal:
                        # The store is authoritative; the log may not have told the trace the end.
                        self.observer.reconcile([view], self.now)
                        return view
            if loop.time() > deadline:
                label = self._task_names.get(task_id, task_id)
                last = _describe_task(view, self.observer)
                raise AssertionError(f"task {label} did not finish within {timeout:g} s "
                                     f"(last manager view: {last})")  # fmt: skip
            await asyncio.sleep(POLL_S * 5)

    async def wait_running(self, task_id: str, timeout: float = 10.0) -> str:
        """The device the task runs on, once the manager dispatched it (from its log)."""
        __tracebackhide__ = True
        label = self._task_names.get(task_id, task_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            history = self.trace.tasks().get(label)
            final = history.final if history is not None else None
            if final is not None and final.data.get("state") == "Running" and final.data.get("device"):
                return str(final.data["device"])
            if loop.time() > deadline:
                last = final.data.get("state") if final is not None else "not seen in the manager's log"
                raise AssertionError(f"task {label} was not running within {timeout:g} s (last: {last})")
            await asyncio.sleep(POLL_S)

    async def wait_tasks(self, task_ids: Sequence[str], timeout: float = 30.0) -> list[dict[str, Any]]:
        """``wait_task`` for several, sharing one ``timeout``."""
        return list(await asyncio.gather(*(self.wait_task(t, timeout) for t in task_ids)))

    # ------------------------------------------------------------------ device faults
    def _inject(self, device: str, kind: str, duration: float | None, params: dict[str, Any]) -> None:
        fleet, _shared = self._started_fleet()
        self._check_device(device)
        start = self.now
        # A reboot lasts no time of its own (its window ends at once); the fleet takes no duration for it.
        self.clock.inject(fleet.inject, device, kind, None if kind == "reboot" else duration, params)
        end = start + duration if duration is not None else None
        self._windows[device] = _Window(start, end, kind in ("power_loss", "reboot", "clean_shutdown"))

    async def power_loss(self, device: str, off_for: float | None = None) -> None:
        """Cut the device's power: it sends nothing more (the broker fires its will when the keep-alive
        expires); back after ``off_for`` seconds, or off until ``power_on``."""
        self._inject(device, "power_loss", off_for, {})

    async def clean_shutdown(self, device: str, off_for: float | None = None) -> None:
        """Orderly power-off: ``offline``, then DISCONNECT (no will); back after ``off_for`` seconds, or
        off until ``power_on``."""
        self._inject(device, "clean_shutdown", off_for, {})

    async def power_on(self, device: str) -> None:
        fleet, _shared = self._started_fleet()
        self.clock.inject(fleet.devices[self._check_device(device)].power_on, 0.0)
        window = self._windows.get(device)
        if window is not None and window.end is None:
            window.end = self.now

    async def wifi_drop(self, device: str, duration: float) -> None:
        """The radio goes silent for ``duration`` s: a half-open TCP link only keep-alive can detect."""
        self._inject(device, "wifi_drop", _positive(duration, "wifi_drop duration"), {})

    async def reboot(self, device: str) -> None:
        """Watchdog reset: silence, then a reboot whose reconnect takes the old session over (the
        broker fires the old will then)."""
        self._inject(device, "reboot", 0.0, {})

    async def out_of_memory(
        self, device: str, reserve_bytes: int | None, duration: float | None = None
    ) -> None:
        """A leak takes ``reserve_bytes`` of the Wasm heap (None: all free), back after ``duration``."""
        params = {"reserve_bytes": reserve_bytes} if reserve_bytes else {}
        self._inject(device, "out_of_memory", duration, params)

    async def link(self, device: str, profile: LinkProfile, duration: float | None = None) -> None:
        """Put ``profile`` on the device's link (latency, loss, blackhole...), restored after ``duration``."""
        if not isinstance(profile, LinkProfile):
            raise TypeError(f"link profile must be a LinkProfile, got {type(profile).__name__}")
        params = {"latency": profile.latency_s, "jitter": profile.jitter_s, "loss": profile.loss,
                  "blackhole": profile.blackhole, "bandwidth": profile.bandwidth_bps}  # fmt: skip
        self._inject(device, "link", duration, params)

    # ------------------------------------------------------------------ fleet-wide faults
    def _fleet_fault(self, spec: Any) -> None:
        raise ValueError(f"{spec.kind}: use TwinCluster.restart_broker / kill_manager")

    def _mark(self, subject: str, fault: str, phase: str, params: dict[str, Any]) -> None:
        self.trace.emit(self.now, "fault", subject, fault=fault, phase=phase, params=params)

    async def restart_broker(self, downtime: float = 1.0) -> None:
        """Kill the broker (SIGKILL: every connection drops at once), restart it on the same port after
        ``downtime`` s; returns when it listens again."""
        assert self.broker is not None, "the TwinCluster is not started"
        params = {"downtime": _positive(downtime, "restart_broker downtime")}
        self._mark("broker", "broker_restart", "start", params)
        await self.broker.stop(signal.SIGKILL)
        await asyncio.sleep(downtime)
        await self.broker.start()
        self._mark("broker", "broker_restart", "end", params)

    async def kill_manager(self, restart_after: float | None = 1.0, sig: int = signal.SIGKILL) -> None:
        """``kill -9`` the manager; restart it on the same database and API port after
        ``restart_after`` s (returns when its API answers), or leave it down (None: ``start_manager``)."""
        assert self.manager is not None, "the TwinCluster is not started"
        params: dict[str, Any] = {"signal": int(sig), "restart_after": restart_after}
        self._mark("manager", "manager_kill", "start", params)
        await self.manager.process.kill(sig)
        if restart_after is None:
            return
        await asyncio.sleep(_positive(restart_after, "kill_manager restart_after"))
        await self.start_manager()
        self._mark("manager", "manager_kill", "end", params)

    async def start_manager(self) -> None:
        assert self.manager is not None, "the TwinCluster is not started"
        await self.manager.start()

    # ------------------------------------------------------------------ observations
    async def wait_dead(self, device: str, within: float) -> float:
        """Seconds from the start of the device's last fault (or from now) until the manager marked it
        dead; AssertionError when that takes longer than ``within``."""
        __tracebackhide__ = True
        _positive(within, "within")
        self._check_device(device)
        window = self._windows.get(device)
        ref = window.start if window is not None else self.now
        while True:
            events = self._views(device)
            hit = next((e.t for e in events if e.t >= ref and not e.data["alive"]), None)
            if hit is not None:
                return max(0.0, hit - ref)
            if self.now > ref + within:
                self._missed(device, "dead", within)
            await asyncio.sleep(POLL_S)

    async def wait_alive(self, device: str, within: float) -> float:
        """Seconds from the end of the device's last fault (or from now) until the manager holds it
        alive again; AssertionError when that takes longer than ``within``. After a power loss or a
        reboot the manager must have seen the device come back; after a Wi-Fi drop or a link fault
        that it did not notice, the answer is 0. A fault without an end (``power_loss`` with no
        ``off_for``) ends at ``power_on``; until then the bound counts from this call."""
        __tracebackhide__ = True
        _positive(within, "within")
        self._check_device(device)
        called = self.now
        what = "alive again" if device in self._windows else "alive"
        while True:
            window = self._windows.get(device)
            ref = called if window is None or window.end is None else window.end
            events = self._views(device)
            last = events[-1] if events else None
            ended = window is None or (window.end is not None and self.now >= window.end)
            back = last is not None and last.data["alive"] and (
                window is None or not window.lethal or last.t > window.start
            )
            if ended and back and last is not None:
                return max(0.0, last.t - ref)
            if self.now > max(ref, called) + within:
                self._missed(device, what, within)
            await asyncio.sleep(POLL_S)

    def _views(self, device: str) -> list[TraceEvent]:
        return [e for e in self.trace.of("proplet") if e.subject == device]

    def _missed(self, device: str, what: str, within: float) -> NoReturn:
        __tracebackhide__ = True  # pytest: the failure points at the test's wait, not in here
        view = self._last_view(device)
        raise AssertionError(f"{device} was not marked {what} within {within:g} s (last manager view: "
                             f"{view})")  # fmt: skip

    def _last_view(self, device: str) -> str:
        events = [e for e in self.trace.of("proplet") if e.subject == device]
        if not events:
            return "never announced"
        last = events[-1]
        return "alive" if last.data["alive"] else f"dead ({last.data.get('reason') or 'no reason'})"

    # ------------------------------------------------------------------ verdicts and report
    def evaluate(self, *expectations: Expectation) -> list[Verdict]:
        """Judge the trace so far with scenario expectations (``twin.scenario.expectations``)."""
        scenario = replace(self.scenario, expect=tuple(expectations))
        return [e.evaluate(self.trace, scenario) for e in expectations]

    def check(self, *expectations: Expectation) -> list[Verdict]:
        """As ``evaluate``; AssertionError naming every expectation that does not hold."""
        verdicts = self.evaluate(*expectations)
        failed = [f"{v.name}: {v.detail}" for v in verdicts if not v.passed]
        if failed:
            raise AssertionError("expectations failed:\n  " + "\n  ".join(failed))
        return verdicts

    def report(self, path: str | Path, *expectations: Expectation) -> Path:
        """Write the HTML report (timeline, tasks, verdicts of ``expectations``) and the trace next
        to it (``.trace.jsonl``); returns the report's path."""
        from twin.scenario.report import write_report  # lazy: matplotlib

        scenario = replace(self.scenario, expect=tuple(expectations))
        result = ScenarioResult(scenario, self.trace, self.evaluate(*expectations),
                                time.monotonic() - self._started)  # fmt: skip
        html = Path(path)
        result.outputs["trace"] = str(self.trace.write(html.with_name(html.stem + ".trace.jsonl")))
        return write_report(result, html)


def _positive(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"{what} must be a number of seconds >= 0, got {value!r}")
    return float(value)


def _describe_task(view: dict[str, Any], observer: ManagerObserver) -> str:
    if not view:
        return "never answered"
    try:
        text = TaskState(int(view.get("state", -1))).label
    except ValueError:
        text = f"state {view.get('state')!r}"
    if view.get("proplet_id"):
        text += f" on {observer.device(str(view['proplet_id']))}"
    if view.get("error"):
        text += f", error {view['error']!r}"
    return text


__all__ = ["KINDS", "TERMINAL", "LinkProfile", "Timers", "TwinCluster"]
