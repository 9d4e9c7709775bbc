"""Many MqttClients on one event loop: no thread per client, and no connect deadlock with the
embedded broker in the same loop (paho's blocking connect() would fill the broker's accept backlog)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import pytest

from orchestrator.adapters.broker import EmbeddedBroker
from orchestrator.adapters.mqtt import MqttClient
from tests.fixtures.mqtt import eventually


async def _fleet(url: str, n: int, prefix: str, inbox: dict[str, int]) -> list[MqttClient]:
    def make(i: int) -> MqttClient:
        def on_message(topic: str, payload: bytes) -> None:
            inbox[topic] = inbox.get(topic, 0) + 1

        return MqttClient(url, f"{prefix}-{i}", keepalive=30, on_message=on_message)

    clients = [make(i) for i in range(n)]
    for i, c in enumerate(clients):
        c.subscribe(f"{prefix}/dev/{i}/cmd")  # sent with the CONNACK
    await asyncio.gather(*(c.connect(timeout=60) for c in clients))
    return clients


async def test_300_clients_connect_at_once_to_a_broker_in_the_same_loop(
    embedded_broker: EmbeddedBroker,
) -> None:
    clients = [MqttClient(embedded_broker.url, f"c{i}") for i in range(300)]
    try:
        # all 300 connects are in flight together; a blocking TCP connect would stall the loop that
        # must accept them, and connect() would time out
        await asyncio.wait_for(asyncio.gather(*(c.connect(timeout=30) for c in clients)), 60)
        assert all(c.connected for c in clients)
    finally:
        await asyncio.gather(*(c.disconnect() for c in clients))


@pytest.mark.parametrize(
    "broker",
    [
        pytest.param("mosquitto", marks=pytest.mark.mosquitto),
        pytest.param("embedded", marks=pytest.mark.slow),
    ],
)
async def test_1000_clients_share_one_loop_without_threads(
    broker: str, request: pytest.FixtureRequest
) -> None:
    n = 1000
    embedded: EmbeddedBroker | None = None
    if broker == "mosquitto":
        url = str(request.getfixturevalue("mosquitto_url"))
    else:
        embedded = EmbeddedBroker()
        await embedded.start()
        url = embedded.url
    prefix = f"scale-{uuid.uuid4().hex[:8]}"
    inbox: dict[str, int] = {}
    small = await _fleet(url, 10, prefix + "-warm", {})  # first use may start helper threads once
    threads_with_10 = threading.active_count()
    started = time.perf_counter()
    fleet = await _fleet(url, n, prefix, inbox)
    connected_s = time.perf_counter() - started
    try:
        assert all(c.connected for c in fleet)
        assert threading.active_count() == threads_with_10, "threads grew with the number of clients"
        orchestrator = MqttClient(url, f"{prefix}-orch")
        await orchestrator.connect()
        # subscriptions went out right after each CONNACK; wait until the broker has them all
        probe = f"{prefix}/dev/{n - 1}/cmd"
        await eventually(lambda: _publish_probe(orchestrator, probe) and inbox.get(probe, 0) > 0, timeout=30)
        started = time.perf_counter()
        for i in range(n - 1):
            orchestrator.publish(f"{prefix}/dev/{i}/cmd", b"run", qos=1)
        await eventually(lambda: len(inbox) == n, timeout=60)
        fanout_s = time.perf_counter() - started
        print(f"\n{broker}: {n} clients connected in {connected_s:.2f} s; "
              f"fan-out of {n - 1} QoS 1 messages in {fanout_s:.2f} s")
        await orchestrator.disconnect()
    finally:
        await asyncio.gather(*(c.disconnect() for c in fleet + small))
        if embedded is not None:
            await embedded.stop()


def _publish_probe(client: MqttClient, topic: str) -> bool:
    client.publish(topic, b"probe", qos=0)
    return True
