"""Decoding arbitrary bytes raises CodecError and nothing else (seeded, reproducible fuzzing).

Whatever decodes must also re-encode (or fail with CodecError) and decode again: a message the codec
accepts never becomes one it cannot send on.
"""

from __future__ import annotations

import json
import random
from typing import Any

from orchestrator.wire import CodecError, Message, Topics, decode, encode
from orchestrator.wire import topics as suffixes

T = Topics("d", "c")
TOPICS = [
    T.create, T.alive, T.results, T.invoke_results, T.metrics, T.task_metrics, T.start, T.stop,
    T.invoke, T.registry_request, T.registry_server,
]  # fmt: skip
SEEDS: dict[str, dict[str, Any]] = {
    suffixes.CREATE: {"proplet_id": "p", "namespace": "embedded",
                      "metadata": {"tags": ["a"], "total_memory_bytes": 5, "os": "zephyr"}},
    suffixes.ALIVE: {"status": "offline", "proplet_id": "p", "namespace": "embedded"},
    suffixes.RESULTS: {"task_id": "t", "proplet_id": "p", "results": "42", "error": None, "attempt": 1},
    suffixes.INVOKE_RESULTS: {"task_id": "t", "invocation_id": "i", "proplet_id": "p", "results": "1",
                              "error": None},
    suffixes.METRICS: {"proplet_id": "p", "timestamp": {"secs_since_epoch": 1, "nanos_since_epoch": 2},
                       "cpu_metrics": {"percent": 1.5}, "memory_metrics": {"rss_bytes": 3}},
    suffixes.TASK_METRICS: {"task_id": "t", "timestamp": "2026-08-20T10:00:00.5+01:00",
                            "metrics": {"cpu_percent": 1.0}, "aggregated": {"sample_count": 2}},
    suffixes.START: {"id": "t", "name": "n", "file": "AGFzbQ==", "inputs": ["1", 2], "cli_args": None,
                     "env": {"A": "b"}, "sha256": "a" * 64, "limits": {"fuel": 5},
                     "monitoring_profile": {"enabled": True, "interval": 1, "collect_cpu": True,
                                            "collect_memory": True, "collect_disk_io": True,
                                            "collect_threads": True, "collect_file_descriptors": True,
                                            "export_to_mqtt": True, "retain_history": True,
                                            "history_size": 3},
                     "parent_results": {"x": {"y": [1]}}},
    suffixes.STOP: {"id": "t", "name": "n", "state": "1", "proplet_id": "p", "broadcast": False},
    suffixes.INVOKE: {"id": "t", "invocation_id": "i", "inputs": ["1"], "env": {"K": "v"}},
    suffixes.REGISTRY_REQUEST: {"app_name": "a"},
    suffixes.REGISTRY_SERVER: {"app_name": "a", "chunk_idx": 0, "total_chunks": 2, "data": "AAAA"},
}  # fmt: skip
ODD_VALUES: list[Any] = [
    None, True, False, 0, -1, 1, 2**63, 2**64, -(2**64), 10**30, 1.5, -0.0, 1e308, "", "x", "AAAA",
    "%%%", "\u0000", "2026-13-01T00:00:00Z", [], [1, "a", None], {}, {"a": {"b": []}}, [[[[]]]],
    {"secs_since_epoch": 1}, "alive", "offline",
]  # fmt: skip
TOKENS = [b"{", b"}", b"[", b"]", b'"', b",", b":", b"\\", b"\\ud800", b"null", b"1e999", b"NaN", b"\xff"]


def _check(topic: str, payload: bytes) -> bool:
    """Decode; on success, re-encode and decode again. Returns whether the first decode succeeded."""
    try:
        msg = decode(T, topic, payload, max_payload_bytes=4096)
    except CodecError:
        return False
    _reencode(topic, msg)
    return True


def _reencode(topic: str, msg: Message) -> None:
    try:
        again = encode(msg)
    except CodecError:
        return
    assert type(decode(T, topic, again)) is type(msg)


def _mutate_json(rng: random.Random, value: Any, depth: int = 0) -> Any:
    if isinstance(value, dict) and value and depth < 3:
        out = dict(value)
        key = rng.choice(list(out))
        roll = rng.random()
        if roll < 0.15:
            del out[key]
        elif roll < 0.55:
            out[key] = rng.choice(ODD_VALUES)
        else:
            out[key] = _mutate_json(rng, out[key], depth + 1)
        return out
    if isinstance(value, list) and value and depth < 3:
        out_list = list(value)
        out_list[rng.randrange(len(out_list))] = rng.choice(ODD_VALUES)
        return out_list
    return rng.choice(ODD_VALUES)


def _mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.random()
        pos = rng.randrange(len(buf) + 1)
        if op < 0.3 and buf:
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        elif op < 0.5:
            del buf[pos : pos + rng.randint(1, 8)]
        elif op < 0.8:
            buf[pos:pos] = rng.choice(TOKENS)
        else:
            buf = buf[:pos]
    return bytes(buf)


def test_random_bytes_raise_only_codec_errors() -> None:
    rng = random.Random(20260820)
    for _ in range(1500):
        payload = rng.randbytes(rng.choice([0, 1, 2, 8, 64, 300]))
        if rng.random() < 0.5:
            payload = b"{" + payload + b"}"
        _check(rng.choice(TOPICS), payload)


def test_mutated_valid_payloads_raise_only_codec_errors() -> None:
    rng = random.Random(7)
    decoded = 0
    cases = 0
    for topic in TOPICS:
        seed = SEEDS[T.suffix(topic) or ""]
        assert _check(topic, json.dumps(seed).encode())  # the seeds themselves are valid
        for _ in range(250):
            body = seed
            for _ in range(rng.randint(1, 3)):
                body = _mutate_json(rng, body)
            decoded += _check(topic, json.dumps(body).encode())
            decoded += _check(topic, _mutate_bytes(rng, json.dumps(seed).encode()))
            cases += 2
    # Mutations must exercise both outcomes, or the fuzzer is not fuzzing.
    assert 0 < decoded < cases


def test_topics_outside_the_channel_raise_only_codec_errors() -> None:
    rng = random.Random(3)
    alphabet = "m/dc+#\x00é" + "controlpletmanagersv_"
    for _ in range(500):
        topic = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        _check(topic, b"{}")
