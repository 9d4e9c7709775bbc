"""The live scenario runner: the real broker and manager processes, a simulated fleet, faults on a script.

Fidelity: the run measures its own scheduling lag (the event loop, with ``LoopLagProbe``, and the simpy
driver) and records it in ``trace.meta["fidelity"]`` against the budget its timers allow
(``twin.scenario.fidelity``); a run on a host that could not keep up is judged ``inconclusive``, not
failed.

``create_runner("live", **options)`` (called by ``twin.scenario.get_runner``) returns a ``LiveRunner``.
One run: start the broker (its own process) and the manager (``propeller manager``, observed through its
log), build the fleet on one simpy ``Environment`` driven by ``AsyncSimClock`` at speed 1.0 (the protocol
timers are compressed by the scenario instead), submit the workload through the REST API, inject the
faults at their times, and at the end reconcile every task's final state from the API. The runner only
fills the ``Trace``; ``run_scenarios`` judges it and writes the reports.

Options: ``log_dir`` (where the manager and broker logs are kept; default a fresh temporary directory,
named in ``trace.meta``); ``hil_map`` (a hardware-map YAML, default ``$PROPELLER_HIL_MAP``): board ports
that name one of its boards open that real board. Everything started is stopped on every exit path,
Ctrl-C included.

Boards (``kind: board``): once the clock runs, ``ScenarioBoards`` opens them (``port: virtual`` or an
``esp32sim://`` URL is a virtual board whose network side is a twin esp32s3 device; a hardware-map
name is the real board of the map, and without a map a virtual one; a device path is a real board),
provisions each over its console to this run's broker, domain and channel, and waits for its
``mqtt_connected`` line. Every console line becomes a ``console`` trace event; board faults go
through ``ScenarioBoards.fault``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import tempfile
import time
import uuid
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import httpx
import psutil
import simpy

from hil import esp32sim
from hil.rig import BoardSpec, load_map
from hil.scenario_boards import ScenarioBoards
from orchestrator.adapters.aio import cancel_and_wait
from twin.clock import AsyncSimClock, LoopLagProbe
from twin.fleet import Fleet
from twin.observer import ManagerObserver
from twin.scenario import RunnerUnavailable
from twin.scenario.fidelity import Fidelity, lag_budget
from twin.scenario.spec import FaultSpec, Scenario
from twin.scenario.trace import Trace, TraceEvent
from twin.services import Broker, Manager
from twin.session import SessionConfig, TwinSession
from twin.virtual import HIL_MAP_ENV, VirtualRunner, is_real_port
from twin.workload import Submission, Submitter, list_tasks, schedule

MODES = ("live", "virtual")
SETTLE_S = 2.0  # after the run: let in-flight submissions finish before judging
BOARD_JOIN_S = 20.0  # provisioned board to mqtt_connected: boot, Wi-Fi, MQTT (a real board ~5 s)
CHANNEL = "default"  # the twin's manager and devices all use the default channel


def board_port(port: str, hw_names: Collection[str] | None) -> str:
    """What ``ScenarioBoards.open`` gets for a scenario's board ``port``, given the hardware map's board
    names (None: no map). Without a map, a board name runs as a virtual board, so the same scenario
    runs on a laptop and, given the rig's map, on the real boards."""
    if is_real_port(port, hw_names or ()) or port == "virtual" or port.startswith("esp32sim://"):
        return port
    if hw_names is not None:
        known = ", ".join(sorted(hw_names)) or "none"
        raise ValueError(f"board port {port!r} is not in the hardware map (boards: {known})")
    return "virtual"


def create_runner(mode: str = "live", **options: Any) -> LiveRunner | VirtualRunner:
    """``live``: real broker and manager processes, wall-clock time. ``virtual``: the same cores on
    simpy's virtual clock over the broker model (``twin.virtual``); it takes no options but ``log_dir``
    and ``hil_map``, which it ignores (nothing is logged to files; real boards are refused)."""
    if mode not in MODES:
        raise RunnerUnavailable(f"twin.runner has no {mode!r} mode (modes: {', '.join(MODES)}, or replay)")
    if mode == "virtual":
        return VirtualRunner(**options)
    return LiveRunner(**options)


