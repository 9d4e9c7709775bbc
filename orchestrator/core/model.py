"""Domain model of the orchestrator: tasks and proplets, as upstream Propeller names them.

Pure data: no I/O, no clock. Times are floats of seconds on the engine's monotonic axis (``now``)
plus a wall-clock epoch float for what users see (``*_at`` fields are UNIX seconds, ``None`` = unset).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class TaskState(enum.IntEnum):
    """Upstream's task state numbers (reference §3.2); the JSON value is the number."""

    PENDING = 0
    SCHEDULED = 1
    RUNNING = 2
    COMPLETED = 3
    FAILED = 4
    SKIPPED = 5
    INTERRUPTED = 6

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES

    @property
    def label(self) -> str:
        return self.name.capitalize()


TERMINAL_STATES = frozenset({TaskState.COMPLETED, TaskState.FAILED, TaskState.SKIPPED, TaskState.INTERRUPTED})


class TaskKind(enum.StrEnum):
    STANDARD = "standard"
    FEDERATED = "federated"


@dataclass
class PropletMetadata:
    """What a proplet announces about itself (reference §2.1 and §4)."""

    description: str = ""
    tags: list[str] = field(default_factory=list)
    location: str = ""
    ip: str = ""
    environment: str = ""
    os: str = ""
    hostname: str = ""
    cpu_arch: str = ""
    total_memory_bytes: int = 0
    proplet_version: str = ""
    wasm_runtime: str = ""
    # Our extensions (ignored by upstream managers): capacity for memory-aware placement.
    free_memory_bytes: int = 0
    max_instances: int = 0
    # TEE and HAL (proplets/runtime/hal): placement can require a TEE (`requires: {"tee": true}`).
    tee: bool = False
    tee_type: str = ""
    hal: str = ""
    # It reads its starts on its own topic too (orchestrator/wire/topics.py, START_DIRECT).
    direct_start: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            if value not in ("", 0, [], None):
                out[key] = list(value) if isinstance(value, list) else value
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PropletMetadata:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data and data[k] is not None}
        if "tags" in known:
            known["tags"] = [str(t) for t in known["tags"]]
        return cls(**known)


@dataclass
class Proplet:
    id: str
    name: str = ""
    namespace: str = ""
    metadata: PropletMetadata = field(default_factory=PropletMetadata)
    alive: bool = False
    # Monotonic time of the last heartbeat (engine axis); None before the first one.
    last_seen: float | None = None
    # Wall-clock UNIX seconds of recent heartbeats, newest last (upstream keeps 10).
    alive_history: list[float] = field(default_factory=list)
    task_count: int = 0

    @property
    def is_embedded(self) -> bool:
        md = self.metadata
        return md.wasm_runtime == "wamr" or md.os == "zephyr" or self.namespace == "embedded"


@dataclass
class Task:
    """A unit of work. Field names and JSON keys follow upstream's ``pkg/task/task.go``."""

    id: str
    name: str
    kind: str = TaskKind.STANDARD.value
    state: TaskState = TaskState.PENDING
    image_url: str = ""
    file: bytes = b""
    cli_args: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    daemon: bool = False
    latent: bool = False
    encrypted: bool = False
    proplet_id: str = ""
    depends_on: list[str] = field(default_factory=list)
    run_if: str = ""
    workflow_id: str = ""
    job_id: str = ""
    results: Any = None
    # Our extension: how to read ``results`` ("json", "text", "binary" = base64); "" = not said.
    result_type: str = ""
    error: str = ""
    priority: int = 50
    broadcast: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)
    schedule: str = ""
    timezone: str = "UTC"
    is_recurring: bool = False
    next_run: float | None = None
    # Our extensions: digest pinning, resource needs, attempts.
    sha256: str = ""
    memory_bytes: int = 0
    # Per-run limits sent to the proplet: fuel, memory_bytes, timeout_s, output_bytes.
    limits: dict[str, float] = field(default_factory=dict)
    # ``attempt`` numbers every start sent for the task, never reused (a stop or a result names the
    # one it is about); ``uncounted_attempts`` of them do not count against ``max_attempts``: starts
    # refused or lost (nothing ran), and every attempt of an earlier run of a task started again.
    attempt: int = 0
    max_attempts: int = 3
    uncounted_attempts: int = 0
    # Broadcast: the proplets that were alive when it was sent; results are kept per proplet.
    targets: list[str] = field(default_factory=list)
    start_time: float | None = None
    finish_time: float | None = None
    created_at: float | None = None
    updated_at: float | None = None
    # Trust (orchestrator/core/receipts.py): the signed receipt of the accepted result (broadcast: one
    # per target, by proplet id) and whether it verified against the enrolled key.
    receipt: dict[str, Any] | None = None
    verified: bool = False
    # Upstream fields passed through to the proplet (wire reference §2.3, §2.9, §8.4).
    monitoring_profile: dict[str, Any] | None = None
    kbs_resource_path: str = ""
    hal_storage_path: str | None = None

    @property
    def attempts_counted(self) -> int:
        """The attempts spent against ``max_attempts`` in this run of the task."""
        return self.attempt - self.uncounted_attempts


@dataclass
class Job:
    """A named group of tasks started together (reference §3.4); its state is derived from its tasks."""

    id: str
    name: str = ""
    execution_mode: str = "parallel"
    created_at: float | None = None
    updated_at: float | None = None
