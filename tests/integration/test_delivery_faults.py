"""Delivery under faults, on real processes (issue 10): a private Mosquitto killed and restarted under
load, a proplet cut off (SIGSTOP) and back, and a proplet that heartbeats but never answers.

Every process is started here and stopped by PID; the Mosquitto is private (own conf, ephemeral port).
"""

from __future__ import annotations

import base64
import signal
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
import pytest
import wasmtime

from orchestrator import wire
from tests.integration.conftest import WORK
from tests.support.procs import Manager, PrivateMosquitto, Proc, Proplet, wait_for

pytestmark = pytest.mark.slow

FOREVER = base64.b64encode(wasmtime.wat2wasm('(module (func (export "main") (loop (br 0))))')).decode()
HB = "0.5"  # heartbeat interval of every process here: liveness timeout 1.5 s


def tasks_by_id(api: httpx.Client, ids: list[str]) -> dict[str, dict[str, Any]]:
    return {i: api.get(f"/tasks/{i}").json() for i in ids}


def started_counts(*proplets: Proc) -> Counter[str]:
    """How many times each task started executing, over every proplet's log."""
    return Counter(e["task_id"] for p in proplets for e in p.events("task_started"))


@pytest.fixture
def procs() -> Any:
    started: list[Proc] = []
    yield started
    for p in reversed(started):
        p.stop()


def test_broker_killed_and_restarted_mid_load_every_task_completes_once(
    tmp_path: Path, procs: list[Proc]
) -> None:
    domain = f"brk-{uuid.uuid4().hex[:8]}"
    broker = PrivateMosquitto(tmp_path)
    procs.append(broker)
    broker.start()
    manager = Manager(tmp_path, broker.url, domain, "--heartbeat-interval", HB)
    procs.append(manager)
    manager.start()
    # Two instances each: 200 tasks keep both proplets full, so busy refusals happen all along.
    proplets = [
        Proplet(tmp_path, broker.url, domain, f"brk-{i}", "--heartbeat-interval", HB, "--max-instances", "2")
        for i in range(2)
    ]
    for p in proplets:
        procs.append(p)
        p.start()
    with httpx.Client(base_url=manager.url, timeout=30) as api:
        wait_for(
            lambda: (
                sum(api.get(f"/proplets/{p.proplet_id}").json().get("alive", False) for p in proplets) == 2
            ),
            30,
            "both proplets alive",
        )
        ids = []
        for i in range(200):
            r = api.post("/tasks", json={"name": "work", "file": WORK, "inputs": [60_000_000 + i]})
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
            assert api.post(f"/tasks/{ids[-1]}/start").status_code == 200

        def completed() -> int:
            return sum(1 for t in tasks_by_id(api, ids).values() if t["state"] == 3)

        wait_for(lambda: completed() >= 30, 120, "some tasks to complete", interval=0.5)
        broker.kill9()  # mid-load: tasks queued, running, results in flight
        time.sleep(5)
        broker.start()

        def all_terminal() -> bool:
            return all(int(t["state"]) >= 3 for t in tasks_by_id(api, ids).values())

        wait_for(all_terminal, 300, "every task to end", interval=1.0)
        final = tasks_by_id(api, ids)
    not_completed = {i: (t["state"], t.get("error")) for i, t in final.items() if t["state"] != 3}
    assert not not_completed, (
        f"{len(not_completed)} tasks did not complete: {list(not_completed.items())[:5]}"
    )
    runs = started_counts(*proplets)
    twice = {i: n for i, n in runs.items() if n > 1}
    assert not twice, f"tasks that ran more than once: {twice}"
    assert set(runs) == set(ids)  # every task ran, exactly once
    refused = sum(len(p.events("start_refused")) for p in proplets)
    print(f"\nbusy refusals during the run: {refused}")


