"""ELASTIC HAL components through the REST API on a Python proplet (manager + embedded broker + agent).

The guest (tests/wasm/hal_probe.component.wat) forwards each HAL call and returns the host's answer
as WAVE, so these tests read what a component actually saw.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import blake3
import httpx
import pytest
import wasmtime

from orchestrator.core import receipts
from orchestrator.service import ManagerService, ManagerSettings
from proplets.agent import AgentSettings, PropletAgent, with_identity
from tests.integration.conftest import Cluster, close_cluster, eventually, make_cluster

WASM = Path(__file__).resolve().parents[1] / "wasm"
PROBE = base64.b64encode(wasmtime.wat2wasm((WASM / "hal_probe.component.wat").read_text())).decode()


def _component(imports: str) -> str:
    """A component importing `imports` (one function `f`) and exporting nothing useful."""
    wat = f"""(component
      (type $t (instance (export "f" (func))))
      (import "{imports}" (instance $x (type $t)))
      (core module $m (func (export "run") (result i32) (i32.const 0)))
      (core instance $i (instantiate $m))
      (func (export "run") (result u32) (canon lift (core func $i "run"))))"""
    return base64.b64encode(wasmtime.wat2wasm(wat)).decode()


def _bytes(wave: str) -> bytes:
    """The first list of u8 in a WAVE result text."""
    match = re.search(r"\[([0-9, ]*)\]", wave)
    assert match, wave
    return bytes(int(x) for x in match.group(1).split(",") if x.strip())


def _lists(wave: str) -> list[bytes]:
    return [bytes(int(x) for x in m.split(",") if x.strip()) for m in re.findall(r"\[([0-9, ]*)\]", wave)]


def _u8(data: bytes) -> str:
    return "[" + ", ".join(str(b) for b in data) + "]"


class Hal:
    def __init__(self, cluster: Cluster, hal_root: Path) -> None:
        self.c, self.hal_root = cluster, hal_root

    async def call(self, fn: str, *inputs: str, task_id: str | None = None, **extra: Any) -> dict[str, Any]:
        spec = {"name": fn, "file": PROBE, "inputs": list(inputs), **extra}
        if task_id:
            spec["id"] = task_id
        return await self.c.run_task(spec, timeout=30)

    async def ok(self, fn: str, *inputs: str, **extra: Any) -> str:
        task = await self.call(fn, *inputs, **extra)
        assert task["state"] == 3, task
        return str(task["results"])


async def _enrolled(c: Cluster, settings: AgentSettings) -> AgentSettings:
    """The proplet enrolled on the cluster's closed broker (credentials and signing key)."""
    enrollment = await c.manager.enroll("proplet", settings.proplet_id)
    return with_identity(settings, enrollment.identity_file())


async def _hal_cluster(tmp_path: Path, **agent: Any) -> tuple[Cluster, PropletAgent]:
    c = await make_cluster("embedded://127.0.0.1:0", tmp_path)
    s = c.manager.settings
    proplet = PropletAgent(
        await _enrolled(
            c,
            AgentSettings(
                broker=c.broker_url,
                proplet_id="hal-1",
                domain=s.domain,
                channel=s.channel,
                heartbeat_interval=s.heartbeat_interval,
                keepalive=2,
                **{"cache_dir": str(tmp_path / "cache"), "hal_root": str(tmp_path / "hal"), **agent},
            ),
        )
    )
    await proplet.start()
    c.agents["hal-1"] = proplet
    await eventually(lambda: c.alive("hal-1"), 10, "hal-1 alive")
    return c, proplet


@pytest.fixture
async def hal(tmp_path: Path) -> AsyncIterator[Hal]:
    c, _ = await _hal_cluster(tmp_path, fetch_allow=("public", "127.0.0.1"))
    try:
        yield Hal(c, tmp_path / "hal")
    finally:
        await close_cluster(c)


