"""The lease row on PostgreSQL: one holder at a time, and writes fenced by the epoch."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from orchestrator.adapters.lease import Fenced, PgLease
from orchestrator.adapters.store import Store, StoreError
from orchestrator.core.model import Task
from tests.fixtures.store import PgSchema

pytestmark = pytest.mark.postgres


async def test_one_holder_and_a_replaced_leader_cannot_write(pg_schema: PgSchema) -> None:
    async with (
        await Store.open(pg_schema.url, schema=pg_schema.name) as store_a,
        await Store.open(pg_schema.url, schema=pg_schema.name) as store_b,
    ):
        a, b = PgLease(store_a, holder="a"), PgLease(store_b, holder="b")
        await a.ensure()
        await b.ensure()
        epoch_a = (await a.acquire(0.5)).epoch
        assert epoch_a == 1
        refused = await b.acquire(0.5)
        assert refused.epoch is None  # held, and the refusal says by whom and for how long
        assert refused.held[:2] == ("a", 1) and 0 < refused.held[2] <= 0.5
        store_a.fence = a.fence(epoch_a, 5.0)
        await store_a.save_task(Task(id="t", name="by a"))
        # A stops renewing (paused, partitioned): once the lease expires B gets it with a new epoch.
        deadline = time.monotonic() + 30
        epoch_b = None
        while epoch_b is None:
            assert time.monotonic() < deadline, "b never acquired the expired lease"
            epoch_b = (await b.acquire(0.5)).epoch
            await asyncio.sleep(0.05)
        assert epoch_b == 2
        assert await b.current() is not None and (await b.current())[:2] == ("b", 2)  # type: ignore[index]
        with pytest.raises(Fenced, match="epoch 1, now b holds epoch 2"):
            await store_a.save_task(Task(id="t", name="late write by a"))
        assert not await a.renew(epoch_a, 0.5)
        assert [t.name for t in await store_b.load_tasks()] == ["by a"]
        store_b.fence = b.fence(epoch_b, 5.0)
        await store_b.save_task(Task(id="t", name="by b"))
        # A clean stop releases: the next acquire by anyone succeeds at once.
        await b.release(epoch_b)
        assert (await a.acquire(30)).epoch == 3


async def test_a_leader_frozen_inside_a_write_does_not_hold_off_the_takeover(pg_schema: PgSchema) -> None:
    """A leader paused (SIGSTOP, a frozen VM) after its write passed the fence holds the lease row
    FOR SHARE, and an acquirer's UPDATE waits for that lock: the database ends such a transaction
    once it sits idle past the fence's bound, so the standby takes over soon after the lease expires
    (before, it waited for as long as the frozen leader's connection lived)."""
    async with (
        await Store.open(pg_schema.url, schema=pg_schema.name) as store_a,
        await Store.open(pg_schema.url, schema=pg_schema.name) as store_b,
    ):
        a, b = PgLease(store_a, holder="a"), PgLease(store_b, holder="b")
        await a.ensure()
        epoch_a = (await a.acquire(0.5)).epoch
        assert epoch_a == 1
        frozen = await store_a.sa_engine.connect()
        try:
            await frozen.begin()
            await frozen.run_sync(a.fence(epoch_a, 0.5))  # passed the check, then nothing more
            deadline, epoch_b = time.monotonic() + 30, None
            while epoch_b is None:
                assert time.monotonic() < deadline, "b never took over from a leader frozen in a write"
                with contextlib.suppress(TimeoutError):  # waiting on the frozen leader's lock
                    epoch_b = (await asyncio.wait_for(b.acquire(0.5), 2)).epoch
                await asyncio.sleep(0.05)
            assert epoch_b == 2
            with pytest.raises(sa.exc.DBAPIError, match="idle-in-transaction"):
                await frozen.execute(sa.text("SELECT 1"))  # woken: its transaction was ended for it
        finally:
            with contextlib.suppress(sa.exc.DBAPIError):
                await frozen.close()


async def test_the_lease_needs_postgresql(tmp_path: Path) -> None:
    async with await Store.open(str(tmp_path / "m.db")) as store:
        with pytest.raises(StoreError, match="needs PostgreSQL"):
            PgLease(store)


@pytest.mark.parametrize(
    ("broker", "db", "reason"),
    [
        ("mqtt://127.0.0.1:1", "{tmp}/m.db", "needs PostgreSQL"),
        ("embedded://127.0.0.1:0", "{pg}", "needs an external broker"),
    ],
)
def test_ha_refuses_sqlite_and_an_embedded_broker(
    broker: str, db: str, reason: str, tmp_path: Path, pg_schema: PgSchema
) -> None:
    import subprocess
    import sys

    pg_schema.execute(f'CREATE SCHEMA IF NOT EXISTS "{pg_schema.name}"')
    url = db.format(tmp=tmp_path, pg=f"{pg_schema.url}?options=-csearch_path%3D{pg_schema.name}")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "manager",
            "--ha",
            "--broker",
            broker,
            "--db",
            url,
            "--api",
            "127.0.0.1:0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and reason in done.stderr, done.stderr[-2000:]


def test_a_manager_without_ha_refuses_a_database_an_ha_manager_leads(pg_schema: PgSchema) -> None:
    import subprocess
    import sys

    async def hold() -> None:
        async with await Store.open(pg_schema.url, schema=pg_schema.name) as store:
            lease = PgLease(store, holder="the-leader")
            await lease.ensure()
            assert (await lease.acquire(120)).epoch is not None

    asyncio.run(hold())
    url = f"{pg_schema.url}?options=-csearch_path%3D{pg_schema.name}"
    args = ["manager", "--broker", "mqtt://127.0.0.1:1", "--db", url, "--api", "127.0.0.1:0"]
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1 and "the-leader leads this database with --ha" in done.stderr, done.stderr
