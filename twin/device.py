"""A simulated device of the twin: the real proplet engine, an MQTT link, a device model.

One ``SimDevice`` per device, all on one simpy ``Environment`` (no thread per device). It is the simpy
counterpart of ``proplets.agent``: it executes the ``PropletEngine``'s commands, feeds it MQTT messages
and services its timers as simpy timeouts. MQTT, the device's link and Wasm execution go through the
run's ``twin.transport.Transport``: live (a paho client on the asyncio loop, messages injected into the
simulation at the scaled wall time) or virtual (a client of the broker model, all in simulated time).

Kinds: ``esp32s3`` (embedded wire profile; boot, Wi-Fi and MQTT-connect delays from ``TimingModel``;
each instance admitted by ``MemoryModel`` — refused ones fail at once with "out of memory: need N bytes,
free M bytes"; modules run for real on wasmtime for their true result, while the task lasts the
``CpuModel``'s simulated time for the fuel they consumed, shared over the cores), ``upstream-firmware``
(the same with upstream's failures, as the proplet engine's configuration: no reconnect, execution
blocks the MQTT client and the timers, one task at a time, no target filtering, stops ignored) and
``host`` (Rust wire profile, real duration).

Lifecycle: dead (off) → booting → online ⇄ running; offline while the link is down. Faults, as the
broker sees them (design §7; the table in scenarios/README.md):

- ``power_loss`` (and brownout): silence. The device's connection vanishes without a packet: through its
  link proxy (``cut``, ``LinkProxy.sever``) the broker's socket stays open and hears nothing, so the
  broker notices at keep-alive expiry (1.5 × keepalive) and only then fires the Last Will. Without a
  proxy the client is silenced and left open (a ghost) for the same effect. Running tasks are lost;
  the device boots again later with a fresh engine.
- ``reset`` (watchdog): the same silence, then at once a reboot whose reconnect with the same client id
  takes the old session over: the broker fires the old will then (or at keep-alive expiry if sooner).
- ``clean_shutdown``: the engine announces ``offline`` and the client sends DISCONNECT (no will).
- ``wifi_drop``: the link is silent but the device runs on: its tasks keep executing, results wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import simpy

from orchestrator import wire
from orchestrator.adapters.mqtt import MqttError, Will
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
)  # fmt: skip
from proplets.output import TaskOutput, task_output
from proplets.runtime import CancelToken, Limits, RunOutcome, RunRequest, WasmRuntime
from proplets.runtime.wasmbin import PAGE_BYTES, WasmFormatError, memory_requirements
from twin.broker_model import ModelClient
from twin.clock import AsyncSimClock
from twin.devices.esp32s3 import (
    ESP32S3,
    OUR_FIRMWARE,
    UPSTREAM_FAILURES,
    CpuModel,
    Esp32S3Spec,
    FirmwareFlags,
    Instance,
    MemoryModel,
    TimingModel,
    execution_seconds,
)  # fmt: skip
from twin.devices.host import HOST, HostSpec
from twin.scenario.spec import FleetGroup, Timers
from twin.scenario.trace import Trace
from twin.transport import LiveTransport, MqttLink, Transport

if TYPE_CHECKING:
    from twin.cohort import HeartbeatCohort

HOST_RESTART_S = 0.5  # a host proplet is a process: it restarts in well under a second (inference)
TWIN_IP = "192.168.4.23"  # what a board's console shows for wifi_up; the twin has no real station
TWIN_RSSI = -55
Listener = Callable[[str, dict[str, object]], None]  # (console event, fields): see firmware/CONSOLE.md


# ---------------------------------------------------------------------------------------------- pure
def device_state(powered: bool, booted: bool, connected: bool, link_up: bool, running: int) -> str:
    """The device's trace state from what it knows about itself."""
    if not powered:
        return "dead"
    if not booted:
        return "booting"
    if not connected or not link_up:
        return "offline"
    return "running" if running else "online"


