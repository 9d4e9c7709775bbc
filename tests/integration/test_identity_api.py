"""Enrolment through the REST API and the CLI: what an operator types, and the errors they get."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from orchestrator.adapters.mqtt import BrokerUrl, MqttClient, MqttError
from orchestrator.adapters.store import Store
from orchestrator.enrollment import enroll_into_store
from tests.conftest import free_port
from tests.integration.conftest import Cluster, close_cluster, make_cluster

REPO = Path(__file__).resolve().parents[2]


async def _cli(*argv: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "orchestrator.cli", *argv, cwd=str(REPO),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    out, _ = await proc.communicate()
    return int(proc.returncode or 0), out.decode()


async def test_enrol_list_and_revoke_through_the_api(embedded_cluster: Cluster) -> None:
    api = embedded_cluster.api
    r = await api.post("/proplets/enroll", json={"id": "edge-1"})
    assert r.status_code == 201 and r.headers["cache-control"] == "no-store"
    doc = r.json()
    assert doc["kind"] == "proplet" and len(doc["password"]) >= 40 and doc["broker"].startswith("mqtt://")
    # Only the hash is stored; nothing the API lists carries a secret.
    assert embedded_cluster.manager.store is not None
    stored = {i.proplet_id: i for i in await embedded_cluster.manager.store.load_identities()}
    assert stored["edge-1"].password_hash.startswith("$7$101$") and doc["password"] not in repr(stored)
    listed = (await api.get("/proplets/identities")).json()
    assert [i["proplet_id"] for i in listed["identities"]] == ["edge-1"]
    assert "password" not in json.dumps(listed)

    for body, status, field in (
        ({"id": "edge-1"}, 409, "already enrolled"),
        ({"id": "bad/id"}, 400, "proplet_id must be"),
        ({"id": "x", "kind": "root"}, 400, "kind must be one of"),
        ({"kind": "upstream"}, 400, "own client_id"),
        ({"kind": "manager", "id": "m"}, 400, "not enrolled through the API"),
        ({"id": "x", "colour": "red"}, 400, "unknown field 'colour'"),
        ({"id": 5}, 400, "id must be a string"),
    ):
        r = await api.post("/proplets/enroll", json=body)
        assert r.status_code == status and field in r.json()["error"], (body, r.text)
    assert (await api.post("/proplets/nobody/revoke")).status_code == 404
    assert (await api.delete("/proplets/edge-1/identity")).status_code == 204
    again = await api.post("/proplets/enroll", json={"id": "edge-1"})  # a revoked id may be re-enrolled
    assert again.status_code == 201 and again.json()["password"] != doc["password"]


async def test_cli_enrol_revoke_and_their_errors(embedded_cluster: Cluster, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{embedded_cluster.manager.api_port}"
    out = tmp_path / "rust.json"
    code, text = await _cli(
        "proplets",
        "enroll",
        "--upstream",
        "--client-id",
        "rust-7",
        "--key",
        "k-7",
        "--out",
        str(out),
        "--api-url",
        url,
    )
    assert code == 0, text
    doc = json.loads(out.read_text())
    assert (doc["kind"], doc["username"], doc["password"]) == ("upstream", "rust-7", "k-7")
    assert "signing_key" not in doc
    code, text = await _cli("proplets", "enroll", "--upstream", "--api-url", url)
    assert code == 2 and "--upstream needs --client-id and --key" in text
    code, text = await _cli("proplets", "identities", "--api-url", url)
    assert code == 0 and "rust-7" in text and "upstream" in text
    code, text = await _cli("proplets", "revoke", "rust-7", "--api-url", url)
    assert code == 0 and "revoked rust-7" in text
    code, text = await _cli("proplets", "revoke", "rust-7x", "--api-url", url)
    assert code == 1 and "HTTP 404" in text and "rust-7x" in text
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**doc, "kind": "proplet"}))  # a proplet identity without a signing key
    code, text = await _cli("proplet", "--identity", str(bad))
    assert code == 2 and "needs 'signing_key'" in text


async def test_offline_enrolment_of_the_manager_and_the_closed_standalone_broker(tmp_path: Path) -> None:
    db = str(tmp_path / "m.db")
    code, text = await _cli(
        "proplets", "enroll", "--manager", "--id", "mgr-1", "--db", db, "--out", str(tmp_path / "m.json")
    )
    assert code == 0, text
    async with await Store.open(db) as store:
        assert [(i.proplet_id, i.kind) for i in await store.load_identities()] == [("mgr-1", "manager")]
    code, text = await _cli("proplets", "enroll", "--manager", "--out", str(tmp_path / "x.json"))
    assert code == 2 and "--manager needs --db" in text
    code, text = await _cli("broker", "--listen", "127.0.0.1:0")
    assert code == 2 and "closed by default" in text
    code, text = await _cli("broker", "mosquitto-config", "--db", db, "--out", str(tmp_path / "mosq"))
    assert code == 0 and "(1 identities)" in text
    assert (tmp_path / "mosq" / "passwd").read_text().startswith("mgr-1:$7$101$")
    assert "allow_anonymous false" in (tmp_path / "mosq" / "propeller.conf").read_text()


async def test_standalone_broker_admits_the_databases_identities_and_drops_revoked_ones(
    tmp_path: Path,
) -> None:
    db = str(tmp_path / "m.db")
    p1 = await enroll_into_store(db, "proplet", "p1", wall=time.time())
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "orchestrator.cli", "--log-level", "warning", "broker",
        "--listen", f"127.0.0.1:{port}", "--db", db, "--refresh", "0.2",
        cwd=str(REPO), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert "listening" in line and "(1 identities)" in line, line
        lost = asyncio.Event()
        url = BrokerUrl("mqtt", "127.0.0.1", port, "p1", p1.password)
        client = MqttClient(url, "p1", reconnect=False, on_disconnect=lost.set)
        await client.connect()
        anonymous = MqttClient(BrokerUrl("mqtt", "127.0.0.1", port), "p1", reconnect=False)
        with pytest.raises(MqttError, match="Not authorized"):
            await anonymous.connect(timeout=5)
        # p2, enrolled after the broker started, is admitted once the broker re-read the table.
        p2 = await enroll_into_store(db, "proplet", "p2", wall=time.time())
        late = MqttClient(BrokerUrl("mqtt", "127.0.0.1", port, "p2", p2.password), "p2", reconnect=False)
        for _ in range(100):
            try:
                await late.connect(timeout=5)
                break
            except MqttError:
                await asyncio.sleep(0.1)
        assert late.connected
        await late.disconnect()
        async with await Store.open(db) as store:  # what `propeller proplets revoke` does, from any process
            await store.save_identity(dataclasses.replace(p1.identity, revoked_at=time.time()))
        await asyncio.wait_for(lost.wait(), 15)  # disconnected at the next re-read
        again = MqttClient(url, "p1", reconnect=False)
        with pytest.raises(MqttError, match="Not authorized"):
            await again.connect(timeout=5)
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 15)


async def test_broker_open_admits_anyone_including_enrolled_clients(tmp_path: Path) -> None:
    c = await make_cluster("embedded://127.0.0.1:0", tmp_path, broker_open=True)
    try:
        assert not c.closed and not c.manager.settings.enrolled_only
        port = c.manager.broker.port if c.manager.broker is not None else 0
        anonymous = MqttClient(BrokerUrl("mqtt", "127.0.0.1", port), "debug-reader", reconnect=False)
        await anonymous.connect(timeout=5)
        assert await anonymous.subscribe_and_wait("#", 1) == 1  # open: no rules, for debugging only
        await anonymous.disconnect()
        doc = (await c.api.post("/proplets/enroll", json={"id": "p9"})).json()
        enrolled = MqttClient(BrokerUrl("mqtt", "127.0.0.1", port, doc["username"], doc["password"]), "p9")
        await enrolled.connect(timeout=5)  # an enrolled proplet is not locked out of an open broker
        await enrolled.disconnect()
    finally:
        await close_cluster(c)
