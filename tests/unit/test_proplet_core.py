"""The proplet engine, driven by hand: announces, heartbeats on time, filters targets, reports results."""

from __future__ import annotations

import json
from typing import Any

from orchestrator import wire
from proplets.core import CancelTask, PropletConfig, PropletEngine, Publish, RunTask, Subscribe

T = wire.Topics("d", "c")


def engine(**kw: Any) -> PropletEngine:
    return PropletEngine(
        PropletConfig(proplet_id="me", domain="d", channel="c", heartbeat_interval=5.0, **kw)
    )


def connected(**kw: Any) -> PropletEngine:
    """An engine on the broker, its connect-time announcements taken."""
    e = engine(**kw)
    e.on_connected(0.0)
    e.take_commands()
    return e


def published(commands: list[Any], topic: str) -> list[dict[str, Any]]:
    return [json.loads(c.payload) for c in commands if isinstance(c, Publish) and c.topic == topic]


def start(task_id: str, target: str = "me", attempt: int = 3) -> bytes:
    return json.dumps(
        {
            "id": task_id,
            "name": "add",
            "file": "AGFzbQEAAAA=",
            "inputs": ["1", "2"],
            "cli_args": None,
            "proplet_id": target,
            "attempt": attempt,
        }
    ).encode()


def test_connect_subscribes_announces_and_heartbeats_at_once() -> None:
    e = engine()
    e.on_connected(0.0)
    commands = e.take_commands()
    subscribed = {c.topic for c in commands if isinstance(c, Subscribe)}
    assert subscribed == {*T.proplet_subscriptions, T.discover, T.start_for("me")}
    (discovery,) = published(commands, T.create)
    assert discovery["proplet_id"] == "me"
    assert discovery["metadata"]["direct_start"] is True
    assert published(commands, T.alive) == [
        {"proplet_id": "me", "status": "alive", "namespace": "default", "running": []}
    ]
    assert e.next_deadline() == 5.0


def test_heartbeats_keep_their_interval_while_a_task_runs() -> None:
    e = engine()
    e.on_connected(0.0)
    e.handle(T.start, start("t1"), 1.0)
    e.take_commands()
    for now in (5.0, 10.0, 15.0):
        e.on_timer(now)
    beats = published(e.take_commands(), T.alive)
    assert len(beats) == 3 and all(b["running"] == ["t1"] for b in beats)
    assert "t1" in e.running


def test_start_for_another_proplet_is_ignored_but_untargeted_runs() -> None:
    e = connected()
    e.handle(T.start, start("other", target="someone-else"), 1.0)
    e.handle(T.start, start("mine", target=""), 1.0)
    broadcast = {**json.loads(start("everyone", target="someone-else")), "broadcast": True}
    e.handle(T.start, json.dumps(broadcast).encode(), 1.0)
    runs = [c.start.id for c in e.take_commands() if isinstance(c, RunTask)]
    assert runs == ["mine", "everyone"]
    assert e.counters["starts_for_others"] == 1 and "other" not in e.running


def test_a_malformed_start_for_me_still_fails_with_the_reason() -> None:
    e = connected()
    bad = {**json.loads(start("t1")), "inputs": "not a list"}
    e.handle(T.start, json.dumps(bad).encode(), 1.0)
    (result,) = published(e.take_commands(), T.results)
    assert result["task_id"] == "t1" and "invalid start request" in result["error"]
    assert "inputs" in result["error"]


def test_upstream_firmware_configuration_runs_every_start_and_ignores_stops() -> None:
    # Upstream's firmware (reference §9): no target filter, a running module cannot be stopped.
    e = engine(filter_target=False, honour_stop=False)
    e.on_connected(0.0)
    e.take_commands()
    e.handle(T.start, start("other", target="someone-else"), 1.0)
    e.handle(T.stop, b'{"id": "other"}', 2.0)
    commands = e.take_commands()
    assert [c.start.id for c in commands if isinstance(c, RunTask)] == ["other"]
    assert not [c for c in commands if isinstance(c, CancelTask)]
    assert e.counters["stops_ignored"] == 1 and "other" in e.running


def test_result_carries_proplet_id_and_attempt_and_duplicate_start_is_ignored() -> None:
    e = engine()
    e.on_connected(0.0)
    e.handle(T.start, start("t1"), 1.0)
    e.handle(T.start, start("t1"), 1.5)
    assert len([c for c in e.take_commands() if isinstance(c, RunTask)]) == 1
    e.task_finished("t1", "3", None, 2.0)
    (result,) = published(e.take_commands(), T.results)
    assert result == {"task_id": "t1", "proplet_id": "me", "results": "3", "error": None, "attempt": 3}


