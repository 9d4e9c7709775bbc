"""Bad input is refused with a CodecError that names the topic, the field and the reason."""

from __future__ import annotations

import json
from typing import Any

import pytest

from orchestrator.wire import (
    CodecError,
    Discovery,
    Heartbeat,
    InvokeTask,
    Profile,
    RegistryChunk,
    StartTask,
    StopTask,
    TaskResult,
    Topics,
    decode,
    decode_payload,
    encode,
)

T = Topics("d", "c")
MEM = "total_memory_bytes"
GOOD_START: dict[str, Any] = {"id": "t", "name": "main", "file": "AGFzbQ=="}


def _err(topic: str, payload: bytes | dict[str, Any], **kw: Any) -> CodecError:
    raw = json.dumps(payload).encode() if isinstance(payload, dict) else payload
    with pytest.raises(CodecError) as info:
        decode(T, topic, raw, **kw)
    return info.value


def test_error_names_topic_field_and_reason() -> None:
    err = _err(T.create, {"proplet_id": "p", "metadata": {"total_memory_bytes": "lots"}})
    assert (err.topic, err.field) == (T.create, "metadata.total_memory_bytes")
    assert "integer" in err.reason
    assert str(err) == f"{T.create}: metadata.total_memory_bytes: {err.reason}"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe{}", "UTF-8"),
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'"text"', "JSON object"),
        (b"", "not valid JSON"),
        (b'{"proplet_id":"p","status":NaN}', "not valid JSON"),
        (b'{"proplet_id":"p","status":1e999}', "not valid JSON"),
        (b'{"proplet_id":"\\ud800","status":"alive"}', "surrogate"),
        (b"[" * 50_000 + b"]" * 50_000, "nested"),
        (b'{"a":' * 100 + b"1" + b"}" * 100, "nested"),
    ],
)
def test_malformed_payloads(payload: bytes, reason: str) -> None:
    err = _err(T.alive, payload)
    assert err.field == "" and reason in err.reason


def test_payload_size_limit_is_configurable() -> None:
    payload = json.dumps({"proplet_id": "p", "status": "alive", "pad": "x" * 2000}).encode()
    assert isinstance(decode(T, T.alive, payload), Heartbeat)
    err = _err(T.alive, payload, max_payload_bytes=1000)
    assert "exceeds the limit of 1000" in err.reason


def test_topic_outside_channel_or_unknown_suffix() -> None:
    assert "outside channel" in _err("m/d/c/other/control/proplet/alive", b"{}").reason
    assert "unknown topic suffix" in _err("m/d/c/c/control/manager/registry", b"{}").reason
    with pytest.raises(CodecError, match="unknown topic suffix"):
        decode_payload("fl/rounds/start", b"{}")


def test_decode_payload_with_known_suffix() -> None:
    msg = decode_payload("control/proplet/alive", b'{"proplet_id":"p","status":"alive"}')
    assert msg == Heartbeat("p", "alive")


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"id": None}, "id"),
        ({"id": ""}, "id"),
        ({"id": 7}, "id"),
        ({"name": ""}, "name"),
        ({"file": None}, "file"),  # neither file nor image_url
        ({"file": "not base64!"}, "file"),
        ({"file": "AGFzbQ"}, "file"),  # padding missing
        ({"state": True}, "state"),  # a boolean is not an integer
        ({"state": -1}, "state"),
        ({"state": 256}, "state"),
        ({"state": 1.5}, "state"),
        ({"inputs": "1,2"}, "inputs"),
        ({"inputs": ["1", True]}, "inputs[1]"),
        ({"inputs": ["1", 2, None]}, "inputs[2]"),
        ({"inputs": [2**65]}, "inputs[0]"),
        ({"cli_args": [1]}, "cli_args[0]"),
        ({"env": {"A": 1}}, "env.A"),
        ({"env": ["A"]}, "env"),
        ({"broadcast": "false"}, "broadcast"),
        ({"encrypted": True, "image_url": "x"}, "file"),  # encrypted must not inline a file
        ({"encrypted": True, "file": None}, "image_url"),
        ({"monitoring_profile": {"enabled": True}}, "monitoring_profile.collect_cpu"),
        ({"monitoring_profile": []}, "monitoring_profile"),
        ({"sha256": "abc"}, "sha256"),
        ({"attempt": -1}, "attempt"),
        ({"limits": {"fuel": "many"}}, "limits.fuel"),
        ({"limits": {"fuel": -5}}, "limits.fuel"),
        ({"parent_results": "x"}, "parent_results"),
        ({"parent_result_types": {"dep": 1}}, "parent_result_types.dep"),
        ({"hal_storage_path": 3}, "hal_storage_path"),
    ],
)
def test_start_validation(patch: dict[str, Any], field: str) -> None:
    assert _err(T.start, {**GOOD_START, **patch}).field == field


