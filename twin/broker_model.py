"""MQTT 3.1.1 semantics in virtual time, for the fleet-scale virtual driver (simpy, no sockets).

`BrokerModel` plays the broker; `ModelClient` has the same small interface as the live
`orchestrator.adapters.mqtt.MqttClient` (publish, subscribe, callbacks, abort, silence, disconnect), so
device code runs unchanged on both. What is modelled, and how:

- Each client has a link (`link`, a `LinkProfile`: latency, jitter, loss as a retransmission delay of
  `retransmit_s`, as the live `LinkProxy` applies them; bandwidth is not modelled); both directions are
  FIFO (a later packet never overtakes). `latency=` alone is a clean link with that latency.
- connect: CONNECT reaches the broker after `latency`, CONNACK leaves `connect_delay` later. `connect()`
  returns a simpy event whose value is True on CONNACK, False when the broker is down (refused).
- publish QoS 0/1 (QoS 2 is refused with ValueError), delivered QoS = min(publish, subscription);
  a client matching several of its filters gets one copy at the highest QoS. QoS 1 publishes stay in
  the client until PUBACK and are resent on the next connect (at least once, as paho does).
- retained messages (an empty retained payload clears), replayed on subscribe.
- persistent sessions (clean_session=False): subscriptions survive, QoS 1 messages queue while offline
  (up to `max_queued`, then dropped and counted, as Mosquitto's max_queued_messages) and are sent after
  the next CONNACK; a QoS 1 delivery cut by a lost connection is queued again.
- Last Will: fired on an abrupt close (`abort()`: the device's OS closes the socket), on keep-alive
  expiry and on session takeover; never after `disconnect()`. A broker stop closes every link without
  wills. `vanish()` is a device that loses power: no packet at all, so the broker holds the session
  until keep-alive expiry (or until a reconnect with the same client id takes it over) and then fires
  the will. A rebooted device is a new `ModelClient` with the same client id: the broker tells the
  lives apart (a packet of the old life never acts on the new connection).
- keep-alive: a client that is not silenced is assumed to ping on time (no ping traffic is simulated).
  `silence()` stops everything; the broker then drops the client 1.5 × keepalive after the last packet
  it heard, where the last packet is the latest of the client's real packets and of the pings paho
  would have sent every `keepalive` seconds after it.
- Auto-reconnect after an unexpected loss (not after abort()/disconnect()), with capped, jittered
  exponential backoff from the injected rng, like the live client.

Shortcut (documented, omniscient): a QoS 1 delivery that arrives at a client whose connection has
changed is handed back to the broker's session queue directly instead of by an unacked-message resend.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import simpy

from orchestrator.adapters.mqtt import MqttError, Will
from orchestrator.core.identity import Identity, IdentityRegistry
from orchestrator.wire.mqtt_names import check_filter, check_topic
from twin.link_profile import LinkProfile

__all__ = ["BrokerModel", "BrokerStats", "ModelClient", "MqttError", "Will", "topic_matches"]

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=65536)
def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT 3.1.1 §4.7 matching. Wildcards at the first level do not match topics starting with '$'."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    for i, f in enumerate(f_levels):
        if f == "#":
            return True  # also matches the parent level: "a/#" matches "a"
        if i >= len(t_levels):
            return False
        if f != "+" and f != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)


def _check_qos(qos: int) -> None:
    if qos not in (0, 1):
        raise ValueError(f"QoS must be 0 or 1 in the broker model, got {qos!r}")


class SubscriptionTree:
    """Subscriptions indexed by topic level, so routing costs the topic's depth, not the number of
    distinct filters (a fleet where each device subscribes to its own topics has tens of thousands)."""

    __slots__ = ("children", "subscribers")

    def __init__(self) -> None:
        self.children: dict[str, SubscriptionTree] = {}
        self.subscribers: dict[str, int] = {}  # client_id -> QoS, for the filter ending here

    def add(self, topic_filter: str, client_id: str, qos: int) -> None:
        node = self
        for level in topic_filter.split("/"):
            child = node.children.get(level)  # (setdefault would build a node per level every time)
            if child is None:
                child = node.children[level] = SubscriptionTree()
            node = child
        node.subscribers[client_id] = qos

    def remove(self, topic_filter: str, client_id: str) -> None:
        path = [self]
        for level in topic_filter.split("/"):
            child = path[-1].children.get(level)
            if child is None:
                return
            path.append(child)
        path[-1].subscribers.pop(client_id, None)
        for parent, level, node in zip(
            reversed(path[:-1]), reversed(topic_filter.split("/")), reversed(path[1:]), strict=True
        ):
            if node.subscribers or node.children:
                break
            del parent.children[level]

    def match(self, topic: str) -> dict[str, int]:
        """client_id -> highest QoS among that client's filters matching `topic`."""
        out: dict[str, int] = {}
        levels = topic.split("/")
        dollar = topic.startswith("$")

        def take(subscribers: dict[str, int]) -> None:
            for cid, qos in subscribers.items():
                if qos > out.get(cid, -1):
                    out[cid] = qos

        def walk(node: SubscriptionTree, i: int) -> None:
            wild_ok = not (dollar and i == 0)
            if wild_ok and (hash_node := node.children.get("#")) is not None:
                take(hash_node.subscribers)  # "a/#" also matches "a"
            if i == len(levels):
                take(node.subscribers)
                return
            if (exact := node.children.get(levels[i])) is not None:
                walk(exact, i + 1)
            if wild_ok and (plus := node.children.get("+")) is not None:
                walk(plus, i + 1)

        walk(self, 0)
        return out


