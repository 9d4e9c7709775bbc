"""Shared integration fixtures: a manager with its API, real broker and in-process Python proplets."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import wasmtime

from orchestrator.adapters.mqtt import MqttClient, parse_broker_url
from orchestrator.core.identity import new_enrollment
from orchestrator.service import ManagerService, ManagerSettings
from proplets.agent import AgentSettings, PropletAgent, with_identity

# The smallest real task module, `add(a, b)`, as bytes and as the base64 a task's `file` carries.
ADD_WASM = bytes(
    wasmtime.wat2wasm(
        '(module (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))'
    )
)
ADD_B64 = base64.b64encode(ADD_WASM).decode()
# A busy loop, `work(n)`, counting to n in wasm code (so epoch interruption reaches it), as the
# base64 a task's `file` carries: large inputs keep it running for seconds, long enough for a kill,
# a stop or a failover to land while it runs.
WORK = base64.b64encode(
    wasmtime.wat2wasm("""
(module (func (export "work") (param i32) (result i32) (local i32)
  (loop (local.set 1 (i32.add (local.get 1) (i32.const 1)))
        (br_if 0 (i32.lt_u (local.get 1) (local.get 0))))
  (local.get 1)))
""")
).decode()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Cluster:
    def __init__(self, manager: ManagerService, api: httpx.AsyncClient, tmp: Path) -> None:
        self.manager, self.api, self.tmp = manager, api, tmp
        self.agents: dict[str, PropletAgent] = {}

    @property
    def broker_url(self) -> str:
        return self.manager.broker_url

    @property
    def closed(self) -> bool:
        """The manager runs a closed embedded broker: clients need an enrolled identity."""
        return self.manager.broker is not None and self.manager.broker.guard is not None

    async def add_proplet(self, proplet_id: str, **overrides: Any) -> PropletAgent:
        """A started in-process proplet; ``overrides``: AgentSettings fields (e.g. ``otel=True``)."""
        s = self.manager.settings
        settings = AgentSettings(
            broker=self.broker_url,
            proplet_id=proplet_id,
            domain=s.domain,
            channel=s.channel,
            heartbeat_interval=s.heartbeat_interval,
            keepalive=2,
            cache_dir=str(self.tmp / "cache"),
        )
        settings = dataclasses.replace(settings, **overrides)
        if self.closed:
            enrollment = await self.manager.enroll("proplet", proplet_id)
            settings = with_identity(settings, enrollment.identity_file())
        agent = PropletAgent(settings)
        await agent.start()
        self.agents[proplet_id] = agent
        await eventually(lambda: self.alive(proplet_id), 10, f"{proplet_id} alive")
        return agent

    def peer(self, client_id: str, **client: Any) -> MqttClient:
        """A client the broker trusts like the manager (tests of the engine's own input checks, which
        must hold for what a broker that cannot read payloads, e.g. Mosquitto, lets through)."""
        if not self.closed:
            return MqttClient(self.broker_url, client_id, **client)
        password = secrets.token_urlsafe(16)
        enrollment = new_enrollment(
            kind="manager", proplet_id=client_id, password=password, salt=b"test-peer-1", signing_key=None,
            wall=time.time(),
        )  # fmt: skip
        self.manager.identities.enroll(enrollment.identity)
        url = dataclasses.replace(parse_broker_url(self.broker_url), username=client_id, password=password)
        return MqttClient(url, client_id, **client)

    async def alive(self, proplet_id: str, expected: bool = True) -> bool:
        r = await self.api.get(f"/proplets/{proplet_id}")
        return r.status_code == 200 and r.json()["alive"] is expected

    async def run_task(self, spec: dict[str, Any], timeout: float = 15) -> dict[str, Any]:
        created = await self.api.post("/tasks", json=spec)
        assert created.status_code == 201, created.text
        task_id = created.json()["id"]
        started = await self.api.post(f"/tasks/{task_id}/start")
        assert started.status_code == 200, started.text
        return await self.wait_terminal(task_id, timeout)

    async def wait_terminal(self, task_id: str, timeout: float = 15) -> dict[str, Any]:
        task: dict[str, Any] = {}

        async def done() -> bool:
            nonlocal task
            task = (await self.api.get(f"/tasks/{task_id}")).json()
            return int(task["state"]) >= 3

        await eventually(done, timeout, f"task {task_id} to finish")
        return task


async def make_cluster(broker: str, tmp_path: Path, **overrides: Any) -> Cluster:
    settings = ManagerSettings(
        broker=broker,
        db=str(tmp_path / "m.db"),
        api_port=0,
        heartbeat_interval=0.5,
        # Unique domain per test: the machine's Mosquitto is shared.
        domain=f"d-{uuid.uuid4().hex[:8]}",
        channel="c1",
        mqtt_keepalive=5,
    )
    for key, value in overrides.items():
        setattr(settings, key, value)
    manager = ManagerService(settings)
    await manager.start()
    headers = {"Authorization": f"Bearer {settings.api_token}"} if settings.api_token else {}
    api = httpx.AsyncClient(base_url=f"http://127.0.0.1:{manager.api_port}", timeout=10, headers=headers)
    return Cluster(manager, api, tmp_path)


async def close_cluster(c: Cluster) -> None:
    for agent in c.agents.values():
        await agent.stop()
    await c.api.aclose()
    await c.manager.stop()


@pytest.fixture(params=["embedded", "mosquitto"])
async def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Cluster]:
    """A manager on the embedded broker and on the machine's Mosquitto (each test runs on both)."""
    broker = "embedded://127.0.0.1:0"
    if request.param == "mosquitto":
        broker = request.getfixturevalue("mosquitto_url")
    c = await make_cluster(broker, tmp_path)
    try:
        yield c
    finally:
        await close_cluster(c)


@pytest.fixture
async def embedded_cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = await make_cluster("embedded://127.0.0.1:0", tmp_path)
    try:
        yield c
    finally:
        await close_cluster(c)


async def _async(value: bool) -> bool:
    return value
