"""The orchestrator engine, driven by hand: exact commands out for facts in, with `now` chosen by the test."""

from __future__ import annotations

import base64
import itertools
import json
from typing import Any

import pytest

from orchestrator import wire
from orchestrator.core.commands import MessageReceived, PersistProplet, PersistTask, Publish
from orchestrator.core.engine import Engine, EngineConfig, snapshot
from orchestrator.core.errors import Conflict, IllegalTransition, NotFound, ValidationError
from orchestrator.core.model import Task, TaskState
from orchestrator.core.states import Trigger, next_state

T = wire.Topics("d1", "c1")
WASM = b"\x00asm\x01\x00\x00\x00"


def make_engine(**config: Any) -> Engine:
    ids = (f"00000000-0000-4000-8000-{i:012d}" for i in itertools.count(1))
    return Engine(
        EngineConfig(domain="d1", channel="c1", heartbeat_interval=10.0, **config), new_id=lambda: next(ids)
    )


def send(engine: Engine, topic: str, payload: dict[str, Any] | bytes, now: float) -> None:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    engine.handle(MessageReceived(topic, raw), now, 1_700_000_000 + now)


def heartbeat(
    engine: Engine, proplet_id: str, now: float, status: str = "alive", namespace: str = "default"
) -> None:
    send(engine, T.alive, {"proplet_id": proplet_id, "status": status, "namespace": namespace}, now)


def publishes(commands: list[Any], topic: str) -> list[dict[str, Any]]:
    return [json.loads(c.payload) for c in commands if isinstance(c, Publish) and c.topic == topic]


def submit(engine: Engine, now: float = 0.0, **spec: Any) -> str:
    body = {"name": "add", "file": base64.b64encode(WASM).decode(), "inputs": [2, 40], **spec}
    task = engine.create_task(body, 1_700_000_000 + now)
    engine.start_task(task.id, now, 1_700_000_000 + now)
    return task.id


def test_first_heartbeat_registers_an_alive_proplet() -> None:
    engine = make_engine()
    heartbeat(engine, "p1", 0.0)
    proplet = engine.proplets["p1"]
    assert proplet.alive and proplet.last_seen == 0.0 and len(proplet.alive_history) == 1
    assert any(isinstance(c, PersistProplet) for c in engine.take_commands())


def test_task_is_dispatched_round_robin_with_string_inputs_and_attempt() -> None:
    engine = make_engine()
    heartbeat(engine, "p1", 0.0)
    heartbeat(engine, "p2", 0.0)
    engine.take_commands()
    first, second, third = submit(engine, 1.0), submit(engine, 1.0), submit(engine, 1.0)
    starts = publishes(engine.take_commands(), T.start)
    assert [s["proplet_id"] for s in starts] == ["p1", "p2", "p1"]
    assert [s["id"] for s in starts] == [first, second, third]
    assert starts[0]["inputs"] == ["2", "40"] and starts[0]["attempt"] == 1
    assert base64.b64decode(starts[0]["file"]) == WASM
    assert engine.tasks[first].state is TaskState.RUNNING
    assert engine.proplets["p1"].task_count == 2


def test_task_is_persisted_before_its_start_is_published() -> None:
    engine = make_engine()
    heartbeat(engine, "p1", 0.0)
    engine.take_commands()
    task_id = submit(engine, 1.0)
    commands = engine.take_commands()
    persist_at = max(
        i
        for i, c in enumerate(commands)
        if isinstance(c, PersistTask) and c.task.id == task_id and c.task.state is TaskState.RUNNING
    )
    publish_at = next(i for i, c in enumerate(commands) if isinstance(c, Publish) and c.topic == T.start)
    assert persist_at < publish_at


