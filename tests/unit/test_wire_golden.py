"""Literal payloads as upstream components write them (reference §1.3, §2), decoded and re-encoded."""

from __future__ import annotations

import json

import pytest

from orchestrator.wire import (
    Discovery,
    Heartbeat,
    InvokeResult,
    InvokeTask,
    Profile,
    PropletMetrics,
    RegistryChunk,
    RegistryRequest,
    StartTask,
    StopTask,
    TaskMetrics,
    TaskResult,
    Topics,
    decode,
    encode,
)

T = Topics("3d1c0a6e-tenant", "8f2b-channel")

# The Go manager's startPayload: json.Marshal field order, cli_args null (no omitempty), file base64.
GO_START = (
    b'{"id":"5e0cf1a2-7a4b-4c1e-9a53-5b2f0c9d1e77","name":"add","state":0,'
    b'"file":"AGFzbQEAAAA=","inputs":["10","20"],"cli_args":null,"broadcast":false,'
    b'"daemon":false,"latent":false,"encrypted":false,"proplet_id":"rust-proplet-1"}'
)


def test_go_manager_start_payload() -> None:
    msg = decode(T, T.start, GO_START)
    assert msg == StartTask(
        id="5e0cf1a2-7a4b-4c1e-9a53-5b2f0c9d1e77",
        name="add",
        file=b"\x00asm\x01\x00\x00\x00",
        inputs=("10", "20"),
        proplet_id="rust-proplet-1",
    )
    # Ours is the same bytes except cli_args, which we send as [] (both Rust and Go accept it).
    assert encode(msg) == GO_START.replace(b'"cli_args":null', b'"cli_args":[]')


def test_go_start_with_every_optional_key() -> None:
    payload = {
        "id": "t", "name": "main", "state": 0, "image_url": "registry.local/fl/train:latest",
        "inputs": None, "cli_args": ["-x"], "broadcast": False, "daemon": True, "latent": True,
        "env": {"ROUND_ID": "r7"}, "encrypted": False, "kbs_resource_path": "kbs/x",
        "monitoring_profile": {
            "enabled": True, "interval": 120, "collect_cpu": True, "collect_memory": True,
            "collect_disk_io": True, "collect_threads": True, "collect_file_descriptors": True,
            "export_to_mqtt": True, "retain_history": True, "history_size": 500,
        },
        "proplet_id": "p", "hal_storage_path": "/data/hal", "parent_results": {"dep": "3"},
        "mode": "train",
    }  # fmt: skip
    msg = decode(T, T.start, json.dumps(payload).encode())
    assert isinstance(msg, StartTask)
    assert msg.image_url == "registry.local/fl/train:latest" and msg.file == b""
    assert msg.inputs == () and msg.daemon and msg.latent
    assert msg.monitoring_profile is not None and msg.monitoring_profile["interval"] == 120
    assert msg.parent_results == {"dep": "3"}
    assert msg.hal_storage_path == "/data/hal"
    reencoded = json.loads(encode(msg))
    del payload["mode"], payload["inputs"]  # mode is not ours to send; empty inputs are omitted
    assert reencoded == payload


def test_rust_result() -> None:
    payload = b'{"task_id":"t-1","proplet_id":"p-1","results":"42","error":null}'
    msg = decode(T, T.results, payload)
    assert msg == TaskResult("t-1", "42", None, "p-1")
    assert isinstance(msg, TaskResult) and msg.is_success
    assert encode(msg) == payload


def test_rust_failure_result() -> None:
    payload = b'{"task_id":"t-1","proplet_id":"p-1","results":"","error":"Task was cancelled or panicked"}'
    msg = decode(T, T.results, payload)
    assert isinstance(msg, TaskResult) and not msg.is_success
    assert msg.error == "Task was cancelled or panicked"
    assert encode(msg) == payload


def test_embedded_results() -> None:
    ok = b'{"task_id":"x","results":"42"}'
    msg = decode(T, T.results, ok)
    assert msg == TaskResult("x", "42") and msg.proplet_id is None and msg.is_success
    assert encode(msg, Profile.EMBEDDED) == ok
    bad = b'{"task_id":"x","results":"","error":"wasm trap"}'
    msg = decode(T, T.results, bad)
    assert isinstance(msg, TaskResult) and not msg.is_success
    assert encode(msg, Profile.EMBEDDED) == bad


def test_fl_result_has_an_object_and_no_proplet_id() -> None:
    payload = (
        b'{"task_id":"t","results":{"task_id":"t","round_id":"r1","proplet_id":"p","num_samples":1,'
        b'"update_b64":"AAAAAA==","format":"f32-delta","metrics":{}},"error":null}'
    )
    msg = decode(T, T.results, payload)
    assert isinstance(msg, TaskResult) and msg.is_success and msg.proplet_id is None
    assert msg.results["round_id"] == "r1"
    assert encode(msg) == payload


