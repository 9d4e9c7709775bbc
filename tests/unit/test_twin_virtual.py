"""Virtual time's parts: the manager over the broker model (kill, restore), and the virtual transport.

Real cores throughout: the orchestrator ``Engine``, the ``BrokerModel``, wasmtime. No sockets, no
processes: every time below is simulated and exact.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Mapping
from typing import Any

import simpy

from orchestrator import wire
from orchestrator.core.model import TaskState
from proplets.runtime import CancelToken, RunOutcome, RunRequest, WasmtimeRuntime
from twin.broker_model import BrokerModel, Will
from twin.transport import VirtualTransport
from twin.vmanager import ManagerConfig, VirtualManager
from twin.workload import load_module

DOMAIN = "vt"


def _manager(env: simpy.Environment, broker: BrokerModel, events: list[tuple[float, str]]) -> VirtualManager:
    def on_event(event: Mapping[str, Any], t: float) -> None:
        events.append((t, str(event["event"])))

    config = ManagerConfig(DOMAIN, heartbeat_interval=1.0, liveness_timeout=3.0)
    return VirtualManager(env, broker, config, on_event, random.Random(1))


def _proplet(env: simpy.Environment, broker: BrokerModel, pid: str) -> Any:
    """A proplet on the wire: announces itself and heartbeats every second, with its will set."""
    topics = wire.Topics(DOMAIN, "default")
    will = Will(topics.alive, wire.encode(wire.Heartbeat(pid, "offline")), 1)
    client = broker.client(pid, keepalive=2, will=will)
    client.connect()

    def beat() -> Any:
        yield env.timeout(0.1)
        client.publish(topics.create, wire.encode(wire.Discovery(pid, "default", {})), 1)
        while True:
            client.publish(topics.alive, wire.encode(wire.Heartbeat(pid, "alive")), 1)
            yield env.timeout(1.0)

    env.process(beat())
    return client


def test_kill_9_fires_the_managers_will_and_a_restart_restores_what_was_persisted() -> None:
    env = simpy.Environment()
    broker = BrokerModel(env, persistence=False)
    events: list[tuple[float, str]] = []
    manager = _manager(env, broker, events)
    watcher = broker.client("watcher")
    watcher.connect()
    wills: list[bytes] = []
    watcher.on_message = lambda _t, payload: wills.append(payload)
    watcher.subscribe(wire.Topics(DOMAIN, "default").alive, 1)
    manager.start()
    env.run(until=1)
    assert manager.running and ("manager_started" in {e for _, e in events})
    engine = manager.engine
    assert engine is not None
    wasm = load_module("add")
    task = engine.create_task({"name": "add", "file": base64.b64encode(wasm).decode(),
                               "inputs": [1, 2]}, manager.wall)  # fmt: skip
    engine.start_task(task.id, manager.now, manager.wall)  # no proplet yet: it waits in the queue
    manager.flush()
    env.run(until=2)
    manager.kill(9)
    env.run(until=3)
    assert not manager.running
    assert [w for w in wills if b"offline" in w], "the OS closed the manager's socket: its will fires"
    manager.start()  # as `propeller manager` restarted on the same store
    env.run(until=4)
    restored = manager.engine
    assert restored is not None and restored is not engine
    assert restored.get_task(task.id).state is TaskState.SCHEDULED  # accepted before the kill, not lost
    assert [e for _, e in events].count("engine_restored") == 2


def test_a_clean_stop_sends_no_will_and_a_restored_task_runs_on_a_proplet() -> None:
    env = simpy.Environment()
    broker = BrokerModel(env, persistence=False)
    events: list[tuple[float, str]] = []
    manager = _manager(env, broker, events)
    manager.start()
    env.run(until=0.5)
    engine = manager.engine
    assert engine is not None
    task = engine.create_task({"name": "add", "inputs": [1, 2], "image_url": "example/add:1"}, manager.wall)
    engine.start_task(task.id, manager.now, manager.wall)
    manager.flush()
    wills_before = broker.stats.wills
    manager.kill(15)
    env.run(until=1)
    assert broker.stats.wills == wills_before  # DISCONNECT: no will
    manager.start()
    _proplet(env, broker, "p-1")
    env.run(until=5)
    restored = manager.engine
    assert restored is not None
    assert restored.get_task(task.id).state is TaskState.RUNNING  # dispatched to the proplet that came
    assert ("task_dispatched" in {e for _, e in events}) and manager.heartbeats >= 3


def test_the_virtual_transport_returns_the_true_result_later_in_the_same_instant() -> None:
    env = simpy.Environment()
    runtime = WasmtimeRuntime()
    try:
        transport = VirtualTransport(env, BrokerModel(env), runtime)
        got: list[tuple[float, RunOutcome]] = []
        env.run(until=5)
        request = RunRequest("t1", load_module("add"), "add", (40, 2))
        transport.run_wasm(request, CancelToken(), lambda outcome: got.append((float(env.now), outcome)))
        assert got == []  # not inside the caller's own step: a later event, as the live thread pool's answer
        env.run(until=6)
        assert len(got) == 1 and got[0][0] == 5.0
        assert got[0][1].error is None and got[0][1].results == "42"
    finally:
        runtime.close()


def test_both_submitters_retry_the_same_answers() -> None:
    from twin.workload import retryable

    assert retryable(409, "proplet p-1 is not alive", start=True)  # pinned device not up yet
    assert retryable(503, "service is shutting down", start=False)  # the manager is restarting
    assert retryable(404, "proplet p-1 not found", start=True)
    assert not retryable(404, "task t-1 not found", start=True)
    assert not retryable(404, "proplet p-1 not found", start=False)
    assert not retryable(400, "inputs: must be a list", start=False)  # a bad spec stays bad