def test_start_accepts_nulls_and_numeric_inputs() -> None:
    msg = decode(T, T.start, json.dumps({**GOOD_START, "cli_args": None, "image_url": None,
                                         "inputs": ["1", 2, 2.5], "env": None}).encode())  # fmt: skip
    assert isinstance(msg, StartTask)
    assert msg.cli_args == () and msg.image_url == "" and msg.inputs == ("1", 2, 2.5)


def test_start_sha256_is_normalised_to_lowercase() -> None:
    msg = decode(T, T.start, json.dumps({**GOOD_START, "sha256": "AB" * 32}).encode())
    assert isinstance(msg, StartTask) and msg.sha256 == "ab" * 32


@pytest.mark.parametrize(
    ("topic", "payload", "field"),
    [
        (T.alive, {"proplet_id": "p", "status": "dead"}, "status"),
        (T.alive, {"proplet_id": "p"}, "status"),
        (T.alive, {"status": "alive"}, "proplet_id"),
        (T.create, {"proplet_id": ""}, "proplet_id"),
        (T.create, {"proplet_id": "p", "metadata": "x"}, "metadata"),
        (T.create, {"proplet_id": "p", "metadata": {"tags": ["a", 1]}}, "metadata.tags[1]"),
        (T.create, {"proplet_id": "p", "metadata": {"total_memory_bytes": True}}, f"metadata.{MEM}"),
        (T.create, {"proplet_id": "p", "metadata": {"total_memory_bytes": -1}}, f"metadata.{MEM}"),
        (T.create, {"proplet_id": "p", "metadata": {"max_instances": 2**64}}, "metadata.max_instances"),
        (T.stop, {"name": "x"}, "id"),
        (T.stop, {"id": "t", "state": [1]}, "state"),
        (T.results, {"results": "1"}, "task_id"),
        (T.results, {"task_id": "t", "error": 5}, "error"),
        (T.results, {"task_id": "t", "proplet_id": 5}, "proplet_id"),
        (T.invoke, {"invocation_id": "i"}, "id"),
        (T.invoke_results, {"task_id": "t", "results": "1"}, "invocation_id"),
        (T.invoke_results, {"task_id": "t", "invocation_id": "i", "results": {"a": 1}}, "results"),
        (T.metrics, {"proplet_id": "p"}, "timestamp"),
        (T.metrics, {"proplet_id": "p", "timestamp": "yesterday"}, "timestamp"),
        (T.metrics, {"proplet_id": "p", "timestamp": "2026-08-20T10:00:00"}, "timestamp"),  # no offset
        (T.metrics, {"proplet_id": "p", "timestamp": "2026-02-30T10:00:00Z"}, "timestamp"),
        (T.metrics, {"proplet_id": "p", "timestamp": True}, "timestamp"),
        (T.metrics, {"proplet_id": "p", "timestamp": -5}, "timestamp"),
        (T.metrics, {"proplet_id": "p", "timestamp": {"secs_since_epoch": 1}}, "timestamp.nanos_since_epoch"),
        (T.metrics, {"proplet_id": "p", "timestamp": {"secs_since_epoch": 1, "nanos_since_epoch": 10**9}},
         "timestamp.nanos_since_epoch"),
        (T.metrics, {"proplet_id": "p", "timestamp": 1, "cpu_metrics": {"percent": "high"}},
         "cpu_metrics.percent"),
        (T.metrics, {"proplet_id": "p", "timestamp": 1, "memory_metrics": {"rss_bytes": 1.5}},
         "memory_metrics.rss_bytes"),
        (T.task_metrics, {"task_id": "t", "timestamp": 1, "aggregated": {"sample_count": -1}},
         "aggregated.sample_count"),
        (T.registry_request, {"app_name": ""}, "app_name"),
        (T.registry_server, {"app_name": "a", "chunk_idx": 1, "total_chunks": 1, "data": ""}, "chunk_idx"),
        (T.registry_server, {"app_name": "a", "chunk_idx": -1, "total_chunks": 1, "data": ""}, "chunk_idx"),
        (T.registry_server, {"app_name": "a", "chunk_idx": 0, "total_chunks": 0, "data": ""}, "total_chunks"),
        (T.registry_server, {"app_name": "a", "chunk_idx": 0, "total_chunks": 1}, "data"),
        (T.registry_server, {"app_name": "a", "chunk_idx": 0, "total_chunks": 1, "data": "%%"}, "data"),
    ],
)  # fmt: skip
def test_message_validation(topic: str, payload: dict[str, Any], field: str) -> None:
    assert _err(topic, payload).field == field


