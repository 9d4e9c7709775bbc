"""Starts sent to one proplet alone (our extension of upstream's wire, orchestrator/wire/topics.py).

Upstream's start topic is read by every proplet of the channel. A proplet of ours also reads its own
topic and says so in its discovery (``direct_start``); the manager then sends it its starts there, and
keeps the shared topic for proplets that did not say so (upstream's, the firmware) and for broadcasts.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from orchestrator import wire
from orchestrator.core.commands import Publish as ManagerPublish
from orchestrator.core.model import TaskState
from proplets.core import PropletConfig, PropletEngine, RunTask, Subscribe
from proplets.core import Publish as PropletPublish
from tests.unit.test_engine import T, heartbeat, make_engine, send, submit


def announce(engine: Any, proplet_id: str, now: float, **metadata: Any) -> None:
    send(engine, T.create, {"proplet_id": proplet_id, "namespace": "default", "metadata": metadata}, now)


def starts(engine: Any) -> list[tuple[str, str]]:
    """(topic, proplet_id) of every start the manager sent."""
    return [
        (c.topic, json.loads(c.payload).get("proplet_id", ""))
        for c in engine.take_commands()
        if isinstance(c, ManagerPublish) and T.is_start(c.topic)
    ]


def announced(commands: list[Any]) -> dict[str, Any]:
    (create,) = [c.payload for c in commands if isinstance(c, PropletPublish) and c.topic == T.create]
    return json.loads(create)  # type: ignore[no-any-return]


def device(proplet_id: str, **kw: Any) -> PropletEngine:
    return PropletEngine(PropletConfig(proplet_id=proplet_id, domain="d1", channel="c1", **kw))


def test_an_observer_decodes_a_start_sent_to_one_proplet_as_a_start() -> None:
    start = wire.StartTask(id="t1", name="add", file=b"\x00asm", proplet_id="p1")
    assert wire.decode(T, T.start_for("p1"), wire.encode(start)) == wire.decode(
        T, T.start, wire.encode(start)
    )


def test_topic_of_one_proplet_and_what_counts_as_a_start_topic() -> None:
    assert T.start_for("p-1.a:b@c") == "m/d1/c/c1/control/manager/start/p-1.a:b@c"
    assert T.is_start(T.start) and T.is_start(T.start_for("p1"))
    assert (
        not T.is_start(T.stop)
        and not T.is_start(T.start + "x")
        and not T.is_start("m/x/c/y/control/manager/start")
    )
    for bad in ("", "a/b", "a+", "a#", "a\x00"):
        assert not wire.direct_start_ok(bad)
        with pytest.raises(ValueError, match="cannot name a topic level"):
            T.start_for(bad)


def test_a_proplet_reads_its_own_topic_before_it_announces_that_it_does() -> None:
    p1 = device("p1")
    p1.on_connected(0.0)
    commands = p1.take_commands()
    order = [c.topic for c in commands if isinstance(c, Subscribe | PropletPublish)]
    assert order.index(T.start_for("p1")) < order.index(T.create)
    (create,) = [
        json.loads(c.payload) for c in commands if isinstance(c, PropletPublish) and c.topic == T.create
    ]
    assert create["metadata"]["direct_start"] is True


@pytest.mark.parametrize(
    "config",
    [
        {"proplet_id": "p/1"},  # cannot be one topic level
        {"proplet_id": "p1", "direct_start": False},
        {"proplet_id": "p1", "profile": wire.Profile.EMBEDDED},  # the firmware's subscriptions
        {"proplet_id": "p1", "filter_target": False},  # upstream firmware, twinned
    ],
)
def test_proplets_that_keep_upstreams_subscriptions_do_not_announce_a_topic(config: dict[str, Any]) -> None:
    p = PropletEngine(PropletConfig(domain="d1", channel="c1", **config))
    p.on_connected(0.0)
    commands = p.take_commands()
    assert not [c for c in commands if isinstance(c, Subscribe) and c.topic.startswith(T.start + "/")]
    (create,) = [
        json.loads(c.payload) for c in commands if isinstance(c, PropletPublish) and c.topic == T.create
    ]
    assert "direct_start" not in create["metadata"]


def test_the_manager_sends_a_start_to_its_proplets_own_topic_only_when_announced() -> None:
    engine = make_engine()
    announce(engine, "ours", 0.0, direct_start=True)
    heartbeat(engine, "ours", 0.0)
    heartbeat(engine, "upstream", 0.0)  # known from heartbeats only: upstream's wire
    engine.take_commands()
    for _ in range(4):
        submit(engine, 1.0)
    assert sorted(starts(engine)) == sorted([(T.start_for("ours"), "ours"), (T.start, "upstream")] * 2)
    # It announces again without the extension (an older build, same id): back to the shared topic.
    announce(engine, "ours", 2.0)
    engine.take_commands()
    for _ in range(2):
        submit(engine, 3.0)
    assert sorted(starts(engine)) == [(T.start, "ours"), (T.start, "upstream")]


@pytest.mark.parametrize("odd", ["a/b", "p+", "p#", "/", "x/"])
def test_an_id_that_cannot_be_a_topic_level_keeps_the_shared_topic_whatever_it_announces(odd: str) -> None:
    engine = make_engine()
    announce(engine, odd, 0.0, direct_start=True)
    heartbeat(engine, odd, 0.0)
    engine.take_commands()
    submit(engine, 1.0)
    assert starts(engine) == [(T.start, odd)]


@pytest.mark.parametrize("value", ["yes", 1, 0, None, [], {}])
def test_an_announcement_whose_direct_start_is_not_a_boolean_is_refused_naming_the_field(value: Any) -> None:
    """Not taken as true (a forged "yes" must not move a proplet's starts): the whole announcement is
    refused as malformed, naming the field, and the proplet keeps the shared topic."""
    engine = make_engine()
    send(engine, T.create, {"proplet_id": "p1", "metadata": {"direct_start": value}}, 0.0)
    heartbeat(engine, "p1", 0.0)
    assert sum(engine.malformed.values()) == (0 if value is None else 1)  # JSON null: the key is absent
    engine.take_commands()
    submit(engine, 1.0)
    assert starts(engine) == [(T.start, "p1")]
    with pytest.raises(wire.CodecError, match=r"metadata\.direct_start"):
        wire.encode(wire.Discovery("p1", "ns", {"direct_start": "yes"}))


def test_a_broadcast_task_still_goes_to_the_shared_topic() -> None:
    engine = make_engine()
    for pid in ("a", "b"):
        announce(engine, pid, 0.0, direct_start=True)
        heartbeat(engine, pid, 0.0)
    engine.take_commands()
    submit(engine, 1.0, broadcast=True)
    assert starts(engine) == [(T.start, "")]


def test_a_direct_start_runs_once_on_its_proplet_and_is_never_seen_by_the_others() -> None:
    """Manager and two proplet cores with the messages carried as a broker would: by subscription."""
    engine = make_engine()
    fleet = {pid: device(pid) for pid in ("p1", "p2")}
    subscriptions: dict[str, set[str]] = {pid: set() for pid in fleet}

    def from_proplets(now: float) -> None:
        for pid, p in fleet.items():
            for c in p.take_commands():
                if isinstance(c, Subscribe):
                    subscriptions[pid].add(c.topic)
                elif isinstance(c, PropletPublish):
                    send(engine, c.topic, c.payload, now)

    for p in fleet.values():
        p.on_connected(0.0)
    from_proplets(0.0)
    engine.take_commands()
    ids = [submit(engine, 1.0) for _ in range(4)]
    ran: dict[str, list[str]] = {pid: [] for pid in fleet}
    for c in engine.take_commands():
        if not isinstance(c, ManagerPublish):
            continue
        for pid, p in fleet.items():
            if c.topic in subscriptions[pid]:
                p.handle(c.topic, c.payload, 2.0)
    for pid, p in fleet.items():
        ran[pid] = [c.start.id for c in p.take_commands() if isinstance(c, RunTask)]
        for task_id in ran[pid]:
            p.task_finished(task_id, "3", None, 2.5)
    from_proplets(3.0)
    assert sorted(ran["p1"] + ran["p2"]) == sorted(ids) and ran["p1"] and ran["p2"]
    assert all(p.counters.get("starts_for_others", 0) == 0 for p in fleet.values())
    assert [engine.tasks[i].state for i in ids] == [TaskState.COMPLETED] * 4, [
        engine.tasks[i].error for i in ids
    ]


def test_a_proplet_whose_own_topic_never_reaches_it_gets_the_shared_topic_and_loses_nothing() -> None:
    """A broker ACL written before direct starts grants the subscription but delivers nothing: the first
    start sent there is lost (the heartbeat does not list it), so it and the next go to the shared topic,
    without spending an attempt; a fresh announcement tries the proplet's own topic again."""
    engine = make_engine()
    announce(engine, "p1", 0.0, direct_start=True)
    heartbeat(engine, "p1", 0.0)
    engine.take_commands()
    first = submit(engine, 1.0)
    assert starts(engine) == [(T.start_for("p1"), "p1")]
    send(engine, T.alive, {"proplet_id": "p1", "status": "alive", "running": []}, 30.0)  # never arrived
    assert starts(engine) == [(T.start, "p1")]  # placed again, on the shared topic
    task = engine.tasks[first]
    assert task.state is TaskState.RUNNING and task.attempt - task.uncounted_attempts == 1
    assert engine.counters["direct_start_unreachable"] == 1
    submit(engine, 31.0)
    assert starts(engine) == [(T.start, "p1")]
    heartbeat(engine, "p1", 100.0)  # gone quiet and back: not a fresh announcement
    announce(engine, "p1", 200.0, direct_start=True, description="restarted")
    engine.take_commands()
    submit(engine, 201.0)
    assert starts(engine) == [(T.start_for("p1"), "p1")]


def test_a_lost_start_of_a_proplet_that_has_answered_on_its_own_topic_keeps_that_topic() -> None:
    """Starts get lost for other reasons (a broker restart): a proplet that once answered a start sent
    to its own topic keeps it."""
    engine = make_engine()
    announce(engine, "p1", 0.0, direct_start=True)
    heartbeat(engine, "p1", 0.0)
    engine.take_commands()
    first = submit(engine, 1.0)
    starts(engine)
    send(engine, T.alive, {"proplet_id": "p1", "status": "alive", "running": [first]}, 5.0)  # it runs
    second = submit(engine, 6.0)
    assert starts(engine) == [(T.start_for("p1"), "p1")]
    send(engine, T.alive, {"proplet_id": "p1", "status": "alive", "running": [first]}, 40.0)  # second lost
    assert starts(engine) == [(T.start_for("p1"), "p1")]  # placed again on its own topic
    assert engine.tasks[second].state is TaskState.RUNNING
    assert engine.counters.get("direct_start_unreachable", 0) == 0
