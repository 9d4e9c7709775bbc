"""The task state machine as a table. An illegal transition raises and leaves the task unchanged."""

from __future__ import annotations

import enum

from orchestrator.core.errors import IllegalTransition
from orchestrator.core.model import Task, TaskState

S = TaskState


class Trigger(enum.StrEnum):
    QUEUE = "queue"  # accepted for dispatch, waiting for a proplet with capacity
    DISPATCH = "dispatch"  # start command sent to a proplet
    REQUEUE = "requeue"  # its proplet died; wait for another attempt
    COMPLETE = "complete"
    FAIL = "fail"
    INTERRUPT = "interrupt"  # stopped by a user or by shutdown
    SKIP = "skip"  # workflow condition false
    RESET = "reset"  # a terminal task started again (cron, user restart)


TRANSITIONS: dict[tuple[TaskState, Trigger], TaskState] = {
    (S.PENDING, Trigger.QUEUE): S.SCHEDULED,
    (S.PENDING, Trigger.DISPATCH): S.RUNNING,
    (S.PENDING, Trigger.SKIP): S.SKIPPED,
    (S.PENDING, Trigger.FAIL): S.FAILED,
    (S.SCHEDULED, Trigger.DISPATCH): S.RUNNING,
    (S.SCHEDULED, Trigger.FAIL): S.FAILED,
    (S.SCHEDULED, Trigger.INTERRUPT): S.INTERRUPTED,
    # The late result of an attempt given up on while its proplet was away: it ran, it counts.
    (S.SCHEDULED, Trigger.COMPLETE): S.COMPLETED,
    (S.RUNNING, Trigger.COMPLETE): S.COMPLETED,
    (S.RUNNING, Trigger.FAIL): S.FAILED,
    (S.RUNNING, Trigger.INTERRUPT): S.INTERRUPTED,
    (S.RUNNING, Trigger.REQUEUE): S.SCHEDULED,
    (S.COMPLETED, Trigger.RESET): S.PENDING,
    (S.FAILED, Trigger.RESET): S.PENDING,
    (S.INTERRUPTED, Trigger.RESET): S.PENDING,
    (S.SKIPPED, Trigger.RESET): S.PENDING,
}


def next_state(state: TaskState, trigger: Trigger) -> TaskState:
    try:
        return TRANSITIONS[(state, trigger)]
    except KeyError:
        raise IllegalTransition(f"cannot {trigger.value} a task in state {state.label}") from None


def apply(task: Task, trigger: Trigger) -> TaskState:
    task.state = next_state(task.state, trigger)
    return task.state
