"""Refusals: a proplet answers a start it did not run (our extension of ``control/proplet/results``).

A refusal is a ``TaskResult`` with ``refused`` set and ``error`` saying why. The manager puts the task
back in the queue without spending an attempt, and does not choose a busy proplet again until it
reports room. This module is the one place that builds and recognises refusals, for the proplet
engine, the twin and the manager alike; nobody else matches error texts.

The embedded profile cannot carry the ``refused`` key (the firmware's two result shapes), so the error
texts our firmware and the embedded proplet engine send are recognised too: ``"out of memory: ..."``
and ``"busy: ..."`` / ``"proplet busy: ..."``. Upstream proplets never refuse; they keep working.
"""

from __future__ import annotations

from typing import Final

from orchestrator.wire.messages import TaskResult

BUSY: Final = "busy"  # every instance slot is taken
OUT_OF_MEMORY: Final = "out_of_memory"  # the module's memory does not fit what is free
KINDS: Final = frozenset({BUSY, OUT_OF_MEMORY})

_OOM_PREFIX = "out of memory"
_BUSY_PREFIXES = ("proplet busy:", "busy:")


def out_of_memory_error(need_bytes: int, free_bytes: int) -> str:
    """The reason text of an out-of-memory refusal (the firmware sends the same words)."""
    return f"{_OOM_PREFIX}: need {need_bytes} bytes, free {max(0, free_bytes)} bytes"


def busy_error(running: int, limit: int) -> str:
    return f"proplet busy: {running}/{limit} instances running"


def refusal(
    kind: str, task_id: str, reason: str, proplet_id: str | None = None, attempt: int | None = None
) -> TaskResult:
    """The result a proplet sends for a start it refused (``kind`` is BUSY or OUT_OF_MEMORY)."""
    if kind not in KINDS:
        raise ValueError(f"unknown refusal kind {kind!r} (one of {', '.join(sorted(KINDS))})")
    return TaskResult(task_id, "", reason, proplet_id, attempt, refused=kind)


def refusal_of(result: TaskResult) -> str | None:
    """The refusal kind of ``result`` (BUSY, OUT_OF_MEMORY, or a newer kind), or None if the task ran.

    A result without the ``refused`` key is a refusal only in the two error forms the embedded profile
    can send; every other error is a real execution that failed.
    """
    if result.refused:
        return result.refused
    error = result.error or ""
    if error.startswith(_OOM_PREFIX):
        return OUT_OF_MEMORY
    if error.startswith(_BUSY_PREFIXES):
        return BUSY
    return None
