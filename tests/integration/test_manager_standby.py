"""Two `propeller manager --ha` processes on one PostgreSQL and one broker: one leads, one waits.

Kill -9 the leader under load: the standby takes over (restores from the store, resumes dispatch and
liveness) and every task ends Completed, started and finished exactly once. Freeze the leader past its
lease (SIGSTOP): the standby takes over, and the old leader, when it wakes, exits without publishing.
The broker is a private Mosquitto (so it outlives both managers), the schema is unique to the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from orchestrator import wire
from orchestrator.adapters.mqtt import MqttClient
from orchestrator.bench_restore import fill
from proplets.agent import AgentSettings, PropletAgent
from tests.conftest import free_port
from tests.fixtures.store import PgSchema
from tests.integration.conftest import WORK
from tests.support.procs import PrivateMosquitto

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

TTL = float(
    os.environ.get("PROPELLER_TEST_LEASE_TTL", "2")
)  # --lease-ttl of the test managers: takeover within about TTL + TTL/10 + restore
# Finished tasks stored (bulk SQL) before the managers start, to time the handover against history.
HISTORY = int(os.environ.get("PROPELLER_TEST_HANDOVER_HISTORY", "0"))


def manager_sessions(tmp_path: Path, domain: str) -> int:
    """How many times a manager connected to the private broker (its log names each client id)."""
    return (tmp_path / "mosquitto.log").read_text().count(f" as propeller-manager-{domain}-default ")


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[str]:
    """A Mosquitto of this test's own (it outlives the managers; the shared one is never touched)."""
    broker = PrivateMosquitto(tmp_path, {"max_inflight_messages": "100", "log_dest": "stderr"})
    broker.start()
    try:
        yield broker.url
    finally:
        broker.stop()


def pg_url(schema: PgSchema) -> str:
    schema.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema.name}"')
    return f"{schema.url}?options=-csearch_path%3D{schema.name}"


