"""Composition root of the manager: the sans-I/O engine wired to MQTT, the store and the HTTP API.

All engine calls happen on the one asyncio loop. Commands the engine queues are executed in order by
``_flush`` under a lock, so a task is persisted before its start message is published, and an API
call returns only after its effects are durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.adapters.broker import EmbeddedBroker
from orchestrator.adapters.mqtt import MqttClient, TlsOptions, Will, parse_broker_url
from orchestrator.adapters.store import Store
from orchestrator.chunk_server import ChunkServer
from orchestrator.core.commands import (
    Command,
    DeleteProplet,
    DeleteTask,
    InvocationFinished,
    LogEvent,
    MessageReceived,
    PersistJob,
    PersistProplet,
    PersistTask,
    Publish,
    RecordPropletMetrics,
    RecordTaskMetrics,
)
from orchestrator.core.engine import Engine, EngineConfig
from orchestrator.core.errors import Conflict, NotFound
from orchestrator.core.model import Job, Proplet, Task
from orchestrator.core.placement import make_policy
from orchestrator.core.receipts import KeyLookup

log = logging.getLogger("propeller.manager")


@dataclass
class ManagerSettings:
    broker: str = "embedded://127.0.0.1:1883"
    db: str = ".propeller/manager.db"
    api_host: str = "127.0.0.1"
    api_port: int = 7070
    domain: str = "default"
    channel: str = "default"
    heartbeat_interval: float = 10.0
    liveness_timeout: float | None = None
    max_attempts: int = 3
    queue_timeout: float | None = None
    # Attempt deadline: limits.timeout_s + attempt_grace, or attempt_timeout for tasks without one.
    attempt_grace: float = 30.0
    attempt_timeout: float | None = 3600.0
    # Terminal tasks kept in the engine's memory; older ones are read from the store.
    terminal_cache: int = 10_000
    placement: str = "round-robin"
    client_id: str = ""
    mqtt_keepalive: float = 30.0
    api_token: str = ""  # admin scope (kept for compatibility); see api_token_admin / api_token_read
    api_token_read: str = ""  # comma-separated bearer tokens that may only GET
    api_token_admin: str = ""  # comma-separated bearer tokens that may do everything
    metrics_public: bool = False  # serve /metrics without a token even when tokens are configured
    serve_api: bool = True
    # TLS to an external broker (mqtts://): CA bundle, client certificate and key, or skip verification.
    mqtt_ca: str | None = None
    mqtt_cert: str | None = None
    mqtt_key: str | None = None
    mqtt_insecure: bool = False


class ManagerService:
    def __init__(self, settings: ManagerSettings, *, keys: KeyLookup | None = None) -> None:
        """``keys``: the identity registry's key lookup; with it, results must verify (result_trust)."""
        self.settings = settings
        self.engine = Engine(
            EngineConfig(
                domain=settings.domain,
                channel=settings.channel,
                heartbeat_interval=settings.heartbeat_interval,
                liveness_timeout=settings.liveness_timeout,
                max_attempts=settings.max_attempts,
                queue_timeout=settings.queue_timeout,
                attempt_grace=settings.attempt_grace,
                attempt_timeout=settings.attempt_timeout,
                terminal_cache=settings.terminal_cache,
            ),
            policy=make_policy(settings.placement),
            keys=keys,
        )
        self.broker: EmbeddedBroker | None = None
        self.store: Store | None = None
        self.mqtt: MqttClient | None = None
        self.broker_url = ""
        self.api_port = settings.api_port
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._api_server: Any = None
        self._invocations: dict[str, asyncio.Future[InvocationFinished]] = {}
        self.chunks = ChunkServer()

    # ------------------------------------------------------------------ lifecycle

    def now(self) -> float:
        return time.monotonic()

    async def start(self) -> None:
        """Open the store, recover, start the broker, MQTT and the API; on failure undo what was started."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        url = parse_broker_url(self.settings.broker)
        self.store = await Store.open(self.settings.db)
        tasks = await self.store.load_tasks()
        proplets = await self.store.load_proplets()
        jobs = await self.store.load_jobs()
        self.engine.restore(tasks, proplets, self.now(), time.time(), jobs)
        if url.scheme == "embedded":
            self.broker = EmbeddedBroker(url.host, url.port)
            await self.broker.start()
            self.broker_url = self.broker.url
        else:
            self.broker_url = self.settings.broker
        topics = self.engine.topics
        client_id = (
            self.settings.client_id or f"propeller-manager-{self.settings.domain}-{self.settings.channel}"
        )
        broker = parse_broker_url(self.broker_url)
        if not broker.username:
            # A named session: brokers (amqtt too) keep a named client's QoS 1 messages while it is
            # away, so results published during a manager restart are delivered when it is back.
            broker = dataclasses.replace(broker, username=client_id)
        self.mqtt = MqttClient(
            broker,
            client_id,
            keepalive=self.settings.mqtt_keepalive,
            will=Will(topics.alive, json.dumps({"status": "offline", "proplet_id": client_id}).encode(), 0),
            on_message=self._on_message,
            on_connect=self._on_connect,
            on_disconnect=self._on_disconnect,
            clean_session=url.scheme == "embedded",  # an external broker keeps our results while we restart
            tls=self._tls(),
        )
        for topic in topics.manager_subscriptions:
            self.mqtt.subscribe(topic, 1)
        await self.mqtt.connect()
        self._tasks.append(asyncio.create_task(self._timer_loop(), name="manager-timers"))
        if self.settings.serve_api:
            await self._start_api()
        await self.flush()
        log.info(
            json.dumps(
                {
                    "event": "manager_started",
                    "broker": self.broker_url,
                    "db": self.settings.db,
                    "api": f"http://{self.settings.api_host}:{self.api_port}",
                }
            )
        )

    def _tls(self) -> TlsOptions | None:
        s = self.settings
        if not (s.mqtt_ca or s.mqtt_cert or s.mqtt_key or s.mqtt_insecure):
            return None
        return TlsOptions(s.mqtt_ca, s.mqtt_cert, s.mqtt_key, s.mqtt_insecure)

    async def _start_api(self) -> None:
        import uvicorn

        from orchestrator.adapters.http_api import create_app

        config = uvicorn.Config(
            create_app(self),
            host=self.settings.api_host,
            port=self.settings.api_port,
            log_level="warning",
            lifespan="off",
        )
        server = uvicorn.Server(config)
        # The CLI owns SIGINT/SIGTERM (graceful stop of everything); uvicorn must not take them over.
        server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        sockets = [_bind_api(self.settings.api_host, self.settings.api_port)]
        self.api_port = sockets[0].getsockname()[1]
        self._api_server = server
        self._tasks.append(asyncio.create_task(server.serve(sockets=sockets), name="manager-api"))
        while not server.started:
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self.engine.shutting_down = True
        if self._api_server is not None:
            self._api_server.should_exit = True
        for t in self._tasks:
            if t.get_name() != "manager-api":
                t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(t, 5)
        with contextlib.suppress(Exception):
            await self.flush()
        if self.mqtt is not None:
            with contextlib.suppress(Exception):
                await self.mqtt.disconnect()
        if self.broker is not None:
            await self.broker.stop()
        if self.store is not None:
            await self.store.close()

    # ------------------------------------------------------------------ engine I/O

    def _on_connect(self) -> None:
        log.info(json.dumps({"event": "manager_mqtt_connected", "broker": self.broker_url}))
        self.engine.link_restored(self.now(), time.time())
        self._wake.set()
        asyncio.get_running_loop().create_task(self.flush())

    def _on_disconnect(self) -> None:
        if self.engine.shutting_down:
            return  # our own clean disconnect at shutdown
        self.engine.link_lost(self.now())
        asyncio.get_running_loop().create_task(self.flush())

    def _on_message(self, topic: str, payload: bytes) -> None:
        if topic == self.engine.topics.registry_request:
            asyncio.get_running_loop().create_task(self._serve_registry(payload))
            return
        self.engine.handle(MessageReceived(topic, payload), self.now(), time.time())
        self._wake.set()
        asyncio.get_running_loop().create_task(self.flush())

    async def _serve_registry(self, payload: bytes) -> None:
        """Answer a proplet's `registry/proplet` request with the module in chunks (reference §2.10).

        Only a module that a task we hold names (``Engine.module_request``) is pulled, from its OCI
        registry, once, pinned by the task's sha256, and kept; anything else, or a module we cannot
        pull, gets an explicit refusal, so the proplet fails at once instead of waiting for its timeout.
        """
        from orchestrator import wire
        from orchestrator.chunk_server import encode_reply
        from proplets.delivery import DeliveryError, FetchLimits, WasmSource, fetch_wasm

        try:
            request = wire.decode(self.engine.topics, self.engine.topics.registry_request, payload)
        except wire.CodecError as err:
            self.engine.malformed["registry/proplet"] += 1
            log.warning(json.dumps({"event": "malformed_message", "error": str(err)}))
            return
        assert isinstance(request, wire.RegistryRequest)
        app = request.app_name
        replies: list[wire.RegistryChunk] = []
        if app not in self.chunks:
            task = self.engine.module_request(app)
            self._wake.set()  # its refusal log
            if task is None:
                replies = [wire.RegistryChunk.refusal(app, "no task of this manager refers to this module")]
            else:
                try:
                    wasm = await fetch_wasm(
                        WasmSource(image_url=app, sha256=task.sha256), limits=FetchLimits()
                    )
                    self.chunks.register(app, wasm)
                except DeliveryError as err:
                    log.warning(
                        json.dumps({"event": "registry_pull_failed", "app_name": app, "error": str(err)})
                    )
        assert self.mqtt is not None
        for reply in replies or self.chunks.handle_request(app):
            self.mqtt.publish(self.engine.topics.registry_server, encode_reply(reply), 1)
        await self.flush()

    async def _timer_loop(self) -> None:
        cap = max(0.02, min(1.0, self.engine.config.timeout / 10))
        while True:
            deadline = self.engine.next_deadline()
            delay = cap if deadline is None else min(cap, max(0.0, deadline - self.now()))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            self.engine.on_timer(self.now(), time.time())
            await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            commands = self.engine.take_commands()
            while commands:
                await self._execute(commands)
                commands = self.engine.take_commands()

    async def _execute(self, commands: Sequence[Command]) -> None:
        assert self.store is not None
        pending: list[Task] = []
        for command in commands:
            if isinstance(command, PersistTask):
                pending.append(command.task)
                continue
            if pending:
                await self.store.save_tasks(pending)
                pending = []
            if isinstance(command, Publish):
                if self.mqtt is not None:
                    try:
                        self.mqtt.publish(command.topic, command.payload, command.qos)
                    except Exception as err:  # the broker may be away; the task stays recoverable
                        log.warning(
                            json.dumps({"event": "publish_failed", "topic": command.topic, "error": str(err)})
                        )
            elif isinstance(command, InvocationFinished):
                waiter = self._invocations.pop(command.invocation_id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(command)
            elif isinstance(command, RecordPropletMetrics):
                await self.store.add_proplet_metrics(
                    command.proplet_id,
                    command.namespace,
                    command.cpu_metrics,
                    command.memory_metrics,
                    command.timestamp,
                )
            elif isinstance(command, RecordTaskMetrics):
                await self.store.add_task_metrics(
                    command.task_id,
                    command.proplet_id,
                    command.metrics,
                    command.aggregated,
                    command.timestamp,
                )
            elif isinstance(command, PersistJob):
                await self.store.save_job(command.job)
            elif isinstance(command, PersistProplet):
                await self.store.save_proplet(command.proplet)
            elif isinstance(command, DeleteTask):
                await self.store.delete_task(command.task_id)
            elif isinstance(command, DeleteProplet):
                await self.store.delete_proplet(command.proplet_id)
            elif isinstance(command, LogEvent):
                level = logging.WARNING if command.level == "warning" else logging.INFO
                log.log(level, json.dumps({"event": command.name, **command.fields}, default=str))
        if pending:
            await self.store.save_tasks(pending)

    # ------------------------------------------------------------------ operations (API, CLI)

    async def create_task(self, spec: dict[str, Any]) -> Task:
        wanted = spec.get("id") if isinstance(spec, dict) else None
        if isinstance(wanted, str) and wanted and self.engine.find_task(wanted) is None:
            assert self.store is not None
            if await self.store.get_task(wanted) is not None:  # settled out of memory, still stored
                raise Conflict(f"task {wanted} already exists", "id")
        task = self.engine.create_task(spec, time.time())
        await self.flush()
        return task

    async def update_task(self, task_id: str, spec: Any) -> Task:
        await self._resident(task_id)
        task = self.engine.update_task(task_id, spec, time.time())
        await self.flush()
        return task

    async def start_task(self, task_id: str) -> Task:
        await self._resident(task_id)
        task = self.engine.start_task(task_id, self.now(), time.time())
        await self.flush()
        return task

    async def stop_task(self, task_id: str) -> Task:
        await self._resident(task_id)
        task = self.engine.stop_task(task_id, time.time())
        await self.flush()
        return task

    async def delete_task(self, task_id: str) -> None:
        await self._resident(task_id)
        self.engine.delete_task(task_id)
        await self.flush()

    # -- tasks that settled out of the engine's memory live in the store (minimal read-back; the
    # -- store-side paging of GET /tasks is its own piece of work)

    async def find_task(self, task_id: str) -> Task:
        """The task from memory, or from the store once it settled out of memory; NotFound if neither."""
        task = self.engine.find_task(task_id)
        if task is None:
            assert self.store is not None
            task = await self.store.get_task(task_id)
        if task is None:
            raise NotFound(f"task {task_id} not found")
        return task

    async def _resident(self, task_id: str) -> None:
        """Bring a settled task back into the engine before an operation that changes it."""
        if self.engine.find_task(task_id) is not None:
            return
        assert self.store is not None
        task = await self.store.get_task(task_id)
        if task is not None and self.engine.find_task(task_id) is None:
            self.engine.readmit(task)

    async def list_tasks(self) -> list[Task]:
        """Every task, memory overriding the store (it may be ahead by one flush), by creation time."""
        assert self.store is not None
        merged = {t.id: t for t in await self.store.load_tasks()}
        merged.update(self.engine.tasks.items())
        return sorted(merged.values(), key=lambda t: (t.created_at or 0, t.id))

    async def delete_proplet(self, proplet_id: str) -> None:
        self.engine.delete_proplet(proplet_id)
        await self.flush()

    async def create_workflow(self, specs: Any) -> list[Task]:
        tasks = self.engine.create_workflow(specs, time.time())
        await self.flush()
        return tasks

    async def create_job(self, name: str, specs: Any, mode: str) -> tuple[Job, list[Task]]:
        job, tasks = self.engine.create_job(name, specs, mode, time.time())
        await self.flush()
        return job, tasks

    async def start_job(self, job_id: str) -> None:
        self.engine.start_job(job_id, self.now(), time.time())
        await self.flush()

    async def stop_job(self, job_id: str) -> None:
        self.engine.stop_job(job_id, time.time())
        await self.flush()

    async def invoke(self, task_id: str, inputs: Any, env: Any) -> InvocationFinished:
        invocation_id = self.engine.invoke(task_id, inputs, env, self.now())
        waiter: asyncio.Future[InvocationFinished] = asyncio.get_running_loop().create_future()
        self._invocations[invocation_id] = waiter
        self._wake.set()
        await self.flush()
        return await waiter

    def proplet_alive(self, proplet: Proplet) -> bool:
        return self.engine.is_alive(proplet, self.now())


def _bind_api(host: str, port: int) -> Any:
    import socket

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # asyncio sets TCP_NODELAY only on sockets created with proto=IPPROTO_TCP, which this is not;
    # accepted sockets inherit it from here. Without it every keep-alive request waits ~40 ms
    # (Nagle + delayed ACK), measured by `propeller bench e2e`.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise OSError(f"cannot serve the HTTP API on {host}:{port}: {err.strerror}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock
