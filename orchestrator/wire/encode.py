"""Payload encoding: a message to compact UTF-8 JSON for one receiver profile.

Encoding validates what receivers would reject, so a bad message fails here with a CodecError naming
the field instead of being dropped silently by a proplet.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from orchestrator.wire import messages as m
from orchestrator.wire import topics as t
from orchestrator.wire.decode import MAX_UNIX_SECONDS, SHA256_RE, TRACEPARENT_RE
from orchestrator.wire.errors import CodecError
from orchestrator.wire.fields import I32_MAX, U32_MAX, U64_MAX, b64encode, check_float, check_int
from orchestrator.wire.messages import Profile
from orchestrator.wire.topics import Topics

# The firmware reads every payload into a 1024-byte buffer with a NUL terminator (§2.3, §9.4).
EMBEDDED_MAX_PAYLOAD_BYTES = 1023
EMBEDDED_MAX_INPUTS = 16  # MAX_INPUTS in embed-proplet
EMBEDDED_MAX_ID = 63  # char[64] for id, name and app_name
EMBEDDED_MAX_IMAGE_URL = 255
# Integral floats below 2**53 are exact, so "3.0" can be sent as "3" (WAVE and u32 params accept it).
_EXACT_INT_FLOAT = 2.0**53
_INT_TEXT = re.compile(r"[+-]?\d{1,20}")
_FLOAT_TEXT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d{1,3})?")


def _fail(field: str, reason: str) -> CodecError:
    return CodecError("", field, reason)


def _need_text(value: object, field: str, *, required: bool = False, limit: int | None = None) -> str:
    if not isinstance(value, str):
        raise _fail(field, f"must be a string, got {type(value).__name__}")
    if required and not value:
        raise _fail(field, "must not be empty")
    if limit is not None and len(value.encode("utf-8", "surrogatepass")) > limit:
        raise _fail(field, f"is longer than the firmware's {limit} bytes")
    return value


def _need_bool(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(field, f"must be a boolean, got {type(value).__name__}")
    return value


def _text_map(value: Mapping[str, Any], field: str) -> dict[str, str]:
    for key, item in value.items():
        _need_text(key, f"{field} key")
        _need_text(item, f"{field}.{key}")
    return dict(value)


def input_as_text(value: object, field: str) -> str:
    """Rust parses each input (WAVE) itself, so numbers travel as their decimal text."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(field, f"must be a string or a number, got {type(value).__name__}")
    if isinstance(value, float):
        check_float(value, "", field, lo=-math.inf)
        if value.is_integer() and abs(value) < _EXACT_INT_FLOAT:
            return str(int(value))
        return repr(value)
    return str(value)


def input_as_number(value: object, field: str) -> int | float:
    """The firmware reads only JSON numbers (a string input silently becomes 0 on the device)."""
    if isinstance(value, bool):
        raise _fail(field, "must be a number, got bool")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return check_float(value, "", field, lo=-math.inf)
    if isinstance(value, str):
        text = value.strip()
        if _INT_TEXT.fullmatch(text):
            return int(text)
        if _FLOAT_TEXT.fullmatch(text):
            number = float(text)
            if math.isfinite(number):
                return number
        raise _fail(field, f"is not numeric ({value[:40]!r}); the embedded firmware takes numbers only")
    raise _fail(field, f"must be a number, got {type(value).__name__}")


def _inputs(values: tuple[Any, ...], profile: Profile) -> list[Any]:
    if profile is Profile.EMBEDDED:
        if len(values) > EMBEDDED_MAX_INPUTS:
            raise _fail(
                "inputs", f"has {len(values)} entries; the firmware reads at most {EMBEDDED_MAX_INPUTS}"
            )
        return [input_as_number(v, f"inputs[{i}]") for i, v in enumerate(values)]
    return [input_as_text(v, f"inputs[{i}]") for i, v in enumerate(values)]


