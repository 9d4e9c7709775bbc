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
import copy
import json
import os
import random
import time
import uuid
from collections.abc import Callable, Collection, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import simpy

from orchestrator.adapters.mqtt import MqttError, Will
from orchestrator.core.commands import (
    DeleteProplet,
    DeleteTask,
    LogEvent,
    MessageReceived,
    PersistJob,
    PersistProplet,
    PersistTask,
    Publish,
)  # fmt: skip
from orchestrator.core.engine import Engine, EngineConfig
from orchestrator.core.errors import Conflict, EngineError, NotFound, ValidationError
from orchestrator.core.model import Job, Proplet, Task
from orchestrator.core.placement import make_policy
from orchestrator.views import task_view
from twin.broker_model import BrokerModel, ModelClient
from twin.clock import AsyncSimClock
from twin.device import Shared
from twin.fleet import Fleet
from twin.observer import ManagerObserver, TaskRef
from twin.scenario.spec import DeviceRef, FaultSpec, Scenario
from twin.scenario.trace import Trace
from twin.services import PLACEMENTS
from twin.transport import VirtualTransport
from twin.workload import Submission, load_module, pick_device, schedule, task_spec

HIL_MAP_ENV = "PROPELLER_HIL_MAP"
WALL_EPOCH = 1_767_225_600.0  # 2026-01-01T00:00:00Z: the manager's wall clock is this + simulated time
MANAGER_KEEPALIVE_S = 30.0  # ManagerSettings.mqtt_keepalive
MANAGER_RETRY_S = 0.5  # a restarted manager that finds the broker down tries again (the process would)
PROGRESS_STEP_S = 1.0


def is_real_port(port: str, hw_names: Collection[str]) -> bool:
    """A board port that names real hardware: a hardware-map entry or a device path."""
    return port in hw_names or port.startswith("/") or port.upper().startswith("COM")


def seeded_ids(rng: random.Random) -> Callable[[], str]:
    """Task ids as uuid4 strings drawn from ``rng``: the same seed names the same tasks."""
    return lambda: str(uuid.UUID(int=rng.getrandbits(128), version=4))


@dataclass
class MemoryStore:
    """What the manager persisted, as its store would hold it (copies, applied in command order)."""

    tasks: dict[str, Task] = field(default_factory=dict)
    proplets: dict[str, Proplet] = field(default_factory=dict)
    jobs: dict[str, Job] = field(default_factory=dict)

    def apply(self, command: Any) -> bool:
        if isinstance(command, PersistTask):
            self.tasks[command.task.id] = command.task  # the engine persists deep copies already
        elif isinstance(command, PersistProplet):
            self.proplets[command.proplet.id] = command.proplet
        elif isinstance(command, PersistJob):
            self.jobs[command.job.id] = command.job
        elif isinstance(command, DeleteTask):
            self.tasks.pop(command.task_id, None)
        elif isinstance(command, DeleteProplet):
            self.proplets.pop(command.proplet_id, None)
        else:
            return False
        return True

    def load(self) -> tuple[list[Task], list[Proplet], list[Job]]:
        tasks = [copy.deepcopy(t) for t in self.tasks.values()]
        proplets = [copy.deepcopy(p) for p in self.proplets.values()]
        return tasks, proplets, [copy.deepcopy(j) for j in self.jobs.values()]


@dataclass(frozen=True)
class ManagerConfig:
    domain: str
    heartbeat_interval: float
    liveness_timeout: float
    placement: str = "round_robin"
    max_attempts: int = 3
    queue_timeout: float | None = None
    channel: str = "default"
    # Run the engine's timers after every message, as the live manager's timer loop does (it is woken
    # by each message). A fleet-scale run turns this off: on_timer walks every proplet.
    timer_on_message: bool = True
    # Also wake at least this often, as the live timer loop does (None: the live rule, min(1 s,
    # liveness / 10)); 0: wake only at the engine's deadlines (the fleet-scale benchmark).
    timer_cap: float | None = None


