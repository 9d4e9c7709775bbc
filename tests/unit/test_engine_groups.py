"""Workflows, jobs, cron and broadcast in the engine, driven by hand."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from orchestrator.core.errors import Conflict, ValidationError
from orchestrator.core.model import TaskState
from tests.unit.test_engine import WASM, T, heartbeat, make_engine, publishes, send

FILE = base64.b64encode(WASM).decode()


def spec(task_id: str, *deps: str, run_if: str = "") -> dict[str, Any]:
    body: dict[str, Any] = {"id": task_id, "name": "add", "file": FILE, "depends_on": list(deps)}
    if run_if:
        body["run_if"] = run_if
    return body


def finish(engine: Any, task_id: str, now: float, error: str | None = None) -> None:
    sender = engine.tasks[task_id].proplet_id  # results must name the proplet running the attempt
    body = {"task_id": task_id, "proplet_id": sender, "results": "" if error else "ok", "error": error}
    send(engine, T.results, body, now)


def started(engine: Any) -> list[str]:
    return [s["id"] for s in publishes(engine.take_commands(), T.start)]


def test_workflow_runs_dependents_after_success_and_skips_the_failure_branch() -> None:
    engine = make_engine()
    heartbeat(engine, "p1", 0.0)
    engine.create_workflow([spec("a"), spec("b", "a"), spec("c", "a", run_if="failure")], 0)
    engine.take_commands()
    engine.start_task("a", 1.0, 1.0)
    assert started(engine) == ["a"]
    finish(engine, "a", 2.0)
    assert started(engine) == ["b"]
    assert engine.tasks["c"].state is TaskState.SKIPPED
    finish(engine, "b", 3.0)
    assert engine.tasks["b"].state is TaskState.COMPLETED


def test_a_dependent_cannot_be_started_before_its_dependencies_end() -> None:
    # As upstream's StartTask: "unmet dependencies" (a dependent started by hand would run without
    # its parents' results); once they end, the workflow starts it.
    engine = make_engine()
    heartbeat(engine, "p1", 0.0)
    engine.create_workflow([spec("a"), spec("b", "a")], 0)
    with pytest.raises(Conflict, match="task b has unmet dependencies: a not finished"):
        engine.start_task("b", 1.0, 1.0)
    engine.start_task("a", 1.0, 1.0)
    with pytest.raises(Conflict, match="unmet dependencies"):
        engine.start_task("b", 1.5, 1.5)
    engine.take_commands()
    finish(engine, "a", 2.0)
    assert started(engine) == ["b"]
    finish(engine, "b", 3.0)
    engine.start_task("b", 4.0, 4.0)  # ended dependencies: it may run again by hand
    assert started(engine) == ["b"]


def test_workflow_dependent_receives_parent_results() -> None:
    engine = make_engine()
    heartbeat(engine, "p1", 0.0)
    engine.create_workflow([spec("a"), spec("b", "a")], 0)
    engine.start_task("a", 1.0, 1.0)
    engine.take_commands()
    finish(engine, "a", 2.0)
    (start,) = publishes(engine.take_commands(), T.start)
    assert start["parent_results"] == {"a": "ok"}


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        ([spec("a", "a")], "depends on itself"),
        ([spec("a", "ghost")], "unknown task ghost"),
        ([spec("a", "b"), spec("b", "a")], "circular dependency"),
    ],
)
def test_bad_graphs_are_rejected_and_nothing_is_created(tasks: list[dict[str, Any]], message: str) -> None:
    engine = make_engine()
    with pytest.raises(ValidationError, match=message):
        engine.create_workflow(tasks, 0)
    assert engine.tasks == {}


def test_sequential_job_runs_one_after_another_and_fails_fast() -> None:
    engine = make_engine()
    heartbeat(engine, "p1", 0.0)
    heartbeat(engine, "p2", 0.0)
    job, _ = engine.create_job("seq", [spec("a"), spec("b"), spec("c")], "sequential", 0)
    engine.take_commands()
    engine.start_job(job.id, 1.0, 1.0)
    assert started(engine) == ["a"]
    finish(engine, "a", 2.0)
    assert started(engine) == ["b"]
    finish(engine, "b", 3.0, error="trap")
    assert engine.tasks["c"].state is TaskState.SKIPPED
    assert "job failed fast" in engine.tasks["c"].error


def test_a_restarted_job_keeps_nothing_of_its_last_run_and_numbers_attempts_on() -> None:
    engine = make_engine()
    heartbeat(engine, "p1", 0.0)
    job, _ = engine.create_job("seq", [spec("a"), spec("b")], "sequential", 0)
    engine.start_job(job.id, 1.0, 1.0)
    finish(engine, "a", 2.0)
    finish(engine, "b", 3.0)
    engine.tasks["b"].receipt, engine.tasks["b"].verified = {"sig": "x"}, True  # as if it had verified
    engine.tasks["b"].result_type = "json"
    engine.take_commands()
    engine.start_job(job.id, 4.0, 4.0)
    b = engine.tasks["b"]  # waits for a: nothing of its last run may show meanwhile
    assert b.state is TaskState.PENDING and (b.results, b.result_type, b.receipt, b.verified) == (
        None, "", None, False,
    )
    (start,) = publishes(engine.take_commands(), T.start)
    assert start["id"] == "a" and start["attempt"] == 2  # a new number, the first counted of this run
    assert engine.tasks["a"].attempts_counted == 1


def test_parallel_job_interrupts_siblings_when_one_fails() -> None:
    engine = make_engine()
    heartbeat(engine, "p1", 0.0)
    job, _ = engine.create_job("par", [spec("a"), spec("b")], "parallel", 0)
    engine.start_job(job.id, 1.0, 1.0)
    engine.take_commands()
    finish(engine, "a", 2.0, error="boom")
    assert engine.tasks["b"].state is TaskState.INTERRUPTED
    (stop,) = publishes(engine.take_commands(), T.stop)
    assert stop["id"] == "b"


def test_bad_execution_mode_names_the_field() -> None:
    with pytest.raises(ValidationError) as err:
        make_engine().create_job("x", [spec("a")], "whenever", 0)
    assert err.value.field == "execution_mode"


def test_cron_task_runs_when_due_and_a_bad_expression_is_rejected() -> None:
    engine = make_engine()
    heartbeat(engine, "p1", 0.0)
    wall0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
    task = engine.create_task(
        {"name": "add", "file": FILE, "schedule": "*/5 * * * *", "is_recurring": True}, wall0
    )
    assert task.next_run == 1_700_000_100.0  # 22:15:00
    engine.take_commands()
    engine.on_timer(20.0, wall0 + 20)
    assert started(engine) == []
    heartbeat(engine, "p1", 99.0)
    engine.on_timer(100.0, wall0 + 100)
    assert started(engine) == [task.id]
    assert task.next_run == 1_700_000_400.0
    with pytest.raises(ValidationError) as err:
        engine.create_task({"name": "x", "schedule": "* * *"}, wall0)
    assert err.value.field == "schedule"
    with pytest.raises(ValidationError) as err:
        engine.create_task({"name": "x", "schedule": "* * * * *", "timezone": "Mars/Olympus"}, wall0)
    assert err.value.field == "timezone"


def test_broadcast_tracks_one_result_per_alive_proplet() -> None:
    engine = make_engine()
    for p in ("p1", "p2", "p3"):
        heartbeat(engine, p, 0.0)
    engine.take_commands()
    task = engine.create_task({"name": "add", "file": FILE, "broadcast": True}, 0)
    engine.start_task(task.id, 1.0, 1.0)
    (start,) = publishes(engine.take_commands(), T.start)
    assert start["broadcast"] is True and start.get("proplet_id", "") == ""
    send(engine, T.results, {"task_id": task.id, "proplet_id": "p1", "results": "1"}, 2.0)
    send(engine, T.results, {"task_id": task.id, "proplet_id": "p1", "results": "dup"}, 2.0)
    assert task.state is TaskState.RUNNING
    send(engine, T.results, {"task_id": task.id, "proplet_id": "p2", "results": "2"}, 2.0)
    heartbeat(engine, "p3", 3.0, status="offline")
    assert task.state is TaskState.FAILED
    assert task.results["p1"]["results"] == "1" and task.results["p2"]["results"] == "2"
    assert "p3: proplet died" in task.error


def test_broadcast_with_no_alive_proplet_is_a_conflict() -> None:
    engine = make_engine()
    task = engine.create_task({"name": "add", "file": FILE, "broadcast": True}, 0)
    with pytest.raises(Conflict, match="no alive proplet"):
        engine.start_task(task.id, 0, 0)
    assert task.state is TaskState.PENDING
    assert json.dumps(task.results) == "null"
