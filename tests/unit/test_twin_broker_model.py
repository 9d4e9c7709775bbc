"""The virtual-time broker model: topic matching (MQTT spec cases) and MQTT semantics at exact times."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest
import simpy

from twin.broker_model import (
    BrokerModel,
    ModelClient,
    MqttError,
    SubscriptionTree,
    Will,
    check_filter,
    topic_matches,
)

SPEC_CASES: list[tuple[str, str, bool]] = [
    # MQTT 3.1.1 §4.7.1.2 and §4.7.1.3 examples
    ("sport/tennis/player1/#", "sport/tennis/player1", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
    ("sport/#", "sport", True),
    ("#", "anything/at/all", True),
    ("sport/tennis/+", "sport/tennis/player1", True),
    ("sport/tennis/+", "sport/tennis/player1/tournament", False),
    ("sport/+", "sport", False),
    ("sport/+", "sport/", True),
    ("+/+", "/finance", True),
    ("/+", "/finance", True),
    ("+", "/finance", False),
    # §4.7.2: wildcards at the first level do not match $-topics
    ("#", "$SYS/broker/load", False),
    ("+/monitor/Clients", "$SYS/monitor/Clients", False),
    ("$SYS/#", "$SYS/monitor/Clients", True),
    ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
    # exact and case-sensitive
    ("m/d/c/control/manager/start", "m/d/c/control/manager/start", True),
    ("ACCOUNTS", "Accounts", False),
    ("a/b", "a/b/c", False),
    ("a/b/c", "a/b", False),
]


@pytest.mark.parametrize(("topic_filter", "topic", "expected"), SPEC_CASES)
def test_topic_matching_follows_the_spec(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches(topic_filter, topic) is expected


def test_the_routing_tree_agrees_with_the_matcher() -> None:
    cases = SPEC_CASES
    tree = SubscriptionTree()
    for i, (topic_filter, _, _) in enumerate(cases):
        tree.add(topic_filter, f"c{i}", i % 2)
    for topic in {topic for _, topic, _ in cases}:
        expected = {f"c{i}" for i, (f, _, _) in enumerate(cases) if topic_matches(f, topic)}
        assert set(tree.match(topic)) == expected, topic
    for i, (topic_filter, _, _) in enumerate(cases):
        tree.remove(topic_filter, f"c{i}")
    assert tree.children == {}  # removing every subscription prunes the tree


@pytest.mark.parametrize("bad", ["sport/tennis#", "sport/tennis/#/ranking", "sport+", "", "a/+b"])
def test_invalid_filters_are_refused_with_the_reason(bad: str) -> None:
    with pytest.raises(ValueError, match="topic filter"):
        check_filter(bad)


class Dev:
    """A ModelClient plus a log of what it saw, with simulated times."""

    def __init__(self, broker: BrokerModel, cid: str, **kw: Any) -> None:
        self.env = broker.env
        self.messages: list[tuple[float, str, bytes]] = []
        self.events: list[tuple[float, str]] = []
        self.c: ModelClient = broker.client(
            cid,
            on_message=lambda t, p: self.messages.append((self.env.now, t, p)),
            on_connect=lambda: self.events.append((self.env.now, "connect")),
            on_disconnect=lambda: self.events.append((self.env.now, "disconnect")),
            **kw,
        )


@pytest.fixture
def env() -> simpy.Environment:
    return simpy.Environment()


@pytest.fixture
def broker(env: simpy.Environment) -> BrokerModel:
    return BrokerModel(env, connect_delay=0.01)


def test_connect_and_publish_take_the_link_latency(env: simpy.Environment, broker: BrokerModel) -> None:
    pub = Dev(broker, "pub", latency=0.1)
    sub = Dev(broker, "sub", latency=0.05)
    ev = sub.c.connect()
    pub.c.connect()
    sub.c.subscribe("m/+/alive", 1)  # remembered, sent after CONNACK
    env.run(until=1)
    assert ev.value is True
    assert sub.events == [(pytest.approx(0.11), "connect")]  # 0.05 up + 0.01 broker + 0.05 down
    assert pub.events == [(pytest.approx(0.21), "connect")]
    env.run(until=2)
    pub.c.publish("m/d1/alive", b"hi", 1)
    env.run(until=3)
    assert sub.messages == [(pytest.approx(2.15), "m/d1/alive", b"hi")]  # 0.1 up + 0.05 down
    assert broker.stats.deliveries == 1


def test_publish_when_not_connected_raises_and_bad_input_is_named(broker: BrokerModel) -> None:
    c = broker.client("x")
    with pytest.raises(MqttError, match="not connected"):
        c.publish("a/b", b"x", 1)
    with pytest.raises(ValueError, match="wildcards"):
        c.publish("a/#", b"x", 1)
    with pytest.raises(ValueError, match="QoS must be 0 or 1"):
        c.subscribe("a/b", 2)
    with pytest.raises(ValueError, match="payload must be bytes"):
        c.publish("a/b", "text", 0)  # type: ignore[arg-type]


def test_link_order_is_kept_when_latency_drops(env: simpy.Environment, broker: BrokerModel) -> None:
    pub = Dev(broker, "pub", latency=0.5)
    sub = Dev(broker, "sub")
    pub.c.connect()
    sub.c.connect()
    sub.c.subscribe("t/#", 1)
    env.run(until=2)
    pub.c.publish("t/1", b"1", 0)
    pub.c.latency = 0.0
    pub.c.publish("t/2", b"2", 0)  # must not overtake the first
    env.run(until=3)
    assert [p for _, _, p in sub.messages] == [b"1", b"2"]
    assert sub.messages[0][0] == sub.messages[1][0] == 2.5


def test_overlapping_filters_give_one_copy_at_the_highest_qos(
    env: simpy.Environment, broker: BrokerModel
) -> None:
    sub = Dev(broker, "sub", clean_session=False)
    pub = Dev(broker, "pub")
    sub.c.connect()
    pub.c.connect()
    sub.c.subscribe("a/#", 0)
    sub.c.subscribe("a/+", 1)
    env.run(until=1)
    pub.c.publish("a/b", b"x", 1)
    env.run(until=2)
    assert [m[2] for m in sub.messages] == [b"x"]
    sub.c.abort()
    env.run(until=3)
    pub.c.publish("a/b", b"y", 1)
    env.run(until=4)
    assert broker.session_queue_length("sub") == 1  # delivered at QoS 1 (from a/+), so it is queued


def test_abort_fires_the_will_and_disconnect_does_not(env: simpy.Environment, broker: BrokerModel) -> None:
    obs = Dev(broker, "obs")
    obs.c.connect()
    obs.c.subscribe("wills/#", 1)
    a = Dev(broker, "a", latency=0.2, will=Will("wills/a", b"a died"))
    b = Dev(broker, "b", will=Will("wills/b", b"b died"))
    a.c.connect()
    b.c.connect()
    env.run(until=1)
    a.c.abort()
    b.c.disconnect()
    env.run(until=5)
    assert obs.messages == [(pytest.approx(1.2), "wills/a", b"a died")]
    assert a.events[-1] == (1.0, "disconnect") and b.events[-1] == (1.0, "disconnect")
    assert broker.stats.wills == 1
    assert broker.connected_clients == ["obs"]


def test_silence_expires_at_one_and_a_half_keepalive_after_the_last_ping(
    env: simpy.Environment, broker: BrokerModel
) -> None:
    obs = Dev(broker, "obs")
    obs.c.connect()
    obs.c.subscribe("wills/+", 1)
    dev = Dev(broker, "dev", keepalive=10, will=Will("wills/dev", b"gone"), reconnect=False)
    dev.c.connect()  # CONNECT leaves at t=0
    env.run(until=12)
    dev.c.silence()  # paho pinged at t=10; the broker gives up at 10 + 15
    env.run(until=30)
    assert obs.messages == [(25.0, "wills/dev", b"gone")]
    assert broker.stats.expiries == 1
    assert dev.events == [(pytest.approx(0.01), "connect")]  # it has not noticed yet: it reads nothing
    dev.c.unsilence()
    env.run(until=31)
    assert dev.events[-1] == (30.0, "disconnect")


def test_a_short_silence_is_survived_and_held_traffic_flows_after(
    env: simpy.Environment, broker: BrokerModel
) -> None:
    sub = Dev(broker, "sub")
    dev = Dev(broker, "dev", keepalive=10, will=Will("w/dev", b"gone"))
    sub.c.connect()
    dev.c.connect()
    sub.c.subscribe("#", 1)
    dev.c.subscribe("cmd", 1)
    env.run(until=1)
    dev.c.silence()
    dev.c.publish("up", b"held", 1)  # waits in the client, as in paho's queue
    sub.c.publish("cmd", b"while away", 1)  # waits in the device's socket buffer
    env.run(until=5)
    assert dev.messages == [] and [m[1] for m in sub.messages] == ["cmd"]
    dev.c.unsilence()
    env.run(until=30)
    assert dev.messages == [(5.0, "cmd", b"while away")]
    assert [(t, topic) for t, topic, _ in sub.messages] == [(1.0, "cmd"), (5.0, "up")]
    assert broker.stats.wills == 0 and dev.c.connected


def test_keepalive_zero_never_expires(env: simpy.Environment, broker: BrokerModel) -> None:
    dev = Dev(broker, "dev", keepalive=0, will=Will("w", b"x"))
    dev.c.connect()
    env.run(until=1)
    dev.c.silence()
    env.run(until=10_000)
    assert broker.stats.expiries == 0 and broker.connected_clients == ["dev"]


def test_persistent_session_queues_qos1_while_offline(env: simpy.Environment, broker: BrokerModel) -> None:
    dev = Dev(broker, "dev", clean_session=False, latency=0.1)
    pub = Dev(broker, "pub")
    dev.c.connect()
    pub.c.connect()
    dev.c.subscribe("cmd/#", 1)
    env.run(until=1)
    dev.c.disconnect()
    env.run(until=2)
    pub.c.publish("cmd/1", b"q1", 1)
    pub.c.publish("cmd/2", b"q0", 0)  # QoS 0 is not queued for offline clients
    env.run(until=3)
    assert broker.session_queue_length("dev") == 1
    dev.c.connect()
    env.run(until=4)
    # CONNECT 3.0 -> 3.1 broker, CONNACK at 3.11 + 0.1, then the queued message right behind it
    assert dev.messages == [(pytest.approx(3.21), "cmd/1", b"q1")]


def test_clean_session_forgets_subscriptions_and_queue(env: simpy.Environment, broker: BrokerModel) -> None:
    dev = Dev(broker, "dev", clean_session=False)
    pub = Dev(broker, "pub")
    dev.c.connect()
    pub.c.connect()
    dev.c.subscribe("cmd", 1)
    env.run(until=1)
    dev.c.disconnect()
    env.run(until=2)
    pub.c.publish("cmd", b"x", 1)
    env.run(until=3)
    fresh = Dev(broker, "dev", clean_session=True)  # same id, clean: the session goes
    fresh.c.connect()
    env.run(until=4)
    assert fresh.messages == [] and broker.session_queue_length("dev") == 0


def test_full_session_queue_drops_and_counts(env: simpy.Environment) -> None:
    broker = BrokerModel(env, max_queued=3)
    dev = Dev(broker, "dev", clean_session=False)
    pub = Dev(broker, "pub")
    dev.c.connect()
    pub.c.connect()
    dev.c.subscribe("t", 1)
    env.run(until=1)
    dev.c.abort()
    env.run(until=2)
    for i in range(5):
        pub.c.publish("t", str(i).encode(), 1)
    env.run(until=3)
    assert broker.stats.dropped == 2
    dev.c.connect()
    env.run(until=4)
    assert [p for _, _, p in dev.messages] == [b"0", b"1", b"2"]


def test_retained_messages_replay_on_subscribe_and_clear(env: simpy.Environment, broker: BrokerModel) -> None:
    pub = Dev(broker, "pub")
    pub.c.connect()
    env.run(until=1)
    pub.c.publish("cfg/a", b"v1", 1, retain=True)
    pub.c.publish("cfg/b", b"v2", 0, retain=True)
    pub.c.publish("cfg/b", b"", 0, retain=True)  # clears
    env.run(until=2)
    late = Dev(broker, "late", latency=0.5)
    late.c.connect()
    late.c.subscribe("cfg/#", 1)
    env.run(until=5)
    # CONNACK arrives at 3.01, SUBSCRIBE reaches the broker at 3.51, the retained copy arrives at 4.01
    assert late.messages == [(pytest.approx(3.01 + 1.0), "cfg/a", b"v1")]


def test_session_takeover_fires_the_old_will(env: simpy.Environment, broker: BrokerModel) -> None:
    obs = Dev(broker, "obs")
    obs.c.connect()
    obs.c.subscribe("w", 1)
    first = Dev(broker, "dup", will=Will("w", b"first"), reconnect=False)
    first.c.connect()
    env.run(until=1)
    second = Dev(broker, "dup")
    second.c.connect()
    env.run(until=2)
    assert [m[2] for m in obs.messages] == [b"first"]
    assert first.events[-1][1] == "disconnect" and second.c.connected


def test_broker_restart_refuses_then_clients_reconnect_without_wills(env: simpy.Environment) -> None:
    broker = BrokerModel(env)
    dev = Dev(broker, "dev", will=Will("w", b"x"), backoff_min=1.0, backoff_max=4.0, rng=random.Random(1),
              clean_session=False)  # fmt: skip
    dev.c.subscribe("cmd", 1)
    dev.c.connect()
    env.run(until=1)
    broker.restart(downtime=10.0)
    env.run(until=30)
    assert broker.stats.wills == 0
    assert broker.stats.refused >= 2  # backoff attempts while it was down
    assert [e for _, e in dev.events] == ["connect", "disconnect", "connect"]
    reconnected_at = dev.events[-1][0]
    assert 11.0 <= reconnected_at <= 11.0 + 4.0
    pub = Dev(broker, "pub")
    pub.c.connect()
    env.run(until=31)
    pub.c.publish("cmd", b"after", 1)
    env.run(until=32)
    assert [m[2] for m in dev.messages] == [b"after"]  # subscriptions were re-sent


def test_restart_without_persistence_loses_retained(env: simpy.Environment) -> None:
    broker = BrokerModel(env, persistence=False)
    pub = Dev(broker, "pub")
    pub.c.connect()
    env.run(until=1)
    pub.c.publish("r", b"x", 1, retain=True)
    env.run(until=2)
    broker.restart(1.0)
    env.run(until=3)
    assert broker.retained == {}


def test_connect_while_down_reports_false(env: simpy.Environment) -> None:
    broker = BrokerModel(env)
    broker.stop()
    dev = Dev(broker, "dev", latency=0.1)
    ev = dev.c.connect()
    env.run(until=1)
    assert ev.value is False and not dev.c.connected


def test_qos1_publish_cut_by_a_lost_link_is_resent_after_reconnect(env: simpy.Environment) -> None:
    broker = BrokerModel(env)
    dev = Dev(broker, "dev", latency=1.0, keepalive=2, backoff_min=0.5, backoff_max=0.5)
    sub = Dev(broker, "sub")
    dev.c.connect()
    sub.c.connect()
    sub.c.subscribe("up", 1)
    env.run(until=3)
    dev.c.silence()  # expiry at 2 (last ping) + 1 (latency) + 3 = 6
    dev.c.publish("up", b"important", 1)  # held: never reaches the broker on this link
    env.run(until=7)
    assert sub.messages == []
    dev.c.unsilence()  # flushes into a dead link, learns of the close, reconnects, resends
    env.run(until=20)
    assert [m[2] for m in sub.messages] == [b"important"]


def test_callback_errors_are_counted_not_raised(env: simpy.Environment, broker: BrokerModel) -> None:
    def boom(_t: str, _p: bytes) -> None:
        raise RuntimeError("device bug")

    dev = broker.client("dev", on_message=boom)
    pub = broker.client("pub")
    dev.connect()
    pub.connect()
    dev.subscribe("t", 0)
    env.run(until=1)
    pub.publish("t", b"x", 0)
    env.run(until=2)
    assert dev.callback_errors == 1


def test_thousands_of_clients_in_virtual_time(env: simpy.Environment) -> None:
    broker = BrokerModel(env, connect_delay=0.001)
    got = [0]
    for i in range(2_000):
        c = broker.client(f"d{i}", latency=0.02, on_message=lambda _t, _p: got.__setitem__(0, got[0] + 1))
        c.subscribe("m/d/c/control/manager/start", 1)
        c.connect()
    mgr = broker.client("manager")
    mgr.connect()
    env.run(until=1)
    mgr.publish("m/d/c/control/manager/start", b"{}", 1)
    env.run(until=2)
    assert got[0] == 2_000


def test_vanish_is_noticed_at_keepalive_expiry_not_at_once(
    env: simpy.Environment, broker: BrokerModel
) -> None:
    obs = Dev(broker, "obs")
    obs.c.connect()
    obs.c.subscribe("wills/+", 1)
    dev = Dev(broker, "dev", keepalive=2, will=Will("wills/dev", b"gone"))
    dev.c.connect()
    env.run(until=5.5)
    dev.c.vanish()  # power loss: paho last pinged at t=4, the broker gives up at 4 + 3
    env.run(until=6.9)
    assert obs.messages == [] and broker.connected_clients == ["obs", "dev"]
    env.run(until=20)
    assert obs.messages == [(7.0, "wills/dev", b"gone")]
    assert broker.stats.expiries == 1 and broker.connected_clients == ["obs"]
    assert dev.events[-1] == (5.5, "disconnect")  # the device's own view: it is off
    assert [e for e in dev.events if e[1] == "connect"] == [(pytest.approx(0.01), "connect")]  # no reconnect


def test_a_reboot_that_reconnects_before_expiry_takes_the_session_over(
    env: simpy.Environment, broker: BrokerModel
) -> None:
    obs = Dev(broker, "obs")
    obs.c.connect()
    obs.c.subscribe("wills/+", 1)
    first = Dev(broker, "dev", keepalive=10, will=Will("wills/dev", b"old life"))
    first.c.connect()
    env.run(until=1)
    first.c.vanish()  # watchdog reset: silence, then the same client id comes back
    second = Dev(broker, "dev", keepalive=10, will=Will("wills/dev", b"new life"))
    env.run(until=2)
    second.c.connect()
    env.run(until=40)
    # The takeover closes the old session and fires ITS will; the stale expiry check of the old life
    # later finds nothing to expire and the new life stays connected.
    assert obs.messages == [(pytest.approx(2.01), "wills/dev", b"old life")]
    assert broker.connected_clients == ["obs", "dev"] and broker.stats.expiries == 0
    assert second.c.connected


def test_a_packet_of_an_old_life_never_acts_on_the_new_connection(
    env: simpy.Environment, broker: BrokerModel
) -> None:
    old = Dev(broker, "dev", latency=1.0)
    old.c.connect()
    env.run(until=3)
    old.c.subscribe("late/topic", 1)  # leaves now, arrives at t=4
    old.c.vanish()
    new = Dev(broker, "dev")
    new.c.connect()  # both lives have epoch 1; the broker must tell them apart
    env.run(until=10)
    assert new.c.connected
    assert broker.connected_clients == ["dev"]
    pub = Dev(broker, "pub")
    pub.c.connect()
    env.run(until=11)
    pub.c.publish("late/topic", b"x", 1)
    env.run(until=12)
    assert new.messages == []  # the old life's SUBSCRIBE did not land on the new session


def test_link_profile_jitter_and_loss_delay_but_never_reorder(
    env: simpy.Environment, broker: BrokerModel
) -> None:
    from twin.link_profile import LinkProfile

    profile = LinkProfile(latency_s=0.05, jitter_s=0.04, loss=0.3, retransmit_s=0.2)
    pub = Dev(broker, "pub", link=profile, rng=random.Random(3))
    sub = Dev(broker, "sub")
    pub.c.connect()
    sub.c.connect()
    sub.c.subscribe("t/#", 1)
    env.run(until=1)
    for i in range(200):
        pub.c.publish(f"t/{i}", str(i).encode(), 0)
    env.run(until=100)
    got = [int(p) for _, _, p in sub.messages]
    assert got == list(range(200))  # FIFO, as TCP
    delays = [t - 1.0 for t, _, _ in sub.messages]
    assert min(delays) >= 0.01 - 1e-9  # latency - jitter at the least
    assert max(delays) >= 0.2  # some segment was "lost" and retransmitted, holding the ones behind it


def test_model_link_blackhole_expires_the_session_and_reset_fires_the_will_at_once(
    env: simpy.Environment, broker: BrokerModel
) -> None:
    from twin.link_profile import LinkProfile
    from twin.transport import ModelLink

    obs = Dev(broker, "obs")
    obs.c.connect()
    obs.c.subscribe("wills/+", 1)
    a = Dev(broker, "a", keepalive=2, will=Will("wills/a", b"a"), backoff_min=0.1, backoff_max=0.2)
    b = Dev(broker, "b", keepalive=2, will=Will("wills/b", b"b"), backoff_min=0.1, backoff_max=0.2)
    la, lb = ModelLink(LinkProfile()), ModelLink(LinkProfile())
    la.attach(a.c)
    lb.attach(b.c)
    a.c.connect()
    b.c.connect()
    env.run(until=1)
    la.blackhole(True)  # no FIN: keep-alive expiry at 0 + 3
    assert lb.reset() == 1  # RST: the broker sees the close now
    env.run(until=2)
    assert obs.messages == [(1.0, "wills/b", b"b")]
    env.run(until=3.5)
    assert obs.messages[-1] == (3.0, "wills/a", b"a")
    assert b.c.connected  # RST: the client reconnected by itself
    la.blackhole(False)
    env.run(until=6)
    assert a.c.connected  # it learned of the close once the link was back, and reconnected


def test_model_link_sever_is_silence_until_keepalive_expiry(
    env: simpy.Environment, broker: BrokerModel
) -> None:
    from twin.link_profile import LinkProfile
    from twin.transport import ModelLink

    obs = Dev(broker, "obs")
    obs.c.connect()
    obs.c.subscribe("wills/+", 1)
    dev = Dev(broker, "dev", keepalive=2, will=Will("wills/dev", b"gone"))
    link = ModelLink(LinkProfile())
    link.attach(dev.c)
    dev.c.connect()
    env.run(until=1)
    assert link.sever() == 1  # power loss through the link: no FIN, no RST
    dev.c.abort()  # the board's own end is gone with it: still nothing reaches the broker
    env.run(until=2.9)
    assert obs.messages == []
    env.run(until=5)
    assert obs.messages == [(3.0, "wills/dev", b"gone")]  # last ping at 0, expiry at 1.5 x 2


def test_reconnect_backoff_is_the_live_clients(env: simpy.Environment) -> None:
    """As MqttClient._backoff: attempt n waits uniform(max(min, c/2), c), c = min(max, min * 2**n)."""
    broker = BrokerModel(env)
    dev = Dev(broker, "dev", backoff_min=1.0, backoff_max=4.0, rng=random.Random(7))
    attempts: list[float] = []
    on_connect = broker._on_connect

    def spy(client: ModelClient, *args: Any) -> None:
        if client is dev.c:
            attempts.append(float(env.now))
        on_connect(client, *args)

    broker._on_connect = spy  # type: ignore[method-assign]
    dev.c.connect()
    env.run(until=1)
    broker.stop()  # down for good: every retry is refused
    env.run(until=40)
    gaps = [b - a for a, b in itertools.pairwise(attempts[1:])]
    first = attempts[1] - 1.0
    assert first == pytest.approx(1.0)  # attempt 0: uniform(1, 1)
    ceilings = [2.0, 4.0, 4.0, 4.0]
    for gap, ceiling in zip(gaps, ceilings, strict=False):
        assert max(1.0, ceiling / 2) <= gap <= ceiling
    assert len(gaps) >= 4
