"""Issue 9's attacks, tried as an attacker would, on the closed embedded broker and on a PRIVATE Mosquitto
started with the files `propeller broker mosquitto-config` generates.

Each fleet: a manager (real store, API), two of our proplets ``p1`` and ``p2`` and an enrolled but
malicious proplet ``evil`` (a stolen or rogue device), all with enrolled identities. Every attack is
refused or dropped, and counted (embedded: the broker's counters; Mosquitto, which cannot read
payloads: the manager's ``enrolled_only`` check), and every legitimate task still completes.
Residual risks on Mosquitto (documented in docs/trust.md) are asserted as what they are.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import queue
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from orchestrator.adapters.mqtt import BrokerUrl, MqttClient, MqttError
from orchestrator.enrollment import enroll_into_store
from orchestrator.service import ManagerService, ManagerSettings
from proplets.agent import AgentSettings, PropletAgent, with_identity
from tests.conftest import free_port
from tests.integration.conftest import ADD_B64, Cluster, eventually

pytestmark = pytest.mark.timeout(300)

ADD = ADD_B64
MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
)
REPO = Path(__file__).resolve().parents[2]


async def _true(value: bool) -> bool:
    return value


# The task timeout of this file's fleets (more than Cluster's default: two brokers, enrolled identities).
TASK_TIMEOUT = 20


@dataclass
class Fleet(Cluster):
    """A ``Cluster`` whose proplets are enrolled through the API, on either broker."""

    kind: str  # embedded | mosquitto
    manager: ManagerService
    api: httpx.AsyncClient
    host: str
    port: int
    tmp: Path
    agents: dict[str, PropletAgent] = field(default_factory=dict)
    identities: dict[str, dict[str, Any]] = field(default_factory=dict)
    mosquitto: asyncio.subprocess.Process | None = None

    @property
    def topics(self) -> Any:
        return self.manager.engine.topics

    # ---------------------------------------------------------------- identities

    async def enroll(self, proplet_id: str, **body: Any) -> dict[str, Any]:
        """Enroll through the API (as an operator would); on Mosquitto regenerate and reload its files."""
        r = await self.api.post("/proplets/enroll", json={"id": proplet_id, **body})
        assert r.status_code == 201, r.text
        doc: dict[str, Any] = r.json()
        self.identities[doc["proplet_id"]] = doc
        await self.reload_mosquitto()
        return doc

    async def revoke(self, proplet_id: str) -> None:
        r = await self.api.post(f"/proplets/{proplet_id}/revoke")
        assert r.status_code == 200 and r.json()["revoked"] is True, r.text
        await self.reload_mosquitto()

    async def reload_mosquitto(self) -> None:
        if self.mosquitto is None:
            return
        out = self.tmp / "mosq"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "orchestrator.cli", "broker", "mosquitto-config",
            "--db", self.manager.settings.db, "--out", str(out), cwd=str(REPO),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await proc.communicate()
        assert proc.returncode == 0, output.decode()
        self.mosquitto.send_signal(signal.SIGHUP)  # Mosquitto re-reads its password and ACL files

    # ---------------------------------------------------------------- clients

    def url(self, username: str | None = None, password: str | None = None) -> BrokerUrl:
        return BrokerUrl("mqtt", self.host, self.port, username, password)

    def client_as(self, proplet_id: str, client_id: str | None = None, **kw: Any) -> MqttClient:
        doc = self.identities[proplet_id]
        return MqttClient(self.url(doc["username"], doc["password"]), client_id or doc["client_id"], **kw)

    async def add_proplet(self, proplet_id: str, **overrides: Any) -> PropletAgent:
        """Enrolled through the API; ``overrides``: AgentSettings fields."""
        doc = await self.enroll(proplet_id)
        s = self.manager.settings
        settings = AgentSettings(
            broker=f"mqtt://{self.host}:{self.port}", proplet_id=proplet_id,
            domain=s.domain, channel=s.channel,
            heartbeat_interval=s.heartbeat_interval, keepalive=2, cache_dir=str(self.tmp / "cache"),
            wait_for_broker=True, reconnect_min=0.2, reconnect_max=1.0,
        )  # fmt: skip
        agent = PropletAgent(with_identity(dataclasses.replace(settings, **overrides), doc))
        await agent.start()
        self.agents[proplet_id] = agent
        await eventually(lambda: self.alive(proplet_id), 20, f"{proplet_id} alive")
        return agent

    # ---------------------------------------------------------------- observations

    async def legit_task_completes(self, on: str | None = None) -> None:
        spec: dict[str, Any] = {"name": "add", "file": ADD, "inputs": [2, 40]}
        if on is not None:
            spec["proplet_id"] = on
        task = await self.run_task(spec, TASK_TIMEOUT)
        assert (task["state"], task["results"]) == (3, "42"), task
        if on is not None:
            assert task["proplet_id"] == on

    def refused(self, what: str) -> int:
        """How many times the broker refused or dropped ``what`` (embedded broker only)."""
        guard = self.manager.broker.guard if self.manager.broker is not None else None
        return 0 if guard is None else guard.counters[what]

    def unenrolled(self) -> int:
        return sum(self.manager.unenrolled.values())


async def _start_mosquitto(tmp: Path, port: int) -> asyncio.subprocess.Process:
    conf = tmp / "mosquitto.conf"
    # The generated snippet (propeller.conf: allow_anonymous false, use_username_as_clientid,
    # password_file, acl_file) goes after the listener, as docs/trust.md says (Mosquitto 2.0.11's
    # include_dir would open a second, default listener on 1883). A 0700 test directory hides the
    # files from the `mosquitto` user, so a root-started private broker stays root.
    stay = "user root\n" if os.geteuid() == 0 else ""
    snippet = (tmp / "mosq" / "propeller.conf").read_text()
    conf.write_text(
        f"{stay}listener {port} 127.0.0.1\npersistence false\nmax_queued_messages 100000\n"
        f"log_dest stdout\nlog_type error\nlog_type warning\n{snippet}"
    )
    argv = [str(MOSQUITTO), "-c", str(conf)]
    log = (tmp / "mosquitto.log").open("ab")
    proc = await asyncio.create_subprocess_exec(*argv, stdout=log, stderr=asyncio.subprocess.STDOUT)
    log.close()
    deadline = time.monotonic() + 10
    while True:
        try:
            _r, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return proc
        except OSError:
            if proc.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"private mosquitto did not start on {port}") from None
            await asyncio.sleep(0.05)


@pytest.fixture(params=["embedded", pytest.param("mosquitto", marks=pytest.mark.mosquitto)])
async def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Fleet]:
    db = str(tmp_path / "m.db")
    settings = ManagerSettings(
        broker="embedded://127.0.0.1:0", db=db, api_port=0, heartbeat_interval=0.5, mqtt_keepalive=5,
        domain="attack", channel="c1",
    )  # fmt: skip
    mosquitto = None
    port = 0
    if request.param == "mosquitto":
        if MOSQUITTO is None:
            pytest.skip("mosquitto is not installed")
        # The manager's own identity, enrolled offline (`propeller proplets enroll --manager --db`).
        manager_id = await enroll_into_store(db, "manager", "attack-manager", wall=time.time())
        (tmp_path / "mosq").mkdir()
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "orchestrator.cli", "broker", "mosquitto-config", "--db", db,
            "--out", str(tmp_path / "mosq"), cwd=str(REPO),
        )  # fmt: skip
        assert await cli.wait() == 0
        port = free_port()
        mosquitto = await _start_mosquitto(tmp_path, port)
        ident = manager_id.identity
        settings.broker = f"mqtt://{ident.username}:{manager_id.password}@127.0.0.1:{port}"
        settings.client_id = ident.client_id
        settings.enrolled_only = True
    manager = ManagerService(settings)
    f: Fleet | None = None
    try:
        await manager.start()
        if manager.broker is not None:
            port = manager.broker.port
        api = httpx.AsyncClient(base_url=f"http://127.0.0.1:{manager.api_port}", timeout=10)
        f = Fleet(request.param, manager, api, "127.0.0.1", port, tmp_path, mosquitto=mosquitto)
        await f.add_proplet("p1")
        await f.add_proplet("p2")
        await f.enroll("evil")
        yield f
    finally:
        if f is not None:
            for agent in f.agents.values():
                await agent.stop()
            await f.api.aclose()
            mosquitto = f.mosquitto  # a test may have restarted it
        await manager.stop()
        if mosquitto is not None and mosquitto.returncode is None:
            mosquitto.kill()
            await mosquitto.wait()


# ------------------------------------------------------------------------------------ the attacks


async def test_anonymous_and_unknown_clients_are_refused(fleet: Fleet) -> None:
    for url, client_id in (
        (fleet.url(), "anon-reader"),  # no credentials: would subscribe to '#' and read every start
        (fleet.url("ghost-1", "guess"), "ghost-1"),
        (fleet.url("p1", "wrong-password"), "p1"),
    ):
        client = MqttClient(url, client_id, reconnect=False)
        with pytest.raises(MqttError, match=r"refused client|closed the connection"):
            await client.connect(timeout=5)
    if fleet.kind == "embedded":
        assert fleet.refused("connect_refused") >= 3
    await fleet.legit_task_completes()


async def test_an_enrolled_proplet_cannot_read_results_nor_publish_manager_topics(fleet: Fleet) -> None:
    seen: list[str] = []
    evil = fleet.client_as("evil", on_message=lambda topic, _payload: seen.append(topic), reconnect=False)
    await evil.connect()
    if fleet.kind == "embedded":
        with pytest.raises(MqttError, match="refused the subscription to '#'"):
            await evil.subscribe_and_wait("#", 1)
    else:
        # Mosquitto 2.0 grants the SUBACK but delivers only what the user's read ACL allows.
        await evil.subscribe_and_wait("#", 1)
    p1 = fleet.agents["p1"].engine
    started = p1.counters.get("tasks_started", 0)
    # A forged start for p1 (a manager topic): dropped by the broker, p1 never runs it.
    forged = {"id": "00000000-0000-4000-8000-000000000001", "name": "add", "file": ADD, "inputs": ["1", "1"],
              "proplet_id": "p1", "state": 0, "cli_args": None}  # fmt: skip
    await evil.publish_and_wait(fleet.topics.start, json.dumps(forged).encode(), 1)
    await fleet.legit_task_completes(on="p1")  # the sentinel: real traffic went through meanwhile
    assert p1.counters.get("tasks_started", 0) == started + 1  # the legitimate task only
    assert not any(t.endswith("/control/proplet/results") for t in seen), seen
    if fleet.kind == "embedded":
        assert fleet.refused("subscribe_refused") >= 1 and fleet.refused("publish_dropped") >= 1
    await evil.disconnect()


async def test_forged_announcements_of_fake_proplets_are_dropped_and_never_get_work(fleet: Fleet) -> None:
    evil = fleet.client_as("evil", reconnect=False)
    await evil.connect()
    fakes = ["ghost-1", "\u0000", "g" * 5_000_000]
    for fake in fakes:
        await evil.publish_and_wait(
            fleet.topics.create, json.dumps({"proplet_id": fake, "namespace": "x"}).encode(), 1
        )
        await evil.publish_and_wait(
            fleet.topics.alive, json.dumps({"proplet_id": fake, "status": "alive"}).encode(), 1
        )
    # Dropped and counted: by the broker (embedded), or by the manager (Mosquitto cannot read payloads).
    if fleet.kind == "embedded":
        await eventually(
            lambda: _true(fleet.refused("publish_dropped") >= 2 * len(fakes)), 10, "forgeries dropped"
        )
    else:
        await eventually(
            lambda: _true(fleet.unenrolled() >= 2 * len(fakes)), 10, "forgeries dropped by the manager"
        )
    for _ in range(4):
        await fleet.legit_task_completes()
    ids = {p["id"] for p in (await fleet.api.get("/proplets")).json()["proplets"]}
    assert ids == {"p1", "p2"}, ids
    metrics = (await fleet.api.get("/metrics")).text
    counter = (
        "propeller_broker_refused_total"
        if fleet.kind == "embedded"
        else "propeller_messages_unenrolled_total"
    )
    assert counter in metrics
    await evil.disconnect()


async def test_forged_offline_of_another_proplet(fleet: Fleet) -> None:
    evil = fleet.client_as("evil", reconnect=False)
    await evil.connect()
    before = fleet.manager.engine.counters.get("proplet_dead", 0)
    await evil.publish_and_wait(
        fleet.topics.alive, json.dumps({"proplet_id": "p1", "status": "offline"}).encode(), 1
    )
    if fleet.kind == "embedded":
        await eventually(
            lambda: _true(fleet.refused("publish_dropped") >= 1), 10, "the forged offline dropped"
        )
        await fleet.legit_task_completes(on="p1")
        assert await fleet.alive("p1")
        assert fleet.manager.engine.counters.get("proplet_dead", 0) == before
    else:
        # Residual risk on Mosquitto (docs/trust.md): it cannot bind the payload's id to the sender, so an
        # ENROLLED proplet can mark another dead for a moment; it is alive again at its next heartbeat
        # and its work still completes (and results need a valid receipt).
        await eventually(lambda: fleet.alive("p1"), 10, "p1 alive again at its next heartbeat")
        await fleet.legit_task_completes(on="p1")
    await evil.disconnect()


async def test_client_id_takeover_of_the_manager_or_a_proplet_is_refused(fleet: Fleet) -> None:
    manager_client = fleet.manager.mqtt.client_id if fleet.manager.mqtt is not None else ""
    for victim in (manager_client, "p1"):
        anonymous = MqttClient(fleet.url(), victim, reconnect=False)
        with pytest.raises(MqttError):
            await anonymous.connect(timeout=5)
        impostor = fleet.client_as("evil", client_id=victim, reconnect=False, keepalive=3)
        if fleet.kind == "embedded":
            with pytest.raises(MqttError, match="refused client"):
                await impostor.connect(timeout=5)
        else:
            # Mosquitto's use_username_as_clientid: the impostor gets its own client id, not the victim's.
            await impostor.connect(timeout=5)
            await asyncio.sleep(3)  # the attack held the stolen id for 3 s
            await impostor.disconnect()
    if fleet.kind == "embedded":
        assert fleet.refused("connect_refused") >= 4
    assert fleet.manager.broker_link_up
    await fleet.legit_task_completes(on="p1")  # the manager still hears, p1 still gets its starts
    await fleet.legit_task_completes(on="p2")


async def test_a_revoked_identity_is_disconnected_and_refused(fleet: Fleet) -> None:
    doc = fleet.identities["p2"]
    await fleet.revoke("p2")
    listed = {i["proplet_id"]: i for i in (await fleet.api.get("/proplets/identities")).json()["identities"]}
    assert listed["p2"]["revoked"] is True and "password" not in listed["p2"]
    # Disconnected (embedded: at once, its will fires) or ignored (Mosquitto keeps the old connection
    # open; the manager drops its messages): either way the manager sees it dead.
    await eventually(lambda: fleet.alive("p2", expected=False), 15, "the revoked p2 seen dead")
    again = MqttClient(fleet.url(doc["username"], doc["password"]), doc["client_id"] + "-x", reconnect=False)
    with pytest.raises(MqttError):
        await again.connect(timeout=5)
    if fleet.kind == "embedded":
        assert fleet.manager.broker is not None and fleet.manager.broker.guard is not None
        assert fleet.manager.broker.guard.counters["revoked_dropped"] == 1
    for _ in range(3):
        task = await fleet.run_task({"name": "add", "file": ADD, "inputs": [1, 2]}, TASK_TIMEOUT)
        assert task["state"] == 3 and task["proplet_id"] == "p1"


async def test_health_fails_while_the_managers_broker_link_is_down(fleet: Fleet) -> None:
    assert (await fleet.api.get("/health")).json()["status"] == "pass"
    if fleet.kind == "embedded":
        assert fleet.manager.broker is not None
        await fleet.manager.broker.stop()
    else:
        assert fleet.mosquitto is not None
        fleet.mosquitto.kill()
        await fleet.mosquitto.wait()
    await eventually(lambda: _health_is(fleet, 503, "fail"), 15, "/health fail while the link is down")
    if fleet.kind == "embedded":
        assert fleet.manager.broker is not None
        await fleet.manager.broker.start()
    else:
        fleet.mosquitto = await _start_mosquitto(fleet.tmp, fleet.port)
    await eventually(lambda: _health_is(fleet, 200, "pass"), 30, "/health pass once the manager is back")
    await eventually(lambda: fleet.alive("p1"), 20, "p1 back")
    await fleet.legit_task_completes(on="p1")


@pytest.mark.parametrize("fleet", [pytest.param("mosquitto", marks=pytest.mark.mosquitto)], indirect=True)
async def test_an_acl_from_before_direct_starts_costs_one_lost_start_and_nothing_else(fleet: Fleet) -> None:
    """Files generated before proplets had a start topic of their own: Mosquitto grants the subscription
    and delivers nothing on it. The first start sent there is lost, the manager says why and sends that
    proplet's starts to the shared topic; the task completes without spending an attempt."""
    acl = fleet.tmp / "mosq" / "acl"
    old = [line for line in acl.read_text().splitlines() if "control/manager/start/" not in line]
    assert len(old) < len(acl.read_text().splitlines())  # the generated file had the lines
    acl.write_text("\n".join(old) + "\n")
    assert fleet.mosquitto is not None
    fleet.mosquitto.kill()  # restarted rather than reloaded: every client reconnects under the old rules
    await fleet.mosquitto.wait()
    fleet.mosquitto = await _start_mosquitto(fleet.tmp, fleet.port)
    await eventually(lambda: _health_is(fleet, 200, "pass"), 30, "the manager back on the broker")
    await eventually(lambda: fleet.alive("p1"), 20, "p1 back")
    spec = {"name": "add", "file": ADD, "inputs": [2, 40], "proplet_id": "p1"}
    task = await fleet.run_task(spec, TASK_TIMEOUT)
    assert (task["state"], task["results"], task["proplet_id"]) == (3, "42", "p1"), task
    assert task["attempts_counted"] == 1 and task["attempt"] >= 2  # the lost start was not counted
    assert fleet.manager.engine.counters["direct_start_unreachable"] == 1


