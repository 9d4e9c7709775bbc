"""Chunked registry protocol: manager-side ChunkServer, proplet-side ChunkAssembler and fetcher."""

from __future__ import annotations

import asyncio
import base64
import json
import random

import pytest

from orchestrator.chunk_server import (
    UPSTREAM_CHUNK_SIZE,
    ChunkServer,
    embedded_capacity,
    encode_reply,
)
from orchestrator.wire import EMBEDDED_MAX_PAYLOAD_BYTES, RegistryChunk
from proplets.delivery import ChunkAssembler, DeliveryError, MqttChunkFetcher, decode_chunk


def _blob(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


# -- ChunkAssembler ---------------------------------------------------------------------------------


def test_in_order_chunks_assemble_once_all_are_present() -> None:
    asm = ChunkAssembler()
    assert asm.add("app", 0, 3, b"aa", now=0.0) is None
    assert asm.add("app", 1, 3, b"bb", now=0.1) is None
    assert asm.add("app", 2, 3, b"c", now=0.2) == b"aabbc"
    assert asm.progress("app") is None  # finished assemblies are forgotten


def test_out_of_order_chunks_are_concatenated_by_index() -> None:
    asm = ChunkAssembler()
    assert asm.add("app", 2, 3, b"C", now=0) is None
    assert asm.add("app", 0, 3, b"A", now=0) is None
    assert asm.add("app", 1, 3, b"B", now=0) == b"ABC"


def test_duplicates_are_ignored_and_first_copy_wins() -> None:
    asm = ChunkAssembler()
    asm.add("app", 0, 2, b"first", now=0)
    assert asm.add("app", 0, 2, b"other", now=0) is None
    assert asm.progress("app") == (1, 2)
    assert asm.add("app", 1, 2, b"!", now=0) == b"first!"


def test_apps_assemble_independently() -> None:
    asm = ChunkAssembler()
    asm.add("a", 0, 2, b"a0", now=0)
    assert asm.add("b", 0, 1, b"b0", now=0) == b"b0"
    assert asm.add("a", 1, 2, b"a1", now=0) == b"a0a1"


def test_mismatching_total_is_an_error_that_drops_the_assembly() -> None:
    asm = ChunkAssembler()
    asm.add("app", 0, 3, b"x", now=0)
    with pytest.raises(DeliveryError, match="total_chunks 4 does not match 3") as info:
        asm.add("app", 1, 4, b"y", now=0)
    assert info.value.source == "mqtt"
    assert asm.progress("app") is None


@pytest.mark.parametrize(("idx", "total"), [(3, 3), (-1, 2), (0, 0)])
def test_out_of_range_counters_are_refused(idx: int, total: int) -> None:
    with pytest.raises(DeliveryError, match="outside"):
        ChunkAssembler().add("app", idx, total, b"x", now=0)


def test_incomplete_assemblies_expire_after_the_ttl() -> None:
    asm = ChunkAssembler(ttl_s=300)
    asm.add("old", 0, 2, b"x", now=10.0)
    asm.add("new", 0, 2, b"x", now=200.0)
    assert asm.next_deadline() == 310.0
    assert asm.expire(now=309.9) == []
    assert asm.expire(now=310.0) == ["old"]
    assert asm.progress("old") is None
    assert asm.progress("new") == (1, 2)
    # A late chunk of the expired app starts over rather than completing a stale binary.
    assert asm.add("old", 1, 2, b"y", now=311.0) is None


def test_oversize_assembly_is_refused_and_dropped() -> None:
    asm = ChunkAssembler(max_bytes=10)
    asm.add("app", 0, 3, b"12345", now=0)
    asm.add("app", 1, 3, b"12345", now=0)
    with pytest.raises(DeliveryError, match="exceed size limit of 10 bytes"):
        asm.add("app", 2, 3, b"1", now=0)
    assert asm.progress("app") is None


def test_absurd_chunk_count_is_refused_before_storing_anything() -> None:
    with pytest.raises(DeliveryError, match=r"total_chunks 20000 outside 1\.\.10000"):
        ChunkAssembler().add("app", 0, 20_000, b"x", now=0)


# -- ChunkServer ------------------------------------------------------------------------------------


def test_server_splits_at_upstream_chunk_size_and_round_trips_through_the_wire() -> None:
    wasm = _blob(UPSTREAM_CHUNK_SIZE * 2 + 1234)
    server = ChunkServer()
    server.register("reg.example/app:1", wasm)
    replies = server.handle_request("reg.example/app:1")
    assert [(r.chunk_idx, r.total_chunks, len(r.data)) for r in replies] == [
        (0, 3, UPSTREAM_CHUNK_SIZE),
        (1, 3, UPSTREAM_CHUNK_SIZE),
        (2, 3, 1234),
    ]
    asm = ChunkAssembler()
    out = None
    for payload in reversed([encode_reply(r) for r in replies]):
        assert len(payload) < 1_048_576  # the broker's per-message limit
        msg = decode_chunk(payload)
        out = asm.add(msg.app_name, msg.chunk_idx, msg.total_chunks, msg.data, now=0)
    assert out == wasm


def test_unknown_app_gets_an_explicit_not_found_refusal_on_the_wire() -> None:
    [reply] = ChunkServer().handle_request("reg.example/ghost:1")
    assert reply.is_refusal and "not found" in reply.error
    body = json.loads(encode_reply(reply))
    assert body == {
        "app_name": "reg.example/ghost:1",
        "chunk_idx": 0,
        "total_chunks": 0,
        "data": "",
        "error": reply.error,
    }
    assert decode_chunk(encode_reply(reply)).is_refusal


def test_chunk_size_that_would_break_the_broker_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="over the broker limit of 1048576; use at most"):
        ChunkServer(chunk_size=800_000)
    with pytest.raises(ValueError, match="at least 1 byte"):
        ChunkServer(chunk_size=0)


