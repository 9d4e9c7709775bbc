"""The fault-injecting link with real sockets: an echo server, and the machine's Mosquitto for keep-alive."""

from __future__ import annotations

import asyncio
import contextlib
import struct
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from orchestrator.adapters.broker_url import parse_broker_url
from orchestrator.adapters.mqtt import MqttClient, Will
from tests.conftest import free_port
from tests.fixtures.mqtt import eventually
from twin.links import LinkProfile, LinkProxy


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


@pytest_asyncio.fixture
async def echo_port() -> AsyncIterator[int]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


@pytest_asyncio.fixture
async def link(echo_port: int) -> AsyncIterator[LinkProxy]:
    proxy = LinkProxy("127.0.0.1", echo_port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


async def _open(proxy: LinkProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def _round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> float:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    writer.write(data)
    assert await asyncio.wait_for(reader.readexactly(len(data)), 10) == data
    return loop.time() - t0


async def test_bytes_pass_unchanged_and_are_counted(link: LinkProxy) -> None:
    reader, writer = await _open(link)
    await _round_trip(reader, writer, b"hello")
    assert link.stats.up_bytes == 5 and link.stats.down_bytes == 5
    assert link.stats.connections == 1
    writer.close()


async def test_latency_is_added_each_way_and_can_change_live(link: LinkProxy) -> None:
    reader, writer = await _open(link)
    await _round_trip(reader, writer, b"warm-up")
    link.update(latency_s=0.1)
    assert await _round_trip(reader, writer, b"x") >= 0.2
    link.update(latency_s=0.0)
    await _round_trip(reader, writer, b"y")
    writer.close()


async def test_jitter_never_reorders_the_stream(link: LinkProxy) -> None:
    link.set_profile(LinkProfile(latency_s=0.01, jitter_s=0.01))
    reader, writer = await _open(link)
    payload = b"".join(struct.pack("!I", i) for i in range(500))
    for i in range(0, len(payload), 40):
        writer.write(payload[i : i + 40])
        await asyncio.sleep(0)
    assert await asyncio.wait_for(reader.readexactly(len(payload)), 10) == payload
    writer.close()


async def test_loss_shows_up_as_retransmission_delay(link: LinkProxy) -> None:
    reader, writer = await _open(link)
    await _round_trip(reader, writer, b"warm-up")
    link.set_profile(LinkProfile(loss=1.0, retransmit_s=0.1))
    assert await _round_trip(reader, writer, b"lost once each way") >= 0.2
    writer.close()


async def test_bandwidth_throttles(link: LinkProxy) -> None:
    link.set_profile(LinkProfile(bandwidth_bps=1_600_000))  # 200 kB/s each way
    reader, writer = await _open(link)
    data = bytes(range(256)) * 200  # 51.2 kB: >= 0.256 s up, and again down
    assert await _round_trip(reader, writer, data) >= 0.25
    assert link.stats.up_bytes == len(data)
    writer.close()


async def test_reset_sends_rst_to_both_ends(link: LinkProxy) -> None:
    reader, writer = await _open(link)
    await _round_trip(reader, writer, b"ping")
    assert link.reset() == 1
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(1), 10)
    assert link.open_connections == 0
    writer.close()
    # the link itself stays usable: a new connection works
    reader2, writer2 = await _open(link)
    await _round_trip(reader2, writer2, b"again")
    writer2.close()


async def test_blackhole_holds_data_until_lifted(link: LinkProxy) -> None:
    reader, writer = await _open(link)
    await _round_trip(reader, writer, b"before")
    link.blackhole(True)
    writer.write(b"during")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(6), 0.3)
    assert link.open_connections == 1  # sockets stay open
    link.blackhole(False)
    assert await asyncio.wait_for(reader.readexactly(6), 10) == b"during"
    writer.close()


async def test_unreachable_broker_closes_the_device_side() -> None:
    async with LinkProxy("127.0.0.1", free_port()) as proxy:
        reader, writer = await _open(proxy)
        with contextlib.suppress(ConnectionError):
            assert await asyncio.wait_for(reader.read(1), 10) == b""
        assert proxy.stats.upstream_failures == 1
        writer.close()


async def test_hundreds_of_links_share_one_loop(echo_port: int) -> None:
    profile = LinkProfile(latency_s=0.01)
    proxies = [await LinkProxy("127.0.0.1", echo_port, profile).start() for _ in range(300)]
    try:
        streams = [await _open(p) for p in proxies]
        trips = (_round_trip(r, w, f"d{i}".encode()) for i, (r, w) in enumerate(streams))
        results = await asyncio.gather(*trips)
        assert all(rtt >= 0.02 for rtt in results)
        for _, w in streams:
            w.close()
    finally:
        await asyncio.gather(*(p.close() for p in proxies))


def test_bad_profiles_are_named() -> None:
    with pytest.raises(ValueError, match="loss"):
        LinkProfile(loss=1.5)
    with pytest.raises(ValueError, match="latency_s"):
        LinkProfile(latency_s=-1)
    with pytest.raises(ValueError, match="bandwidth_bps"):
        LinkProfile(bandwidth_bps=0)


# --- keep-alive expiry at a real broker ---------------------------------------------------------------


