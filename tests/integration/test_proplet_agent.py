"""PropletAgent against a real embedded broker and real wasmtime: reconnect after a broker restart,
heartbeats while a module spins, stop interrupting a loop, the Last Will, metrics over MQTT and
Prometheus, and a stop() that leaves no thread or task behind."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import wasmtime

from orchestrator import wire
from orchestrator.adapters.broker import EmbeddedBroker
from orchestrator.adapters.mqtt import MqttClient
from proplets.agent import AgentSettings, PropletAgent
from tests.fixtures.mqtt import eventually
from twin.links import LinkProxy

WASM = bytes(
    wasmtime.wat2wasm("""
(module
  (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add)
  (func (export "spin") (loop br 0)))
""")
)
FILE = base64.b64encode(WASM).decode()


class Observer:
    """A manager-side subscriber on the proplet's channel that keeps every message it sees."""

    def __init__(self, url: str, topics: wire.Topics) -> None:
        self.topics = topics
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.client = MqttClient(
            url, f"obs-{uuid.uuid4().hex[:8]}", on_message=self._on, backoff_min=0.05, backoff_max=0.1
        )

    def _on(self, topic: str, payload: bytes) -> None:
        self.messages.append((topic, json.loads(payload)))

    def on(self, topic: str) -> list[dict[str, Any]]:
        return [m for t, m in self.messages if t == topic]

    def results(self, task_id: str) -> list[dict[str, Any]]:
        return [m for m in self.on(self.topics.results) if m["task_id"] == task_id]

    async def start(self) -> None:
        await self.client.connect()
        await self.client.subscribe_and_wait(self.topics.all)

    def send_start(self, task_id: str, name: str, inputs: list[Any], **extra: Any) -> None:
        start = wire.StartTask(
            id=task_id, name=name, file=WASM, inputs=tuple(inputs), proplet_id="p1", **extra
        )
        self.client.publish(self.topics.start, wire.encode(start), 1)


@pytest.fixture
async def broker() -> AsyncIterator[EmbeddedBroker]:
    b = EmbeddedBroker("127.0.0.1", 0)
    await b.start()
    try:
        yield b
    finally:
        await b.stop()


@pytest.fixture
async def observer(broker: EmbeddedBroker) -> AsyncIterator[Observer]:
    obs = Observer(broker.url, wire.Topics("d", "c"))
    await obs.start()
    try:
        yield obs
    finally:
        await obs.client.disconnect()


def settings(url: str, **kw: Any) -> AgentSettings:
    base: dict[str, Any] = dict(
        broker=url, proplet_id="p1", domain="d", channel="c", heartbeat_interval=5.0, keepalive=5,
        metrics_interval=0, reconnect_min=1.0, reconnect_max=1.0,
    )  # fmt: skip
    return AgentSettings(**{**base, **kw})


@pytest.fixture
async def agents() -> AsyncIterator[list[PropletAgent]]:
    made: list[PropletAgent] = []
    yield made
    for agent in made:
        await agent.stop()


async def started(made: list[PropletAgent], s: AgentSettings) -> PropletAgent:
    agent = PropletAgent(s)
    made.append(agent)
    await agent.start()
    return agent


async def test_reconnects_reannounces_resubscribes_and_delivers_a_result_finished_offline(
    broker: EmbeddedBroker, observer: Observer, agents: list[PropletAgent]
) -> None:
    # The proplet reaches the broker through a proxy that stays shut until the observer has
    # subscribed again after the restart: otherwise, on a busy host, the proplet (retrying every 1 s)
    # could reconnect and re-announce before the observer is back, and the announcement would be lost.
    # Waits are for positive signals; 10 s is ten of the proplet's 1 s reconnect periods.
    link = await LinkProxy(broker.host, broker.port).start()
    try:
        agent = await started(agents, settings(f"mqtt://127.0.0.1:{link.port}"))
        await eventually(lambda: len(observer.on(observer.topics.create)) == 1, 10)
        observer.send_start("slow", "spin", [], limits={"timeout_s": 0.6})
        await eventually(lambda: "slow" in agent.engine.running, 10)
        await broker.stop()
        await eventually(lambda: not agent.mqtt.connected, 10)
        port = link.port
        await link.close()  # the proplet's reconnect attempts are refused until the gate opens
        await eventually(lambda: "slow" not in agent.engine.running, 10)  # finished while the link is down
        await broker.start()
        await eventually(lambda: observer.client.connected, 10)
        await observer.client.subscribe_and_wait(observer.topics.all)  # SUBACK: subscribed again
        assert len(observer.on(observer.topics.create)) == 1 and not observer.results("slow")
        await link.start(port)
        await eventually(lambda: len(observer.on(observer.topics.create)) == 2, 10)
        await eventually(lambda: bool(observer.results("slow")), 10)
        (held,) = observer.results("slow")
        assert held["proplet_id"] == "p1" and "wall-time limit of 0.6 s exceeded" in held["error"]
        observer.send_start("after", "add", ["2", "3"])  # runs only if the proplet subscribed again
        await eventually(lambda: bool(observer.results("after")), 10)
        assert observer.results("after")[0]["results"] == "5"
        assert agent.stats.reconnects == 1
    finally:
        await link.close()


