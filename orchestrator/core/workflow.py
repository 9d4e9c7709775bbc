"""Dependency graphs of workflows and jobs: validation, order, readiness and run_if. Pure functions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from orchestrator.core.errors import ValidationError
from orchestrator.core.model import Task, TaskState

EXECUTION_MODES = ("parallel", "sequential", "configurable")


def validate_dag(tasks: Sequence[Task]) -> None:
    """Raise ValidationError naming the task for a missing dependency, a self-dependency or a cycle."""
    ids = {t.id for t in tasks}
    for t in tasks:
        for dep in t.depends_on:
            if dep == t.id:
                raise ValidationError(f"task {t.name!r} ({t.id}) depends on itself", "depends_on")
            if dep not in ids:
                raise ValidationError(f"task {t.name!r} ({t.id}) depends on unknown task {dep}", "depends_on")
    topological_order(tasks)


def topological_order(tasks: Sequence[Task]) -> list[Task]:
    """Kahn's algorithm, stable in list order. Raises ValidationError on a cycle."""
    by_id = {t.id: t for t in tasks}
    remaining = {t.id: len([d for d in t.depends_on if d in by_id]) for t in tasks}
    dependents: dict[str, list[str]] = {t.id: [] for t in tasks}
    for t in tasks:
        for dep in t.depends_on:
            if dep in dependents:
                dependents[dep].append(t.id)
    ready = [t.id for t in tasks if remaining[t.id] == 0]
    order: list[Task] = []
    while ready:
        current = ready.pop(0)
        order.append(by_id[current])
        for child in dependents[current]:
            remaining[child] -= 1
            if remaining[child] == 0:
                ready.append(child)
    if len(order) != len(tasks):
        cyclic = sorted(by_id[i].name for i, n in remaining.items() if n > 0)
        raise ValidationError(f"circular dependency among tasks {', '.join(cyclic)}", "depends_on")
    return order


def decide(task: Task, deps: Mapping[str, Task]) -> str:
    """For a waiting task: 'start', 'skip' or 'wait', by its dependencies' states and run_if."""
    states = [deps[d].state for d in task.depends_on if d in deps]
    if not all(s.is_terminal for s in states):
        return "wait"
    if task.run_if == "failure":
        return "start" if any(s is TaskState.FAILED for s in states) else "skip"
    return "start" if all(s is TaskState.COMPLETED for s in states) else "skip"


def job_state(tasks: Sequence[Task]) -> str:
    """Upstream's ComputeJobState (reference §3.4)."""
    return group_state([t.state for t in tasks])


def group_state(states: Sequence[TaskState]) -> str:
    """The state of a group (job or workflow) of tasks in these states: failed, running, completed or
    pending."""
    if any(s in (TaskState.FAILED, TaskState.INTERRUPTED) for s in states):
        return "failed"
    if any(s in (TaskState.RUNNING, TaskState.SCHEDULED) for s in states):
        return "running"
    if states and all(s in (TaskState.COMPLETED, TaskState.SKIPPED) for s in states):
        return "completed"
    return "pending"
