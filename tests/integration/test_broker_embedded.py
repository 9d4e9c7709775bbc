"""EmbeddedBroker: keep-alive enforcement (the amqtt fix), persistent sessions, ports, restarts."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import uuid

import pytest
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler

from orchestrator.adapters import broker as broker_module
from orchestrator.adapters.broker import BrokerStartError, BrokerThread, EmbeddedBroker
from orchestrator.adapters.mqtt import MqttClient, MqttError
from tests.fixtures.mqtt import eventually


def _utf8(text: str) -> bytes:
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def raw_connect_packet(client_id: str, keepalive: int, will_topic: str, will_payload: bytes) -> bytes:
    """An MQTT 3.1.1 CONNECT with clean session and a QoS 1 will, built by hand (no client library)."""
    flags = 0x02 | 0x04 | 0x08
    body = _utf8("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive)
    body += _utf8(client_id) + _utf8(will_topic) + struct.pack("!H", len(will_payload)) + will_payload
    assert len(body) < 128  # one-byte remaining length
    return bytes([0x10, len(body)]) + body


async def test_silent_raw_client_gets_its_will_within_one_and_a_half_keepalives(
    embedded_broker: EmbeddedBroker,
) -> None:
    loop = asyncio.get_running_loop()
    wills: list[float] = []
    watcher = MqttClient(embedded_broker.url, "watcher", on_message=lambda t, p: wills.append(loop.time()))
    await watcher.connect()
    await watcher.subscribe_and_wait("dev/+/will")
    keepalive = 2
    reader, writer = await asyncio.open_connection("127.0.0.1", embedded_broker.port)
    try:
        writer.write(raw_connect_packet("raw-dev", keepalive, "dev/raw/will", b"offline"))
        await writer.drain()
        connack = await asyncio.wait_for(reader.readexactly(4), 5)
        sent_last = loop.time()  # the CONNECT was the last packet; from now on the device is silent
        assert connack == b"\x20\x02\x00\x00"
        await eventually(lambda: bool(wills), timeout=8)
        waited = wills[0] - sent_last
        assert waited <= 1.5 * keepalive + 0.5, f"will after {waited:.2f} s"
        # and the broker closed the half-open connection
        assert await asyncio.wait_for(reader.read(), 2) == b""
    finally:
        writer.close()
        await watcher.disconnect()


async def test_pinging_client_is_not_dropped(embedded_broker: EmbeddedBroker) -> None:
    drops: list[int] = []
    device = MqttClient(embedded_broker.url, "pinger", keepalive=1, on_disconnect=lambda: drops.append(1))
    await device.connect()
    await asyncio.sleep(3.2)  # over two broker timeouts (1.5 s) with nothing but PINGREQs
    assert device.connected and drops == []
    await device.disconnect()


async def test_persistent_session_receives_messages_sent_while_offline() -> None:
    async with EmbeddedBroker(users={"dev1": "pw-dev1", "ops": "pw-ops"}) as broker:
        base = broker.url.replace("mqtt://", "")
        inbox: list[tuple[str, bytes]] = []
        device = MqttClient(f"mqtt://dev1:pw-dev1@{base}", "dev1", clean_session=False,
                            on_message=lambda t, p: inbox.append((t, p)))
        await device.connect()
        await device.subscribe_and_wait("cmd/dev1", qos=1)
        await device.disconnect()

        ops = MqttClient(f"mqtt://ops:pw-ops@{base}", "ops")
        await ops.connect()
        for i in range(3):
            await ops.publish_and_wait("cmd/dev1", f"job-{i}".encode(), qos=1)
        await asyncio.sleep(1.5)  # longer than amqtt's session monitor period, which drops anonymous sessions

        await device.connect()
        await eventually(lambda: len(inbox) == 3, timeout=5)
        assert [p for _t, p in inbox] == [b"job-0", b"job-1", b"job-2"]
        # an anonymous client on the same broker gets no offline queue (amqtt's rule), but may connect
        anon = MqttClient(broker.url, "anon")
        await anon.connect()
        await anon.disconnect()
        await ops.disconnect()
        await device.disconnect()


async def test_port_taken_gives_a_clear_error() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        broker = EmbeddedBroker("127.0.0.1", port)
        with pytest.raises(BrokerStartError) as info:
            await broker.start()
        expected = f"cannot start embedded MQTT broker on 127.0.0.1:{port}: address already in use"
        assert str(info.value) == expected
        assert not broker.running


async def test_restart_keeps_the_port_and_accepts_clients() -> None:
    broker = EmbeddedBroker()
    with pytest.raises(RuntimeError, match="has not been started"):
        _ = broker.port
    await broker.start()
    first = broker.port
    assert first != 0 and broker.url == f"mqtt://127.0.0.1:{first}"
    await broker.stop()
    client = MqttClient(broker.url, "c", reconnect=False)
    with pytest.raises(MqttError, match="connection refused"):
        await client.connect(timeout=2)
    await broker.start()
    assert broker.port == first
    await client.connect(timeout=2)
    assert client.connected
    await client.disconnect()
    await broker.stop()
    await broker.stop()  # idempotent


def test_keepalive_fix_is_installed_once_and_checks_amqtt() -> None:
    broker_module._install_keepalive_fix()
    patched = BrokerProtocolHandler.handle_read_timeout
    broker_module._install_keepalive_fix()
    assert BrokerProtocolHandler.handle_read_timeout is patched
    assert getattr(patched, broker_module._PATCH_MARK)


def test_keepalive_fix_refuses_unknown_amqtt(monkeypatch: pytest.MonkeyPatch) -> None:
    def changed_upstream(self: BrokerProtocolHandler) -> None:
        self.logger.debug("upstream now handles read timeouts itself")

    monkeypatch.setattr(BrokerProtocolHandler, "handle_read_timeout", changed_upstream)
    with pytest.raises(RuntimeError, match=r"amqtt internals changed.*no longer a no-op"):
        broker_module._install_keepalive_fix()


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="port 70000 is out of range"):
        EmbeddedBroker(port=70000)
    with pytest.raises(ValueError, match="allow_anonymous=False needs identities or entries in users"):
        EmbeddedBroker(allow_anonymous=False)
    with pytest.raises(ValueError, match="keepalive_grace must be >= 0"):
        EmbeddedBroker(keepalive_grace=-1)


async def test_broker_thread_serves_clients_of_another_loop() -> None:
    before = threading.active_count()
    with BrokerThread() as bt:
        assert threading.active_count() == before + 1
        got: list[bytes] = []
        client = MqttClient(bt.url, f"c-{uuid.uuid4().hex[:6]}", on_message=lambda t, p: got.append(p))
        await client.connect()
        await client.subscribe_and_wait("x")
        await client.publish_and_wait("x", b"through the thread")
        await eventually(lambda: got == [b"through the thread"], timeout=5)
        await client.disconnect()
    assert threading.active_count() == before


def test_broker_thread_reports_start_failure() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(BrokerStartError, match="address already in use"):
            BrokerThread("127.0.0.1", port).start()


async def test_a_subscriber_that_never_acks_gets_one_warning_line_not_a_traceback(
    embedded_broker: EmbeddedBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="amqtt")
    reader, writer = await asyncio.open_connection("127.0.0.1", embedded_broker.port)
    publisher = MqttClient(embedded_broker.url, "publisher")
    try:
        writer.write(raw_connect_packet("mute-sub", 60, "dev/mute/will", b"offline"))
        body = struct.pack("!H", 1) + _utf8("mute/in") + b"\x01"  # SUBSCRIBE id 1, QoS 1
        writer.write(bytes([0x82, len(body)]) + body)
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"\x20\x02\x00\x00"  # CONNACK
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"\x90\x03\x00\x01\x01"  # SUBACK
        await publisher.connect()
        publisher.publish("mute/in", b"hello", 1)
        # the delivery arrives and is never acknowledged; amqtt gives up after its 5 s PUBACK wait
        assert (await asyncio.wait_for(reader.read(1), 5))[0] >> 4 == 3  # PUBLISH
        def logged(text: str) -> bool:
            return any(text in r.getMessage() for r in caplog.records)

        await eventually(lambda: logged("Timeout waiting for PUBACK"), 20)
        publisher.publish("other/topic", b"next", 1)  # amqtt collects the failed delivery at its next one
        await eventually(lambda: logged("did not acknowledge"), 20)
        amqtt_records = [r for r in caplog.records if r.name.startswith("amqtt")]
        assert not [r for r in amqtt_records if r.exc_info or r.levelname in ("ERROR", "CRITICAL")]
        (warning,) = [r for r in amqtt_records if "did not acknowledge" in r.getMessage()]
        assert warning.levelname == "WARNING" and "PUBACK" in warning.getMessage()
    finally:
        writer.close()
        await publisher.disconnect()


async def test_stop_is_bounded_when_amqtt_never_finishes_a_client_handler(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # amqtt 0.12.1 can wait forever in a handler's stop(); stand in for that bug with a stop that never
    # returns, and check that our stop() still ends, closes the client's socket and frees the port.
    async def never_stops(self: BrokerProtocolHandler) -> None:
        await asyncio.Event().wait()

    broker = EmbeddedBroker("127.0.0.1", 0)
    await broker.start()
    port = broker.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw_connect_packet("stuck-client", 60, "dev/stuck/will", b"offline"))
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"\x20\x02\x00\x00"
        monkeypatch.setattr(BrokerProtocolHandler, "stop", never_stops)
        await asyncio.wait_for(broker.stop(timeout=0.5), 30)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the client's connection was closed
    finally:
        writer.close()
    monkeypatch.undo()
    again = EmbeddedBroker("127.0.0.1", port)  # the listener is gone: the same port binds again
    await again.start()
    await again.stop()
