"""SSRF through module delivery, tried as an attacker would, on a broker the test starts (amqtt) and on
the machine's Mosquitto (unique domain):

- a URL planted on ``registry/proplet`` makes the manager fetch nothing: a local HTTP server that
  records every request sees none, while the manager answers with a refusal (the positive sentinel)
  and counts it; a module that a task of the manager does name is still served;
- a task whose ``image_url`` points at a loopback address fails on a proplet with the default fetch
  allow-list, naming the rule, without a request reaching the server; a proplet allowed to fetch
  from that address runs the same task.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator import wire
from orchestrator.adapters.broker import EmbeddedBroker
from orchestrator.adapters.mqtt import MqttClient
from orchestrator.service import ManagerService, ManagerSettings
from proplets.agent import AgentSettings, PropletAgent
from tests.integration.conftest import ADD_WASM, eventually

ADD = ADD_WASM


class Recorder:
    """A real HTTP server on loopback that serves ADD at /m.wasm and records every request it gets."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                recorder.requests.append(self.path)
                body, status = (ADD, 200) if self.path == "/m.wasm" else (b"secret", 200)
                self.send_response(status)
                self.send_header("Content-Type", "application/wasm")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.port = self.server.server_address[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    rec.thread.start()
    try:
        yield rec
    finally:
        rec.server.shutdown()
        rec.server.server_close()
        rec.thread.join(5)


class Setup:
    def __init__(self, broker_url: str, tmp: Path) -> None:
        self.broker_url = broker_url
        self.settings = ManagerSettings(
            broker=broker_url, db=str(tmp / "m.db"), api_port=0, heartbeat_interval=0.5,
            domain=f"d-{uuid.uuid4().hex[:8]}", channel="c1", mqtt_keepalive=5,
        )  # fmt: skip
        self.topics = wire.Topics(self.settings.domain, "c1")
        self.manager = ManagerService(self.settings)
        self.agents: list[PropletAgent] = []
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.observer = MqttClient(broker_url, f"obs-{uuid.uuid4().hex[:8]}", on_message=self._on)
        self.api: httpx.AsyncClient

    def _on(self, topic: str, payload: bytes) -> None:
        self.seen.append((topic, json.loads(payload)))

    def chunks(self, app_name: str) -> list[dict[str, Any]]:
        return [m for t, m in self.seen if t == self.topics.registry_server and m["app_name"] == app_name]

    async def start(self) -> None:
        await self.manager.start()
        self.api = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.manager.api_port}", timeout=10)
        await self.observer.connect()
        await self.observer.subscribe_and_wait(self.topics.registry_server)

    async def proplet(self, pid: str, fetch_allow: tuple[str, ...] = ("public",)) -> None:
        agent = PropletAgent(
            AgentSettings(
                broker=self.broker_url, proplet_id=pid, domain=self.settings.domain, channel="c1",
                heartbeat_interval=0.5, keepalive=5, metrics_interval=0, cache_dir=None,
                fetch_allow=fetch_allow,
            )
        )  # fmt: skip
        await agent.start()
        self.agents.append(agent)

        async def alive() -> bool:
            r = await self.api.get(f"/proplets/{pid}")
            return r.status_code == 200 and r.json()["alive"]

        await eventually(alive, 15, f"{pid} alive")

    async def run(self, spec: dict[str, Any]) -> dict[str, Any]:
        created = await self.api.post("/tasks", json=spec)
        assert created.status_code == 201, created.text
        task_id = created.json()["id"]
        assert (await self.api.post(f"/tasks/{task_id}/start")).status_code == 200
        task: dict[str, Any] = {}

        async def done() -> bool:
            nonlocal task
            task = (await self.api.get(f"/tasks/{task_id}")).json()
            return int(task["state"]) >= 3

        await eventually(done, 30, f"task {task_id} to finish")
        return task

    async def counter(self, event: str) -> float:
        for line in (await self.api.get("/metrics")).text.splitlines():
            if line.startswith(f'propeller_engine_events_total{{event="{event}"}}'):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    async def close(self) -> None:
        for agent in self.agents:
            await agent.stop()
        await self.observer.disconnect()
        await self.api.aclose()
        await self.manager.stop()


