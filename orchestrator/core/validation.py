"""Validation of user task JSON (upstream field names). Every error names the field.

Beyond types and ranges, every value a user sends must be storable on every backend and bounded in
size, or it is refused here (400, field named) before the engine holds it: no NUL characters
(PostgreSQL text refuses them), no lone surrogates (SQLite's UTF-8 encoder refuses them), no NaN or
Infinity (PostgreSQL json refuses them), integers within 64 bits, nesting at most ``MAX_DEPTH`` deep
(deeper values overflow the recursion of copy and JSON encoders) and the sizes below. Every entry point
(``POST /tasks``, ``PUT /tasks/{id}``, workflows, jobs, invoke, the CLI) goes through ``build_task`` or
``check_text``, so they share these rules. The bounds are documented in docs/api.md.
"""

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
from orchestrator.wire.messages import MONITORING_BOOL_KEYS, MONITORING_INT_KEYS
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
_SURROGATE = re.compile("[\ud800-\udfff]")

# Bounds on user input (docs/api.md, "Input bounds").
MAX_DEPTH = 32  # nesting of any JSON value (metadata is the only field that nests freely)
MAX_ID_CHARS = 255  # id, proplet_id, workflow_id, job_id, depends_on[i]: VARCHAR(255) columns
MAX_NAME_CHARS = 1024  # a task's or job's name (it doubles as the export name)
MAX_TEXT_CHARS = 64 * 1024  # any other string: image_url, schedule, cli_args[i], inputs[i], env values...
MAX_ITEMS = 10_000  # elements of a list, keys of an object
MAX_METADATA_BYTES = 1 << 20  # metadata as JSON (upstream's bound)
# An inline module travels base64-encoded in the start message, which proplets refuse above
# wire.DEFAULT_MAX_PAYLOAD_BYTES (10 MiB): 7 MiB of module is 9.3 MiB of base64, leaving room for the
# rest. Bigger modules go by image_url (HTTP or OCI).
MAX_MODULE_BYTES = 7 * 1024 * 1024
# Default bound on a request body (ManagerSettings.api_max_body, --api-max-body): it holds a job or
# workflow of several tasks with inline modules of the largest size.
MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_INT = (1 << 63) - 1  # integers a store holds (64-bit)
_SHORT_FIELDS = {"id": MAX_ID_CHARS, "proplet_id": MAX_ID_CHARS, "workflow_id": MAX_ID_CHARS}
_SHORT_FIELDS |= {"job_id": MAX_ID_CHARS, "depends_on": MAX_ID_CHARS, "name": MAX_NAME_CHARS}
_SHORT_FIELDS |= {"kind": 64, "timezone": 64, "run_if": 64, "sha256": 80, "mode": 64}


def check_text(value: str, field: str, max_chars: int = MAX_TEXT_CHARS) -> str:
    """A string every backend can store: no NUL, no lone surrogate, at most ``max_chars``."""
    if len(value) > max_chars:
        raise ValidationError(f"{field} is longer than {max_chars} characters ({len(value)})", field)
    if "\x00" in value:
        raise ValidationError(f"{field} contains a NUL character (\\u0000)", field)
    bad = _SURROGATE.search(value)
    if bad is not None:
        raise ValidationError(
            f"{field} contains a lone surrogate (\\u{ord(bad.group()):04x}), which is not valid Unicode",
            field,
        )
    return value


def check_value(value: Any, field: str, max_chars: int = MAX_TEXT_CHARS, depth: int = 0) -> None:
    """Any JSON value: strings as ``check_text``, finite numbers, 64-bit integers, bounded size and depth."""
    if depth > MAX_DEPTH:
        root = re.split(r"[.\[ ]", field, maxsplit=1)[0]  # the field the user wrote, not a 33-level path
        raise ValidationError(f"{root} is nested deeper than {MAX_DEPTH} levels", root)
    if isinstance(value, str):
        check_text(value, field, max_chars)
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int):
        if not -MAX_INT - 1 <= value <= MAX_INT:
            raise ValidationError(f"{field} is outside the 64-bit integer range", field)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(f"{field} must be a finite number, got {value}", field)
    elif isinstance(value, list):
        if len(value) > MAX_ITEMS:
            raise ValidationError(f"{field} has more than {MAX_ITEMS} elements ({len(value)})", field)
        for i, item in enumerate(value):
            check_value(item, f"{field}[{i}]", max_chars, depth + 1)
    elif isinstance(value, dict):
        if len(value) > MAX_ITEMS:
            raise ValidationError(f"{field} has more than {MAX_ITEMS} keys ({len(value)})", field)
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValidationError(f"{field} keys must be strings", field)
            shown = key if key.isprintable() and len(key) <= 64 else repr(key[:64])
            check_text(key, f"{field} key {shown}", MAX_TEXT_CHARS)
            check_value(item, f"{field}.{shown}", max_chars, depth + 1)
    else:
        raise ValidationError(f"{field} has an unsupported type {type(value).__name__}", field)


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


