"""Expectations: small pure checks of a trace that make a scenario's verdict.

Each is a frozen dataclass with ``evaluate(trace, scenario) -> Verdict``; a failing verdict says what
happened in numbers a person can check against the report ("esp-3 was marked dead 4.82 s after
power_loss at t=3.00 s; bound 2.0 s"). An expectation with nothing to check fails too: a verdict that
cannot fail would hide a broken runner.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from yaml.nodes import MappingNode, Node, ScalarNode

from twin.scenario.faults_schema import FAULTS, LETHAL_FAULTS
from twin.scenario.trace import FaultWindow, TaskHistory, Trace
from twin.scenario.yamlread import Reader

if TYPE_CHECKING:
    from twin.scenario.spec import Scenario, Selector, _Context


Params = dict[str, tuple[str, bool]]


@dataclass(frozen=True)
class Verdict:
    passed: bool
    name: str
    detail: str


class Expectation(Protocol):
    @property
    def label(self) -> str: ...

    def evaluate(self, trace: Trace, scenario: Scenario) -> Verdict: ...


def _list(items: Sequence[str], limit: int = 5) -> str:
    shown = "; ".join(items[:limit])
    return shown + (f"; … and {len(items) - limit} more" if len(items) > limit else "")


class _Base:
    NAME: ClassVar[str] = ""
    # param -> (type, required); the first param is the shorthand for ``name: value``.
    PARAMS: ClassVar[Params] = {}

    @property
    def label(self) -> str:
        args = []
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None or value == ():
                continue
            shown = value.describe() if hasattr(value, "describe") else value
            shown = f"{shown:g}" if isinstance(shown, float) else shown
            args.append(f"{f.name}={','.join(shown) if isinstance(shown, tuple) else shown}")
        return f"{self.NAME}({', '.join(args)})"

    def verdict(self, passed: bool, detail: str) -> Verdict:
        return Verdict(passed, self.label, detail)


def _selected(selector: Selector | None, scenario: Scenario) -> set[str]:
    devices = scenario.devices()
    chosen = selector.resolve(devices, scenario.rng("expect")) if selector is not None else devices
    return {d.name for d in chosen}


def _windows(
    trace: Trace, selector: Selector | None, scenario: Scenario, kinds: Sequence[str]
) -> list[FaultWindow]:
    names = _selected(selector, scenario)
    return [w for w in trace.faults() if w.subject in names and w.fault in kinds]


def _manager_alive(trace: Trace, device: str, t: float) -> bool | None:
    alive = None
    for e in trace.of("proplet"):
        if e.t > t:
            break
        if trace.device_of(e.subject) == device:
            alive = bool(e.data["alive"])
    return alive


# ---------------------------------------------------------------------------------------------- devices
@dataclass(frozen=True)
class DeadWithin(_Base):
    """The manager marks a device dead within ``seconds`` of a fault that should kill it, and, with
    ``not_before``, no sooner than that: a fault that is silence (power loss) cannot be seen before the
    keep-alive or the liveness timeout expires, and a twin that sees it sooner flatters (design §7)."""

    NAME = "dead_within"
    PARAMS: ClassVar[Params] = {
        "seconds": ("duration", True),
        "devices": ("selector", False),
        "faults": ("faults", False),
        "not_before": ("duration", False),
    }
    seconds: float
    devices: Selector | None = None
    faults: tuple[str, ...] = ()
    not_before: float | None = None

    def evaluate(self, trace: Trace, scenario: Scenario) -> Verdict:
        kinds = self.faults or tuple(sorted(LETHAL_FAULTS))
        windows = _windows(trace, self.devices, scenario, kinds)
        if not windows:
            return self.verdict(
                False, f"no {'/'.join(kinds)} fault hit the selected devices: nothing to check"
            )
        bad: list[str] = []
        worst, fastest = (0.0, ""), (math.inf, "")
        for w in windows:
            dead = next(
                (
                    e.t
                    for e in trace.of("proplet")
                    if e.t >= w.start and not e.data["alive"] and trace.device_of(e.subject) == w.subject
                ),
                None,
            )
            if dead is None:
                bad.append(f"{w.subject} was never marked dead after {w.fault} at t={w.start:.2f} s")
                continue
            delay = dead - w.start
            if delay > self.seconds:
                bad.append(
                    f"{w.subject} was marked dead {delay:.2f} s after {w.fault} at t={w.start:.2f} s; "
                    f"bound {self.seconds:g} s"
                )
            if self.not_before is not None and delay < self.not_before:
                bad.append(
                    f"{w.subject} was marked dead {delay:.2f} s after {w.fault} at t={w.start:.2f} s, "
                    f"sooner than {self.not_before:g} s: the broker could not have known yet"
                )
            worst = max(worst, (delay, w.subject))
            fastest = min(fastest, (delay, w.subject))
        if bad:
            return self.verdict(False, _list(bad))
        return self.verdict(
            True, f"{len(windows)} fault(s); fastest: {fastest[1]} marked dead after {fastest[0]:.2f} s, "
                  f"slowest: {worst[1]} after {worst[0]:.2f} s"
        )


@dataclass(frozen=True)
class AliveWithin(_Base):
    """After a fault ends, the manager holds the device alive again within ``seconds``."""

    NAME = "alive_within"
    PARAMS: ClassVar[Params] = {k: v for k, v in DeadWithin.PARAMS.items() if k != "not_before"}
    seconds: float
    devices: Selector | None = None
    faults: tuple[str, ...] = ()

    def evaluate(self, trace: Trace, scenario: Scenario) -> Verdict:
        kinds = self.faults or tuple(k for k, f in FAULTS.items() if f.device_level)
        windows = [w for w in _windows(trace, self.devices, scenario, kinds) if w.end is not None]
        if not windows:
            return self.verdict(
                False, f"no {'/'.join(kinds)} fault on the selected devices ended: nothing to check"
            )
        bad: list[str] = []
        worst = (0.0, "")
        for w in windows:
            assert w.end is not None
            check = min(w.end + self.seconds, trace.end)
            back = [
                e.t
                for e in trace.of("proplet")
                if trace.device_of(e.subject) == w.subject and e.data["alive"] and e.t >= w.end
            ]
            if _manager_alive(trace, w.subject, check):
                last_up = max([t for t in back if t <= check], default=w.end)
                worst = max(worst, (last_up - w.end, w.subject))
                continue
            if back:
                bad.append(
                    f"{w.subject} was back alive {back[0] - w.end:.2f} s after {w.fault} ended at "
                    f"t={w.end:.2f} s; bound {self.seconds:g} s"
                )
            else:
                bad.append(f"{w.subject} never came back alive after {w.fault} ended at t={w.end:.2f} s")
        if bad:
            return self.verdict(False, _list(bad))
        return self.verdict(True, f"{len(windows)} recoveries; slowest: {worst[1]} after {worst[0]:.2f} s")


# ---------------------------------------------------------------------------------------------- tasks
def _expected_names(scenario: Scenario, workload: str | None = None) -> list[str]:
    return [n for w in scenario.workload if workload in (None, w.name) for n in w.task_names()]


def _tasks(trace: Trace, workload: str | None) -> dict[str, TaskHistory]:
    tasks = trace.tasks()
    if workload is None:
        return tasks
    return {
        k: v for k, v in tasks.items() if v.events[0].data.get("workload", k.rsplit("-", 1)[0]) == workload
    }


def _where(trace: Trace, task: TaskHistory) -> str:
    device = trace.task_device(task.final)
    return f"{task.final_state} on {device}" if device else task.final_state


@dataclass(frozen=True)
class AllTerminalWithin(_Base):
    """Every task reaches a terminal state within ``seconds`` after the last submission."""

    NAME = "all_terminal_within"
    PARAMS: ClassVar[Params] = {"seconds": ("duration", True)}
    seconds: float

    def evaluate(self, trace: Trace, scenario: Scenario) -> Verdict:
        tasks = trace.tasks()
        if not tasks:
            return self.verdict(False, "no task was submitted: nothing to check")
        last = max(t.submitted_at for t in tasks.values())
        deadline = last + self.seconds
        late: list[str] = []
        for t in tasks.values():
            at = t.terminal_at
            if at is None:
                late.append(f"{t.name} ({_where(trace, t)} at the end)")
            elif at > deadline:
                late.append(f"{t.name} ({t.final_state} at t={at:.2f} s)")
        if late:
            return self.verdict(
                False,
                f"{len(late)} of {len(tasks)} tasks were not terminal {self.seconds:g} s after "
                f"the last submission (t={last:.2f} s): {_list(late)}",
            )
        slowest = max(t.terminal_at or 0.0 for t in tasks.values()) - last
        return self.verdict(
            True, f"{len(tasks)} tasks terminal; last {slowest:.2f} s after the last submission"
        )


@dataclass(frozen=True)
class TasksLost(_Base):
    """At most ``max`` tasks are lost: submitted (or due by the workload) but never terminal."""

    NAME = "tasks_lost"
    PARAMS: ClassVar[Params] = {"max": ("int0", False)}
    max: int = 0

    def evaluate(self, trace: Trace, scenario: Scenario) -> Verdict:
        tasks = trace.tasks()
        lost = [f"{t.name} ({_where(trace, t)} at the end)" for t in tasks.values() if not t.terminal]
        lost += [f"{n} (never submitted)" for n in _expected_names(scenario) if n not in tasks]
        total = max(len(tasks), len(_expected_names(scenario)))
        if len(lost) > self.max:
            return self.verdict(False, f"{len(lost)} of {total} tasks lost (max {self.max}): {_list(lost)}")
        return self.verdict(True, f"{len(lost)} of {total} tasks lost (max {self.max})")


@dataclass(frozen=True)
class CompletedRatio(_Base):
    """At least ``min`` of the tasks (submitted, or due by the workload) complete."""

    NAME = "completed_ratio"
    PARAMS: ClassVar[Params] = {"min": ("ratio", True)}
    min: float

    def evaluate(self, trace: Trace, scenario: Scenario) -> Verdict:
        tasks = trace.tasks()
        total = max(len(tasks), len(_expected_names(scenario)))
        if total == 0:
            return self.verdict(False, "no task was submitted: nothing to check")
        done = sum(1 for t in tasks.values() if t.final_state == "Completed")
        ratio = done / total
        text = f"completed {done} of {total} tasks ({ratio:.1%}); minimum {self.min:.1%}"
        if ratio + 1e-12 < self.min:
            others = [
                f"{t.name} ({_where(trace, t)}{': ' + t.error if t.error else ''})"
                for t in tasks.values()
                if t.final_state != "Completed"
            ]
            return self.verdict(False, f"{text}; not completed: {_list(others)}")
        return self.verdict(True, text)


@dataclass(frozen=True)
class RanOnlyOn(_Base):
    """Tasks (of one workload item, or all) ran only on devices of ``kind``."""

    NAME = "ran_only_on"
    PARAMS: ClassVar[Params] = {"kind": ("kind", True), "workload": ("workload", False)}
    kind: str
    workload: str | None = None

    def evaluate(self, trace: Trace, scenario: Scenario) -> Verdict:
        kinds = scenario.device_kinds()
        runs = [(t, e) for t in _tasks(trace, self.workload).values() for e in t.runs]
        if not runs:
            return self.verdict(False, "no task ran: nothing to check")
        bad = []
        for task, e in runs:
            device = trace.task_device(e)
            if kinds.get(device) != self.kind:
                bad.append(
                    f"{task.name} ran on {device or '?'} (kind {kinds.get(device, 'unknown')}) "
                    f"at t={e.t:.2f} s"
                )
        if bad:
            return self.verdict(False, f"{len(bad)} of {len(runs)} runs off {self.kind}: {_list(bad)}")
        return self.verdict(True, f"all {len(runs)} runs on {self.kind}")


OOM_MARKERS = ("out of memory", "oom", "memory limit", "cannot allocate")


def _is_oom(task: TaskHistory) -> bool:
    data = task.final.data
    return bool(data.get("oom")) or any(m in str(data.get("error", "")).lower() for m in OOM_MARKERS)


@dataclass(frozen=True)
class NoOomWhileRoom(_Base):
    """No task failed out of memory while another live device had enough free memory for it."""

    NAME = "no_oom_while_room"
    PARAMS: ClassVar[Params] = {}

    def evaluate(self, trace: Trace, scenario: Scenario) -> Verdict:
        needs = {w.name: w.memory_bytes for w in scenario.workload}
        devices = [d.name for d in scenario.devices()]
        ooms = [t for t in trace.tasks().values() if t.final_state == "Failed" and _is_oom(t)]
        bad: list[str] = []
        for task in ooms:
            e = task.final
            here = trace.task_device(e)
            need = e.data.get("memory_bytes") or needs.get(task.workload)
            if not need:
                bad.append(
                    f"{task.name} failed out of memory but neither the trace nor the workload gives its "
                    "memory need (set 'memory' on the workload item)"
                )
                continue
            for other in devices:
                free = trace.free_memory_at(other, e.t)
                if (
                    other != here
                    and free is not None
                    and free >= int(need)
                    and _manager_alive(trace, other, e.t)
                ):
                    bad.append(
                        f"{task.name} failed out of memory on {here or '?'} at t={e.t:.2f} s while "
                        f"{other} had {free} bytes free (task needs {int(need)})"
                    )
                    break
        if bad:
            return self.verdict(False, _list(bad))
        return self.verdict(True, f"{len(ooms)} out-of-memory failure(s), none while another device had room")


@dataclass(frozen=True)
class MaxRedispatches(_Base):
    """No task is dispatched more than ``max`` extra times."""

    NAME = "max_redispatches"
    PARAMS: ClassVar[Params] = {"max": ("int0", True)}
    max: int

    def evaluate(self, trace: Trace, scenario: Scenario) -> Verdict:
        counts = {t.name: max(len(t.runs) - 1, 0) for t in trace.tasks().values()}
        over = [f"{n} dispatched {c + 1} times" for n, c in counts.items() if c > self.max]
        if over:
            return self.verdict(
                False, f"{len(over)} tasks redispatched more than {self.max} times: {_list(over)}"
            )
        return self.verdict(True, f"most redispatches of one task: {max(counts.values(), default=0)}")


@dataclass(frozen=True)
class FailedMax(_Base):
    """At most ``max`` tasks end Failed."""

    NAME = "failed_max"
    PARAMS: ClassVar[Params] = {"max": ("int0", True)}
    max: int

    def evaluate(self, trace: Trace, scenario: Scenario) -> Verdict:
        failed = [t for t in trace.tasks().values() if t.final_state == "Failed"]
        if len(failed) > self.max:
            why = [
                f"{t.name} on {trace.task_device(t.final) or '?'}: {t.error or 'no error given'}"
                for t in failed
            ]
            return self.verdict(False, f"{len(failed)} tasks failed (max {self.max}): {_list(why)}")
        return self.verdict(True, f"{len(failed)} tasks failed (max {self.max})")


@dataclass(frozen=True)
class RefusedAtConnect(_Base):
    """Each device (default: every ``enrolled: false`` device) was refused at CONNECT by the closed
    broker, the manager never listed it, and no task ran on it."""

    NAME = "refused_at_connect"
    PARAMS: ClassVar[Params] = {"devices": ("selector", False)}
    devices: Selector | None = None

    def evaluate(self, trace: Trace, scenario: Scenario) -> Verdict:
        names = sorted(_selected(self.devices, scenario)) if self.devices else scenario.unenrolled()
        if not names:
            return self.verdict(False, "no device selected, no 'enrolled: false' group: nothing to check")
        refused = {e.subject for e in trace.of("device") if e.data.get("connect") == "refused"}
        listed = {trace.device_of(e.subject) for e in trace.of("proplet")}
        ran = {trace.task_device(e) for t in trace.tasks().values() for e in t.runs}
        bad = []
        for name in names:
            if name not in refused:
                bad.append(f"{name} was never refused at CONNECT")
            if name in listed:
                bad.append(f"the manager listed {name}")
            if name in ran:
                bad.append(f"a task ran on {name}")
        if bad:
            return self.verdict(False, _list(bad))
        return self.verdict(True, f"{len(names)} refused at CONNECT, never listed, ran nothing")


EXPECTATIONS: dict[str, type[_Base]] = {
    c.NAME: c
    for c in (
        DeadWithin,
        AliveWithin,
        AllTerminalWithin,
        TasksLost,
        CompletedRatio,
        RanOnlyOn,
        NoOomWhileRoom,
        MaxRedispatches,
        FailedMax,
        RefusedAtConnect,
    )
}


# ---------------------------------------------------------------------------------------------- reading
def read_expectation(r: Reader, node: Node, path: str, ctx: _Context) -> Expectation | None:
    """One ``expect`` entry: ``{name: {param: value}}``, or ``{name: value}`` for the first param."""
    if isinstance(node, ScalarNode) and isinstance(r.plain(node), str):
        key_node, value_node = node, ScalarNode("tag:yaml.org,2002:null", "", node.start_mark, node.end_mark)
    elif not isinstance(node, MappingNode) or len(node.value) != 1:
        r.error(node, path, "must be a mapping with one expectation name, e.g. 'tasks_lost: {max: 0}'")
        return None
    else:
        key_node, value_node = node.value[0]
    name = str(r.plain(key_node))
    cls = EXPECTATIONS.get(name)
    if cls is None:
        close = difflib.get_close_matches(name, EXPECTATIONS, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(EXPECTATIONS)}"
        r.error(key_node, f"{path}.{name}", f"unknown expectation ({hint})")
        return None
    where = f"{path}.{name}"
    aliases = {"device": "devices", "kind": "devices"} if "devices" in cls.PARAMS else {}
    raw: dict[str, Node]
    if isinstance(value_node, MappingNode):
        got = r.mapping(value_node, where, [*cls.PARAMS, *aliases])
        if got is None:
            return None
        raw = got
    elif r.plain(value_node) is None:
        raw = {}  # ``no_oom_while_room:`` with no value
    elif cls.PARAMS:
        raw = {next(iter(cls.PARAMS)): value_node}
    else:
        r.error(value_node, where, "takes no parameters")
        return None
    kwargs: dict[str, Any] = {}
    ok = True
    for key, value in raw.items():
        param = aliases.get(key, key)
        got_value = _param(r, value, f"{where}.{key}", cls.PARAMS[param][0], ctx, key)
        ok = ok and got_value is not None
        kwargs[param] = got_value
    for param, (_, required) in cls.PARAMS.items():
        if required and param not in kwargs:
            r.error(value_node, where, f"missing required parameter {param!r}")
            ok = False
    return cls(**kwargs) if ok else None  # type: ignore[return-value]


def _param(r: Reader, node: Node, path: str, kind: str, ctx: _Context, key: str) -> Any:
    from twin.scenario.spec import DEVICE_KINDS, Selector, read_selector

    if kind == "duration":
        return r.duration(node, path)
    if kind == "int0":
        return r.integer(node, path, minimum=0)
    if kind == "ratio":
        return r.number(node, path, minimum=0, maximum=1)
    if kind == "kind" or (kind == "selector" and key == "kind"):
        value = r.string(node, path, DEVICE_KINDS)
        if value is not None and ctx.devices and value not in ctx.kinds:
            r.error(node, path, f"no device of kind {value!r} in the fleet (kinds: {', '.join(ctx.kinds)})")
            return None
        return Selector(kind=value) if kind == "selector" and value is not None else value
    if kind == "selector":
        return read_selector(r, node, path, ctx)
    if kind == "faults":
        names = r.strings(node, path)
        for n in names or ():
            if n not in FAULTS:
                r.error(node, path, f"unknown fault kind {n!r} (choose from {', '.join(FAULTS)})")
                return None
        return names
    if kind == "workload":
        return r.string(node, path, ctx.workloads)
    raise AssertionError(f"unknown parameter type {kind}")


def evaluate_all(trace: Trace, scenario: Scenario) -> list[Verdict]:
    """Every expectation's verdict; one that raises fails with the error instead of hiding the rest."""
    out: list[Verdict] = []
    for exp in scenario.expect:
        try:
            out.append(exp.evaluate(trace, scenario))
        except Exception as exc:  # a bug in one check must not hide the others' verdicts
            out.append(Verdict(False, exp.label, f"could not evaluate: {type(exc).__name__}: {exc}"))
    return out