@pytest.fixture(params=["amqtt", "mosquitto"])
async def setup(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Setup]:
    broker: EmbeddedBroker | None = None
    if request.param == "mosquitto":
        url = str(request.getfixturevalue("mosquitto_url"))
    else:
        broker = EmbeddedBroker("127.0.0.1", 0)
        await broker.start()
        url = broker.url
    s = Setup(url, tmp_path)
    await s.start()
    try:
        yield s
    finally:
        await s.close()
        if broker is not None:
            await broker.stop()


async def test_a_url_planted_on_registry_proplet_is_refused_and_never_fetched(
    setup: Setup, recorder: Recorder
) -> None:
    attacker = MqttClient(setup.broker_url, f"attacker-{uuid.uuid4().hex[:8]}")
    await attacker.connect()
    planted = recorder.url("/latest/meta-data/iam")
    try:
        attacker.publish(setup.topics.registry_request, json.dumps({"app_name": planted}).encode(), 1)
        await eventually(lambda: _now(bool(setup.chunks(planted))), 20, "the manager's refusal")
    finally:
        await attacker.disconnect()
    (refusal,) = setup.chunks(planted)
    assert refusal == {
        "app_name": planted, "chunk_idx": 0, "total_chunks": 0, "data": "",
        "error": "no task of this manager refers to this module",
    }  # fmt: skip
    assert await setup.counter("registry_requests_refused") == 1
    assert recorder.requests == []  # the refusal went out, and nothing was fetched

    # A module a task of the manager names is served (the gate is not "never fetch").
    module = recorder.url("/m.wasm")
    created = await setup.api.post("/tasks", json={"name": "add", "image_url": module, "inputs": ["1", "2"]})
    assert created.status_code == 201, created.text
    setup.observer.publish(setup.topics.registry_request, json.dumps({"app_name": module}).encode(), 1)
    await eventually(lambda: _now(bool(setup.chunks(module))), 20, "the module's chunks")
    (chunk,) = setup.chunks(module)
    assert base64.b64decode(chunk["data"]) == ADD and chunk["total_chunks"] == 1
    assert recorder.requests == ["/m.wasm"]
    assert await setup.counter("registry_requests_refused") == 1


async def test_a_module_the_manager_cannot_pull_is_refused_with_the_real_cause(setup: Setup) -> None:
    # A task names an image reference without a registry host: the manager's pull fails, and the
    # refusal the proplet receives (and reports as the task's error) says why, not "not registered".
    created = await setup.api.post("/tasks", json={"name": "add", "image_url": "app-without-host"})
    assert created.status_code == 201, created.text
    setup.observer.publish(
        setup.topics.registry_request, json.dumps({"app_name": "app-without-host"}).encode(), 1
    )
    await eventually(lambda: _now(bool(setup.chunks("app-without-host"))), 20, "the manager's refusal")
    (refusal,) = setup.chunks("app-without-host")
    assert refusal["total_chunks"] == 0
    assert refusal["error"].startswith("the manager could not pull it: ")
    assert "has no registry host" in refusal["error"], refusal["error"]


async def test_a_loopback_module_url_fails_on_a_default_proplet_naming_the_rule(
    setup: Setup, recorder: Recorder
) -> None:
    await setup.proplet("guarded")
    module = recorder.url("/m.wasm")
    task = await setup.run(
        {"name": "add", "image_url": module, "inputs": ["2", "40"], "proplet_id": "guarded"}
    )
    assert task["state"] == 4
    assert task["error"] == (
        f"fetch refused: 127.0.0.1:{recorder.port} is a private or loopback address: not in this proplet's "
        "fetch allow-list (public); allow it with --fetch-allow"
    )
    assert recorder.requests == [] and setup.agents[0].stats.fetch_refused == 1  # counted
    await setup.proplet("trusting", fetch_allow=(f"127.0.0.1:{recorder.port}",))
    task = await setup.run(
        {"name": "add", "image_url": module, "inputs": ["2", "40"], "proplet_id": "trusting"}
    )
    assert task["state"] == 3 and task["results"] == "42"
    assert recorder.requests == ["/m.wasm"]


async def _now(value: bool) -> bool:
    return value