async def _health_is(fleet: Fleet, status: int, verdict: str) -> bool:
    r = await fleet.api.get("/health")
    return r.status_code == status and r.json()["status"] == verdict


# ------------------------------------------------------------------------------ upstream proplets


class RawUpstream:
    """An upstream proplet speaking its own wire over raw paho (thread loop): the Rust proplet or the
    ESP32 firmware, connecting with its entity id as client id and user name and its key as password."""

    def __init__(self, fleet: Fleet, client_id: str, key: str, firmware: bool) -> None:
        self.fleet, self.id, self.firmware = fleet, client_id, firmware
        self.inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=not firmware
        )
        self.client.username_pw_set(client_id, key)
        t = fleet.topics
        if firmware:  # the embed-proplet's will; the Rust proplet has none
            will = {"status": "offline", "proplet_id": client_id, "namespace": "embedded"}
            self.client.will_set(t.alive, json.dumps(will), 1)
        self.connected: queue.Queue[int] = queue.Queue()
        self.client.on_connect = lambda c, u, f, rc, p: self.connected.put(int(rc.value))
        self.client.on_message = lambda c, u, m: self.inbox.put((m.topic, bytes(m.payload)))

    def start(self) -> None:
        t = self.fleet.topics
        self.client.connect(self.fleet.host, self.fleet.port, keepalive=30)
        self.client.loop_start()
        rc = self.connected.get(timeout=10)
        assert rc == 0, f"{self.id}: CONNACK {rc}"
        topics = [t.start, t.stop, t.registry_server] + ([] if self.firmware else [t.invoke])
        self.client.subscribe([(topic, 1) for topic in topics])
        if self.firmware:
            discovery = {"proplet_id": self.id, "namespace": "embedded",
                         "metadata": {"description": "ESP32-S3 embed-proplet", "tags": ["embedded"],
                                      "os": "zephyr", "cpu_arch": "xtensa", "wasm_runtime": "wamr",
                                      "proplet_version": "0.1.0-PROP-103"}}  # fmt: skip
        else:
            discovery = {
                "proplet_id": self.id,
                "namespace": "default",
                "metadata": {"description": "rust proplet", "os": "linux", "wasm_runtime": "wasmtime"},
            }
        self.client.publish(t.create, json.dumps(discovery), 1)
        self.beat()

    def beat(self) -> None:
        body = {
            "status": "alive",
            "proplet_id": self.id,
            "namespace": "embedded" if self.firmware else "default",
        }
        self.client.publish(self.fleet.topics.alive, json.dumps(body), 1)

    def serve(self) -> None:
        """Answer starts aimed at us (inputs summed, like the `add` module), heartbeat meanwhile."""
        try:
            while True:
                topic, payload = self.inbox.get(timeout=0.3)
                if not topic.endswith("/control/manager/start"):
                    continue
                start = json.loads(payload)
                if start.get("proplet_id") not in (None, self.id):
                    continue  # (the real firmware runs every start; this stand-in keeps the test simple)
                total = sum(int(x) if isinstance(x, int | float) or str(x).lstrip("-").isdigit() else 0
                            for x in start.get("inputs") or [])  # fmt: skip
                if self.firmware:  # the firmware's result carries no proplet_id
                    result: dict[str, Any] = {"task_id": start["id"], "results": str(total)}
                else:
                    result = {
                        "task_id": start["id"],
                        "proplet_id": self.id,
                        "results": str(total),
                        "error": None,
                    }
                self.client.publish(self.fleet.topics.results, json.dumps(result), 1)
        except queue.Empty:
            self.beat()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def _served(raw: RawUpstream, work: Callable[[], Any]) -> Any:
    stop = asyncio.Event()

    async def pump() -> None:
        while not stop.is_set():
            await asyncio.to_thread(raw.serve)

    pumping = asyncio.create_task(pump())
    try:
        return await work()
    finally:
        stop.set()
        await pumping


@pytest.mark.parametrize("firmware", [False, True], ids=["rust", "firmware"])
async def test_upstream_proplets_enrolled_with_their_own_key_connect_and_work(
    fleet: Fleet, firmware: bool
) -> None:
    entity = "esp-0001" if firmware else "rust-entity-7"
    key = "upstream-api-key-" + entity
    doc = await fleet.enroll(entity, kind="upstream", client_id=entity, key=key)
    assert doc["kind"] == "upstream" and "signing_key" not in doc and doc["username"] == entity
    raw = RawUpstream(fleet, entity, key, firmware)
    await asyncio.to_thread(raw.start)
    try:
        await _served(raw, lambda: eventually(lambda: fleet.alive(entity), 15, f"{entity} alive"))
        task = await _served(raw, lambda: fleet.run_task({"name": "add", "file": ADD, "inputs": [2, 3],
                                                          "proplet_id": entity}, TASK_TIMEOUT))  # fmt: skip
        assert (task["state"], task["results"], task["proplet_id"]) == (3, "5", entity), task
    finally:
        await asyncio.to_thread(raw.stop)
    await fleet.legit_task_completes(on="p1")
