"""Session takeover, as design §7 has it for a watchdog reset: a client id that connects again while its
old connection is still open (half-open, silent) takes it over, and the broker publishes the old
connection's will at once, before it acknowledges the new one. Mosquitto does this; the embedded
broker must do the same (amqtt alone would publish the will only at the old keep-alive's expiry,
after the device came back)."""

from __future__ import annotations

import asyncio
import uuid

from orchestrator.adapters.mqtt import MqttClient
from tests.fixtures.mqtt import eventually
from tests.integration.test_broker_embedded import _utf8, raw_connect_packet


def raw_publish_packet(topic: str, payload: bytes) -> bytes:
    body = _utf8(topic) + payload
    assert len(body) < 128
    return bytes([0x30, len(body)]) + body


async def _raw_connect(url: str, client_id: str, will_topic: str, will: bytes) -> tuple[asyncio.StreamReader,
                                                                                    asyncio.StreamWriter]:
    host, port = url.removeprefix("mqtt://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(raw_connect_packet(client_id, 60, will_topic, will))  # keep-alive far beyond the test
    await writer.drain()
    assert await asyncio.wait_for(reader.readexactly(4), 10) == b"\x20\x02\x00\x00"
    return reader, writer


async def test_reconnect_with_the_same_id_takes_over_and_fires_the_old_will(broker_url: str) -> None:
    tag = uuid.uuid4().hex[:10]
    topic, client_id = f"t/{tag}/alive", f"dev-{tag}"
    seen: list[bytes] = []
    watcher = MqttClient(broker_url, f"watch-{tag}", on_message=lambda t, p: seen.append(p))
    await watcher.connect()
    await watcher.subscribe_and_wait(topic)
    old_reader, old_writer = await _raw_connect(broker_url, client_id, topic, b"old-offline")
    new_writer = None
    try:
        # The device reboots: its old connection stays open and silent; the new one uses the same id.
        _, new_writer = await _raw_connect(broker_url, client_id, topic, b"new-offline")
        new_writer.write(raw_publish_packet(topic, b"new-online"))
        await new_writer.drain()
        await eventually(lambda: b"new-online" in seen, timeout=10)
        # The old will came first, and only once; the new connection's will did not fire.
        assert seen == [b"old-offline", b"new-online"]
        # The broker closed the old connection (a closed socket reads EOF).
        assert await asyncio.wait_for(old_reader.read(), 10) == b""
    finally:
        old_writer.close()
        if new_writer is not None:
            new_writer.close()
        await watcher.disconnect()


