"""Placement policies: which alive proplet gets a task. Pure functions of the candidates."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from orchestrator.core.model import Proplet, Task


@dataclass(frozen=True)
class Choice:
    proplet: Proplet | None
    reason: str = ""  # why nothing was chosen


class PlacementPolicy(Protocol):
    name: str

    def choose(self, task: Task, candidates: Sequence[Proplet]) -> Choice: ...


def fits(task: Task, proplet: Proplet) -> str:
    """Empty string when ``proplet`` can take ``task``; otherwise the reason it cannot."""
    md = proplet.metadata
    if md.max_instances and proplet.task_count >= md.max_instances:
        return f"{proplet.id} runs {proplet.task_count}/{md.max_instances} instances"
    if task.memory_bytes:
        free = md.free_memory_bytes or md.total_memory_bytes
        if free and task.memory_bytes > free:
            return f"{proplet.id} has {free} bytes free, task needs {task.memory_bytes}"
    return ""


def eligible(task: Task, candidates: Sequence[Proplet]) -> tuple[list[Proplet], str]:
    ok: list[Proplet] = []
    reasons: list[str] = []
    for p in candidates:
        why = fits(task, p)
        if why:
            reasons.append(why)
        else:
            ok.append(p)
    if ok:
        return ok, ""
    if not candidates:
        return [], "no alive proplet"
    return [], "no proplet can fit the task: " + "; ".join(reasons[:5])


class RoundRobin:
    """Rotates over the alive proplets, sorted by id so the order is stable across restarts."""

    name = "round-robin"

    def __init__(self) -> None:
        self._last = ""

    def choose(self, task: Task, candidates: Sequence[Proplet]) -> Choice:
        ok, reason = eligible(task, candidates)
        if not ok:
            return Choice(None, reason)
        ordered = sorted(ok, key=lambda p: p.id)
        for p in ordered:
            if p.id > self._last:
                self._last = p.id
                return Choice(p)
        self._last = ordered[0].id
        return Choice(ordered[0])


class LeastLoaded:
    """Fewest running tasks first; ties broken by id."""

    name = "least-loaded"

    def choose(self, task: Task, candidates: Sequence[Proplet]) -> Choice:
        ok, reason = eligible(task, candidates)
        if not ok:
            return Choice(None, reason)
        return Choice(min(ok, key=lambda p: (p.task_count, p.id)))


POLICIES: dict[str, type[RoundRobin] | type[LeastLoaded]] = {
    RoundRobin.name: RoundRobin,
    LeastLoaded.name: LeastLoaded,
}


def make_policy(name: str) -> PlacementPolicy:
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown placement policy {name!r} (choose from {', '.join(POLICIES)})") from None