def test_stop_with_only_an_id_cancels_and_the_result_says_stopped() -> None:
    e = engine()
    e.on_connected(0.0)
    e.handle(T.start, start("t1"), 1.0)
    e.handle(T.stop, b'{"id": "t1"}', 2.0)
    assert [c for c in e.take_commands() if isinstance(c, CancelTask)] == [CancelTask("t1")]
    e.task_finished("t1", "", "interrupted", 2.1)
    (result,) = published(e.take_commands(), T.results)
    assert result["error"] == "task t1 was stopped before completion"


def test_results_finished_while_disconnected_are_sent_after_reconnect() -> None:
    e = engine()
    e.on_connected(0.0)
    e.handle(T.start, start("t1"), 1.0)
    e.on_disconnected(2.0)
    e.take_commands()
    e.task_finished("t1", "3", None, 3.0)
    assert not published(e.take_commands(), T.results)
    assert e.next_deadline() is None
    e.on_connected(4.0)
    assert [r["task_id"] for r in published(e.take_commands(), T.results)] == ["t1"]


def test_busy_proplet_refuses_with_a_clear_error() -> None:
    e = engine(max_instances=1)
    e.on_connected(0.0)
    e.handle(T.start, start("t1"), 1.0)
    e.handle(T.start, start("t2"), 1.0)
    (result,) = published(e.take_commands(), T.results)
    assert result["task_id"] == "t2" and result["error"] == "proplet busy: 1/1 instances running"


def test_malformed_start_for_me_gets_an_error_result_and_garbage_is_counted() -> None:
    e = connected()
    e.handle(T.start, b'{"id": "t9", "proplet_id": "me"}', 1.0)  # no name, no module
    e.handle(T.start, b"\x00\xff", 1.0)
    (result,) = published(e.take_commands(), T.results)
    assert result["task_id"] == "t9" and "invalid start request" in result["error"]
    assert e.malformed == 2


def test_last_will_is_an_offline_heartbeat() -> None:
    topic, payload = engine().last_will()
    assert topic == T.alive
    assert json.loads(payload) == {"proplet_id": "me", "status": "offline", "namespace": "default"}


def test_latent_task_answers_invocations_once_deployed() -> None:
    from proplets.core import InvokeTask

    e = engine()
    e.on_connected(0.0)
    latent = json.dumps({"id": "lt", "name": "add", "file": "AGFzbQEAAAA=", "latent": True}).encode()
    invoke = json.dumps(
        {"id": "lt", "invocation_id": "i1", "inputs": ["1", "2"], "proplet_id": "me"}
    ).encode()
    e.handle(T.invoke, invoke, 0.5)
    (early,) = published(e.take_commands(), T.invoke_results)
    assert "has not been precompiled" in early["error"]
    e.handle(T.start, latent, 1.0)
    e.deployed("lt")
    e.take_commands()
    e.handle(T.invoke, invoke, 2.0)
    (call,) = [c for c in e.take_commands() if isinstance(c, InvokeTask)]
    assert call.invoke.invocation_id == "i1" and call.invoke.inputs == ("1", "2")
    e.invocation_finished("lt", "i1", "3", None)
    (answer,) = published(e.take_commands(), T.invoke_results)
    assert answer == {
        "task_id": "lt",
        "invocation_id": "i1",
        "proplet_id": "me",
        "results": "3",
        "error": None,
    }


def test_stopping_a_deployed_latent_task_ends_it_at_once() -> None:
    e = engine()
    e.on_connected(0.0)
    e.handle(
        T.start, json.dumps({"id": "lt", "name": "add", "file": "AGFzbQEAAAA=", "latent": True}).encode(), 1.0
    )
    e.deployed("lt")
    e.take_commands()
    e.handle(T.stop, b'{"id": "lt"}', 2.0)
    commands = e.take_commands()
    assert CancelTask("lt") in commands
    (result,) = published(commands, T.results)
    assert result["task_id"] == "lt" and "stopped" in result["error"]
    assert "lt" not in e.running


def test_busy_refusal_is_marked_on_the_wire_so_no_attempt_is_spent() -> None:
    e = engine(max_instances=1)
    e.on_connected(0.0)
    e.handle(T.start, start("t1"), 1.0)
    e.handle(T.start, start("t2"), 1.0)
    (result,) = published(e.take_commands(), T.results)
    assert result["refused"] == "busy" and result["attempt"] == 3


def test_a_stop_for_another_attempt_leaves_the_running_one_alone() -> None:
    e = engine()
    e.on_connected(0.0)
    e.handle(T.start, start("t1"), 1.0)  # attempt 3
    e.take_commands()
    stop = {"id": "t1", "name": "add", "state": "Interrupted", "proplet_id": "me", "broadcast": False}
    e.handle(T.stop, json.dumps({**stop, "attempt": 2}).encode(), 2.0)
    assert not [c for c in e.take_commands() if isinstance(c, CancelTask)]
    e.handle(T.stop, json.dumps({**stop, "attempt": 3}).encode(), 3.0)
    assert [c.task_id for c in e.take_commands() if isinstance(c, CancelTask)] == ["t1"]