def test_embedded_mode_answers_one_message_within_the_firmware_buffer() -> None:
    server = ChunkServer(embedded=True)
    capacity = embedded_capacity("app")
    server.register("app", _blob(capacity))
    [reply] = server.handle_request("app")
    payload = encode_reply(reply, embedded=True)
    assert (reply.chunk_idx, reply.total_chunks) == (0, 1)
    assert len(payload) <= EMBEDDED_MAX_PAYLOAD_BYTES
    assert len(json.loads(payload)["data"]) <= 1023
    assert base64.b64decode(json.loads(payload)["data"]) == _blob(capacity)


def test_embedded_mode_refuses_a_binary_one_message_cannot_hold() -> None:
    server = ChunkServer(embedded=True)
    size = embedded_capacity("app") + 3
    server.register("app", _blob(size))
    [reply] = server.handle_request("app")
    assert reply.is_refusal
    assert f"binary of app is {size} bytes" in reply.error
    assert "at most 1023 bytes" in reply.error
    # The same server answers a Rust proplet normally when asked per request.
    assert server.handle_request("app", embedded=False)[0].total_chunks == 1


def test_register_validates_its_input() -> None:
    server = ChunkServer()
    with pytest.raises(ValueError, match="empty"):
        server.register("app", b"")
    with pytest.raises(ValueError, match="app_name must be"):
        server.register("", b"x")
    server.register("app", b"x")
    assert "app" in server and server.unregister("app") and "app" not in server


# -- decode_chunk -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"not json", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"chunk_idx":0,"total_chunks":1,"data":""}', "app_name: is required"),
        (b'{"app_name":"a","chunk_idx":true,"total_chunks":1,"data":""}', "chunk_idx: must be an integer"),
        (b'{"app_name":"a","chunk_idx":0,"total_chunks":1,"data":"!!"}', "data: invalid standard base64"),
    ],
)
def test_bad_chunk_payloads_name_the_problem(payload: bytes, message: str) -> None:
    with pytest.raises(DeliveryError, match=message):
        decode_chunk(payload)