def _discovery(msg: m.Discovery, profile: Profile) -> dict[str, Any]:
    md: dict[str, Any] = {}
    for key in m.METADATA_TEXT_KEYS:
        if key in msg.metadata and msg.metadata[key] is not None:
            md[key] = _need_text(msg.metadata[key], f"metadata.{key}")
    if msg.metadata.get("tags") is not None:
        tags = msg.metadata["tags"]
        if isinstance(tags, str) or not isinstance(tags, list | tuple):
            raise _fail("metadata.tags", "must be a sequence of strings")
        md["tags"] = [_need_text(tag, f"metadata.tags[{i}]") for i, tag in enumerate(tags)]
    for key in m.METADATA_INT_KEYS:
        if msg.metadata.get(key) is not None:
            md[key] = check_int(msg.metadata[key], "", f"metadata.{key}", lo=0, hi=U64_MAX)
    for key in m.METADATA_TEE_KEYS:
        if msg.metadata.get(key) is not None:
            md[key] = _need_text(msg.metadata[key], f"metadata.{key}")
    for key in m.METADATA_BOOL_KEYS:
        if msg.metadata.get(key) is not None:
            md[key] = _need_bool(msg.metadata[key], f"metadata.{key}")
    known = {*m.METADATA_TEXT_KEYS, *m.METADATA_INT_KEYS, *m.METADATA_TEE_KEYS, *m.METADATA_BOOL_KEYS}
    unknown = set(msg.metadata) - known - {"tags"}
    if unknown:
        raise _fail(f"metadata.{sorted(unknown)[0]}", "is not a known metadata key")
    return {
        "proplet_id": _need_text(msg.proplet_id, "proplet_id", required=True),
        "namespace": _need_text(msg.namespace, "namespace"),
        "metadata": md,
    }


def _heartbeat(msg: m.Heartbeat, profile: Profile) -> dict[str, Any]:
    if msg.status not in m.HEARTBEAT_STATUSES:
        raise _fail("status", f"must be 'alive' or 'offline', got {msg.status!r}")
    pid = _need_text(msg.proplet_id, "proplet_id", required=True)
    ns = _need_text(msg.namespace, "namespace")
    # Key order as each upstream sender writes it, so golden payloads compare byte for byte.
    out: dict[str, Any]
    if profile is Profile.EMBEDDED:
        out = {"status": msg.status, "proplet_id": pid, "namespace": ns}
    else:
        out = {"proplet_id": pid, "status": msg.status, "namespace": ns}
    if msg.running is not None:
        out["running"] = [_need_text(r, "running", required=True) for r in msg.running]
    if msg.leaving:
        out["leaving"] = True
    return out


