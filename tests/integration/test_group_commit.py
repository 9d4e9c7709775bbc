"""Group commit in the manager, on SQLite and PostgreSQL: API calls and messages of one flush window share
one transaction; a row the store refuses leaves nothing behind in memory and costs nobody else's work;
``GET /tasks`` reads pages from the store and ``GET /tasks/{id}`` falls back to it.

Input here goes to the service directly (not through the API's validation), so the store and the
service are tested as the last line of defence."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.adapters.store import Store
from orchestrator.core.model import Task, TaskState
from orchestrator.service import StoreRefused
from tests.conftest import free_port
from tests.fixtures.store import PgSchema
from tests.integration.conftest import ADD_B64, Cluster, close_cluster, eventually, make_cluster

ADD = ADD_B64


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"x": value}
    return value


GHOSTS = {
    "lone surrogate": {"name": "ghost \ud800"},
    "NUL": {"name": "ghost\x00"},
    "deep metadata": {"name": "deep", "metadata": nested(900)},
}


def add(i: int, **extra: Any) -> dict[str, Any]:
    return {"name": "add", "file": ADD, "inputs": [i, 1], **extra}


@pytest.fixture(autouse=True)
def without_input_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The storability checks of core/validation.py (docs/api.md) refuse these inputs before the
    engine holds them; they are switched off here, so that the store and the service are tested as
    the last line of defence."""
    from orchestrator.core import groups, validation

    monkeypatch.setattr(validation, "check_value", lambda *args, **kwargs: None)
    monkeypatch.setattr(groups, "check_text", lambda value, *args, **kwargs: value)