@dataclass
class BrokerStats:
    publishes: int = 0  # PUBLISH packets the broker accepted (wills included)
    deliveries: int = 0  # messages handed to a client's link
    queued: int = 0  # QoS 1 messages stored for offline persistent sessions
    dropped: int = 0  # QoS 1 messages dropped because a session queue was full
    wills: int = 0
    expiries: int = 0  # keep-alive expiries
    refused: int = 0  # connects refused (the broker was down, or a closed broker's identity check)
    publish_dropped: int = 0  # closed broker: publishes the sender's identity may not make (acked)
    subscribe_refused: int = 0  # closed broker: subscriptions the identity may not hold


@dataclass
class _Session:
    client_id: str
    persistent: bool
    subs: dict[str, int] = field(default_factory=dict)
    queue: collections.deque[tuple[str, bytes]] = field(default_factory=collections.deque)


@dataclass
class _Conn:
    client: ModelClient
    epoch: int
    session: _Session
    will: Will | None
    alive: bool = True


class BrokerModel:
    def __init__(
        self, env: simpy.Environment, *, connect_delay: float = 0.0, max_queued: int = 1000,
        persistence: bool = True, identities: IdentityRegistry | None = None,
    ) -> None:  # fmt: skip
        if connect_delay < 0 or max_queued < 0:
            raise ValueError(f"connect_delay and max_queued must be >= 0, got {connect_delay}, {max_queued}")
        self.env = env
        self.connect_delay = connect_delay
        self.max_queued = max_queued
        self.persistence = persistence  # sessions and retained messages survive a restart
        # A closed broker: connects, publishes and subscriptions decided by the identity rules, the
        # same core calls the embedded broker makes (orchestrator/core/identity.py). None: open.
        self.identities = identities
        self.refusals: list[tuple[float, str, str]] = []  # (time, client id, why), closed broker
        self.up = True
        self.stats = BrokerStats()
        self.retained: dict[str, tuple[bytes, int]] = {}
        self._sessions: dict[str, _Session] = {}
        self._conns: dict[str, _Conn] = {}
        self._tree = SubscriptionTree()
        # topic -> its subscribers, valid until the next (un)subscribe: a fleet publishes heartbeats on a
        # handful of topics millions of times while subscriptions change only when devices (re)connect.
        self._routes: dict[str, dict[str, int]] = {}

    def client(self, client_id: str, **kwargs: Any) -> ModelClient:
        return ModelClient(self, client_id, **kwargs)

    def at(self, delay: float, fn: Callable[..., Any], *args: Any) -> None:
        ev = self.env.timeout(max(0.0, delay))
        ev.callbacks.append(lambda _e: fn(*args))

    @property
    def connected_clients(self) -> list[str]:
        return [cid for cid, c in self._conns.items() if c.alive]

    def subscribers(self, topic: str) -> dict[str, int]:
        """Who gets a message published on ``topic``: client id -> subscription QoS."""
        routes = self._routes.get(topic)
        if routes is None:
            routes = self._routes[topic] = self._tree.match(topic)
        return routes

    def session_queue_length(self, client_id: str) -> int:
        s = self._sessions.get(client_id)
        return len(s.queue) if s else 0

    # --- broker lifecycle ---------------------------------------------------------------------------

    def stop(self) -> None:
        """The broker process dies: every link closes, no will is sent."""
        self.up = False
        for conn in list(self._conns.values()):
            if conn.alive:
                conn.alive = False
                conn.client._down(conn.client._on_closed, conn.epoch)
        self._conns.clear()
        if not self.persistence:
            self._sessions.clear()
            self._tree = SubscriptionTree()
            self._routes.clear()
            self.retained.clear()

    def start(self) -> None:
        self.up = True

    def restart(self, downtime: float) -> None:
        self.stop()
        self.at(downtime, self.start)

    # --- packets arriving at the broker (called through the client's uplink) -------------------------

    def _on_connect(self, client: ModelClient, epoch: int, clean: bool, will: Will | None) -> None:
        if not self.up:
            self.stats.refused += 1
            client._down(client._on_refused, epoch)
            return
        self.at(self.connect_delay, self._accept, client, epoch, clean, will)

    def _accept(self, client: ModelClient, epoch: int, clean: bool, will: Will | None) -> None:
        if not self.up:
            self.stats.refused += 1
            client._down(client._on_refused, epoch)
            return
        cid = client.client_id
        if self.identities is not None:
            will = client.will
            verdict = self.identities.connect_verdict(
                cid, client.username, client.password,
                will.topic if will is not None else None, will.payload if will is not None else b"",
            )  # fmt: skip
            if verdict.identity is None:
                self.stats.refused += 1
                self.refusals.append((float(self.env.now), cid, f"connect refused: {verdict.reason}"))
                client._down(client._on_refused, epoch)
                return
        old = self._conns.get(cid)
        if old is not None and old.alive:  # session takeover (§3.1.4): the old link is closed
            self._drop(old, fire_will=True)
            old.client._down(old.client._on_closed, old.epoch)
        session = self._sessions.get(cid)
        present = session is not None and not clean and session.persistent
        if not present:
            if session is not None:
                self._forget_subs(session)
            session = self._sessions[cid] = _Session(cid, persistent=not clean)
        assert session is not None
        conn = self._conns[cid] = _Conn(client, epoch, session, will)
        if client._epoch != epoch and client.keepalive > 0:
            # It vanished while its CONNECT was on the wire: to the broker the link is open and silent.
            self.at(1.5 * client.keepalive, self._check_expiry, client, epoch, client._silence_gen)
        client._down(client._on_connack, epoch, present)
        while session.queue:
            topic, payload = session.queue.popleft()
            self._deliver(conn, topic, payload, 1)

    def _live(self, client: ModelClient, epoch: int) -> _Conn | None:
        conn = self._conns.get(client.client_id)
        # Same client object too: a rebooted device is a new client whose epochs count from 1 again.
        ok = conn is not None and conn.alive and conn.epoch == epoch and conn.client is client
        return conn if ok else None

    def _on_publish(self, client: ModelClient, epoch: int, mid: int, topic: str, payload: bytes, qos: int,
                    retain: bool) -> None:  # fmt: skip
        if self._live(client, epoch) is None:
            return
        if qos == 1:
            client._down(client._on_puback, epoch, mid)
        reason = self._denied(client, lambda ids, who: ids.publish_verdict(who, topic, payload))
        if reason is not None:  # acked and dropped, as the embedded broker does: the client stays on
            self.stats.publish_dropped += 1
            self.refusals.append((float(self.env.now), client.client_id, f"publish dropped: {reason}"))
            return
        self.publish(topic, payload, qos, retain)

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        """Route a message as the broker (also used for wills and by tests)."""
        self.stats.publishes += 1
        if retain:
            if payload:
                self.retained[topic] = (payload, qos)
            else:
                self.retained.pop(topic, None)
        routes = self._routes.get(topic)
        if routes is None:
            routes = self._routes[topic] = self._tree.match(topic)
        for cid, sub_qos in routes.items():
            out_qos = min(qos, sub_qos)
            conn = self._conns.get(cid)
            if conn is not None and conn.alive:
                self._deliver(conn, topic, payload, out_qos)
            elif out_qos == 1:
                self._enqueue(self._sessions[cid], topic, payload)

    def _on_subscribe(self, client: ModelClient, epoch: int, topic_filter: str, qos: int) -> None:
        conn = self._live(client, epoch)
        if conn is None:
            return
        reason = self._denied(client, lambda ids, who: ids.subscribe_verdict(who, topic_filter))
        if reason is not None:
            self.stats.subscribe_refused += 1
            self.refusals.append((float(self.env.now), client.client_id, f"subscribe refused: {reason}"))
            return
        conn.session.subs[topic_filter] = qos
        self._tree.add(topic_filter, client.client_id, qos)
        self._routes_changed(topic_filter)
        for topic, (payload, r_qos) in self.retained.items():
            if topic_matches(topic_filter, topic):
                self._deliver(conn, topic, payload, min(qos, r_qos))

    def _routes_changed(self, topic_filter: str) -> None:
        """A subscription on ``topic_filter`` came or changed: forget the routes of the topics it
        matches (only those: a fleet's devices subscribe while the others' heartbeats keep flowing)."""
        routes = self._routes
        if "+" not in topic_filter and "#" not in topic_filter:
            routes.pop(topic_filter, None)  # a plain filter matches that one topic
            return
        for topic in [t for t in routes if topic_matches(topic_filter, t)]:
            del routes[topic]

    def _denied(self, client: ModelClient,
                verdict: Callable[[IdentityRegistry, Identity], str | None]) -> str | None:  # fmt: skip
        if self.identities is None:
            return None
        who = self.identities.owner_of_client(client.client_id)
        return "identity revoked" if who is None else verdict(self.identities, who)

    def _on_unsubscribe(self, client: ModelClient, epoch: int, topic_filter: str) -> None:
        conn = self._live(client, epoch)
        if conn is None:
            return
        conn.session.subs.pop(topic_filter, None)
        self._tree.remove(topic_filter, client.client_id)
        self._routes.clear()

    def _on_ping(self, client: ModelClient, epoch: int) -> None:
        pass  # a live connection heard from; expiry checks ask the client when it resumed

    def _on_disconnect(self, client: ModelClient, epoch: int) -> None:
        conn = self._live(client, epoch)
        if conn is not None:
            self._drop(conn, fire_will=False)

    def _on_link_lost(self, client: ModelClient, epoch: int) -> None:
        conn = self._live(client, epoch)
        if conn is not None:
            self._drop(conn, fire_will=True)

    def _check_expiry(self, client: ModelClient, epoch: int, generation: int) -> None:
        conn = self._live(client, epoch)
        if conn is None:
            return
        gone = client._epoch != epoch  # the client vanished (power loss): it will never ping again
        if not gone:
            if client._silence_gen != generation:
                return
            if not (client.silenced or client._resumed_at > self.env.now):
                return
        self.stats.expiries += 1
        self._drop(conn, fire_will=True)
        client._down(client._on_closed, epoch)

    # --- internals ----------------------------------------------------------------------------------

    def _drop(self, conn: _Conn, fire_will: bool) -> None:
        conn.alive = False
        if self._conns.get(conn.client.client_id) is conn:
            del self._conns[conn.client.client_id]
        if not conn.session.persistent:
            self._forget_subs(conn.session)
            self._sessions.pop(conn.client.client_id, None)
        if fire_will and conn.will is not None:
            self.stats.wills += 1
            w = conn.will
            self.publish(w.topic, bytes(w.payload), min(w.qos, 1), w.retain)

    def _forget_subs(self, session: _Session) -> None:
        for topic_filter in session.subs:
            self._tree.remove(topic_filter, session.client_id)
        if session.subs:
            self._routes.clear()
        session.subs.clear()

    def _deliver(self, conn: _Conn, topic: str, payload: bytes, qos: int) -> None:
        self.stats.deliveries += 1
        conn.client._down(conn.client._on_publish_in, conn.epoch, topic, payload, qos)

    def _enqueue(self, session: _Session, topic: str, payload: bytes, front: bool = False) -> None:
        if len(session.queue) >= self.max_queued:
            self.stats.dropped += 1
            return
        self.stats.queued += 1
        if front:
            session.queue.appendleft((topic, payload))
        else:
            session.queue.append((topic, payload))

    def _requeue(self, client_id: str, topic: str, payload: bytes) -> None:
        session = self._sessions.get(client_id)
        if session is None or not session.persistent:
            return
        conn = self._conns.get(client_id)
        if conn is not None and conn.alive:
            self._deliver(conn, topic, payload, 1)
        else:
            self._enqueue(session, topic, payload, front=True)


