"""The proplet engine: discovery, heartbeats, targeting and the task table. Sans-I/O.

The same engine runs inside ``propeller proplet`` (asyncio driver, real wasmtime) and inside the
twin's simulated devices (simpy). It decides; its drivers do: they execute ``RunTask`` and report
back with ``task_finished``.

Upstream failures this engine does not repeat: heartbeats keep flowing while modules run (tasks run
outside the message callback), a start aimed at another proplet is ignored, the manager's stop payload
is accepted with only ``id``, and every result carries ``proplet_id`` and the attempt number.

Delivery (our extensions): a start that cannot run here is answered with a refusal
(``wire.refusals``: busy, out of memory) so the manager spends no attempt; a stop naming another
attempt of a task is ignored; a ``DiscoveryRequest`` is answered by announcing again and re-sending
the results of the last ``result_resend_window`` seconds (a restarted broker may have dropped them).

Metrics: the engine decides *when* (a deadline like heartbeats) and emits ``CollectMetrics``; the driver
samples its process and hands the sample back with ``metrics_sampled``, and the engine formats
``control/proplet/metrics`` and one ``control/proplet/task_metrics`` per running task (§2.7/§2.8), in
the Rust form or, for the embedded profile, the firmware's (uptime-ms timestamps, heap_* from the
device budget). With a ``budget`` (the embedded profile) every instance is admitted against it before
it runs (``admit``) and released when its task ends.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from orchestrator import wire
from orchestrator.core import receipts
from orchestrator.wire.messages import TimestampKind
from proplets.output import TaskOutput
from proplets.runtime.budget import Admission, BudgetConfig, DeviceBudget
from proplets.runtime.wasmbin import WasmFormatError, is_component, memory_requirements

LOG_PIECE_CHARS = 64 * 1024  # characters of live output per control/proplet/logs message


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
    # Results published this many seconds before a disconnect are sent again on reconnect: the broker
    # may have died with them (a QoS 1 publish is not kept by a broker that restarts). The manager
    # ignores duplicates; without this, the task would be run again.
    result_resend_window: float = 30.0
    # Send our heartbeat extension listing running tasks (upstream proplets do not).
    report_running: bool = True
    # Seconds between control/proplet/metrics (and task_metrics) samples; 0 disables both.
    metrics_interval: float = 10.0
    # A WAMR-like memory budget every instance is admitted against (the embedded profile); None = none.
    budget: BudgetConfig | None = None
    # Upstream firmware's behaviour (reference §9, design §6), so the twin's `upstream-firmware` devices
    # run this engine rather than rewriting its input: it starts every task on its channel whatever
    # proplet the start names (filter_target False), and cannot stop a running module (honour_stop
    # False). The two below are obligations of the driver, which reads them here: the module runs
    # inside the MQTT callback, so nothing is read or sent until it returns (blocking_execution), and
    # a lost connection is never re-established (reconnect False).
    filter_target: bool = True
    honour_stop: bool = True
    # Also read starts on our own topic (control/manager/start/{proplet_id}) and say so in the discovery
    # (``direct_start``), so a manager that knows it sends our starts there: one delivery per start
    # instead of one per proplet of the channel. Never on the embedded profile or for upstream firmware
    # (their subscriptions stay upstream's), nor for an id that cannot name a topic level.
    direct_start: bool = True
    blocking_execution: bool = False
    reconnect: bool = True
    # Raw 32-byte Ed25519 private key from the proplet's enrolled identity (signs execution receipts).
    signing_key: bytes | None = None
    # Bytes of one task's live output published on control/proplet/logs (the result's logs are
    # bounded by the run's log_bytes limit separately); 0 disables live output.
    live_log_bytes: int = 1024 * 1024
    # In a TEE: evidence for 32 bytes of report data (the driver's configfs-tsm call, hal/tee.py). Each
    # receipt then carries evidence whose report data is the SHA-256 of the receipt signed with
    # `evidence: null` (receipts.evidence_report_data). An exception leaves the receipt without evidence.
    attest: Callable[[bytes], bytes] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.proplet_id:
            raise ValueError("PropletConfig.proplet_id must be a non-empty string")
        if not self.heartbeat_interval > 0:
            raise ValueError(f"heartbeat_interval must be > 0 seconds, got {self.heartbeat_interval}")
        if self.metrics_interval < 0:
            raise ValueError(f"metrics_interval must be >= 0 s (0 disables), got {self.metrics_interval}")
        if self.max_instances < 0:
            raise ValueError(f"max_instances must be >= 0 (0 = unlimited), got {self.max_instances}")
        # With a key, every result carries a signed execution receipt (orchestrator/core/receipts.py).
        if self.signing_key is not None and len(self.signing_key) != receipts.KEY_BYTES:
            raise ValueError(
                f"signing_key must be {receipts.KEY_BYTES} raw bytes, got {len(self.signing_key)}"
            )


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


@dataclass(frozen=True)
class CollectMetrics:
    """Sample the process now and answer with ``metrics_sampled`` (tasks: the ones running now)."""

    task_ids: tuple[str, ...]


PropletCommand = Publish | Subscribe | RunTask | InvokeTask | CancelTask | CollectMetrics | LogEvent


@dataclass(frozen=True)
class ProcessSample:
    """One reading of the proplet process, taken by the driver (psutil, /proc, cgroup files)."""

    cpu_user_seconds: float = 0.0
    cpu_system_seconds: float = 0.0
    cpu_percent: float = 0.0  # average over all CPUs since the previous sample
    rss_bytes: int = 0
    memory_percent: float = 0.0
    thread_count: int = 0
    fd_count: int = 0
    disk_read_bytes: int = 0
    disk_write_bytes: int = 0
    container_usage_bytes: int | None = None
    container_limit_bytes: int | None = None


@dataclass
class _Aggregate:
    samples: int = 0
    cpu_sum: float = 0.0
    cpu_max: float = 0.0
    mem_sum: int = 0
    mem_max: int = 0
    disk_base: tuple[int, int] | None = None  # process disk counters when the task was first sampled


@dataclass
class _Running:
    start: wire.StartTask
    since: float
    cancelled: bool = False
    deployed: bool = False
    admission: Admission | None = None
    refused: str | None = None  # a wire.refusals kind: admission refused it, nothing ran
    stats: _Aggregate = field(default_factory=_Aggregate)
    module_sha256: str = ""  # of the bytes that were loaded (set by ``admit``), for the receipt
    last_metrics: float | None = None  # when task_metrics were last published (monitoring_profile)
    log_seq: int = 0  # live output pieces published (control/proplet/logs)
    log_bytes: int = 0
    log_tails: dict[str, bytes] = field(default_factory=dict)  # per stream: an incomplete UTF-8 character


class PropletEngine:
    def __init__(self, config: PropletConfig) -> None:
        self.config = config
        self.topics = wire.Topics(config.domain, config.channel)
        self.connected = False
        self.running: dict[str, _Running] = {}
        self._next_heartbeat: float | None = None
        self._next_metrics: float | None = None
        self._boot: float | None = None  # first connect: the embedded profile's uptime starts here
        self._outbox: list[bytes] = []
        self._sent: deque[tuple[float, bytes]] = deque()  # (when, payload) of results published lately
        self._clock = 0.0  # the latest ``now`` seen (stamps published results)
        self._commands: list[PropletCommand] = []
        self.malformed = 0
        self.counters: dict[str, int] = {}
        self.budget = DeviceBudget(config.budget) if config.budget is not None else None
        self._heap_peak = 0
        self._signer = receipts.Signer(config.signing_key) if config.signing_key is not None else None
        self._invoked: dict[str, tuple[wire.InvokeTask, float]] = {}  # invocation id -> (invoke, since)
        direct = (
            config.direct_start
            and config.filter_target
            and config.profile is not wire.Profile.EMBEDDED
            and wire.direct_start_ok(config.proplet_id)
        )
        # The topic of our own starts, or None when we read only the shared start topic.
        self._direct_topic = self.topics.start_for(config.proplet_id) if direct else None

    @property
    def embedded(self) -> bool:
        return self.config.profile is wire.Profile.EMBEDDED

    # ------------------------------------------------------------------ plumbing

    def take_commands(self) -> list[PropletCommand]:
        out, self._commands = self._commands, []
        return out

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def _publish(self, topic: str, message: wire.Message) -> bool:
        try:
            payload = wire.encode(message, self.config.profile)
        except wire.CodecError as err:  # e.g. over the embedded 1023 bytes: drop it, never crash
            self._count("encode_failed")
            self._commands.append(LogEvent("encode_failed", {"topic": topic, "error": str(err)}))
            return False
        self._commands.append(Publish(topic, payload, self.config.qos))
        return True

    def publish_failed(self, topic: str, payload: bytes) -> None:
        """The driver could not hand a publish to the broker (link just died): keep results for later."""
        if topic != self.topics.results:
            return
        if len(self._outbox) < self.config.outbox_limit:
            self._outbox.append(payload)
        else:
            self._count("results_dropped")

    def last_will(self) -> tuple[str, bytes]:
        """Topic and payload of the Last Will the driver must set before connecting."""
        hb = wire.Heartbeat(self.config.proplet_id, "offline", self.config.namespace)
        return self.topics.alive, wire.encode(hb, self.config.profile)

    def discovery(self) -> wire.Discovery:
        metadata = dict(self.config.metadata)
        if self.budget is not None:  # announce the budget as it stands, like the firmware's heap
            metadata["total_memory_bytes"] = self.budget.config.heap_bytes
            metadata["free_memory_bytes"] = max(0, self.budget.free_bytes)
            metadata["max_instances"] = self._instance_limit()
        if self._direct_topic is not None:
            metadata["direct_start"] = True
        return wire.Discovery(self.config.proplet_id, self.config.namespace, metadata)

    def _instance_limit(self) -> int:
        budget_limit = self.budget.config.max_instances if self.budget is not None else 0
        limits = [n for n in (self.config.max_instances, budget_limit) if n]
        return min(limits) if limits else 0

    # ------------------------------------------------------------------ connection

    def on_connected(self, now: float) -> None:
        """(Re)connected: subscribe, announce, heartbeat at once, resend results held back."""
        self._clock = now
        self.connected = True
        if self._boot is None:
            self._boot = now
        for topic in self.topics.proplet_subscriptions:
            self._commands.append(Subscribe(topic, self.config.qos))
        if not self.embedded:  # our extension; the firmware's buffers and subscriptions stay upstream's
            self._commands.append(Subscribe(self.topics.discover, self.config.qos))
        if self._direct_topic is not None:  # before the discovery that tells the manager to use it
            self._commands.append(Subscribe(self._direct_topic, self.config.qos))
        self._publish(self.topics.create, self.discovery())
        # Results held while offline go before the heartbeat that no longer lists their tasks.
        held, self._outbox = self._outbox, []
        for payload in held:
            self._commands.append(Publish(self.topics.results, payload, self.config.qos))
            if not _is_refusal(payload):  # may be asked for again (see _on_discovery_request)
                self._sent.append((now, payload))
        self._heartbeat(now)
        if self.config.metrics_interval > 0:
            self._next_metrics = now + self.config.metrics_interval
        self._commands.append(LogEvent("connected", {"resent_results": len(held)}))

    def shutting_down(self, now: float) -> None:
        """An orderly shutdown, before the driver's DISCONNECT (which makes the broker discard the
        will): announce ``offline`` as the will would have (marked ``leaving``), so the manager knows at
        once rather than at its liveness timeout (design §7, clean shutdown)."""
        if self.connected:
            hb = wire.Heartbeat(self.config.proplet_id, "offline", self.config.namespace, leaving=True)
            self._commands.append(
                Publish(self.topics.alive, wire.encode(hb, self.config.profile), self.config.qos)
            )
        self.on_disconnected(now)

    def on_disconnected(self, now: float) -> None:
        self._clock = now
        # Results the broker may have lost with the link go out again first thing on reconnect.
        recent = [p for t, p in self._sent if now - t <= self.config.result_resend_window]
        self._sent.clear()
        held = [p for p in recent if p not in self._outbox]
        self._outbox[:0] = held[: max(0, self.config.outbox_limit - len(self._outbox))]
        self.connected = False
        self._next_heartbeat = None
        self._next_metrics = None
        self._commands.append(LogEvent("disconnected", {"running": len(self.running)}))

    def _heartbeat(self, now: float) -> None:
        running = tuple(sorted(self.running)) if self.config.report_running else None
        hb = wire.Heartbeat(self.config.proplet_id, "alive", self.config.namespace, running)
        if not self._publish(self.topics.alive, hb) and running is not None:
            # Too many running ids for the embedded buffer: a plain heartbeat still keeps us alive.
            plain = wire.Heartbeat(self.config.proplet_id, "alive", self.config.namespace)
            self._publish(self.topics.alive, plain)
        self._next_heartbeat = now + self.config.heartbeat_interval

    def steady_heartbeat(self) -> float | None:
        """When the next heartbeat is due, if that is all this engine will do until a message arrives
        (connected, nothing running or held, no metrics): a driver may then send its heartbeats in bulk
        (twin.cohort) and hand back with ``resume_heartbeats``. None otherwise."""
        if not self.connected or self.running or self._outbox or self._next_metrics is not None:
            return None
        return self._next_heartbeat

    def resume_heartbeats(self, next_at: float) -> None:
        """The driver sent the heartbeats until now; the next one is due at ``next_at``."""
        if self.connected:
            self._next_heartbeat = next_at

    def next_deadline(self) -> float | None:
        if not self.connected:
            return None
        deadlines = [d for d in (self._next_heartbeat, self._next_metrics) if d is not None]
        return min(deadlines) if deadlines else None

    def on_timer(self, now: float) -> None:
        if not self.connected:
            return
        if self._next_heartbeat is not None and now >= self._next_heartbeat:
            self._heartbeat(now)
        if self._next_metrics is not None and now >= self._next_metrics:
            self._next_metrics = now + self.config.metrics_interval
            self._commands.append(CollectMetrics(tuple(sorted(self.running))))

    # ------------------------------------------------------------------ metrics

    def metrics_sampled(self, sample: ProcessSample, now: float, wall: float) -> None:
        """Publish proplet metrics and one task_metrics per task still running (§2.7, §2.8)."""
        if not self.connected:
            return
        pid = self.config.proplet_id
        kind: TimestampKind = "uptime_ms" if self.embedded else "unix"
        stamp = now - (self._boot if self._boot is not None else now) if self.embedded else wall
        cpu, memory = self._cpu_metrics(sample), self._memory_metrics(sample)
        self._publish(
            self.topics.metrics, wire.PropletMetrics(pid, self.config.namespace, stamp, kind, cpu, memory)
        )
        for task_id, entry in sorted(self.running.items()):
            if not _profile_due(entry, now):
                continue
            entry.last_metrics = now
            metrics, aggregated = self._task_metrics(entry, sample, now)
            message = wire.TaskMetrics(task_id, pid, metrics, aggregated, stamp, kind)
            self._publish(self.topics.task_metrics, message)

    def _cpu_metrics(self, s: ProcessSample) -> dict[str, float]:
        if self.embedded:  # the firmware reports load only (CONFIG_CPU_LOAD), no process times
            return {"user_seconds": 0.0, "system_seconds": 0.0, "percent": s.cpu_percent}
        return {
            "user_seconds": s.cpu_user_seconds,
            "system_seconds": s.cpu_system_seconds,
            "percent": s.cpu_percent,
        }

    def _memory_metrics(self, s: ProcessSample) -> dict[str, int]:
        if self.embedded:
            used = self.budget.used_bytes if self.budget else 0
            free = max(0, self.budget.free_bytes) if self.budget else 0
            return {
                "rss_bytes": 0, "heap_alloc_bytes": used, "heap_sys_bytes": used + free,
                "heap_inuse_bytes": used, "heap_free_bytes": free, "heap_max_alloc_bytes": self._heap_peak,
            }  # fmt: skip
        out = {"rss_bytes": s.rss_bytes, "heap_alloc_bytes": 0, "heap_sys_bytes": 0, "heap_inuse_bytes": 0}
        if s.container_usage_bytes is not None:
            out["container_usage_bytes"] = s.container_usage_bytes
        if s.container_limit_bytes is not None:
            out["container_limit_bytes"] = s.container_limit_bytes
        return out

    def _task_metrics(
        self, entry: _Running, s: ProcessSample, now: float
    ) -> tuple[dict[str, int | float], dict[str, int | float]]:
        # One process runs every instance (as upstream's in-process wasmtime): process-wide numbers,
        # except on the embedded profile where the instance's admitted bytes are its memory.
        memory = entry.admission.cost_bytes if self.embedded and entry.admission else s.rss_bytes
        disk = (0, 0) if self.embedded else (s.disk_read_bytes, s.disk_write_bytes)
        agg = entry.stats
        if agg.disk_base is None:
            agg.disk_base = disk
        agg.samples += 1
        agg.cpu_sum += s.cpu_percent
        agg.cpu_max = max(agg.cpu_max, s.cpu_percent)
        agg.mem_sum += memory
        agg.mem_max = max(agg.mem_max, memory)
        metrics: dict[str, int | float] = {
            "cpu_percent": s.cpu_percent,
            "memory_bytes": memory,
            "memory_percent": 0.0 if self.embedded else s.memory_percent,
            "disk_read_bytes": disk[0],
            "disk_write_bytes": disk[1],
            "uptime_seconds": int(max(0.0, now - entry.since)),
            "thread_count": 1 if self.embedded else s.thread_count,
            "file_descriptor_count": 0 if self.embedded else s.fd_count,
        }
        aggregated: dict[str, int | float] = {
            "avg_cpu_usage": agg.cpu_sum / agg.samples,
            "max_cpu_usage": agg.cpu_max,
            "avg_memory_usage": agg.mem_sum // agg.samples,
            "max_memory_usage": agg.mem_max,
            "total_disk_read": max(0, disk[0] - agg.disk_base[0]),
            "total_disk_write": max(0, disk[1] - agg.disk_base[1]),
            "sample_count": agg.samples,
        }
        return metrics, aggregated

    # ------------------------------------------------------------------ messages

    def handle(self, topic: str, payload: bytes, now: float) -> None:
        self._clock = now
        suffix = self.topics.suffix(topic)
        if suffix is None:
            return
        direct = topic == self._direct_topic
        if direct:
            suffix = "control/manager/start"  # sent to us alone: the others' starts never come here
        elif suffix not in _HANDLED:
            return
        if self.embedded and len(payload) > wire.EMBEDDED_MAX_PAYLOAD_BYTES:
            # The firmware's buffer holds 1023 bytes: it would truncate and fail to parse. We say why.
            self.malformed += 1
            self._commands.append(LogEvent("oversized_message", {"topic": topic, "bytes": len(payload)}))
            start_id = _task_id_of(payload) if suffix == "control/manager/start" else ""
            if start_id and self._targets_me(payload):
                error = (
                    f"start message is {len(payload)} bytes; the embedded proplet reads at most "
                    f"{wire.EMBEDDED_MAX_PAYLOAD_BYTES}"
                )
                self._result(start_id, "", error, None)
            return
        if not direct and suffix == "control/manager/start" and self._for_another(payload):
            # Every proplet of a channel receives every start: skip the full decode of the others'.
            self._count("starts_for_others")
            return
        try:
            message = wire.decode_payload(suffix, payload, topic)
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
            self._on_stop(message, now)
        elif isinstance(message, wire.InvokeTask):
            self._on_invoke(message, now)
        elif isinstance(message, wire.DiscoveryRequest):
            self._on_discovery_request(message)

    def _on_discovery_request(self, request: wire.DiscoveryRequest) -> None:
        """A manager that started after us, or came back to a restarted broker, asks who we are:
        announce again and re-send the results of the last ``result_resend_window`` seconds (it may
        have missed them; it ignores duplicates)."""
        if request.proplet_id not in ("", self.config.proplet_id) or not self.connected:
            return
        self._count("discovery_requests")
        self._publish(self.topics.create, self.discovery())
        for sent_at, payload in self._sent:
            if self._clock - sent_at <= self.config.result_resend_window:
                self._commands.append(Publish(self.topics.results, payload, self.config.qos))

    def _on_invoke(self, invoke: wire.InvokeTask, now: float) -> None:
        if not invoke.broadcast and invoke.proplet_id and invoke.proplet_id != self.config.proplet_id:
            return
        if self._signer is not None:  # what the answer's receipt will say it was asked
            self._invoked[invoke.invocation_id] = (invoke, now)
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

    def invocation_finished(
        self,
        task_id: str,
        invocation_id: str,
        results: str,
        error: str | None,
        now: float | None = None,
        wall: float | None = None,
    ) -> None:
        """An invocation ended; with a signing key its answer carries a receipt naming the invocation."""
        receipt = None
        if self._signer is not None:
            invoke, since = self._invoked.pop(invocation_id, (None, now or 0.0))
            entry = self.running.get(task_id)
            proof = None
            if entry is not None:
                proof = _Proof(entry.start, since, now, wall, entry.module_sha256)
            inputs = (invoke.inputs if invoke is not None else ()) or (entry.start.inputs if entry else ())
            receipt = self._receipt(
                task_id, results, error, proof, invocation_id=invocation_id, inputs=inputs
            )
        message = wire.InvokeResult(
            task_id, invocation_id, self.config.proplet_id, results, error or None, receipt
        )
        self._publish(self.topics.invoke_results, message)

    def _for_another(self, payload: bytes) -> bool:
        """A start that names another proplet and is not a broadcast (``_on_start`` would ignore it)."""
        if not self.config.filter_target:
            return False
        try:
            data = json.loads(payload)
        except (ValueError, RecursionError):
            return False  # the full decode says what is wrong
        if not isinstance(data, dict):
            return False
        target = data.get("proplet_id")
        return (
            isinstance(target, str)
            and target not in ("", self.config.proplet_id)
            and data.get("broadcast") is not True
        )

    def _targets_me(self, payload: bytes) -> bool:
        if not self.config.filter_target:
            return True
        try:
            target = json.loads(payload).get("proplet_id") or ""
        except (ValueError, AttributeError):
            return False
        return target in ("", self.config.proplet_id)

    def _on_start(self, start: wire.StartTask, now: float) -> None:
        mine = start.broadcast or not start.proplet_id or start.proplet_id == self.config.proplet_id
        if not mine and self.config.filter_target:
            self._count("starts_for_others")
            return
        entry = self.running.get(start.id)
        if entry is not None:
            self._start_while_running(entry, start, now)
            return
        limit = self._instance_limit()
        if limit and len(self.running) >= limit:
            # A refusal, not a failure: the manager re-queues the task without spending an attempt.
            self._count("starts_refused_busy")
            reason = wire.refusals.busy_error(len(self.running), limit)
            self._refuse(wire.refusals.BUSY, start.id, reason, start.attempt or None, _Proof(start, now))
            return
        self.running[start.id] = _Running(start, now)
        self._count("tasks_started")
        self._commands.append(RunTask(start))
        self._commands.append(LogEvent("task_started", {"task_id": start.id, "name": start.name}))

    def _start_while_running(self, entry: _Running, start: wire.StartTask, now: float) -> None:
        """A start for a task this proplet already runs: the same start again (a duplicate), or a new
        attempt the manager placed here after giving up on the one we run (it thought the start lost).

        The run in progress becomes the new attempt: one execution, whose result answers the attempt
        the manager waits for. If that run is being stopped, the new attempt is refused (nothing
        runs it; the manager places it again without counting it) rather than answered by the
        stopped run's "stopped".
        """
        # Attempt numbers only grow: a lower one is an old start delivered again, a duplicate too.
        new_attempt = start.attempt and entry.start.attempt and start.attempt > entry.start.attempt
        if not new_attempt:
            self._count("duplicate_starts")
            self._commands.append(LogEvent("duplicate_start_ignored", {"task_id": start.id}))
            return
        if entry.cancelled:
            self._count("starts_refused_busy")
            reason = f"proplet busy: still stopping attempt {entry.start.attempt} of this task"
            self._refuse(wire.refusals.BUSY, start.id, reason, start.attempt or None, _Proof(start, now))
            return
        self._count("attempts_adopted")
        adopted = {"task_id": start.id, "from": entry.start.attempt, "to": start.attempt}
        self._commands.append(LogEvent("attempt_adopted", adopted))
        entry.start = start

    def _on_stop(self, stop: wire.StopTask, now: float) -> None:
        if stop.proplet_id and stop.proplet_id != self.config.proplet_id:
            return
        entry = self.running.get(stop.id)
        if entry is None or entry.cancelled:
            return
        if stop.attempt and entry.start.attempt and stop.attempt != entry.start.attempt:
            # Aimed at another attempt of this task (one we no longer run): not ours to stop.
            self._count("stops_for_other_attempts")
            return
        if not self.config.honour_stop:
            self._count("stops_ignored")
            self._commands.append(LogEvent("stop_ignored", {"task_id": stop.id}))
            return
        entry.cancelled = True
        self._count("tasks_stopped")
        self._commands.append(CancelTask(stop.id))
        self._commands.append(
            LogEvent("task_stop_requested", {"task_id": stop.id, "attempt": entry.start.attempt})
        )
        if entry.deployed:
            # A deployed latent task has no run to wait for: stopping it ends it now.
            self.task_finished(stop.id, "", "stopped", now)

    # ------------------------------------------------------------------ memory admission

    def admit(self, task_id: str, wasm: bytes) -> str | None:
        """Before instantiating: reserve the instance's memory. None = go ahead; else the error result.

        Without a budget every module is admitted. On refusal the driver must not run the module and
        reports the returned text through ``task_finished``.
        """
        entry = self.running.get(task_id)
        if entry is not None:
            entry.module_sha256 = hashlib.sha256(wasm).hexdigest()
        if self.budget is None or entry is None:
            return None
        if entry.admission is not None:
            return None
        try:
            if is_component(wasm):
                return "the embedded proplet runs core modules only, not components"
            pages, _ = memory_requirements(wasm)
        except WasmFormatError as err:
            return f"invalid wasm module: {err}"
        outcome = self.budget.admit(len(wasm), pages, module_key=entry.module_sha256)
        if not isinstance(outcome, Admission):
            self._count("admissions_refused")
            if outcome.reason.startswith("instance limit"):
                entry.refused = wire.refusals.BUSY
                return wire.refusals.busy_error(len(self.running), self._instance_limit())
            # Sent as a refusal: the manager re-places the task where it fits, spending no attempt.
            entry.refused = wire.refusals.OUT_OF_MEMORY
            return wire.refusals.out_of_memory_error(outcome.cost_bytes, outcome.free_bytes)
        entry.admission = outcome
        self._heap_peak = max(self._heap_peak, self.budget.used_bytes)
        return None

    # ------------------------------------------------------------------ results

    def task_output(self, task_id: str, data: bytes, stream: str = "stderr") -> None:
        """A running task wrote ``data``: publish it live (not in the embedded profile)."""
        entry = self.running.get(task_id)
        if entry is None or self.embedded or not self.connected or not data:
            return
        room = self.config.live_log_bytes - entry.log_bytes
        if room <= 0:
            return
        fresh = data[:room]
        entry.log_bytes += len(fresh)
        data = entry.log_tails.get(stream, b"") + fresh
        cut = _utf8_boundary(data)
        text, entry.log_tails[stream] = data[:cut].decode("utf-8", "replace"), data[cut:]
        if entry.log_bytes >= self.config.live_log_bytes:
            text += f"\n[propeller: live output stops after {self.config.live_log_bytes} bytes]\n"
        if not text:
            return
        attempt = entry.start.attempt or None
        for at in range(0, len(text), LOG_PIECE_CHARS):  # a fast writer's burst goes in several pieces
            part = text[at : at + LOG_PIECE_CHARS]
            piece = wire.TaskLogs(task_id, self.config.proplet_id, attempt, entry.log_seq, stream, part)
            if self._publish(self.topics.logs, piece):
                entry.log_seq += 1

    def task_finished(
        self,
        task_id: str,
        results: str,
        error: str | None,
        now: float,
        wall: float | None = None,
        *,
        output: TaskOutput | None = None,
        traceparent: str | None = None,
    ) -> None:
        """The run of ``task_id`` ended. ``wall`` (UNIX seconds) dates the receipt; without it the
        receipt's times are on the driver's ``now`` axis. ``output`` (typed result and logs) replaces
        ``results`` when given (not in the embedded profile, whose results are the firmware's).
        ``traceparent``: the driver's execute span (``--otel``), carried opaquely in the result."""
        self._clock = now
        entry = self.running.pop(task_id, None)
        if entry is None:
            return
        if entry.admission is not None and self.budget is not None:
            self.budget.release(entry.admission)
        if error and entry.cancelled:
            error = f"task {task_id} was stopped before completion"
        if entry.refused is not None and error:
            proof = _Proof(entry.start, entry.since, now, wall, entry.module_sha256)
            self._refuse(entry.refused, task_id, error, entry.start.attempt or None, proof)
            return
        self._count("tasks_failed" if error else "tasks_completed")
        if output is not None and not self.embedded:
            results = output.results  # what the receipt signs is what is sent
        else:
            output = None
        proof = _Proof(entry.start, entry.since, now, wall, entry.module_sha256)
        self._result(task_id, results, error, entry.start.attempt or None, proof, output=output,
                     traceparent=traceparent)  # fmt: skip
        self._commands.append(
            LogEvent(
                "task_finished", {"task_id": task_id, "ok": not error, "seconds": round(now - entry.since, 6)}
            )
        )

    def _refuse(self, kind: str, task_id: str, reason: str, attempt: int | None, proof: _Proof) -> None:
        self._commands.append(
            LogEvent("start_refused", {"task_id": task_id, "refused": kind, "reason": reason})
        )
        self._result(task_id, "", reason, attempt, proof, refused=kind)

    def _result(
        self,
        task_id: str,
        results: str,
        error: str | None,
        attempt: int | None,
        proof: _Proof | None = None,
        *,
        refused: str | None = None,
        output: TaskOutput | None = None,
        traceparent: str | None = None,
    ) -> None:
        payload = self._encode_result(task_id, results, error, attempt, proof, refused, output, traceparent)
        if payload is None:
            self._count("results_dropped")
            return
        if self.connected:
            self._commands.append(Publish(self.topics.results, payload, self.config.qos))
            if refused is None:  # a refusal resent later could hit a new start of the same task
                self._sent.append((self._clock, payload))
                while self._sent and self._clock - self._sent[0][0] > self.config.result_resend_window:
                    self._sent.popleft()
        elif len(self._outbox) < self.config.outbox_limit:
            self._outbox.append(payload)
        else:
            self._count("results_dropped")

    def _encode_result(
        self,
        task_id: str,
        results: str,
        error: str | None,
        attempt: int | None,
        proof: _Proof | None,
        refused: str | None = None,
        output: TaskOutput | None = None,
        traceparent: str | None = None,
    ) -> bytes | None:
        """The result payload; one that does not fit (embedded 1023 bytes) becomes an error that does."""
        pid = self.config.proplet_id
        receipt = self._receipt(task_id, results, error, proof)
        message = wire.TaskResult(task_id, results, error or None, pid, attempt, receipt, refused)
        if output is not None:  # our extensions: how to read the result, and the run's logs
            logs = tuple((line.stream, line.data) for line in output.logs)
            kind = output.result_type
            message = replace(message, result_type=kind, logs=logs)
        if traceparent and not self.embedded:
            message = replace(message, traceparent=traceparent)
        try:
            return wire.encode(message, self.config.profile)
        except wire.CodecError as err:
            reason = f"result could not be sent: {err.reason}"
        for cut in (400, 120):  # error texts can be long: shorten until it fits
            receipt = self._receipt(task_id, "", reason[:cut], proof)
            fallback = wire.TaskResult(task_id, "", reason[:cut], pid, attempt, receipt)
            try:
                return wire.encode(fallback, self.config.profile)
            except wire.CodecError:
                continue
        self._commands.append(LogEvent("result_unsendable", {"task_id": task_id}))
        return None

    def _receipt(
        self,
        task_id: str,
        results: str,
        error: str | None,
        proof: _Proof | None,
        *,
        invocation_id: str | None = None,
        inputs: tuple[str | int | float, ...] | None = None,
    ) -> dict[str, Any] | None:
        """The signed receipt of this result (None without a signing key)."""
        if self._signer is None:
            return None
        start = proof.start if proof is not None else None
        since = proof.since if proof is not None else 0.0
        end = proof.finished if proof is not None and proof.finished is not None else since
        # Times on the wall axis when the driver gave one, else on its `now` axis.
        offset = (proof.wall - end) if proof is not None and proof.wall is not None else 0.0
        module = proof.module_sha256 if proof is not None else ""
        if not module and start is not None:  # nothing was loaded: the module the task named
            module = hashlib.sha256(start.file).hexdigest() if start.file else start.sha256
        unsigned = receipts.Receipt(
            task_id=task_id,
            attempt=start.attempt if start is not None else 0,
            proplet_id=self.config.proplet_id,
            module_sha256=module,
            inputs_sha256=receipts.inputs_digest(
                inputs if inputs is not None else (start.inputs if start is not None else ())
            ),
            result_sha256=receipts.result_digest(results, error),
            started_at_ms=max(0, round((since + offset) * 1000)),
            finished_at_ms=max(0, round((end + offset) * 1000)),
            invocation_id=invocation_id,
        )
        if self.config.attest is not None:
            unsigned = self._with_evidence(unsigned)
        return self._signer.sign(unsigned).to_json()

    def _with_evidence(self, unsigned: receipts.Receipt) -> receipts.Receipt:
        try:
            evidence = self.config.attest(receipts.evidence_report_data(unsigned))  # type: ignore[misc]
        except Exception as err:  # no evidence is better than no result
            self._count("evidence_failed")
            self._commands.append(
                LogEvent("evidence_failed", {"task_id": unsigned.task_id, "error": str(err)})
            )
            return unsigned
        text = base64.b64encode(evidence).decode()
        if len(text) > receipts.MAX_EVIDENCE_CHARS:
            self._count("evidence_failed")
            return unsigned
        return replace(unsigned, evidence=text)


@dataclass(frozen=True)
class _Proof:
    """What a receipt says about a run besides its result: the start, when, and the module's digest."""

    start: wire.StartTask
    since: float
    finished: float | None = None
    wall: float | None = None
    module_sha256: str = ""


def _profile_due(entry: _Running, now: float) -> bool:
    """The task's `monitoring_profile` (§2.9): exported only if enabled and export_to_mqtt, no more
    often than its `interval` seconds (the proplet's own metrics interval is the finest step)."""
    profile = entry.start.monitoring_profile
    if profile is None:
        return True
    if not (profile.get("enabled") and profile.get("export_to_mqtt")):
        return False
    interval = float(profile.get("interval") or 0)
    return entry.last_metrics is None or now - entry.last_metrics >= interval


def _utf8_boundary(data: bytes) -> int:
    """Length of ``data`` without a trailing incomplete UTF-8 character (so pieces decode whole)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:  # continuation byte: keep looking for the lead
            continue
        need = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4 if byte & 0xF8 == 0xF0 else 1
        return len(data) - back if need > back else len(data)
    return len(data)


def _is_refusal(payload: bytes) -> bool:
    try:
        message = wire.decode_payload("control/proplet/results", payload)
    except wire.CodecError:
        return False
    return isinstance(message, wire.TaskResult) and bool(message.refused)


_HANDLED = frozenset(
    {"control/manager/start", "control/manager/stop", "control/manager/invoke", "control/manager/discover"}
)


def _task_id_of(payload: bytes) -> str:
    try:
        value = json.loads(payload).get("id")
    except (ValueError, AttributeError):
        return ""
    return value if isinstance(value, str) else ""