def test_result_completes_and_a_duplicate_does_not_flip_it() -> None:
    engine = make_engine()
    heartbeat(engine, "p1", 0.0)
    task_id = submit(engine, 1.0)
    send(engine, T.results, {"task_id": task_id, "proplet_id": "p1", "results": "42", "error": None}, 2.0)
    task = engine.tasks[task_id]
    assert task.state is TaskState.COMPLETED and task.results == "42"
    assert engine.proplets["p1"].task_count == 0
    engine.take_commands()
    send(engine, T.results, {"task_id": task_id, "results": "", "error": "late failure"}, 3.0)
    assert task.state is TaskState.COMPLETED and task.error == ""
    assert not [c for c in engine.take_commands() if isinstance(c, PersistTask)]
    assert engine.counters["results_ignored"] == 1


def test_non_empty_error_fails_the_task_and_embedded_result_without_proplet_id_counts() -> None:
    engine = make_engine()
    heartbeat(engine, "p1", 0.0, namespace="embedded")  # the firmware's results name no proplet
    failing, ok = submit(engine, 1.0), submit(engine, 1.0)
    send(engine, T.results, {"task_id": failing, "results": "", "error": "wasm trap: unreachable"}, 2.0)
    send(engine, T.results, {"task_id": ok, "results": "42"}, 2.0)
    assert engine.tasks[failing].state is TaskState.FAILED
    assert engine.tasks[failing].error == "wasm trap: unreachable"
    assert engine.tasks[ok].state is TaskState.COMPLETED


def test_last_will_marks_dead_at_once_and_requeues_its_task_elsewhere() -> None:
    engine = make_engine()
    heartbeat(engine, "p1", 0.0)
    task_id = submit(engine, 1.0)
    heartbeat(engine, "p2", 1.5)
    engine.take_commands()
    heartbeat(engine, "p1", 2.0, status="offline")
    assert not engine.proplets["p1"].alive
    starts = publishes(engine.take_commands(), T.start)
    assert [(s["id"], s["proplet_id"], s["attempt"]) for s in starts] == [(task_id, "p2", 2)]
    assert engine.tasks[task_id].state is TaskState.RUNNING


def test_a_clean_leave_moves_its_task_at_once_and_is_logged_as_news_not_a_death() -> None:
    from orchestrator.core.commands import LogEvent
    from proplets.core import PropletEngine

    engine = make_engine()
    heartbeat(engine, "p1", 0.0)
    task_id = submit(engine, 1.0)
    heartbeat(engine, "p2", 1.5)
    engine.take_commands()
    # what a proplet publishes at a clean stop, from the proplet's own engine
    [leave] = [c for c in _leave_commands(PropletEngine) if getattr(c, "topic", "") == T.alive]
    assert json.loads(leave.payload)["leaving"] is True
    engine.handle(MessageReceived(leave.topic, leave.payload), 2.0, 1_700_000_002.0)
    assert not engine.proplets["p1"].alive
    commands = engine.take_commands()
    assert [(s["id"], s["proplet_id"]) for s in publishes(commands, T.start)] == [(task_id, "p2")]
    logs = [(c.name, c.level, c.fields.get("reason")) for c in commands if isinstance(c, LogEvent)]
    assert ("proplet_left", "info", "left: clean shutdown") in logs
    assert not [entry for entry in logs if entry[0] == "proplet_dead"]
    # the broker's will for the same proplet (no `leaving`) is still a death
    heartbeat(engine, "p2", 3.0, status="offline")
    logs = [(c.name, c.level) for c in engine.take_commands() if isinstance(c, LogEvent)]
    assert ("proplet_dead", "warning") in logs


def _leave_commands(engine_type: Any) -> list[Any]:
    from proplets.core import PropletConfig

    proplet = engine_type(PropletConfig(proplet_id="p1", domain="d1", channel="c1", namespace="default"))
    proplet.on_connected(0.0)
    proplet.take_commands()
    proplet.shutting_down(1.0)
    return list(proplet.take_commands())