class ModelClient:
    """A client of `BrokerModel` with the live `MqttClient`'s interface, in simulated time."""

    # A fleet-scale run holds one per device: slots save ~1.5 KiB each over an instance dict.
    __slots__ = (
        "_attempt",
        "_auto",
        "_connack",
        "_down_last",
        "_epoch",
        "_held_down",
        "_held_up",
        "_last_out",
        "_link_seed",
        "_mid",
        "_resumed_at",
        "_rng",
        "_rng_seed",
        "_silence_gen",
        "_state",
        "_subs",
        "_unacked",
        "_up_last",
        "backoff_max",
        "backoff_min",
        "broker",
        "callback_errors",
        "clean_session",
        "client_id",
        "connects",
        "env",
        "keepalive",
        "link",
        "link_rng",
        "on_connect",
        "on_disconnect",
        "on_message",
        "password",
        "reconnect_enabled",
        "silenced",
        "username",
        "will",
    )  # fmt: skip

    def __init__(
        self,
        broker: BrokerModel,
        client_id: str,
        *,
        keepalive: float = 30,
        will: Will | None = None,
        clean_session: bool = True,
        latency: float = 0.0,
        link: LinkProfile | None = None,
        on_message: Callable[[str, bytes], None] | None = None,
        on_connect: Callable[[], None] | None = None,
        on_disconnect: Callable[[], None] | None = None,
        reconnect: bool = True,
        backoff_min: float = 0.5,
        backoff_max: float = 30.0,
        rng: random.Random | float | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        """``rng``: the client's generator (reconnect jitter, link draws), or a seed to make it from when
        it is first needed (most clients of a large fleet never draw: seeding one costs ~5 µs); None:
        seeded from the client id."""
        if not isinstance(client_id, str) or not client_id:
            raise ValueError(f"client_id must be a non-empty string, got {client_id!r}")
        if keepalive < 0 or latency < 0:
            raise ValueError(f"keepalive and latency must be >= 0, got {keepalive}, {latency}")
        if not 0 < backoff_min <= backoff_max:
            raise ValueError(f"backoff needs 0 < backoff_min <= backoff_max, got {backoff_min}/{backoff_max}")
        self.broker, self.env, self.client_id = broker, broker.env, client_id
        self.keepalive, self.will, self.clean_session = keepalive, will, clean_session
        self.username, self.password = username, password  # a closed broker's credentials
        self.on_message, self.on_connect, self.on_disconnect = on_message, on_connect, on_disconnect
        self.reconnect_enabled = reconnect
        self.backoff_min, self.backoff_max = backoff_min, backoff_max
        self._rng: random.Random | None = None
        self._rng_seed: float | str = client_id if rng is None else 0.0
        # The device's link (latency, jitter, loss as retransmission delay, bandwidth), as the live
        # LinkProxy applies it; `latency` alone is the same as LinkProfile(latency_s=latency).
        self.link = link if link is not None else LinkProfile(latency_s=latency)
        # The client generator's first draw, made into a generator only when the link first needs
        # randomness (jitter, loss): a Random is 2.5 KiB, and most of a 100k fleet sits on clean links.
        self._link_seed: float | None = None
        self.link_rng: random.Random | None = None
        if isinstance(rng, random.Random):
            self._rng = rng
            self._link_seed = rng.random()
        elif rng is not None:
            self._rng_seed = rng
        self.callback_errors = 0
        self.connects = 0  # CONNACKs received
        self._state = "idle"  # idle | connecting | connected
        self._auto = False
        self._attempt = 0
        self._epoch = 0
        self._mid = 0
        self._subs: dict[str, int] = {}
        self._unacked: dict[int, tuple[str, bytes, bool]] = {}
        self._connack: simpy.Event | None = None
        self._up_last = 0.0
        self._down_last = 0.0
        self._last_out = 0.0
        self.silenced = False
        self._silence_gen = 0
        self._resumed_at = -1.0
        self._held_up: list[tuple[Callable[..., None], tuple[Any, ...]]] = []
        self._held_down: list[tuple[Callable[..., None], tuple[Any, ...]]] = []

    @property
    def connected(self) -> bool:
        return self._state == "connected"

    @property
    def rng(self) -> random.Random:
        if self._rng is None:
            self._rng = random.Random(self._rng_seed)
            self._link_seed = self._rng.random()  # its first draw, as when the generator is given
        return self._rng

    @property
    def latency(self) -> float:
        """The link's one-way latency (changing it keeps the rest of the link's profile)."""
        return self.link.latency_s

    @latency.setter
    def latency(self, seconds: float) -> None:
        self.link = dataclasses.replace(self.link, latency_s=seconds)

    @property
    def subscriptions(self) -> dict[str, int]:
        return dict(self._subs)

    # --- public API -------------------------------------------------------------------------------

    def connect(self) -> simpy.Event:
        """Start connecting; the event's value is True on CONNACK, False when refused."""
        if self._state == "connected":
            ev = self.env.event()
            ev.succeed(True)
            return ev
        if self._state == "connecting" and self._connack is not None:
            return self._connack
        self._auto = False
        return self._start_connect()

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int:
        check_topic(topic)
        _check_qos(qos)
        if not isinstance(payload, bytes | bytearray):
            raise ValueError(f"payload must be bytes, not {type(payload).__name__}")
        if self._state != "connected":
            raise MqttError(f"{self.client_id}: not connected to the broker model, cannot publish to {topic}")
        self._mid = self._mid % 65535 + 1
        if qos == 1:
            self._unacked[self._mid] = (topic, bytes(payload), retain)
        self._up(self.broker._on_publish, self, self._epoch, self._mid, topic, bytes(payload), qos, retain)
        return self._mid

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        check_filter(topic_filter)
        _check_qos(qos)
        self._subs[topic_filter] = qos
        if self._state == "connected":
            self._up(self.broker._on_subscribe, self, self._epoch, topic_filter, qos)

    def unsubscribe(self, topic_filter: str) -> None:
        self._subs.pop(topic_filter, None)
        if self._state == "connected":
            self._up(self.broker._on_unsubscribe, self, self._epoch, topic_filter)

    def disconnect(self) -> None:
        """Clean DISCONNECT: the broker discards the will. A silenced link cannot carry it, so then the
        broker only notices by keep-alive (and fires the will)."""
        self._auto = False
        if self._state == "connected" and not self.silenced:
            self._up(self.broker._on_disconnect, self, self._epoch)
        self._close_locally()

    def abort(self, reconnect: bool = False) -> None:
        """Drop the link without DISCONNECT (power loss): the broker fires the will once it sees the
        close; on a silenced link it never sees it and keep-alive expiry does the same later."""
        if self._state != "idle" and not self.silenced:
            self._up(self.broker._on_link_lost, self, self._epoch)
        self._auto = reconnect and self.reconnect_enabled
        self._close_locally()
        if self._auto:
            self._schedule_reconnect()

    def vanish(self) -> None:
        """The device is gone without a packet (power loss, brownout): nothing reaches the broker, which
        drops the session at keep-alive expiry and then fires the will. No reconnect: the device is off."""
        if self._state != "idle" and not self.silenced:
            self._expire_later()
        self._auto = False
        self._close_locally()

    def heard_at(self, t: float) -> None:
        """The client's last packet left at ``t`` (heartbeats sent in bulk: twin.cohort)."""
        self._last_out = max(self._last_out, t)

    def silence(self) -> None:
        if self.silenced:
            return
        self.silenced = True
        self._silence_gen += 1
        if self._state == "idle":
            return
        self._expire_later()

    def _expire_later(self) -> None:
        """Ask the broker to check this link when its keep-alive would run out with nothing heard."""
        if self.keepalive <= 0:
            return
        ka = float(self.keepalive)
        since = self.env.now - self._last_out
        last_ping = self._last_out + (since // ka) * ka  # paho pings `keepalive` after its last packet
        deadline = last_ping + self.link.latency_s + 1.5 * ka
        check = self.broker._check_expiry
        self.broker.at(deadline - self.env.now, check, self, self._epoch, self._silence_gen)

    def unsilence(self) -> None:
        if not self.silenced:
            return
        self.silenced = False
        self._resumed_at = self.env.now + self.link.latency_s
        held_up, self._held_up = self._held_up, []
        for fn, args in held_up:
            self._up(fn, *args)
        if self._state != "idle":
            self._up(self.broker._on_ping, self, self._epoch)
        held_down, self._held_down = self._held_down, []
        for fn, args in held_down:
            fn(*args)

    # --- links ------------------------------------------------------------------------------------

    def _delay(self) -> float:
        """One packet's one-way delay on this link (a lost segment costs a retransmission)."""
        p = self.link
        delay = p.latency_s
        if p.jitter_s or p.loss:
            rng = self.link_rng
            if rng is None:
                if self._link_seed is None:
                    self.rng  # noqa: B018  (makes the client's generator, whose first draw seeds this one)
                rng = self.link_rng = random.Random(self._link_seed)
            if p.jitter_s:
                delay = max(0.0, delay + rng.uniform(-p.jitter_s, p.jitter_s))
            if p.loss and rng.random() < p.loss:
                delay += p.retransmit_s
        return delay

    def _up(self, fn: Callable[..., None], *args: Any) -> None:
        if self.silenced:
            self._held_up.append((fn, args))
            return
        now = self.env.now
        self._last_out = now
        t = max(now + self._delay(), self._up_last)  # FIFO: a late packet holds the ones behind it
        self._up_last = t
        self.broker.at(t - now, fn, *args)

    def _down(self, fn: Callable[..., None], *args: Any) -> None:
        now = self.env.now
        t = max(now + self._delay(), self._down_last)
        self._down_last = t
        self.broker.at(t - now, self._arrive, fn, args)

    def _arrive(self, fn: Callable[..., None], args: tuple[Any, ...]) -> None:
        if self.silenced:
            self._held_down.append((fn, args))
        else:
            fn(*args)

    # --- packets arriving at the client -------------------------------------------------------------

    def _on_connack(self, epoch: int, _session_present: bool) -> None:
        if epoch != self._epoch or self._state != "connecting":
            return
        self._state = "connected"
        self._attempt = 0
        self.connects += 1
        for topic_filter, qos in self._subs.items():
            self._up(self.broker._on_subscribe, self, epoch, topic_filter, qos)
        for mid, (topic, payload, retain) in self._unacked.items():
            self._up(self.broker._on_publish, self, epoch, mid, topic, payload, 1, retain)
        self._auto = self.reconnect_enabled
        if self._connack is not None and not self._connack.triggered:
            self._connack.succeed(True)
        self._fire(self.on_connect)

    def _on_refused(self, epoch: int) -> None:
        if epoch != self._epoch or self._state != "connecting":
            return
        self._state = "idle"
        if self._connack is not None and not self._connack.triggered:
            self._connack.succeed(False)
        if self._auto:
            self._schedule_reconnect()

    def _on_closed(self, epoch: int) -> None:
        if epoch != self._epoch or self._state == "idle":
            return
        was_connected = self._state == "connected"
        self._state = "idle"
        if was_connected:
            self._fire(self.on_disconnect)
        if self._auto:
            self._schedule_reconnect()

    def _on_puback(self, epoch: int, mid: int) -> None:
        if epoch == self._epoch:
            self._unacked.pop(mid, None)

    def _on_publish_in(self, epoch: int, topic: str, payload: bytes, qos: int) -> None:
        if epoch != self._epoch or self._state != "connected":
            if qos == 1:
                self.broker._requeue(self.client_id, topic, payload)
            return
        self._fire(self.on_message, topic, payload)

    # --- internals ----------------------------------------------------------------------------------

    def _start_connect(self) -> simpy.Event:
        self._epoch += 1
        self._state = "connecting"
        self._connack = self.env.event()
        self._up(self.broker._on_connect, self, self._epoch, self.clean_session, self.will)
        return self._connack

    def _close_locally(self) -> None:
        was_connected = self._state == "connected"
        self._state = "idle"
        self._epoch += 1  # whatever is still on the wire for the old link is ignored
        self.silenced = False
        self._held_up.clear()
        self._held_down.clear()
        if self._connack is not None and not self._connack.triggered:
            self._connack.succeed(False)
        if was_connected:
            self._fire(self.on_disconnect)

    def _schedule_reconnect(self) -> None:
        # As MqttClient._backoff: capped exponential, jittered over its upper half, never below the floor.
        ceiling = min(self.backoff_max, self.backoff_min * 2.0 ** min(self._attempt, 30))
        delay = self.rng.uniform(max(self.backoff_min, ceiling / 2), ceiling)
        self._attempt += 1
        epoch = self._epoch
        self.broker.at(delay, self._retry, epoch)

    def _retry(self, epoch: int) -> None:
        if self._auto and self._state == "idle" and self._epoch == epoch:
            self._start_connect()

    def _fire(self, callback: Callable[..., None] | None, *args: Any) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:  # a device bug must not stop the simulation of everyone else
            self.callback_errors += 1
            log.exception("%s: callback %s failed", self.client_id, getattr(callback, "__name__", callback))
