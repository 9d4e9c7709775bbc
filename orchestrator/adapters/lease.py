"""The leader lease of standby managers on PostgreSQL, and the asyncio loop that keeps it.

Two or more ``propeller manager --ha`` processes share one PostgreSQL database and one broker; the one
holding the lease leads (restores from the store, dispatches, publishes, writes, runs cron and
liveness), the others wait as standbys. Timing decisions are in the sans-I/O ``orchestrator.core.lease``.

Why a lease row with an expiry, and not a session-level advisory lock on a dedicated connection:

- An advisory lock is released when the server notices the holder's session is gone. After a kill -9
  that is at once, but after a partition or a frozen host it is when TCP keepalive gives up (hours by
  default), and meanwhile the holder cannot tell whether it still holds the lock. A lease has a bound
  both sides know: the holder stops trusting it ``margin`` before the database lets anyone else take it.
- The lease's epoch is a fencing token: every write transaction of the leader first reads the row
  ``FOR SHARE`` and checks the epoch (``Store.fence``), so a leader that was paused past its lease
  (SIGSTOP, a blocked loop) and wakes up cannot commit anything, and an acquirer's ``UPDATE`` waits for
  any write transaction that already passed the check. An advisory lock gives no such token.
- It survives connection poolers (PgBouncer in transaction mode breaks session locks) and needs no
  connection pinned for the process's lifetime.

The price is the takeover time after a kill -9: up to one ``ttl`` (default 5 s) plus an acquire round
trip (a standby tries again the moment the lease it saw expires), instead of near zero; ``--lease-ttl``
trades it against tolerance of database hiccups. Expiry uses the database's clock only, so the
managers' wall clocks need not agree.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from orchestrator.adapters.aio import cancel_and_wait, wait_event
from orchestrator.adapters.store import Store, StoreError
from orchestrator.core.lease import Action, LeaseCore, Role

log = logging.getLogger("propeller.lease")

LEASE_NAME = "manager"
_NOW = "extract(epoch from clock_timestamp())::double precision"
_ENSURE = sa.text(
    "INSERT INTO leader_lease (name, holder, epoch, expires_at) VALUES (:name, '', 0, 0) "
    "ON CONFLICT (name) DO NOTHING"
)
# One statement both tries to take the lease and reads who holds it for how long (the row as it was
# when the statement started): a refused standby learns when to try next without a second round trip.
_ACQUIRE = sa.text(
    "WITH acquired AS ("
    f"UPDATE leader_lease SET holder = :holder, epoch = epoch + 1, expires_at = {_NOW} + :ttl, "
    f"acquired_at = {_NOW} WHERE name = :name AND expires_at < {_NOW} RETURNING epoch) "
    f"SELECT (SELECT epoch FROM acquired), holder, epoch, expires_at - {_NOW} "
    "FROM leader_lease WHERE name = :name"
)
_RENEW = sa.text(
    f"UPDATE leader_lease SET expires_at = {_NOW} + :ttl "
    "WHERE name = :name AND holder = :holder AND epoch = :epoch RETURNING epoch"
)
_RELEASE = sa.text(
    "UPDATE leader_lease SET expires_at = 0 WHERE name = :name AND holder = :holder AND epoch = :epoch"
)
_CURRENT = sa.text(f"SELECT holder, epoch, expires_at - {_NOW} FROM leader_lease WHERE name = :name")
# The check also bounds how long this transaction may then sit idle holding the row FOR SHARE (see
# ``PgLease.fence``): one round trip for both.
_FENCE = sa.text(
    "SELECT holder, epoch, set_config('idle_in_transaction_session_timeout', :idle_ms, true) "
    "FROM leader_lease WHERE name = :name FOR SHARE"
)


class Fenced(StoreError):
    """A write by a manager whose lease epoch is no longer current: rolled back."""


def default_holder() -> str:
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Attempt:
    """What one acquire statement found."""

    epoch: int | None  # the new epoch if the lease is now ours
    held: tuple[str, int, float]  # (holder, epoch, seconds it had left) as the statement found the row


class PgLease:
    """The SQL of one lease row. ``ttl`` is sent with each statement; expiry is the database's clock."""

    def __init__(self, store: Store, holder: str | None = None, name: str = LEASE_NAME) -> None:
        if store.sa_engine.dialect.name != "postgresql":
            raise StoreError(store.url, "a standby manager (--ha) needs PostgreSQL; SQLite has one manager")
        self.store = store
        self.holder = holder or default_holder()
        self.name = name

    async def ensure(self) -> None:
        async with self.store.sa_engine.begin() as conn:
            await conn.execute(_ENSURE, {"name": self.name})

    async def acquire(self, ttl: float) -> Attempt:
        """Take the lease if it is free (expired); either way, who held it and for how long."""
        async with self.store.sa_engine.begin() as conn:
            row = (
                await conn.execute(_ACQUIRE, {"name": self.name, "holder": self.holder, "ttl": ttl})
            ).first()
        if row is None:  # ensure() was not run: nobody holds a lease that does not exist
            return Attempt(None, ("", 0, 0.0))
        return Attempt(None if row[0] is None else int(row[0]), (str(row[1]), int(row[2]), float(row[3])))

    async def renew(self, epoch: int, ttl: float) -> bool:
        params = {"name": self.name, "holder": self.holder, "epoch": epoch, "ttl": ttl}
        async with self.store.sa_engine.begin() as conn:
            row = (await conn.execute(_RENEW, params)).first()
        return row is not None

    async def release(self, epoch: int) -> None:
        """Let a standby take over at its next poll (a clean stop), if the lease is still ours."""
        async with self.store.sa_engine.begin() as conn:
            await conn.execute(_RELEASE, {"name": self.name, "holder": self.holder, "epoch": epoch})

    async def current(self) -> tuple[str, int, float] | None:
        """(holder, epoch, seconds until it expires by the database's clock), or None without a row."""
        async with self.store.sa_engine.connect() as conn:
            row = (await conn.execute(_CURRENT, {"name": self.name})).first()
        return None if row is None else (str(row[0]), int(row[1]), float(row[2]))

    def fence(self, epoch: int, idle_s: float) -> Callable[[sa.Connection], None]:
        """The check ``Store`` runs first in each write transaction while we lead with ``epoch``.

        The transaction then holds the lease row ``FOR SHARE`` until it ends, and an acquirer's
        ``UPDATE`` waits for it. A leader frozen inside it (SIGSTOP, a paused VM) would hold that lock
        for as long as its connection lives (hours: TCP keepalive), and no standby could ever take
        over. So the check also tells the database to end the session if the transaction sits idle
        for ``idle_s`` (``idle_in_transaction_session_timeout``, for this transaction only): the lock
        goes, the frozen leader's commit fails when it wakes, and the takeover waits at most
        ``idle_s`` past the lease's expiry.
        """
        idle_ms = str(max(1, round(idle_s * 1000)))

        def check(conn: sa.Connection) -> None:
            row = conn.execute(_FENCE, {"name": self.name, "idle_ms": idle_ms}).first()
            if row is None or str(row[0]) != self.holder or int(row[1]) != epoch:
                holder, current = (row[0], row[1]) if row is not None else ("nobody", 0)
                raise Fenced(
                    self.store.url,
                    f"write refused: this manager led with lease epoch {epoch}, "
                    f"now {holder} holds epoch {current}",
                )

        return check