async def test_heartbeats_keep_flowing_while_a_module_spins(
    broker: EmbeddedBroker, observer: Observer, agents: list[PropletAgent]
) -> None:
    await started(agents, settings(broker.url, heartbeat_interval=0.2))
    observer.send_start("spin", "spin", [], limits={"timeout_s": 2.0})
    await eventually(lambda: bool(observer.results("spin")), 10)
    beats = observer.on(observer.topics.alive)
    first_running = next(i for i, b in enumerate(beats) if b.get("running") == ["spin"])
    during = [b for b in beats[first_running:] if b.get("running") == ["spin"]]
    assert len(during) >= 5  # ten are due in 2 s; the GIL-free wasm thread must not starve the loop


async def test_tasks_do_not_wake_the_timer_loop_a_sooner_heartbeat_does(
    broker: EmbeddedBroker, observer: Observer, agents: list[PropletAgent]
) -> None:
    """A task's start and end leave the heartbeat time as it was, so they do not wake the timer loop
    (that cost ~5 % of a proplet's CPU per task); a deadline sooner than the loop's next look does."""
    agent = await started(agents, settings(broker.url, heartbeat_interval=30.0))
    await eventually(lambda: len(observer.on(observer.topics.create)) == 1, 10)
    wakes = 0
    wake = agent._wake.set

    def counted() -> None:
        nonlocal wakes
        wakes += 1
        wake()

    agent._wake.set = counted  # type: ignore[method-assign]
    for i in range(20):
        observer.send_start(f"t{i}", "add", [str(i), "1"])
    await eventually(lambda: all(observer.results(f"t{i}") for i in range(20)), 10)
    assert wakes == 0
    beats = len(observer.on(observer.topics.alive))
    agent.engine.resume_heartbeats(0.0)  # due now
    agent._execute()
    assert wakes == 1
    await eventually(lambda: len(observer.on(observer.topics.alive)) > beats, 10)


async def test_stop_interrupts_an_infinite_loop_and_the_result_says_stopped(
    broker: EmbeddedBroker, observer: Observer, agents: list[PropletAgent]
) -> None:
    agent = await started(agents, settings(broker.url))
    observer.send_start("forever", "spin", [], limits={"timeout_s": 120})
    await eventually(lambda: "forever" in agent.engine.running, 5)
    observer.client.publish(observer.topics.stop, b'{"id": "forever"}', 1)
    await eventually(lambda: bool(observer.results("forever")), 10)
    assert observer.results("forever")[0]["error"] == "task forever was stopped before completion"


async def test_a_compiled_pure_module_that_runs_long_leaves_the_loop_free_and_stops(
    broker: EmbeddedBroker, observer: Observer, agents: list[PropletAgent]
) -> None:
    # After one run the module is compiled, and it imports nothing: its runs start on the loop
    # (WasmtimeRuntime.run_inline). One that runs long must be handed to a thread, not hold the loop.
    agent = await started(agents, settings(broker.url, heartbeat_interval=0.2))
    observer.send_start("warm", "add", ["2", "3"])
    await eventually(lambda: bool(observer.results("warm")), 10)
    assert observer.results("warm")[0]["results"] == "5"
    observer.send_start("long", "spin", [], limits={"timeout_s": 120})
    await eventually(lambda: "long" in agent.engine.running, 5)
    await eventually(
        lambda: sum(b.get("running") == ["long"] for b in observer.on(observer.topics.alive)) >= 3, 10
    )
    observer.client.publish(observer.topics.stop, b'{"id": "long"}', 1)
    await eventually(lambda: bool(observer.results("long")), 10)
    assert observer.results("long")[0]["error"] == "task long was stopped before completion"
    observer.send_start("again", "add", ["4", "5"])  # the module is a long one now: a thread runs it
    await eventually(lambda: bool(observer.results("again")), 10)
    assert observer.results("again")[0]["results"] == "9"


