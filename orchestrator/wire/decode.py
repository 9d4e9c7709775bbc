"""Payload decoding: bytes from the broker to a message, or CodecError and nothing else."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from orchestrator.wire import messages as m
from orchestrator.wire import topics as t
from orchestrator.wire.errors import CodecError
from orchestrator.wire.fields import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    I32_MAX,
    U32_MAX,
    U64_MAX,
    Obj,
    check_float,
    check_int,
    parse_object,
)
from orchestrator.wire.topics import Topics

SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")
# A W3C trace context (version 00): our optional ``traceparent`` extension in start and result.
TRACEPARENT_RE = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
_RFC3339_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)
# Years 1970..9999: anything else from a device is a broken clock, not a time.
MAX_UNIX_SECONDS = 253_402_300_799


def _discovery(o: Obj) -> m.Discovery:
    md: dict[str, Any] = {}
    meta = o.obj("metadata")
    if meta is not None:
        for key in m.METADATA_TEXT_KEYS:
            if meta.has(key):
                md[key] = meta.text(key)
        for key in m.METADATA_INT_KEYS:
            if meta.has(key):
                md[key] = meta.integer(key)
        if meta.has("tags"):
            md["tags"] = meta.text_list("tags")
        for key in m.METADATA_TEE_KEYS:
            if meta.has(key):
                md[key] = meta.text(key)
        for key in m.METADATA_BOOL_KEYS:
            if meta.has(key):
                md[key] = meta.flag(key)
    return m.Discovery(o.text("proplet_id", required=True), o.text("namespace"), md)


def _heartbeat(o: Obj) -> m.Heartbeat:
    status = o.text("status", required=True)
    if status not in m.HEARTBEAT_STATUSES:
        o.fail("status", f"must be 'alive' or 'offline', got {status[:40]!r}")
    running = o.text_list("running") if o.raw("running") is not None else None
    pid, namespace, leaving = o.text("proplet_id", required=True), o.text("namespace"), o.flag("leaving")
    return m.Heartbeat(pid, status, namespace, running, leaving)  # type: ignore[arg-type]


def _inputs(o: Obj) -> tuple[str | int | float, ...]:
    value = o.raw("inputs")
    if value is None:
        return ()
    if not isinstance(value, list):
        o.fail("inputs", "must be an array of strings or numbers")
    out: list[str | int | float] = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, int) and not isinstance(item, bool):
            out.append(check_int(item, o.topic, o.name(f"inputs[{i}]"), lo=-U64_MAX, hi=U64_MAX))
        elif isinstance(item, float):
            out.append(item)
        else:
            o.fail(f"inputs[{i}]", "must be a string or a number")
    return tuple(out)


def monitoring_profile(mp: Obj) -> dict[str, Any]:
    """All ten keys are required because the Rust proplet has no serde defaults for them."""
    out: dict[str, Any] = {}
    for key in m.MONITORING_BOOL_KEYS:
        if not mp.has(key):
            mp.fail(key, "is required in a monitoring profile")
        out[key] = mp.flag(key)
    for key in m.MONITORING_INT_KEYS:
        if not mp.has(key):
            mp.fail(key, "is required in a monitoring profile")
        out[key] = mp.integer(key, hi=U32_MAX)
    return out


def limits(lim: Obj) -> dict[str, int | float]:
    out: dict[str, int | float] = {}
    for key, value in lim.data.items():
        if isinstance(value, int) and not isinstance(value, bool):
            out[key] = check_int(value, lim.topic, lim.name(key), lo=0, hi=U64_MAX)
        else:
            out[key] = check_float(value, lim.topic, lim.name(key))
    return out


def check_binary_source(o: Obj, encrypted: bool, file: bytes, image_url: str) -> None:
    """The Rust proplet's rule: encrypted needs image_url and no file, otherwise one of the two."""
    if encrypted:
        if not image_url:
            o.fail("image_url", "is required when encrypted is true")
        if file:
            o.fail("file", "must be empty when encrypted is true")
    elif not file and not image_url:
        o.fail("file", "either file or image_url must be provided")


def _start(o: Obj) -> m.StartTask:
    task_id = o.text("id", required=True)
    name = o.text("name", required=True)
    file = o.b64("file")
    image_url = o.text("image_url")
    encrypted = o.flag("encrypted")
    check_binary_source(o, encrypted, file, image_url)
    sha256 = o.text("sha256")
    if sha256 and not SHA256_RE.fullmatch(sha256):
        o.fail("sha256", "must be 64 hexadecimal digits")
    mp = o.obj("monitoring_profile")
    lim = o.obj("limits")
    return m.StartTask(
        id=task_id,
        name=name,
        state=o.integer("state", hi=255),
        image_url=image_url,
        file=file,
        inputs=_inputs(o),
        cli_args=o.text_list("cli_args"),
        broadcast=o.flag("broadcast"),
        daemon=o.flag("daemon"),
        latent=o.flag("latent"),
        env=o.text_map("env"),
        encrypted=encrypted,
        kbs_resource_path=o.text("kbs_resource_path"),
        monitoring_profile=None if mp is None else monitoring_profile(mp),
        proplet_id=o.text("proplet_id"),
        hal_storage_path=o.opt_text("hal_storage_path"),
        parent_results=o.any_map("parent_results"),
        parent_result_types=o.text_map("parent_result_types") or None,
        sha256=sha256.lower(),
        attempt=o.integer("attempt", hi=I32_MAX),
        limits=None if lim is None else limits(lim),
        traceparent=traceparent(o) or "",
    )


