"""The engine records each task's and proplet's timeline as commands, in order, with causes."""

from __future__ import annotations

from typing import Any

from orchestrator.core.commands import RecordPropletEvent, RecordTaskEvent
from orchestrator.core.model import TaskState
from orchestrator.trace import format_trace
from tests.unit.test_engine import T, heartbeat, make_engine, send, submit

WALL = 1_700_000_000


def task_events(commands: list[Any], task_id: str) -> list[RecordTaskEvent]:
    return [c for c in commands if isinstance(c, RecordTaskEvent) and c.task_id == task_id]


def kinds(events: list[Any]) -> list[str]:
    return [e.kind for e in events]


def test_a_task_moved_by_a_proplet_death_has_every_step_in_order_with_causes() -> None:
    engine = make_engine()
    heartbeat(engine, "p1", 0.0)
    task_id = submit(engine, 1.0)
    heartbeat(engine, "p2", 1.5)
    heartbeat(engine, "p1", 2.0, status="offline")
    send(engine, T.results, {"task_id": task_id, "proplet_id": "p2", "results": "42", "attempt": 2}, 3.0)
    commands = engine.take_commands()
    events = task_events(commands, task_id)
    assert kinds(events) == [
        "created", "queued", "placed", "start_published",
        "proplet_died", "requeued", "placed", "start_published", "result",
    ]  # fmt: skip
    placed_a, placed_b = [e for e in events if e.kind == "placed"]
    assert (placed_a.fields["proplet_id"], placed_a.cause, placed_a.fields["candidates"]) == (
        "p1",
        "round-robin",
        1,
    )
    assert placed_b.fields["proplet_id"] == "p2" and placed_b.at_wall == WALL + 2.0
    died = events[4]
    assert died.fields["proplet_id"] == "p1" and died.cause == "last will: offline"
    assert "proplet p1 died (last will: offline)" in events[5].cause
    assert events[-1].fields == {"state": "Completed", "proplet_id": "p2", "attempt": 2, "verified": False}
    assert [e.at_wall for e in events] == sorted(e.at_wall for e in events)
    # The proplet's own timeline: joined, died with its cause.
    p1 = [c for c in commands if isinstance(c, RecordPropletEvent) and c.proplet_id == "p1"]
    assert [(e.kind, e.cause) for e in p1] == [("joined", "heard from it"), ("died", "last will: offline")]


def test_why_a_task_waits_is_recorded_once_per_reason_and_the_queue_timeout_fails_it() -> None:
    engine = make_engine(queue_timeout=5.0)
    tid = submit(engine, 0.0)
    engine.on_timer(1.0, WALL + 1.0)  # drains again: same reason, no new entry
    engine.on_timer(5.0, WALL + 5.0)
    events = task_events(engine.take_commands(), tid)
    assert kinds(events) == ["created", "queued", "waiting", "failed"]
    assert events[2].cause == "no alive proplet"
    assert events[3].cause == "not dispatched within 5 s: no alive proplet"
    assert engine.tasks[tid].state is TaskState.FAILED


def test_refusal_and_stop_are_recorded() -> None:
    engine = make_engine()
    heartbeat(engine, "p1", 0.0)
    task_id = submit(engine, 1.0)
    send(engine, T.results, {"task_id": task_id, "proplet_id": "p1", "error": "busy", "refused": "busy",
                             "attempt": 1}, 2.0)  # fmt: skip
    engine.stop_task(task_id, WALL + 3.0)
    events = task_events(engine.take_commands(), task_id)
    refused = next(e for e in events if e.kind == "refused")
    assert refused.fields == {"proplet_id": "p1", "refusal": "busy"}
    assert kinds(events)[-1] == "stopped" and events[-1].cause == "stopped by user"


def test_no_timeline_commands_when_disabled() -> None:
    engine = make_engine(timeline=False)
    heartbeat(engine, "p1", 0.0)
    submit(engine, 1.0)
    assert not [c for c in engine.take_commands() if isinstance(c, RecordTaskEvent | RecordPropletEvent)]


def test_the_terminal_trace_reads_in_order_with_relative_times() -> None:
    events = [
        {"at": "t0", "at_unix": 100.0, "kind": "placed", "cause": "round-robin",
         "fields": {"proplet_id": "p1", "candidates": 2}},
        {"at": "t1", "at_unix": 103.5, "kind": "proplet_died", "cause": "no heartbeat for 1.5 s",
         "fields": {"proplet_id": "p1"}},
        {"at": "t2", "at_unix": 104.0, "kind": "result", "cause": "Completed",
         "fields": {"state": "Completed", "proplet_id": "p2", "attempt": 2}},
    ]  # fmt: skip
    text = format_trace("task", "abc", events).splitlines()
    assert text[0] == "task abc: 3 events from t0"
    assert "+0.000s" in text[1] and "on p1 (round-robin, 2 candidates)" in text[1]
    assert "+3.500s" in text[2] and "proplet died" in text[2] and "p1: no heartbeat for 1.5 s" in text[2]
    assert "+4.000s" in text[3] and "Completed on p2 (attempt 2)" in text[3]


def test_the_first_heartbeat_listing_the_attempt_records_it_running_once() -> None:
    engine = make_engine()
    heartbeat(engine, "p1", 0.0)
    task_id = submit(engine, 1.0)
    for now in (2.0, 3.0):
        send(engine, T.alive, {"proplet_id": "p1", "status": "alive", "running": [task_id]}, now)
    send(engine, T.results, {"task_id": task_id, "proplet_id": "p1", "results": "42", "attempt": 1}, 4.0)
    events = task_events(engine.take_commands(), task_id)
    assert kinds(events)[-2:] == ["running", "result"]
    running = events[-2]
    assert (running.at_wall, running.fields) == (WALL + 2.0, {"proplet_id": "p1", "attempt": 1})