async def test_platform_clock_random_and_gpu(hal: Hal) -> None:
    info = await hal.ok("platform-info")
    assert 'platform-type: "host"' in info and "propeller-python-hal" in info
    assert await hal.ok("has-capability", '"storage"') == "true"
    assert await hal.ok("has-capability", '"gpu"') == "false"
    seen = await hal.ok("system-time")
    seconds = int(re.search(r"seconds: (\d+)", seen).group(1))  # type: ignore[union-attr]
    assert abs(seconds - time.time()) < 120
    assert await hal.ok("sleep", "20000000") == "ok"  # 20 ms
    random16 = _bytes(await hal.ok("secure-random", "16"))
    assert len(random16) == 16 and random16 != _bytes(await hal.ok("secure-random", "16"))
    assert await hal.ok("gpu-adapters") == 'err("gpu not available: this proplet has no GPU compute backend")'


async def test_crypto_hashes_ciphers_and_signatures(hal: Hal) -> None:
    data = b"propeller"
    for algorithm, expected in (
        ("sha256", hashlib.sha256(data).digest()),
        ("sha512", hashlib.sha512(data).digest()),
        ("blake3", blake3.blake3(data).digest()),
    ):
        assert _bytes(await hal.ok("hash", _u8(data), algorithm)) == expected
    key = bytes(range(32))
    for cipher in ("aes256-gcm", "chacha20-poly1305"):
        sealed = _bytes(await hal.ok("encrypt", _u8(data), _u8(key), cipher))
        assert len(sealed) == 12 + len(data) + 16 and data not in sealed
        assert _bytes(await hal.ok("decrypt", _u8(sealed), _u8(key), cipher)) == data
        tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
        assert "decryption failed" in await hal.ok("decrypt", _u8(tampered), _u8(key), cipher)
    assert "needs a 32-byte key" in await hal.ok("encrypt", _u8(data), "[1, 2]", "aes256-gcm")
    public, private = _lists(await hal.ok("generate-keypair"))
    signature = _bytes(await hal.ok("sign", _u8(data), _u8(private)))
    assert await hal.ok("verify", _u8(data), _u8(signature), _u8(public)) == "ok(true)"
    assert await hal.ok("verify", _u8(b"other"), _u8(signature), _u8(public)) == "ok(false)"


async def test_storage_is_confined_to_hal_storage_path_and_persists(hal: Hal) -> None:
    where = {"hal_storage_path": "team-a/models"}
    assert await hal.ok("put-get", '"box"', '"weights"', "[1, 2, 3]", **where) == "ok([1, 2, 3])"
    assert (hal.hal_root / "team-a" / "models" / "box" / "weights").read_bytes() == b"\x01\x02\x03"
    # a later task with the same storage path sees the object; another task's default root does not
    assert await hal.ok("get", '"box"', '"weights"', **where) == "ok([1, 2, 3])"
    assert "does not exist" in await hal.ok("get", '"box"', '"weights"')
    for name in ('"../escape"', '"a/b"', '".."', '"/etc"'):
        refused = await hal.ok("create-container", name, **where)
        assert refused.startswith("err(") and "invalid container name" in refused, refused
    assert not (hal.hal_root / "team-a" / "escape").exists()
    assert "invalid object key" in await hal.ok("put-get", '"box"', '"../../x"', "[1]", **where)
    # a hal_storage_path leaving the proplet's root is refused at the API
    r = await hal.c.api.post("/tasks", json={"name": "get", "file": PROBE, "hal_storage_path": "a/../../x"})
    assert r.status_code == 400 and "hal_storage_path" in r.text


async def test_storage_quota_is_enforced(tmp_path: Path) -> None:
    c, _ = await _hal_cluster(tmp_path, hal_quota_bytes=4)
    try:
        h = Hal(c, tmp_path / "hal")
        assert await h.ok("put-get", '"q"', '"a"', "[1, 2, 3]") == "ok([1, 2, 3])"
        other = await h.ok("put-get", '"q"', '"b"', "[1, 2]", hal_storage_path="quota-test")
        assert other == "ok([1, 2])"  # another task's root has its own quota
        full = await h.ok("put-get", '"q"', '"c"', "[4, 5, 6]", hal_storage_path="quota-test")
        assert "storage quota exceeded: storing 3 bytes would use 5 of 4" in full, full
    finally:
        await close_cluster(c)