def test_a_partitioned_proplet_stops_its_superseded_attempt_when_it_returns(
    tmp_path: Path, procs: list[Proc]
) -> None:
    domain = f"part-{uuid.uuid4().hex[:8]}"
    broker = PrivateMosquitto(tmp_path)
    procs.append(broker)
    broker.start()
    manager = Manager(tmp_path, broker.url, domain, "--heartbeat-interval", HB)
    procs.append(manager)
    manager.start()
    first = Proplet(tmp_path, broker.url, domain, "part-a", "--heartbeat-interval", HB)
    second = Proplet(tmp_path, broker.url, domain, "part-b", "--heartbeat-interval", HB)
    procs.extend([first, second])
    first.start()
    with httpx.Client(base_url=manager.url, timeout=30) as api:

        def alive(p: Proplet, expected: bool = True) -> bool:
            r = api.get(f"/proplets/{p.proplet_id}")
            return r.status_code == 200 and r.json()["alive"] is expected

        wait_for(lambda: alive(first), 30, "part-a alive")
        r = api.post("/tasks", json={"name": "main", "file": FOREVER, "limits": {"timeout_s": 600}})
        task_id = r.json()["id"]
        assert api.post(f"/tasks/{task_id}/start").status_code == 200
        wait_for(
            lambda: any(e["task_id"] == task_id for e in first.events("task_started")), 30, "run on part-a"
        )
        second.start()
        wait_for(lambda: alive(second), 30, "part-b alive")

        first.signal(signal.SIGSTOP)  # cut off: no heartbeats, its TCP connection stays open
        wait_for(lambda: alive(first, expected=False), 30, "part-a declared dead")
        wait_for(
            lambda: any(e["task_id"] == task_id for e in second.events("task_started")), 30, "re-dispatch"
        )
        task = api.get(f"/tasks/{task_id}").json()
        assert task["proplet_id"] == "part-b" and task["attempt"] == 2
        first.signal(signal.SIGCONT)

        # Positive signal: part-a was told to stop attempt 1 and its run of the task ended.
        def superseded_run_ended() -> bool:
            stops = [e for e in first.events("task_stop_requested") if e["task_id"] == task_id]
            ended = [e for e in first.events("task_finished") if e["task_id"] == task_id]
            return bool(stops) and bool(ended)

        wait_for(superseded_run_ended, 60, "part-a to stop its superseded attempt")
        assert [e["attempt"] for e in first.events("task_stop_requested") if e["task_id"] == task_id] == [1]
        wait_for(lambda: bool(manager.events("superseded_attempt_ended")), 30, "the manager to see it end")
        # The current attempt on part-b is untouched.
        task = api.get(f"/tasks/{task_id}").json()
        assert task["state"] == 2 and task["proplet_id"] == "part-b" and task["attempt"] == 2
        assert not [e for e in second.events("task_stop_requested") if e["task_id"] == task_id]

        assert api.post(f"/tasks/{task_id}/stop").status_code == 200  # reaches part-b's attempt
        wait_for(
            lambda: any(e["task_id"] == task_id for e in second.events("task_finished")), 30, "part-b to stop"
        )
        assert api.get(f"/tasks/{task_id}").json()["state"] == 6


class SilentProplet:
    """A raw paho client speaking the wire: announces, heartbeats (no task list, like upstream),
    receives starts and stops, and never answers a start."""

    def __init__(self, port: int, domain: str, proplet_id: str) -> None:
        self.topics = wire.Topics(domain, "default")
        self.proplet_id = proplet_id
        self.starts: list[wire.StartTask] = []
        self.stops: list[wire.StopTask] = []
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=f"{proplet_id}-{uuid.uuid4().hex[:6]}"
        )
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.subscribe([(self.topics.start, 1), (self.topics.stop, 1)])
        self.client.loop_start()
        announce = wire.Discovery(proplet_id, "default", {"max_instances": 1})
        self.client.publish(self.topics.create, wire.encode(announce), 1)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        decoded = wire.decode(self.topics, msg.topic, msg.payload)
        if isinstance(decoded, wire.StartTask) and decoded.proplet_id == self.proplet_id:
            self.starts.append(decoded)
        elif isinstance(decoded, wire.StopTask) and decoded.proplet_id == self.proplet_id:
            self.stops.append(decoded)

    def heartbeat(self) -> None:
        hb = wire.Heartbeat(self.proplet_id, "alive", "default")
        self.client.publish(self.topics.alive, wire.encode(hb), 1)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_a_silent_proplets_task_is_redispatched_after_its_deadline(tmp_path: Path, procs: list[Proc]) -> None:
    domain = f"silent-{uuid.uuid4().hex[:8]}"
    broker = PrivateMosquitto(tmp_path)
    procs.append(broker)
    broker.start()
    manager = Manager(tmp_path, broker.url, domain, "--heartbeat-interval", HB, "--attempt-grace", "1")
    procs.append(manager)
    manager.start()
    silent = SilentProplet(broker.port, domain, "a-silent")
    real = Proplet(tmp_path, broker.url, domain, "b-real", "--heartbeat-interval", HB)
    procs.append(real)
    try:
        with httpx.Client(base_url=manager.url, timeout=30) as api:

            def alive(proplet_id: str) -> bool:
                silent.heartbeat()  # keeps the silent one alive while we poll
                r = api.get(f"/proplets/{proplet_id}")
                return r.status_code == 200 and r.json()["alive"] is True

            wait_for(lambda: alive("a-silent"), 30, "the silent proplet alive")
            r = api.post(
                "/tasks", json={"name": "work", "file": WORK, "inputs": [1000], "limits": {"timeout_s": 8}}
            )
            task_id = r.json()["id"]
            assert api.post(f"/tasks/{task_id}/start").status_code == 200
            wait_for(lambda: bool(silent.starts), 30, "the start to reach the silent proplet")
            assert silent.starts[0].id == task_id and silent.starts[0].attempt == 1
            real.start()
            wait_for(lambda: alive("b-real"), 30, "the real proplet alive")

            def done() -> bool:
                silent.heartbeat()  # it heartbeats all along: only the deadline can free its task
                return int(api.get(f"/tasks/{task_id}").json()["state"]) >= 3

            wait_for(done, 60, "the task to finish elsewhere", interval=0.25)
            task = api.get(f"/tasks/{task_id}").json()
            assert task["state"] == 3 and task["proplet_id"] == "b-real" and task["attempt"] == 2
            # The silent proplet was told to stop exactly the attempt that timed out.
            wait_for(lambda: bool(silent.stops), 10, "the stop for the timed-out attempt")
            assert [(s.id, s.attempt) for s in silent.stops] == [(task_id, 1)]
            assert manager.events("task_requeued")[0]["reason"] == "no result within 9 s"
    finally:
        silent.close()