# Built once (build_task runs for every task submitted).
_SPEC_FIELDS = frozenset(Task.__dataclass_fields__) | _READ_ONLY | {"mode", "requires"}
_TASK_KINDS = frozenset(k.value for k in TaskKind)


def build_task(spec: Any, new_id: Callable[[], str], *, default_max_attempts: int = 3) -> Task:
    """``default_max_attempts``: the manager's ``--max-attempts``, used when the spec sets none."""
    if not isinstance(spec, dict):
        raise ValidationError("task must be a JSON object")
    unknown = sorted(spec.keys() - _SPEC_FIELDS)
    if unknown:
        raise ValidationError(f"unknown field {unknown[0]!r}", unknown[0])
    for key, value in spec.items():
        if key == "file" and isinstance(value, str):
            # base64 (checked below) is ASCII; only its size is bounded here, before decoding.
            if len(value) > (MAX_MODULE_BYTES + 2) // 3 * 4:
                raise ValidationError(f"file is larger than {MAX_MODULE_BYTES} bytes; use image_url", "file")
            continue
        check_value(value, key, _SHORT_FIELDS.get(key, MAX_TEXT_CHARS))
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
    requires = _requires(spec, metadata)
    if requires:
        metadata = {**metadata, "requires": requires}
    if metadata and len(json.dumps(metadata, allow_nan=False)) > MAX_METADATA_BYTES:
        raise ValidationError("metadata exceeds 1 MiB", "metadata")
    run_if = _expect(spec, "run_if", str, "a string") or ""
    if run_if not in ("", "success", "failure"):
        raise ValidationError("run_if must be 'success' or 'failure'", "run_if")
    kind = _expect(spec, "kind", str, "a string") or TaskKind.STANDARD.value
    if kind not in _TASK_KINDS:
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
    encrypted = bool(_expect(spec, "encrypted", bool, "a boolean"))
    if encrypted and (wasm or not image_url):
        # upstream's rule (wire reference §2.3): the TEE runtime pulls and decrypts the image itself
        field_ = "file" if wasm else "image_url"
        raise ValidationError(
            "an encrypted task needs image_url (an encrypted OCI image) and no file", field_
        )
    hal_storage_path = _expect(spec, "hal_storage_path", str, "a string")
    if hal_storage_path is not None and ".." in hal_storage_path.replace("\\", "/").split("/"):
        raise ValidationError("hal_storage_path must not contain '..'", "hal_storage_path")
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
        encrypted=encrypted,
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
        monitoring_profile=_monitoring_profile(spec),
        kbs_resource_path=_expect(spec, "kbs_resource_path", str, "a string") or "",
        hal_storage_path=hal_storage_path,
    )
    return task


def _requires(spec: dict[str, Any], metadata: dict[str, Any]) -> dict[str, Any]:
    """Placement constraints, `"requires": {"tee": true, "tags": [...]}` (top level or in metadata)."""
    where = "requires" if "requires" in spec else "metadata.requires"
    raw = spec.get("requires", metadata.get("requires"))
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValidationError(f"{where} must be an object", where)
    for key in raw:
        if key not in ("tee", "tags"):
            raise ValidationError(f"unknown field '{where}.{key}' (known: tee, tags)", f"{where}.{key}")
    if not isinstance(raw.get("tee", False), bool):
        raise ValidationError(f"{where}.tee must be a boolean", f"{where}.tee")
    tags = raw.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ValidationError(f"{where}.tags must be a list of strings", f"{where}.tags")
    return {k: v for k, v in raw.items() if v}


def _monitoring_profile(spec: dict[str, Any]) -> dict[str, Any] | None:
    """Upstream's Go struct: keys left out are its zero values, and all ten are sent on the wire."""
    mp = _expect(spec, "monitoring_profile", dict, "an object")
    if mp is None:
        return None
    known = set(MONITORING_BOOL_KEYS) | set(MONITORING_INT_KEYS)
    for key, value in mp.items():
        where = f"monitoring_profile.{key}"
        if key not in known:
            raise ValidationError(f"unknown field {where!r} (known: {', '.join(sorted(known))})", where)
        if key in MONITORING_BOOL_KEYS and not isinstance(value, bool):
            raise ValidationError(f"{where} must be a boolean", where)
        if key in MONITORING_INT_KEYS and (
            isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFFFFFF
        ):
            raise ValidationError(f"{where} must be an integer between 0 and 4294967295", where)
    return {
        **{k: bool(mp.get(k, False)) for k in MONITORING_BOOL_KEYS},
        **{k: int(mp.get(k, 0)) for k in MONITORING_INT_KEYS},
    }


def printable(text: str, limit: int = 4096) -> str:
    """Error text from the network, made safe to store (PostgreSQL text refuses NUL) and bounded."""
    text = text.replace("\x00", "\\0")
    return text if len(text) <= limit else text[:limit] + f"... ({len(text) - limit} more characters)"
