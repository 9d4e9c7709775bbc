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


Command = (
    Publish
    | PersistTask
    | PersistProplet
    | PersistJob
    | DeleteTask
    | DeleteProplet
    | RecordPropletMetrics
    | RecordTaskMetrics
    | InvocationFinished
    | LogEvent
)
