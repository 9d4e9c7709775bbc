"""Delivery rules of the engine, driven by hand with ``now`` chosen by the test (issue 10).

An attempt is spent only by a real execution; superseded attempts are stopped; every attempt has a
deadline; a proplet we only know from heartbeats is asked to announce itself; terminal tasks leave
memory while what workflows need stays.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from orchestrator import wire
from orchestrator.core.commands import Publish as ManagerPublish
from orchestrator.core.errors import NotFound
from orchestrator.core.model import TaskState
from proplets.core import PropletConfig, PropletEngine, RunTask
from proplets.core import Publish as PropletPublish
from tests.unit.test_engine import WASM, T, heartbeat, make_engine, publishes, send, submit


def announce(engine: Any, proplet_id: str, now: float, **metadata: Any) -> None:
    send(engine, T.create, {"proplet_id": proplet_id, "namespace": "default", "metadata": metadata}, now)


def result(engine: Any, task_id: str, proplet_id: str, attempt: int, now: float, **extra: Any) -> None:
    body = {"task_id": task_id, "proplet_id": proplet_id, "results": "42", "error": None, "attempt": attempt}
    send(engine, T.results, {**body, **extra}, now)


def running(engine: Any, proplet_id: str, ids: list[str], now: float) -> None:
    send(engine, T.alive, {"proplet_id": proplet_id, "status": "alive", "running": ids}, now)


def refusal(engine: Any, task_id: str, proplet_id: str, attempt: int, kind: str, now: float) -> None:
    message = wire.refusals.refusal(kind, task_id, "no room", proplet_id, attempt)
    send(engine, T.results, wire.encode(message), now)


# ---------------------------------------------------------------------- refusals


def test_a_busy_refusal_requeues_without_spending_an_attempt_and_waits_for_room() -> None:
    engine = make_engine()
    announce(engine, "p1", 0.0, max_instances=4)
    engine.take_commands()
    task_id = submit(engine, 1.0)
    engine.take_commands()
    refusal(engine, task_id, "p1", 1, wire.refusals.BUSY, 2.0)
    task = engine.tasks[task_id]
    assert task.state is TaskState.SCHEDULED and task.attempts_counted == 0
    assert "busy" in task.error
    assert not publishes(engine.take_commands(), T.start)  # p1 is not chosen again yet
    running(engine, "p1", ["a", "b", "c", "d"], 3.0)  # still full
    assert not publishes(engine.take_commands(), T.start)
    running(engine, "p1", ["a", "b"], 4.0)  # room
    (start,) = publishes(engine.take_commands(), T.start)
    assert start["id"] == task_id and start["attempt"] == 2  # a new number: a stop of 1 cannot end it
    result(engine, task_id, "p1", 2, 5.0)
    task = engine.tasks[task_id]
    assert task.state is TaskState.COMPLETED and task.attempt == 2 and task.attempts_counted == 1


def test_a_busy_proplet_is_skipped_while_another_has_room() -> None:
    engine = make_engine()
    heartbeat(engine, "p1", 0.0)
    heartbeat(engine, "p2", 0.0)
    first = submit(engine, 1.0)
    owner = engine.tasks[first].proplet_id
    refusal(engine, first, owner, 1, wire.refusals.BUSY, 2.0)
    other = {"p1": "p2", "p2": "p1"}[owner]
    assert engine.tasks[first].proplet_id == other and engine.tasks[first].attempts_counted == 1
    second = submit(engine, 3.0)
    assert engine.tasks[second].proplet_id == other


def test_the_firmware_error_texts_are_recognised_as_refusals() -> None:
    oom = wire.TaskResult("t", "", wire.refusals.out_of_memory_error(10, 2))
    busy = wire.TaskResult("t", "", "busy: 2/2 instances")
    trap = wire.TaskResult("t", "", "wasm trap: out of bounds memory access")
    assert wire.refusals.refusal_of(oom) == wire.refusals.OUT_OF_MEMORY
    assert wire.refusals.refusal_of(busy) == wire.refusals.BUSY
    assert wire.refusals.refusal_of(trap) is None
    decoded = wire.decode(T, T.results, wire.encode(wire.refusals.refusal("busy", "t", "full", "p", 2)))
    assert isinstance(decoded, wire.TaskResult) and decoded.refused == "busy" and not decoded.is_success


def test_refusals_are_bounded_then_the_task_fails_with_the_reason() -> None:
    engine = make_engine(max_refusals=2)
    announce(engine, "p1", 0.0, max_instances=4)
    task_id = submit(engine, 1.0)
    for i in range(3):  # refused as busy, then the proplet reports room and gets it again
        refusal(engine, task_id, "p1", engine.tasks[task_id].attempt, wire.refusals.BUSY, 2.0 + i)
        running(engine, "p1", [], 2.5 + i)
    task = engine.tasks[task_id]
    assert (
        task.state is TaskState.FAILED
        and "not run after 3 refusals" in task.error
        and "no room" in task.error
    )


# ---------------------------------------------------------------------- superseded attempts


def _partitioned(engine: Any) -> tuple[str, str, str]:
    """p-a runs the task, goes silent and is declared dead; the task runs again on p-b."""
    heartbeat(engine, "p-a", 0.0)
    task_id = submit(engine, 1.0)
    first = engine.tasks[task_id].proplet_id
    second = "p-b" if first == "p-a" else "p-a"
    heartbeat(engine, second, 20.0)
    engine.take_commands()
    engine.on_timer(31.0, 31.0)  # first: no heartbeat for 30 s
    assert not engine.proplets[first].alive
    task = engine.tasks[task_id]
    assert task.state is TaskState.RUNNING and task.proplet_id == second and task.attempt == 2
    engine.take_commands()
    return task_id, first, second


def test_a_returning_proplet_is_told_to_stop_the_superseded_attempt_only() -> None:
    engine = make_engine()
    task_id, first, second = _partitioned(engine)
    running(engine, first, [task_id], 40.0)  # back, still running attempt 1
    (stop,) = publishes(engine.take_commands(), T.stop)
    assert stop["id"] == task_id and stop["proplet_id"] == first and stop["attempt"] == 1
    # Its "stopped" result ends the superseded attempt; the current one is untouched.
    result(engine, task_id, first, 1, 41.0, error="task was stopped before completion", results="")
    assert engine.counters["superseded_attempts_ended"] == 1
    task = engine.tasks[task_id]
    assert task.state is TaskState.RUNNING and task.proplet_id == second and task.attempt == 2
    running(engine, first, [], 42.0)
    assert not publishes(engine.take_commands(), T.stop)
    result(engine, task_id, second, 2, 43.0)
    assert engine.tasks[task_id].state is TaskState.COMPLETED


def test_task_stop_reaches_every_attempt_still_running() -> None:
    engine = make_engine()
    task_id, first, second = _partitioned(engine)
    engine.stop_task(task_id, 50.0)
    stops = {(s["proplet_id"], s.get("attempt", 0)) for s in publishes(engine.take_commands(), T.stop)}
    assert stops == {(second, 0), (first, 1)}


def test_a_reported_task_that_finished_here_long_ago_is_stopped() -> None:
    engine = make_engine()
    heartbeat(engine, "p1", 0.0)
    task_id = submit(engine, 1.0)
    result(engine, task_id, "p1", 1, 2.0)
    engine.take_commands()
    running(engine, "p1", [task_id], 3.0)  # a duplicate still running there
    (stop,) = publishes(engine.take_commands(), T.stop)
    assert stop["id"] == task_id and stop["proplet_id"] == "p1"


# ---------------------------------------------------------------------- deadlines


def test_an_attempt_past_its_wall_time_limit_plus_grace_is_stopped_and_placed_again() -> None:
    engine = make_engine(attempt_grace=2.0)
    heartbeat(engine, "p1", 0.0)
    task_id = submit(engine, 1.0, limits={"timeout_s": 5}, max_attempts=2)
    engine.take_commands()
    for t in (2.0, 4.0, 6.0, 7.9):  # heartbeats that list no tasks (an upstream proplet)
        heartbeat(engine, "p1", t)
        engine.on_timer(t, t)
    assert engine.tasks[task_id].attempt == 1
    assert engine.next_deadline() == pytest.approx(8.0)
    engine.on_timer(8.0, 8.0)
    commands = engine.take_commands()
    (stop,) = publishes(commands, T.stop)
    assert stop["id"] == task_id and stop["attempt"] == 1
    (start,) = publishes(commands, T.start)
    assert start["attempt"] == 2
    heartbeat(engine, "p1", 14.0)
    engine.on_timer(15.0, 15.0)
    task = engine.tasks[task_id]
    assert task.state is TaskState.FAILED
    assert task.error == "no result within 7 s on attempt 2/2"


def test_tasks_without_a_limit_get_the_default_deadline_and_daemons_none() -> None:
    engine = make_engine(attempt_timeout=100.0)
    heartbeat(engine, "p1", 0.0)
    plain = submit(engine, 1.0, max_attempts=1)
    daemon = submit(engine, 1.0, daemon=True)
    for t in range(10, 110, 10):
        heartbeat(engine, "p1", float(t))
        engine.on_timer(float(t) + 1, float(t) + 1)
    assert (
        engine.tasks[plain].state is TaskState.FAILED
        and "no result within 100 s" in engine.tasks[plain].error
    )
    assert engine.tasks[daemon].state is TaskState.RUNNING


# ---------------------------------------------------------------------- discovery requests


def test_a_proplet_known_only_from_heartbeats_is_asked_to_announce_itself() -> None:
    engine = make_engine()
    heartbeat(engine, "early", 0.0)
    (request,) = publishes(engine.take_commands(), T.discover)
    assert request == {"proplet_id": "early"}
    heartbeat(engine, "early", 10.0)  # asked recently: not again
    assert not publishes(engine.take_commands(), T.discover)
    heartbeat(engine, "early", 31.0)  # still nothing after a liveness timeout: ask again
    assert publishes(engine.take_commands(), T.discover)
    announce(engine, "early", 32.0, total_memory_bytes=1 << 30)
    heartbeat(engine, "early", 70.0)
    assert not publishes(engine.take_commands(), T.discover)
    assert engine.proplets["early"].metadata.total_memory_bytes == 1 << 30


# ---------------------------------------------------------------------- bounded memory and indexes


def test_terminal_tasks_leave_memory_and_get_task_says_not_found() -> None:
    engine = make_engine(terminal_cache=2)
    heartbeat(engine, "p1", 0.0)
    ids = [submit(engine, 1.0) for _ in range(5)]
    for i in ids:
        result(engine, i, "p1", 1, 2.0)
    engine.take_commands()
    assert engine.tasks.live == {}
    assert engine.find_task(ids[-1]) is not None and engine.find_task(ids[0]) is None
    with pytest.raises(NotFound):
        engine.get_task(ids[0])
    assert engine.running_on("p1") == [] and engine.proplets["p1"].task_count == 0


def test_a_workflow_keeps_its_parents_until_the_children_finish() -> None:
    engine = make_engine(terminal_cache=0)
    heartbeat(engine, "p1", 0.0)
    file = __import__("base64").b64encode(WASM).decode()
    a, b = engine.create_workflow(
        [
            {"id": "00000000-0000-4000-8000-00000000000a", "name": "a", "file": file},
            {
                "id": "00000000-0000-4000-8000-00000000000b",
                "name": "b",
                "file": file,
                "depends_on": ["00000000-0000-4000-8000-00000000000a"],
            },
        ],
        0.0,
    )
    engine.start_task(a.id, 1.0, 1.0)
    engine.take_commands()
    result(engine, a.id, "p1", 1, 2.0)
    commands = engine.take_commands()
    (start,) = publishes(commands, T.start)
    assert start["id"] == b.id and start["parent_results"] == {a.id: "42"}
    assert engine.find_task(a.id) is a  # b still needs it
    result(engine, b.id, "p1", 1, 3.0)
    engine.take_commands()
    assert engine.find_task(a.id) is None and engine.find_task(b.id) is None


def test_restore_keeps_only_live_tasks_and_rebuilds_the_indexes() -> None:
    engine = make_engine(terminal_cache=1)
    heartbeat(engine, "p1", 0.0)
    done = [submit(engine, 1.0) for _ in range(3)]
    live = submit(engine, 1.0, memory_bytes=1000) if False else submit(engine, 1.0)
    for i in done:
        result(engine, i, "p1", 1, 2.0)
    snapshot = [engine.tasks[live], *(engine.find_task(i) for i in done if engine.find_task(i))]
    restarted = make_engine(terminal_cache=1)
    restarted.restore([t for t in snapshot if t is not None], list(engine.proplets.values()), now=100.0)
    assert set(restarted.tasks.live) == {live}
    assert [t.id for t in restarted.running_on("p1")] == [live]
    assert restarted.proplets["p1"].task_count == 1


def test_the_queue_dispatches_by_priority_then_arrival() -> None:
    engine = make_engine()
    announce(engine, "p1", 0.0, max_instances=1)
    blocker = submit(engine, 0.5)
    low = submit(engine, 1.0, priority=10)
    high = submit(engine, 2.0, priority=90)
    mid1 = submit(engine, 3.0, priority=50)
    mid2 = submit(engine, 4.0, priority=50)
    order = []
    current = blocker
    for t in range(5):
        engine.take_commands()
        result(engine, current, "p1", 1, 10.0 + t)
        (start,) = publishes(engine.take_commands(), T.start) or [None]
        if start is None:
            break
        current = start["id"]
        order.append(current)
    assert order == [high, mid1, mid2, low]


def test_stop_message_carries_the_attempt_only_when_set() -> None:
    plain = json.loads(wire.encode(wire.StopTask("t", "n", "Interrupted", "p")))
    targeted = json.loads(wire.encode(wire.StopTask("t", "n", "Interrupted", "p", attempt=3)))
    assert "attempt" not in plain and targeted["attempt"] == 3
    decoded = wire.decode(T, T.stop, json.dumps(targeted).encode())
    assert isinstance(decoded, wire.StopTask) and decoded.attempt == 3


def test_the_late_result_of_an_attempt_given_up_on_counts_when_nothing_else_ran_it() -> None:
    engine = make_engine()
    heartbeat(engine, "p1", 0.0)
    task_id = submit(engine, 1.0)
    engine.on_timer(31.0, 31.0)  # p1 silent: declared dead, nobody else to run the task
    assert engine.tasks[task_id].state is TaskState.SCHEDULED
    engine.take_commands()
    result(engine, task_id, "p1", 1, 35.0)  # it was only cut off: its held result arrives
    task = engine.tasks[task_id]
    assert task.state is TaskState.COMPLETED and task.attempt == 1 and task.results == "42"
    heartbeat(engine, "p1", 36.0)
    assert not publishes(engine.take_commands(), T.start)  # not run a second time


def test_a_task_no_proplet_can_hold_waits_aside_until_a_bigger_one_announces() -> None:
    from orchestrator.core.placement import MostFreeMemory
    from tests.unit.test_engine import _module_with_pages

    engine = make_engine()
    engine.policy = MostFreeMemory()
    announce(engine, "small", 0.0, free_memory_bytes=100_000, max_instances=4)
    big = engine.create_task({"name": "main", "file": _module_with_pages(2), "priority": 90}, 0.0)
    engine.start_task(big.id, 1.0, 1.0)
    small = submit(engine, 2.0)  # lower priority, but it fits: it runs
    assert engine.tasks[small].state is TaskState.RUNNING and big.state is TaskState.SCHEDULED
    assert "no proplet can fit" in big.error and engine._parked
    announce(engine, "large", 3.0, free_memory_bytes=1_000_000)
    assert big.state is TaskState.RUNNING and big.proplet_id == "large"


def test_out_of_memory_on_an_empty_proplet_fails_the_task_when_nowhere_else_is_left() -> None:
    engine = make_engine()
    heartbeat(engine, "p1", 0.0)
    heartbeat(engine, "p2", 0.0)
    task_id = submit(engine, 1.0)
    first = engine.tasks[task_id].proplet_id
    oom = wire.refusals.out_of_memory_error(9_000_000, 65536)
    send(engine, T.results, {"task_id": task_id, "proplet_id": first, "results": "", "error": oom}, 2.0)
    task = engine.tasks[task_id]
    second = task.proplet_id
    assert task.state is TaskState.RUNNING and second != first and task.attempts_counted == 1
    send(engine, T.results, {"task_id": task_id, "proplet_id": second, "results": "", "error": oom}, 3.0)
    assert task.state is TaskState.FAILED and task.error.startswith(oom) and second in task.error


def test_back_on_the_broker_the_manager_asks_for_announcements_and_waits_before_calling_a_start_lost() -> (
    None
):
    engine = make_engine()
    heartbeat(engine, "p1", 0.0)
    task_id = submit(engine, 1.0)
    engine.take_commands()
    engine.link_lost(30.0)
    engine.link_restored(35.0, 35.0)
    (request,) = publishes(engine.take_commands(), T.discover)
    assert request == {"proplet_id": ""}
    running(engine, "p1", [], 36.0)  # sent before its re-sent result: not taken for a lost start
    assert engine.tasks[task_id].state is TaskState.RUNNING
    result(engine, task_id, "p1", 1, 36.5)
    assert engine.tasks[task_id].state is TaskState.COMPLETED


# ---------------------------------------------------------------------- attempt numbers


def test_a_stop_for_a_superseded_attempt_never_ends_a_later_attempt_on_the_same_proplet() -> None:
    """The manager (Engine) and a real proplet core (PropletEngine) with messages carried by hand.

    p1's start is late, so the manager calls it lost and places the task on p2; p1 then runs the late
    start and its heartbeat lists it, so the manager tells p1 to stop that superseded attempt; p2
    refuses as busy and the task comes back to p1 before p1's run has ended. When a lost start gave
    its number back, the new start had the stopped attempt's number: p1 took it for a duplicate, and
    the stopped run's "stopped" answered the new attempt, failing a task that never failed.
    """
    manager = make_engine()
    p1 = PropletEngine(PropletConfig(proplet_id="p1", domain="d1", channel="c1", heartbeat_interval=10.0))

    def from_p1(now: float) -> list[Any]:
        """Deliver what p1 published to the manager; return p1's other commands."""
        rest = []
        for command in p1.take_commands():
            if isinstance(command, PropletPublish):
                send(manager, command.topic, command.payload, now)
            else:
                rest.append(command)
        return rest

    def from_manager() -> list[Any]:
        return [c for c in manager.take_commands() if isinstance(c, ManagerPublish)]

    def to_p1(messages: list[Any], now: float) -> None:
        for message in messages:
            if T.is_start(message.topic) or message.topic == T.stop:
                p1.handle(message.topic, message.payload, now)

    p1.on_connected(0.0)
    from_p1(0.0)
    task_id = submit(manager, 1.0)
    late_start = from_manager()  # to p1, attempt 1, still in flight
    assert [json.loads(m.payload)["proplet_id"] for m in late_start if T.is_start(m.topic)] == ["p1"]
    running(manager, "p2", [], 2.0)
    p1.on_timer(25.0)  # its heartbeat does not list the task: the start is called lost
    from_p1(25.0)
    to_p2 = from_manager()
    assert [json.loads(m.payload)["proplet_id"] for m in to_p2 if T.is_start(m.topic)] == ["p2"]
    to_p1(late_start, 26.0)  # the late start arrives: p1 runs it
    assert [c.start.id for c in from_p1(26.0) if isinstance(c, RunTask)] == [task_id]
    p1.on_timer(35.0)  # its heartbeat lists the task: the manager stops that superseded attempt
    from_p1(35.0)
    stop = from_manager()
    assert [json.loads(m.payload)["id"] for m in stop if m.topic == T.stop] == [task_id]
    refusal(manager, task_id, "p2", manager.tasks[task_id].attempt, wire.refusals.BUSY, 36.0)
    again = from_manager()
    assert [json.loads(m.payload)["proplet_id"] for m in again if T.is_start(m.topic)] == ["p1"]
    to_p1(stop + again, 37.0)  # in the order the manager sent them
    from_p1(37.0)
    p1.task_finished(task_id, "", "stopped", 38.0)  # the stopped run ends
    from_p1(38.0)
    task = manager.tasks[task_id]
    assert task.state is not TaskState.FAILED, task.error
    for now in (45.0, 55.0):  # p1 heartbeats with room; the task is placed again and runs
        p1.on_timer(now)
        to_p1(from_manager(), now)
        for command in from_p1(now):
            if isinstance(command, RunTask):
                p1.task_finished(command.start.id, "42", None, now + 1)
                from_p1(now + 1)
        to_p1(from_manager(), now + 1)
    task = manager.tasks[task_id]
    assert task.state is TaskState.COMPLETED and task.results == "42"
    assert task.attempts_counted == 1  # the lost start and the two refusals did not count