def test_a_discovery_request_makes_the_proplet_announce_itself_again() -> None:
    e = connected()
    e.handle(T.discover, json.dumps({"proplet_id": "other"}).encode(), 1.0)
    assert not published(e.take_commands(), T.create)
    e.handle(T.discover, json.dumps({"proplet_id": "me"}).encode(), 2.0)
    (announcement,) = published(e.take_commands(), T.create)
    assert announcement["proplet_id"] == "me"


def test_results_published_just_before_a_disconnect_are_sent_again_but_refusals_are_not() -> None:
    e = engine(max_instances=1, result_resend_window=30.0)
    e.on_connected(0.0)
    e.handle(T.start, start("old"), 1.0)
    e.task_finished("old", "1", None, 2.0)
    e.handle(T.start, start("t1"), 50.0)
    e.handle(T.start, start("busy"), 50.0)  # refused: max_instances=1
    e.task_finished("t1", "3", None, 60.0)
    e.take_commands()
    e.on_disconnected(61.0)  # the broker died: "t1" may be lost with it; "old" is long delivered
    e.on_connected(70.0)
    assert [r["task_id"] for r in published(e.take_commands(), T.results)] == ["t1"]


def test_a_broadcast_discovery_request_re_sends_recent_results_too() -> None:
    e = engine(result_resend_window=30.0)
    e.on_connected(0.0)
    e.handle(T.start, start("t1"), 1.0)
    e.on_disconnected(2.0)
    e.task_finished("t1", "3", None, 3.0)  # held: the link is down
    e.on_connected(4.0)  # sent now, but the manager may not be subscribed yet
    assert [r["task_id"] for r in published(e.take_commands(), T.results)] == ["t1"]
    e.handle(T.discover, json.dumps({"proplet_id": ""}).encode(), 5.0)  # the manager is back
    commands = e.take_commands()
    assert [r["task_id"] for r in published(commands, T.results)] == ["t1"]
    assert published(commands, T.create)


def test_a_new_attempt_of_a_task_running_here_is_answered_by_the_run_in_progress() -> None:
    # The manager gave up on attempt 3 (it thought the start lost) and placed attempt 4 here: one run,
    # whose result answers attempt 4; a stop still aimed at attempt 3 no longer ends it.
    e = connected()
    e.handle(T.start, start("t1", attempt=3), 1.0)
    e.handle(T.start, start("t1", attempt=4), 2.0)
    e.handle(T.stop, json.dumps({"id": "t1", "proplet_id": "me", "attempt": 3}).encode(), 3.0)
    commands = e.take_commands()
    assert [c.start.attempt for c in commands if isinstance(c, RunTask)] == [3]  # not run twice
    assert not [c for c in commands if isinstance(c, CancelTask)]
    e.task_finished("t1", "3", None, 4.0)
    (result,) = published(e.take_commands(), T.results)
    assert result["attempt"] == 4 and result["results"] == "3" and not result.get("error")


def test_a_new_attempt_of_a_task_being_stopped_here_is_refused_not_answered_by_the_stop() -> None:
    e = connected()
    e.handle(T.start, start("t1", attempt=3), 1.0)
    e.handle(T.stop, json.dumps({"id": "t1", "proplet_id": "me", "attempt": 3}).encode(), 2.0)
    e.handle(T.start, start("t1", attempt=4), 3.0)
    (refused,) = published(e.take_commands(), T.results)
    assert refused["attempt"] == 4 and refused["refused"] == wire.refusals.BUSY
    assert "still stopping attempt 3" in refused["error"]
    e.task_finished("t1", "", "stopped", 4.0)
    (stopped,) = published(e.take_commands(), T.results)
    assert stopped["attempt"] == 3 and "stopped" in stopped["error"]


def test_the_same_start_twice_runs_once_and_an_older_one_changes_nothing() -> None:
    e = connected()
    e.handle(T.start, start("t1", attempt=3), 1.0)
    e.handle(T.start, start("t1", attempt=3), 2.0)
    e.handle(T.start, start("t1", attempt=2), 2.5)  # an older start delivered again
    without = {k: v for k, v in json.loads(start("t1")).items() if k != "attempt"}
    e.handle(T.start, json.dumps(without).encode(), 2.6)  # as an upstream manager sends it: no attempt
    assert [c.start.id for c in e.take_commands() if isinstance(c, RunTask)] == ["t1"]
    assert e.counters["duplicate_starts"] == 3
    e.task_finished("t1", "3", None, 3.0)
    (result,) = published(e.take_commands(), T.results)
    assert result["attempt"] == 3
