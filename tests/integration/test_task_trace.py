"""A proplet process is killed mid-task: ``propeller task trace ID`` tells what happened, in order."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.core.model import TaskState
from tests.integration.conftest import WORK
from tests.support.procs import Manager, PrivateMosquitto, Proc, Proplet, wait_for

HB = "0.5"  # heartbeat interval of every process here: liveness timeout 1.5 s


@pytest.fixture
def procs() -> Any:
    started: list[Proc] = []
    yield started
    for p in reversed(started):
        p.stop()


def test_trace_explains_a_task_moved_by_a_proplet_death(tmp_path: Path, procs: list[Proc]) -> None:
    domain = f"trace-{uuid.uuid4().hex[:8]}"
    broker = PrivateMosquitto(tmp_path)
    procs.append(broker)
    broker.start()
    manager = Manager(tmp_path, broker.url, domain, "--heartbeat-interval", HB)
    procs.append(manager)
    manager.start()
    proplets = {
        pid: Proplet(tmp_path, broker.url, domain, pid, "--heartbeat-interval", HB)
        for pid in ("tr-a", "tr-b")
    }
    for p in proplets.values():
        procs.append(p)
        p.start()
    api = httpx.Client(base_url=manager.url, timeout=10)
    wait_for(lambda: len(api.get("/proplets").json()["proplets"]) == 2, 30, "both proplets")
    task = api.post("/tasks", json={"name": "work", "file": WORK, "inputs": [1_500_000_000]}).json()
    api.post(f"/tasks/{task['id']}/start").raise_for_status()
    wait_for(lambda: api.get(f"/tasks/{task['id']}").json()["state"] == TaskState.RUNNING, 30, "running")
    first = api.get(f"/tasks/{task['id']}").json()["proplet_id"]
    wait_for(lambda: any(e["task_id"] == task["id"] for e in proplets[first].events("task_started")), 30,
             "the task to start executing on its first proplet")  # fmt: skip
    proplets[first].kill9()
    second = next(pid for pid in proplets if pid != first)

    def done() -> bool:
        return api.get(f"/tasks/{task['id']}").json()["state"] == TaskState.COMPLETED

    wait_for(done, 120, "the task to complete on the other proplet", interval=0.3)
    out = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "task", "trace", task["id"], "--api-url", manager.url],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    lines = out.splitlines()

    def at(fragment: str, after: int = 0) -> int:
        for i, line in enumerate(lines[after:], after):
            if fragment in line:
                return i
        raise AssertionError(f"{fragment!r} not in the trace after line {after}:\n{out}")

    placed_a = at(f"on {first} (round-robin")
    # kill -9: the broker sends its last will (or its heartbeats stop): either is the cause shown.
    died = at(f"proplet died      {first}: ", placed_a)
    assert "last will" in lines[died] or "no heartbeat" in lines[died], lines[died]
    requeued = at("requeued", died)
    placed_b = at(f"on {second} (round-robin", requeued)
    at(f"Completed on {second} (attempt 2)", placed_b)
    # The proplet's own timeline has its death and its cause.
    events = api.get(f"/proplets/{first}/events").json()["events"]
    assert [e["kind"] for e in events] == ["joined", "died"], events
    assert events[-1]["cause"] in lines[died]
    out = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "proplets", "trace", first],
        capture_output=True, text=True, timeout=60, check=True,
        env={**os.environ, "PROPELLER_API_URL": manager.url},
    ).stdout  # fmt: skip
    assert "joined" in out and f"died              {events[-1]['cause']}" in out, out
