"""What closing the embedded broker costs: heartbeats through it open vs closed, logins, and the checks.

Side by side in one run: the same flood of QoS 1 heartbeats (a proplet to the manager) through an open
and a closed embedded broker (its own thread); the closed one authenticates each CONNECT (PBKDF2, 101
iterations) and parses every proplet payload to bind its ``proplet_id`` to the sender.
Run with ``pytest tests/bench/test_bench_identity.py --benchmark-enable``; under the default
``--benchmark-disable`` each body runs once, as a plain test.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from orchestrator.adapters.broker import BrokerThread
from orchestrator.adapters.mqtt import BrokerUrl, MqttClient
from orchestrator.core.identity import IdentityRegistry
from orchestrator.enrollment import enroll

MESSAGES = 1000
TOPIC = "m/bench/c/c/control/proplet/alive"


class Flood:
    """A broker thread (open or closed) and a proplet -> manager heartbeat flood through it."""

    def __init__(self, closed: bool) -> None:
        self.registry = IdentityRegistry()
        self.manager = enroll("manager", "bench-manager", wall=0.0)
        self.proplet = enroll("proplet", "bench-p1", wall=0.0)
        self.registry.enroll(self.manager.identity)
        self.registry.enroll(self.proplet.identity)
        self.closed = closed
        self.thread = BrokerThread(allow_anonymous=not closed, identities=self.registry if closed else None)
        self.thread.start()
        assert self.thread.broker is not None
        self.port = self.thread.broker.port
        self.loop = asyncio.new_event_loop()
        heartbeat = {"proplet_id": "bench-p1", "status": "alive", "namespace": "default"}
        self.payload = json.dumps(heartbeat).encode()

    def url(self, who: Any) -> BrokerUrl:
        if not self.closed:
            return BrokerUrl("mqtt", "127.0.0.1", self.port)
        return BrokerUrl("mqtt", "127.0.0.1", self.port, who.identity.username, who.password)

    async def _round(self) -> int:
        got = 0
        done = asyncio.get_running_loop().create_future()

        def on_message(_topic: str, _payload: bytes) -> None:
            nonlocal got
            got += 1
            if got == MESSAGES and not done.done():
                done.set_result(None)

        sub = MqttClient(self.url(self.manager), "bench-manager", on_message=on_message)
        pub = MqttClient(self.url(self.proplet), "bench-p1", max_inflight=100)
        await sub.connect()
        await sub.subscribe_and_wait(TOPIC, 1)
        await pub.connect()
        for _ in range(MESSAGES):
            pub.publish(TOPIC, self.payload, 1)
        await asyncio.wait_for(done, 60)
        await pub.disconnect()
        await sub.disconnect()
        return got

    def round(self) -> int:
        return self.loop.run_until_complete(self._round())

    def close(self) -> None:
        self.thread.stop()
        self.loop.close()


@pytest.mark.parametrize("closed", [False, True], ids=["open", "closed"])
def test_heartbeat_flood_through_the_embedded_broker(benchmark: Any, closed: bool) -> None:
    flood = Flood(closed)
    try:
        assert benchmark.pedantic(flood.round, rounds=3, iterations=1) == MESSAGES
        if closed:
            guard = flood.thread.broker.guard if flood.thread.broker is not None else None
            assert guard is not None and sum(guard.counters.values()) == 0  # nothing legitimate refused
    finally:
        flood.close()


def test_login_check(benchmark: Any) -> None:
    registry = IdentityRegistry()
    e = enroll("proplet", "p1", wall=0.0)
    registry.enroll(e.identity)
    assert benchmark(registry.authenticate, "p1", "p1", e.password).ok


def test_publish_binding_check(benchmark: Any) -> None:
    registry = IdentityRegistry()
    e = enroll("proplet", "p1", wall=0.0)
    registry.enroll(e.identity)
    heartbeat = {"proplet_id": "p1", "status": "alive", "namespace": "default", "running": ["t"] * 8}
    payload = json.dumps(heartbeat)
    assert benchmark(registry.publish_verdict, e.identity, TOPIC, payload.encode()) is None
