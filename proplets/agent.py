"""asyncio driver of the proplet engine: ``propeller proplet``.

MQTT through the project's asyncio client (no thread per client), Wasm on worker threads
(wasmtime releases the GIL, so threads scale and heartbeats keep flowing while modules run).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator import wire
from orchestrator.adapters.mqtt import MqttClient, Will
from proplets.core import (
    CancelTask,
    InvokeTask,
    LogEvent,
    PropletConfig,
    PropletEngine,
    Publish,
    RunTask,
    Subscribe,
)
from proplets.delivery import DeliveryError, FetchLimits, MqttChunkFetcher, WasmSource, fetch_wasm
from proplets.runtime import CancelToken, Limits, RunRequest, WasmRuntime, WasmtimeRuntime

log = logging.getLogger("propeller.proplet")

VERSION = "0.1.0"


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
    profile: str = "host"
    tags: list[str] = field(default_factory=list)
    default_limits: dict[str, float] = field(default_factory=dict)


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
    }


class PropletAgent:
    def __init__(
        self,
        settings: AgentSettings,
        *,
        runtime: WasmRuntime | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.engine = PropletEngine(
            PropletConfig(
                proplet_id=settings.proplet_id,
                domain=settings.domain,
                channel=settings.channel,
                namespace=settings.namespace,
                heartbeat_interval=settings.heartbeat_interval,
                max_instances=settings.max_instances,
                metadata=host_metadata(settings),
            )
        )
        self.runtime = runtime or WasmtimeRuntime(
            cache_dir=Path(settings.cache_dir) if settings.cache_dir else None
        )
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_workers=max(1, settings.max_instances), thread_name_prefix="wasm")
        self._cancels: dict[str, CancelToken] = {}
        self._deployed: dict[str, bytes] = {}  # latent task id -> module bytes
        self._chunks = MqttChunkFetcher(self._request_chunks)
        self._jobs: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._timer: asyncio.Task[None] | None = None
        will_topic, will_payload = self.engine.last_will()
        self.mqtt = MqttClient(
            settings.broker,
            settings.proplet_id,
            keepalive=settings.keepalive,
            will=Will(will_topic, will_payload, 1),
            on_message=self._on_message,
            on_connect=self._on_connect,
            on_disconnect=self._on_disconnect,
        )

    async def start(self) -> None:
        await self.mqtt.connect()
        self._timer = asyncio.create_task(self._timer_loop(), name=f"proplet-{self.settings.proplet_id}")

    async def stop(self, *, clean: bool = True) -> None:
        for token in self._cancels.values():
            token.cancel()
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
        for job in list(self._jobs):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(job, 5)
        if clean:
            with contextlib.suppress(Exception):
                await self.mqtt.disconnect()
        else:
            self.mqtt.abort()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.runtime.close()

    # ------------------------------------------------------------------ engine I/O

    def _on_connect(self) -> None:
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
            delay = 0.5 if deadline is None else max(0.0, deadline - self._clock())
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(delay, 0.5))
            self.engine.on_timer(self._clock())
            self._execute()

    def _execute(self) -> None:
        for command in self.engine.take_commands():
            if isinstance(command, Publish):
                try:
                    self.mqtt.publish(command.topic, command.payload, command.qos)
                except Exception as err:
                    log.warning(
                        json.dumps({"event": "publish_failed", "topic": command.topic, "error": str(err)})
                    )
            elif isinstance(command, Subscribe):
                self.mqtt.subscribe(command.topic, command.qos)
            elif isinstance(command, RunTask):
                self._spawn(self._run(command.start))
            elif isinstance(command, InvokeTask):
                self._spawn(self._invoke(command))
            elif isinstance(command, CancelTask):
                token = self._cancels.get(command.task_id)
                if token is not None:
                    token.cancel()
                if self._deployed.pop(command.task_id, None) is not None:
                    self.engine.task_finished(command.task_id, "", "stopped", self._clock())
            elif isinstance(command, LogEvent):
                log.info(
                    json.dumps(
                        {"event": command.name, "proplet_id": self.settings.proplet_id, **command.fields},
                        default=str,
                    )
                )
        self._wake.set()

    def _spawn(self, coroutine: Any) -> None:
        job = asyncio.get_running_loop().create_task(coroutine)
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    def _request(
        self, start: wire.StartTask, wasm: bytes, inputs: tuple[Any, ...], env: dict[str, str]
    ) -> RunRequest:
        limits = Limits(**{**self.settings.default_limits, **dict(start.limits or {})})  # type: ignore[arg-type]
        return RunRequest(
            task_id=start.id,
            wasm=wasm,
            function=start.name,
            inputs=inputs,
            cli_args=tuple(start.cli_args),
            env={**env, "PROPLET_ID": self.settings.proplet_id},
            limits=limits,
        )

    async def _execute_wasm(self, request: RunRequest, token: CancelToken) -> tuple[str, str | None]:
        outcome = await asyncio.get_running_loop().run_in_executor(
            self._pool, self.runtime.run, request, token
        )
        return outcome.results, outcome.error

    async def _run(self, start: wire.StartTask) -> None:
        token = CancelToken()
        self._cancels[start.id] = token
        results, error = "", None
        try:
            wasm = await fetch_wasm(
                WasmSource(file=start.file, image_url=start.image_url, sha256=start.sha256),
                limits=FetchLimits(),
                chunk_fetcher=self._chunks,
            )
            if start.latent:
                self._deployed[start.id] = wasm
                self.engine.deployed(start.id)
                return
            request = self._request(start, wasm, tuple(start.inputs), dict(start.env))
            results, error = await self._execute_wasm(request, token)
        except DeliveryError as err:
            error = str(err)
        except Exception as err:  # a bug must become a failed task, never a silent hang
            log.exception("task %s crashed the runner", start.id)
            error = f"proplet internal error: {type(err).__name__}: {err}"
        finally:
            self._cancels.pop(start.id, None)
        if start.id not in self._deployed:
            self.engine.task_finished(start.id, results, error, self._clock())
        self._execute()

    async def _invoke(self, command: InvokeTask) -> None:
        start, invoke = command.start, command.invoke
        wasm = self._deployed.get(start.id)
        results, error = "", None
        if wasm is None:
            error = f"task {start.id} has not been precompiled; deploy it as a latent task first"
        else:
            env = {**dict(start.env), **dict(invoke.env)}
            request = self._request(start, wasm, tuple(invoke.inputs or start.inputs), env)
            try:
                results, error = await self._execute_wasm(request, CancelToken())
            except Exception as err:
                log.exception("invocation %s crashed the runner", invoke.invocation_id)
                error = f"proplet internal error: {type(err).__name__}: {err}"
        self.engine.invocation_finished(start.id, invoke.invocation_id, results, error)
        self._execute()


def default_proplet_id() -> str:
    return f"proplet-{platform.node()}-{os.getpid()}"
