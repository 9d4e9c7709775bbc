"""Every message survives encode -> decode unchanged, in each profile that can carry it."""

from __future__ import annotations

import json

import pytest

from orchestrator.wire import (
    Discovery,
    Heartbeat,
    InvokeResult,
    InvokeTask,
    Message,
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
    topic_for,
)

TOPICS = Topics("tenant-1", "chan-1")
WASM = b"\x00asm\x01\x00\x00\x00" + bytes(range(256))
PROFILE = {
    "enabled": True, "interval": 10, "collect_cpu": True, "collect_memory": True,
    "collect_disk_io": False, "collect_threads": True, "collect_file_descriptors": False,
    "export_to_mqtt": True, "retain_history": True, "history_size": 100,
}  # fmt: skip
METADATA = {
    "description": "gateway", "tags": ("edge", "x86"), "location": "lab", "ip": "10.0.0.7",
    "environment": "docker", "os": "linux", "hostname": "gw1", "cpu_arch": "x86_64",
    "total_memory_bytes": 8 * 2**30, "proplet_version": "0.5.0", "wasm_runtime": "wasmtime-internal",
    "free_memory_bytes": 2**30, "max_instances": 4,
}  # fmt: skip

BOTH_PROFILES: list[Message] = [
    Discovery("p-1", "default", METADATA),
    Discovery("esp-1", "embedded", {"os": "zephyr", "wasm_runtime": "wamr", "tags": ("embedded",)}),
    Heartbeat("p-1", "alive", "default"),
    Heartbeat("esp-1", "offline", "embedded"),
    StopTask("t-1", "add", "2", "p-1", False),
    StopTask("t-1", broadcast=True),
    TaskResult("t-1", "42"),
    TaskResult("t-1", "", "trap: unreachable"),
    InvokeResult("t-1", "inv-1", "p-1", "7", None),
    InvokeResult("t-1", "inv-1", "p-1", "", "has not been precompiled"),
    PropletMetrics(
        "esp-1",
        "embedded",
        12.345,
        "uptime_ms",
        {"user_seconds": 0.0, "system_seconds": 0.0, "percent": 12.5},
        {"rss_bytes": 0, "heap_alloc_bytes": 1000, "heap_free_bytes": 9000},
    ),
    TaskMetrics("t-1", "esp-1", {"cpu_percent": 1.0, "memory_bytes": 4096}, None, 99.0, "uptime_ms"),
    RegistryRequest("docker.io/acme/add:latest"),
    RegistryChunk("docker.io/acme/add:latest", 0, 1, WASM[:200]),
]

RUST_ONLY: list[Message] = [
    StartTask(
        id="0b9c7a2e-0000-4000-8000-000000000001",
        name="add",
        state=1,
        image_url="",
        file=WASM,
        inputs=("1", "2", "-3.5"),
        cli_args=("--invoke", "add"),
        broadcast=False,
        daemon=True,
        latent=False,
        env={"A": "1", "B": "two"},
        encrypted=False,
        kbs_resource_path="kbs/key",
        monitoring_profile=PROFILE,
        proplet_id="p-1",
        hal_storage_path="/var/hal",
        parent_results={"dep-1": "5", "dep-2": {"round": 1}},
        parent_result_types={"dep-1": "json"},
        sha256="ab" * 32,
        attempt=2,
        limits={"fuel": 10**9, "memory_bytes": 2**26, "timeout_s": 2.5},
    ),
    StartTask(id="t-2", name="main", image_url="oci://acme/enc:latest", encrypted=True),
    StartTask(id="t-3", name="main", image_url="https://example.com/m.wasm", broadcast=True),
    TaskResult("t-1", "42", None, "p-1", 3),
    TaskResult("t-1", {"task_id": "t-1", "round_id": "r1", "update_b64": "AAAA", "metrics": {}}),
    InvokeTask("t-1", "inv-1", ("4", "5"), {"K": "v"}, "p-1", False),
    PropletMetrics(
        "p-1",
        "default",
        1_787_220_000.5,
        "unix",
        {"user_seconds": 1.25, "system_seconds": 0.5, "percent": 3.0},
        {
            "rss_bytes": 10_000_000,
            "heap_alloc_bytes": 0,
            "heap_sys_bytes": 0,
            "heap_inuse_bytes": 0,
            "container_usage_bytes": 5,
            "container_limit_bytes": 2**63,
        },
    ),
    TaskMetrics(
        "t-1",
        "p-1",
        {
            "cpu_percent": 55.5,
            "memory_bytes": 1 << 20,
            "memory_percent": 0.0,
            "disk_read_bytes": 1,
            "disk_write_bytes": 2,
            "uptime_seconds": 3,
            "thread_count": 4,
            "file_descriptor_count": 5,
        },
        {
            "avg_cpu_usage": 1.5,
            "max_cpu_usage": 2.5,
            "avg_memory_usage": 10,
            "max_memory_usage": 20,
            "total_disk_read": 0,
            "total_disk_write": 0,
            "sample_count": 7,
        },
        1_787_220_000.25,
        "unix",
    ),
    RegistryChunk("docker.io/acme/big:latest", 2, 3, WASM * 50),
]

EMBEDDED_ONLY: list[Message] = [
    StartTask(id="t-9", name="main", file=WASM[:100], inputs=(3, -4, 2.5), env={"ROUND_ID": "r1"}),
    StartTask(id="t-10", name="main", image_url="acme/add", proplet_id="esp-1"),
]


def _ids(messages: list[Message]) -> list[str]:
    return [f"{i}-{type(msg).__name__}" for i, msg in enumerate(messages)]


@pytest.mark.parametrize("msg", BOTH_PROFILES + RUST_ONLY, ids=_ids(BOTH_PROFILES + RUST_ONLY))
def test_rust_profile_round_trip(msg: Message) -> None:
    payload = encode(msg)
    assert decode(TOPICS, topic_for(TOPICS, msg), payload) == msg
    # One compact JSON object in UTF-8, nothing else.
    body = json.loads(payload)
    assert isinstance(body, dict)
    assert payload == json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


@pytest.mark.parametrize("msg", BOTH_PROFILES + EMBEDDED_ONLY, ids=_ids(BOTH_PROFILES + EMBEDDED_ONLY))
def test_embedded_profile_round_trip(msg: Message) -> None:
    payload = encode(msg, Profile.EMBEDDED)
    assert len(payload) <= 1023
    assert decode(TOPICS, topic_for(TOPICS, msg), payload) == msg


def test_decoded_messages_are_immutable() -> None:
    msg = decode(TOPICS, TOPICS.start, encode(RUST_ONLY[0]))
    assert isinstance(msg, StartTask)
    with pytest.raises(AttributeError):
        msg.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        msg.env["A"] = "changed"  # type: ignore[index]
    assert isinstance(msg.inputs, tuple) and isinstance(msg.cli_args, tuple)


def test_constructors_freeze_lists_and_dicts() -> None:
    env = {"A": "1"}
    msg = StartTask(id="t", name="n", file=b"x", inputs=["1"], env=env)  # type: ignore[arg-type]
    env["A"] = "2"
    assert msg.inputs == ("1",)
    assert msg.env == {"A": "1"}
