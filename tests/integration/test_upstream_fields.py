"""Upstream task fields kept end to end, workflow parents' results, wrong exports, encrypted refusal."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import wasmtime

from orchestrator import wire
from tests.integration.conftest import Cluster

WASM = Path(__file__).resolve().parents[1] / "wasm"
ADD = base64.b64encode(
    wasmtime.wat2wasm(
        '(module (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add)'
        ' (func (export "main") (result i32) i32.const 99))'
    )
).decode()
ENV_PRINTER = base64.b64encode(wasmtime.wat2wasm((WASM / "wasi_cmd.wat").read_text())).decode()
PROFILE = {"enabled": True, "interval": 7, "collect_cpu": True, "export_to_mqtt": True, "history_size": 3}


async def test_workflow_child_sees_its_parents_results(embedded_cluster: Cluster) -> None:
    c = embedded_cluster
    await c.add_proplet("p1")
    root, child = "00000000-0000-4000-8000-0000000000c1", "00000000-0000-4000-8000-0000000000c2"
    created = await c.api.post(
        "/workflows",
        json={
            "tasks": [
                {"id": root, "name": "add", "file": ADD, "inputs": [40, 2]},
                # a WASI command that prints its environment
                {"id": child, "name": "show-env", "file": ENV_PRINTER, "depends_on": [root]},
            ]
        },
    )
    assert created.status_code == 201, created.text
    assert (await c.api.post(f"/tasks/{root}/start")).status_code == 200
    done = await c.wait_terminal(child, timeout=30)
    assert done["state"] == 3, done
    line = next(x for x in done["results"].splitlines() if x.startswith("PARENT_RESULTS="))
    # upstream's value: the parent's results text, not a re-typed 42; the type comes beside it
    assert json.loads(line.split("=", 1)[1]) == {root: "42"}
    types = next(x for x in done["results"].splitlines() if x.startswith("PARENT_RESULT_TYPES="))
    assert json.loads(types.split("=", 1)[1]) == {root: "json"}
    parent = (await c.api.get(f"/tasks/{root}/results", params={"format": "json"})).json()
    assert (parent["results"], parent["result_type"]) == (42, "json")


async def test_a_wrong_export_name_fails_the_task_naming_it(embedded_cluster: Cluster) -> None:
    c = embedded_cluster
    await c.add_proplet("p1")
    task = await c.run_task({"name": "ad", "file": ADD, "inputs": [1, 2]})
    assert task["state"] == 4
    assert "export 'ad' not found" in task["error"] and "add" in task["error"] and "main" in task["error"]


async def test_upstream_fields_reach_the_proplet_and_are_kept(embedded_cluster: Cluster) -> None:
    c = embedded_cluster
    await c.add_proplet("p1")
    seen: list[wire.StartTask] = []
    topics = wire.Topics(c.manager.settings.domain, c.manager.settings.channel)

    def on_message(topic: str, payload: bytes) -> None:
        msg = wire.decode(topics, topic, payload)
        if isinstance(msg, wire.StartTask):
            seen.append(msg)

    spy = c.peer("upstream-fields-spy", on_message=on_message)  # trusted like the manager: reads starts
    await spy.connect()
    await spy.subscribe_and_wait(topics.every_start, 1)
    try:
        spec = {
            "name": "add",
            "file": ADD,
            "inputs": [1, 2],
            "monitoring_profile": PROFILE,
            "kbs_resource_path": "default/key/1",
            "hal_storage_path": "shared/models",
        }
        task = await c.run_task(spec)
        assert task["state"] == 3 and task["results"] == "3"
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.05)
        (start,) = seen
        assert start.kbs_resource_path == "default/key/1" and start.hal_storage_path == "shared/models"
        assert start.monitoring_profile is not None
        assert (
            start.monitoring_profile["interval"] == 7 and start.monitoring_profile["collect_disk_io"] is False
        )
        # kept in the store, shown by the API
        again = (await c.api.get(f"/tasks/{task['id']}")).json()
        assert again["kbs_resource_path"] == "default/key/1" and again["hal_storage_path"] == "shared/models"
        assert again["monitoring_profile"]["history_size"] == 3
    finally:
        await spy.disconnect()


async def test_bad_upstream_fields_are_400_naming_the_field(embedded_cluster: Cluster) -> None:
    c = embedded_cluster
    bad = [
        ({"monitoring_profile": {"interval": "10s"}}, "monitoring_profile.interval"),
        ({"monitoring_profile": {"colect_cpu": True}}, "monitoring_profile.colect_cpu"),
        ({"hal_storage_path": "../../etc"}, "hal_storage_path"),
        ({"encrypted": True}, "file"),
    ]
    for extra, where in bad:
        r = await c.api.post("/tasks", json={"name": "add", "file": ADD, **extra})
        assert r.status_code == 400 and where in r.text, (extra, r.text)


async def test_encrypted_task_is_refused_without_a_key_broker(embedded_cluster: Cluster) -> None:
    c = embedded_cluster
    await c.add_proplet("p1")
    task = await c.run_task({"name": "app", "encrypted": True, "image_url": "registry.example/app:enc"})
    assert task["state"] == 4 and "need a key broker" in task["error"], task
