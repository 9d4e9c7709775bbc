"""The trace of a scenario run: timestamped facts, and the views the verdict and the report read.

Event kinds and their ``data``:

- ``device`` (subject: device name): ``state`` in DEVICE_STATES when it changes, ``free_memory``
  (bytes available for Wasm) when it changes, ``proplet_id`` once known, ``text`` free.
- ``fault`` (subject: device name, or ``broker``/``manager``/``fleet``): ``fault`` (kind), ``phase``
  ``start``|``end``, ``params``.
- ``task`` (subject: task name): ``state`` (a TaskState label, e.g. ``Running``), ``proplet_id``
  and/or ``device``, ``attempt``, ``error``, ``workload``, ``memory_bytes``.
- ``proplet`` (subject: device name or proplet id): the MANAGER's view, ``alive`` bool, ``reason``.
- ``console`` (subject: board): ``line``.   ``note``: ``text``.

``t`` is seconds since the scenario started. Writing is JSON lines (``.jsonl``: a header line, then one
event per line, which survives a crash mid-run) or one JSON document (any other suffix).
"""

from __future__ import annotations

import bisect
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KINDS = ("device", "fault", "task", "proplet", "console", "note")
DEVICE_STATES = ("booting", "online", "offline", "dead", "running", "rebooting")
TASK_STATES = ("Pending", "Scheduled", "Running", "Completed", "Failed", "Skipped", "Interrupted")
TERMINAL = frozenset({"Completed", "Failed", "Skipped", "Interrupted"})
FORMAT_VERSION = 1