def esp_spec(group: FleetGroup) -> Esp32S3Spec:
    """The ESP32-S3 model for a fleet group: its ``profile`` (default: the Zephyr benchmark's), then
    SRAM (``memory``), PSRAM as the WAMR heap, CPU, slots."""
    base = group.profile or ESP32S3
    changes: dict[str, Any] = {}
    if group.memory_bytes:
        changes["free_dram_bytes"] = group.memory_bytes
    if group.psram_bytes:
        changes.update(psram_bytes=group.psram_bytes, wamr_heap_in_psram=True)
    if group.cpu_mhz:
        changes["cpu_hz"] = int(group.cpu_mhz * 1e6)
    if group.max_instances:
        changes["max_instances"] = group.max_instances
    return replace(base, **changes) if changes else base


def firmware_flags(kind: str) -> FirmwareFlags:
    return UPSTREAM_FAILURES if kind == "upstream-firmware" else OUR_FIRMWARE


# ---------------------------------------------------------------------------------------------- device
@dataclass(frozen=True)
class DeviceConfig:
    name: str
    kind: str  # esp32s3 | upstream-firmware | host
    proplet_id: str
    domain: str
    host: str  # where the MQTT client dials: the broker, or this device's LinkProxy
    port: int
    timers: Timers
    spec: Esp32S3Spec | HostSpec = ESP32S3
    tags: tuple[str, ...] = ()
    channel: str = "default"
    # The device's enrolled identity on a closed broker: user name (= its client id), password and, for
    # our proplets, the Ed25519 key that signs receipts. None: connect anonymously (an open broker).
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    signing_key: bytes | None = field(default=None, repr=False)

    @property
    def embedded(self) -> bool:
        return self.kind in ("esp32s3", "upstream-firmware")

    @property
    def flags(self) -> FirmwareFlags:
        return firmware_flags(self.kind)


@dataclass
class _Job:
    start: wire.StartTask
    instance: Instance | None
    token: CancelToken
    result: tuple[str, str | None] | None = None  # set when wasmtime returned; the CPU model times it
    started: float | None = None  # accepted and running (not refused at the door)
    output: TaskOutput | None = None  # host devices: typed result and logs, as the Python proplet sends


@dataclass
class DeviceStats:
    boots: int = 0
    connects: int = 0
    tasks_run: int = 0
    refused: int = 0
    first_online: float | None = None


@dataclass
class Shared:
    """What every device of a run shares: the simulation, the clock, the trace, the Wasm runtime, and
    the transport (MQTT, links, Wasm execution) the runner chose: live by default."""

    env: simpy.Environment
    clock: AsyncSimClock
    trace: Trace
    runtime: WasmRuntime
    executor: Executor | None  # the live transport's thread pool for wasmtime; None in virtual time
    transport: Transport | None = None
    jobs: set[asyncio.Task[Any]] = field(default_factory=set)
    # Virtual time: steady devices' heartbeats sent in bulk (twin.cohort); None: every one as a message.
    cohort: HeartbeatCohort | None = None

    def __post_init__(self) -> None:
        if self.transport is None:
            assert self.executor is not None, "the live transport runs wasmtime in a thread pool"
            self.transport = LiveTransport(self.clock, self.runtime, self.executor, self.spawn)

    @property
    def net(self) -> Transport:
        assert self.transport is not None
        return self.transport

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.jobs.add(task)
        task.add_done_callback(self.jobs.discard)


