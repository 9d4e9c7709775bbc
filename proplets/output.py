"""What a task hands back: its typed result and its logs, built from a run's outcome. Pure.

The result is the module's return value, or its stdout byte for byte (commands, and exports that
return nothing). Its type says how to read it: ``json`` (text that parses as one JSON value),
``text`` (UTF-8), or ``binary`` (anything else, sent as standard base64). A result cut at the output
limit ends with ``OUTPUT_CUT`` and is text. stderr, and what the runtime says about the run (entry
point, cache, fuel, limits hit, where the module came from), are the task's logs: kept apart from
the result, bounded to ``log_bytes`` (the last bytes are kept, after a marker saying how much went).
"""

from __future__ import annotations

import base64
import codecs
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

ResultType = Literal["text", "json", "binary"]
RESULT_TYPES: frozenset[str] = frozenset({"text", "json", "binary"})
OUTPUT_CUT = "\n[propeller: output cut at {shown} of {total} bytes]"
LOGS_CUT = "[propeller: {cut} earlier bytes of {stream} cut]\n"


class Outcome(Protocol):
    """What this module reads of ``proplets.runtime.RunOutcome`` (named here so no runtime is imported)."""

    @property
    def kind(self) -> str: ...
    @property
    def results(self) -> str: ...
    @property
    def stdout(self) -> bytes: ...
    @property
    def stderr(self) -> bytes: ...
    @property
    def stdout_total(self) -> int: ...
    @property
    def values(self) -> tuple[int | float, ...]: ...
    @property
    def notes(self) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class LogEntry:
    """One piece of a task's logs: ``stream`` is ``stderr``, ``stdout`` or ``runtime``."""

    stream: str
    data: str


@dataclass(frozen=True)
class TaskOutput:
    results: str
    result_type: ResultType
    logs: tuple[LogEntry, ...] = ()


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def is_json(text: str) -> bool:
    """True if ``text`` is exactly one JSON value (whitespace around it allowed; NaN is not JSON)."""
    if not text.strip():
        return False
    try:
        json.loads(text, parse_constant=_reject_constant)
    except ValueError:
        return False
    return True


def typed_result(data: bytes, total: int | None = None) -> tuple[str, ResultType]:
    """``data`` (the first bytes of ``total`` written) as result text and its type."""
    total = len(data) if total is None else total
    cut = total > len(data)
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        # final=not cut: a cut may split a multi-byte character, whose head is then left out
        text = decoder.decode(data, final=not cut)
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "binary"
    if cut:
        return text + OUTPUT_CUT.format(shown=len(text.encode()), total=total), "text"
    return text, "json" if is_json(text) else "text"


def bounded(text: str, limit: int, stream: str) -> str:
    """The last ``limit`` bytes of ``text`` (on a character boundary), after a marker if cut."""
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return text
    tail = raw[len(raw) - limit :].decode("utf-8", "ignore")
    return LOGS_CUT.format(cut=len(raw) - len(tail.encode()), stream=stream) + tail


def task_output(outcome: Outcome, log_bytes: int, notes: Iterable[str] = ()) -> TaskOutput:
    """The result and logs of one run. ``notes`` are the driver's own (where the module came from)."""
    from_stdout = outcome.kind == "wasi" or (outcome.kind == "core" and not outcome.values and outcome.stdout)
    if from_stdout:
        results, result_type = typed_result(outcome.stdout, max(outcome.stdout_total, len(outcome.stdout)))
    else:
        results = outcome.results
        result_type = "json" if is_json(results) else "text"
    runtime = "\n".join([*notes, *outcome.notes])
    logs: list[LogEntry] = []
    if runtime:
        logs.append(LogEntry("runtime", bounded(runtime + "\n", log_bytes // 4, "runtime notes")))
    printed = {"stdout": b"" if from_stdout else outcome.stdout, "stderr": outcome.stderr}
    for stream, data in printed.items():  # a return value is the result; what it printed is a log
        if data:
            logs.append(LogEntry(stream, bounded(data.decode("utf-8", "replace"), log_bytes, stream)))
    return TaskOutput(results, result_type, tuple(logs))
