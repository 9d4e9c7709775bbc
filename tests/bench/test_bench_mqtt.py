"""MQTT speed: QoS 1 through the broker (pipelined and one-at-a-time), and connect time of N clients.

Brokers: the embedded amqtt broker in the clients' own loop (the all-in-one manager), the embedded
broker in its own thread (BrokerThread; shares the GIL), and the machine's Mosquitto.
Run with ``pytest tests/bench/test_bench_mqtt.py --benchmark-enable``; under the default
``--benchmark-disable`` each body runs once, as a plain test.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

from orchestrator.adapters.broker import BrokerThread, EmbeddedBroker
from orchestrator.adapters.mqtt import MqttClient

BATCH = 500  # below Mosquitto's default max_queued_messages (1000), which would drop a QoS 1 flood
CLIENTS = 200


class Harness:
    """A private event loop plus a broker URL, for pytest-benchmark's plain-function calls."""

    def __init__(self, kind: str, request: pytest.FixtureRequest) -> None:
        self.loop = asyncio.new_event_loop()
        self.embedded: EmbeddedBroker | None = None
        self.thread: BrokerThread | None = None
        if kind == "mosquitto":
            self.url = str(request.getfixturevalue("mosquitto_url"))
        elif kind == "embedded-thread":
            self.thread = BrokerThread()
            self.thread.start()
            self.url = self.thread.url
        else:
            self.embedded = EmbeddedBroker()
            self.run(self.embedded.start())
            self.url = self.embedded.url

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        if self.embedded is not None:
            self.run(self.embedded.stop())
        if self.thread is not None:
            self.thread.stop()
        self.loop.close()


@pytest.fixture(
    params=["embedded-same-loop", "embedded-thread", pytest.param("mosquitto", marks=pytest.mark.mosquitto)]
)
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    h = Harness(request.param, request)
    yield h
    h.close()


class Pair:
    """A publisher and a subscriber on one topic; `received` counts deliveries."""

    def __init__(self, url: str) -> None:
        tag = uuid.uuid4().hex[:8]
        self.topic = f"bench/{tag}"
        self.received = 0
        self.arrived: asyncio.Event | None = None
        self.expect = 0
        self.sub = MqttClient(url, f"bsub-{tag}", on_message=self._got, max_inflight=100)
        self.pub = MqttClient(url, f"bpub-{tag}", max_inflight=100)

    def _got(self, _topic: str, _payload: bytes) -> None:
        self.received += 1
        if self.arrived is not None and self.received >= self.expect:
            self.arrived.set()

    async def open(self) -> None:
        await self.sub.connect()
        await self.pub.connect()
        await self.sub.subscribe_and_wait(self.topic, qos=1)

    async def close(self) -> None:
        await self.pub.disconnect()
        await self.sub.disconnect()

    async def send(self, count: int) -> None:
        self.arrived = asyncio.Event()
        self.expect = self.received + count
        payload = b"x" * 100
        for _ in range(count):
            self.pub.publish(self.topic, payload, qos=1)
        await asyncio.wait_for(self.arrived.wait(), 30)


def _bench(benchmark: Any, h: Harness, body: Callable[[], Coroutine[Any, Any, Any]]) -> None:
    benchmark.pedantic(lambda: h.run(body()), rounds=5, iterations=1, warmup_rounds=1)


def test_qos1_pipelined_rate(benchmark: Any, harness: Harness) -> None:
    """BATCH QoS 1 messages of 100 bytes, pub → broker → sub; msg/s = BATCH / mean."""
    pair = Pair(harness.url)
    harness.run(pair.open())
    try:
        _bench(benchmark, harness, lambda: pair.send(BATCH))
        assert pair.received >= BATCH
    finally:
        harness.run(pair.close())


def test_qos1_one_at_a_time(benchmark: Any, harness: Harness) -> None:
    """One QoS 1 message, waited for at the subscriber before the next (latency, 50 per round)."""
    pair = Pair(harness.url)
    harness.run(pair.open())

    async def ping_pong() -> None:
        for _ in range(50):
            await pair.send(1)

    try:
        _bench(benchmark, harness, ping_pong)
        assert pair.received >= 50
    finally:
        harness.run(pair.close())


def test_connect_n_clients(benchmark: Any, harness: Harness) -> None:
    """CLIENTS clients connecting at once on one loop, then disconnecting."""
    counter = itertools.count()

    async def connect_all() -> None:
        round_no = next(counter)
        tag = uuid.uuid4().hex[:6]
        clients = [MqttClient(harness.url, f"bc-{tag}-{round_no}-{i}") for i in range(CLIENTS)]
        await asyncio.gather(*(c.connect(timeout=30) for c in clients))
        assert all(c.connected for c in clients)
        await asyncio.gather(*(c.disconnect() for c in clients))

    _bench(benchmark, harness, connect_all)