class SimDevice:
    def __init__(self, config: DeviceConfig, shared: Shared, rng: random.Random) -> None:
        self.config = config
        self.shared = shared
        self.env = shared.env
        self.rng = rng
        self.flags = config.flags
        self.stats = DeviceStats()
        self.timing = TimingModel(config.spec, rng) if isinstance(config.spec, Esp32S3Spec) else None
        self.memory: MemoryModel | None = None
        self.cpu: CpuModel | None = None
        self.engine: PropletEngine | None = None
        self.mqtt: MqttLink | None = None
        # How to make this device's connection vanish without a packet (its link's sever: a LinkProxy
        # live, a ModelLink in virtual time); None: the client itself is silenced and left open.
        self.cut: Callable[[], object] | None = None
        self._ghosts: list[MqttLink] = []  # silenced clients of earlier lives, closed at shutdown
        self.gen = 0  # power cycles: callbacks of an older life are ignored
        self.powered = False
        self.booted = False
        self.wifi_down = 0  # nested Wi-Fi drops
        self.clock_offset = 0.0
        self.jobs: dict[str, _Job] = {}
        self._blocked = False  # upstream: a module is running inside the MQTT callback
        self._inbox: list[tuple[str, bytes]] = []
        self._timer_token = 0
        self._timer_at: float | None = None
        self._cpu_token = 0
        self._state = ""
        self._free = -1
        self._heartbeats = 0
        self._last_heartbeat: tuple[bytes, float] | None = None  # payload, when
        self._in_cohort = False
        # A board's console (twin.board_device) listens to what the firmware would log; None: nobody.
        self.listener: Listener | None = None
        self.trace.emit(
            self.env.now, "device", config.name, proplet_id=config.proplet_id, device_kind=config.kind
        )

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def trace(self) -> Trace:
        return self.shared.trace

    @property
    def now(self) -> float:
        return float(self.env.now)

    @property
    def online(self) -> bool:
        return self._state in ("online", "running")

    # ------------------------------------------------------------------ trace
    def _tell(self, event: str, **fields: object) -> None:
        if self.listener is not None:
            self.listener(event, fields)

    def _update(self) -> None:
        connected = self.engine is not None and self.engine.connected
        state = device_state(self.powered, self.booted, connected, self.wifi_down == 0, len(self.jobs))
        if state != self._state:
            self._state = state
            self.trace.emit(self.now, "device", self.name, state=state)
            if state == "online" and self.stats.first_online is None:
                self.stats.first_online = self.now
        free = self.memory.free_bytes if self.memory is not None else None
        if free is not None and free != self._free:
            self._free = free
            self.trace.emit(self.now, "device", self.name, free_memory=max(0, free))

    # ------------------------------------------------------------------ power
    def power_on(self, delay: float = 0.0) -> None:
        """Boot after ``delay`` simulated seconds (the fleet staggers its devices)."""
        self.env.process(self._boot(self.gen, delay))

    def power_loss(self, off_for: float | None, state: str = "dead") -> None:
        """Cut power: the connection goes silent (the broker fires the will at keep-alive expiry, or
        at a takeover by the next boot), tasks are lost; power is back after ``off_for``."""
        self.leave_cohort()
        self.gen += 1
        self._kill_link(silent=True)
        self._power_off(off_for, state)

    def clean_shutdown(self, off_for: float | None) -> None:
        """An orderly power-off: ``offline`` is announced, then DISCONNECT (the broker drops the will)."""
        self.leave_cohort()
        engine, client = self.engine, self.mqtt
        self.gen += 1
        self.mqtt = None
        if engine is not None and client is not None and engine.connected:
            engine.shutting_down(self.now)
            for command in engine.take_commands():
                if isinstance(command, Publish):
                    with contextlib.suppress(MqttError):
                        client.publish(command.topic, command.payload, command.qos)
        if client is not None:
            self.shared.net.disconnect(client)
        self._power_off(off_for, "dead")

    def _power_off(self, off_for: float | None, state: str) -> None:
        for job in self.jobs.values():
            job.token.cancel()
        self.jobs.clear()
        self.powered = self.booted = False
        self.engine = None
        self.memory = self.cpu = None
        self._free = -1
        self._blocked = False
        self._inbox.clear()
        self._timer_at = None
        if state != "dead":
            self._state = state
            self.trace.emit(self.now, "device", self.name, state=state)
        else:
            self._update()
        if off_for is not None:
            self.power_on(off_for)

    def shutdown(self) -> None:
        """End of the run: drop the link and ignore everything still in flight."""
        self.leave_cohort()
        self.gen += 1
        self._kill_link()
        for ghost in self._ghosts:
            ghost.abort()
        self._ghosts.clear()
        for job in self.jobs.values():
            job.token.cancel()

    def _kill_link(self, silent: bool = False) -> None:
        """Drop the connection. ``silent``: without a packet towards the broker (a dead board's
        socket); otherwise as the OS closes a socket (FIN: the broker fires the will at once)."""
        client, self.mqtt = self.mqtt, None
        if client is None:
            return
        if not silent:
            client.abort()
        elif self.cut is not None:
            self.cut()  # the link proxy keeps the broker's side open and mute
            client.abort()  # our end of it is gone with the board
        else:
            client.silence()  # no read, write or ping; the socket stays open until shutdown
            self._ghosts.append(client)

    def _boot(self, gen: int, delay: float) -> Any:
        if delay > 0:
            yield self.env.timeout(delay)
        if gen != self.gen:
            return
        self.powered, self.booted = True, False
        self.stats.boots += 1
        self._new_life()
        self._update()
        if self.timing is not None:
            yield self.env.timeout(self.timing.boot())
            yield self.env.timeout(self.timing.wifi_association(upstream_dhcp_wait=self.flags.no_reconnect))
            if gen == self.gen and not self.wifi_down:
                self._tell("wifi_up", ip=TWIN_IP, rssi=TWIN_RSSI)
        else:
            yield self.env.timeout(HOST_RESTART_S * self.rng.uniform(0.5, 1.5))
        backoff = Backoff(self.config.timers.reconnect_min, self.config.timers.reconnect_max, self.rng)
        refused = False
        while gen == self.gen:
            while self.wifi_down and gen == self.gen:
                yield self.env.timeout(0.1)
            if self.timing is not None:
                yield self.env.timeout(self.timing.mqtt_connect())
            done = self.env.event()
            self._connect(gen, done)
            ok = yield done
            if ok or gen != self.gen:
                return
            if not refused:  # once a boot: the broker is down, or a closed broker does not know it
                refused = True
                self.trace.emit(self.now, "device", self.name, connect="refused")
            # The first connection failed (broker down): upstream retries every 5 s, ours backs off.
            if self.flags.no_reconnect and isinstance(self.config.spec, Esp32S3Spec):
                yield self.env.timeout(self.config.spec.mqtt_retry_s)
            else:
                yield self.env.timeout(backoff.next())

    def _new_life(self) -> None:
        """A fresh engine, device model and MQTT client, as after a reset."""
        cfg = self.config
        gen = self.gen
        if isinstance(cfg.spec, Esp32S3Spec):
            self.memory, self.cpu = MemoryModel(cfg.spec), CpuModel(cfg.spec)
        self.engine = PropletEngine(self._engine_config())
        topic, payload = self.engine.last_will()
        t = cfg.timers
        self.mqtt = self.shared.net.client(
            cfg.name, cfg.host, cfg.port, cfg.proplet_id, keepalive=t.keepalive,
            username=cfg.username, password=cfg.password if cfg.username else None,
            will=Will(topic, payload, 1), reconnect=self.engine.config.reconnect,
            backoff_min=t.reconnect_min, backoff_max=t.reconnect_max, rng=self.rng.random(),
            on_message=lambda tp, pl: self._if_gen(gen, self._on_message, tp, pl),
            on_connect=lambda: self._if_gen(gen, self._on_connected),
            on_disconnect=lambda: self._if_gen(gen, self._on_disconnected),
        )  # fmt: skip

    def _engine_config(self) -> PropletConfig:
        cfg = self.config
        base: dict[str, Any] = dict(
            proplet_id=cfg.proplet_id, domain=cfg.domain, channel=cfg.channel,
            heartbeat_interval=cfg.timers.heartbeat_interval, metrics_interval=0.0,
            signing_key=cfg.signing_key,
        )  # fmt: skip
        if isinstance(cfg.spec, Esp32S3Spec):
            memory = self.memory
            assert memory is not None
            limit = 0 if self.flags.blocking_execution else cfg.spec.max_instances
            metadata = embedded.discovery_metadata(
                embedded.ESP32S3, total_bytes=memory.total_bytes, free_bytes=memory.free_bytes,
                max_instances=1 if self.flags.blocking_execution else cfg.spec.max_instances, tags=cfg.tags,
            )  # fmt: skip
            flags = self.flags
            return PropletConfig(
                **base, namespace=embedded.NAMESPACE, metadata=metadata, profile=wire.Profile.EMBEDDED,
                # our firmware lists running tasks in its heartbeats; upstream's does not
                report_running=flags == OUR_FIRMWARE, max_instances=limit,
                filter_target=not flags.no_target_filter, honour_stop=not flags.rejects_stop,
                blocking_execution=flags.blocking_execution, reconnect=not flags.no_reconnect,
            )  # fmt: skip
        spec = cfg.spec
        metadata = {
            "description": "propeller twin host proplet", "tags": list(cfg.tags), "environment": "binary",
            "os": "linux", "hostname": cfg.name, "cpu_arch": "aarch64",
            "total_memory_bytes": spec.memory_bytes,
            "free_memory_bytes": spec.wasm_memory_budget_bytes, "max_instances": spec.max_instances,
            "proplet_version": "twin", "wasm_runtime": "wasmtime-python",
        }  # fmt: skip
        return PropletConfig(**base, metadata=metadata, max_instances=spec.max_instances)

    def _connect(self, gen: int, done: simpy.Event) -> None:
        client = self.mqtt

        def answered(ok: bool) -> None:
            if gen == self.gen and not done.triggered:
                done.succeed(ok)

        if client is None:
            done.succeed(False)
        else:
            self.shared.net.connect(client, answered)

    def _if_gen(self, gen: int, fn: Callable[..., None], *args: Any) -> None:
        if gen == self.gen:  # callbacks of an older life are ignored
            fn(*args)

    # ------------------------------------------------------------------ link
    def _on_connected(self) -> None:
        engine = self.engine
        if engine is None:
            return
        self.booted = True
        self.stats.connects += 1
        self._tell("mqtt_connected", broker=f"{self.config.host}:{self.config.port}")
        if self.memory is not None:  # announce the heap as it stands now, as the firmware does
            free = max(0, self.memory.free_bytes)
            if engine.config.metadata.get("free_memory_bytes") != free:  # unchanged since boot: as is
                md = dict(engine.config.metadata)
                md["free_memory_bytes"] = free
                engine.config = replace(engine.config, metadata=md)
        engine.on_connected(self.now)
        self._tell("discovery_sent", proplet_id=self.config.proplet_id)
        self._pump()

    def _on_disconnected(self) -> None:
        self.leave_cohort()
        if self.engine is not None:
            self._tell("mqtt_disconnected", reason="wifi_down" if self.wifi_down else "link_lost")
            self.engine.on_disconnected(self.now)
            self._pump()

    def wifi_drop(self, duration: float) -> None:
        """The radio goes silent for ``duration``: half-open TCP, only keep-alive can tell."""
        self.leave_cohort()
        gen = self.gen
        self.wifi_down += 1
        if self.mqtt is not None:
            self.mqtt.silence()
        if self.wifi_down == 1 and self.powered:
            self._tell("wifi_down", reason="beacon_timeout")
        self._update()

        def back(_ev: Any) -> None:
            self.wifi_down = max(0, self.wifi_down - 1)
            if gen == self.gen and self.wifi_down == 0 and self.powered:
                self._tell("wifi_up", ip=TWIN_IP, rssi=TWIN_RSSI)
            if gen == self.gen and self.wifi_down == 0 and not self._blocked and self.mqtt is not None:
                self.mqtt.unsilence()
            self._update()

        self.env.timeout(duration).callbacks.append(back)

    # ------------------------------------------------------------------ engine plumbing
    def _on_message(self, topic: str, payload: bytes) -> None:
        self.leave_cohort()
        if self.engine is None:
            return
        if self._blocked:  # upstream: the callback is busy running a module; this waits in the socket
            self._inbox.append((topic, payload))
            return
        self.engine.handle(topic, payload, self.now)
        self._pump()

    def _pump(self) -> None:
        engine = self.engine
        if engine is None:
            return
        while commands := engine.take_commands():
            for command in commands:
                self._execute(command)
        self._arm_timer()
        self._update()

    def _execute(self, command: Any) -> None:
        engine = self.engine
        assert engine is not None
        if isinstance(command, Publish):
            client = self.mqtt
            try:
                if client is None:
                    raise MqttError("no link")
                client.publish(command.topic, command.payload, command.qos)
                if command.topic == engine.topics.alive:
                    self._heartbeats += 1
                    self._last_heartbeat = (command.payload, self.now)
                    self._tell("heartbeat", seq=self._heartbeats)
            except MqttError:
                engine.publish_failed(command.topic, command.payload)
        elif isinstance(command, Subscribe):
            if self.mqtt is not None:
                self.mqtt.subscribe(command.topic, command.qos)
        elif isinstance(command, RunTask):
            self._run(command.start)
        elif isinstance(command, CancelTask):
            self._cancel(command.task_id)
        elif isinstance(command, InvokeTask):
            engine.invocation_finished(command.start.id, command.invoke.invocation_id, "",
                                       "the twin's devices do not serve invocations")  # fmt: skip
        elif isinstance(command, CollectMetrics | LogEvent):
            pass  # metrics are off in the twin; engine log events are not trace facts

    def _arm_timer(self) -> None:
        engine = self.engine
        deadline = engine.next_deadline() if engine is not None else None
        if deadline is None or self._blocked:
            return
        if self._timer_at is not None and self._timer_at <= deadline:
            return
        self._timer_token += 1
        token, gen = self._timer_token, self.gen
        self._timer_at = deadline

        def fire(_ev: Any) -> None:
            if token != self._timer_token or gen != self.gen:
                return
            self._timer_at = None
            if self.engine is not None and not self._blocked:
                self.engine.on_timer(self.now)
                self._pump()
                self._join_cohort()

        self.env.timeout(max(0.0, deadline - self.now)).callbacks.append(fire)

    # ------------------------------------------------------------------ bulk heartbeats
    def _join_cohort(self) -> None:
        """Steady (online, idle, unfaulted, unobserved, just heartbeated): the cohort sends the next ones."""
        cohort, engine, hb, client = self.shared.cohort, self.engine, self._last_heartbeat, self.mqtt
        if cohort is None or engine is None or hb is None or client is None or self._in_cohort:
            return
        if hb[1] != self.now or self.listener is not None or self.jobs or self._blocked or self.wifi_down:
            return
        if not client.connected or client.silenced or not engine.config.reconnect:
            return
        next_at = engine.steady_heartbeat()
        if next_at is None or engine.next_deadline() != next_at:
            return
        if cohort.join(self, hb[0], hb[1], next_at):
            self._in_cohort = True
            self._timer_token += 1  # the cohort keeps the time now
            self._timer_at = None

    def leave_cohort(self) -> None:
        if self._in_cohort and self.shared.cohort is not None:
            self.shared.cohort.leave(self)

    def count_cohort_heartbeats(self, sent: int) -> None:
        """Out of the cohort at the end of a run, which sent ``sent`` heartbeats for it."""
        self._in_cohort = False
        self._heartbeats += sent

    def resume_heartbeats(self, last_at: float, next_at: float, sent: int) -> None:
        """Back from the cohort, which sent ``sent`` heartbeats, the last at ``last_at``."""
        self.count_cohort_heartbeats(sent)
        if self.engine is None:
            return
        if self._last_heartbeat is not None:
            self._last_heartbeat = (self._last_heartbeat[0], last_at)
        if isinstance(self.mqtt, ModelClient):
            self.mqtt.heard_at(last_at)
        self.engine.resume_heartbeats(next_at)
        self._arm_timer()

    # ------------------------------------------------------------------ tasks
    def _tell_end(self, task_id: str, results: str, error: str | None, job: _Job) -> None:
        if job.started is None:
            return  # refused before it ran: the firmware logs no task_end for those
        ms = round((self.now - job.started) * 1000)
        if error is None:
            self._tell("task_end", id=task_id, ok=1, result=results, duration_ms=ms)
        else:
            self._tell("task_end", id=task_id, ok=0, error=error, duration_ms=ms)
        if self.memory is not None:
            free = max(0, self.memory.free_bytes)
            used = self.memory.total_bytes - free
            self._tell("heap", free=free, used=used, max_used=used)

    def _finish(self, task_id: str, results: str, error: str | None) -> None:
        job = self.jobs.pop(task_id, None)
        if job is not None and job.instance is not None and self.memory is not None:
            self.memory.release(job.instance)
        if job is not None and self.listener is not None:
            self._tell_end(task_id, results, error, job)
        if self.engine is not None:
            output = job.output if job is not None else None
            self.engine.task_finished(task_id, results, error, self.now, output=output)
        if self._blocked and not self.jobs:
            self._unblock()
        self._pump()

    def _run(self, start: wire.StartTask) -> None:
        wasm = bytes(start.file or b"")
        if not wasm:
            self._finish(start.id, "", "the twin's devices take inline modules only (file), not image_url")
            return
        instance: Instance | None = None
        if self.memory is not None:
            try:
                pages, _ = memory_requirements(wasm)
            except WasmFormatError as err:
                self._finish(start.id, "", f"invalid wasm module: {err}")
                return
            admitted = self.memory.admit(len(wasm), pages, module_key=hashlib.sha256(wasm).hexdigest())
            if isinstance(admitted, str):
                self.stats.refused += 1
                self._tell("oom", id=start.id, need=len(wasm) + pages * PAGE_BYTES,
                           free=max(0, self.memory.free_bytes))  # fmt: skip
                self._finish(start.id, "", admitted)
                return
            instance = admitted
        try:
            request = self._request(start, wasm, instance)
        except ValueError as err:  # the firmware's own refusals: no `main`, non-i32 input
            self.jobs[start.id] = _Job(start, instance, CancelToken())
            self._finish(start.id, "", str(err))
            return
        job = self.jobs[start.id] = _Job(start, instance, CancelToken(), started=self.now)
        self.stats.tasks_run += 1
        self._tell("task_start", id=start.id, name=start.name, inputs=len(start.inputs))
        if self.engine is not None and self.engine.config.blocking_execution:
            self._block()
        gen = self.gen
        self.shared.net.run_wasm(
            request, job.token, lambda outcome: self._if_gen(gen, self._ran, start.id, outcome)
        )
        self._update()

    def _request(self, start: wire.StartTask, wasm: bytes, instance: Instance | None) -> RunRequest:
        given: dict[str, Any] = dict(start.limits or {})
        limits = Limits(**given)
        if not self.config.embedded:  # a host runs WASI commands like the Python proplet
            return RunRequest(start.id, wasm, start.name, tuple(start.inputs), tuple(start.cli_args),
                              dict(start.env), limits=limits)  # fmt: skip
        free_after = self.memory.free_bytes if instance is not None and self.memory is not None else None
        plan = embedded.call_plan(start.name, start.inputs, wasm, free_after)
        if plan.memory_cap_bytes is not None:
            limits = replace(limits, memory_bytes=plan.memory_cap_bytes)
        return RunRequest(start.id, wasm, plan.function, plan.inputs, limits=limits)

    def _ran(self, task_id: str, outcome: RunOutcome) -> None:
        job = self.jobs.get(task_id)
        if job is None:
            return
        if not self.config.embedded:  # typed result and logs, as the Python proplet sends them
            log_bytes = int((job.start.limits or {}).get("log_bytes", Limits().log_bytes))
            job.output = task_output(outcome, log_bytes)
        if outcome.error is not None:
            result: tuple[str, str | None] = ("", outcome.error)
        elif self.config.embedded:
            try:
                result = (embedded.join_results(outcome.values), None)
            except ValueError as err:
                result = ("", str(err))
        else:
            result = (job.output.results if job.output else outcome.results, None)
        if self.cpu is None or not isinstance(self.config.spec, Esp32S3Spec):
            spec = self.config.spec
            if not self.shared.net.virtual or not isinstance(spec, HostSpec):
                self._finish(task_id, *result)  # live host: the real run was the run
                return
            # Virtual time: the host model times the fuel the real run consumed (never the wall time).
            gen = self.gen
            seconds = spec.execution_seconds(max(0, outcome.fuel_consumed or 0))
            self.env.timeout(seconds).callbacks.append(
                lambda _ev: self._if_gen(gen, self._finish_if_running, task_id, result)
            )
            return
        job.result = result
        seconds = execution_seconds(self.config.spec, fuel=max(0, outcome.fuel_consumed or 0))
        for done in self.cpu.start(task_id, seconds, self.now):
            self._cpu_done(done)
        self._arm_cpu()

    def _finish_if_running(self, task_id: str, result: tuple[str, str | None]) -> None:
        if task_id in self.jobs:  # not cancelled meanwhile
            self._finish(task_id, *result)

    def _arm_cpu(self) -> None:
        if self.cpu is None:
            return
        at = self.cpu.next_completion()
        if at is None:
            return
        self._cpu_token += 1
        token, gen = self._cpu_token, self.gen

        def fire(_ev: Any) -> None:
            if token != self._cpu_token or gen != self.gen or self.cpu is None:
                return
            for done in self.cpu.advance(self.now):
                self._cpu_done(done)
            self._arm_cpu()

        self.env.timeout(max(0.0, at - self.now)).callbacks.append(fire)

    def _cpu_done(self, task_id: str) -> None:
        job = self.jobs.get(task_id)
        if job is not None and job.result is not None:
            self._finish(task_id, *job.result)

    def _cancel(self, task_id: str) -> None:
        job = self.jobs.get(task_id)
        if job is None:
            return
        job.token.cancel()
        if self.cpu is not None:
            for done in self.cpu.cancel(task_id, self.now):
                self._cpu_done(done)
            self._arm_cpu()
        self._finish(task_id, "", "stopped")

    # ------------------------------------------------------------------ upstream's blocking execution
    def _block(self) -> None:
        """Upstream runs Wasm inside the MQTT callback: no reads, no pings, no heartbeats meanwhile."""
        self._blocked = True
        if self.mqtt is not None:
            self.mqtt.silence()

    def _unblock(self) -> None:
        self._blocked = False
        if self.mqtt is not None and self.wifi_down == 0:
            self.mqtt.unsilence()
        inbox, self._inbox = self._inbox, []
        while inbox and not self._blocked:
            self._on_message(*inbox.pop(0))
        self._inbox = inbox + self._inbox

    # ------------------------------------------------------------------ faults the fleet injects
    def out_of_memory(self, reserve: int | None, duration: float | None) -> int:
        """A leak takes ``reserve`` bytes (None: all free heap); given back after ``duration``."""
        self.leave_cohort()
        if self.memory is None:
            return 0
        gen = self.gen
        taken = self.memory.reserve(reserve)
        self._update()
        if duration is not None:

            def back(_ev: Any) -> None:
                if gen == self.gen and self.memory is not None:
                    self.memory.unreserve()
                    self._update()

            self.env.timeout(duration).callbacks.append(back)
        return taken

    def summary(self) -> Mapping[str, Any]:
        return {"boots": self.stats.boots, "connects": self.stats.connects, "tasks_run": self.stats.tasks_run,
                "refused": self.stats.refused, "state": self._state}  # fmt: skip


def shutdown_all(devices: list[SimDevice]) -> None:
    for device in devices:
        with contextlib.suppress(Exception):
            device.shutdown()


__all__ = [
    "HOST",
    "DeviceConfig",
    "Shared",
    "SimDevice",
    "device_state",
    "esp_spec",
    "firmware_flags",
    "shutdown_all",
]  # fmt: skip