def test_silence_past_the_liveness_timeout_marks_dead_three_intervals_by_default() -> None:
    engine = make_engine()
    heartbeat(engine, "p1", 0.0)
    assert engine.next_deadline() == 30.0
    engine.on_timer(29.9, 0)
    assert engine.proplets["p1"].alive
    engine.on_timer(30.0, 0)
    assert not engine.proplets["p1"].alive


def test_superseded_attempt_result_does_not_override_the_newer_attempt() -> None:
    engine = make_engine()
    heartbeat(engine, "p1", 0.0)
    task_id = submit(engine, 1.0)
    heartbeat(engine, "p2", 1.0)
    heartbeat(engine, "p1", 2.0, status="offline")
    assert engine.tasks[task_id].proplet_id == "p2"
    send(engine, T.results, {"task_id": task_id, "proplet_id": "p1", "results": "1", "attempt": 1}, 3.0)
    assert engine.tasks[task_id].state is TaskState.RUNNING
    send(engine, T.results, {"task_id": task_id, "proplet_id": "p2", "results": "42", "attempt": 2}, 4.0)
    assert engine.tasks[task_id].state is TaskState.COMPLETED and engine.tasks[task_id].results == "42"


def test_bounded_retries_then_failed_with_the_reason() -> None:
    engine = make_engine(max_attempts=2)
    heartbeat(engine, "p1", 0.0)
    task_id = submit(engine, 1.0, max_attempts=2)
    heartbeat(engine, "p1", 2.0, status="offline")
    heartbeat(engine, "p1", 3.0)  # back: attempt 2
    assert engine.tasks[task_id].attempt == 2
    heartbeat(engine, "p1", 4.0, status="offline")
    task = engine.tasks[task_id]
    assert task.state is TaskState.FAILED
    assert "died" in task.error and "2/2" in task.error


def test_task_waits_without_proplets_and_is_dispatched_when_one_arrives() -> None:
    engine = make_engine()
    task_id = submit(engine, 0.0)
    assert engine.tasks[task_id].state is TaskState.SCHEDULED
    assert engine.tasks[task_id].error == "no alive proplet"
    assert not publishes(engine.take_commands(), T.start)
    heartbeat(engine, "p1", 5.0)
    assert [s["id"] for s in publishes(engine.take_commands(), T.start)] == [task_id]


def test_queue_timeout_fails_a_waiting_task_with_the_reason() -> None:
    engine = make_engine(queue_timeout=5.0)
    task_id = submit(engine, 0.0)
    assert engine.next_deadline() == 5.0
    engine.on_timer(5.0, 0)
    assert engine.tasks[task_id].state is TaskState.FAILED
    assert engine.tasks[task_id].error == "not dispatched within 5 s: no alive proplet"


def test_higher_priority_waits_less() -> None:
    engine = make_engine()
    low = submit(engine, 0.0, priority=10)
    high = submit(engine, 1.0, priority=90)
    heartbeat(engine, "p1", 2.0)
    assert [s["id"] for s in publishes(engine.take_commands(), T.start)] == [high, low]


def test_malformed_messages_are_counted_per_topic_and_dropped() -> None:
    engine = make_engine()
    for topic in (T.alive, T.create, T.results):
        send(engine, topic, b"\xff not json", 0.0)
    send(engine, T.results, {"task_id": 7}, 0.0)
    assert engine.malformed == {
        "control/proplet/alive": 1,
        "control/proplet/create": 1,
        "control/proplet/results": 2,
    }
    assert engine.tasks == {} and engine.proplets == {}


