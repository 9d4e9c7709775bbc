"""Events into the engine (facts) and commands out of it (imperatives)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orchestrator.core.model import Proplet, Task


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
class DeleteTask:
    task_id: str


@dataclass(frozen=True)
class DeleteProplet:
    proplet_id: str


@dataclass(frozen=True)
class LogEvent:
    """A structured log record: ``name`` says what happened, ``fields`` the facts."""

    name: str
    fields: dict[str, Any] = field(default_factory=dict)
    level: str = "info"


Command = Publish | PersistTask | PersistProplet | DeleteTask | DeleteProplet | LogEvent