class VirtualManager:
    """``propeller manager`` in virtual time: the engine, its broker client, its store, its timer loop."""

    def __init__(
        self, env: simpy.Environment, broker: BrokerModel, config: ManagerConfig,
        on_event: Callable[[Mapping[str, Any], float], None], rng: random.Random,
    ) -> None:  # fmt: skip
        if config.placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got {config.placement!r}")
        self.env, self.broker, self.config, self.on_event = env, broker, config, on_event
        self.rng = rng
        self.new_id = seeded_ids(random.Random(rng.random()))
        self.store = MemoryStore()
        self.engine: Engine | None = None
        self.client: ModelClient | None = None
        self.client_id = f"propeller-manager-{config.domain}-{config.channel}"
        self.life = 0
        self.starts = 0
        self._wake: simpy.Event | None = None
        self.messages = 0
        self.heartbeats = 0

    @property
    def running(self) -> bool:
        return self.engine is not None

    @property
    def now(self) -> float:
        return float(self.env.now)

    @property
    def wall(self) -> float:
        return WALL_EPOCH + float(self.env.now)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start (or restart) from the store, connect, and run the timer loop."""
        if self.engine is not None:
            raise RuntimeError("the virtual manager is already running")
        c = self.config
        self.life += 1
        self.starts += 1
        engine = self.engine = Engine(
            EngineConfig(domain=c.domain, channel=c.channel, heartbeat_interval=c.heartbeat_interval,
                         liveness_timeout=c.liveness_timeout, max_attempts=c.max_attempts,
                         queue_timeout=c.queue_timeout),
            policy=make_policy(PLACEMENTS[c.placement]), new_id=self.new_id,
        )  # fmt: skip
        tasks, proplets, jobs = self.store.load()
        engine.restore(tasks, proplets, self.now, self.wall, jobs)
        life = self.life
        topics = engine.topics
        will = Will(topics.alive, json.dumps({"status": "offline", "proplet_id": self.client_id}).encode(), 0)
        client = self.client = self.broker.client(
            self.client_id, keepalive=MANAGER_KEEPALIVE_S, will=will, clean_session=False,
            rng=random.Random(self.rng.random()),
            on_message=lambda tp, pl: self._if_life(life, self._on_message, tp, pl),
            on_connect=lambda: self._if_life(life, self._on_connect),
            on_disconnect=lambda: self._if_life(life, self._on_disconnect),
        )  # fmt: skip
        for topic in topics.manager_subscriptions:
            client.subscribe(topic, 1)
        self.env.process(self._connect(life))

    def _connect(self, life: int) -> Generator[simpy.Event, Any, None]:
        while life == self.life and self.client is not None:
            ok = yield self.client.connect()
            if ok or life != self.life:
                break
            yield self.env.timeout(MANAGER_RETRY_S)
        if life != self.life:
            return
        self.env.process(self._timer_loop(life))
        self.flush()
        self._log("manager_started", broker="model")

    def kill(self, sig: int) -> None:
        """Signal 9: the process is gone (its socket closed by the OS: will at once), nothing flushed
        beyond what was persisted. Signal 15: a clean stop (DISCONNECT, no will)."""
        engine, client = self.engine, self.client
        self.life += 1
        self.engine = self.client = None
        if engine is None or client is None:
            return
        if sig == 9:
            client.abort()
            return
        engine.shutting_down = True
        self._execute(engine.take_commands(), client)
        client.disconnect()

    def _if_life(self, life: int, fn: Callable[..., None], *args: Any) -> None:
        if life == self.life:
            fn(*args)

    # ------------------------------------------------------------------ engine I/O
    def _on_connect(self) -> None:
        assert self.engine is not None
        self._log("manager_mqtt_connected", broker="model")
        self.engine.link_restored(self.now, self.wall)
        self._poke()
        self.flush()

    def _on_disconnect(self) -> None:
        if self.engine is None or self.engine.shutting_down:
            return
        self.engine.link_lost(self.now)
        self.flush()

    def _on_message(self, topic: str, payload: bytes) -> None:
        engine = self.engine
        assert engine is not None
        self.messages += 1
        if topic == engine.topics.registry_request:
            return  # the twin's devices take inline modules only
        if topic == engine.topics.alive:
            self.heartbeats += 1
        engine.handle(MessageReceived(topic, payload), self.now, self.wall)
        if self.config.timer_on_message:
            self._poke()
        self.flush()

    def _poke(self) -> None:
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()

    def _timer_loop(self, life: int) -> Generator[simpy.Event, Any, None]:
        engine = self.engine
        assert engine is not None
        # As ManagerService._timer_loop: wake at the next deadline, at most `cap` later, or on a message.
        cap = self.config.timer_cap
        if cap is None:
            cap = max(0.02, min(1.0, engine.config.timeout / 10))
        elif cap <= 0:
            cap = engine.config.timeout  # a proplet that appears meanwhile has a deadline no earlier
        while life == self.life:
            deadline = engine.next_deadline()
            delay = cap if deadline is None else min(cap, max(0.0, deadline - self.now))
            wake = self._wake = self.env.event()
            yield self.env.timeout(delay) | wake
            if life != self.life:
                return
            engine.on_timer(self.now, self.wall)
            self.flush()

    def flush(self) -> None:
        engine, client = self.engine, self.client
        if engine is None or client is None:
            return
        while commands := engine.take_commands():
            self._execute(commands, client)

    def _execute(self, commands: Sequence[Any], client: ModelClient) -> None:
        for command in commands:
            if self.store.apply(command):
                continue
            if isinstance(command, Publish):
                try:
                    client.publish(command.topic, command.payload, command.qos)
                except MqttError as err:  # the broker is away; the task stays recoverable
                    self._log("publish_failed", topic=command.topic, error=str(err))
            elif isinstance(command, LogEvent):
                self._log(command.name, **dict(command.fields))
            # Metrics and invocation answers have no reader in a scenario.

    def _log(self, event_name: str, /, **fields: Any) -> None:
        # Through JSON, as the live manager's log line is, so the observer reads the same values.
        event = json.loads(json.dumps({"event": event_name, **fields}, default=str))
        self.on_event(event, self.now)

    def views(self) -> list[dict[str, Any]]:
        """``GET /tasks`` of the store: what the reconcile reads (the store is authoritative)."""
        tasks = sorted(self.store.tasks.values(), key=lambda t: (t.created_at or 0, t.id))
        return [task_view(t) for t in tasks]


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
                except EngineError as err:
                    self.manager.flush()
                    last = f"HTTP {err.status}: {err.message}"
                    # As Submitter: 409 (pinned device not alive yet), 5xx, and a start whose proplet the
                    # manager has not heard of yet are retried; a 400 will not change by waiting.
                    retry = isinstance(err, Conflict) or err.status >= 500 or (
                        start and isinstance(err, NotFound) and "proplet" in err.message
                    )
                    if isinstance(err, ValidationError) or not retry:
                        break
            yield self.env.timeout(self.retry_s)
        self.errors.append(f"{name}: {what} failed: {last}")


class VirtualRunner:
    """Runs a scenario in virtual time (see the module docstring)."""

    def __init__(self, hil_map: str | Path | None = None, **_options: Any) -> None:
        """``hil_map`` (default ``$PROPELLER_HIL_MAP``) says which board ports are real hardware, which
        virtual time refuses; other options of the live runner (``log_dir``) are ignored."""
        from hil.rig import load_map

        given = hil_map if hil_map is not None else os.environ.get(HIL_MAP_ENV) or None
        self.hw_names = {b.name for b in load_map(Path(given))} if given else set()
        self.last: dict[str, Any] = {}

    async def run(self, scenario: Scenario, trace: Trace, progress: Callable[[float], None]) -> None:
        run = _VirtualRun(scenario, trace, self.hw_names)
        try:
            await run.execute(progress)
        finally:
            run.close()
            self.last = dict(trace.meta.get("virtual", {}))


class _VirtualRun:
    def __init__(self, scenario: Scenario, trace: Trace, hw_names: set[str]) -> None:
        from proplets.runtime import WasmtimeRuntime  # lazy: wasmtime is heavy to import

        self.scenario, self.trace, self.hw_names = scenario, trace, hw_names
        self.env = simpy.Environment()
        # Sessions and retained messages do not survive a restart: the live runner's brokers keep none.
        self.broker = BrokerModel(self.env, persistence=False)
        self.runtime = WasmtimeRuntime()
        self.transport = VirtualTransport(self.env, self.broker, self.runtime)
        self.domain = f"twin-virtual-{scenario.seed}"
        self.observer = ManagerObserver(trace, now=lambda: float(self.env.now))
        self.shared = Shared(self.env, AsyncSimClock(self.env), trace, self.runtime, None, self.transport)
        m, t = scenario.manager, scenario.timers
        if m.store != "sqlite":
            raise ValueError(f"manager.store {m.store!r}: the runners run the manager on SQLite only")
        self.manager = VirtualManager(
            self.env, self.broker,
            ManagerConfig(self.domain, t.heartbeat_interval, t.liveness_timeout, m.placement, m.max_attempts,
                          m.queue_timeout),
            self.observer.on_event, scenario.rng("manager"),
        )  # fmt: skip
        self.fleet: Fleet | None = None

    async def execute(self, progress: Callable[[float], None]) -> None:
        s, trace, env = self.scenario, self.trace, self.env
        trace.meta.update({"runner": "virtual", "seed": s.seed, "domain": self.domain})
        started, cpu0 = time.monotonic(), time.process_time()
        self.manager.start()
        fleet = self.fleet = Fleet(s, self.shared, "model", 0, self.domain, self._fleet_fault,
                                   real_port=lambda port: is_real_port(port, self.hw_names),
                                   boards_as_devices=True)  # fmt: skip
        await fleet.start()
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
            "manager_starts": self.manager.starts,
            "manager_messages": self.manager.messages,
            "faults_injected": self.fleet.faults_injected,
            "submit_errors": errors[:20],
            "tasks_run_on_devices": sum(d.stats.tasks_run for d in devices),
            "instances_refused": sum(d.stats.refused for d in devices),
        }  # fmt: skip

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

    def close(self) -> None:
        self.observer.closed = True
        if self.fleet is not None:
            for device in self.fleet.devices.values():
                device.gen += 1  # nothing of this run may run again
        self.runtime.close()