@dataclass(frozen=True)
class TraceEvent:
    t: float
    kind: str
    subject: str
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"t": round(self.t, 6), "kind": self.kind, "subject": self.subject, "data": dict(self.data)}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> TraceEvent:
        try:
            return cls(float(obj["t"]), str(obj["kind"]), str(obj["subject"]), dict(obj.get("data") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed trace event {obj!r}: {exc}") from None


def check_event(event: TraceEvent) -> TraceEvent:
    """The event, with its task state normalised; a clear ValueError when it breaks the schema."""
    if event.kind not in KINDS:
        raise ValueError(f"trace event kind must be one of {', '.join(KINDS)}, got {event.kind!r}")
    state = event.data.get("state")
    if event.kind == "device" and state is not None and state not in DEVICE_STATES:
        raise ValueError(f"device state must be one of {', '.join(DEVICE_STATES)}, got {state!r}")
    if event.kind == "task":
        label = str(state).capitalize() if state is not None else ""
        if label not in TASK_STATES:
            raise ValueError(f"task state must be one of {', '.join(TASK_STATES)}, got {state!r}")
        if label != state:
            event = TraceEvent(event.t, event.kind, event.subject, {**event.data, "state": label})
    if event.kind == "fault" and event.data.get("phase") not in ("start", "end"):
        raise ValueError(f"fault event phase must be 'start' or 'end', got {event.data.get('phase')!r}")
    if event.kind == "proplet" and not isinstance(event.data.get("alive"), bool):
        raise ValueError(f"proplet event needs a boolean 'alive', got {event.data.get('alive')!r}")
    return event


@dataclass(frozen=True)
class Span:
    start: float
    end: float
    state: str


@dataclass(frozen=True)
class FaultWindow:
    subject: str
    fault: str
    start: float
    end: float | None
    params: Mapping[str, Any]


@dataclass
class TaskHistory:
    name: str
    events: list[TraceEvent] = field(default_factory=list)

    @property
    def submitted_at(self) -> float:
        return self.events[0].t

    @property
    def final(self) -> TraceEvent:
        return self.events[-1]

    @property
    def final_state(self) -> str:
        return str(self.final.data["state"])

    @property
    def terminal(self) -> bool:
        return self.final_state in TERMINAL

    @property
    def terminal_at(self) -> float | None:
        return self.final.t if self.terminal else None

    @property
    def workload(self) -> str:
        """The workload item it came from: as recorded, else the name without its ``-N`` suffix."""
        for e in self.events:
            if "workload" in e.data:
                return str(e.data["workload"])
        return self.name.rsplit("-", 1)[0]

    @property
    def runs(self) -> list[TraceEvent]:
        return [e for e in self.events if e.data.get("state") == "Running"]

    @property
    def error(self) -> str:
        return str(self.final.data.get("error") or "")


class Trace:
    def __init__(self, scenario: str = "", seed: int = 0, meta: Mapping[str, Any] | None = None) -> None:
        self.scenario = scenario
        self.seed = seed
        self.meta: dict[str, Any] = dict(meta or {})
        self.events: list[TraceEvent] = []
        self._proplets: dict[str, str] = {}
        # Called with every event appended (twin.timeline_feed reports faults and console lines to
        # the manager's timelines); not part of the trace's data.
        self.listeners: list[Callable[[TraceEvent], None]] = []

    # ------------------------------------------------------------------ recording
    def append(self, event: TraceEvent) -> TraceEvent:
        event = check_event(event)
        if self.events and event.t < self.events[-1].t:
            # Drivers may report slightly out of order; keep the list sorted for the views.
            bisect.insort(self.events, event, key=lambda e: e.t)
        else:
            self.events.append(event)
        if event.kind == "device" and "proplet_id" in event.data:
            self._proplets[str(event.data["proplet_id"])] = event.subject
        for listener in self.listeners:
            listener(event)
        return event

    def emit(self, t: float, kind: str, subject: str, **data: Any) -> TraceEvent:
        return self.append(TraceEvent(t, kind, subject, data))

    def __len__(self) -> int:
        return len(self.events)

    def __iter__(self) -> Iterator[TraceEvent]:
        return iter(self.events)

    @property
    def end(self) -> float:
        """The end of the run: the recorded duration, or the last event."""
        last = self.events[-1].t if self.events else 0.0
        return max(float(self.meta.get("duration_s", 0.0)), last)

    def digest(self) -> str:
        """SHA-256 of the events (time to the microsecond, kind, subject, data), in order: two runs
        with the same facts at the same times have the same hash. The header (paths, wall-clock
        figures) is not part of it."""
        h = hashlib.sha256()
        for e in self.events:
            h.update(json.dumps(e.to_json(), sort_keys=True, separators=(",", ":"), default=str).encode())
            h.update(b"\n")
        return h.hexdigest()

    # ------------------------------------------------------------------ files
    def header(self) -> dict[str, Any]:
        return {"trace": FORMAT_VERSION, "scenario": self.scenario, "seed": self.seed, **self.meta}

    def write(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.suffix == ".jsonl":
            lines = [json.dumps(self.header())] + [json.dumps(e.to_json()) for e in self.events]
            p.write_text("\n".join(lines) + "\n", encoding="utf-8")
        else:
            doc = {"header": self.header(), "events": [e.to_json() for e in self.events]}
            p.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        return p

    @classmethod
    def read(cls, path: str | Path) -> Trace:
        p = Path(path)
        return cls.loads(p.read_text(encoding="utf-8"), str(p))

    @classmethod
    def loads(cls, text: str, source: str = "<trace>") -> Trace:
        try:
            try:
                doc = json.loads(text)
            except json.JSONDecodeError:
                doc = None  # JSON lines
            if isinstance(doc, dict) and "events" in doc:
                header, raw = doc["header"], doc["events"]
            else:
                rows = [json.loads(line) for line in text.splitlines() if line.strip()]
                header, raw = (rows[0], rows[1:]) if rows else ({}, [])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{source}: not a scenario trace: {exc}") from None
        if header.get("trace") != FORMAT_VERSION:
            raise ValueError(f"{source}: not a scenario trace (header {header!r})")
        meta = {k: v for k, v in header.items() if k not in ("trace", "scenario", "seed")}
        trace = cls(str(header.get("scenario", "")), int(header.get("seed", 0)), meta)
        for obj in raw:
            trace.append(TraceEvent.from_json(obj))
        return trace

    # ------------------------------------------------------------------ views
    def of(self, kind: str) -> list[TraceEvent]:
        return [e for e in self.events if e.kind == kind]

    def device_of(self, proplet_or_device: str) -> str:
        """The device name behind a proplet id (as announced in a device event), else the id."""
        return self._proplets.get(proplet_or_device, proplet_or_device)

    def task_device(self, event: TraceEvent) -> str:
        device = event.data.get("device") or event.data.get("proplet_id") or ""
        return self.device_of(str(device))

    def tasks(self) -> dict[str, TaskHistory]:
        out: dict[str, TaskHistory] = {}
        for e in self.events:
            if e.kind == "task":
                out.setdefault(e.subject, TaskHistory(e.subject)).events.append(e)
        return out

    def devices(self) -> list[str]:
        seen = dict.fromkeys(e.subject for e in self.events if e.kind == "device")
        return list(seen)

    def device_timeline(self, device: str) -> list[Span]:
        changes = [(e.t, str(e.data["state"])) for e in self.events
                   if e.kind == "device" and e.subject == device and "state" in e.data]  # fmt: skip
        return _spans(changes, self.end)

    def device_timelines(self) -> dict[str, list[Span]]:
        return {d: self.device_timeline(d) for d in self.devices()}

    def manager_view(self, device: str) -> list[Span]:
        """When the manager held the device's proplet alive or dead."""
        changes = [(e.t, "alive" if e.data["alive"] else "dead") for e in self.events
                   if e.kind == "proplet" and self.device_of(e.subject) == device]  # fmt: skip
        return _spans(changes, self.end)

    def state_at(self, device: str, t: float) -> str | None:
        state = None
        for e in self.events:
            if e.t > t:
                break
            if e.kind == "device" and e.subject == device and "state" in e.data:
                state = str(e.data["state"])
        return state

    def free_memory_at(self, device: str, t: float) -> int | None:
        free = None
        for e in self.events:
            if e.t > t:
                break
            if e.kind == "device" and e.subject == device and "free_memory" in e.data:
                free = int(e.data["free_memory"])
        return free

    def faults(self) -> list[FaultWindow]:
        """Fault windows; a fault with no end event lasts to the end of the run (end = None)."""
        out: list[FaultWindow] = []
        open_: dict[tuple[str, str], int] = {}
        for e in self.of("fault"):
            key = (e.subject, str(e.data.get("fault", "")))
            if e.data["phase"] == "start":
                open_[key] = len(out)
                out.append(FaultWindow(key[0], key[1], e.t, None, dict(e.data.get("params") or {})))
            elif key in open_:
                i = open_.pop(key)
                w = out[i]
                out[i] = FaultWindow(w.subject, w.fault, w.start, e.t, w.params)
        return out

    def task_counts(self) -> list[tuple[float, dict[str, int]]]:
        """Number of tasks in each state after every task event (for the report's lower plot)."""
        current: dict[str, str] = {}
        out: list[tuple[float, dict[str, int]]] = []
        for e in self.of("task"):
            current[e.subject] = str(e.data["state"])
            counts = dict.fromkeys(TASK_STATES, 0)
            for s in current.values():
                counts[s] += 1
            out.append((e.t, counts))
        return out


def _spans(changes: Iterable[tuple[float, str]], end: float) -> list[Span]:
    spans: list[Span] = []
    prev: tuple[float, str] | None = None
    for t, state in changes:
        if prev is not None and state == prev[1]:
            continue
        if prev is not None:
            spans.append(Span(prev[0], t, prev[1]))
        prev = (t, state)
    if prev is not None:
        spans.append(Span(prev[0], max(end, prev[0]), prev[1]))
    return spans
