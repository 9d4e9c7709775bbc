"""JSON views of tasks and proplets in upstream's shapes (reference §3.1, §4, §6)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from collections.abc import Iterable
from typing import Any

from orchestrator.core.errors import NotFound
from orchestrator.core.model import Proplet, Task
from orchestrator.core.receipts import KeyLookup, encode_key

ZERO_TIME = "0001-01-01T00:00:00Z"


def rfc3339(unix: float | None) -> str:
    if unix is None:
        return ZERO_TIME
    return dt.datetime.fromtimestamp(unix, dt.UTC).isoformat().replace("+00:00", "Z")


def events_view(subject: str, subject_id: str,
                rows: Iterable[tuple[float, str, str, dict[str, Any]]]) -> dict[str, Any]:  # fmt: skip
    """``GET /tasks|proplets/{id}/events`` of a timeline's (at, kind, cause, fields) rows, oldest first."""
    events = [
        {"at": rfc3339(at), "at_unix": at, "kind": kind, "cause": cause, "fields": fields}
        for at, kind, cause, fields in rows
    ]
    return {f"{subject}_id": subject_id, "total": len(events), "events": events}


def redact(b64: str) -> str:
    """Upstream's redaction of the wasm bytes in API responses (reference §13)."""
    if len(b64) <= 20:
        return b64
    return b64[:10] + "<REDACTED>" + b64[-10:]


def redacted_module(size: int, head: bytes, tail: bytes) -> str:
    """``redact(base64(module))`` from the module's ends only (see ``store.ModuleEnds``): the tail
    starts on a 3-byte boundary, so its base64 ends exactly like the whole module's."""
    if size <= 15:  # base64 of at most 20 characters: shown whole (``tail`` is the whole module)
        return base64.b64encode(tail).decode()
    return base64.b64encode(head).decode()[:10] + "<REDACTED>" + base64.b64encode(tail).decode()[-10:]


def task_view(task: Task) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": task.id,
        "name": task.name,
        "kind": task.kind,
        "state": int(task.state),  # upstream's number (reference §3.2)
        "state_name": task.state.label,  # our addition: upstream's String() name, e.g. "Running"
        "cli_args": list(task.cli_args),
        "daemon": task.daemon,
        "encrypted": task.encrypted,
        "start_time": rfc3339(task.start_time),
        "finish_time": rfc3339(task.finish_time),
        "created_at": rfc3339(task.created_at),
        "updated_at": rfc3339(task.updated_at),
        "next_run": rfc3339(task.next_run),
        "attempt": task.attempt,
        "max_attempts": task.max_attempts,
        # Our extension: attempts that count against max_attempts (refused or lost starts do not).
        "attempts_counted": task.attempts_counted,
        # Our extension: the result's receipt verified against the enrolled key (GET /tasks/{id}/receipt).
        "verified": task.verified,
    }
    optional: dict[str, Any] = {
        "image_url": task.image_url,
        "file": redact(base64.b64encode(task.file).decode()) if task.file else "",
        "inputs": list(task.inputs),
        "env": dict(task.env),
        "latent": task.latent,
        "proplet_id": task.proplet_id,
        "depends_on": list(task.depends_on),
        "run_if": task.run_if,
        "workflow_id": task.workflow_id,
        "job_id": task.job_id,
        "kbs_resource_path": task.kbs_resource_path,
        "monitoring_profile": task.monitoring_profile,
        "hal_storage_path": task.hal_storage_path,
        "results": task.results,
        "result_type": task.result_type,  # our extension: json, text or binary (base64)
        "error": task.error,
        "priority": task.priority,
        "broadcast": task.broadcast,
        "metadata": dict(task.metadata),
        "schedule": task.schedule,
        "is_recurring": task.is_recurring,
        "sha256": task.sha256,
        "memory_bytes": task.memory_bytes,
        "limits": dict(task.limits),
    }
    for key, value in optional.items():
        if value not in ("", None, [], {}, False, 0):
            out[key] = value
    if task.file:  # our extension: what the redacted ``file`` cannot tell (GET /tasks/{id}?module=1 has it)
        out["module"] = {"size": len(task.file), "sha256": hashlib.sha256(task.file).hexdigest()}
    if task.schedule:
        out["timezone"] = task.timezone
    return out


def proplet_view(proplet: Proplet, alive: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": proplet.id,
        "name": proplet.name,
        "task_count": proplet.task_count,
        "alive": alive,
        "metadata": proplet.metadata.to_json(),
    }
    if proplet.namespace:
        out["namespace"] = proplet.namespace
    if proplet.alive_history:
        out["last_alive_at"] = rfc3339(proplet.alive_history[-1])
    return out


def receipt_view(task: Task, keys: KeyLookup | None) -> dict[str, Any]:
    """``GET /tasks/{id}/receipt``: the receipt(s) and each signer's enrolled public key (base64).

    A third party checks them offline with ``propeller task verify``; ``public_key`` is null when the
    manager has no key for the signer (no identity registry, or not enrolled).
    """
    if not task.receipt:
        raise NotFound(f"task {task.id} has no receipt (state {task.state.label}; verified {task.verified})")

    def signed(receipt: dict[str, Any]) -> dict[str, Any]:
        signer = receipt.get("proplet_id")
        prover = keys(signer) if keys is not None and isinstance(signer, str) else None
        key = prover.public_key if prover is not None else None
        return {"receipt": receipt, "public_key": encode_key(key) if key else None}

    out: dict[str, Any] = {"task_id": task.id, "verified": task.verified}
    if task.broadcast:
        out["receipts"] = {pid: signed(r) for pid, r in sorted(task.receipt.items())}
    else:
        out.update(signed(task.receipt))
    return out
