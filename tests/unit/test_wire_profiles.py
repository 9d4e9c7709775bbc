"""What each receiver profile puts on the wire for the same message."""

from __future__ import annotations

import json

import pytest

from orchestrator.wire import (
    EMBEDDED_MAX_PAYLOAD_BYTES,
    CodecError,
    Discovery,
    Heartbeat,
    InvokeTask,
    Profile,
    RegistryChunk,
    StartTask,
    TaskResult,
    Topics,
    decode,
    encode,
    topic_for,
)

FULL = StartTask(
    id="t-1",
    name="add",
    state=1,
    file=b"\x00asm\x01\x00\x00\x00",
    inputs=("7", 8, "-2.5", 3.0),
    cli_args=("--x",),
    daemon=True,
    latent=True,
    broadcast=True,
    env={"ROUND_ID": "r1"},
    kbs_resource_path="k",
    proplet_id="esp-1",
    hal_storage_path="/h",
    parent_results={"d": "1"},
    sha256="0" * 64,
    attempt=2,
    limits={"fuel": 1000},
)


def test_rust_profile_sends_inputs_as_strings() -> None:
    body = json.loads(encode(FULL))
    assert body["inputs"] == ["7", "8", "-2.5", "3"]
    assert body["cli_args"] == ["--x"]
    assert body["sha256"] == "0" * 64 and body["attempt"] == 2 and body["limits"] == {"fuel": 1000}


def test_rust_profile_sends_cli_args_even_when_empty() -> None:
    body = json.loads(encode(StartTask(id="t", name="n", image_url="https://h/m.wasm")))
    assert body["cli_args"] == []
    assert "inputs" not in body and "file" not in body and "proplet_id" not in body
    assert body["state"] == 0 and body["encrypted"] is False


def test_rust_profile_float_inputs_keep_their_value() -> None:
    body = json.loads(encode(StartTask(id="t", name="n", file=b"x", inputs=(0.1, 1e300, -0.0, 2**70))))
    assert [float(v) for v in body["inputs"]] == [0.1, 1e300, 0.0, float(2**70)]
    assert body["inputs"][3] == str(2**70)


def test_embedded_profile_sends_numbers_and_only_what_the_firmware_reads() -> None:
    body = json.loads(encode(FULL, Profile.EMBEDDED))
    assert body == {
        "id": "t-1",
        "name": "add",
        "file": "AGFzbQEAAAA=",
        "inputs": [7, 8, -2.5, 3.0],
        "env": {"ROUND_ID": "r1"},
        "proplet_id": "esp-1",
        "attempt": 2,  # so the firmware can tell a stale stop (our extension)
    }


@pytest.mark.parametrize("bad", ["seven", "", "0x10", "1e", "nan", "inf"])
def test_embedded_profile_refuses_non_numeric_inputs_naming_the_index(bad: str) -> None:
    msg = StartTask(id="t", name="n", file=b"x", inputs=("1", "2", bad))
    with pytest.raises(CodecError) as info:
        encode(msg, Profile.EMBEDDED)
    assert info.value.field == "inputs[2]"
    encode(msg)  # the Rust profile carries any string


@pytest.mark.parametrize(
    ("text", "number"), [("42", 42), ("-7", -7), (" 3 ", 3), ("1.5", 1.5), ("1e3", 1000.0)]
)
def test_embedded_profile_converts_numeric_strings(text: str, number: float) -> None:
    body = json.loads(encode(StartTask(id="t", name="n", file=b"x", inputs=(text,)), Profile.EMBEDDED))
    assert body["inputs"] == [number]


def test_embedded_profile_refuses_more_inputs_than_the_firmware_reads() -> None:
    with pytest.raises(CodecError) as info:
        encode(StartTask(id="t", name="n", file=b"x", inputs=tuple(range(17))), Profile.EMBEDDED)
    assert info.value.field == "inputs"
    encode(StartTask(id="t", name="n", file=b"x", inputs=tuple(range(16))), Profile.EMBEDDED)


def test_embedded_profile_refuses_payloads_over_1023_bytes() -> None:
    def start(n: int) -> StartTask:
        return StartTask(id="t", name="main", file=b"\x01" * n)

    sizes = [len(encode(start(n), Profile.EMBEDDED)) for n in range(700, 800) if _fits(start(n))]
    assert max(sizes) <= EMBEDDED_MAX_PAYLOAD_BYTES
    big = start(800)
    with pytest.raises(CodecError, match="1023"):
        encode(big, Profile.EMBEDDED)
    assert len(encode(big)) > EMBEDDED_MAX_PAYLOAD_BYTES  # the Rust profile has no such limit


def _fits(msg: StartTask) -> bool:
    try:
        encode(msg, Profile.EMBEDDED)
    except CodecError:
        return False
    return True


def test_embedded_limit_applies_to_every_message() -> None:
    with pytest.raises(CodecError, match="1023"):
        encode(TaskResult("t", "9" * 1100), Profile.EMBEDDED)


def test_embedded_profile_refuses_ids_the_firmware_would_truncate() -> None:
    with pytest.raises(CodecError) as info:
        encode(StartTask(id="t" * 64, name="n", file=b"x"), Profile.EMBEDDED)
    assert info.value.field == "id"
    with pytest.raises(CodecError) as info:
        encode(StartTask(id="t", name="n", image_url="u" * 256), Profile.EMBEDDED)
    assert info.value.field == "image_url"


def test_embedded_profile_needs_single_chunk_binaries() -> None:
    with pytest.raises(CodecError) as info:
        encode(RegistryChunk("app", 0, 2, b"abc"), Profile.EMBEDDED)
    assert info.value.field == "total_chunks"
    encode(RegistryChunk("app", 0, 2, b"abc"))


def test_results_shape_per_profile() -> None:
    msg = TaskResult("t", "42", None, "p-1", 1)
    assert json.loads(encode(msg)) == {"task_id": "t", "proplet_id": "p-1", "results": "42", "error": None,
                                       "attempt": 1}  # fmt: skip
    assert json.loads(encode(msg, Profile.EMBEDDED)) == {"task_id": "t", "results": "42"}


def test_discovery_keeps_capacity_extensions() -> None:
    msg = Discovery("p", "default", {"free_memory_bytes": 10, "max_instances": 2, "os": "linux"})
    for profile in Profile:
        assert json.loads(encode(msg, profile))["metadata"] == {"free_memory_bytes": 10, "max_instances": 2,
                                                                "os": "linux"}  # fmt: skip


def test_topic_for_each_message() -> None:
    t = Topics("d", "c")
    assert topic_for(t, Heartbeat("p", "offline")) == t.alive
    assert topic_for(t, FULL) == t.start
    assert topic_for(t, InvokeTask("t")) == t.invoke
    assert topic_for(t, RegistryChunk("a", 0, 1, b"")) == t.registry_server


def test_non_ascii_text_travels_as_utf8() -> None:
    msg = TaskResult("t", "température 21°C ✓")
    payload = encode(msg)
    assert "✓".encode() in payload
    assert decode(Topics("d", "c"), Topics("d", "c").results, payload) == msg
