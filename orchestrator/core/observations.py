"""Events seen from outside the manager join the timelines: board console lines, twin faults.

The manager knows what it decided (placed, start published, proplet died...) but not what happened on
a board's console or which fault a scenario injected. Observers that do know (the twin's scenario
runner, a HIL rig, any admin client) report them with ``POST /tasks/{id}/events`` or
``POST /proplets/{id}/events`` (docs/api.md, "Timelines from outside"):

- reported on a task: the event joins that task's timeline;
- reported on a proplet: a ``fault`` (or ``note``) joins the proplet's timeline, and any kind joins
  the timeline of every task whose attempt was on that proplet at the event's time (running there
  now, or one of its last ``RECENT_ATTEMPTS`` attempts if the event happened before it ended). A
  ``console`` line is not kept on the proplet's own timeline: a board prints all day long and its
  joins and deaths would be pruned away.

Part of the engine (sans-I/O): ``parse_events`` checks a request body, ``Observations.report`` emits
``RecordTaskEvent`` / ``RecordPropletEvent`` commands. Bounded: at most ``max_per_task`` reported
events per task (then one ``observations_capped`` entry), ``MAX_EVENTS`` per request, each cause
``MAX_CAUSE_CHARS`` and its fields ``MAX_FIELDS_BYTES`` of JSON.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from orchestrator.core.errors import ValidationError
from orchestrator.core.validation import check_value

if TYPE_CHECKING:
    from orchestrator.core.engine import Engine
    from orchestrator.core.model import Task

KINDS = ("fault", "console", "note")
MAX_EVENTS = 100  # events per request
MAX_CAUSE_CHARS = 1024
MAX_SOURCE_CHARS = 64
MAX_FIELDS_BYTES = 4096
MAX_SKEW_S = 300.0  # an event may not claim a time further than this in the manager's future
RECENT_ATTEMPTS = 8  # ended attempts remembered per proplet (a late console line still finds its task)
COUNTED_TASKS = 10_000  # tasks whose reported events are counted (least recently reported forgotten)


@dataclass(frozen=True, slots=True)
class Observation:
    """One event reported from outside: ``kind`` (fault|console|note), when (UNIX seconds), what."""

    at: float
    kind: str
    cause: str
    source: str = ""
    fields: dict[str, Any] = field(default_factory=dict)


def parse_events(body: Any, wall: float) -> list[Observation]:
    """The events of a ``POST .../events`` body ``{"events": [{kind, cause, at?, source?, fields?}]}``;
    ValidationError naming the field otherwise. ``at`` (UNIX seconds) defaults to ``wall``."""
    if not isinstance(body, dict) or not isinstance(body.get("events"), list):
        raise ValidationError(
            'body must be a JSON object {"events": [{"kind": ..., "cause": ...}, ...]}', "events"
        )
    unknown = set(body) - {"events"}
    if unknown:
        raise ValidationError(f"unknown field {sorted(unknown)[0]!r}", sorted(unknown)[0])
    items = body["events"]
    if not 1 <= len(items) <= MAX_EVENTS:
        raise ValidationError(f"events must hold 1 to {MAX_EVENTS} events, got {len(items)}", "events")
    return [_parse_one(item, f"events[{i}]", wall) for i, item in enumerate(items)]


def _parse_one(item: Any, where: str, wall: float) -> Observation:
    if not isinstance(item, dict):
        raise ValidationError(f"{where} must be an object with kind and cause", where)
    unknown = set(item) - {"kind", "cause", "at", "source", "fields"}
    if unknown:
        name = sorted(unknown)[0]
        raise ValidationError(f"{where}: unknown field {name!r}", f"{where}.{name}")
    kind = item.get("kind")
    if kind not in KINDS:
        raise ValidationError(
            f"{where}.kind must be one of {', '.join(KINDS)}, got {kind!r}", f"{where}.kind"
        )
    texts = {}
    for key, limit in (("cause", MAX_CAUSE_CHARS), ("source", MAX_SOURCE_CHARS)):
        value = item.get(key, "")
        if not isinstance(value, str):
            raise ValidationError(f"{where}.{key} must be a string", f"{where}.{key}")
        check_value(value, f"{where}.{key}", limit)
        texts[key] = value
    at = item.get("at", wall)
    if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at) or at < 0:
        raise ValidationError(f"{where}.at must be UNIX seconds (a number >= 0), got {at!r}", f"{where}.at")
    if at > wall + MAX_SKEW_S:
        raise ValidationError(
            f"{where}.at is {at - wall:.0f} s in the manager's future (clock skew above {MAX_SKEW_S:g} s)",
            f"{where}.at",
        )
    fields = item.get("fields", {})
    if not isinstance(fields, dict):
        raise ValidationError(f"{where}.fields must be an object", f"{where}.fields")
    check_value(fields, f"{where}.fields")
    if len(json.dumps(fields)) > MAX_FIELDS_BYTES:
        raise ValidationError(
            f"{where}.fields is larger than {MAX_FIELDS_BYTES} bytes of JSON", f"{where}.fields"
        )
    return Observation(float(at), kind, texts["cause"], texts["source"], dict(fields))


class Observations:
    """The engine's part: which tasks an event on a proplet concerns, and the per-task bound."""

    def __init__(self, engine: Engine, max_per_task: int = 100) -> None:
        self.e = engine
        self.max_per_task = max_per_task
        # proplet -> its last ended attempts: (task id, attempt, start wall, end wall).
        self._recent: dict[str, deque[tuple[str, int, float, float]]] = {}
        self._counts: OrderedDict[str, int] = OrderedDict()

    def ended(self, task: Task, wall: float) -> None:
        """``task``'s attempt on ``task.proplet_id`` ended at ``wall`` (the engine vacated it)."""
        if task.proplet_id and task.start_time is not None:
            recent = self._recent.setdefault(task.proplet_id, deque(maxlen=RECENT_ATTEMPTS))
            recent.append((task.id, task.attempt, task.start_time, wall))

    def forget_proplet(self, proplet_id: str) -> None:
        self._recent.pop(proplet_id, None)

    def report_on_task(self, task_id: str, events: list[Observation]) -> int:
        """Record ``events`` on the task's timeline; returns how many were kept."""
        return sum(self._record(task_id, ev, {}) for ev in events)

    def report_on_proplet(self, proplet_id: str, events: list[Observation]) -> dict[str, int]:
        """Record ``events`` on the proplet's timeline (not console lines) and on the timeline of each
        task whose attempt was on it at the event's time; returns {task id: events kept}."""
        joined: dict[str, int] = {}
        for ev in events:
            if ev.kind != "console":
                self.e._proplet_event(proplet_id, ev.at, ev.kind, ev.cause, **self._fields(ev, {}))
            for task_id, attempt in self._attempts_at(proplet_id, ev.at):
                where = {"proplet_id": proplet_id, "attempt": attempt}
                joined[task_id] = joined.get(task_id, 0) + self._record(task_id, ev, where)
        return joined

    def _attempts_at(self, proplet_id: str, at: float) -> list[tuple[str, int]]:
        out = [
            (t.id, t.attempt)
            for t in self.e._running_on.get(proplet_id, {}).values()
            if t.start_time is None or t.start_time <= at
        ]
        running = {task_id for task_id, _ in out}
        for task_id, attempt, start, end in self._recent.get(proplet_id, ()):
            if start <= at <= end and task_id not in running:
                out.append((task_id, attempt))
        return out

    @staticmethod
    def _fields(ev: Observation, where: dict[str, Any]) -> dict[str, Any]:
        return {**ev.fields, **where, **({"source": ev.source} if ev.source else {})}

    def _record(self, task_id: str, ev: Observation, where: dict[str, Any]) -> int:
        count = self._counts.pop(task_id, 0)
        self._counts[task_id] = count + 1
        while len(self._counts) > COUNTED_TASKS:
            self._counts.popitem(last=False)
        if count > self.max_per_task:
            return 0
        if count == self.max_per_task:
            why = f"later console lines and faults are not recorded (limit {self.max_per_task})"
            self.e._task_event(task_id, ev.at, "observations_capped", why)
            return 0
        self.e._task_event(task_id, ev.at, ev.kind, ev.cause, **self._fields(ev, where))
        return 1