def test_targeted_start_errors_name_the_problem() -> None:
    engine = make_engine()
    task = engine.create_task({"name": "add", "image_url": "http://x/a.wasm", "proplet_id": "ghost"}, 0)
    with pytest.raises(NotFound, match="proplet ghost not found"):
        engine.start_task(task.id, 0, 0)
    heartbeat(engine, "p1", 0.0)
    heartbeat(engine, "p1", 1.0, status="offline")
    pinned = engine.create_task({"name": "add", "image_url": "http://x/a.wasm", "proplet_id": "p1"}, 0)
    with pytest.raises(Conflict, match="not alive"):
        engine.start_task(pinned.id, 1, 1)
    assert engine.tasks[pinned.id].state is TaskState.PENDING


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({}, "name"),
        ({"name": "x", "priority": 101}, "priority"),
        ({"name": "x", "broadcast": True, "proplet_id": "p"}, "broadcast"),
        ({"name": "x", "file": "***"}, "file"),
        ({"name": "x", "inputs": [True]}, "inputs[0]"),
        ({"name": "x", "bogus": 1}, "bogus"),
        ({"name": "x", "limits": {"fuel": -1}}, "limits.fuel"),
    ],
)
def test_bad_task_specs_are_rejected_naming_the_field(spec: dict[str, Any], field: str) -> None:
    engine = make_engine()
    with pytest.raises(ValidationError) as err:
        engine.create_task(spec, 0)
    assert err.value.field == field
    assert engine.tasks == {}


def test_stop_interrupts_and_sends_a_payload_both_proplet_kinds_accept() -> None:
    engine = make_engine()
    heartbeat(engine, "p1", 0.0)
    task_id = submit(engine, 1.0)
    engine.take_commands()
    engine.stop_task(task_id, 0)
    (stop,) = publishes(engine.take_commands(), T.stop)
    assert stop["id"] == task_id and stop["proplet_id"] == "p1"
    assert isinstance(stop["name"], str) and isinstance(stop["state"], str)
    assert engine.tasks[task_id].state is TaskState.INTERRUPTED
    send(engine, T.results, {"task_id": task_id, "results": "", "error": "Task was cancelled"}, 2.0)
    assert engine.tasks[task_id].state is TaskState.INTERRUPTED


def restarted_with_two_running() -> tuple[Engine, str, str]:
    """A manager restored at 100 from a store where tasks a and b run on p1 and p2."""
    engine = make_engine()
    heartbeat(engine, "p1", 0.0)
    heartbeat(engine, "p2", 0.0)
    a, b = submit(engine, 1.0), submit(engine, 1.0)
    restarted = make_engine()
    restarted.restore([engine.tasks[a], engine.tasks[b]], list(engine.proplets.values()), now=100.0)
    return restarted, a, b


def test_restore_gives_running_tasks_one_timeout_for_their_proplet_to_return() -> None:
    restarted, a, b = restarted_with_two_running()
    restarted.link_restored(100.5, 0)
    heartbeat(restarted, "p1", 110.0)  # p1 survived the manager restart; p2 did not
    restarted.take_commands()
    restarted.on_timer(131.0, 0)  # a timeout after the connect
    assert restarted.tasks[a].state is TaskState.RUNNING and restarted.tasks[a].proplet_id == "p1"
    starts = publishes(restarted.take_commands(), T.start)
    assert [(s["id"], s["proplet_id"]) for s in starts] == [(b, "p1")]


def test_the_grace_after_restore_counts_from_the_broker_connect_not_the_restore() -> None:
    # A standby's takeover under load: the store is read at 100 but the broker answers only at 150,
    # after more than a liveness timeout (30 s). Proplets cannot be heard before the connect, so their
    # tasks stay theirs until a timeout has passed since then.
    restarted, a, b = restarted_with_two_running()
    restarted.on_timer(149.0, 0)
    assert not publishes(restarted.take_commands(), T.start)
    restarted.link_restored(150.0, 0)
    restarted.take_commands()
    heartbeat(restarted, "p1", 150.2)
    heartbeat(restarted, "p2", 150.3)
    restarted.on_timer(151.0, 0)
    assert not publishes(restarted.take_commands(), T.start)
    assert {restarted.tasks[a].proplet_id, restarted.tasks[b].proplet_id} == {"p1", "p2"}
    heartbeat(restarted, "p1", 170.0)
    restarted.on_timer(181.0, 0)  # p2 silent for a timeout since its last heartbeat: its task moves
    starts = publishes(restarted.take_commands(), T.start)
    assert [s["proplet_id"] for s in starts] == ["p1"]


