"""Steady devices advanced in bulk, in virtual time: the fleet-scale fast path for heartbeats.

A device that is online, idle, unfaulted and on a clean link does one thing: every heartbeat interval it
publishes the same heartbeat, which the broker routes to the manager alone, whose engine refreshes the
proplet's liveness. ``HeartbeatCohort`` does that for all such devices at once: one simpy event per
``tick`` for the whole cohort, and each tick's heartbeats reach the SAME manager engine as one batch
(``Engine.heartbeat_batch``), each with the exact time the device would have sent it. The device's own
timer, its MQTT client and the broker model are skipped for those messages only. The members of one
tick (a bucket) move together, one interval on, round after round: while they stay the same, their next
times are one list shifted at C level and the engine recognises the batch (its ``key``) and keeps their
last-seen times with it, so a steady round costs O(1) Python work, not O(members).

A device leaves the cohort before anything else happens to it — a message for it (a start, a stop, a
discovery request), a fault (power loss, Wi-Fi drop, reset, out of memory), a disconnect, the end of the
run — and runs the full per-message path from then on (``SimDevice`` rejoins when it is steady again).
On leaving, a heartbeat that fell due within the current tick is delivered with its own time first, the
device's proplet engine resumes at its next heartbeat time, and its client's last packet is the last
heartbeat (what the broker's keep-alive check reads). The whole cohort dissolves (every device back to
the per-message path) when the manager is not there to receive: killed, its link down or silent, or the
broker down, or when anybody else subscribes to the heartbeat topic.

Why the verdicts are the same: the manager's engine sees each heartbeat with its true time, decides with
the same code (``heartbeat_batch`` falls back to the per-message handling for anything not routine), and
a heartbeat reaches it at most ``tick`` late, which is far less than the slack between the heartbeat
interval and the liveness timeout (``tick`` must be below that slack; checked). ``tests/scenarios/
test_cohort.py`` runs every shipped scenario with the cohort on and off and compares the trace hashes;
``tests/unit/test_engine_heartbeat_batch.py`` compares the engine's batched and per-message decisions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import simpy

from orchestrator import wire

if TYPE_CHECKING:
    from twin.broker_model import BrokerModel
    from twin.device import SimDevice
    from twin.vmanager import VirtualManager


@dataclass(eq=False, slots=True)
class _Member:
    device: SimDevice
    next_at: float
    heartbeat: wire.Heartbeat
    last_at: float  # its last heartbeat (sent as itself, or by the cohort)
    sent: int = 0
    active: bool = True
    # While it sits in its bucket's lists, its times are there (``_sync`` brings them back here):
    bucket: _Bucket | None = None
    index: int = 0  # in the bucket's lists
    base: int = 0  # the bucket's rounds when its times were last here


@dataclass(eq=False, slots=True)
class _Bucket:
    """The members whose heartbeats fall in one tick. While its members stay the same, a round is O(1)
    Python work: their next times are one list (shifted by the interval at C level), the heartbeats one
    list the manager's engine recognises again (``Engine.heartbeat_batch``'s ``key``)."""

    members: list[_Member]
    changed: bool = True  # members joined or left: rebuild the lists before the next round
    heartbeats: list[wire.Heartbeat] | None = None
    times: list[float] | None = None  # each member's next heartbeat
    last: list[float] | None = None  # each member's last heartbeat, once a round was sent
    rounds: int = 0


@dataclass
class CohortStats:
    joins: int = 0
    leaves: int = 0
    dissolved: int = 0
    heartbeats: int = 0
    batches: int = 0


class HeartbeatCohort:
    def __init__(self, env: simpy.Environment, broker: BrokerModel, manager: VirtualManager,
                 interval: float, timeout: float, tick: float | None = None) -> None:  # fmt: skip
        if tick is None:  # at most 1 s and half the slack, and a whole fraction of the interval
            tick = interval / math.ceil(interval / min(1.0, (timeout - interval) / 2))
        if not 0 < tick < timeout - interval:
            raise ValueError(
                f"cohort tick must be > 0 and below liveness timeout - heartbeat interval "
                f"({timeout - interval:g} s), got {tick!r}"
            )
        self.env, self.broker, self.manager = env, broker, manager
        self.interval, self.tick = interval, tick
        self.stats = CohortStats()
        self._buckets: dict[int, _Bucket] = {}
        self._member_of: dict[SimDevice, _Member] = {}
        self._running = False
        self._k = 0  # the tick being waited for
        # Buckets from one heartbeat to the next, when the interval is a whole number of ticks (a
        # bucket then moves as a whole; rounding can make a member due at most at the tick it is sent).
        steps = interval / tick
        self._step = round(steps) if abs(steps - round(steps)) < 1e-9 else 0

    def __len__(self) -> int:
        return len(self._member_of)

    # ------------------------------------------------------------------ membership
    def _receivable(self, topic: str) -> bool:
        """Only the manager subscribes to the heartbeat topic, and it is there to receive now."""
        m, client = self.manager, self.manager.client
        if not self.broker.up or m.engine is None or client is None:
            return False
        if not client.connected or client.silenced or not _clean(client):
            return False
        return set(self.broker.subscribers(topic)) == {m.client_id}

    def join(self, device: SimDevice, payload: bytes, sent_at: float, next_at: float) -> bool:
        """``device`` just sent heartbeat ``payload`` at ``sent_at`` and is steady: the cohort sends
        its next ones from ``next_at`` on. False if the manager could not receive them this way."""
        engine, client = self.manager.engine, device.mqtt
        if engine is None or device in self._member_of or not self._receivable(engine.topics.alive):
            return False
        if client is None or not _clean(client):  # its link's delays and draws are per packet
            return False
        message = wire.decode(engine.topics, engine.topics.alive, payload)
        assert isinstance(message, wire.Heartbeat)
        member = _Member(device, next_at, message, sent_at)
        self._member_of[device] = member
        self._file(member)
        self.stats.joins += 1
        if not self._running:
            self._running = True
            self.env.process(self._run())
        return True

    def leave(self, device: SimDevice) -> None:
        """``device`` runs the per-message path again from now on."""
        member = self._release(device)
        if member is not None:
            device.resume_heartbeats(member.last_at, member.next_at, member.sent)

    def _release(self, device: SimDevice) -> _Member | None:
        """Take ``device`` out, its heartbeats due within this tick sent (as it would have sent them
        before whatever happens now)."""
        member = self._member_of.pop(device, None)
        if member is None:
            return None
        self._sync(member)
        member.active = False
        if member.bucket is not None:
            member.bucket.changed = True
            member.bucket = None
        self.stats.leaves += 1
        engine = self.manager.engine
        if member.next_at <= self.env.now and engine is not None and self._receivable(engine.topics.alive):
            self._deliver_one(member)  # due within this tick: it was sent before whatever happens now
        return member

    def unreported(self) -> int:
        """Heartbeats sent for devices still in the cohort (not yet counted by the devices)."""
        for m in self._member_of.values():
            self._sync(m)
        return sum(m.sent for m in self._member_of.values())

    def dissolve(self) -> None:
        self.stats.dissolved += 1
        for device in list(self._member_of):
            self.leave(device)

    def finish(self) -> None:
        """The run is over: what ``dissolve`` does for the counts (the heartbeats due within this tick
        sent, every member's count handed back to its device), without re-arming the devices' timers,
        which nothing will run (at 100,000 devices that alone took ~20 s)."""
        self.stats.dissolved += 1
        for device in list(self._member_of):
            member = self._release(device)
            if member is not None:
                device.count_cohort_heartbeats(member.sent)

    # ------------------------------------------------------------------ the tick
    def _file(self, member: _Member) -> None:
        k = max(math.floor(member.next_at / self.tick), self._k)
        bucket = self._buckets.get(k)
        if bucket is None:
            self._buckets[k] = _Bucket([member])
        else:
            bucket.members.append(member)
            bucket.changed = True

    @staticmethod
    def _sync(member: _Member) -> None:
        """Bring the rounds its bucket sent since ``member.base`` into the member's own fields."""
        bucket = member.bucket
        if bucket is not None and bucket.rounds != member.base:
            assert bucket.times is not None and bucket.last is not None
            member.next_at, member.last_at = bucket.times[member.index], bucket.last[member.index]
            member.sent += bucket.rounds - member.base
            member.base = bucket.rounds

    def _rebuild(self, bucket: _Bucket) -> None:
        for m in bucket.members:
            self._sync(m)
        live = bucket.members = [m for m in bucket.members if m.active]
        for i, m in enumerate(live):
            m.bucket, m.index, m.base = bucket, i, bucket.rounds
        bucket.heartbeats = [m.heartbeat for m in live]  # a new list: the engine sees the change
        bucket.times, bucket.last = [m.next_at for m in live], None
        bucket.changed = False

    def _detach(self, bucket: _Bucket) -> list[_Member]:
        """Its members, each with its own times again (the bucket's lists are dropped)."""
        for m in bucket.members:
            self._sync(m)
            m.bucket = None
        return [m for m in bucket.members if m.active]

    def _run(self) -> Any:
        env, tick = self.env, self.tick
        self._k = math.floor(env.now / tick)
        while self._member_of:
            k = self._k
            yield env.timeout(max(0.0, (k + 1) * tick - env.now))
            self._k = k + 1
            bucket = self._buckets.pop(k, None)
            if bucket is None:
                continue
            engine = self.manager.engine
            if engine is None or not self._receivable(engine.topics.alive):
                self._buckets[k] = bucket  # their heartbeats are due: leaving sends them as they would
                self.dissolve()
                self._buckets.clear()
                break
            if bucket.changed:
                self._rebuild(bucket)
            if not bucket.members:
                continue
            self._deliver(bucket)
            if not self._step:
                for m in self._detach(bucket):
                    self._file(m)
                continue
            # their next heartbeats, one interval on: `step` buckets later (after any that joined there)
            later = self._buckets.get(k + self._step)
            if later is None:
                self._buckets[k + self._step] = bucket
            else:
                later.members.extend(self._detach(bucket))
                later.changed = True
        self._running = False

    def _deliver(self, bucket: _Bucket) -> None:
        times, heartbeats = bucket.times, bucket.heartbeats
        assert times is not None and heartbeats is not None
        bucket.last, bucket.times = times, list(map(self.interval.__add__, times))
        bucket.rounds += 1
        self._send(heartbeats, times, bucket)

    def _deliver_one(self, member: _Member) -> None:
        t = member.next_at
        member.last_at, member.next_at = t, t + self.interval
        member.sent += 1
        self._send([member.heartbeat], [t], None)

    def _send(self, heartbeats: list[wire.Heartbeat], times: list[float], key: _Bucket | None) -> None:
        manager, engine = self.manager, self.manager.engine
        assert engine is not None
        engine.heartbeat_batch(heartbeats, times, float(self.env.now), manager.wall, key)
        n = len(heartbeats)
        manager.heartbeats += n
        manager.messages += n
        self.stats.heartbeats += n
        self.stats.batches += 1
        manager.after_messages()


def _clean(client: Any) -> bool:
    link = client.link
    return not (link.latency_s or link.jitter_s or link.loss or link.blackhole)


__all__ = ["CohortStats", "HeartbeatCohort"]