def _monitoring_profile(mp: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in m.MONITORING_BOOL_KEYS:
        if key not in mp:
            raise _fail(f"monitoring_profile.{key}", "is required in a monitoring profile")
        out[key] = _need_bool(mp[key], f"monitoring_profile.{key}")
    for key in m.MONITORING_INT_KEYS:
        if key not in mp:
            raise _fail(f"monitoring_profile.{key}", "is required in a monitoring profile")
        out[key] = check_int(mp[key], "", f"monitoring_profile.{key}", lo=0, hi=U32_MAX)
    return out


def _limits(lim: Mapping[str, Any]) -> dict[str, int | float]:
    out: dict[str, int | float] = {}
    for key, value in lim.items():
        _need_text(key, "limits key")
        if isinstance(value, int) and not isinstance(value, bool):
            out[key] = check_int(value, "", f"limits.{key}", lo=0, hi=U64_MAX)
        else:
            out[key] = check_float(value, "", f"limits.{key}")
    return out


def _start(msg: m.StartTask, profile: Profile) -> dict[str, Any]:
    embedded = profile is Profile.EMBEDDED
    id_limit = EMBEDDED_MAX_ID if embedded else None
    out: dict[str, Any] = {
        "id": _need_text(msg.id, "id", required=True, limit=id_limit),
        "name": _need_text(msg.name, "name", required=True, limit=id_limit),
    }
    if not isinstance(msg.file, bytes | bytearray):
        raise _fail("file", f"must be bytes, got {type(msg.file).__name__}")
    image_url = _need_text(msg.image_url, "image_url", limit=EMBEDDED_MAX_IMAGE_URL if embedded else None)
    encrypted = _need_bool(msg.encrypted, "encrypted")
    if encrypted and not image_url:
        raise _fail("image_url", "is required when encrypted is true")
    if encrypted and msg.file:
        raise _fail("file", "must be empty when encrypted is true")
    if not encrypted and not msg.file and not image_url:
        raise _fail("file", "either file or image_url must be provided")
    if not embedded:
        out["state"] = check_int(msg.state, "", "state", lo=0, hi=255)
    if image_url:
        out["image_url"] = image_url
    if msg.file:
        out["file"] = b64encode(bytes(msg.file))
    if msg.inputs:
        out["inputs"] = _inputs(msg.inputs, profile)
    env = _text_map(msg.env, "env")
    if embedded:
        if env:
            out["env"] = env
        # proplet_id is ignored by upstream firmware but lets ours drop starts meant for others.
        if _need_text(msg.proplet_id, "proplet_id"):
            out["proplet_id"] = msg.proplet_id
        # Ours too: the firmware then ignores a stop aimed at another attempt (upstream ignores it).
        if check_int(msg.attempt, "", "attempt", lo=0, hi=I32_MAX):
            out["attempt"] = msg.attempt
        return out
    # Always a list: Rust takes [] or null, Go takes both, the firmware ignores the key.
    out["cli_args"] = [_need_text(a, f"cli_args[{i}]") for i, a in enumerate(msg.cli_args)]
    out["broadcast"] = _need_bool(msg.broadcast, "broadcast")
    out["daemon"] = _need_bool(msg.daemon, "daemon")
    out["latent"] = _need_bool(msg.latent, "latent")
    if env:
        out["env"] = env
    out["encrypted"] = encrypted
    if _need_text(msg.kbs_resource_path, "kbs_resource_path"):
        out["kbs_resource_path"] = msg.kbs_resource_path
    if msg.monitoring_profile is not None:
        out["monitoring_profile"] = _monitoring_profile(msg.monitoring_profile)
    if _need_text(msg.proplet_id, "proplet_id"):
        out["proplet_id"] = msg.proplet_id
    if msg.hal_storage_path is not None:
        out["hal_storage_path"] = _need_text(msg.hal_storage_path, "hal_storage_path")
    if msg.parent_results is not None:
        out["parent_results"] = dict(msg.parent_results)
    if msg.parent_result_types:
        out["parent_result_types"] = _text_map(msg.parent_result_types, "parent_result_types")
    if _need_text(msg.sha256, "sha256"):
        if not SHA256_RE.fullmatch(msg.sha256):
            raise _fail("sha256", "must be 64 hexadecimal digits")
        out["sha256"] = msg.sha256.lower()
    if check_int(msg.attempt, "", "attempt", lo=0, hi=I32_MAX):
        out["attempt"] = msg.attempt
    if msg.limits is not None:
        out["limits"] = _limits(msg.limits)
    if msg.traceparent:
        out["traceparent"] = _traceparent(msg.traceparent)
    return out


def _stop(msg: m.StopTask, profile: Profile) -> dict[str, Any]:
    # Every key, every time: Rust needs id, the firmware needs string id, name and state (§2.4).
    out: dict[str, Any] = {
        "id": _need_text(msg.id, "id", required=True),
        "name": _need_text(msg.name, "name"),
        "state": _need_text(msg.state, "state"),
        "proplet_id": _need_text(msg.proplet_id, "proplet_id"),
        "broadcast": _need_bool(msg.broadcast, "broadcast"),
    }
    if check_int(msg.attempt, "", "attempt", lo=0, hi=I32_MAX):  # our extension, omitted when 0
        out["attempt"] = msg.attempt
    return out


def _discover(msg: m.DiscoveryRequest, profile: Profile) -> dict[str, Any]:
    return {"proplet_id": _need_text(msg.proplet_id, "proplet_id")}


def _error_text(error: object) -> str | None:
    if error is None:
        return None
    return _need_text(error, "error")


def _result(msg: m.TaskResult, profile: Profile) -> dict[str, Any]:
    out: dict[str, Any] = {"task_id": _need_text(msg.task_id, "task_id", required=True)}
    error = _error_text(msg.error)
    if profile is Profile.EMBEDDED:
        # The firmware's two shapes: no proplet_id, and error only on failure.
        out["results"] = msg.results
        if error:
            out["error"] = error
        if msg.receipt is not None:
            out["receipt"] = dict(msg.receipt)
        return out
    if msg.proplet_id is not None:
        out["proplet_id"] = _need_text(msg.proplet_id, "proplet_id")
    out["results"] = msg.results
    out["error"] = error
    if msg.attempt is not None:
        out["attempt"] = check_int(msg.attempt, "", "attempt", lo=0, hi=I32_MAX)
    if msg.receipt is not None:
        out["receipt"] = dict(msg.receipt)
    if msg.refused is not None:
        out["refused"] = _need_text(msg.refused, "refused", required=True)
    if msg.result_type is not None:
        if msg.result_type not in m.RESULT_TYPES:
            raise _fail("result_type", f"must be one of {', '.join(sorted(m.RESULT_TYPES))}")
        out["result_type"] = msg.result_type
    if msg.logs is not None:
        out["logs"] = [
            {
                "stream": _need_text(stream, f"logs[{i}].stream", required=True),
                "data": _need_text(data, f"logs[{i}].data"),
            }
            for i, (stream, data) in enumerate(msg.logs)
        ]
    if msg.traceparent is not None:
        out["traceparent"] = _traceparent(msg.traceparent)
    return out


def _traceparent(value: object) -> str:
    if not isinstance(value, str) or not TRACEPARENT_RE.fullmatch(value):
        raise _fail("traceparent", "must be a W3C trace context (00-<32 hex>-<16 hex>-<2 hex>)")
    return value


def with_traceparent(payload: bytes, traceparent: str) -> bytes:
    """An encoded start (Rust profile) with our ``traceparent`` extension added (``--otel``: the
    manager's dispatch span, made by an adapter after the engine encoded the start). An embedded-profile
    start (no ``state`` key: the firmware's tight buffer and parser) is returned unchanged."""
    body = json.loads(payload)
    if not isinstance(body, dict) or "state" not in body:
        return payload
    body["traceparent"] = _traceparent(traceparent)
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8")


def _logs(msg: m.TaskLogs, profile: Profile) -> dict[str, Any]:
    if profile is Profile.EMBEDDED:
        raise _fail("", "the embedded firmware sends no live logs")
    out: dict[str, Any] = {
        "task_id": _need_text(msg.task_id, "task_id", required=True),
        "proplet_id": _need_text(msg.proplet_id, "proplet_id"),
        "seq": check_int(msg.seq, "", "seq", lo=0, hi=U64_MAX),
        "stream": _need_text(msg.stream, "stream", required=True),
        "data": _need_text(msg.data, "data"),
    }
    if msg.attempt is not None:
        out["attempt"] = check_int(msg.attempt, "", "attempt", lo=0, hi=I32_MAX)
    return out


def _invoke(msg: m.InvokeTask, profile: Profile) -> dict[str, Any]:
    if profile is Profile.EMBEDDED:
        raise _fail("", "the embedded firmware does not support invoke")
    out: dict[str, Any] = {
        "id": _need_text(msg.id, "id", required=True),
        "broadcast": _need_bool(msg.broadcast, "broadcast"),
        "proplet_id": _need_text(msg.proplet_id, "proplet_id"),
        "invocation_id": _need_text(msg.invocation_id, "invocation_id"),
        "inputs": _inputs(msg.inputs, profile),
    }
    env = _text_map(msg.env, "env")
    if env:
        out["env"] = env
    return out


def _invoke_result(msg: m.InvokeResult, profile: Profile) -> dict[str, Any]:
    out: dict[str, Any] = {
        "task_id": _need_text(msg.task_id, "task_id", required=True),
        "invocation_id": _need_text(msg.invocation_id, "invocation_id", required=True),
        "proplet_id": _need_text(msg.proplet_id, "proplet_id"),
        "results": _need_text(msg.results, "results"),
        "error": _error_text(msg.error),
    }
    if msg.receipt is not None:
        out["receipt"] = dict(msg.receipt)
    return out


def _timestamp(value: float, kind: str) -> Any:
    seconds = check_float(value, "", "timestamp")
    if kind == "uptime_ms":
        ms = seconds * 1000.0
        return round(ms) if abs(ms - round(ms)) < 1e-6 else ms
    if kind != "unix":
        raise _fail("timestamp_kind", f"must be 'unix' or 'uptime_ms', got {kind!r}")
    if seconds > MAX_UNIX_SECONDS:
        raise _fail("timestamp", f"{seconds} is after year 9999")
    secs = math.floor(seconds)
    nanos = round((seconds - secs) * 1e9)
    if nanos >= 1_000_000_000:  # rounding carried into the next second
        secs, nanos = secs + 1, nanos - 1_000_000_000
    return {"secs_since_epoch": secs, "nanos_since_epoch": nanos}


def _numbers(
    values: Mapping[str, Any], field: str, float_keys: tuple[str, ...], int_keys: tuple[str, ...]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key in float_keys:
            out[key] = check_float(value, "", f"{field}.{key}")
        elif key in int_keys:
            out[key] = check_int(value, "", f"{field}.{key}", lo=0, hi=U64_MAX)
        else:
            raise _fail(f"{field}.{key}", "is not a known metric")
    return out


def _proplet_metrics(msg: m.PropletMetrics, profile: Profile) -> dict[str, Any]:
    return {
        "proplet_id": _need_text(msg.proplet_id, "proplet_id", required=True),
        "namespace": _need_text(msg.namespace, "namespace"),
        "timestamp": _timestamp(msg.timestamp, msg.timestamp_kind),
        "cpu_metrics": _numbers(msg.cpu_metrics, "cpu_metrics", m.CPU_FLOAT_KEYS, ()),
        "memory_metrics": _numbers(msg.memory_metrics, "memory_metrics", (), m.MEMORY_INT_KEYS),
    }


def _task_metrics(msg: m.TaskMetrics, profile: Profile) -> dict[str, Any]:
    agg = msg.aggregated
    return {
        "task_id": _need_text(msg.task_id, "task_id", required=True),
        "proplet_id": _need_text(msg.proplet_id, "proplet_id"),
        "metrics": _numbers(msg.metrics, "metrics", m.PROCESS_FLOAT_KEYS, m.PROCESS_INT_KEYS),
        "aggregated": None
        if agg is None
        else _numbers(agg, "aggregated", m.AGGREGATED_FLOAT_KEYS, m.AGGREGATED_INT_KEYS),
        "timestamp": _timestamp(msg.timestamp, msg.timestamp_kind),
    }


def _registry_request(msg: m.RegistryRequest, profile: Profile) -> dict[str, Any]:
    return {"app_name": _need_text(msg.app_name, "app_name", required=True)}


def _registry_chunk(msg: m.RegistryChunk, profile: Profile) -> dict[str, Any]:
    embedded = profile is Profile.EMBEDDED
    name = _need_text(msg.app_name, "app_name", required=True, limit=EMBEDDED_MAX_ID if embedded else None)
    if _need_text(msg.error, "error"):
        return {"app_name": name, "chunk_idx": 0, "total_chunks": 0, "data": "", "error": msg.error}
    total = check_int(msg.total_chunks, "", "total_chunks", lo=1, hi=U32_MAX)
    idx = check_int(msg.chunk_idx, "", "chunk_idx", lo=0, hi=U32_MAX)
    if idx >= total:
        raise _fail("chunk_idx", f"must be below total_chunks ({total}), got {idx}")
    if embedded and total != 1:
        raise _fail("total_chunks", f"the firmware assembles one chunk only, got {total}")
    if not isinstance(msg.data, bytes | bytearray):
        raise _fail("data", f"must be bytes, got {type(msg.data).__name__}")
    return {"app_name": name, "chunk_idx": idx, "total_chunks": total, "data": b64encode(bytes(msg.data))}


_Encoder = Callable[[Any, Profile], dict[str, Any]]
_ENCODERS: dict[type, tuple[str, _Encoder]] = {
    m.Discovery: (t.CREATE, _discovery),
    m.Heartbeat: (t.ALIVE, _heartbeat),
    m.TaskResult: (t.RESULTS, _result),
    m.TaskLogs: (t.LOGS, _logs),
    m.InvokeResult: (t.INVOKE_RESULTS, _invoke_result),
    m.PropletMetrics: (t.METRICS, _proplet_metrics),
    m.TaskMetrics: (t.TASK_METRICS, _task_metrics),
    m.StartTask: (t.START, _start),
    m.StopTask: (t.STOP, _stop),
    m.DiscoveryRequest: (t.DISCOVER, _discover),
    m.InvokeTask: (t.INVOKE, _invoke),
    m.RegistryRequest: (t.REGISTRY_REQUEST, _registry_request),
    m.RegistryChunk: (t.REGISTRY_SERVER, _registry_chunk),
}


def _lookup(message: object) -> tuple[str, _Encoder]:
    entry = _ENCODERS.get(type(message))
    if entry is None:
        raise _fail("", f"{type(message).__name__} is not a wire message")
    return entry


def _json_default(value: object) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# What json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=...) would
# build on every call, built once (every wire message goes through it).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_json_default)


def encode(message: m.Message, profile: Profile = Profile.RUST) -> bytes:
    """Compact UTF-8 JSON for ``message`` as the ``profile`` receiver expects it."""
    suffix, encoder = _lookup(message)
    try:
        body = encoder(message, profile)
        text = _ENCODER.encode(body)
        payload = text.encode("utf-8")
    except CodecError as exc:
        raise CodecError(suffix, exc.field, exc.reason) from None
    except (TypeError, ValueError, RecursionError) as exc:  # results/parent_results that are not JSON
        raise CodecError(suffix, "", f"not JSON serialisable: {exc}") from None
    if profile is Profile.EMBEDDED and len(payload) > EMBEDDED_MAX_PAYLOAD_BYTES:
        raise CodecError(
            suffix,
            "",
            f"{len(payload)} bytes exceeds the firmware's {EMBEDDED_MAX_PAYLOAD_BYTES}-byte buffer",
        )
    return payload


def suffix_of(message: m.Message) -> str:
    """The topic suffix a message is published under (``control/manager/start``, ...)."""
    return _lookup(message)[0]


def topic_for(topics: Topics, message: m.Message) -> str:
    """The full topic a message is published on in this channel."""
    return topics.topic(suffix_of(message))
