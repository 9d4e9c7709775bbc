"""The manager in virtual time: ``Engine`` + a broker-model client + an in-memory store + its timer loop.

``VirtualManager`` is ``orchestrator.service.ManagerService`` with the I/O swapped for the twin's
virtual-time parts: the same sans-I/O engine and placement policies, the same command order (persist
before publish), the same named persistent MQTT session and Last Will, the same timer rule (wake at the
next deadline, at most min(1 s, liveness / 10) later, and after every message). Its log events go to
``on_event`` as the live manager's JSON log lines go to the observer. ``kill(9)`` loses everything not
persisted; ``start()`` again restores the engine from what was (``Engine.restore``), as the manager
restores from its store. Task ids come from the injected rng and the wall clock is a fixed epoch plus
simulated time, so a seed gives the same run.
"""

from __future__ import annotations

import copy
import json
import random
import uuid
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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
    RecordPropletEvent,
    RecordTaskEvent,
)  # fmt: skip
from orchestrator.core.engine import Engine, EngineConfig
from orchestrator.core.model import Job, Proplet, Task
from orchestrator.core.placement import make_policy
from orchestrator.views import events_view, task_view
from twin.broker_model import BrokerModel, ModelClient
from twin.services import PLACEMENTS

WALL_EPOCH = 1_767_225_600.0  # 2026-01-01T00:00:00Z: the manager's wall clock is this + simulated time
MANAGER_KEEPALIVE_S = 30.0  # ManagerSettings.mqtt_keepalive
MANAGER_RETRY_S = 0.5  # a restarted manager that finds the broker down tries again (the process would)


# Types a JSON round trip gives back as they were (floats and containers still take the round trip).
_JSON_SAME = frozenset({str, int, bool, type(None)})


def seeded_ids(rng: random.Random) -> Callable[[], str]:
    """Task ids as uuid4 strings drawn from ``rng``: the same seed names the same tasks."""
    return lambda: str(uuid.UUID(int=rng.getrandbits(128), version=4))


@dataclass
class MemoryStore:
    """What the manager persisted, as its store would hold it (copies, applied in command order)."""

    tasks: dict[str, Task] = field(default_factory=dict)
    proplets: dict[str, Proplet] = field(default_factory=dict)
    jobs: dict[str, Job] = field(default_factory=dict)
    # Timelines: ("task"|"proplet", id) -> (at, kind, cause, fields), in recorded order. Bounded as the
    # store's: the engine records each kind once per transition and caps reported events per task.
    timelines: dict[tuple[str, str], list[tuple[float, str, str, dict[str, Any]]]] = field(
        default_factory=dict
    )

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
        elif isinstance(command, RecordTaskEvent):
            self._record(("task", command.task_id), command)
        elif isinstance(command, RecordPropletEvent):
            self._record(("proplet", command.proplet_id), command)
        else:
            return False
        return True

    def _record(self, key: tuple[str, str], command: RecordTaskEvent | RecordPropletEvent) -> None:
        row = (float(command.at_wall), command.kind, command.cause, dict(command.fields))
        self.timelines.setdefault(key, []).append(row)

    def events(self, subject: str, subject_id: str) -> dict[str, Any]:
        """``GET /tasks|proplets/{id}/events`` (``subject``: task or proplet): in time order, the events
        of one instant in their recorded order, as the store serves them."""
        rows = sorted(self.timelines.get((subject, subject_id), []), key=lambda row: row[0])
        return events_view(subject, subject_id, rows)

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
        username: str | None = None, password: str | None = None,
    ) -> None:  # fmt: skip
        if config.placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got {config.placement!r}")
        self.env, self.broker, self.config, self.on_event = env, broker, config, on_event
        self.rng = rng
        self.credentials = (username, password)  # its enrolled identity, for a closed broker model
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
            rng=random.Random(self.rng.random()), username=self.credentials[0], password=self.credentials[1],
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
        self.after_messages()

    def after_messages(self) -> None:
        """What the timer loop and the store do after the engine handled messages."""
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
        # Through JSON, as the live manager's log line is, so the observer reads the same values. Plain
        # strings, whole numbers, booleans and None come back from JSON as they went in: those skip the
        # round trip (one per proplet announcement, ~5 µs each at fleet scale).
        event = {"event": event_name, **fields}
        if not all(type(v) in _JSON_SAME for v in fields.values()):
            event = json.loads(json.dumps(event, default=str))
        self.on_event(event, self.now)

    def views(self) -> list[dict[str, Any]]:
        """``GET /tasks`` of the store: what the reconcile reads (the store is authoritative)."""
        tasks = sorted(self.store.tasks.values(), key=lambda t: (t.created_at or 0, t.id))
        return [task_view(t) for t in tasks]
