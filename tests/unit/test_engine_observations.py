"""Events reported from outside (twin faults, board console lines) join the right task timelines."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.core.commands import RecordPropletEvent, RecordTaskEvent
from orchestrator.core.errors import ValidationError
from orchestrator.core.observations import MAX_EVENTS, Observation, parse_events
from orchestrator.trace import format_trace
from tests.unit.test_engine import T, heartbeat, make_engine, send, submit
from tests.unit.test_engine_timeline import WALL, kinds, task_events


def fault(at: float, cause: str = "power_loss", **fields: Any) -> Observation:
    return Observation(WALL + at, "fault", cause, "twin", {"device": "esp-1", **fields})


def test_a_fault_on_the_proplet_joins_the_running_task_and_orders_before_its_death() -> None:
    engine = make_engine()
    heartbeat(engine, "p1", 0.0)
    task_id = submit(engine, 1.0)
    heartbeat(engine, "p2", 1.5)
    joined = engine.observations.report_on_proplet("p1", [fault(2.0)])
    assert joined == {task_id: 1}
    heartbeat(engine, "p1", 4.0, status="offline")  # the will, later
    send(engine, T.results, {"task_id": task_id, "proplet_id": "p2", "results": "42", "attempt": 2}, 5.0)
    commands = engine.take_commands()
    events = task_events(commands, task_id)
    assert kinds(events) == ["created", "queued", "placed", "start_published", "fault",
                             "proplet_died", "requeued", "placed", "start_published", "result"]  # fmt: skip
    hit = events[4]
    assert (hit.cause, hit.at_wall) == ("power_loss", WALL + 2.0)
    assert hit.fields == {"device": "esp-1", "proplet_id": "p1", "attempt": 1, "source": "twin"}
    # The proplet's own timeline has it too; p2, which ran nothing then, has nothing.
    p1 = [(c.kind, c.cause) for c in commands if isinstance(c, RecordPropletEvent) and c.proplet_id == "p1"]
    assert ("fault", "power_loss") in p1
    assert not engine.observations.report_on_proplet("p2", [fault(1.6)])
    text = format_trace("task", task_id, [
        {"at_unix": e.at_wall, "kind": e.kind, "cause": e.cause, "fields": e.fields} for e in events
    ])  # fmt: skip
    assert "fault             power_loss on esp-1 [twin]" in text


def test_a_late_console_line_finds_the_attempt_it_was_printed_during_and_no_other() -> None:
    engine = make_engine()
    heartbeat(engine, "p1", 0.0)
    first = submit(engine, 1.0)
    send(engine, T.results, {"task_id": first, "proplet_id": "p1", "results": "42", "attempt": 1}, 3.0)
    second = submit(engine, 4.0)
    engine.take_commands()
    line = Observation(WALL + 2.5, "console", "<inf> prop: computing", "console", {"device": "board-a1"})
    before = Observation(WALL + 0.5, "console", "<inf> wifi: up", "console", {})
    joined = engine.observations.report_on_proplet("p1", [line, before])
    assert joined == {first: 1}  # printed during the first attempt (reported after it ended); not the second
    commands = engine.take_commands()
    assert [e.cause for e in task_events(commands, first)] == ["<inf> prop: computing"]
    assert not task_events(commands, second)
    # Console lines stay off the proplet's own timeline (joins and deaths would be pruned away).
    assert not [c for c in commands if isinstance(c, RecordPropletEvent)]


def test_reported_events_are_bounded_per_task() -> None:
    engine = make_engine(observations_per_task=3)
    heartbeat(engine, "p1", 0.0)
    task_id = submit(engine, 1.0)
    engine.take_commands()
    lines = [Observation(WALL + 2 + i / 100, "console", f"line {i}", "", {}) for i in range(10)]
    assert engine.observations.report_on_task(task_id, lines) == 3
    events = task_events(engine.take_commands(), task_id)
    assert kinds(events) == ["console", "console", "console", "observations_capped"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"events": []}, "events"),
        ({"events": [{"kind": "fault"}] * (MAX_EVENTS + 1)}, "events"),
        ({"events": [{"kind": "placed", "cause": "x"}]}, "events[0].kind"),
        ({"events": [{"kind": "fault", "cause": 3}]}, "events[0].cause"),
        ({"events": [{"kind": "fault", "at": "soon"}]}, "events[0].at"),
        ({"events": [{"kind": "fault", "at": WALL + 3600}]}, "events[0].at"),
        ({"events": [{"kind": "fault", "fields": {"x": "y" * 5000}}]}, "events[0].fields"),
        ({"events": [{"kind": "fault", "by": "me"}]}, "events[0].by"),
        ([], "events"),
    ],
)
def test_a_bad_report_names_the_field(body: Any, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        parse_events(body, WALL)
    assert err.value.field == field


def test_a_report_without_a_time_is_stamped_when_received() -> None:
    [ev] = parse_events({"events": [{"kind": "note", "cause": "bench cooled down"}]}, WALL)
    assert ev == Observation(WALL, "note", "bench cooled down", "", {})
    assert isinstance(ev, Observation) and not isinstance(ev, RecordTaskEvent)