# -- MqttChunkFetcher over an in-memory fake channel ------------------------------------------------


class FakeChannel:
    """Stands in for the broker: a request published is answered by the ChunkServer via the loop."""

    def __init__(self, server: ChunkServer | None, *, shuffle: bool = False, duplicate: bool = False) -> None:
        self.server = server
        self.shuffle = shuffle
        self.duplicate = duplicate
        self.requests: list[str] = []
        self.fetcher = MqttChunkFetcher(self.publish, timeout_s=0.5)

    async def publish(self, app_name: str) -> None:
        self.requests.append(app_name)
        if self.server is None:
            return
        payloads = [encode_reply(r) for r in self.server.handle_request(app_name)]
        if self.duplicate:
            payloads = payloads + payloads
        if self.shuffle:
            random.Random(7).shuffle(payloads)
        for payload in payloads:
            asyncio.get_running_loop().call_soon(self.fetcher.on_payload, payload)


async def test_fetcher_assembles_shuffled_and_duplicated_chunks() -> None:
    server = ChunkServer(chunk_size=100)
    wasm = _blob(1050)
    server.register("app", wasm)
    channel = FakeChannel(server, shuffle=True, duplicate=True)
    assert await channel.fetcher.request("app") == wasm


async def test_concurrent_requests_for_one_app_share_one_publish() -> None:
    server = ChunkServer(chunk_size=100)
    server.register("app", _blob(300))
    channel = FakeChannel(server)
    results = await asyncio.gather(channel.fetcher.request("app"), channel.fetcher.request("app"))
    assert results == [_blob(300), _blob(300)]
    assert channel.requests == ["app"]


async def test_fetcher_fails_fast_on_a_refusal() -> None:
    channel = FakeChannel(ChunkServer())
    with pytest.raises(DeliveryError, match=r"registry refused ghost: .*not found"):
        await channel.fetcher.request("ghost")


async def test_fetcher_times_out_with_progress_when_a_chunk_never_comes() -> None:
    server = ChunkServer(chunk_size=100)
    server.register("app", _blob(300))

    class Lossy(FakeChannel):
        async def publish(self, app_name: str) -> None:
            for reply in server.handle_request(app_name)[:2]:  # the last chunk is lost
                asyncio.get_running_loop().call_soon(self.fetcher.on_chunk, decode_chunk(encode_reply(reply)))

    channel = Lossy(None)
    with pytest.raises(DeliveryError, match=r"timed out after 0.5 s waiting for chunks of app \(got 2 of 3"):
        await channel.fetcher.request("app")


async def test_fetcher_ignores_chunks_nobody_asked_for() -> None:
    fetcher = MqttChunkFetcher(lambda app: asyncio.sleep(0))
    fetcher.on_chunk(decode_chunk(encode_reply(RegistryChunk("other", 0, 1, b"x"))))  # no error, no state
    assert fetcher._assembler.progress("other") is None


async def test_a_cancelled_request_leaves_no_stale_waiter_behind() -> None:
    server = ChunkServer()
    server.register("app", b"\0asm")
    channel = FakeChannel(None)  # first request: nobody answers
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await channel.fetcher.request("app")
    channel.server = server  # the registry comes up; a retry must publish again and succeed
    assert await channel.fetcher.request("app") == b"\0asm"
    assert channel.requests == ["app", "app"]


async def test_a_failed_publish_is_a_delivery_error() -> None:
    async def broken(app_name: str) -> None:
        raise ConnectionError("not connected")

    fetcher = MqttChunkFetcher(broken)
    with pytest.raises(DeliveryError, match="cannot publish the registry request for app: not connected"):
        await fetcher.request("app")