class BusyProplet(SilentProplet):
    """A raw wire client that announces 4 instances, reports them all taken, and refuses every start."""

    def __init__(self, port: int, domain: str, proplet_id: str) -> None:
        super().__init__(port, domain, proplet_id)
        announce = wire.Discovery(proplet_id, "default", {"max_instances": 4})
        self.client.publish(self.topics.create, wire.encode(announce), 1)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        super()._on_message(client, userdata, msg)
        decoded = wire.decode(self.topics, msg.topic, msg.payload)
        if isinstance(decoded, wire.StartTask) and decoded.proplet_id == self.proplet_id:
            reason = wire.refusals.busy_error(4, 4)
            refusal = wire.refusals.refusal(
                wire.refusals.BUSY, decoded.id, reason, self.proplet_id, decoded.attempt
            )
            self.client.publish(self.topics.results, wire.encode(refusal), 1)

    def heartbeat(self) -> None:
        full = ("other-1", "other-2", "other-3", "other-4")
        self.client.publish(
            self.topics.alive, wire.encode(wire.Heartbeat(self.proplet_id, "alive", "default", full)), 1
        )


def test_a_busy_refusal_spends_no_attempt_and_the_busy_proplet_is_not_chosen_again(
    tmp_path: Path, procs: list[Proc]
) -> None:
    domain = f"busy-{uuid.uuid4().hex[:8]}"
    broker = PrivateMosquitto(tmp_path)
    procs.append(broker)
    broker.start()
    manager = Manager(tmp_path, broker.url, domain, "--heartbeat-interval", HB)
    procs.append(manager)
    manager.start()
    busy = BusyProplet(broker.port, domain, "a-busy")
    real = Proplet(tmp_path, broker.url, domain, "b-real", "--heartbeat-interval", HB)
    procs.append(real)
    try:
        with httpx.Client(base_url=manager.url, timeout=30) as api:

            def alive(proplet_id: str) -> bool:
                busy.heartbeat()
                r = api.get(f"/proplets/{proplet_id}")
                return r.status_code == 200 and r.json()["alive"] is True

            wait_for(lambda: alive("a-busy"), 30, "the busy proplet alive")
            r = api.post("/tasks", json={"name": "work", "file": WORK, "inputs": [1000], "max_attempts": 1})
            task_id = r.json()["id"]
            assert api.post(f"/tasks/{task_id}/start").status_code == 200
            wait_for(lambda: bool(busy.starts), 30, "the start to reach the busy proplet")

            def refused() -> bool:
                busy.heartbeat()
                task = api.get(f"/tasks/{task_id}").json()
                return task["state"] == 1 and "busy" in task["error"]

            wait_for(refused, 30, "the refusal to put the task back in the queue")
            real.start()

            def done() -> bool:
                busy.heartbeat()  # full all along: it must not be chosen again
                return int(api.get(f"/tasks/{task_id}").json()["state"]) >= 3

            wait_for(done, 60, "the task to run on the real proplet", interval=0.25)
            task = api.get(f"/tasks/{task_id}").json()
            # max_attempts 1 and still completed: the refused start did not spend the only attempt.
            assert task["state"] == 3 and task["proplet_id"] == "b-real"
            assert task["attempts_counted"] == 1 and task["attempt"] == 2  # the refused start had 1
            assert [s.id for s in busy.starts] == [task_id]
    finally:
        busy.close()