def test_unknown_metadata_keys_are_dropped_and_nulls_ignored() -> None:
    payload = {"proplet_id": "p", "metadata": {"os": "linux", "gpu": "a100", "ip": None}, "extra": 1}
    msg = decode(T, T.create, json.dumps(payload).encode())
    assert msg == Discovery("p", "", {"os": "linux"})


def test_stop_needs_only_an_id_and_keeps_a_numeric_state_as_text() -> None:
    assert decode(T, T.stop, b'{"id":"t"}') == StopTask("t")
    assert decode(T, T.stop, b'{"id":"t","state":4}') == StopTask("t", state="4")


def test_integral_float_metrics_from_cjson_are_accepted() -> None:
    msg = decode(T, T.metrics, b'{"proplet_id":"p","timestamp":5,"memory_metrics":{"rss_bytes":1e+10}}')
    assert msg.memory_metrics["rss_bytes"] == 10**10  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (Heartbeat("p", "sleeping"), "status"),  # type: ignore[arg-type]
        (Heartbeat("", "alive"), "proplet_id"),
        (StartTask(id="", name="n", file=b"x"), "id"),
        (StartTask(id="t", name="n"), "file"),
        (StartTask(id="t", name="n", file=b"x", inputs=(True,)), "inputs[0]"),
        (StartTask(id="t", name="n", file=b"x", sha256="xyz"), "sha256"),
        (StartTask(id="t", name="n", file=b"x", monitoring_profile={"enabled": True}),
         "monitoring_profile.collect_cpu"),
        (StartTask(id="t", name="n", file=b"x", limits={"fuel": float("nan")}), "limits.fuel"),
        (StartTask(id="t", name="n", file=b"x", env={"A": 1}), "env.A"),  # type: ignore[dict-item]
        (StopTask("t", state=2), "state"),  # type: ignore[arg-type]
        (RegistryChunk("a", 3, 3, b""), "chunk_idx"),
        (Discovery("p", metadata={"gpu": "a100"}), "metadata.gpu"),
        (Discovery("p", metadata={"total_memory_bytes": True}), "metadata.total_memory_bytes"),
        (TaskResult("t", results={1, 2}), ""),  # a set is not JSON
    ],
)  # fmt: skip
def test_encode_refuses_what_receivers_would_reject(message: Any, field: str) -> None:
    with pytest.raises(CodecError) as info:
        encode(message)
    assert info.value.field == field
    assert info.value.topic.startswith(("control/", "registry/"))


def test_encode_refuses_non_messages() -> None:
    with pytest.raises(CodecError, match="not a wire message"):
        encode({"id": "t"})  # type: ignore[arg-type]


def test_embedded_profile_refuses_invoke() -> None:
    with pytest.raises(CodecError, match="does not support invoke"):
        encode(InvokeTask("t", "i"), Profile.EMBEDDED)


def test_codec_error_survives_pickling() -> None:
    import pickle

    err = pickle.loads(pickle.dumps(CodecError("a/b", "x.y", "bad")))
    assert (err.topic, err.field, err.reason) == ("a/b", "x.y", "bad")
