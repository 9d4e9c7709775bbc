"""asyncio driver of the proplet engine: ``propeller proplet``.

MQTT through the project's asyncio client (no thread per client), Wasm on worker threads
(wasmtime releases the GIL, so threads scale and heartbeats keep flowing while modules run).

Link loss: the MQTT client reconnects with capped, jittered exponential backoff (``reconnect_min`` ..
``reconnect_max``, 1 s .. 60 s like upstream's Rust proplet); on every (re)connect the engine re-subscribes,
re-announces itself and sends results that finished while the link was down. The Last Will is an
``offline`` heartbeat: a proplet whose process dies is seen dead at once (its OS closes the socket);
a clean stop announces ``offline`` itself before its DISCONNECT.

``profile="esp32s3"`` runs the embedded profile (`proplets.profile`): firmware wire format and
metadata, ``main`` entry point, i32 inputs and results, and WAMR-like memory admission by the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from orchestrator import wire
from orchestrator.adapters.aio import CANCEL_GRACE_S, cancel_and_wait, wait_event
from orchestrator.adapters.mqtt import MqttClient, MqttError, Will, parse_broker_url
from orchestrator.adapters.otel import Tracing
from orchestrator.adapters.workers import Workers
from proplets import egress
from proplets import profile as embedded
from proplets.backoff import Backoff
from proplets.core import (
    CancelTask,
    CollectMetrics,
    InvokeTask,
    LogEvent,
    PropletConfig,
    PropletEngine,
    Publish,
    RunTask,
    Subscribe,
)
from proplets.delivery import (
    DeliveryError,
    FetchLimits,
    FetchRefused,
    MqttChunkFetcher,
    WasmSource,
    fetch_wasm,
)
from proplets.metrics import MetricsServer, ProcessSampler, PropletCollector, PropletStats
from proplets.output import TaskOutput, task_output
from proplets.runtime import (
    CancelToken,
    Limits,
    RunOutcome,
    RunRequest,
    WasmRuntime,
    WasmtimeRuntime,
)
from proplets.runtime.hal import tee
from proplets.runtime.hal.options import (
    DEFAULT_QUOTA_BYTES,
    DEFAULT_TSM_ROOT,
    HalOptions,
    StoragePathError,
    task_storage_dir,
)
from proplets.runtime.hal.options import default_root as default_hal_root

log = logging.getLogger("propeller.proplet")

LIMIT_FIELDS = frozenset(f.name for f in fields(Limits))


class TaskInputError(Exception):
    """The start request itself is unusable (e.g. limits this proplet cannot apply): a task error."""


VERSION = "0.1.0"
AUTH_HINT = (
    "the broker refused this proplet's credentials (a closed broker admits enrolled identities only): "
    "enroll it with `propeller proplets enroll --out FILE` and start it with `--identity FILE`"
)


@dataclass
class AgentSettings:
    broker: str
    proplet_id: str
    domain: str = "default"
    channel: str = "default"
    namespace: str = "default"
    heartbeat_interval: float = 10.0
    keepalive: float = 30.0
    max_instances: int = 16
    cache_dir: str | None = None
    profile: str = "host"  # or "esp32s3": the embedded profile (proplets/profile.py)
    tags: list[str] = field(default_factory=list)
    default_limits: dict[str, float] = field(default_factory=dict)
    metrics_interval: float = 10.0  # seconds between control/proplet/metrics samples; 0 = off
    metrics_port: int | None = None  # Prometheus endpoint (upstream: 9092); None = off, 0 = any port
    metrics_host: str = "127.0.0.1"
    reconnect_min: float = 1.0
    reconnect_max: float = 60.0
    # Keep retrying the first connection (a service started before its broker) instead of failing.
    wait_for_broker: bool = False
    # Embedded profile: override the device's WAMR heap (bytes); None = the profile's own.
    heap_bytes: int | None = None
    signing_key: bytes | None = field(default=None, repr=False)  # signs execution receipts
    # Where HTTP(S) modules may be fetched from (proplets/egress.py): "public", HOST[:PORT], IP, CIDR.
    fetch_allow: tuple[str, ...] = egress.DEFAULT_ENTRIES
    # Enrolled identity (`propeller proplet --identity FILE`): broker credentials and client id (and the
    # signing key above).
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    client_id: str | None = None
    # HAL (proplets/runtime/hal): tasks' storage roots live under hal_root (None: <tmp>/proplet/hal-storage);
    # attestation reads configfs-tsm at tsm_root; tee_root prefixes the TEE detection paths (tests).
    hal_root: str | None = None
    hal_quota_bytes: int = DEFAULT_QUOTA_BYTES  # per task storage root
    tsm_root: str = DEFAULT_TSM_ROOT
    tee_root: str = "/"
    # Key broker for encrypted tasks (docs/hal.md); empty: encrypted tasks are refused.
    kbs_url: str = ""
    # OpenTelemetry execute spans, children of the manager's dispatch span (orchestrator/adapters/otel.py).
    otel: bool = False
    # Read starts on our own topic too (PropletConfig.direct_start); False: upstream's shared topic only.
    direct_start: bool = True

    def __post_init__(self) -> None:
        if self.profile != "host":
            embedded.device_profile(self.profile)  # ValueError naming the known profiles
        if self.heap_bytes is not None and self.heap_bytes <= 0:
            raise ValueError(f"heap_bytes must be > 0, got {self.heap_bytes}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port must be in 0..65535, got {self.metrics_port}")
        egress.EgressPolicy(self.fetch_allow)  # ValueError naming a bad entry


def with_identity(settings: AgentSettings, identity: str | Path | dict[str, Any]) -> AgentSettings:
    """``settings`` for an enrolled identity: a file path, or the identity-file document itself
    (as returned by enrolment). ValueError naming what is wrong."""
    from orchestrator.enrollment import load_identity, parse_identity

    ident = parse_identity(identity) if isinstance(identity, dict) else load_identity(identity)
    if ident.kind == "manager":
        raise ValueError(f"identity {ident.proplet_id}: a manager identity cannot run a proplet")
    return replace(
        settings,
        proplet_id=ident.proplet_id,
        client_id=ident.client_id,
        username=ident.username,
        password=ident.password,
        signing_key=ident.signing_key,
    )


def host_metadata(settings: AgentSettings) -> dict[str, Any]:
    try:
        import psutil

        total, free = int(psutil.virtual_memory().total), int(psutil.virtual_memory().available)
    except Exception:  # metadata is best effort
        total = free = 0
    return {
        "description": "propeller python proplet",
        "tags": list(settings.tags),
        "environment": "docker" if Path("/.dockerenv").exists() else "binary",
        "os": platform.system().lower(),
        "hostname": platform.node(),
        "cpu_arch": platform.machine(),
        "total_memory_bytes": total,
        "free_memory_bytes": free,
        "max_instances": settings.max_instances,
        "proplet_version": VERSION,
        "wasm_runtime": "wasmtime-python",
        **tee_metadata(tee.detect(settings.tee_root)),
    }


def receipt_attester(settings: AgentSettings) -> Callable[[bytes], bytes] | None:
    """In a TEE with a configfs-tsm report interface: evidence for every receipt (docs/hal.md)."""
    if not tee.detect(settings.tee_root).present or not Path(settings.tsm_root).is_dir():
        return None
    tsm_root = settings.tsm_root
    return lambda report_data: tee.tsm_report(report_data, tsm_root)


def tee_metadata(info: tee.TeeInfo) -> dict[str, Any]:
    """Discovery metadata: whether this proplet runs in a TEE (placement `requires: {"tee": true}`)."""
    return {"tee": info.present, "tee_type": info.kind, "hal": "elastic:hal@0.1.0"}


def engine_config(settings: AgentSettings) -> PropletConfig:
    """The engine's configuration for ``settings``: host, or an embedded device profile."""
    base = PropletConfig(
        proplet_id=settings.proplet_id,
        domain=settings.domain,
        channel=settings.channel,
        namespace=settings.namespace,
        heartbeat_interval=settings.heartbeat_interval,
        metrics_interval=settings.metrics_interval,
        max_instances=settings.max_instances,
        signing_key=settings.signing_key,
        direct_start=settings.direct_start,
    )
    if settings.profile == "host":
        return replace(base, metadata=host_metadata(settings), attest=receipt_attester(settings))
    device = embedded.device_profile(settings.profile)
    budget = device.budget
    if settings.heap_bytes is not None:
        budget = replace(budget, heap_bytes=settings.heap_bytes)
    # The engine announces the budget's live figures (PropletEngine.discovery); these are the start.
    metadata = embedded.discovery_metadata(
        device, total_bytes=budget.heap_bytes, free_bytes=budget.heap_bytes,
        max_instances=budget.max_instances, tags=settings.tags,
    )  # fmt: skip
    return replace(
        base,
        namespace=embedded.NAMESPACE,
        metadata=metadata,
        profile=wire.Profile.EMBEDDED,
        budget=budget,
        # Like our firmware (not upstream's), heartbeats list running tasks so the manager notices a
        # lost start or result; a list too long for 1023 bytes falls back to a plain heartbeat.
        report_running=True,
    )


