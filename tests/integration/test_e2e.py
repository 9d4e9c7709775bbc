"""End to end through the REST API: manager + real broker (embedded amqtt and Mosquitto) + Python proplets
running real Wasm with wasmtime."""

from __future__ import annotations

import base64
import uuid

import wasmtime

from tests.integration.conftest import Cluster, _async, eventually

ADD = base64.b64encode(
    wasmtime.wat2wasm("""
(module
  (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add)
  (func (export "spin") (loop br 0))
  (func (export "boom") (result i32) i32.const 1 i32.const 0 i32.div_s))
""")
).decode()


async def test_wasm_task_runs_through_the_api_and_reports_where(cluster: Cluster) -> None:
    await cluster.add_proplet("p1")
    await cluster.add_proplet("p2")
    task = await cluster.run_task({"name": "add", "file": ADD, "inputs": [2, 40]})
    assert task["state"] == 3 and task["results"] == "42"
    assert task["proplet_id"] in ("p1", "p2")
    results = await cluster.api.get(f"/tasks/{task['id']}/results")
    # upstream's {"results"}, plus our proplet's result_type (absent for upstream proplets' results)
    assert results.json() == {"results": "42", "result_type": "json"}
    proplet = (await cluster.api.get(f"/proplets/{task['proplet_id']}")).json()
    assert proplet["alive"] and proplet["metadata"]["wasm_runtime"] == "wasmtime-python"


async def test_failures_come_back_as_failed_tasks_with_the_reason(cluster: Cluster) -> None:
    await cluster.add_proplet("p1")
    trap = await cluster.run_task({"name": "boom", "file": ADD})
    assert trap["state"] == 4 and "divide by zero" in trap["error"]
    missing = await cluster.run_task({"name": "nope", "file": ADD, "inputs": [1]})
    assert missing["state"] == 4 and missing["error"]
    spin = await cluster.run_task({"name": "spin", "file": ADD, "limits": {"timeout_s": 0.5}})
    assert spin["state"] == 4 and "limit" in spin["error"]


async def test_proplet_killed_without_disconnect_is_dead_by_its_last_will(cluster: Cluster) -> None:
    agent = await cluster.add_proplet("p1")
    agent.mqtt.abort()  # the socket closes with no DISCONNECT: the broker publishes the will
    await eventually(lambda: cluster.alive("p1", expected=False), 5, "p1 dead by LWT")


async def test_malformed_payloads_on_every_control_topic_are_counted_and_dropped(cluster: Cluster) -> None:
    await cluster.add_proplet("p1")
    topics = cluster.manager.engine.topics
    rogue = cluster.peer(f"rogue-{uuid.uuid4().hex[:6]}")
    await rogue.connect()
    garbage = [b"", b"\xff\xfe", b"[]", b'{"proplet_id": 5}', b'{"task_id": null}', b"{" * 5000]
    for topic in (
        topics.create,
        topics.alive,
        topics.results,
        topics.metrics,
        topics.task_metrics,
        topics.invoke_results,
    ):
        for payload in garbage:
            rogue.publish(topic, payload, 1)
    await eventually(
        lambda: _async(sum(cluster.manager.engine.malformed.values()) >= 6 * len(garbage) - 6),
        10,
        "malformed messages counted",
    )
    await rogue.disconnect()
    metrics = (await cluster.api.get("/metrics")).text
    assert 'propeller_messages_malformed_total{topic="control/proplet/results"}' in metrics
    task = await cluster.run_task({"name": "add", "file": ADD, "inputs": [1, 2]})
    assert task["results"] == "3"


async def test_api_errors_are_json_and_name_the_problem(cluster: Cluster) -> None:
    api = cluster.api
    bad = await api.post("/tasks", json={"name": "x", "priority": 500})
    assert bad.status_code == 400 and "priority" in bad.json()["error"]
    assert (
        await api.post("/tasks", content=b"{", headers={"content-type": "application/json"})
    ).status_code == 400
    assert (await api.get("/tasks/not-a-uuid")).status_code == 400
    assert (await api.get(f"/tasks/{uuid.uuid4()}")).status_code == 404
    created = (await api.post("/tasks", json={"name": "add", "file": ADD, "proplet_id": "ghost"})).json()
    missing = await api.post(f"/tasks/{created['id']}/start")
    assert missing.status_code == 404 and "ghost" in missing.json()["error"]
    assert (await api.get("/tasks?limit=1000")).status_code == 400