def test_empty_error_string_is_success() -> None:
    msg = decode(T, T.results, b'{"task_id":"t","results":"1","error":""}')
    assert isinstance(msg, TaskResult) and msg.is_success


@pytest.mark.parametrize(
    ("payload", "expected", "profile"),
    [
        # embed-proplet LWT and heartbeat
        (b'{"status":"offline","proplet_id":"esp-1","namespace":"embedded"}',
         Heartbeat("esp-1", "offline", "embedded"), Profile.EMBEDDED),
        (b'{"status":"alive","proplet_id":"esp-1","namespace":"embedded"}',
         Heartbeat("esp-1", "alive", "embedded"), Profile.EMBEDDED),
        # Rust LivelinessMessage
        (b'{"proplet_id":"p-1","status":"alive","namespace":"default"}',
         Heartbeat("p-1", "alive", "default"), Profile.RUST),
    ],
)  # fmt: skip
def test_heartbeats(payload: bytes, expected: Heartbeat, profile: Profile) -> None:
    assert decode(T, T.alive, payload) == expected
    assert encode(expected, profile) == payload


def test_go_manager_lwt_has_no_namespace_and_means_offline() -> None:
    msg = decode(T, T.alive, b'{"status":"offline","proplet_id":"manager-entity"}')
    assert msg == Heartbeat("manager-entity", "offline", "")


EMBEDDED_DISCOVERY = (
    b'{"proplet_id":"esp-1","namespace":"embedded","metadata":{"description":"ESP32-S3 embed-proplet",'
    b'"tags":["embedded","esp32s3","zephyr"],"location":"dev-bench","ip":"192.168.1.50",'
    b'"environment":"embedded","os":"zephyr","hostname":"","cpu_arch":"xtensa",'
    b'"total_memory_bytes":524288,"proplet_version":"0.1.0-PROP-103","wasm_runtime":"wamr"}}'
)


def test_embedded_discovery() -> None:
    msg = decode(T, T.create, EMBEDDED_DISCOVERY)
    assert isinstance(msg, Discovery)
    assert msg.proplet_id == "esp-1" and msg.namespace == "embedded"
    assert msg.metadata["tags"] == ("embedded", "esp32s3", "zephyr")
    assert msg.metadata["total_memory_bytes"] == 524288
    assert msg.metadata["wasm_runtime"] == "wamr" and msg.metadata["hostname"] == ""
    assert json.loads(encode(msg, Profile.EMBEDDED)) == json.loads(EMBEDDED_DISCOVERY)


def test_rust_discovery_without_system_info() -> None:
    payload = (
        b'{"proplet_id":"p","namespace":"default","metadata":{"environment":"","os":"","cpu_arch":"",'
        b'"total_memory_bytes":0,"proplet_version":"0.5.0","wasm_runtime":"wasmtime-internal"}}'
    )
    msg = decode(T, T.create, payload)
    assert isinstance(msg, Discovery) and msg.metadata["proplet_version"] == "0.5.0"
    assert json.loads(encode(msg)) == json.loads(payload)


def test_rust_proplet_metrics_with_systemtime_object() -> None:
    payload = (
        b'{"proplet_id":"p","namespace":"default",'
        b'"timestamp":{"secs_since_epoch":1787220000,"nanos_since_epoch":250000000},'
        b'"cpu_metrics":{"user_seconds":1.5,"system_seconds":0.25,"percent":12.0},'
        b'"memory_metrics":{"rss_bytes":1048576,"heap_alloc_bytes":0,"heap_sys_bytes":0,"heap_inuse_bytes":0}}'
    )
    msg = decode(T, T.metrics, payload)
    assert isinstance(msg, PropletMetrics)
    assert msg.timestamp == 1_787_220_000.25 and msg.timestamp_kind == "unix"
    assert msg.cpu_metrics["percent"] == 12.0 and msg.memory_metrics["rss_bytes"] == 1048576
    assert json.loads(encode(msg)) == json.loads(payload)


def test_embedded_proplet_metrics_with_uptime_ms() -> None:
    payload = (
        b'{"proplet_id":"esp-1","namespace":"embedded","timestamp":123456,'
        b'"cpu_metrics":{"user_seconds":0,"system_seconds":0,"percent":0},'
        b'"memory_metrics":{"rss_bytes":0,"heap_alloc_bytes":2048,"heap_sys_bytes":65536,'
        b'"heap_inuse_bytes":2048,"heap_free_bytes":63488,"heap_max_alloc_bytes":4096}}'
    )
    msg = decode(T, T.metrics, payload)
    assert isinstance(msg, PropletMetrics)
    assert msg.timestamp == 123.456 and msg.timestamp_kind == "uptime_ms"
    assert msg.memory_metrics["heap_free_bytes"] == 63488
    assert json.loads(encode(msg, Profile.EMBEDDED))["timestamp"] == 123456


