"""The manager's view, as trace events: its JSON log lines as they happen, its REST API at the end.

The manager logs one JSON object per line after a timestamp and the logger name. ``parse_line`` reads
one (pure); ``ManagerObserver`` turns the events that matter into trace events stamped on the runner's
clock: ``proplet`` alive/dead (with the reason) and ``task`` states (with proplet, attempt, error). Log
lines about a task can arrive before the REST call that created it returns, so events of unknown tasks
wait until the workload registers the task's name. At the end, ``reconcile`` lists every task through
the API: the manager's store is authoritative, and a final state the log did not show is added.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.core.model import TaskState
from twin.scenario.trace import TERMINAL, Trace

_TASK_EVENTS = {
    "task_dispatched": "Running",
    "task_requeued": "Pending",
    "task_failed": "Failed",
    "task_interrupted": "Interrupted",
}


def parse_line(line: str) -> dict[str, Any] | None:
    """The JSON event of one manager log line (``<time> <logger> {json}``), or None."""
    start = line.find("{")
    if start < 0:
        return None
    try:
        obj = json.loads(line[start:])
    except ValueError:
        return None
    return obj if isinstance(obj, dict) and isinstance(obj.get("event"), str) else None


@dataclass(frozen=True)
class TaskRef:
    name: str  # the workload's task name (fib-3)
    workload: str
    memory_bytes: int | None = None


@dataclass
class ManagerObserver:
    trace: Trace
    now: Callable[[], float]
    proplet_names: Mapping[str, str] = field(default_factory=dict)  # proplet id -> device name
    tasks: dict[str, TaskRef] = field(default_factory=dict)  # manager task id -> ref
    events: int = 0
    _pending: dict[str, list[tuple[float, dict[str, Any]]]] = field(default_factory=dict)
    _where: dict[str, str] = field(default_factory=dict)  # task id -> last proplet id
    _alive: dict[str, bool] = field(default_factory=dict)
    closed: bool = False  # after the run: the teardown's deaths are not facts of the scenario

    def device(self, proplet_id: str) -> str:
        return self.proplet_names.get(proplet_id, proplet_id)

    def alive(self, device: str) -> bool:
        """Whether the manager holds ``device`` alive, as far as its log has told us."""
        return self._alive.get(device, False)

    def on_line(self, line: str) -> None:
        if self.closed:
            return
        event = parse_line(line)
        if event is not None:
            self.on_event(event, self.now())

    def on_event(self, event: Mapping[str, Any], t: float) -> None:
        name = event["event"]
        if name in ("proplet_alive", "proplet_dead", "proplet_left"):  # left: a clean stop
            device = self.device(str(event.get("proplet_id", "")))
            alive = name == "proplet_alive"
            self._alive[device] = alive
            reason = "" if alive else str(event.get("reason", ""))
            self.trace.emit(t, "proplet", device, alive=alive, reason=reason)
            self.events += 1
        elif name in _TASK_EVENTS or name == "task_finished":
            task_id = str(event.get("task_id", ""))
            if task_id in self.tasks:
                self._task_event(task_id, event, t)
            else:
                self._pending.setdefault(task_id, []).append((t, dict(event)))

    def register(self, task_id: str, ref: TaskRef, t: float) -> None:
        """The workload created ``task_id``: record it Pending, then what the log already said."""
        self.tasks[task_id] = ref
        data: dict[str, Any] = {"state": "Pending", "workload": ref.workload, "task_id": task_id}
        if ref.memory_bytes:
            data["memory_bytes"] = ref.memory_bytes
        self.trace.emit(t, "task", ref.name, **data)
        for at, event in self._pending.pop(task_id, []):
            self._task_event(task_id, event, max(at, t))

    def _task_event(self, task_id: str, event: Mapping[str, Any], t: float) -> None:
        ref = self.tasks[task_id]
        name = event["event"]
        state = str(event.get("state", "")) if name == "task_finished" else _TASK_EVENTS[name]
        data: dict[str, Any] = {"state": state, "workload": ref.workload}
        proplet = str(event.get("proplet_id") or "")
        if name == "task_dispatched" and proplet:
            self._where[task_id] = proplet
        where = proplet if name != "task_requeued" else proplet or self._where.get(task_id, "")
        where = where or self._where.get(task_id, "")
        if where:
            data["proplet_id"] = where
            data["device"] = self.device(where)
        if "attempt" in event:
            data["attempt"] = event["attempt"]
        if event.get("reason"):
            data["error"] = str(event["reason"])
        if ref.memory_bytes:
            data["memory_bytes"] = ref.memory_bytes
        self.trace.emit(t, "task", ref.name, **data)
        self.events += 1

    def reconcile(self, views: Iterable[Mapping[str, Any]], t: float) -> int:
        """Make each task's final trace state the manager's (from ``GET /tasks``); returns changes."""
        histories = self.trace.tasks()
        changed = 0
        for view in views:
            ref = self.tasks.get(str(view.get("id", "")))
            if ref is None:
                continue
            try:
                state = TaskState(int(view.get("state", -1))).label
            except ValueError:
                continue
            history = histories.get(ref.name)
            last = history.final if history is not None else None
            error = str(view.get("error") or "")
            proplet = str(view.get("proplet_id") or "")
            if last is not None and last.data.get("state") == state:
                if state not in TERMINAL or not error or last.data.get("error"):
                    continue
                at = last.t  # same state, the log lacked the error (a device's result): add it in place
            else:
                at = t
            data: dict[str, Any] = {"state": state, "workload": ref.workload, "reconciled": True}
            if error:
                data["error"] = error
            if proplet:
                data["proplet_id"] = proplet
                data["device"] = self.device(proplet)
            if "attempt" in view:
                data["attempt"] = view["attempt"]
            if ref.memory_bytes:
                data["memory_bytes"] = ref.memory_bytes
            self.trace.emit(at, "task", ref.name, **data)
            changed += 1
        return changed