def test_after_restore_a_task_missing_from_heartbeats_is_lost_only_a_quiet_time_after_the_connect() -> None:
    # Its result may still be in the session the broker kept for us: heartbeats that do not list the
    # task right after the connect do not make it a lost start; two heartbeat intervals later they do.
    restarted, a, b = restarted_with_two_running()
    restarted.link_restored(150.0, 0)
    restarted.take_commands()
    for proplet_id in ("p1", "p2"):  # neither lists its task
        send(restarted, T.alive, {"proplet_id": proplet_id, "status": "alive", "running": []}, 151.0)
    assert not publishes(restarted.take_commands(), T.start)
    assert restarted.tasks[a].state is TaskState.RUNNING and restarted.tasks[b].state is TaskState.RUNNING
    (on_p1,) = restarted.running_on("p1")
    attempt, counted = on_p1.attempt, on_p1.attempts_counted
    send(restarted, T.alive, {"proplet_id": "p1", "status": "alive", "running": []}, 171.0)
    starts = publishes(restarted.take_commands(), T.start)
    assert [s["id"] for s in starts] == [on_p1.id]  # its start was lost: sent again, a new number
    assert starts[0]["attempt"] == attempt + 1
    assert restarted.tasks[on_p1.id].attempts_counted == counted  # without spending an attempt


def test_embedded_proplets_get_numeric_inputs() -> None:
    engine = make_engine()
    send(
        engine,
        T.create,
        {"proplet_id": "esp", "namespace": "embedded", "metadata": {"os": "zephyr", "wasm_runtime": "wamr"}},
        0.0,
    )
    engine.take_commands()
    submit(engine, 1.0)
    (start,) = publishes(engine.take_commands(), T.start)
    assert start["inputs"] == [2, 40]


def test_a_task_without_a_module_cannot_start() -> None:
    engine = make_engine()
    task = engine.create_task({"name": "x"}, 0)
    with pytest.raises(ValidationError, match="file or image_url") as err:
        engine.start_task(task.id, 0, 0)
    assert err.value.field == "file" and task.state is TaskState.PENDING


def test_illegal_transition_raises_and_leaves_state_unchanged() -> None:
    with pytest.raises(IllegalTransition):
        next_state(TaskState.COMPLETED, Trigger.COMPLETE)
    engine = make_engine()
    task = engine.create_task({"name": "x"}, 0)
    with pytest.raises(Conflict):
        engine.stop_task(task.id, 0)
    assert task.state is TaskState.PENDING


def test_a_task_its_proplet_no_longer_reports_is_redispatched_without_spending_an_attempt() -> None:
    engine = make_engine()
    heartbeat(engine, "p1", 0.0)
    task_id = submit(engine, 1.0)
    send(engine, T.alive, {"proplet_id": "p1", "status": "alive", "running": []}, 5.0)  # start in flight
    assert engine.tasks[task_id].attempt == 1
    engine.take_commands()
    send(engine, T.alive, {"proplet_id": "p1", "status": "alive", "running": []}, 25.0)
    (start,) = publishes(engine.take_commands(), T.start)
    # The start was lost: nothing ran, so the attempt does not count; the new start has a new number.
    assert start["id"] == task_id and start["attempt"] == 2
    send(engine, T.alive, {"proplet_id": "p1", "status": "alive", "running": [task_id]}, 50.0)
    task = engine.tasks[task_id]
    assert task.attempt == 2 and task.attempts_counted == 1 and task.state is TaskState.RUNNING


