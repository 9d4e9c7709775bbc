"""The manager's API beyond single tasks: jobs, workflows, latent invoke, cron, auth, history, metrics."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import wasmtime

from orchestrator import wire
from tests.integration.conftest import Cluster, close_cluster, eventually, make_cluster

MODULE = base64.b64encode(
    wasmtime.wat2wasm("""
(module
  (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add)
  (func (export "double") (param i32) (result i32) local.get 0 i32.const 2 i32.mul)
  (func (export "boom") (result i32) unreachable))
""")
).decode()


def spec(task_id: str, name: str = "add", *deps: str, **extra: object) -> dict[str, object]:
    return {"id": task_id, "name": name, "file": MODULE, "inputs": [1, 2], "depends_on": list(deps), **extra}


async def test_sequential_job_runs_in_order_and_reports_its_state(embedded_cluster: Cluster) -> None:
    c = embedded_cluster
    await c.add_proplet("p1")
    ids = [f"00000000-0000-4000-8000-00000000000{i}" for i in range(1, 4)]
    created = await c.api.post(
        "/jobs", json={"name": "pipeline", "execution_mode": "sequential", "tasks": [spec(i) for i in ids]}
    )
    assert created.status_code == 201, created.text
    job_id = created.json()["job_id"]
    assert created.headers["location"] == f"/jobs/{job_id}"
    assert (await c.api.post(f"/jobs/{job_id}/start")).json() == {"message": "job started", "job_id": job_id}
    finished = [await c.wait_terminal(i) for i in ids]
    assert [t["state"] for t in finished] == [3, 3, 3]
    starts = [t["start_time"] for t in finished]
    assert starts == sorted(starts)
    job = (await c.api.get(f"/jobs/{job_id}")).json()
    assert job["state"] == "completed" and len(job["tasks"]) == 3
    listed = (await c.api.get("/jobs?status=completed")).json()
    assert [j["job_id"] for j in listed["jobs"]] == [job_id]


async def test_failing_job_fails_fast_and_bad_jobs_are_400(embedded_cluster: Cluster) -> None:
    c = embedded_cluster
    await c.add_proplet("p1")
    a, b = "00000000-0000-4000-8000-0000000000a1", "00000000-0000-4000-8000-0000000000a2"
    job_id = (
        await c.api.post(
            "/jobs", json={"name": "ff", "execution_mode": "sequential", "tasks": [spec(a, "boom"), spec(b)]}
        )
    ).json()["job_id"]
    await c.api.post(f"/jobs/{job_id}/start")
    assert (await c.wait_terminal(a))["state"] == 4
    skipped = await c.wait_terminal(b)
    assert skipped["state"] == 5 and "failed fast" in skipped["error"]
    cyclic = await c.api.post(
        "/jobs", json={"name": "x", "tasks": [spec("c1", "add", "c2"), spec("c2", "add", "c1")]}
    )
    assert cyclic.status_code == 400 and "circular" in cyclic.json()["error"]
    mode = await c.api.post("/jobs", json={"name": "x", "execution_mode": "soon", "tasks": [spec("m1")]})
    assert mode.status_code == 400 and "execution_mode" in mode.json()["error"]


async def test_workflow_starts_dependents_and_skips_by_run_if(embedded_cluster: Cluster) -> None:
    c = embedded_cluster
    await c.add_proplet("p1")
    root, ok, on_fail = (f"00000000-0000-4000-8000-0000000000b{i}" for i in range(1, 4))
    created = await c.api.post(
        "/workflows",
        json={
            "tasks": [
                spec(root),
                spec(ok, "double", root, inputs=[21]),
                spec(on_fail, "add", root, run_if="failure"),
            ]
        },
    )
    assert created.status_code == 201, created.text
    await c.api.post(f"/tasks/{root}/start")
    doubled = await c.wait_terminal(ok)
    assert doubled["state"] == 3 and doubled["results"] == "42"
    assert (await c.wait_terminal(on_fail))["state"] == 5


async def test_latent_task_is_invoked_through_the_api(embedded_cluster: Cluster) -> None:
    c = embedded_cluster
    await c.add_proplet("p1")
    task = (await c.api.post("/tasks", json={"name": "add", "file": MODULE, "latent": True})).json()
    await c.api.post(f"/tasks/{task['id']}/start")
    answer = await c.api.post(f"/tasks/{task['id']}/invoke", json={"inputs": [20, 22]})
    assert answer.status_code == 200, answer.text
    # p1 is enrolled (the broker is closed): it signs, and the manager checks against its enrolled key.
    assert answer.json() == {"invoked": True, "results": "42", "verified": True}
    plain = (await c.api.post("/tasks", json={"name": "add", "file": MODULE})).json()
    refused = await c.api.post(f"/tasks/{plain['id']}/invoke", json={})
    assert refused.status_code == 400 and "not a latent task" in refused.json()["error"]


async def test_cron_task_shows_next_run_and_bad_expressions_are_400(embedded_cluster: Cluster) -> None:
    c = embedded_cluster
    created = await c.api.post(
        "/tasks", json={"name": "add", "file": MODULE, "schedule": "*/5 * * * *", "timezone": "Europe/Paris"}
    )
    assert created.status_code == 201
    next_run = created.json()["next_run"]
    assert next_run != "0001-01-01T00:00:00Z" and next_run.endswith("Z")
    bad = await c.api.post("/tasks", json={"name": "add", "schedule": "every day"})
    assert bad.status_code == 400 and "schedule" in bad.json()["error"]


async def test_alive_history_and_proplet_metrics_are_served(embedded_cluster: Cluster) -> None:
    c = embedded_cluster
    await c.add_proplet("p1")
    await eventually(lambda: _history_at_least(c, "p1", 3), 10, "three heartbeats in the alive history")
    sender = c.peer("metrics-sender")
    await sender.connect()
    metrics = wire.PropletMetrics(
        "p1",
        "default",
        time.time(),
        "unix",
        {"user_seconds": 1.0, "system_seconds": 0.5, "percent": 3.0},
        {"rss_bytes": 1234},
    )
    sender.publish(c.manager.engine.topics.metrics, wire.encode(metrics), 1)

    async def stored() -> bool:
        body = (await c.api.get("/proplets/p1/metrics")).json()
        return body["total"] >= 1 and body["metrics"][0]["memory_metrics"]["rss_bytes"] == 1234

    await eventually(stored, 10, "proplet metrics stored")
    await sender.disconnect()


async def _history_at_least(c: Cluster, proplet_id: str, n: int) -> bool:
    body = (await c.api.get(f"/proplets/{proplet_id}/alive-history")).json()
    return int(body["total"]) >= n


async def test_bearer_token_guards_the_api_but_not_health_and_docs(tmp_path: Path) -> None:
    c = await make_cluster("embedded://127.0.0.1:0", tmp_path, api_token="s3cret")
    try:
        assert (await c.api.get("/tasks")).status_code == 200
        anonymous = await c.api.get("/tasks", headers={"Authorization": ""})
        assert anonymous.status_code == 401 and "bearer" in anonymous.json()["error"]
        assert (await c.api.get("/health", headers={"Authorization": ""})).json()["status"] == "pass"
        spec_doc = await c.api.get("/openapi.json", headers={"Authorization": ""})
        assert "/tasks/{task_id}/start" in json.loads(spec_doc.text)["paths"]
    finally:
        await close_cluster(c)


async def test_update_and_upload_change_a_task_before_it_runs(embedded_cluster: Cluster) -> None:
    c = embedded_cluster
    await c.add_proplet("p1")
    task = (await c.api.post("/tasks", json={"name": "add", "inputs": [1, 1]})).json()
    wasm = base64.b64decode(MODULE)
    bad = await c.api.put(f"/tasks/{task['id']}/upload", files={"file": ("m.txt", wasm)})
    assert bad.status_code == 400 and ".wasm" in bad.json()["error"]
    junk = await c.api.put(f"/tasks/{task['id']}/upload", files={"file": ("m.wasm", b"hello")})
    assert junk.status_code == 400 and "not a wasm module" in junk.json()["error"]
    uploaded = await c.api.put(f"/tasks/{task['id']}/upload", files={"file": ("m.wasm", wasm)})
    assert uploaded.status_code == 200 and uploaded.json()["file"]
    updated = await c.api.put(f"/tasks/{task['id']}", json={"inputs": [40, 2], "priority": 90})
    assert updated.status_code == 200 and updated.json()["inputs"] == ["40", "2"]
    refused = await c.api.put(f"/tasks/{task['id']}", json={"proplet_id": "elsewhere"})
    assert refused.status_code == 400 and "cannot be updated" in refused.json()["error"]
    await c.api.post(f"/tasks/{task['id']}/start")
    done = await c.wait_terminal(task["id"])
    assert done["results"] == "42"