class LiveRunner:
    def __init__(self, log_dir: str | Path | None = None, hil_map: str | Path | None = None) -> None:
        self.log_dir = Path(log_dir) if log_dir is not None else None
        given = hil_map if hil_map is not None else os.environ.get(HIL_MAP_ENV) or None
        self.hw_map: list[BoardSpec] | None = load_map(Path(given)) if given else None
        self.last: dict[str, Any] = {}  # figures of the last run (also in trace.meta["live"])

    async def run(self, scenario: Scenario, trace: Trace, progress: Callable[[float], None]) -> None:
        work = self.log_dir / scenario.name if self.log_dir is not None else \
            Path(tempfile.mkdtemp(prefix=f"twin-{scenario.name}-"))  # fmt: skip
        work.mkdir(parents=True, exist_ok=True)
        run = _Run(scenario, trace, progress, work, self.hw_map)
        # Hundreds of devices retrying a restarting broker would each log every failed attempt.
        quiet = logging.getLogger("orchestrator.adapters.mqtt")
        level = quiet.level
        quiet.setLevel(logging.WARNING)
        try:
            await run.execute()
        finally:
            await run.teardown()
            quiet.setLevel(level)
            self.last = dict(trace.meta.get("live", {}))


class _Run:
    def __init__(
        self, scenario: Scenario, trace: Trace, progress: Callable[[float], None], work: Path,
        hw_map: list[BoardSpec] | None = None,
    ) -> None:  # fmt: skip
        self.scenario, self.trace, self.progress, self.work = scenario, trace, progress, work
        self.hw_map = hw_map
        self.hw_names = {b.name for b in hw_map or []}
        self.boards: ScenarioBoards | None = None
        self.board_error: str | None = None
        self.sims: list[str] = []  # esp32sim:// boards this run created
        self.env = simpy.Environment()
        self.clock = AsyncSimClock(self.env, 1.0)
        self.domain = f"twin-{uuid.uuid4().hex[:12]}"
        self.observer = ManagerObserver(trace, now=self.clock.target)
        m, t = scenario.manager, scenario.timers
        self.session = TwinSession(
            SessionConfig(self.domain, t.heartbeat_interval, t.liveness_timeout, broker=scenario.broker,
                          placement=m.placement, max_attempts=m.max_attempts, queue_timeout=m.queue_timeout,
                          manager_settings=m.settings),
            trace, observer=self.observer, work_dir=work, env=self.env, clock=self.clock,
        )  # fmt: skip
        self.broker: Broker | None = None
        self.manager: Manager | None = None
        self.fleet: Fleet | None = None
        self.fleet_jobs: set[asyncio.Task[None]] = set()
        self.submissions: set[asyncio.Task[Any]] = set()
        self.cpu0 = psutil.Process().cpu_times()
        self.probe = LoopLagProbe()  # the loop's own lag: is this host keeping up? (fidelity)

    def _spawn(self, coro: Any, into: set[asyncio.Task[Any]]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        into.add(task)
        task.add_done_callback(into.discard)

    async def execute(self) -> None:
        s, trace = self.scenario, self.trace
        trace.meta.update(
            {"runner": "live", "seed": s.seed, "work_dir": str(self.work), "domain": self.domain}
        )
        m = s.manager
        if m.store != "sqlite":
            raise ValueError(f"manager.store {m.store!r}: the live runner runs the manager on SQLite only")
        await self.session.__aenter__()
        self.broker, self.manager = self.session.broker, self.session.manager
        assert self.manager is not None
        self.fleet = await self.session.fleet(s, self._fleet_fault, on_board_fault=self._board_fault,
                                              real_port=self._real_port)  # fmt: skip
        self.observer.proplet_names = self.fleet.proplet_names
        if self.fleet.boards:
            self._spawn(self._start_boards(), self.fleet_jobs)
        async with Submitter(self.manager.api_url, self.observer, s.devices(), self.fleet.proplet_ids,
                             s.rng("workload"), m.max_attempts, self.clock.target) as submitter:  # fmt: skip
            for sub in schedule(s.workload):
                self.env.timeout(sub.at).callbacks.append(self._submit_at(submitter, sub))
            self.env.process(self._progress())
            started = time.monotonic()
            self.probe.start()
            try:
                await self.clock.run(s.duration_s)
            finally:
                self.probe.stop()
            wall = time.monotonic() - started
            if self.submissions:
                await asyncio.wait(set(self.submissions), timeout=SETTLE_S)
            for job in list(self.submissions):
                job.cancel()
            await self._reconcile()
            self.observer.closed = True
            self._figures(wall, submitter.errors)
        if self.board_error is not None:
            raise RuntimeError(self.board_error)

    def _submit_at(self, submitter: Submitter, sub: Submission) -> Callable[[Any], None]:
        return lambda _ev: self._spawn(submitter.submit(sub), self.submissions)

    def _progress(self) -> Any:
        while True:
            self.progress(self.env.now / self.scenario.duration_s)
            yield self.env.timeout(0.5)

    async def _reconcile(self) -> None:
        if self.manager is None or not self.manager.process.running:
            self.trace.emit(
                self.env.now, "note", "manager", text="manager not running at the end: no reconcile"
            )
            return
        async with httpx.AsyncClient(timeout=10.0) as client:
            try:
                views = await list_tasks(client, self.manager.api_url)
            except httpx.HTTPError as exc:
                self.trace.emit(self.env.now, "note", "manager", text=f"could not list tasks: {exc}")
                return
        changed = self.observer.reconcile(views, float(self.env.now))
        self.trace.meta["reconciled_tasks"] = changed

    def _figures(self, wall: float, errors: list[str]) -> None:
        assert self.fleet is not None
        devices = list(self.fleet.devices.values())
        online = [d.stats.first_online for d in devices if d.stats.first_online is not None]
        me = psutil.Process()
        cpu = me.cpu_times()
        lag = self.clock.lag_stats()
        figures = {
            "devices": len(devices),
            "devices_online_once": len(online),
            "all_online_at_s": round(max(online), 3) if len(online) == len(devices) and online else None,
            "wall_s": round(wall, 3),
            "runner_cpu_s": round((cpu.user - self.cpu0.user) + (cpu.system - self.cpu0.system), 3),
            "runner_rss_mib": round(me.memory_info().rss / 2**20, 1),
            "sim_lag_ms": {"median": round(lag.median_s * 1e3, 2), "p99": round(lag.p99_s * 1e3, 2),
                           "max": round(lag.max_s * 1e3, 2)},
            "faults_injected": self.fleet.faults_injected,
            "manager_log_events": self.observer.events,
            "submit_errors": errors[:20],
            "tasks_run_on_devices": sum(d.stats.tasks_run for d in devices),
            "instances_refused": sum(d.stats.refused for d in devices),
            "boards": len(self.fleet.boards),
            "tasks_run_on_virtual_boards": sum(b.device.device.stats.tasks_run
                                               for b in self.fleet.boards.values() if b.device is not None),
        }  # fmt: skip
        for proc, key in ((self.broker, "broker"), (self.manager, "manager")):
            pid = proc.process.pid if proc is not None and proc.process.running else None
            if pid is not None:
                with contextlib.suppress(psutil.Error):
                    p = psutil.Process(pid)
                    t = p.cpu_times()
                    figures[f"{key}_cpu_s"] = round(t.user + t.system, 3)
                    figures[f"{key}_rss_mib"] = round(p.memory_info().rss / 2**20, 1)
        self.trace.meta["live"] = figures
        loop = self.probe.stats()
        fidelity = Fidelity(lag_budget(self.scenario.timers), loop.p99_s, lag.p99_s, loop.max_s, loop.events)
        self.trace.meta["fidelity"] = fidelity.to_meta()
        if not fidelity.faithful:
            self.trace.emit(float(self.env.now), "note", "runner",
                            text=f"this host could not keep up: {fidelity.reason}")  # fmt: skip
        for e in errors:
            self.trace.emit(float(self.env.now), "note", "workload", text=e)

    # ------------------------------------------------------------------ fleet-wide faults
    def _fleet_fault(self, spec: FaultSpec) -> None:
        if spec.kind == "broker_restart":
            self._spawn(self._broker_restart(spec), self.fleet_jobs)
        elif spec.kind == "manager_kill":
            self._spawn(self._manager_kill(spec), self.fleet_jobs)

    def _mark(self, subject: str, fault: str, phase: str, params: Any) -> None:
        self.trace.emit(self.clock.target(), "fault", subject, fault=fault, phase=phase, params=dict(params))

    async def _broker_restart(self, spec: FaultSpec) -> None:
        assert self.broker is not None
        downtime = spec.duration if spec.duration is not None else 5.0
        self._mark("broker", "broker_restart", "start", {"downtime": downtime})
        await self.broker.stop(signal.SIGKILL)
        await asyncio.sleep(downtime)
        await self.broker.start()
        self._mark("broker", "broker_restart", "end", {"downtime": downtime})

    async def _manager_kill(self, spec: FaultSpec) -> None:
        assert self.manager is not None
        sig = int(spec.params.get("signal", 9))
        after = spec.params.get("restart_after", 5.0)
        self._mark("manager", "manager_kill", "start", {"signal": sig, "restart_after": after})
        await self.manager.process.kill(signal.Signals(sig))
        if after is None:
            return
        await asyncio.sleep(float(after))
        await self.manager.start()
        self._mark("manager", "manager_kill", "end", {"signal": sig, "restart_after": after})

    # ------------------------------------------------------------------ boards
    def _real_port(self, port: str) -> bool:
        return is_real_port(port, self.hw_names)

    def _board_port(self, port: str) -> str:
        return board_port(port, self.hw_names if self.hw_map is not None else None)

    async def _start_boards(self) -> None:
        assert self.fleet is not None and self.broker is not None
        members = self.fleet.boards
        # ScenarioBoards stamps console lines on time.monotonic (the loop's clock): map it onto ours.
        t0 = time.monotonic() - self.clock.target()
        loop = asyncio.get_running_loop()

        def on_console(device: str, t: float, data: dict[str, Any]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: the run is over
                loop.call_soon_threadsafe(self._console, device, t, data)

        def factory(name: str) -> Any:
            return members[name].device

        boards = self.boards = ScenarioBoards(self.work / "boards", hw_map=self.hw_map, on_console=on_console,
                                              t0=t0, device_factory=factory)  # fmt: skip
        broker = f"{self.broker.host}:{self.broker.port}"

        def join() -> None:
            for name, member in members.items():
                port = self._board_port(member.port)
                if port.startswith("esp32sim://") and member.device is not None:
                    esp32sim.register()
                    esp32sim.create_board(port.removeprefix("esp32sim://"), member.device)
                    self.sims.append(port.removeprefix("esp32sim://"))
                boards.open(name, port)
            # Boards are enrolled like upstream devices with the run's key (twin/identities.py).
            key = self.session.identities.board_key if self.session.identities is not None else "twin"
            boards.provision_all(broker=broker, domain=self.domain, channel=CHANNEL, api_key=key,
                                 proplet_ids={n: b.proplet_id for n, b in members.items()})  # fmt: skip
            for board in boards.boards.values():
                board.expect_event("mqtt_connected", timeout=BOARD_JOIN_S)

        try:
            await asyncio.to_thread(join)
        except Exception as exc:  # the run goes on; its end reports the boards' failure
            self.board_error = f"boards could not join the scenario: {exc}"
            self.trace.emit(self.clock.target(), "note", "boards", text=self.board_error)
            return
        self.trace.emit(self.clock.target(), "note", "boards", text=f"{len(members)} boards joined")

    def _console(self, device: str, t: float, data: dict[str, Any]) -> None:
        if data.get("kind") in ("prompt", "echo"):
            return  # the shell redraws its prompt around every log line: noise, kept in the console log
        self.trace.append(TraceEvent(max(0.0, t), "console", device, data))

    def _board_fault(self, name: str, action: str, down: float | None) -> None:
        self._spawn(self._board_action(name, action, down), self.fleet_jobs)

    async def _board_action(self, name: str, action: str, down: float | None) -> None:
        boards = self.boards
        try:
            if boards is None or name not in boards.boards:
                raise RuntimeError("the board has not joined yet")
            await asyncio.to_thread(boards.fault, name, action)
            if action == "unplug" and down is not None:
                await asyncio.sleep(down)
                await asyncio.to_thread(boards.fault, name, "replug")
        except Exception as exc:
            self.trace.emit(self.clock.target(), "note", name, text=f"board fault {action} failed: {exc}")

    # ------------------------------------------------------------------ teardown
    async def teardown(self) -> None:
        """Stop everything this run started, whatever happened; never raises."""
        self.observer.closed = True
        for jobs in (self.fleet_jobs, self.submissions):
            await cancel_and_wait(list(jobs), "scenario teardown")
        if self.boards is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.boards.close)
        for name in self.sims:
            esp32sim.remove_board(name)
        # The fleet, the Wasm jobs, the manager and the broker: the session stops what it started.
        await self.session.__aexit__(None, None, None)
