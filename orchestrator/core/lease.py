"""Leadership among managers sharing one PostgreSQL: when to acquire, renew or give up the lease.

Sans-I/O. The adapter (``orchestrator/adapters/lease.py``) runs one SQL statement at a time and
reports its outcome; this core decides what to run next and whether this manager may act as the
leader *now*. Time is the local monotonic clock, passed in.

The lease is a row with a holder, an epoch (the fencing token) and an expiry computed by the
database's clock: ``expires_at = db_now + ttl``. The database executes a statement after it was sent,
so a lease granted or renewed by a statement sent at local time ``t`` is valid in the database until at
least ``t + ttl`` of elapsed time. The leader trusts it only until ``t + ttl - margin``: the margin
absorbs a local clock running slow and the time between deciding to publish and the broker acting on
it. After that instant, unless a renewal sent later succeeded, the leader stops on its own
(``is_leader(now)`` turns false, ``due(now)`` says STEP_DOWN) — before any standby can take the row.
So two managers never both believe they lead; and writes carry the epoch, so even a leader paused for
longer than the lease (a stopped process, a blocked loop) cannot commit after it was replaced.

A standby tries to acquire every ``poll`` seconds, and also at the instant the lease it was refused
expires: a refused attempt reports how long the holder's lease has left (by the database's clock), and
the next attempt is due then if that is sooner than ``poll``. So after a leader dies (its last renewal
at most ``renew_every`` before), the standby tries within one statement round trip of the expiry, not
up to a whole ``poll`` later: the takeover bound is ``ttl`` plus one acquire round trip, plus the time
to restore from the store and connect to the broker. ``poll`` still bounds the wait for a lease that was
released early (a clean stop sets its expiry to 0).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass


class Role(enum.StrEnum):
    STANDBY = "standby"  # waiting for the lease
    LEADER = "leader"  # holds the lease: dispatches, publishes, writes
    DEPOSED = "deposed"  # held it and lost it: publishes and writes nothing more, then exits


class Action(enum.StrEnum):
    ACQUIRE = "acquire"
    RENEW = "renew"
    STEP_DOWN = "step_down"


@dataclass(frozen=True)
class LeaseConfig:
    ttl: float = 5.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.ttl) and self.ttl > 0):
            raise ValueError(f"lease ttl must be a positive number of seconds, got {self.ttl}")

    @property
    def renew_every(self) -> float:
        return self.ttl / 5  # three renewals may fail before the margin is reached

    @property
    def margin(self) -> float:
        return self.ttl / 5

    @property
    def poll(self) -> float:
        return max(0.05, self.ttl / 10)

    @property
    def retry_gap(self) -> float:
        """The least time between a refusal and the next attempt (the expiry estimate may be early)."""
        return min(self.poll, 0.01)


class LeaseCore:
    def __init__(self, config: LeaseConfig | None = None) -> None:
        self.config = config or LeaseConfig()
        self.role = Role.STANDBY
        self.epoch = 0
        self.reason = ""  # why we were deposed
        self._valid_until = -math.inf
        self._next_try = -math.inf  # a standby tries at once
        self._next_renew = math.inf
        self._sent_at: float | None = None  # the statement in flight, if any

    # -------------------------------------------------------------- what to do

    def is_leader(self, now: float) -> bool:
        return self.role is Role.LEADER and now < self._valid_until

    def due(self, now: float) -> Action | None:
        if self.role is Role.LEADER and now >= self._valid_until:
            return Action.STEP_DOWN  # even while a renewal hangs: the lease may be gone already
        if self._sent_at is not None or self.role is Role.DEPOSED:
            return None
        if self.role is Role.STANDBY and now >= self._next_try:
            return Action.ACQUIRE
        if self.role is Role.LEADER and now >= self._next_renew:
            return Action.RENEW
        return None

    def next_deadline(self) -> float | None:
        if self.role is Role.DEPOSED:
            return None
        if self.role is Role.LEADER:
            return (
                self._valid_until if self._sent_at is not None else min(self._valid_until, self._next_renew)
            )
        return None if self._sent_at is not None else self._next_try

    # -------------------------------------------------------------- outcomes

    def sent(self, now: float) -> None:
        """The adapter sent an acquire or renew statement at ``now``."""
        self._sent_at = now

    def granted(self, epoch: int, now: float) -> None:
        """The statement in flight acquired or renewed the lease with ``epoch``."""
        sent_at = self._take_sent(now)
        if self.role is Role.DEPOSED:
            return
        if self.role is Role.LEADER and epoch != self.epoch:
            self.step_down(f"lease epoch changed from {self.epoch} to {epoch}")
            return
        self.role = Role.LEADER
        self.epoch = epoch
        self._valid_until = sent_at + self.config.ttl - self.config.margin
        self._next_renew = sent_at + self.config.renew_every

    def refused(self, now: float, expires_in: float | None = None) -> None:
        """The statement in flight found the lease held by another manager.

        ``expires_in``: how long that lease had left when the database ran the statement, if it said.
        The statement ran after it was sent, so ``sent + expires_in`` is at or before the expiry on our
        clock: trying then is at worst early by one round trip, and the refusal that answers it carries
        the few milliseconds still left.
        """
        sent_at = self._take_sent(now)
        if self.role is Role.LEADER:
            self.step_down("another manager holds the lease")
        elif self.role is Role.STANDBY:
            wait = self.config.poll if expires_in is None else min(self.config.poll, expires_in)
            self._next_try = max(sent_at + wait, now + self.config.retry_gap)

    def failed(self, now: float) -> None:
        """The statement in flight failed (database unreachable, timeout): try again soon."""
        self._take_sent(now)
        if self.role is Role.LEADER:
            self._next_renew = now + self.config.poll  # the validity deadline still applies
        elif self.role is Role.STANDBY:
            self._next_try = now + self.config.poll

    def step_down(self, reason: str) -> None:
        if self.role is not Role.DEPOSED:
            self.role = Role.DEPOSED
            self.reason = reason
            self._valid_until = -math.inf

    def _take_sent(self, now: float) -> float:
        sent_at, self._sent_at = self._sent_at, None
        return now if sent_at is None else sent_at
