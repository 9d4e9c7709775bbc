"""``POST /proplets/{id}/events`` on a real manager and proplet: a console line printed while a task ran
there joins that task's timeline, in time order, even when it is reported after the attempt ended."""

from __future__ import annotations

import time

from tests.integration.conftest import Cluster, eventually
from tests.integration.test_proplet_agent import FILE


async def test_console_lines_of_the_attempt_join_the_tasks_timeline(embedded_cluster: Cluster) -> None:
    c = embedded_cluster
    await c.add_proplet("obs-a")
    created = await c.api.post("/tasks", json={"name": "spin", "file": FILE, "limits": {"timeout_s": 60}})
    task_id = created.json()["id"]
    await c.api.post(f"/tasks/{task_id}/start")

    async def running() -> bool:
        events = (await c.api.get(f"/tasks/{task_id}/events")).json()["events"]
        return any(e["kind"] == "running" for e in events)

    await eventually(running, 10, "the proplet to report the task running")
    line = {"kind": "console", "cause": "<inf> prop: spinning", "source": "uart", "fields": {"device": "b1"}}
    now = await c.api.post("/proplets/obs-a/events", json={"events": [line]})
    assert now.status_code == 201 and now.json() == {"recorded": 1, "tasks": {task_id: 1}}
    during = time.time()  # the task still runs: it is stopped below
    await c.api.post(f"/tasks/{task_id}/stop")
    await c.wait_terminal(task_id)

    # Reported late (a serial log read after the fact): it still finds the attempt it was printed in;
    # a line printed after the attempt ended joins no task.
    late = {**line, "cause": "<inf> prop: still spinning", "at": during}
    after = {**line, "cause": "<inf> prop: idle", "at": time.time() + 1}
    reply = await c.api.post("/proplets/obs-a/events", json={"events": [late, after]})
    assert reply.json() == {"recorded": 2, "tasks": {task_id: 1}}
    events = (await c.api.get(f"/tasks/{task_id}/events")).json()["events"]
    kinds = [e["kind"] for e in events]
    consoles = [e["cause"] for e in events if e["kind"] == "console"]
    assert consoles == ["<inf> prop: spinning", "<inf> prop: still spinning"], events
    assert kinds.index("running") < kinds.index("console") < kinds.index("stopped"), kinds
    first = events[kinds.index("console")]
    assert first["fields"] == {"device": "b1", "proplet_id": "obs-a", "attempt": 1, "source": "uart"}
    # Console lines stay off the proplet's own timeline; a fault goes on it.
    fault = {"kind": "fault", "cause": "brownout", "source": "bench"}
    await c.api.post("/proplets/obs-a/events", json={"events": [fault]})
    mine = (await c.api.get("/proplets/obs-a/events")).json()["events"]
    assert [e["kind"] for e in mine] == ["joined", "fault"], mine


async def test_a_bad_report_is_refused_with_the_field_named(embedded_cluster: Cluster) -> None:
    c = embedded_cluster
    await c.add_proplet("obs-b")
    bad = await c.api.post("/proplets/obs-b/events", json={"events": [{"kind": "died", "cause": "x"}]})
    assert bad.status_code == 400
    assert bad.json()["error"] == "events[0].kind must be one of fault, console, note, got 'died'"
    unknown = await c.api.post("/proplets/nobody/events", json={"events": [{"kind": "note"}]})
    assert unknown.status_code == 404
    missing = await c.api.post(
        "/tasks/00000000-0000-4000-8000-000000000000/events", json={"events": [{"kind": "note"}]}
    )
    assert missing.status_code == 404
