"""The proplet engine: discovery, heartbeats, targeting and the task table. Sans-I/O.

The same engine runs inside ``propeller proplet`` (asyncio driver, real wasmtime) and inside the
twin's simulated devices (simpy). It decides; its drivers do: they execute ``RunTask`` and report
back with ``task_finished``.

Upstream failures this engine does not repeat: heartbeats keep flowing while modules run (tasks run
outside the message callback), a start aimed at another proplet is ignored, the manager's stop payload
is accepted with only ``id``, and every result carries ``proplet_id`` and the attempt number.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator import wire


@dataclass(frozen=True)
class PropletConfig:
    proplet_id: str
    domain: str = "default"
    channel: str = "default"
    namespace: str = "default"
    heartbeat_interval: float = 10.0
    # 0 = unlimited concurrent instances.
    max_instances: int = 16
    metadata: Mapping[str, Any] = field(default_factory=dict)
    # EMBEDDED: behave like our firmware on the wire (numeric inputs, `main`, 1023-byte payloads).
    profile: wire.Profile = wire.Profile.RUST
    qos: int = 1
    outbox_limit: int = 1000
    # Send our heartbeat extension listing running tasks (upstream proplets do not).
    report_running: bool = True


@dataclass(frozen=True)
class Publish:
    topic: str
    payload: bytes
    qos: int = 1


@dataclass(frozen=True)
class Subscribe:
    topic: str
    qos: int = 1


@dataclass(frozen=True)
class RunTask:
    start: wire.StartTask


@dataclass(frozen=True)
class InvokeTask:
    """Call a deployed latent task (the driver answers with ``invocation_finished``)."""

    start: wire.StartTask
    invoke: wire.InvokeTask


@dataclass(frozen=True)
class CancelTask:
    task_id: str


@dataclass(frozen=True)
class LogEvent:
    name: str
    fields: dict[str, Any] = field(default_factory=dict)


PropletCommand = Publish | Subscribe | RunTask | InvokeTask | CancelTask | LogEvent


@dataclass
class _Running:
    start: wire.StartTask
    since: float
    cancelled: bool = False
    deployed: bool = False


class PropletEngine:
    def __init__(self, config: PropletConfig) -> None:
        self.config = config
        self.topics = wire.Topics(config.domain, config.channel)
        self.connected = False
        self.running: dict[str, _Running] = {}
        self._next_heartbeat: float | None = None
        self._outbox: list[bytes] = []
        self._commands: list[PropletCommand] = []
        self.malformed = 0
        self.counters: dict[str, int] = {}

    # ------------------------------------------------------------------ plumbing

    def take_commands(self) -> list[PropletCommand]:
        out, self._commands = self._commands, []
        return out

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def _publish(self, topic: str, message: wire.Message) -> None:
        self._commands.append(Publish(topic, wire.encode(message, self.config.profile), self.config.qos))

    def last_will(self) -> tuple[str, bytes]:
        """Topic and payload of the Last Will the driver must set before connecting."""
        hb = wire.Heartbeat(self.config.proplet_id, "offline", self.config.namespace)
        return self.topics.alive, wire.encode(hb, self.config.profile)

    def discovery(self) -> wire.Discovery:
        return wire.Discovery(self.config.proplet_id, self.config.namespace, dict(self.config.metadata))

    # ------------------------------------------------------------------ connection

    def on_connected(self, now: float) -> None:
        """(Re)connected: subscribe, announce, heartbeat at once, resend results held back."""
        self.connected = True
        for topic in self.topics.proplet_subscriptions:
            self._commands.append(Subscribe(topic, self.config.qos))
        self._publish(self.topics.create, self.discovery())
        # Results held while offline go before the heartbeat that no longer lists their tasks.
        held, self._outbox = self._outbox, []
        for payload in held:
            self._commands.append(Publish(self.topics.results, payload, self.config.qos))
        self._heartbeat(now)
        self._commands.append(LogEvent("connected", {"resent_results": len(held)}))

    def on_disconnected(self, now: float) -> None:
        self.connected = False
        self._next_heartbeat = None
        self._commands.append(LogEvent("disconnected", {"running": len(self.running)}))

    def _heartbeat(self, now: float) -> None:
        running = tuple(sorted(self.running)) if self.config.report_running else None
        hb = wire.Heartbeat(self.config.proplet_id, "alive", self.config.namespace, running)
        self._publish(self.topics.alive, hb)
        self._next_heartbeat = now + self.config.heartbeat_interval

    def next_deadline(self) -> float | None:
        return self._next_heartbeat if self.connected else None

    def on_timer(self, now: float) -> None:
        if self.connected and self._next_heartbeat is not None and now >= self._next_heartbeat:
            self._heartbeat(now)

    # ------------------------------------------------------------------ messages

    def handle(self, topic: str, payload: bytes, now: float) -> None:
        suffix = self.topics.suffix(topic)
        if suffix not in ("control/manager/start", "control/manager/stop", "control/manager/invoke"):
            return
        try:
            message = wire.decode(self.topics, topic, payload)
        except wire.CodecError as err:
            self.malformed += 1
            self._commands.append(LogEvent("malformed_message", {"topic": topic, "error": str(err)}))
            start_id = _task_id_of(payload) if suffix == "control/manager/start" else ""
            if start_id and self._targets_me(payload):
                self._result(start_id, "", f"invalid start request: {err}", None)
            return
        if isinstance(message, wire.StartTask):
            self._on_start(message, now)
        elif isinstance(message, wire.StopTask):
            self._on_stop(message)
        elif isinstance(message, wire.InvokeTask):
            self._on_invoke(message)

    def _on_invoke(self, invoke: wire.InvokeTask) -> None:
        if not invoke.broadcast and invoke.proplet_id and invoke.proplet_id != self.config.proplet_id:
            return
        entry = self.running.get(invoke.id)
        if entry is None or not entry.start.latent or not entry.deployed:
            error = f"task {invoke.id} has not been precompiled; deploy it as a latent task first"
            self.invocation_finished(invoke.id, invoke.invocation_id, "", error)
            return
        self._count("invocations")
        self._commands.append(InvokeTask(entry.start, invoke))

    def deployed(self, task_id: str) -> None:
        """The driver compiled a latent task: it now answers invocations (upstream publishes nothing)."""
        entry = self.running.get(task_id)
        if entry is not None:
            entry.deployed = True

    def invocation_finished(self, task_id: str, invocation_id: str, results: str, error: str | None) -> None:
        message = wire.InvokeResult(task_id, invocation_id, self.config.proplet_id, results, error or None)
        self._publish(self.topics.invoke_results, message)

    def _targets_me(self, payload: bytes) -> bool:
        try:
            target = json.loads(payload).get("proplet_id") or ""
        except (ValueError, AttributeError):
            return False
        return target in ("", self.config.proplet_id)

    def _on_start(self, start: wire.StartTask, now: float) -> None:
        if not start.broadcast and start.proplet_id and start.proplet_id != self.config.proplet_id:
            self._count("starts_for_others")
            return
        if start.id in self.running:
            self._count("duplicate_starts")
            self._commands.append(LogEvent("duplicate_start_ignored", {"task_id": start.id}))
            return
        limit = self.config.max_instances
        if limit and len(self.running) >= limit:
            self._result(
                start.id,
                "",
                f"proplet busy: {len(self.running)}/{limit} instances running",
                start.attempt or None,
            )
            return
        self.running[start.id] = _Running(start, now)
        self._count("tasks_started")
        self._commands.append(RunTask(start))
        self._commands.append(LogEvent("task_started", {"task_id": start.id, "name": start.name}))

    def _on_stop(self, stop: wire.StopTask) -> None:
        if stop.proplet_id and stop.proplet_id != self.config.proplet_id:
            return
        entry = self.running.get(stop.id)
        if entry is None or entry.cancelled:
            return
        entry.cancelled = True
        self._commands.append(CancelTask(stop.id))

    # ------------------------------------------------------------------ results

    def task_finished(self, task_id: str, results: str, error: str | None, now: float) -> None:
        entry = self.running.pop(task_id, None)
        if entry is None:
            return
        if error and entry.cancelled:
            error = f"task {task_id} was stopped before completion"
        self._count("tasks_failed" if error else "tasks_completed")
        self._result(task_id, results, error, entry.start.attempt or None)
        self._commands.append(
            LogEvent(
                "task_finished", {"task_id": task_id, "ok": not error, "seconds": round(now - entry.since, 6)}
            )
        )

    def _result(self, task_id: str, results: str, error: str | None, attempt: int | None) -> None:
        message = wire.TaskResult(task_id, results, error or None, self.config.proplet_id, attempt)
        payload = wire.encode(message, self.config.profile)
        if self.connected:
            self._commands.append(Publish(self.topics.results, payload, self.config.qos))
        elif len(self._outbox) < self.config.outbox_limit:
            self._outbox.append(payload)
        else:
            self._count("results_dropped")


def _task_id_of(payload: bytes) -> str:
    try:
        value = json.loads(payload).get("id")
    except (ValueError, AttributeError):
        return ""
    return value if isinstance(value, str) else ""