class PropletAgent:
    def __init__(
        self,
        settings: AgentSettings,
        *,
        runtime: WasmRuntime | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._tee = tee.detect(settings.tee_root)  # announced in discovery metadata (host_metadata)
        self.engine = PropletEngine(engine_config(settings))
        self.tracing = Tracing(settings.otel, "propeller-proplet")  # --otel: execute spans
        self.runtime = runtime or WasmtimeRuntime(
            cache_dir=Path(settings.cache_dir) if settings.cache_dir else None
        )
        self._clock = clock
        # WasmtimeRuntime.run_inline: small pure modules run on the loop (see its docstring).
        self._run_inline: Callable[[RunRequest, CancelToken], RunOutcome | None] | None = getattr(
            self.runtime, "run_inline", None
        )
        self._pool = Workers(max(1, settings.max_instances), "wasm")
        self._cancels: dict[str, CancelToken] = {}
        self._default_limits: Limits | None = None  # built on first use (_limits)
        self._deployed: dict[str, bytes] = {}  # latent task id -> module bytes
        self._chunks = MqttChunkFetcher(self._request_chunks)
        self._fetch_limits = FetchLimits(egress=egress.EgressPolicy(settings.fetch_allow))
        self._jobs: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._timer_due = 0.0  # when _timer_loop looks at the engine's deadlines next, unless woken
        self._timer: asyncio.Task[None] | None = None
        self._connects = 0
        self._sampler: ProcessSampler | None = None
        self.stats = PropletStats(
            counters=lambda: dict(self.engine.counters), running=lambda: len(self.engine.running)
        )
        self.metrics_server: MetricsServer | None = None
        will_topic, will_payload = self.engine.last_will()
        broker = parse_broker_url(settings.broker)
        if settings.username is not None:
            broker = replace(broker, username=settings.username, password=settings.password)
        self.mqtt = MqttClient(
            broker,
            settings.client_id or settings.proplet_id,
            keepalive=settings.keepalive,
            will=Will(will_topic, will_payload, 1),
            on_message=self._on_message,
            on_connect=self._on_connect,
            on_disconnect=self._on_disconnect,
            backoff_min=settings.reconnect_min,
            backoff_max=settings.reconnect_max,
        )

    async def _first_connect(self) -> None:
        """Connect; with ``wait_for_broker``, retry with capped, jittered backoff until the broker is up."""
        backoff = Backoff(self.settings.reconnect_min, self.settings.reconnect_max)
        while True:
            try:
                await self.mqtt.connect()
                return
            except MqttError as err:
                if not self.settings.wait_for_broker:
                    raise
                pause = backoff.next()
                event: dict[str, Any] = {"event": "broker_unreachable", "error": str(err)}
                event["retry_in_s"] = round(pause, 2)
                if "Not authorized" in str(err) or "user name or password" in str(err):
                    event["hint"] = AUTH_HINT
                log.warning(json.dumps(event))
                await asyncio.sleep(pause)

    async def start(self) -> None:
        if self.settings.metrics_port is not None:
            registry = CollectorRegistry()
            registry.register(PropletCollector(self.stats))
            self.metrics_server = MetricsServer(
                registry, self.settings.metrics_host, self.settings.metrics_port
            )
            await self.metrics_server.start()
        try:
            await self._first_connect()
        except BaseException:
            if self.metrics_server is not None:
                await self.metrics_server.stop()
            raise
        self._timer = asyncio.create_task(self._timer_loop(), name=f"proplet-{self.settings.proplet_id}")

    async def stop(self, *, clean: bool = True) -> None:
        """Interrupt running modules, close the link (clean: ``offline``, then DISCONNECT; else as a
        crashed process whose OS closes the socket: the will fires at once) and leave no task or thread
        behind (the wasm workers and the epoch ticker are joined)."""
        for token in self._cancels.values():
            token.cancel()
        await cancel_and_wait([self._timer], f"proplet {self.settings.proplet_id} stop")
        if self._jobs:
            _done, pending = await asyncio.wait(list(self._jobs), timeout=CANCEL_GRACE_S)
            # e.g. a fetch waiting for chunks that will never come
            await cancel_and_wait(pending, f"proplet {self.settings.proplet_id} stop")
        if clean:
            self.engine.shutting_down(self._clock())
            with contextlib.suppress(Exception):
                self._execute()
                await self.mqtt.disconnect()
        else:
            self.mqtt.abort()
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        # Every job has ended and every token is cancelled, so the workers are idle: joining is quick.
        self._pool.shutdown(wait=True, cancel_pending=True)
        self.runtime.close()

    # ------------------------------------------------------------------ engine I/O

    def _on_connect(self) -> None:
        self._connects += 1
        self.stats.reconnects = self._connects - 1
        self.engine.on_connected(self._clock())
        self._execute()

    def _on_disconnect(self) -> None:
        self.engine.on_disconnected(self._clock())
        self._execute()

    def _on_message(self, topic: str, payload: bytes) -> None:
        if topic == self.engine.topics.registry_server:
            try:
                self._chunks.on_payload(payload)
            except DeliveryError as err:
                log.warning(json.dumps({"event": "malformed_chunk", "error": str(err)}))
            return
        self.engine.handle(topic, payload, self._clock())
        self._execute()

    async def _request_chunks(self, app_name: str) -> None:
        self.mqtt.publish(self.engine.topics.registry_request, wire.encode(wire.RegistryRequest(app_name)), 1)

    async def _timer_loop(self) -> None:
        while True:
            deadline = self.engine.next_deadline()
            now = self._clock()
            delay = 0.5 if deadline is None else max(0.0, deadline - now)
            self._timer_due = now + min(delay, 0.5)
            self._wake.clear()
            await wait_event(self._wake, min(delay, 0.5))
            self.engine.on_timer(self._clock())
            self._execute()

    def _execute(self) -> None:
        while commands := self.engine.take_commands():
            self._execute_batch(commands)
        # Wake the timer loop only for a deadline sooner than it will look anyway: a task's start and
        # end leave the heartbeat and metrics times as they were, and waking it for each message cost
        # ~5 % of a proplet's CPU per task.
        due = self.engine.next_deadline()
        if due is not None and due < self._timer_due:
            self._wake.set()

    def _execute_batch(self, commands: list[Any]) -> None:
        for command in commands:
            if isinstance(command, Publish):
                try:
                    self.mqtt.publish(command.topic, command.payload, command.qos)
                except MqttError as err:  # the link died before paho told us: keep results for later
                    self.engine.publish_failed(command.topic, command.payload)
                    log.warning(
                        json.dumps({"event": "publish_failed", "topic": command.topic, "error": str(err)})
                    )
            elif isinstance(command, Subscribe):
                self.mqtt.subscribe(command.topic, command.qos)
            elif isinstance(command, RunTask):
                self._spawn(self._run(command.start))
            elif isinstance(command, InvokeTask):
                self._spawn(self._invoke(command))
            elif isinstance(command, CollectMetrics):
                self._collect_metrics()
            elif isinstance(command, CancelTask):
                token = self._cancels.get(command.task_id)
                if token is not None:
                    token.cancel()
                self._deployed.pop(command.task_id, None)
            elif isinstance(command, LogEvent) and log.isEnabledFor(logging.INFO):
                # one per task ("task_finished"): encoding JSON for a record dropped at the usual
                # warning level cost ~4 % of a proplet's CPU per task
                log.info(
                    json.dumps(
                        {"event": command.name, "proplet_id": self.settings.proplet_id, **command.fields},
                        default=str,
                    )
                )

    def _collect_metrics(self) -> None:
        # psutil reads a few /proc files: well under a millisecond, so it runs inline on the loop.
        if self._sampler is None:
            self._sampler = ProcessSampler()
        try:
            sample = self._sampler.sample()
        except Exception as err:  # a metrics hiccup must not stop the proplet
            log.warning(json.dumps({"event": "metrics_sample_failed", "error": str(err)}))
            return
        self.engine.metrics_sampled(sample, self._clock(), time.time())  # _execute sends what it queued

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        job = asyncio.get_running_loop().create_task(coroutine)
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    def _limits(self, start: wire.StartTask) -> Limits:
        """The run's limits: the proplet's defaults under the task's own. Most tasks set none, and
        then the one ``Limits`` built for that case serves them all (this runs per task)."""
        plain = not start.limits and not start.daemon
        if plain and self._default_limits is not None:
            return self._default_limits
        requested: dict[str, Any] = {**self.settings.default_limits, **dict(start.limits or {})}
        if start.daemon and "timeout_s" not in (start.limits or {}):
            requested["timeout_s"] = None  # a daemon runs until stopped (unless it sets its own limit)
        unknown = sorted(set(requested) - LIMIT_FIELDS)
        if unknown:
            raise TaskInputError(
                f"unknown limit {unknown[0]!r} (this proplet knows {', '.join(sorted(LIMIT_FIELDS))})"
            )
        try:
            limits = Limits(**requested)
        except (TypeError, ValueError) as err:
            raise TaskInputError(f"bad limits: {err}") from None
        if plain:
            self._default_limits = limits
        return limits

    def _request(
        self,
        start: wire.StartTask,
        wasm: bytes,
        inputs: tuple[Any, ...],
        env: dict[str, str],
        on_output: Callable[[str, bytes], None] | None = None,
    ) -> RunRequest:
        limits = self._limits(start)
        try:
            storage = task_storage_dir(
                self.settings.hal_root or default_hal_root(), start.id, start.hal_storage_path
            )
        except StoragePathError as err:
            raise TaskInputError(str(err)) from None
        extra = {"PROPLET_ID": self.settings.proplet_id}
        if start.parent_results:
            # workflow children see their parents' results as upstream sends them: {parent_task_id:
            # results text} as JSON; and, from our manager, how to read each text (json/text/binary)
            extra["PARENT_RESULTS"] = json.dumps(dict(start.parent_results), separators=(",", ":"))
            if start.parent_result_types:
                types = dict(start.parent_result_types)
                extra["PARENT_RESULT_TYPES"] = json.dumps(types, separators=(",", ":"))
        return RunRequest(
            task_id=start.id,
            wasm=wasm,
            function=start.name,
            inputs=inputs,
            cli_args=tuple(start.cli_args),
            env={**env, **extra},
            limits=limits,
            hal=HalOptions(
                storage,
                tuple(self.settings.fetch_allow),
                self.settings.tsm_root,
                self.settings.hal_quota_bytes,
                self._tee.kind,
            ),
            on_output=on_output,
            live_stdout=start.daemon and on_output is not None,
        )

    async def _execute_wasm(self, request: RunRequest, token: CancelToken) -> tuple[str, str | None]:
        outcome = await self._pool.run(self.runtime.run, request, token)
        return outcome.results, outcome.error

    def _output_seen(self, task_id: str, stream: str, data: bytes) -> None:
        self.engine.task_output(task_id, data, stream)
        self._execute()

    async def _run_with_output(
        self, start: wire.StartTask, wasm: bytes, token: CancelToken, notes: list[str]
    ) -> tuple[str, str | None, TaskOutput]:
        """Run the task streaming its stderr live (and its stdout, for a daemon, whose output never
        ends in a result); the typed result and logs come back with it."""
        loop = asyncio.get_running_loop()
        task_id, daemon = start.id, start.daemon

        def on_output(stream: str, chunk: bytes) -> None:  # on the run's thread: hand over to the loop
            loop.call_soon_threadsafe(self._output_seen, task_id, stream, chunk)

        request = self._request(start, wasm, tuple(start.inputs), dict(start.env), on_output=on_output)

        if not daemon and self._run_inline is not None:
            quick = self._run_inline(request, token)  # a small pure module: no thread hand-off
            if quick is not None:
                output = task_output(quick, request.limits.log_bytes, notes)
                return output.results, quick.error, output

        def run() -> tuple[str | None, TaskOutput]:  # typing a 1 MiB result is work: off the loop too
            outcome = self.runtime.run(request, token)
            return outcome.error, task_output(outcome, request.limits.log_bytes, notes)

        error, output = await self._pool.run(run)
        return output.results, error, output

    async def _run(self, start: wire.StartTask) -> None:
        token = CancelToken()
        self._cancels[start.id] = token
        attributes = {"task_id": start.id, "task_name": start.name, "proplet_id": self.settings.proplet_id,
                      "attempt": start.attempt}  # fmt: skip
        span = self.tracing.start("propeller.execute", attributes, start.traceparent or None)
        results, error = "", None
        output: TaskOutput | None = None
        notes: list[str] = []
        try:
            if start.encrypted:
                raise TaskInputError(encrypted_refusal(self.settings.kbs_url))
            wasm = await fetch_wasm(
                WasmSource(file=start.file, image_url=start.image_url, sha256=start.sha256),
                limits=self._fetch_limits,
                chunk_fetcher=self._chunks,
            )
            self.stats.fetch_bytes += len(wasm)
            notes.append(_fetch_note(start, len(wasm)))
            refusal = self.engine.admit(start.id, wasm)
            if refusal is not None:
                error = refusal  # nothing runs: the instance does not fit the device
            elif self.engine.embedded:
                results, error = await self._run_embedded(start, wasm, token)
            elif start.latent:
                self._deployed[start.id] = wasm
                self.engine.deployed(start.id)
                self.tracing.end(span)
                return
            else:
                results, error, output = await self._run_with_output(start, wasm, token, notes)
        except (DeliveryError, TaskInputError) as err:
            if isinstance(err, FetchRefused):
                self.stats.fetch_refused += 1
                log.warning(json.dumps({"event": "fetch_refused", "task_id": start.id, "rule": str(err)}))
            error = str(err)
        except Exception as err:  # a bug must become a failed task, never a silent hang
            log.exception("task %s crashed the runner", start.id)
            error = f"proplet internal error: {type(err).__name__}: {err}"
        finally:
            self._cancels.pop(start.id, None)
        if start.id not in self._deployed:
            self.engine.task_finished(start.id, results, error, self._clock(), time.time(), output=output,
                                      traceparent=self.tracing.traceparent(span))  # fmt: skip
        self.tracing.end(span, error)
        self._execute()

    async def _run_embedded(
        self, start: wire.StartTask, wasm: bytes, token: CancelToken
    ) -> tuple[str, str | None]:
        """As the firmware: call the task's export or ``main`` with i32s, join the i32 results."""
        entry = self.engine.running.get(start.id)
        admission = entry.admission if entry is not None else None
        free_after = admission.free_bytes_after if admission is not None else None
        try:
            plan = embedded.call_plan(start.name, start.inputs, wasm, free_after)
        except ValueError as err:
            return "", str(err)
        request = replace(self._request(start, wasm, plan.inputs, dict(start.env)), function=plan.function)
        if plan.memory_cap_bytes is not None:
            # Linear memory may grow into what the device heap has left after this instance.
            request = replace(request, limits=replace(request.limits, memory_bytes=plan.memory_cap_bytes))
        outcome = await self._pool.run(self.runtime.run, request, token)
        if outcome.error is not None:
            return "", outcome.error
        try:
            return embedded.join_results(outcome.values), None
        except ValueError as err:
            return "", str(err)

    async def _invoke(self, command: InvokeTask) -> None:
        start, invoke = command.start, command.invoke
        wasm = self._deployed.get(start.id)
        results, error = "", None
        if wasm is None:
            error = f"task {start.id} has not been precompiled; deploy it as a latent task first"
        else:
            env = {**dict(start.env), **dict(invoke.env)}
            try:
                request = self._request(start, wasm, tuple(invoke.inputs or start.inputs), env)
                results, error = await self._execute_wasm(request, CancelToken())
            except TaskInputError as err:
                error = str(err)
            except Exception as err:
                log.exception("invocation %s crashed the runner", invoke.invocation_id)
                error = f"proplet internal error: {type(err).__name__}: {err}"
        self.engine.invocation_finished(
            start.id, invoke.invocation_id, results, error, self._clock(), time.time()
        )
        self._execute()


def encrypted_refusal(kbs_url: str) -> str:
    """Why this proplet will not run an encrypted workload (docs/hal.md: the key-broker path)."""
    if not kbs_url:
        return (
            "encrypted tasks need a key broker: this proplet has none configured "
            "(--kbs-url / PROPLET_KBS_URI, inside a TEE; see docs/hal.md)"
        )
    return (
        f"encrypted tasks are not supported by the Python proplet: decrypting through the key broker "
        f"{kbs_url} needs the CoCo keyprovider and a TEE (docs/hal.md)"
    )


def _fetch_note(start: wire.StartTask, size: int) -> str:
    """Where the module came from, for the task's logs."""
    if start.file:
        source = "inline file"
    elif start.image_url.startswith(("http://", "https://")):
        source = f"HTTP {start.image_url}"
    else:
        source = f"OCI {start.image_url} (registry chunks)"
    pinned = f", sha256 {start.sha256[:12]} verified" if start.sha256 else ""
    return f"module: {size} bytes from {source}{pinned}"


def default_proplet_id() -> str:
    return f"proplet-{platform.node()}-{os.getpid()}"
