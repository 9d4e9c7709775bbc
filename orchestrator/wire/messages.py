"""The messages of the Propeller wire protocol as frozen dataclasses (reference §2).

Sequences are tuples and mappings are read-only views, so a decoded message cannot be changed under
the feet of whoever else holds it. Constructors accept lists and dicts and freeze them. Constructors do
not validate; ``encode`` does, and raises CodecError naming the field.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

TimestampKind = Literal["unix", "uptime_ms"]
# How to read a result's text (our extension): JSON, plain UTF-8, or standard base64 of bytes.
RESULT_TYPES: frozenset[str] = frozenset({"text", "json", "binary"})
LogLines = tuple[tuple[str, str], ...]  # (stream, text): stream is stderr, stdout or runtime
HeartbeatStatus = Literal["alive", "offline"]
HEARTBEAT_STATUSES: frozenset[str] = frozenset({"alive", "offline"})


class Profile(enum.Enum):
    """Which receiver an encoding targets (decoding accepts both)."""

    RUST = "rust"  # upstream Rust proplet, the Go manager, and our Python proplet
    EMBEDDED = "embedded"  # upstream Zephyr/WAMR firmware: numeric inputs, 1023-byte buffer


# Discovery metadata (§2.1) and our capacity extensions, by JSON type.
METADATA_TEXT_KEYS = (
    "description", "location", "ip", "environment", "os", "hostname", "cpu_arch",
    "proplet_version", "wasm_runtime",
)  # fmt: skip
METADATA_INT_KEYS = ("total_memory_bytes", "free_memory_bytes", "max_instances")
# Our TEE/HAL extensions (proplets/runtime/hal): whether the proplet runs in a TEE, which one, HAL package.
METADATA_TEE_KEYS = ("tee_type", "hal")
# ``direct_start``: the proplet also reads the starts sent to it alone (topics.START_DIRECT).
METADATA_BOOL_KEYS = ("tee", "direct_start")
METADATA_EXTENSION_KEYS = frozenset({"free_memory_bytes", "max_instances"})

# MonitoringProfile (§2.9): Rust requires all ten keys; ``interval`` is integer seconds.
MONITORING_BOOL_KEYS = (
    "enabled", "collect_cpu", "collect_memory", "collect_disk_io", "collect_threads",
    "collect_file_descriptors", "export_to_mqtt", "retain_history",
)  # fmt: skip
MONITORING_INT_KEYS = ("interval", "history_size")

# Metrics (§2.7, §2.8): which keys are floats and which unsigned integers.
CPU_FLOAT_KEYS = ("user_seconds", "system_seconds", "percent")
MEMORY_INT_KEYS = (
    "rss_bytes", "heap_alloc_bytes", "heap_sys_bytes", "heap_inuse_bytes", "container_usage_bytes",
    "container_limit_bytes", "heap_free_bytes", "heap_max_alloc_bytes",
)  # fmt: skip
PROCESS_FLOAT_KEYS = ("cpu_percent", "memory_percent")
PROCESS_INT_KEYS = (
    "memory_bytes", "disk_read_bytes", "disk_write_bytes", "uptime_seconds", "thread_count",
    "file_descriptor_count",
)  # fmt: skip
AGGREGATED_FLOAT_KEYS = ("avg_cpu_usage", "max_cpu_usage")
AGGREGATED_INT_KEYS = (
    "avg_memory_usage", "max_memory_usage", "total_disk_read", "total_disk_write", "sample_count",
)  # fmt: skip


def _frozen(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return value if isinstance(value, MappingProxyType) else MappingProxyType(dict(value))


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)


@dataclass(frozen=True)
class Discovery:
    """``control/proplet/create``: a proplet announces itself. Unknown metadata keys are dropped."""

    proplet_id: str
    namespace: str = ""
    metadata: Mapping[str, Any] = field(default_factory=_empty)

    def __post_init__(self) -> None:
        md = dict(self.metadata)
        if isinstance(md.get("tags"), list):
            md["tags"] = tuple(md["tags"])
        _set(self, "metadata", MappingProxyType(md))


@dataclass(frozen=True)
class Heartbeat:
    """``control/proplet/alive``. A Last Will is a Heartbeat with status ``offline``."""

    proplet_id: str
    status: HeartbeatStatus
    namespace: str = ""
    # Our extension: ids of the tasks the proplet is running now (None = sender does not say), so the
    # manager can notice a task whose start or result was lost. Upstream managers ignore the key.
    running: tuple[str, ...] | None = None
    # Our extension: true on the ``offline`` a proplet publishes itself at a clean stop (a broker's
    # Last Will never carries it), so the manager can tell a shutdown from a death in its log and
    # timelines. Either way the proplet is gone and its tasks move. Upstream managers ignore the key.
    leaving: bool = False

    def __post_init__(self) -> None:
        if self.running is not None:
            _set(self, "running", tuple(self.running))


@dataclass(frozen=True)
class StartTask:
    """``control/manager/start`` (§2.3); ``sha256``, ``attempt``, ``limits`` and
    ``parent_result_types`` (how to read each of ``parent_results``: json, text, binary) are our
    extensions."""

    id: str
    name: str
    state: int = 0
    image_url: str = ""
    file: bytes = b""
    inputs: tuple[str | int | float, ...] = ()
    cli_args: tuple[str, ...] = ()
    broadcast: bool = False
    daemon: bool = False
    latent: bool = False
    env: Mapping[str, str] = field(default_factory=_empty)
    encrypted: bool = False
    kbs_resource_path: str = ""
    monitoring_profile: Mapping[str, Any] | None = None
    proplet_id: str = ""
    hal_storage_path: str | None = None
    parent_results: Mapping[str, Any] | None = None
    parent_result_types: Mapping[str, str] | None = None
    sha256: str = ""
    attempt: int = 0
    limits: Mapping[str, int | float] | None = None
    # Our extension: the W3C trace context of the manager's dispatch span (``--otel``); omitted when
    # empty and in the embedded profile, so starts are byte-identical with tracing off.
    traceparent: str = ""

    def __post_init__(self) -> None:
        _set(self, "inputs", tuple(self.inputs))
        _set(self, "cli_args", tuple(self.cli_args))
        _set(self, "env", _frozen(self.env))
        for name in ("monitoring_profile", "parent_results", "parent_result_types", "limits"):
            value = getattr(self, name)
            if value is not None:
                _set(self, name, _frozen(value))


@dataclass(frozen=True)
class StopTask:
    """``control/manager/stop``. ``state`` is a string because the firmware insists on one (§2.4)."""

    id: str
    name: str = ""
    state: str = ""
    proplet_id: str = ""
    broadcast: bool = False
    # Our extension: stop only this attempt (0 = any). A superseded attempt on a returning proplet is
    # stopped without touching the new attempt of the same task elsewhere. Upstream ignores the key.
    attempt: int = 0


@dataclass(frozen=True)
class DiscoveryRequest:
    """``control/manager/discover`` (our extension): the manager asks a proplet to announce itself again.

    Sent when heartbeats arrive from a proplet whose metadata the manager never saw (it started before
    the manager). ``proplet_id`` empty = every proplet. Upstream proplets do not subscribe; they simply
    never answer, and placement goes on without their numbers.
    """

    proplet_id: str = ""


@dataclass(frozen=True)
class TaskResult:
    """``control/proplet/results``: Rust, embedded (no proplet_id) and FL (object results) shapes."""

    task_id: str
    results: Any = ""
    error: str | None = None
    proplet_id: str | None = None
    attempt: int | None = None  # our extension: echoes StartTask.attempt so stale results are spotted
    # Our extension: the signed execution receipt (orchestrator/core/receipts.py) as its JSON object;
    # the codec checks only that it is an object, the manager verifies it. Upstream managers ignore it.
    receipt: Mapping[str, Any] | None = None
    # Our extension: the start was refused and nothing ran ("busy", "out_of_memory"; see
    # ``wire.refusals``); ``error`` says why. The attempt is not consumed. Upstream never sends it.
    refused: str | None = None
    # Our extensions (upstream managers ignore unknown keys): how to read ``results`` (RESULT_TYPES),
    # and the run's logs, kept apart from the result. None = the sender does not say (upstream).
    result_type: str | None = None
    logs: LogLines | None = None
    # Our extension: the W3C trace context of the proplet's execute span (``--otel``), omitted when None.
    traceparent: str | None = None

    def __post_init__(self) -> None:
        if self.receipt is not None:
            _set(self, "receipt", _frozen(self.receipt))
        if self.logs is not None:
            _set(self, "logs", tuple((str(s), str(d)) for s, d in self.logs))

    @property
    def is_success(self) -> bool:
        return not self.error and not self.refused


@dataclass(frozen=True)
class TaskLogs:
    """``control/proplet/logs`` (our extension topic): a piece of a running task's output, live.

    ``seq`` counts the pieces of one attempt from 0, so a reader can order them and spot a gap. The
    upstream manager ignores the topic and upstream proplets never send it.
    """

    task_id: str
    proplet_id: str = ""
    attempt: int | None = None
    seq: int = 0
    stream: str = "stderr"
    data: str = ""


@dataclass(frozen=True)
class InvokeTask:
    """``control/manager/invoke``: call an already deployed latent task (§2.5)."""

    id: str
    invocation_id: str = ""
    inputs: tuple[str | int | float, ...] = ()
    env: Mapping[str, str] = field(default_factory=_empty)
    proplet_id: str = ""
    broadcast: bool = False

    def __post_init__(self) -> None:
        _set(self, "inputs", tuple(self.inputs))
        _set(self, "env", _frozen(self.env))


@dataclass(frozen=True)
class InvokeResult:
    """``control/proplet/invoke_results``, correlated by ``invocation_id``."""

    task_id: str
    invocation_id: str
    proplet_id: str = ""
    results: str = ""
    error: str | None = None
    receipt: Mapping[str, Any] | None = None  # our extension, as in TaskResult

    def __post_init__(self) -> None:
        if self.receipt is not None:
            _set(self, "receipt", _frozen(self.receipt))

    @property
    def is_success(self) -> bool:
        return not self.error


@dataclass(frozen=True)
class PropletMetrics:
    """``control/proplet/metrics`` (§2.7).

    ``timestamp`` is in **seconds** whatever the wire form: UNIX time when ``timestamp_kind`` is
    ``"unix"`` (RFC3339 string or Rust ``SystemTime`` object on the wire), device uptime when it is
    ``"uptime_ms"`` (the firmware's ``k_uptime_get()`` milliseconds on the wire).
    """

    proplet_id: str
    namespace: str = ""
    timestamp: float = 0.0
    timestamp_kind: TimestampKind = "unix"
    cpu_metrics: Mapping[str, float] = field(default_factory=_empty)
    memory_metrics: Mapping[str, int] = field(default_factory=_empty)

    def __post_init__(self) -> None:
        _set(self, "cpu_metrics", _frozen(self.cpu_metrics))
        _set(self, "memory_metrics", _frozen(self.memory_metrics))


@dataclass(frozen=True)
class TaskMetrics:
    """``control/proplet/task_metrics`` (§2.8); timestamp as in PropletMetrics."""

    task_id: str
    proplet_id: str = ""
    metrics: Mapping[str, int | float] = field(default_factory=_empty)
    aggregated: Mapping[str, int | float] | None = None
    timestamp: float = 0.0
    timestamp_kind: TimestampKind = "unix"

    def __post_init__(self) -> None:
        _set(self, "metrics", _frozen(self.metrics))
        if self.aggregated is not None:
            _set(self, "aggregated", _frozen(self.aggregated))


@dataclass(frozen=True)
class RegistryRequest:
    """``registry/proplet``: a proplet asks for the binary of an OCI reference."""

    app_name: str


@dataclass(frozen=True)
class RegistryChunk:
    """``registry/server``: one piece of a binary; ``data`` travels as standard base64.

    Our extension, a refusal: ``error`` says why the registry will not serve ``app_name``; it travels
    as ``{"app_name", "chunk_idx": 0, "total_chunks": 0, "data": "", "error"}`` (``total_chunks`` 0
    never occurs in a transfer, so an upstream Rust proplet's codec drops it and times out as before).
    """

    app_name: str
    chunk_idx: int
    total_chunks: int
    data: bytes
    error: str = ""

    @property
    def is_refusal(self) -> bool:
        return bool(self.error)

    @classmethod
    def refusal(cls, app_name: str, error: str) -> RegistryChunk:
        return cls(app_name, 0, 0, b"", error or "refused")


Message = (
    Discovery | Heartbeat | StartTask | StopTask | DiscoveryRequest | TaskResult | TaskLogs | InvokeTask
    | InvokeResult | PropletMetrics | TaskMetrics | RegistryRequest | RegistryChunk
)  # fmt: skip