async def test_communication_events_and_resources(hal: Hal) -> None:
    me = str(uuid.uuid4())
    seen = (await hal.call("message-self", f'"{me}"', "[7, 8]", task_id=me))["results"]
    assert seen == f'ok(some({{sender: "{me}", recipient: "{me}", payload: [7, 8], encrypted: false}}))'
    assert "no workload 'nobody'" in await hal.ok("message-self", '"nobody"', "[1]")
    listed = (await hal.call("list-workloads", task_id=(other := str(uuid.uuid4()))))["results"]
    assert f'"{other}"' in listed
    events = await hal.ok("storage-events", '"evbox"')
    assert events.startswith("ok([{event-type: storage") and _bytes(events) == b"create-container evbox"
    assert int(re.search(r"ok\((\d+)\)", await hal.ok("query-available", "cpu")).group(1)) >= 1  # type: ignore[union-attr]
    memory = await hal.ok("query-available", "memory", limits={"memory_bytes": 8 << 20})
    assert memory == f"ok({8 << 20})"
    assert "not an allocatable resource" in await hal.ok("query-available", "network")


@pytest.fixture
def listener() -> Iterator[int]:
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(30)
    accepted: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            accepted.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    server.close()
    thread.join(5)
    for s in accepted:
        s.close()


async def test_sockets_go_through_the_allow_list(hal: Hal, listener: int) -> None:
    assert await hal.ok("dial", '"127.0.0.1"', str(listener)) == "ok"  # allowed: --fetch-allow 127.0.0.1
    metadata = await hal.ok("dial", '"169.254.169.254"', "80")
    assert (
        metadata.startswith("err(") and "refused by the allow-list" in metadata and "link-local" in metadata
    )
    private = await hal.ok("dial", '"10.1.2.3"', "80")
    assert "refused by the allow-list" in private and "--fetch-allow" in private


async def test_attestation_is_a_clear_error_without_a_tee(hal: Hal) -> None:
    assert (
        await hal.ok("attest", "[1, 2, 3]")
        == 'err("no TEE platform available (no configfs-tsm report interface)")'
    )