class Manager:
    def __init__(self, name: str, broker: str, db: str, domain: str, log: Path) -> None:
        self.name = name
        self.api_port = free_port()
        self.args = [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "manager",
            "--ha",
            "--lease-ttl",
            str(TTL),
            "--broker",
            broker,
            "--db",
            db,
            "--api",
            f"127.0.0.1:{self.api_port}",
            "--domain",
            domain,
            "--heartbeat-interval",
            "0.5",
            # The proplets live in this test's loop: on a loaded machine it may stall longer than
            # 3 heartbeats, and a proplet declared dead would rightly have its tasks run again.
            "--liveness-timeout",
            "5",
        ]
        self.log = log
        self.proc = subprocess.Popen(self.args, stdout=log.open("ab"), stderr=subprocess.STDOUT)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    async def health(self, client: httpx.AsyncClient | None = None) -> dict[str, Any]:
        try:
            if client is None:
                async with httpx.AsyncClient(timeout=1) as client:
                    r = await client.get(f"{self.url}/health")
            else:
                r = await client.get(f"{self.url}/health")
            return dict(r.json()) if r.status_code == 200 else {}
        except httpx.HTTPError:
            return {}

    async def wait_role(self, role: str, timeout: float = 30) -> float:
        """Wait until /health reports ``role``; returns the monotonic time it was first seen.

        Async: the proplets share this test's loop, and a blocked loop would miss their keep-alives."""
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=1) as client:  # one client: polls cost a request, not a setup
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, f"{self.name} exited: {self.log.read_text()[-3000:]}"
                if (await self.health(client)).get("role") == role:
                    return time.monotonic()
                await asyncio.sleep(0.02)
        raise AssertionError(f"{self.name} not {role} after {timeout} s: {self.log.read_text()[-3000:]}")

    async def wait_exit(self, timeout: float = 30) -> int:
        return await asyncio.to_thread(self.proc.wait, timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class Wire:
    """Counts every start the managers publish and every result proplets publish, per task id."""

    def __init__(self, broker: str, domain: str) -> None:
        self.topics = wire.Topics(domain, "default")
        self.starts: Counter[str] = Counter()
        self.started_at: list[float] = []  # monotonic time of each start seen
        self.results: Counter[str] = Counter()
        self.seen: dict[str, list[str]] = {}  # per task: what each start and result said (for failures)
        self.client = MqttClient(broker, f"watch-{uuid.uuid4().hex[:8]}", on_message=self._on_message)

    def _on_message(self, topic: str, payload: bytes) -> None:
        body = json.loads(payload)
        if self.topics.is_start(topic):
            self.starts[body["id"]] += 1
            self.started_at.append(time.monotonic())
            what = f"start attempt {body.get('attempt')} on {body.get('proplet_id')}"
            self.seen.setdefault(body["id"], []).append(what)
        elif topic == self.topics.results:
            task_id = body.get("task_id") or body.get("id")
            self.results[task_id] += 1
            what = (
                f"result attempt {body.get('attempt')} from {body.get('proplet_id')}: "
                f"refused={body.get('refused')} error={body.get('error')}"
            )
            self.seen.setdefault(task_id, []).append(what)

    def explain(self, task_ids: Any, *logs: Path) -> str:
        """What the wire and the managers' logs say about ``task_ids`` (to tell a failure's cause)."""
        lines = [line for log in logs if log.exists() for line in log.read_text().splitlines()]
        out = []
        for t in task_ids:
            out.append(f"{t}: wire {self.seen.get(t)}; logs:")
            out += [f"  {line[:300]}" for line in lines if t in line][:20]
        return "\n".join(out)

    async def start(self) -> None:
        await self.client.connect()
        await self.client.subscribe_and_wait(self.topics.every_start, 1)
        await self.client.subscribe_and_wait(self.topics.results, 1)


@pytest.fixture
async def ha(
    private_broker: str, pg_schema: PgSchema, tmp_path: Path
) -> AsyncIterator[tuple[str, str, str, list[Manager]]]:
    domain = f"ha-{uuid.uuid4().hex[:8]}"
    managers: list[Manager] = []
    if HISTORY:
        await fill(pg_schema.url, pg_schema.name, HISTORY, 0)
    try:
        yield private_broker, pg_url(pg_schema), domain, managers
    finally:
        for m in managers:
            m.stop()


async def start_proplets(broker: str, domain: str, n: int) -> list[PropletAgent]:
    agents = [
        PropletAgent(
            AgentSettings(
                broker=broker,
                proplet_id=f"{domain}-p{i}",
                domain=domain,
                heartbeat_interval=0.5,
                keepalive=5,  # as the liveness timeout above: a stalled loop is not a death
                max_instances=8,
                metrics_interval=0,
            )
        )
        for i in range(n)
    ]
    for agent in agents:
        await agent.start()
    return agents


async def submit(api: httpx.AsyncClient, i: int, loops: int = 3_000_000) -> str:
    r = await api.post("/tasks", json={"name": "work", "file": WORK, "inputs": [loops + i]})
    assert r.status_code == 201, r.text
    task_id = str(r.json()["id"])
    started = await api.post(f"/tasks/{task_id}/start")
    assert started.status_code == 200, started.text
    return task_id


async def submit_across(urls: list[str], accepted: dict[str, list[str]]) -> None:
    """Create-and-start tasks one at a time on the first manager that accepts (201), until cancelled.

    A standby answers 503 and a killed leader does not answer: the client moves on to the next one,
    as a client behind a load balancer would. Every id in ``accepted`` was acknowledged, so it must run.
    """
    async with httpx.AsyncClient(timeout=2) as client:
        for i in itertools.count():
            for url in urls:
                body = {"name": "work", "file": WORK, "inputs": [1_000 + i], "start": True}
                try:
                    r = await client.post(f"{url}/tasks", json=body)
                except httpx.HTTPError:
                    continue
                if r.status_code == 201:
                    accepted[url].append(str(r.json()["id"]))
                    break
            await asyncio.sleep(0.05)


async def wait_all_terminal(api: httpx.AsyncClient, ids: list[str], timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    tasks: dict[str, Any] = {}
    while time.monotonic() < deadline:
        for t in ids:  # one by one: the stored history may hold any number of older tasks
            if tasks.get(t, {}).get("state", 0) < 3:
                tasks[t] = (await api.get(f"/tasks/{t}")).json()
        if all(tasks[t].get("state", 0) >= 3 for t in ids):
            return tasks
        await asyncio.sleep(0.3)
    raise AssertionError(f"not terminal: {[(t, tasks.get(t, {}).get('state_name')) for t in ids][:10]}")


async def leader_and_standby(
    ha: tuple[str, str, str, list[Manager]], tmp_path: Path
) -> tuple[Manager, Manager]:
    """Manager A leading and manager B standing by on the same broker and database."""
    broker, db, domain, managers = ha
    a = Manager("A", broker, db, domain, tmp_path / "a.log")
    managers.append(a)
    await a.wait_role("leader")
    b = Manager("B", broker, db, domain, tmp_path / "b.log")
    managers.append(b)
    await b.wait_role("standby")
    return a, b


async def lease_expiry(schema: PgSchema) -> float:
    """When the lease row expires, on this process's monotonic clock (read by the database's clock)."""
    async with await psycopg.AsyncConnection.connect(schema.libpq_url, autocommit=True) as conn:
        left = "expires_at - extract(epoch from clock_timestamp())::double precision"
        cursor = await conn.execute(f'SELECT {left} FROM "{schema.name}".leader_lease'.encode())
        row = await cursor.fetchone()
    assert row is not None
    return time.monotonic() + float(row[0])


async def test_leader_killed_standby_takes_over_every_task_completes_once(
    ha: tuple[str, str, str, list[Manager]], pg_schema: PgSchema, tmp_path: Path
) -> None:
    broker, _db, domain, _managers = ha
    a, b = await leader_and_standby(ha, tmp_path)
    async with httpx.AsyncClient(timeout=5) as client:
        refused = await client.get(f"{b.url}/tasks")
    assert refused.status_code == 503 and refused.json()["leader"]["epoch"] == (await a.health())["epoch"]
    assert "retry-after" in refused.headers
    async with httpx.AsyncClient(timeout=5) as client:
        metrics = (await client.get(f"{b.url}/metrics")).text
    assert 'propeller_manager_role{role="standby"} 1.0' in metrics

    watch = Wire(broker, domain)
    await watch.start()
    agents = await start_proplets(broker, domain, 2)
    assert manager_sessions(tmp_path, domain) == 1  # the standby stays off the broker
    ids: list[str] = []
    try:
        async with httpx.AsyncClient(base_url=a.url, timeout=10) as api:
            cron = await api.post(
                "/tasks",
                json={
                    "name": "work",
                    "file": WORK,
                    "inputs": [1],
                    "schedule": "* * * * *",
                    "is_recurring": True,
                },
            )
            assert cron.status_code == 201, cron.text
            for i in range(30):
                ids.append(await submit(api, i))
        # A client keeps submitting to whichever manager accepts, across the kill and the takeover.
        accepted: dict[str, list[str]] = {a.url: [], b.url: []}
        submitting = asyncio.create_task(submit_across([a.url, b.url], accepted))
        while not accepted[a.url]:
            await asyncio.sleep(0.01)
        # Kill the leader while those run: their results arrive while no manager is connected.
        killed = time.monotonic()
        os.kill(a.proc.pid, signal.SIGKILL)
        await a.wait_exit(10)
        expires = await lease_expiry(pg_schema)  # dead: nothing renews it any more
        leading = await b.wait_role("leader", timeout=TTL * 10 + HISTORY / 10_000)
        handover = leading - killed
        while len(accepted[b.url]) < 5:
            await asyncio.sleep(0.01)
        submitting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await submitting
        ids += accepted[a.url] + accepted[b.url]
        async with httpx.AsyncClient(base_url=b.url, timeout=10) as api:
            for i in range(30, 60):
                ids.append(await submit(api, i))
            tasks = await wait_all_terminal(api, ids)
            # Cron resumed: the new leader holds the schedule with its next run still ahead.
            scheduled = (await api.get(f"/tasks/{cron.json()['id']}")).json()
            assert scheduled["schedule"] == "* * * * *" and scheduled["next_run"] > cron.json()["created_at"]
            # Liveness resumed too: the new leader sees both proplets, then one that goes silent dies.
            for agent in agents:
                assert (await api.get(f"/proplets/{agent.settings.proplet_id}")).json()["alive"] is True
            await agents[0].stop(clean=True)  # DISCONNECT: no will, so only missed heartbeats tell
            gone = agents.pop(0).settings.proplet_id
            deadline = time.monotonic() + 30
            while (await api.get(f"/proplets/{gone}")).json()["alive"]:
                assert time.monotonic() < deadline, f"{gone} still alive on the new leader"
                await asyncio.sleep(0.1)
        states = Counter(tasks[t]["state_name"] for t in ids)
        assert states == Counter({"Completed": len(ids)}), states
        twice = {
            t: (watch.starts[t], watch.results[t])
            for t in ids
            if (watch.starts[t], watch.results[t]) != (1, 1)
        }
        assert not twice, (
            f"tasks not started and finished exactly once: {twice}\n{watch.explain(twice, a.log, b.log)}"
        )
        # The lease passes no earlier than 0.8 TTL after the kill (last renewal + TTL), so a start seen
        # after TTL/2 is the new leader's (earlier ones were the dead leader's, still in flight).
        dispatching = min(t for t in watch.started_at if t > killed + TTL / 2) - killed
        took = next(
            json.loads(line[line.index("{") :])["took_s"]
            for line in b.log.read_text().splitlines()
            if '"manager_leading"' in line
        )
        load = os.getloadavg()[0]
        print(
            f"\nhandover with --lease-ttl {TTL:g}, {HISTORY} finished tasks stored: kill -9 to standby "
            f"leading {handover:.2f} s (lease expired {expires - killed:.2f} s after the kill, standby "
            f"leading {leading - expires:.2f} s after that, of which restore + connect {took:.2f} s), to its "
            f"first start published {dispatching:.2f} s; load average {load:.1f}; submitted across it: "
            f"{len(accepted[a.url])} accepted by the leader, {len(accepted[b.url])} by the new leader"
        )
        figures = (handover, expires - killed, leading - expires, took, dispatching, load)
        (tmp_path / "handover.txt").write_text(" ".join(f"{x:.3f}" for x in figures) + "\n")
    finally:
        for agent in agents:
            await agent.stop()
        await watch.client.disconnect()


async def test_a_frozen_leader_is_replaced_and_exits_on_waking_without_publishing(
    ha: tuple[str, str, str, list[Manager]], tmp_path: Path
) -> None:
    broker, db, domain, managers = ha
    a, b = await leader_and_standby(ha, tmp_path)
    watch = Wire(broker, domain)
    await watch.start()
    agents = await start_proplets(broker, domain, 2)
    ids: list[str] = []
    try:
        async with httpx.AsyncClient(base_url=a.url, timeout=10) as api:
            # Long enough to be running when A freezes: their results reach A's socket or its session.
            ids += [await submit(api, i, 200_000_000) for i in range(10)]
        a.proc.send_signal(signal.SIGSTOP)  # a paused VM, a blocked loop: no renewals, no I/O
        await b.wait_role("leader", timeout=TTL * 10)
        async with httpx.AsyncClient(base_url=b.url, timeout=10) as api:
            ids += [await submit(api, i) for i in range(10, 20)]
            await wait_all_terminal(api, ids)
        a.proc.send_signal(signal.SIGCONT)
        assert await a.wait_exit(30) == 3, a.log.read_text()[
            -3000:
        ]  # deposed: it exits, a supervisor restarts it
        assert "lease_lost" in a.log.read_text()
        assert (await b.health())["role"] == "leader"
        assert manager_sessions(tmp_path, domain) == 2  # A once, B once: A never came back
        async with httpx.AsyncClient(base_url=b.url, timeout=10) as api:
            tasks = await wait_all_terminal(api, ids)
            # A fresh standby on the same store sees what B wrote, not A's stale memory.
            c = Manager("C", broker, db, domain, tmp_path / "c.log")
            managers.append(c)
            await c.wait_role("standby")
        assert Counter(tasks[t]["state_name"] for t in ids) == Counter({"Completed": len(ids)})
        once = {t: (watch.starts[t], watch.results[t]) for t in ids}
        twice = [t for t, n in once.items() if n != (1, 1)]
        assert not twice, f"{once}\n{watch.explain(twice, a.log, b.log)}"
    finally:
        for agent in agents:
            await agent.stop()
        await watch.client.disconnect()
