"""Finished tasks leave the engine's memory; the API still serves, restarts and deletes them (store)."""

from __future__ import annotations

from pathlib import Path

from tests.integration.conftest import ADD_B64, close_cluster, make_cluster

ADD = ADD_B64


async def test_a_task_settled_out_of_memory_is_read_restarted_and_deleted_through_the_store(
    tmp_path: Path,
) -> None:
    c = await make_cluster("embedded://127.0.0.1:0", tmp_path, terminal_cache=0)
    try:
        await c.add_proplet("p1")
        first = await c.run_task({"name": "add", "file": ADD, "inputs": [2, 40]})
        second = await c.run_task({"name": "add", "file": ADD, "inputs": [1, 1]})
        assert c.manager.engine.find_task(first["id"]) is None  # settled: only the store has it
        got = (await c.api.get(f"/tasks/{first['id']}")).json()
        assert got["state"] == 3 and got["results"] == "42"
        body = (await c.api.get(f"/tasks/{first['id']}/results")).json()
        assert body["results"] == "42" and body.get("result_type") == "json"  # our proplet types its result
        listed = (await c.api.get("/tasks")).json()
        assert {t["id"] for t in listed["tasks"]} >= {first["id"], second["id"]}
        clash = await c.api.post("/tasks", json={"id": first["id"], "name": "again", "file": ADD})
        assert clash.status_code == 409
        assert (await c.api.post(f"/tasks/{first['id']}/start")).status_code == 200  # runs again
        again = await c.wait_terminal(first["id"])
        assert again["state"] == 3 and again["results"] == "42"
        assert (await c.api.delete(f"/tasks/{second['id']}")).status_code == 204
        assert (await c.api.get(f"/tasks/{second['id']}")).status_code == 404
    finally:
        await close_cluster(c)


async def test_a_restart_loads_only_live_tasks_and_serves_finished_ones_from_the_store(
    tmp_path: Path,
) -> None:
    c = await make_cluster("embedded://127.0.0.1:0", tmp_path)
    domain = c.manager.settings.domain
    try:
        await c.add_proplet("p1")
        finished = await c.run_task({"name": "add", "file": ADD, "inputs": [2, 40]})
        waiting = (await c.api.post("/tasks", json={"name": "add", "file": ADD, "inputs": [3, 4]})).json()
    finally:
        await close_cluster(c)
    c = await make_cluster("embedded://127.0.0.1:0", tmp_path, domain=domain)
    try:
        assert c.manager.engine.find_task(finished["id"]) is None  # never loaded: history stays stored
        assert c.manager.engine.find_task(waiting["id"]) is not None
        got = (await c.api.get(f"/tasks/{finished['id']}")).json()
        assert got["state"] == 3 and got["results"] == "42"
        listed = (await c.api.get("/tasks")).json()
        assert {t["id"] for t in listed["tasks"]} == {finished["id"], waiting["id"]}
        await c.add_proplet("p2")  # p1 stays enrolled (the store keeps identities)
        assert (await c.api.post(f"/tasks/{waiting['id']}/start")).status_code == 200
        assert (await c.wait_terminal(waiting["id"]))["results"] == "7"
    finally:
        await close_cluster(c)