class LeaseKeeper:
    """Drives ``LeaseCore`` on asyncio: runs its statements, and calls back on leading and on losing.

    ``on_lead(epoch)`` runs as its own task (restoring takes a while and renewals must go on);
    ``on_deposed(reason)`` is called synchronously the moment the lease can no longer be trusted.
    """

    def __init__(
        self,
        lease: PgLease,
        core: LeaseCore,
        on_lead: Callable[[int], Awaitable[None]],
        on_deposed: Callable[[str], None],
    ) -> None:
        self.lease = lease
        self.core = core
        self.on_lead = on_lead
        self.on_deposed = on_deposed
        self.leader_seen: tuple[str, int, float] | None = None  # the current holder, as a standby saw it
        self._wake = asyncio.Event()
        self._leading_task: asyncio.Task[None] | None = None
        self._statement_task: asyncio.Task[None] | None = None
        self._reported = False

    def now(self) -> float:
        return time.monotonic()

    def is_leader(self) -> bool:
        return self.core.is_leader(self.now())

    async def run(self) -> None:
        """Keep or wait for the lease until deposed (``lease.ensure()`` must have run)."""
        try:
            await self._run()
        except Exception as err:  # a bug here must not leave a leader running unrenewed
            self._depose(f"lease keeper failed: {type(err).__name__}: {err}")
            raise

    async def _run(self) -> None:
        while self.core.role is not Role.DEPOSED:
            now = self.now()
            action = self.core.due(now)
            if action is Action.STEP_DOWN:
                self._depose(f"lease not renewed within {self.core.config.ttl - self.core.config.margin:g} s")
                break
            if action is not None:
                self.core.sent(now)
                # The statement runs as its own task: a hung database must not stop the step-down check.
                self._statement_task = asyncio.get_running_loop().create_task(self._statement(action))
            deadline = self.core.next_deadline()
            delay = 0.5 if deadline is None else min(0.5, max(0.0, deadline - self.now()))
            self._wake.clear()
            await wait_event(self._wake, delay)

    async def _statement(self, action: Action) -> None:
        core, ttl = self.core, self.core.config.ttl
        was = core.role
        try:
            if action is Action.ACQUIRE:
                attempt = await asyncio.wait_for(self.lease.acquire(ttl), ttl / 2)
                if attempt.epoch is None:
                    self.leader_seen = attempt.held
                    core.refused(self.now(), attempt.held[2])
                else:
                    core.granted(attempt.epoch, self.now())
            else:
                renewed = await asyncio.wait_for(self.lease.renew(core.epoch, ttl), ttl / 2)
                if renewed:
                    core.granted(core.epoch, self.now())
                else:
                    core.refused(self.now())
        except Exception as err:  # database away or slow: the core retries, and steps down in time
            core.failed(self.now())
            why = f"{type(err).__name__}: {err}"
            if isinstance(err, TimeoutError):  # it carries no text of its own
                why = f"no answer from the database within {ttl / 2:g} s"
            log.warning(json.dumps({"event": "lease_statement_failed", "action": action.value, "error": why}))
        if was is Role.STANDBY and core.role is Role.LEADER:
            log.info(
                json.dumps({"event": "lease_acquired", "holder": self.lease.holder, "epoch": core.epoch})
            )
            self._leading_task = asyncio.get_running_loop().create_task(self._lead(core.epoch))
        elif was is Role.LEADER and core.role is Role.DEPOSED:
            self._depose(core.reason)
        self._wake.set()

    async def _lead(self, epoch: int) -> None:
        try:
            await self.on_lead(epoch)
        except Exception as err:
            self._depose(f"could not take over: {type(err).__name__}: {err}")

    def _depose(self, reason: str) -> None:
        self.core.step_down(reason)
        if self._reported:
            return
        self._reported = True
        log.warning(
            json.dumps({"event": "lease_lost", "holder": self.lease.holder, "reason": self.core.reason})
        )
        self.on_deposed(self.core.reason)
        self._wake.set()

    async def close(self) -> None:
        """Cancel a statement or a takeover still running (the service is stopping)."""
        await cancel_and_wait([self._statement_task, self._leading_task], "lease close")

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.core.role.value, "holder": self.lease.holder}
        if self.core.role is Role.LEADER:
            out["epoch"] = self.core.epoch
        elif self.leader_seen is not None:
            holder, epoch, left = self.leader_seen
            out["leader"] = {"holder": holder, "epoch": epoch, "expires_in_s": round(left, 3)}
        if self.core.reason:
            out["reason"] = self.core.reason
        return out
