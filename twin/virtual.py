"""Virtual time: the whole scenario — manager engine, fleet, broker, faults — on simpy's clock.

``VirtualRunner`` (``create_runner("virtual")``, ``propeller scenario run --mode virtual``) runs the same
scenario file with the same cores as the live runner: the orchestrator ``Engine`` (sans-I/O, as
``propeller manager`` runs it), the proplet engine and device models in ``SimDevice``, the same
``Fleet`` and fault script, the same workload rules and the same ``ManagerObserver``. What changes is
only what carries bytes and time:

- broker process (amqtt or Mosquitto) -> ``BrokerModel`` (QoS 0/1, retained, sessions, keep-alive,
  wills, client-id takeover);
- ``propeller manager`` process and its SQLite store -> ``VirtualManager``: the engine, a
  ``ModelClient``, an in-memory store of what it persisted, the same timer loop;
- REST API calls (``Submitter``) -> ``VirtualSubmitter``: the same calls on the engine, the same
  retries on the same errors;
- ``MqttClient`` + ``LinkProxy`` per device -> ``ModelClient`` + ``ModelLink`` (``twin.transport``);
- wasmtime in a thread, host tasks lasting their wall time -> wasmtime called synchronously (the true
  result), every duration from the device model (ESP32-S3 CPU model, host model);
- the scaled wall clock -> ``simpy.Environment.run``: as fast as the host goes, whatever its load.

Process faults become their model: ``broker_restart`` = the broker model drops every connection
without wills and forgets its sessions (Mosquitto with ``persistence false``, as the live runner
configures it); ``manager_kill`` with signal 9 = the engine is lost, the OS closes its socket (the
broker fires its will), and after ``restart_after`` a new engine is restored from the commands it had
persisted (``Engine.restore``, as the manager restores from its store); signal 15 = a clean stop.
Boards have no serial console in virtual time: a virtual board is its twin esp32s3 device, and
``reset`` / ``power_cycle`` / ``unplug`` act on it as a reboot / brownout / power loss; real boards are
refused.

Everything random comes from the scenario's seed (task ids too), and the manager's wall clock is a
fixed epoch plus simulated time, so a seed gives the same trace, event for event (``trace_hash``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import time
from collections.abc import Callable, Collection, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import simpy

from orchestrator.core.engine import Engine
from orchestrator.core.errors import EngineError
from orchestrator.core.model import Task
from twin.fleet import Fleet
from twin.observer import ManagerObserver, TaskRef
from twin.scenario.spec import DeviceRef, FaultSpec, Scenario
from twin.scenario.trace import Trace
from twin.vmanager import VirtualManager
from twin.workload import Submission, load_module, pick_device, retryable, schedule, task_spec

if TYPE_CHECKING:
    from twin.session import TwinSession

HIL_MAP_ENV = "PROPELLER_HIL_MAP"
PROGRESS_STEP_S = 1.0


def is_real_port(port: str, hw_names: Collection[str]) -> bool:
    """A board port that names real hardware: a hardware-map entry or a device path."""
    return port in hw_names or port.startswith("/") or port.upper().startswith("COM")


@dataclass
class VirtualSubmitter:
    """``twin.workload.Submitter`` in virtual time: the same calls on the engine and the same retries
    (a 409 or an absent manager: again in ``retry_s``, for ``give_up_s``; a 400 never)."""

    env: simpy.Environment
    manager: VirtualManager
    observer: ManagerObserver
    fleet: Sequence[DeviceRef]
    proplet_ids: Mapping[str, str]
    rng: random.Random
    max_attempts: int
    retry_s: float = 0.25
    give_up_s: float = 30.0
    errors: list[str] = field(default_factory=list)
    _modules: dict[str, bytes] = field(default_factory=dict)

    def module(self, sub: Submission) -> bytes:
        item = sub.item
        if item.module not in self._modules:
            self._modules[item.module] = load_module(item.module)
        return self._modules[item.module]

    def submit(self, sub: Submission) -> Generator[simpy.Event, Any, None]:
        item, wasm = sub.item, self.module(sub)
        device = pick_device(item.target, self.fleet, self.observer.alive, self.rng)
        spec = task_spec(item, wasm, max_attempts=self.max_attempts,
                         proplet_id=self.proplet_ids[device] if device else None)  # fmt: skip
        created: list[Task] = []
        wall = self.manager.wall
        yield from self._call(sub.name, "POST /tasks", lambda e: created.append(e.create_task(spec, wall)))
        if not created:
            return
        task_id = created[0].id
        self.observer.register(task_id, TaskRef(sub.name, item.name, item.memory_bytes), float(self.env.now))
        yield from self._call(sub.name, f"POST /tasks/{task_id}/start",
                              lambda e: e.start_task(task_id, self.manager.now, self.manager.wall),
                              start=True)  # fmt: skip

    def _call(self, name: str, what: str, call: Callable[[Engine], Any],
              start: bool = False) -> Generator[simpy.Event, Any, None]:  # fmt: skip
        deadline = float(self.env.now) + self.give_up_s
        last = ""
        while float(self.env.now) < deadline:
            engine = self.manager.engine
            if engine is None:
                last = "ConnectError: the manager is not running"
            else:
                try:
                    call(engine)
                    self.manager.flush()
                    return
                except EngineError as err:  # the status the REST API would answer with
                    self.manager.flush()
                    last = f"HTTP {err.status}: {err.message}"
                    if not retryable(err.status, err.message, start):
                        break
            yield self.env.timeout(self.retry_s)
        self.errors.append(f"{name}: {what} failed: {last}")


class VirtualRunner:
    """Runs a scenario in virtual time (see the module docstring)."""

    def __init__(self, hil_map: str | Path | None = None, cohort: bool = False, **_options: Any) -> None:
        """``hil_map`` (default ``$PROPELLER_HIL_MAP``) says which board ports are real hardware, which
        virtual time refuses; ``cohort``: steady devices' heartbeats reach the manager in bulk
        (``twin.cohort``: the same trace, faster for large fleets); other options of the live runner
        (``log_dir``) are ignored."""
        self.cohort = cohort
        from hil.rig import load_map

        given = hil_map if hil_map is not None else os.environ.get(HIL_MAP_ENV) or None
        self.hw_names = {b.name for b in load_map(Path(given))} if given else set()
        self.last: dict[str, Any] = {}
        # The last run's manager, stopped: its store holds the tasks and their timelines
        # (``manager.store.events("task", task_id)``, as ``GET /tasks/{id}/events``).
        self.manager: VirtualManager | None = None

    async def run(self, scenario: Scenario, trace: Trace, progress: Callable[[float], None]) -> None:
        from twin.session import SessionConfig, TwinSession

        m, t = scenario.manager, scenario.timers
        if m.store != "sqlite":
            raise ValueError(f"manager.store {m.store!r}: the runners run the manager on SQLite only")
        env = simpy.Environment()
        observer = ManagerObserver(trace, now=lambda: float(env.now))
        config = SessionConfig(f"twin-virtual-{scenario.seed}", t.heartbeat_interval, t.liveness_timeout,
                               mode="virtual", broker=scenario.broker, placement=m.placement,
                               max_attempts=m.max_attempts, queue_timeout=m.queue_timeout,
                               manager_settings=m.settings, seed=scenario.seed,
                               cohort=self.cohort)  # fmt: skip
        try:
            async with TwinSession(config, trace, observer=observer, env=env) as session:
                self.manager = session.virtual_manager
                await _VirtualRun(scenario, trace, session, observer, self.hw_names).execute(progress)
        finally:
            observer.closed = True
            self.last = dict(trace.meta.get("virtual", {}))


class _VirtualRun:
    def __init__(self, scenario: Scenario, trace: Trace, session: TwinSession, observer: ManagerObserver,
                 hw_names: set[str]) -> None:  # fmt: skip
        self.scenario, self.trace, self.session, self.hw_names = scenario, trace, session, hw_names
        self.env = session.env
        self.domain = session.config.domain
        self.observer = observer
        assert session.broker_model is not None and session.virtual_manager is not None
        self.broker, self.manager = session.broker_model, session.virtual_manager
        self.fleet: Fleet | None = None

    async def execute(self, progress: Callable[[float], None]) -> None:
        s, trace, env = self.scenario, self.trace, self.env
        trace.meta.update({"runner": "virtual", "seed": s.seed, "domain": self.domain})
        started, cpu0 = time.monotonic(), time.process_time()
        real = self.hw_names
        fleet = self.fleet = await self.session.fleet(
            s, self._fleet_fault, real_port=lambda port: is_real_port(port, real)
        )
        self.observer.proplet_names = fleet.proplet_names
        submitter = VirtualSubmitter(env, self.manager, self.observer, s.devices(), fleet.proplet_ids,
                                     s.rng("workload"), s.manager.max_attempts)  # fmt: skip
        for sub in schedule(s.workload):
            env.timeout(sub.at).callbacks.append(self._submit_at(submitter, sub))
        t = 0.0
        while t < s.duration_s:
            t = min(s.duration_s, t + PROGRESS_STEP_S)
            env.run(until=t)
            progress(t / s.duration_s)
            await asyncio.sleep(0)  # Ctrl-C and the progress bar stay alive
        if self.manager.running:  # as the live runner: the manager's store is authoritative
            trace.meta["reconciled_tasks"] = self.observer.reconcile(self.manager.views(), float(env.now))
        else:
            trace.emit(float(env.now), "note", "manager", text="manager not running at the end: no reconcile")
        self.observer.closed = True
        for e in submitter.errors:
            trace.emit(float(env.now), "note", "workload", text=e)
        self._figures(time.monotonic() - started, time.process_time() - cpu0, submitter.errors)

    def _submit_at(self, submitter: VirtualSubmitter, sub: Submission) -> Callable[[Any], None]:
        return lambda _ev: self._start(submitter.submit(sub))

    def _start(self, process: Generator[simpy.Event, Any, None]) -> None:
        self.env.process(process)

    def _figures(self, wall: float, cpu: float, errors: list[str]) -> None:
        assert self.fleet is not None
        devices = list(self.fleet.devices.values())
        online = [d.stats.first_online for d in devices if d.stats.first_online is not None]
        b = self.broker.stats
        self.trace.meta["virtual"] = {
            "devices": len(devices),
            "devices_online_once": len(online),
            "all_online_at_s": round(max(online), 3) if len(online) == len(devices) and online else None,
            "wall_s": round(wall, 3),
            "cpu_s": round(cpu, 3),
            "sim_per_wall": round(self.scenario.duration_s / wall, 1) if wall > 0 else None,
            "rss_mib": round(psutil.Process().memory_info().rss / 2**20, 1),
            "broker": {"publishes": b.publishes, "deliveries": b.deliveries, "wills": b.wills,
                       "expiries": b.expiries, "queued": b.queued, "dropped": b.dropped,
                       "refused": b.refused},
            # The closed broker model's refusals: (simulated time, client id, why), the first 20.
            "refusals": [[round(t, 3), cid, why] for t, cid, why in self.broker.refusals[:20]],
            "manager_starts": self.manager.starts,
            "manager_messages": self.manager.messages,
            "faults_injected": self.fleet.faults_injected,
            "submit_errors": errors[:20],
            "tasks_run_on_devices": sum(d.stats.tasks_run for d in devices),
            "instances_refused": sum(d.stats.refused for d in devices),
        }  # fmt: skip
        cohort = self.session.shared.cohort if self.session.shared is not None else None
        if cohort is not None:
            self.trace.meta["virtual"]["cohort"] = dataclasses.asdict(cohort.stats)

    # ------------------------------------------------------------------ fleet-wide faults, modelled
    def _mark(self, subject: str, fault: str, phase: str, params: Mapping[str, Any]) -> None:
        self.trace.emit(float(self.env.now), "fault", subject, fault=fault, phase=phase, params=dict(params))

    def _fleet_fault(self, spec: FaultSpec) -> None:
        if spec.kind == "broker_restart":
            downtime = spec.duration if spec.duration is not None else 5.0
            params = {"downtime": downtime}
            self._mark("broker", "broker_restart", "start", params)
            self.broker.stop()  # every link closes, no will: the process is gone

            def back(_ev: Any) -> None:
                self.broker.start()
                self._mark("broker", "broker_restart", "end", params)

            self.env.timeout(downtime).callbacks.append(back)
        elif spec.kind == "manager_kill":
            sig = int(spec.params.get("signal", 9))
            after = spec.params.get("restart_after", 5.0)
            params = {"signal": sig, "restart_after": after}
            self._mark("manager", "manager_kill", "start", params)
            self.manager.kill(sig)
            if after is None:
                return

            def restart(_ev: Any) -> None:
                self.manager.start()
                self._mark("manager", "manager_kill", "end", params)

            self.env.timeout(float(after)).callbacks.append(restart)