async def test_last_will_tells_the_manager_the_proplet_is_offline_on_abort(
    broker: EmbeddedBroker, observer: Observer
) -> None:
    agent = PropletAgent(settings(broker.url))
    await agent.start()
    await eventually(lambda: len(observer.on(observer.topics.alive)) == 1, 5)
    await agent.stop(clean=False)
    await eventually(lambda: observer.on(observer.topics.alive)[-1]["status"] == "offline", 5)
    assert observer.on(observer.topics.alive)[-1] == {
        "proplet_id": "p1",
        "status": "offline",
        "namespace": "default",
    }


async def test_metrics_over_mqtt_and_a_prometheus_scrape(
    broker: EmbeddedBroker, observer: Observer, agents: list[PropletAgent]
) -> None:
    agent = await started(agents, settings(broker.url, metrics_interval=0.2, metrics_port=0))
    observer.send_start("sum", "add", ["1", "2"])
    observer.send_start("long", "spin", [], limits={"timeout_s": 60})
    await eventually(lambda: bool(observer.results("sum")), 10)
    await eventually(
        lambda: any(m["task_id"] == "long" for m in observer.on(observer.topics.task_metrics)), 5
    )
    pm = observer.on(observer.topics.metrics)[-1]
    assert pm["proplet_id"] == "p1" and set(pm["timestamp"]) == {"secs_since_epoch", "nanos_since_epoch"}
    assert pm["memory_metrics"]["rss_bytes"] > 1_000_000 and pm["cpu_metrics"]["user_seconds"] > 0
    tm = [m for m in observer.on(observer.topics.task_metrics) if m["task_id"] == "long"][-1]
    assert tm["metrics"]["thread_count"] >= 2 and tm["aggregated"]["sample_count"] >= 1
    assert agent.metrics_server is not None
    async with httpx.AsyncClient() as http:
        r = await http.get(f"http://127.0.0.1:{agent.metrics_server.port}/metrics")
        missing = await http.get(f"http://127.0.0.1:{agent.metrics_server.port}/nope")
    assert r.status_code == 200 and missing.status_code == 404
    text = r.text
    for line in (
        "proplet_tasks_started_total 2.0",
        "proplet_tasks_completed_total 1.0",
        "proplet_tasks_failed_total 0.0",
        "proplet_tasks_running 1.0",
        "proplet_mqtt_reconnects_total 0.0",
        f"proplet_wasm_fetch_bytes_total {float(2 * len(WASM))}",
    ):
        assert line in text.splitlines(), line
    assert "proplet_memory_rss_bytes" in text and "proplet_cpu_usage_ratio" in text


async def test_stop_leaves_no_thread_and_no_task_behind(broker: EmbeddedBroker, observer: Observer) -> None:
    threads = threading.active_count()
    tasks = asyncio.all_tasks()
    agent = PropletAgent(settings(broker.url, metrics_interval=0.1, metrics_port=0))
    await agent.start()
    observer.send_start("sum", "add", ["1", "2"])
    observer.send_start("forever", "spin", [], limits={"timeout_s": 120})
    await eventually(lambda: bool(observer.results("sum")) and "forever" in agent.engine.running, 10)
    assert threading.active_count() > threads
    await agent.stop()
    await asyncio.sleep(0)
    # Not ours: the MQTT ticker shared by every client of the loop (the observer still uses it), and
    # the in-loop broker's per-connection tasks, which it ends on its own schedule.
    left = [
        t
        for t in asyncio.all_tasks() - tasks
        if t.get_name() != "mqtt-misc-ticker" and "amqtt" not in _where(t) and "broker" not in _where(t)
    ]
    assert left == []
    assert threading.active_count() == threads


def _where(task: asyncio.Task[Any]) -> str:
    code = getattr(task.get_coro(), "cr_code", None)
    return str(getattr(code, "co_filename", ""))


async def test_limits_the_proplet_cannot_apply_fail_the_task_naming_them(
    broker: EmbeddedBroker, observer: Observer, agents: list[PropletAgent]
) -> None:
    await started(agents, settings(broker.url))
    observer.send_start("gas", "add", ["1", "2"], limits={"gas": 5})
    observer.send_start("neg", "add", ["1", "2"], limits={"fuel": 0.5})
    await eventually(lambda: bool(observer.results("gas")) and bool(observer.results("neg")), 10)
    assert observer.results("gas")[0]["error"].startswith("unknown limit 'gas'")
    neg = observer.results("neg")[0]["error"]
    assert neg.startswith("bad limits:") and "Limits.fuel" in neg
