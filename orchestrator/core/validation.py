"""Validation of user task JSON (upstream field names). Every error names the field."""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable
from typing import Any

from orchestrator.core.errors import ValidationError
from orchestrator.core.model import Task, TaskKind
from proplets.runtime.wasmbin import WasmFormatError, is_component, memory_requirements

# Keys upstream clients send that are read-only here (state, timestamps): accepted and ignored.
_READ_ONLY = frozenset(
    {
        "state",
        "results",
        "error",
        "start_time",
        "finish_time",
        "created_at",
        "updated_at",
        "next_run",
        "attempt",
    }
)
_LIMIT_KEYS = frozenset({"fuel", "memory_bytes", "timeout_s", "output_bytes", "log_bytes"})
_SHA256 = re.compile(r"^(sha256:)?[0-9a-fA-F]{64}$")
MAX_METADATA_BYTES = 1 << 20


def _expect(spec: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = spec.get(key)
    if value is None:
        return None
    if isinstance(value, bool) and kind is not bool and bool not in (kind if isinstance(kind, tuple) else ()):
        raise ValidationError(f"{key} must be {what}, got a boolean", key)
    if not isinstance(value, kind):
        raise ValidationError(f"{key} must be {what}, got {type(value).__name__}", key)
    return value


def _str_list(spec: dict[str, Any], key: str) -> list[str]:
    value = _expect(spec, key, list, "a list of strings") or []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise ValidationError(f"{key}[{i}] must be a string", f"{key}[{i}]")
    return list(value)


def _inputs(spec: dict[str, Any]) -> list[str]:
    """Upstream's FlexStrings: strings or numbers in, strings stored and sent."""
    value = _expect(spec, "inputs", list, "a list of strings or numbers") or []
    out: list[str] = []
    for i, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            raise ValidationError(f"inputs[{i}] must be a string or a number", f"inputs[{i}]")
        if isinstance(item, float):
            if not math.isfinite(item):
                raise ValidationError(f"inputs[{i}] must be finite", f"inputs[{i}]")
            out.append(str(int(item)) if item.is_integer() else repr(item))
        else:
            out.append(str(item))
    return out


def _int(spec: dict[str, Any], key: str, lo: int, hi: int, default: int) -> int:
    value = _expect(spec, key, int, "an integer")
    if value is None:
        return default
    if not lo <= value <= hi:
        raise ValidationError(f"{key} must be between {lo} and {hi}, got {value}", key)
    return int(value)


def declared_memory(wasm: bytes) -> int:
    """Linear memory a core module declares it needs at start (its minimum pages x 64 KiB)."""
    if is_component(wasm):
        return 0  # a component's memories are inside its core modules; not derived here
    try:
        min_pages, _max = memory_requirements(wasm)
    except WasmFormatError as err:
        raise ValidationError(f"file is not a valid wasm module: {err}", "file") from None
    return min_pages * 65536


def _looks_like_wat(data: bytes) -> bool:
    """WAT sent where a binary belongs: text starting with ``(module``, ``(component`` or ``;;``.

    Binary modules start with ``\\0asm``; encrypted modules are opaque bytes, so only text that reads
    as WAT is refused here (the full format check happens at placement and on the proplet).
    """
    head = data[:256].lstrip()
    return not data.startswith(b"\0asm") and head.startswith((b"(module", b"(component", b";;"))


def build_task(spec: Any, new_id: Callable[[], str], *, default_max_attempts: int = 3) -> Task:
    """``default_max_attempts``: the manager's ``--max-attempts``, used when the spec sets none."""
    if not isinstance(spec, dict):
        raise ValidationError("task must be a JSON object")
    known = (
        set(Task.__dataclass_fields__)
        | _READ_ONLY
        | {"monitoring_profile", "kbs_resource_path", "hal_storage_path", "mode"}
    )
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ValidationError(f"unknown field {unknown[0]!r}", unknown[0])
    name = _expect(spec, "name", str, "a string")
    if not name or not name.strip():
        raise ValidationError("name is required", "name")
    task_id = _expect(spec, "id", str, "a string") or new_id()
    raw_file = _expect(spec, "file", str, "a base64 string") or ""
    try:
        wasm = base64.b64decode(raw_file, validate=True) if raw_file else b""
    except (binascii.Error, ValueError) as err:
        raise ValidationError(f"file is not valid base64: {err}", "file") from None
    if _looks_like_wat(wasm):
        raise ValidationError(
            "file is WebAssembly text (WAT); only binary wasm is accepted: compile it first "
            "(wat2wasm, or `propeller task create --file x.wat`, which compiles it)",
            "file",
        )
    proplet_id = _expect(spec, "proplet_id", str, "a string") or ""
    broadcast = bool(_expect(spec, "broadcast", bool, "a boolean"))
    if broadcast and proplet_id:
        raise ValidationError("broadcast and proplet_id are mutually exclusive", "broadcast")
    priority = _int(spec, "priority", 0, 100, 50) or 50
    env = _expect(spec, "env", dict, "an object of strings") or {}
    for k, v in env.items():
        if not isinstance(v, str):
            raise ValidationError(f"env.{k} must be a string", f"env.{k}")
    metadata = _expect(spec, "metadata", dict, "an object") or {}
    if len(json.dumps(metadata)) > MAX_METADATA_BYTES:
        raise ValidationError("metadata exceeds 1 MiB", "metadata")
    run_if = _expect(spec, "run_if", str, "a string") or ""
    if run_if not in ("", "success", "failure"):
        raise ValidationError("run_if must be 'success' or 'failure'", "run_if")
    kind = _expect(spec, "kind", str, "a string") or TaskKind.STANDARD.value
    if kind not in {k.value for k in TaskKind}:
        raise ValidationError("kind must be 'standard' or 'federated'", "kind")
    sha256 = _expect(spec, "sha256", str, "a hex sha256 digest") or ""
    if sha256 and not _SHA256.match(sha256):
        raise ValidationError("sha256 must be 64 hex digits, optionally prefixed 'sha256:'", "sha256")
    limits = _expect(spec, "limits", dict, "an object") or {}
    for k, v in limits.items():
        if k not in _LIMIT_KEYS:
            raise ValidationError(
                f"unknown limit {k!r} (use {', '.join(sorted(_LIMIT_KEYS))})", f"limits.{k}"
            )
        if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0:
            raise ValidationError(f"limits.{k} must be a positive number", f"limits.{k}")
    image_url = _expect(spec, "image_url", str, "a string") or ""
    memory_bytes = _int(spec, "memory_bytes", 0, 1 << 40, 0)
    if not memory_bytes and wasm:
        memory_bytes = declared_memory(wasm)
    task = Task(
        id=task_id,
        name=name,
        kind=kind,
        image_url=image_url,
        file=wasm,
        cli_args=_str_list(spec, "cli_args"),
        inputs=_inputs(spec),
        env=dict(env),
        daemon=bool(_expect(spec, "daemon", bool, "a boolean")),
        latent=bool(_expect(spec, "latent", bool, "a boolean")),
        encrypted=bool(_expect(spec, "encrypted", bool, "a boolean")),
        proplet_id=proplet_id,
        depends_on=_str_list(spec, "depends_on"),
        run_if=run_if,
        workflow_id=_expect(spec, "workflow_id", str, "a string") or "",
        job_id=_expect(spec, "job_id", str, "a string") or "",
        priority=priority,
        broadcast=broadcast,
        metadata=dict(metadata),
        schedule=_expect(spec, "schedule", str, "a string") or "",
        timezone=_expect(spec, "timezone", str, "a string") or "UTC",
        is_recurring=bool(_expect(spec, "is_recurring", bool, "a boolean")),
        sha256=sha256.removeprefix("sha256:").lower(),
        memory_bytes=memory_bytes,
        limits=dict(limits),
        max_attempts=_int(spec, "max_attempts", 1, 100, default_max_attempts),
    )
    return task


def printable(text: str, limit: int = 4096) -> str:
    """Error text from the network, made safe to store (PostgreSQL text refuses NUL) and bounded."""
    text = text.replace("\x00", "\\0")
    return text if len(text) <= limit else text[:limit] + f"... ({len(text) - limit} more characters)"