def _module_with_pages(pages: int) -> str:
    # magic, version, memory section (id 5): one memory, flags 0 (min only), min = pages
    body = bytes([1, 0, pages])
    return base64.b64encode(WASM + bytes([5, len(body)]) + body).decode()


def test_memory_aware_placement_never_sends_a_task_where_it_cannot_fit() -> None:
    from orchestrator.core.placement import MostFreeMemory

    engine = Engine(EngineConfig(domain="d1", channel="c1"), policy=MostFreeMemory())
    for pid, free in (("small", 100_000), ("big", 300_000)):
        send(engine, T.create, {"proplet_id": pid, "metadata": {"free_memory_bytes": free}}, 0.0)
    engine.take_commands()
    ids = []
    for _ in range(6):  # each declares one 64 KiB page: 4 fit on big, 1 on small, 1 must wait
        task = engine.create_task({"name": "main", "file": _module_with_pages(1)}, 0)
        assert task.memory_bytes == 65536
        engine.start_task(task.id, 1.0, 1.0)
        ids.append(task.id)
    placed = [engine.tasks[i].proplet_id for i in ids[:5]]
    assert placed.count("big") == 4 and placed.count("small") == 1
    waiting = engine.tasks[ids[-1]]
    assert waiting.state is TaskState.SCHEDULED and "no proplet can fit" in waiting.error
    send(engine, T.results, {"task_id": ids[0], "proplet_id": placed[0], "results": "0"}, 2.0)
    assert waiting.state is TaskState.RUNNING


def test_out_of_memory_result_places_the_task_again_elsewhere() -> None:
    engine = make_engine()
    heartbeat(engine, "p1", 0.0)
    heartbeat(engine, "p2", 0.0)
    engine.take_commands()
    task_id = submit(engine, 1.0)
    first = engine.tasks[task_id].proplet_id
    send(
        engine,
        T.results,
        {"task_id": task_id, "proplet_id": first, "results": "", "error": "out of memory: need 9, free 1"},
        2.0,
    )
    task = engine.tasks[task_id]
    # Nothing ran on the first proplet: placed elsewhere; the attempt does not count.
    assert task.state is TaskState.RUNNING and task.proplet_id != first
    assert task.attempt == 2 and task.attempts_counted == 1


def test_while_our_broker_link_is_down_nobody_is_declared_dead_and_nothing_dispatched() -> None:
    engine = make_engine()
    heartbeat(engine, "p1", 0.0)
    engine.take_commands()
    engine.link_lost(5.0)
    task_id = submit(engine, 6.0)
    engine.on_timer(100.0, 0)
    assert engine.proplets["p1"].alive
    assert engine.tasks[task_id].state is TaskState.SCHEDULED
    assert not publishes(engine.take_commands(), T.start)
    engine.link_restored(101.0, 0)
    assert [s["id"] for s in publishes(engine.take_commands(), T.start)] == [task_id]
    # Proplets reconnect with a backoff that grew with the outage (96 s, capped at 30 s): they get
    # that on top of a full liveness timeout after the link came back, still no heartbeat.
    engine.on_timer(160.0, 0)
    assert engine.proplets["p1"].alive
    engine.on_timer(161.0, 0)
    assert not engine.proplets["p1"].alive


def test_a_persisted_task_is_a_copy_the_engine_does_not_change_afterwards() -> None:
    task = Task(id="t", name="add", inputs=[1, 2], metadata={"k": "v"}, results={"p1": "3"}, env={"A": "1"})
    copy = snapshot(task)
    assert copy == task and copy is not task
    task.state = TaskState.RUNNING
    task.inputs.append(3)
    task.results["p2"] = "4"  # a broadcast's per-proplet results: mutated in place
    task.env["B"] = "2"
    task.attempt += 1
    assert copy.state is TaskState.PENDING and copy.inputs == [1, 2] and copy.results == {"p1": "3"}
    assert copy.env == {"A": "1"} and copy.attempt == 0 and copy.metadata == {"k": "v"}