def _connect_packet(client_id: str, keepalive: int, will_topic: str, will_payload: bytes) -> bytes:
    def s(b: bytes) -> bytes:
        return struct.pack("!H", len(b)) + b

    flags = 0x02 | 0x04 | (1 << 3)  # clean session, will, will QoS 1
    body = s(b"MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive)
    body += s(client_id.encode()) + s(will_topic.encode()) + s(will_payload)
    assert len(body) < 128
    return bytes([0x10, len(body)]) + body


@pytest.mark.mosquitto
async def test_blackhole_makes_the_broker_expire_keepalive_and_fire_the_will(mosquitto_url: str) -> None:
    url = parse_broker_url(mosquitto_url)
    will_topic = f"t/{uuid.uuid4().hex}/will"
    wills: list[bytes] = []
    observer = MqttClient(
        mosquitto_url, f"obs-{uuid.uuid4().hex[:8]}", on_message=lambda _t, p: wills.append(p)
    )
    await observer.connect()
    await observer.subscribe_and_wait(will_topic, 1)
    async with LinkProxy(url.host, url.port) as proxy:
        # A hand-made client that pings every 0.3 s and never closes its socket: only the broker's
        # keep-alive (1.5 × 1 s) can end its session, so the will proves the blackhole worked.
        reader, writer = await _open(proxy)
        writer.write(_connect_packet(f"dev-{uuid.uuid4().hex[:8]}", 1, will_topic, b"gone"))
        assert (await asyncio.wait_for(reader.readexactly(4), 10))[:2] == b"\x20\x02"  # CONNACK

        async def ping() -> None:
            while True:
                writer.write(b"\xc0\x00")
                await asyncio.sleep(0.3)

        pinger = asyncio.create_task(ping())
        try:
            await asyncio.sleep(2.0)  # healthy link: pings keep the session beyond 1.5 s
            assert wills == []
            proxy.blackhole(True)
            await eventually(lambda: wills == [b"gone"], timeout=10)
            assert proxy.open_connections == 1  # the device never saw a FIN: the link is silent
            proxy.blackhole(False)
            with contextlib.suppress(ConnectionError):
                while await asyncio.wait_for(reader.read(4096), 10):
                    pass  # held PINGRESPs, then EOF: the broker closed the session
        finally:
            pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pinger
            writer.close()
    await observer.disconnect()


async def test_reset_makes_the_broker_fire_the_will(broker_url: str, unique_topic: str) -> None:
    url = parse_broker_url(broker_url)
    got: list[bytes] = []
    lost: list[str] = []
    observer = MqttClient(broker_url, f"obs-{unique_topic[2:14]}", on_message=lambda _t, p: got.append(p))
    await observer.connect()
    await observer.subscribe_and_wait(f"{unique_topic}/will", 1)
    async with LinkProxy(url.host, url.port) as proxy:
        device = MqttClient(f"mqtt://127.0.0.1:{proxy.port}", f"dev-{unique_topic[2:14]}", reconnect=False,
                            will=Will(f"{unique_topic}/will", b"reset"),
                            on_disconnect=lambda: lost.append("lost"))  # fmt: skip
        await device.connect()
        assert proxy.reset() == 1
        await eventually(lambda: got == [b"reset"] and lost == ["lost"])
        await device.disconnect()
    await observer.disconnect()


async def test_a_clean_disconnect_through_a_slow_link_fires_no_will(
    broker_url: str, unique_topic: str
) -> None:
    """The DISCONNECT is still in the link's latency queue when the device closes its socket: it must
    reach the broker before the close does, or the broker would fire the will."""
    url = parse_broker_url(broker_url)
    got: list[bytes] = []
    observer = MqttClient(broker_url, f"obs-{unique_topic[2:14]}", on_message=lambda _t, p: got.append(p))
    await observer.connect()
    await observer.subscribe_and_wait(f"{unique_topic}/#", 1)
    async with LinkProxy(url.host, url.port, LinkProfile(latency_s=0.2)) as proxy:
        device = MqttClient(f"mqtt://127.0.0.1:{proxy.port}", f"dev-{unique_topic[2:14]}", reconnect=False,
                            will=Will(f"{unique_topic}/will", b"unexpected"))  # fmt: skip
        await device.connect()
        await device.disconnect()
        await eventually(lambda: proxy.open_connections == 0)
        observer.publish(f"{unique_topic}/marker", b"marker", 1)  # anything after the will would follow it
        await eventually(lambda: b"marker" in got)
    assert got == [b"marker"]
    await observer.disconnect()


async def test_sever_drops_the_device_end_and_leaves_the_broker_end_open_and_mute() -> None:
    # A "broker" that records what it receives and whether its peer closed.
    got: list[bytes] = []
    closed = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        while data := await reader.read(65536):
            got.append(data)
        closed.set()

    server = await asyncio.start_server(broker, "127.0.0.1", 0)
    proxy = await LinkProxy("127.0.0.1", int(server.sockets[0].getsockname()[1])).start()
    try:
        reader, writer = await _open(proxy)
        writer.write(b"hello")
        await eventually(lambda: b"".join(got) == b"hello", 5)
        assert proxy.sever() == 1
        # The device's socket is gone (it reads EOF or a reset) ...
        with contextlib.suppress(ConnectionError):
            assert await asyncio.wait_for(reader.read(), 5) == b""
        # ... but the broker heard nothing: no FIN, no RST. Sentinel: a second device connection
        # through the same link works and its bytes arrive, after which the first is still open.
        _, w2 = await _open(proxy)
        w2.write(b"again")
        await eventually(lambda: b"again" in b"".join(got), 5)
        assert not closed.is_set() and b"".join(got) == b"helloagain"
        assert proxy.stats.severed == 1 and proxy.open_connections == 2
        # When the broker gives up on the silent connection (keep-alive expiry), it ends.
        writers[0].close()
        await eventually(lambda: proxy.open_connections == 1, 5)
        w2.close()
        writer.close()
    finally:
        await proxy.close()
        server.close()
        await server.wait_closed()