@pytest.mark.parametrize(
    ("stamp", "seconds"),
    [
        ('"2026-08-20T10:00:00Z"', 1_787_220_000.0),
        ('"2026-08-20T12:00:00+02:00"', 1_787_220_000.0),
        ('"2026-08-20T10:00:00.5Z"', 1_787_220_000.5),
        ('"2026-08-20T10:00:00.000000250Z"', 1_787_220_000.00000025),
    ],
)
def test_rfc3339_metric_timestamps(stamp: str, seconds: float) -> None:
    payload = f'{{"proplet_id":"p","timestamp":{stamp}}}'.encode()
    msg = decode(T, T.metrics, payload)
    assert isinstance(msg, PropletMetrics) and msg.timestamp_kind == "unix"
    assert msg.timestamp == pytest.approx(seconds, abs=1e-6)


def test_rust_task_metrics_with_null_aggregate() -> None:
    payload = (
        b'{"task_id":"t","proplet_id":"p","metrics":{"cpu_percent":3.5,"memory_bytes":2048,'
        b'"memory_percent":0.0,"disk_read_bytes":0,"disk_write_bytes":0,"uptime_seconds":9,'
        b'"thread_count":4,"file_descriptor_count":12},"aggregated":null,'
        b'"timestamp":{"secs_since_epoch":1787220000,"nanos_since_epoch":0}}'
    )
    msg = decode(T, T.task_metrics, payload)
    assert isinstance(msg, TaskMetrics) and msg.aggregated is None
    assert msg.metrics["thread_count"] == 4 and msg.timestamp == 1_787_220_000.0
    assert json.loads(encode(msg)) == json.loads(payload)


@pytest.mark.parametrize(
    "payload",
    [
        b'{"id":"t","broadcast":false,"proplet_id":"p"}',  # StopTask
        b'{"id":"t","broadcast":true}',  # broadcast StopTask
        b'{"id":"t","proplet_id":"p"}',  # shutdown and recovery
    ],
)
def test_go_manager_stop_payloads(payload: bytes) -> None:
    msg = decode(T, T.stop, payload)
    assert isinstance(msg, StopTask) and msg.id == "t"
    # What we send back has every key the firmware demands, with a string state.
    out = json.loads(encode(msg))
    assert set(out) == {"id", "name", "state", "proplet_id", "broadcast"}
    assert isinstance(out["state"], str)


def test_firmware_style_stop() -> None:
    payload = b'{"id":"t","name":"main","state":"2","proplet_id":"esp-1","broadcast":false}'
    msg = decode(T, T.stop, payload)
    assert msg == StopTask("t", "main", "2", "esp-1", False)
    assert encode(msg, Profile.EMBEDDED) == payload == encode(msg)


def test_go_invoke_and_rust_invoke_result() -> None:
    invoke = (
        b'{"id":"t","broadcast":false,"proplet_id":"p","invocation_id":"i-1","inputs":["3"],"env":{"K":"v"}}'
    )
    msg = decode(T, T.invoke, invoke)
    assert msg == InvokeTask("t", "i-1", ("3",), {"K": "v"}, "p", False)
    assert encode(msg) == invoke
    reply = b'{"task_id":"t","invocation_id":"i-1","proplet_id":"p","results":"9","error":null}'
    res = decode(T, T.invoke_results, reply)
    assert res == InvokeResult("t", "i-1", "p", "9", None)
    assert encode(res) == reply


def test_registry_request_and_chunk() -> None:
    req = b'{"app_name":"docker.io/acme/add:latest"}'
    assert decode(T, T.registry_request, req) == RegistryRequest("docker.io/acme/add:latest")
    assert encode(RegistryRequest("docker.io/acme/add:latest")) == req
    chunk = b'{"app_name":"docker.io/acme/add:latest","chunk_idx":0,"total_chunks":1,"data":"AGFzbQEAAAA="}'
    msg = decode(T, T.registry_server, chunk)
    assert msg == RegistryChunk("docker.io/acme/add:latest", 0, 1, b"\x00asm\x01\x00\x00\x00")
    assert encode(msg, Profile.EMBEDDED) == chunk


def test_rust_accepts_empty_chunk_data() -> None:
    msg = decode(T, T.registry_server, b'{"app_name":"a","chunk_idx":1,"total_chunks":2,"data":""}')
    assert msg == RegistryChunk("a", 1, 2, b"")