def traceparent(o: Obj) -> str | None:
    """Our ``traceparent`` extension (a W3C trace context), or None. Tolerant: a value that is not
    one is ignored, never a reason to drop the message (tracing is an aid)."""
    value = o.raw("traceparent")
    return value if isinstance(value, str) and TRACEPARENT_RE.fullmatch(value) else None


def _stop(o: Obj) -> m.StopTask:
    state = o.raw("state")
    # Go stores state as a number; the firmware wants a string. Accept both, keep the string.
    if isinstance(state, int) and not isinstance(state, bool):
        state_text = str(check_int(state, o.topic, o.name("state"), lo=0, hi=255))
    else:
        state_text = o.text("state")
    return m.StopTask(
        id=o.text("id", required=True),
        name=o.text("name"),
        state=state_text,
        proplet_id=o.text("proplet_id"),
        broadcast=o.flag("broadcast"),
        attempt=o.integer("attempt", hi=I32_MAX),
    )


def _discover(o: Obj) -> m.DiscoveryRequest:
    return m.DiscoveryRequest(o.text("proplet_id"))


def _error(o: Obj) -> str | None:
    return o.opt_text("error")


def _result_type(o: Obj) -> str | None:
    kind = o.opt_text("result_type")
    if kind is not None and kind not in m.RESULT_TYPES:
        o.fail("result_type", f"must be one of {', '.join(sorted(m.RESULT_TYPES))}, got {kind[:40]!r}")
    return kind


def _log_lines(o: Obj) -> m.LogLines | None:
    value = o.raw("logs")
    if value is None:
        return None
    if not isinstance(value, list):
        o.fail("logs", "must be an array of {stream, data} objects")
    out: list[tuple[str, str]] = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            o.fail(f"logs[{i}]", "must be an object with 'stream' and 'data'")
        line = Obj(item, o.topic, o.name(f"logs[{i}]"))
        out.append((line.text("stream", required=True), line.text("data")))
    return tuple(out)


def _result(o: Obj) -> m.TaskResult:
    return m.TaskResult(
        task_id=o.text("task_id", required=True),
        results=o.raw("results", ""),
        error=_error(o),
        proplet_id=o.opt_text("proplet_id"),
        attempt=o.opt_integer("attempt", hi=I32_MAX),
        receipt=o.any_map("receipt"),
        refused=o.opt_text("refused") or None,
        result_type=_result_type(o),
        logs=_log_lines(o),
        traceparent=traceparent(o),
    )


def _logs(o: Obj) -> m.TaskLogs:
    return m.TaskLogs(
        task_id=o.text("task_id", required=True),
        proplet_id=o.text("proplet_id"),
        attempt=o.opt_integer("attempt", hi=I32_MAX),
        seq=o.integer("seq", hi=U64_MAX),
        stream=o.text("stream", required=True),
        data=o.text("data"),
    )


def _invoke(o: Obj) -> m.InvokeTask:
    return m.InvokeTask(
        id=o.text("id", required=True),
        invocation_id=o.text("invocation_id"),
        inputs=_inputs(o),
        env=o.text_map("env"),
        proplet_id=o.text("proplet_id"),
        broadcast=o.flag("broadcast"),
    )


def _invoke_result(o: Obj) -> m.InvokeResult:
    return m.InvokeResult(
        task_id=o.text("task_id", required=True),
        invocation_id=o.text("invocation_id", required=True),
        proplet_id=o.text("proplet_id"),
        results=o.text("results"),
        error=_error(o),
        receipt=o.any_map("receipt"),
    )


def timestamp(o: Obj) -> tuple[float, m.TimestampKind]:
    """Normalise the three timestamp forms to (seconds, kind)."""
    value = o.raw("timestamp")
    if value is None:
        o.fail("timestamp", "is required")
    if isinstance(value, str):
        return _rfc3339(o, value), "unix"
    if isinstance(value, dict):
        ts = Obj(value, o.topic, o.name("timestamp"))
        for key in ("secs_since_epoch", "nanos_since_epoch"):
            if ts.raw(key) is None:
                ts.fail(key, "is required")
        secs = ts.integer("secs_since_epoch", hi=MAX_UNIX_SECONDS)
        nanos = ts.integer("nanos_since_epoch", hi=999_999_999)
        return secs + nanos / 1e9, "unix"
    if isinstance(value, bool) or not isinstance(value, int | float):
        o.fail("timestamp", "must be an RFC3339 string, a SystemTime object or uptime milliseconds")
    ms = check_float(value, o.topic, o.name("timestamp"))
    if ms > U64_MAX:
        o.fail("timestamp", "uptime milliseconds out of range")
    return ms / 1000.0, "uptime_ms"