@pytest.fixture(params=["sqlite", pytest.param("pg", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The manager's --db on each backend (PostgreSQL: a schema of the test's own, via search_path)."""
    if request.param == "sqlite":
        return str(tmp_path / "m.db")
    schema: PgSchema = request.getfixturevalue("pg_schema")
    schema.execute(f'CREATE SCHEMA "{schema.name}"')
    return f"{schema.url}?options=-csearch_path%3D{schema.name}"


@pytest.fixture
async def manager(db_url: str, tmp_path: Path) -> AsyncIterator[Cluster]:
    c = await make_cluster("embedded://127.0.0.1:0", tmp_path, db=db_url)
    try:
        yield c
    finally:
        await close_cluster(c)


async def stored(c: Cluster, task_id: str) -> Task | None:
    assert c.manager.store is not None
    return await c.manager.store.get_task(task_id)


@pytest.mark.parametrize("ghost", sorted(GHOSTS))
async def test_unstorable_task_is_refused_and_its_batch_still_runs(manager: Cluster, ghost: str) -> None:
    c = manager
    await c.add_proplet("p1")
    # One window: good tasks before and after the unstorable one, all started at once.
    results = await c.manager.create_tasks([add(1), {**add(2), **GHOSTS[ghost]}, add(3)], start=True)
    first, refused, third = results
    assert isinstance(refused, StoreRefused) and refused.status == 422
    assert "cannot be stored" in refused.message
    assert isinstance(first, Task) and isinstance(third, Task)
    # Nothing of the refused task stays behind: not in the engine, not in the store, not in the list.
    assert len(c.manager.engine.tasks) == 2
    listed = (await c.api.get("/tasks")).json()
    assert listed["total"] == 2 and {t["id"] for t in listed["tasks"]} == {first.id, third.id}
    # The tasks around it were stored, published, run and completed.
    for task in (first, third):
        done = await c.wait_terminal(task.id)
        assert done["state"] == int(TaskState.COMPLETED) and done["results"] in ("2", "4")
        await c.manager.flush()  # GET answers from memory, which may be one window ahead
        row = await stored(c, task.id)
        assert row is not None and row.state is TaskState.COMPLETED
    assert c.manager.engine.proplets["p1"].task_count == 0


async def test_a_refused_create_call_raises_and_concurrent_calls_are_durable(manager: Cluster) -> None:
    c = manager
    calls = [c.manager.create_task(add(i)) for i in range(20)]
    calls.insert(7, c.manager.create_task({**add(99), "name": "x\x00y"}))
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    refused = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(refused) == 1 and isinstance(refused[0], StoreRefused)
    created = [o for o in outcomes if isinstance(o, Task)]
    assert len(created) == 20
    for task in created:  # each call returned only after its task was durable
        assert (await stored(c, task.id)) is not None
    assert set(c.manager.engine.tasks) == {t.id for t in created}


async def test_an_update_the_store_refuses_is_reverted(manager: Cluster) -> None:
    c = manager
    task = await c.manager.create_task(add(1))
    with pytest.raises(StoreRefused):
        await c.manager.update_task(task.id, {"metadata": nested(900)})
    assert c.manager.engine.get_task(task.id).metadata == {}
    assert (await c.api.get(f"/tasks/{task.id}")).status_code == 200
    await c.add_proplet("p1")
    await c.manager.start_task(task.id)
    assert (await c.wait_terminal(task.id))["state"] == int(TaskState.COMPLETED)


async def test_start_true_and_batch_create_and_run_in_one_request(manager: Cluster) -> None:
    c = manager
    await c.add_proplet("p1")
    one = await c.api.post("/tasks", json={**add(5), "start": True})
    assert one.status_code == 201, one.text
    assert (await c.wait_terminal(one.json()["id"]))["results"] == "6"
    nomodule = await c.api.post("/tasks", json={"name": "empty", "start": True})
    assert nomodule.status_code == 400 and "module" in nomodule.json()["error"]
    assert (await c.api.get("/tasks")).json()["total"] == 1  # the refused start left no task behind

    body = {"start": True, "tasks": [add(i) for i in range(10)]}
    body["tasks"][3] = {"name": "bad", "file": ADD, "bogus": 1}
    body["tasks"][6] = {**add(6), "start": False}
    batch = await c.api.post("/tasks/batch", json=body)
    assert batch.status_code == 207, batch.text
    out = batch.json()
    assert out["created"] == 9 and out["failed"] == 1
    bad = out["results"][3]
    assert bad["status"] == 400 and bad["field"] == "bogus" and "bogus" in bad["error"]
    ids = {r["index"]: r["task"]["id"] for r in out["results"] if "task" in r}
    for i, task_id in ids.items():
        if i == 6:
            assert (await c.api.get(f"/tasks/{task_id}")).json()["state"] == int(TaskState.PENDING)
        else:
            assert (await c.wait_terminal(task_id))["results"] == str(i + 1)
    # One request, one flush window for all its tasks (group commit), counted where /metrics shows it.
    windows = c.manager.engine.counters["flush_windows"]
    created = await c.api.post("/tasks/batch", json={"tasks": [add(i) for i in range(8)]})
    assert created.status_code == 201 and created.json()["created"] == 8
    assert 1 <= c.manager.engine.counters["flush_windows"] - windows < 8  # (a heartbeat may add one)
    assert 'propeller_engine_events_total{event="flush_windows"}' in (await c.api.get("/metrics")).text
    none = await c.api.post("/tasks/batch", json={"tasks": [{"bogus": 1}]})
    assert none.status_code == 400 and none.json()["failed"] == 1
    empty = await c.api.post("/tasks/batch", json={"tasks": []})
    assert empty.status_code == 400 and "tasks" in empty.json()["error"]


async def test_listing_filters_and_reading_a_task_the_engine_no_longer_holds(manager: Cluster) -> None:
    c = manager
    await c.add_proplet("p1")
    batch = await c.api.post("/tasks/batch", json={"start": True, "tasks": [add(i) for i in range(5)]})
    ids = [r["task"]["id"] for r in batch.json()["results"]]
    later = [add(i, metadata={"team": "x"}, name="later") for i in range(5, 8)]
    await c.api.post("/tasks/batch", json={"tasks": later})
    for task_id in ids:
        await c.wait_terminal(task_id)
    await c.manager.flush()  # GET /tasks/{id} answers from memory, which may be one window ahead
    completed = (await c.api.get("/tasks", params={"state": "completed", "limit": 2, "offset": 1})).json()
    assert completed["total"] == 5 and [t["id"] for t in completed["tasks"]] == ids[1:3]
    assert (await c.api.get("/tasks", params={"state": "3"})).json()["total"] == 5
    assert (await c.api.get("/tasks", params={"state": "pending"})).json()["total"] == 3
    assert (await c.api.get("/tasks", params={"proplet_id": "p1"})).json()["total"] == 5
    assert (await c.api.get("/tasks", params={"name": "later"})).json()["total"] == 3
    team = (await c.api.get("/tasks", params={"metadata": '{"team": "x"}'})).json()
    assert team["total"] == 3
    bad = await c.api.get("/tasks", params={"state": "sleepy"})
    assert bad.status_code == 400 and "state" in bad.json()["error"]
    # A terminal task evicted from the engine's memory (as the engine may do) is read from the store.
    c.manager.engine.tasks.discard(ids[0])
    again = await c.api.get(f"/tasks/{ids[0]}")
    assert again.status_code == 200 and again.json()["results"] == "1"
    assert (await c.api.get(f"/tasks/{ids[0]}/results")).json()[
        "results"
    ] == "1"  # + result_type (task-output)
    assert (await c.api.get(f"/tasks/{uuid.uuid4()}")).status_code == 404
    # ...and it can be started again, updated and deleted as if it had stayed.
    c.manager.engine.tasks.discard(ids[1])
    assert (await c.api.post(f"/tasks/{ids[1]}/start")).status_code == 200
    assert (await c.wait_terminal(ids[1]))["state"] == int(TaskState.COMPLETED)
    c.manager.engine.tasks.discard(ids[2])
    assert (await c.api.put(f"/tasks/{ids[2]}", json={"priority": 7})).json()["priority"] == 7
    c.manager.engine.tasks.discard(ids[2])
    assert (await c.api.delete(f"/tasks/{ids[2]}")).status_code == 204
    assert (await c.api.get(f"/tasks/{ids[2]}")).status_code == 404


# ---------------------------------------------------------------------- kill -9 under group commit


async def test_every_acknowledged_task_survives_kill_9(db_url: str, tmp_path: Path) -> None:
    """Many clients create tasks at once (so windows hold several); the manager is SIGKILLed mid-stream;
    every task whose create returned 201 is in the store."""
    api_port = free_port()
    log = tmp_path / "manager.log"
    args = [
        sys.executable, "-m", "orchestrator.cli", "manager", "--broker", "embedded://127.0.0.1:0",
        "--db", db_url, "--api", f"127.0.0.1:{api_port}", "--domain", f"d-{uuid.uuid4().hex[:8]}",
    ]  # fmt: skip
    with log.open("ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env={**os.environ})
    acked: list[str] = []
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=10) as api:

            async def healthy() -> bool:
                assert proc.poll() is None, log.read_text()[-2000:]
                try:
                    return (await api.get("/health")).status_code == 200
                except httpx.HTTPError:
                    return False

            await eventually(healthy, 30, "the manager to serve /health")

            async def client(k: int) -> None:
                for i in range(10_000):
                    try:
                        if i % 5 == 0:
                            r = await api.post("/tasks/batch", json={"tasks": [add(i), add(i + 1)]})
                            if r.status_code == 201:
                                acked.extend(x["task"]["id"] for x in r.json()["results"])
                        else:
                            r = await api.post("/tasks", json=add(k * 10_000 + i))
                            if r.status_code == 201:
                                acked.append(r.json()["id"])
                    except httpx.HTTPError:
                        return

            clients = [asyncio.create_task(client(k)) for k in range(8)]
            await eventually(lambda: _at_least(acked, 150), 60, "150 acknowledged tasks")
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            await asyncio.gather(*clients)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if db_url.startswith("postgresql"):
        url, _, options = db_url.partition("?options=-csearch_path%3D")
        store = await Store.open(url, schema=options)
    else:
        store = await Store.open(db_url)
    async with store:
        kept = {t.id for t in await store.load_tasks()}
    lost = [t for t in acked if t not in kept]
    assert not lost, f"{len(lost)} of {len(acked)} acknowledged tasks lost"


async def _at_least(items: list[str], n: int) -> bool:
    return len(items) >= n


async def test_a_locked_database_gives_503_and_the_window_is_written_when_it_frees(
    tmp_path: Path,
) -> None:
    """SQLite held by another writer past the busy timeout: the call is told 503 (not confirmed)
    and nothing is stored; once the lock is gone the same window is written, then published.

    Heartbeats are slow here so that the proplet's list of running tasks (which cannot hold a start
    that was never published) does not requeue the task while the database is away."""
    import sqlite3

    from orchestrator.service import StoreUnavailable

    c = await make_cluster("embedded://127.0.0.1:0", tmp_path, heartbeat_interval=10.0)
    try:
        await c.add_proplet("p1")
        locker = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(StoreUnavailable):
                await c.manager.create_task({**add(1), "metadata": {"k": "v"}}, start=True)
            (task_id,) = list(c.manager.engine.tasks)
            assert c.manager.store is not None
            assert await c.manager.store.get_task(task_id) is None  # (reads still work: WAL)
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        done = await c.wait_terminal(task_id, timeout=30)  # retried, stored, published, run
        assert done["state"] == int(TaskState.COMPLETED) and done["results"] == "2"
    finally:
        await close_cluster(c)


async def test_a_proplet_the_store_cannot_hold_gets_no_work(
    db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A proplet id with a NUL (the wire accepts it) is not kept, and no task is lost to it, even when
    it announces itself again in the window where the tasks are dispatched."""
    import json as _json

    # An open broker, so no enrolled-only check in front: this is the engine's and store's own defence,
    # for what a broker that cannot read payloads (e.g. Mosquitto) lets through.
    c = await make_cluster("embedded://127.0.0.1:0", tmp_path, db=db_url, broker_open=True)
    try:
        await c.add_proplet("p1")
        topics = c.manager.engine.topics
        rogue = c.peer(f"rogue-{uuid.uuid4().hex[:6]}")
        await rogue.connect()
        try:
            discovery = {"proplet_id": "bad\x00id", "namespace": "", "metadata": {}}
            rogue.publish(topics.create, _json.dumps(discovery).encode(), 1)
            alive = _json.dumps({"proplet_id": "bad\x00id", "status": "alive"}).encode()

            async def refused() -> bool:
                return "store_refused_proplet" in caplog.text

            await eventually(refused, 10, "the store to refuse the rogue proplet")
            rogue.publish(topics.alive, alive, 1)
            batch = await c.manager.create_tasks([add(i) for i in range(6)], start=True)
            for task in batch:
                assert isinstance(task, Task)
                done = await c.wait_terminal(task.id)
                assert done["state"] == int(TaskState.COMPLETED) and done["proplet_id"] == "p1"
        finally:
            await rogue.disconnect()
        listed = (await c.api.get("/proplets")).json()
        assert [p["id"] for p in listed["proplets"]] == ["p1"]
    finally:
        await close_cluster(c)


async def test_a_job_the_store_refuses_leaves_nothing_behind(manager: Cluster) -> None:
    c = manager
    with pytest.raises(StoreRefused, match=r"job .* cannot be stored"):
        await c.manager.create_job("job\x00name", [add(1), add(2)], "parallel")
    assert not c.manager.engine.jobs and not c.manager.engine.tasks
    assert c.manager.store is not None
    assert await c.manager.store.load_tasks() == [] and await c.manager.store.load_jobs() == []
    job, tasks = await c.manager.create_job("fine", [add(1)], "parallel")  # the next one is unaffected
    assert [j.id for j in await c.manager.store.load_jobs()] == [job.id] and len(tasks) == 1


async def test_a_workflow_with_an_unstorable_task_is_refused_whole(manager: Cluster) -> None:
    c = manager
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    specs = [add(1, id=a), add(2, id=b, depends_on=[a], metadata=nested(900))]
    with pytest.raises(StoreRefused, match="workflow cannot be stored"):
        await c.manager.create_workflow(specs)
    assert not c.manager.engine.tasks
    assert c.manager.store is not None and await c.manager.store.load_tasks() == []
