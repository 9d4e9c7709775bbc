"""ChunkServer (manager) and MqttChunkFetcher (proplet) over a real MQTT broker and our MqttClient.

Runs against the embedded amqtt broker on an ephemeral port and against the machine's Mosquitto.
Each test uses its own channel id, so runs on the shared Mosquitto do not hear each other.
"""

from __future__ import annotations

import hashlib
import random
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
import wasmtime

from orchestrator.adapters.broker import EmbeddedBroker
from orchestrator.adapters.mqtt import MqttClient
from orchestrator.chunk_server import ChunkServer, embedded_capacity, encode_reply
from orchestrator.wire import RegistryRequest, Topics, decode, encode
from proplets.delivery import DeliveryError, FetchLimits, MqttChunkFetcher, WasmSource, fetch_wasm

QOS = 1


def wasm_of_size(n: int) -> bytes:
    """A valid module padded to ``n`` bytes with a custom section of random bytes."""
    core = bytes(wasmtime.wat2wasm('(module (func (export "main") (result i32) i32.const 5))'))
    name = b"\x03pad"
    body_len = n - len(core) - 1 - 5  # section id + 5-byte LEB128 size
    payload = name + random.Random(n).randbytes(body_len - len(name))
    size = len(payload)
    leb = bytes([(size >> (7 * i)) & 0x7F | (0x80 if i < 4 else 0) for i in range(5)])
    return core + b"\x00" + leb + payload


class Link:
    """The project's asyncio MQTT client, with the three calls these tests need."""

    def __init__(self, url: str, on_message: Callable[[str, bytes], None]) -> None:
        self.client = MqttClient(
            url, f"delivery-{uuid.uuid4().hex[:10]}", on_message=on_message, reconnect=False
        )

    async def connect(self) -> None:
        await self.client.connect(timeout=10)

    async def subscribe(self, topic: str) -> None:
        await self.client.subscribe_and_wait(topic, QOS)

    async def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, QOS)

    async def close(self) -> None:
        await self.client.disconnect()


class Manager:
    """The service's registry loop in miniature: request in, chunk replies out."""

    def __init__(self, url: str, topics: Topics, server: ChunkServer) -> None:
        self.topics, self.server = topics, server
        self.mqtt = Link(url, self._on_message)
        self.requests: list[str] = []

    def _on_message(self, topic: str, payload: bytes) -> None:
        request = decode(self.topics, topic, payload)
        assert isinstance(request, RegistryRequest)
        self.requests.append(request.app_name)
        for reply in self.server.handle_request(request.app_name):
            payload = encode_reply(reply, embedded=self.server.embedded)
            self.mqtt.client.publish(self.topics.registry_server, payload, QOS)


class Proplet:
    def __init__(self, url: str, topics: Topics, timeout_s: float) -> None:
        self.topics = topics
        self.mqtt = Link(url, lambda topic, payload: self.fetcher.on_payload(payload))
        self.fetcher = MqttChunkFetcher(self._publish_request, timeout_s=timeout_s)

    async def _publish_request(self, app_name: str) -> None:
        await self.mqtt.publish(self.topics.registry_request, encode(RegistryRequest(app_name)))


@pytest.fixture(params=["amqtt", "mosquitto"])
async def broker_url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    if request.param == "mosquitto":
        yield request.getfixturevalue("mosquitto_url")
        return
    async with EmbeddedBroker() as broker:
        yield broker.url


async def wire_up(
    url: str, server: ChunkServer, *, timeout_s: float = 10, with_manager: bool = True
) -> tuple[Manager, Proplet]:
    topics = Topics("delivery-test", uuid.uuid4().hex)
    manager = Manager(url, topics, server)
    proplet = Proplet(url, topics, timeout_s)
    if with_manager:
        await manager.mqtt.connect()
        await manager.mqtt.subscribe(topics.registry_request)
    await proplet.mqtt.connect()
    await proplet.mqtt.subscribe(topics.registry_server)
    return manager, proplet


async def close(manager: Manager, proplet: Proplet) -> None:
    await proplet.mqtt.close()
    await manager.mqtt.close()


async def test_multi_chunk_binary_crosses_the_broker_and_runs(broker_url: str) -> None:
    wasm = wasm_of_size(1_200_000)  # 3 chunks of at most 512000 bytes, ~683 KB of base64 each
    server = ChunkServer()
    server.register("reg.example/app:1", wasm)
    manager, proplet = await wire_up(broker_url, server)
    try:
        source = WasmSource(image_url="reg.example/app:1", sha256=hashlib.sha256(wasm).hexdigest())
        data = await fetch_wasm(source, chunk_fetcher=proplet.fetcher)
    finally:
        await close(manager, proplet)
    assert data == wasm
    assert manager.requests == ["reg.example/app:1"]
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    instance = wasmtime.Instance(store, wasmtime.Module(engine, data), [])
    main = instance.exports(store)["main"]
    assert isinstance(main, wasmtime.Func)
    assert main(store) == 5


async def test_bad_digest_over_mqtt_is_refused(broker_url: str) -> None:
    server = ChunkServer(chunk_size=1000)
    server.register("app", wasm_of_size(5000))
    manager, proplet = await wire_up(broker_url, server)
    try:
        with pytest.raises(DeliveryError, match=f"sha256 mismatch for app: expected {'ab' * 32}") as info:
            await fetch_wasm(WasmSource(image_url="app", sha256="ab" * 32), chunk_fetcher=proplet.fetcher)
    finally:
        await close(manager, proplet)
    assert info.value.source == "mqtt"


async def test_unknown_app_is_refused_promptly(broker_url: str) -> None:
    manager, proplet = await wire_up(broker_url, ChunkServer(), timeout_s=30)
    try:
        with pytest.raises(DeliveryError, match=r"registry refused ghost: app 'ghost' is not registered"):
            await fetch_wasm(WasmSource(image_url="ghost"), chunk_fetcher=proplet.fetcher)
    finally:
        await close(manager, proplet)


async def test_embedded_single_message_and_refusal(broker_url: str) -> None:
    server = ChunkServer(embedded=True)
    fits = wasm_of_size(embedded_capacity("tiny"))
    server.register("tiny", fits)
    server.register("big", wasm_of_size(2000))
    manager, proplet = await wire_up(broker_url, server)
    try:
        assert await fetch_wasm(WasmSource(image_url="tiny"), chunk_fetcher=proplet.fetcher) == fits
        with pytest.raises(DeliveryError, match="embedded profile sends one message of at most 1023 bytes"):
            await fetch_wasm(WasmSource(image_url="big"), chunk_fetcher=proplet.fetcher)
    finally:
        await close(manager, proplet)


async def test_no_registry_on_the_channel_times_out(broker_url: str) -> None:
    _, proplet = await wire_up(broker_url, ChunkServer(), with_manager=False)
    try:
        with pytest.raises(DeliveryError, match=r"timed out after 0.3 s fetching wasm from app"):
            await fetch_wasm(
                WasmSource(image_url="app"),
                chunk_fetcher=proplet.fetcher,
                limits=FetchLimits(chunk_timeout_s=0.3),
            )
    finally:
        await proplet.mqtt.close()