class FakeTsm:
    """A configfs-tsm stand-in: for each report entry, once `inblob` is written, `outblob` appears."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True)
        self.inblobs: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.wait(0.005):
            for inblob in self.root.glob("*/inblob"):
                out = inblob.parent / "outblob"
                if not out.exists():
                    data = inblob.read_bytes()
                    if len(data) == 64:
                        self.inblobs.append(data)
                        out.write_bytes(b"FAKE-TDX-QUOTE:" + data)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


async def test_attestation_returns_evidence_from_configfs_tsm_bound_to_report_data(tmp_path: Path) -> None:
    tsm = FakeTsm(tmp_path / "tsm" / "report")
    c, _ = await _hal_cluster(tmp_path, tsm_root=str(tsm.root))
    try:
        evidence = _bytes(await Hal(c, tmp_path).ok("attest", _u8(b"nonce-42")))
        assert evidence == b"FAKE-TDX-QUOTE:" + b"nonce-42".ljust(64, b"\0")
        assert tsm.inblobs == [b"nonce-42".ljust(64, b"\0")]
        assert list(tsm.root.iterdir()) == []  # the report entry was removed
        too_long = await Hal(c, tmp_path).ok("attest", _u8(bytes(65)))
        assert "at most 64" in too_long
    finally:
        tsm.close()
        await close_cluster(c)


async def test_a_missing_hal_import_fails_at_instantiation_naming_it(hal: Hal) -> None:
    for name in ("elastic:hal/teleport@0.1.0", "elastic:hal/storage@9.0.0", "elastic:hal/storage@0.1.0"):
        task = await hal.c.run_task({"name": "run", "file": _component(name)}, timeout=30)
        assert task["state"] == 4 and f"component imports instance `{name}`" in task["error"], task
        assert "cannot be instantiated on this proplet" in task["error"]
    # an interface we offer, with a function we do not: the function is named
    assert "instance export `f`" in task["error"]


async def test_a_wasi_http_import_the_proplet_lacks_fails_naming_it(hal: Hal) -> None:
    # wasi:http is linked, with each request checked (tests/integration/test_wasi_http.py); what it
    # does not define still fails at instantiation, named
    for name in ("wasi:http/outgoing-handler@0.2.0", "wasi:http/teleport@0.2.0"):
        task = await hal.c.run_task({"name": "run", "file": _component(name)}, timeout=30)
        assert task["state"] == 4 and "cannot be instantiated on this proplet" in task["error"], task
        assert name in task["error"] or "instance export `f`" in task["error"], task


async def test_sleep_is_interrupted_by_the_wall_time_limit(hal: Hal) -> None:
    task = await hal.call("sleep", str(120 * 10**9), limits={"timeout_s": 1})
    assert task["state"] == 4 and "wall-time limit of 1 s exceeded" in task["error"], task


async def test_stop_interrupts_a_sleeping_component(hal: Hal) -> None:
    spec = {"name": "sleep", "file": PROBE, "inputs": [str(600 * 10**9)]}
    created = (await hal.c.api.post("/tasks", json=spec)).json()
    await hal.c.api.post(f"/tasks/{created['id']}/start")
    proplet = hal.c.agents["hal-1"]

    async def sleeping_on_the_proplet() -> bool:  # a stop sent before the start arrives is not this test
        return created["id"] in proplet.engine.running

    await eventually(sleeping_on_the_proplet, 15, "the sleeping task to run on the proplet")
    assert (await hal.c.api.post(f"/tasks/{created['id']}/stop")).status_code == 200

    async def released() -> bool:  # the HAL sleep ended: the proplet no longer runs it
        return created["id"] not in proplet.engine.running

    await eventually(released, 30, "the proplet to end the sleeping run")
    assert proplet.engine.counters["tasks_stopped"] == 1


async def _running(c: Cluster, task_id: str) -> bool:
    return int((await c.api.get(f"/tasks/{task_id}")).json()["state"]) == 2


async def test_tee_is_announced_and_placement_can_require_it(tmp_path: Path) -> None:
    c, _ = await _hal_cluster(tmp_path, tee_root=str(tmp_path / "no-tee"))
    try:
        plain = (await c.api.get("/proplets/hal-1")).json()
        assert plain["metadata"]["hal"] == "elastic:hal@0.1.0" and not plain["metadata"].get("tee")
        created = await c.api.post(
            "/tasks", json={"name": "platform-info", "file": PROBE, "requires": {"tee": True}}
        )
        assert created.status_code == 201, created.text
        task_id = created.json()["id"]
        await c.api.post(f"/tasks/{task_id}/start")

        async def waiting_for_a_tee() -> bool:
            return "runs in no TEE" in (await c.api.get(f"/tasks/{task_id}")).json().get("error", "")

        await eventually(waiting_for_a_tee, 15, "the task to wait for a TEE proplet")
        # a proplet that sees /dev/tdx_guest (a fake root for detection) joins and gets the task
        fake = tmp_path / "tdx-root"
        (fake / "dev").mkdir(parents=True)
        (fake / "dev" / "tdx_guest").touch()
        s = c.manager.settings
        tdx = PropletAgent(
            await _enrolled(c, AgentSettings(
                broker=c.broker_url, proplet_id="tdx-1", domain=s.domain, channel=s.channel,
                heartbeat_interval=s.heartbeat_interval, keepalive=2, cache_dir=str(tmp_path / "cache"),
                hal_root=str(tmp_path / "hal"), tee_root=str(fake),
            ))
        )  # fmt: skip
        await tdx.start()
        c.agents["tdx-1"] = tdx
        done = await c.wait_terminal(task_id, timeout=30)
        assert done["state"] == 3 and done["proplet_id"] == "tdx-1", done
        assert 'platform-type: "tdx"' in done["results"]
        announced = (await c.api.get("/proplets/tdx-1")).json()["metadata"]
        assert announced["tee"] is True and announced["tee_type"] == "tdx"
        bad = await c.api.post("/tasks", json={"name": "x", "file": PROBE, "requires": {"sgx": True}})
        assert bad.status_code == 400 and "requires.sgx" in bad.text
    finally:
        await close_cluster(c)


async def test_a_daemon_runs_past_the_default_wall_time_until_stopped(tmp_path: Path) -> None:
    c, _ = await _hal_cluster(tmp_path, default_limits={"timeout_s": 1})
    try:
        long_sleep = str(600 * 10**9)
        daemon = (
            await c.api.post(
                "/tasks", json={"name": "sleep", "file": PROBE, "inputs": [long_sleep], "daemon": True}
            )
        ).json()["id"]
        await c.api.post(f"/tasks/{daemon}/start")
        await eventually(lambda: _running(c, daemon), 15, "the daemon to run")
        # the sentinel: an ordinary task started after it hits the 1 s default limit
        ordinary = await Hal(c, tmp_path).call("sleep", long_sleep)
        assert ordinary["state"] == 4 and "wall-time limit of 1 s exceeded" in ordinary["error"]
        assert await _running(c, daemon)
        assert (await c.api.post(f"/tasks/{daemon}/stop")).status_code == 200
        stopped = await c.wait_terminal(daemon, timeout=30)
        assert "wall-time" not in stopped.get("error", "")
    finally:
        await close_cluster(c)


async def test_workloads_on_one_proplet_message_each_other(hal: Hal) -> None:
    receiver = str(uuid.uuid4())
    created = await hal.c.api.post(
        "/tasks", json={"id": receiver, "name": "wait-message", "file": PROBE, "inputs": ["6000"]}
    )
    assert created.status_code == 201, created.text
    await hal.c.api.post(f"/tasks/{receiver}/start")

    async def listed() -> bool:  # the receiver is registered once another workload can see it
        return f'"{receiver}"' in await hal.ok("list-workloads")

    await eventually(listed, 30, "the receiver to be a running workload")
    sender = str(uuid.uuid4())
    sent = await hal.call("message-self", f'"{receiver}"', "[104, 105]", task_id=sender)
    assert sent["results"] == "ok(none)"  # the sender's own inbox is empty: the message went to the receiver
    got = await hal.c.wait_terminal(receiver, timeout=60)
    assert (
        got["results"]
        == f'ok(some({{sender: "{sender}", recipient: "{receiver}", payload: [104, 105], encrypted: false}}))'
    )


async def test_in_a_tee_the_verified_receipt_carries_evidence_bound_to_it(tmp_path: Path) -> None:
    tsm = FakeTsm(tmp_path / "tsm" / "report")
    fake = tmp_path / "tdx-root"
    (fake / "dev").mkdir(parents=True)
    (fake / "dev" / "tdx_guest").touch()
    key = receipts.generate_key()
    provers = {"tdx-1": receipts.ProverKey(receipts.public_key_of(key), "proplet")}
    settings = ManagerSettings(
        broker="embedded://127.0.0.1:0", db=str(tmp_path / "m.db"), api_port=0, heartbeat_interval=0.5,
        domain=f"d-{uuid.uuid4().hex[:8]}", channel="c1", mqtt_keepalive=5,
        broker_open=True,  # this test's own key lookup, not the enrolment registry
    )  # fmt: skip
    manager = ManagerService(settings, keys=provers.get)
    await manager.start()
    c = Cluster(
        manager, httpx.AsyncClient(base_url=f"http://127.0.0.1:{manager.api_port}", timeout=10), tmp_path
    )
    try:
        agent = PropletAgent(
            AgentSettings(
                broker=c.broker_url, proplet_id="tdx-1", domain=settings.domain, channel="c1",
                heartbeat_interval=0.5, keepalive=5, signing_key=key, cache_dir=str(tmp_path / "cache"),
                hal_root=str(tmp_path / "hal"), tee_root=str(fake), tsm_root=str(tsm.root),
            )
        )  # fmt: skip
        await agent.start()
        c.agents["tdx-1"] = agent
        await eventually(lambda: c.alive("tdx-1"), 15, "tdx-1 alive")
        task = await c.run_task({"name": "hash", "file": PROBE, "inputs": ["[1]", "sha256"]}, timeout=30)
        assert task["state"] == 3 and task["verified"] is True, task
        signed = (await c.api.get(f"/tasks/{task['id']}/receipt")).json()["receipt"]
        receipt = receipts.Receipt.from_json(signed)
        bound = receipts.evidence_report_data(receipt)
        assert base64.b64decode(receipt.evidence or "") == b"FAKE-TDX-QUOTE:" + bound.ljust(64, b"\0")
        assert bound.ljust(64, b"\0") in tsm.inblobs
    finally:
        tsm.close()
        await close_cluster(c)