def _rfc3339(o: Obj, text: str) -> float:
    match = _RFC3339_RE.fullmatch(text)
    if match is None:
        o.fail("timestamp", f"is not an RFC3339 time: {text[:40]!r}")
    y, mo, d, h, mi, s, frac, z, sign, oh, om = match.groups()
    try:
        offset = timedelta(0) if z else timedelta(hours=int(oh), minutes=int(om))
        tz = timezone(-offset if sign == "-" else offset)
        moment = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), tzinfo=tz)
    except ValueError as exc:
        o.fail("timestamp", f"is not a valid time: {exc}")
    # Whole seconds via datetime (exact), nanoseconds added separately so they are not truncated to µs.
    seconds = moment.timestamp() + (int(frac.ljust(9, "0")) / 1e9 if frac else 0.0)
    if not 0 <= seconds <= MAX_UNIX_SECONDS:
        o.fail("timestamp", f"{text[:40]!r} is outside 1970..9999")
    return seconds


def _float_map(o: Obj | None, float_keys: tuple[str, ...], int_keys: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if o is None:
        return out
    for key in float_keys:
        if o.has(key):
            out[key] = o.number(key)
    for key in int_keys:
        if o.has(key):
            out[key] = o.integer(key, lenient=True)
    return out


def _proplet_metrics(o: Obj) -> m.PropletMetrics:
    proplet_id = o.text("proplet_id", required=True)
    ts, kind = timestamp(o)
    return m.PropletMetrics(
        proplet_id=proplet_id,
        namespace=o.text("namespace"),
        timestamp=ts,
        timestamp_kind=kind,
        cpu_metrics=_float_map(o.obj("cpu_metrics"), m.CPU_FLOAT_KEYS, ()),
        memory_metrics=_float_map(o.obj("memory_metrics"), (), m.MEMORY_INT_KEYS),
    )


def _task_metrics(o: Obj) -> m.TaskMetrics:
    task_id = o.text("task_id", required=True)
    ts, kind = timestamp(o)
    agg = o.obj("aggregated")
    return m.TaskMetrics(
        task_id=task_id,
        proplet_id=o.text("proplet_id"),
        metrics=_float_map(o.obj("metrics"), m.PROCESS_FLOAT_KEYS, m.PROCESS_INT_KEYS),
        aggregated=None if agg is None else _float_map(agg, m.AGGREGATED_FLOAT_KEYS, m.AGGREGATED_INT_KEYS),
        timestamp=ts,
        timestamp_kind=kind,
    )


def _registry_request(o: Obj) -> m.RegistryRequest:
    return m.RegistryRequest(o.text("app_name", required=True))


def _registry_chunk(o: Obj) -> m.RegistryChunk:
    app_name = o.text("app_name", required=True)
    error = o.text("error")
    if error:  # our refusal: the counters and data of a refusal carry nothing
        return m.RegistryChunk.refusal(app_name, error)
    for key in ("chunk_idx", "total_chunks", "data"):
        if o.raw(key) is None:
            o.fail(key, "is required")
    total = o.integer("total_chunks", lo=1, hi=U32_MAX)
    idx = o.integer("chunk_idx", hi=U32_MAX)
    if idx >= total:
        o.fail("chunk_idx", f"must be below total_chunks ({total}), got {idx}")
    return m.RegistryChunk(app_name, idx, total, o.b64("data"))


DECODERS: dict[str, Callable[[Obj], m.Message]] = {
    t.CREATE: _discovery,
    t.ALIVE: _heartbeat,
    t.RESULTS: _result,
    t.LOGS: _logs,
    t.INVOKE_RESULTS: _invoke_result,
    t.METRICS: _proplet_metrics,
    t.TASK_METRICS: _task_metrics,
    t.START: _start,
    t.STOP: _stop,
    t.DISCOVER: _discover,
    t.INVOKE: _invoke,
    t.REGISTRY_REQUEST: _registry_request,
    t.REGISTRY_SERVER: _registry_chunk,
}


def decode_payload(
    suffix: str,
    payload: bytes,
    topic: str = "",
    *,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
) -> m.Message:
    """Decode ``payload`` as the message of topic ``suffix`` (``control/proplet/alive``, ...)."""
    decoder = DECODERS.get(suffix) if isinstance(suffix, str) else None
    if decoder is None:
        raise CodecError(topic or str(suffix)[:80], "", f"unknown topic suffix {str(suffix)[:80]!r}")
    data = parse_object(payload, topic, max_payload_bytes)
    return decoder(Obj(data, topic))


def decode(
    topics: Topics,
    topic: str,
    payload: bytes,
    *,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
) -> m.Message:
    """Decode a message received on ``topic``; raises only CodecError."""
    suffix = topics.suffix(topic)
    if suffix is None:
        shown = topic[:200] if isinstance(topic, str) else repr(topic)[:200]
        raise CodecError(shown, "", f"topic is outside channel {topics.base!r}")
    if suffix.startswith(t.START_DIRECT):
        suffix = t.START  # a start sent to one proplet alone is a start
    return decode_payload(suffix, payload, topic, max_payload_bytes=max_payload_bytes)
