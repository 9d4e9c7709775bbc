"""Events into the engine (facts) and commands out of it (imperatives)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orchestrator.core.model import Job, Proplet, Task


@dataclass(frozen=True)
class MessageReceived:
    """An MQTT message arrived on a topic the manager subscribes to."""

    topic: str
    payload: bytes


@dataclass(frozen=True)
class Publish:
    topic: str
    payload: bytes
    qos: int = 1


@dataclass(frozen=True)
class PersistTask:
    task: Task  # a snapshot: the engine never mutates an object it has handed out


@dataclass(frozen=True)
class PersistProplet:
    proplet: Proplet


@dataclass(frozen=True)
class PersistJob:
    job: Job


@dataclass(frozen=True)
class DeleteTask:
    task_id: str


@dataclass(frozen=True)
class DeleteProplet:
    proplet_id: str


@dataclass(frozen=True)
class RecordPropletMetrics:
    proplet_id: str
    namespace: str
    cpu_metrics: dict[str, Any]
    memory_metrics: dict[str, Any]
    timestamp: float  # UNIX seconds (uptime stamps from devices are replaced by the arrival time)


@dataclass(frozen=True)
class RecordTaskMetrics:
    task_id: str
    proplet_id: str
    metrics: dict[str, Any]
    aggregated: dict[str, Any] | None
    timestamp: float


@dataclass(frozen=True)
class RecordTaskLogs:
    """Output of one attempt of a task, kept apart from its result.

    ``final=False``: a live piece (``seq`` numbers them per attempt) sent while the task runs.
    ``final=True``: the whole bounded record that came with the result (runtime notes, stderr, ...);
    ``replace``: it replaces a final record stored before for the same attempt and proplet.
    ``lines`` are (stream, text) pairs; stream is ``stderr``, ``stdout`` or ``runtime``.
    """

    task_id: str
    attempt: int
    proplet_id: str
    lines: tuple[tuple[str, str], ...]
    final: bool
    timestamp: float
    seq: int | None = None
    replace: bool = False


@dataclass(frozen=True)
class InvocationFinished:
    """An invocation of a latent task got its answer (or timed out): the caller waiting on it resumes."""

    invocation_id: str
    task_id: str
    results: str
    error: str
    verified: bool = False  # the answer's receipt verified against the enrolled key


@dataclass(frozen=True)
class LogEvent:
    """A structured log record: ``name`` says what happened, ``fields`` the facts."""

    name: str
    fields: dict[str, Any] = field(default_factory=dict)
    level: str = "info"


@dataclass(frozen=True, slots=True)
class RecordTaskEvent:
    """One entry of a task's timeline: what happened (``kind``), why (``cause``), when (UNIX seconds)."""

    task_id: str
    at_wall: float
    kind: str
    cause: str = ""
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RecordPropletEvent:
    """One entry of a proplet's timeline: joined, died (cause), came back."""

    proplet_id: str
    at_wall: float
    kind: str
    cause: str = ""
    fields: dict[str, Any] = field(default_factory=dict)


Command = (
    Publish
    | PersistTask
    | PersistProplet
    | PersistJob
    | DeleteTask
    | DeleteProplet
    | RecordPropletMetrics
    | RecordTaskMetrics
    | RecordTaskLogs
    | InvocationFinished
    | LogEvent
    | RecordTaskEvent
    | RecordPropletEvent
)
