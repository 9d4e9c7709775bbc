"""Forged results, as an attacker on the broker would send them, against a manager that knows its
proplets' keys: each forgery is rejected and counted, the real proplet's signed result then completes
the task as ``verified``, and ``propeller task verify`` checks the receipt offline and catches tampering.

Real parts: a broker the test starts (amqtt, open, like any external broker that cannot bind payloads to
identities) and the machine's Mosquitto (unique domain), the manager service with its API, a real
PropletAgent running real wasmtime; its runtime waits at a gate so that the forgeries reach the manager
while the real task is still running.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator import wire
from orchestrator.adapters.broker import EmbeddedBroker
from orchestrator.adapters.mqtt import MqttClient
from orchestrator.core import receipts
from orchestrator.service import ManagerService, ManagerSettings
from proplets.agent import AgentSettings, PropletAgent
from proplets.runtime import CancelToken, RunOutcome, RunRequest, WasmtimeRuntime
from tests.integration.conftest import ADD_WASM, eventually

ADD = ADD_WASM


class GatedRuntime:
    """Real wasmtime, but each run waits until the test opens the gate (ordering only, no fake results)."""

    def __init__(self) -> None:
        self.inner = WasmtimeRuntime()
        self.gate = threading.Event()
        self.entered = threading.Event()

    def run(self, request: RunRequest, cancel: CancelToken) -> RunOutcome:
        self.entered.set()
        self.gate.wait(60)
        return self.inner.run(request, cancel)

    def close(self) -> None:
        self.inner.close()


class TrustedCluster:
    """A manager that knows the public key of every proplet it started (what enrollment provides)."""

    def __init__(self, broker_url: str, tmp: Path) -> None:
        self.broker_url, self.tmp = broker_url, tmp
        self.provers: dict[str, receipts.ProverKey] = {}
        self.agents: list[PropletAgent] = []
        self.settings = ManagerSettings(
            broker=broker_url, db=str(tmp / "m.db"), api_port=0, heartbeat_interval=0.5,
            domain=f"d-{uuid.uuid4().hex[:8]}", channel="c1", mqtt_keepalive=5,
        )  # fmt: skip
        self.manager = ManagerService(self.settings, keys=self.provers.get)
        self.topics = wire.Topics(self.settings.domain, self.settings.channel)
        self.api: httpx.AsyncClient

    async def start(self) -> None:
        await self.manager.start()
        self.api = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.manager.api_port}", timeout=10)

    async def add_proplet(self, pid: str, runtime: Any = None, profile: str = "host") -> bytes:
        key = receipts.generate_key()
        self.provers[pid] = receipts.ProverKey(receipts.public_key_of(key), "proplet")
        agent = PropletAgent(
            AgentSettings(
                broker=self.broker_url, proplet_id=pid, domain=self.settings.domain, channel="c1",
                heartbeat_interval=0.5, keepalive=5, metrics_interval=0, signing_key=key, cache_dir=None,
                profile=profile,
            ),
            runtime=runtime,
        )  # fmt: skip
        await agent.start()
        self.agents.append(agent)

        async def alive() -> bool:
            r = await self.api.get(f"/proplets/{pid}")
            return r.status_code == 200 and r.json()["alive"]

        await eventually(alive, 15, f"{pid} alive")
        return key

    async def submit(self, inputs: list[str]) -> str:
        created = await self.api.post(
            "/tasks", json={"name": "add", "file": base64.b64encode(ADD).decode(), "inputs": inputs}
        )
        assert created.status_code == 201, created.text
        task_id = str(created.json()["id"])
        assert (await self.api.post(f"/tasks/{task_id}/start")).status_code == 200
        return task_id

    async def task(self, task_id: str) -> dict[str, Any]:
        return dict((await self.api.get(f"/tasks/{task_id}")).json())

    async def rejected(self) -> dict[str, float]:
        """``propeller_results_rejected_total`` by reason, read from /metrics as an operator would."""
        text = (await self.api.get("/metrics")).text
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("propeller_results_rejected_total{"):
                reason = line.split('reason="', 1)[1].split('"', 1)[0]
                out[reason] = float(line.rsplit(" ", 1)[1])
        return out

    async def close(self) -> None:
        for agent in self.agents:
            await agent.stop()
        await self.api.aclose()
        await self.manager.stop()


@pytest.fixture(params=["amqtt", "mosquitto"])
async def trusted(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TrustedCluster]:
    broker: EmbeddedBroker | None = None
    if request.param == "mosquitto":
        url = str(request.getfixturevalue("mosquitto_url"))
    else:
        broker = EmbeddedBroker("127.0.0.1", 0)
        await broker.start()
        url = broker.url
    cluster = TrustedCluster(url, tmp_path)
    await cluster.start()
    try:
        yield cluster
    finally:
        await cluster.close()
        if broker is not None:
            await broker.stop()


async def propeller(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "orchestrator.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_forged_results_are_rejected_and_counted_and_the_signed_one_completes_verified(
    trusted: TrustedCluster, tmp_path: Path
) -> None:
    gated = GatedRuntime()
    await trusted.add_proplet("p1", runtime=gated)
    # A genuine receipt of another task, to replay.
    gated.gate.set()
    earlier = await trusted.submit(["1", "1"])
    await eventually(lambda: _state(trusted, earlier, 3), 20, "the earlier task to complete")
    replay = (await trusted.api.get(f"/tasks/{earlier}/receipt")).json()["receipt"]
    gated.gate.clear()
    gated.entered.clear()

    task_id = await trusted.submit(["2", "40"])
    await eventually(lambda: _true(gated.entered.is_set()), 20, "the real proplet to start the task")
    attacker = MqttClient(trusted.broker_url, f"attacker-{uuid.uuid4().hex[:8]}")
    await attacker.connect()
    stranger_receipt = receipts.sign(receipts.Receipt.from_json(replay), receipts.generate_key()).to_json()
    stranger_receipt["task_id"] = task_id
    forgeries: list[dict[str, Any]] = [
        {"task_id": task_id, "results": "FORGED"},
        {"task_id": task_id, "proplet_id": "p9", "results": "FORGED", "error": None},
        {"task_id": task_id, "proplet_id": "p1", "results": "FORGED", "error": None},
        {"task_id": task_id, "proplet_id": "p1", "results": "42", "error": None, "receipt": stranger_receipt},
        {"task_id": task_id, "proplet_id": "p1", "results": "2", "error": None, "receipt": replay},
    ]
    try:
        for forged in forgeries:
            attacker.publish(trusted.topics.results, json.dumps(forged).encode(), 1)

        async def all_counted() -> bool:
            return sum((await trusted.rejected()).values()) >= len(forgeries)

        await eventually(all_counted, 20, "the five forgeries to be rejected and counted")
    finally:
        await attacker.disconnect()
    assert await trusted.rejected() == {"missing_receipt": 2, "wrong_proplet": 1, "bad_receipt": 2}
    task = await trusted.task(task_id)
    assert task["state"] == 2 and "results" not in task and task["verified"] is False

    gated.gate.set()
    await eventually(lambda: _state(trusted, task_id, 3), 20, "the real result to complete the task")
    task = await trusted.task(task_id)
    assert task["results"] == "42" and task["proplet_id"] == "p1" and task["verified"] is True

    # The receipt, and a third party's offline check of it with only the public key.
    signed = (await trusted.api.get(f"/tasks/{task_id}/receipt")).json()
    assert signed["verified"] is True and signed["receipt"]["task_id"] == task_id
    assert signed["public_key"] == receipts.encode_key(trusted.provers["p1"].public_key or b"")
    api = ["--api-url", str(trusted.api.base_url)]
    code, out, err = await propeller("task", "verify", task_id, *api)
    assert code == 0 and f"receipt verified for task {task_id}" in out, out + err
    code, out, err = await propeller("task", "verify", task_id, "--json", *api)
    report = json.loads(out)
    assert code == 0 and report["verified"] is True, out + err
    assert {c["check"] for c in report["checks"] if c["ok"]} >= {"signature", "task_id", "result_sha256"}

    receipt_file, key_file = tmp_path / "receipt.json", tmp_path / "key.txt"
    task_file, module_file = tmp_path / "task.json", tmp_path / "add.wasm"
    receipt_file.write_text(json.dumps(signed["receipt"]))
    key_file.write_text(signed["public_key"])
    task_file.write_text(json.dumps(task))
    module_file.write_bytes(ADD)
    offline = [
        "--receipt",
        str(receipt_file),
        "--public-key",
        str(key_file),
        "--api-url",
        "http://127.0.0.1:9",
    ]
    code, out, err = await propeller("task", "verify", task_id, *offline, "--task", str(task_file),
                                     "--module", str(module_file))  # fmt: skip
    assert code == 0 and "module_sha256  ok" in out, out + err

    # One byte of the result changed: rejected, saying which digest does not match.
    task_file.write_text(json.dumps({**task, "results": "43"}))
    code, out, err = await propeller("task", "verify", task_id, *offline, "--task", str(task_file))
    assert code == 1 and "receipt REJECTED: result_sha256" in err, out + err
    # One byte of the receipt changed: the signature no longer verifies.
    tampered = dict(signed["receipt"])
    tampered["result_sha256"] = ("0" if tampered["result_sha256"][0] != "0" else "1") + tampered[
        "result_sha256"
    ][1:]
    receipt_file.write_text(json.dumps(tampered))
    code, out, err = await propeller("task", "verify", task_id, *offline)
    assert code == 1 and "receipt REJECTED: signature" in err, out + err
    # Another proplet's key does not verify it either.
    receipt_file.write_text(json.dumps(signed["receipt"]))
    other = receipts.encode_key(receipts.public_key_of(receipts.generate_key()))
    code, out, err = await propeller(
        "task", "verify", task_id, "--receipt", str(receipt_file), "--public-key", other
    )
    assert code == 1 and "receipt REJECTED: signature" in err, out + err


async def _state(cluster: TrustedCluster, task_id: str, state: int) -> bool:
    return int((await cluster.task(task_id))["state"]) == state


async def _true(value: bool) -> bool:
    return value


async def test_an_invocation_answer_is_signed_and_verified(trusted: TrustedCluster) -> None:
    await trusted.add_proplet("p1")
    spec = {"name": "add", "file": base64.b64encode(ADD).decode(), "inputs": ["1", "1"], "latent": True}
    created = await trusted.api.post("/tasks", json=spec)
    task_id = created.json()["id"]
    assert (await trusted.api.post(f"/tasks/{task_id}/start")).status_code == 200
    answer: dict[str, Any] = {}

    async def answered() -> bool:  # the first invocations may race the deployment ("not precompiled")
        nonlocal answer
        answer = (await trusted.api.post(f"/tasks/{task_id}/invoke", json={"inputs": ["20", "22"]})).json()
        return bool(answer.get("invoked"))

    await eventually(answered, 20, "an invocation to be answered")
    assert answer == {"invoked": True, "results": "42", "verified": True}
    assert await trusted.rejected() == {}


async def test_an_embedded_profile_proplet_signs_firmware_shaped_results_that_verify(
    trusted: TrustedCluster,
) -> None:
    await trusted.add_proplet("esp-1", profile="esp32s3")
    task_id = await trusted.submit(["20", "22"])
    await eventually(lambda: _state(trusted, task_id, 3), 20, "the embedded proplet's result")
    task = await trusted.task(task_id)
    assert task["results"] == "42" and task["verified"] is True
    signed = (await trusted.api.get(f"/tasks/{task_id}/receipt")).json()
    assert signed["receipt"]["attempt"] == 1  # the embedded profile is sent its attempt too
