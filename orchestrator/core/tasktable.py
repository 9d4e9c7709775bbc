"""Where the engine keeps its tasks: every live task, plus a bounded cache of recent terminal ones.

A task is *resident* while it can still change by itself (not terminal), while something will start
it again (a cron schedule, a job) or while a workflow still needs its results. Once it is terminal and
nothing needs it, it is *settled*: moved to a least-recently-used cache of ``cache_size`` entries and,
when that overflows, forgotten — the store keeps it and the API reads it from there. So memory and
per-event cost follow the live work, not the history.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping

from orchestrator.core.model import Task


class TaskTable(Mapping[str, Task]):
    def __init__(self, cache_size: int) -> None:
        if cache_size < 0:
            raise ValueError(f"terminal task cache size must be >= 0, got {cache_size}")
        self.cache_size = cache_size
        self.live: dict[str, Task] = {}
        self.recent: OrderedDict[str, Task] = OrderedDict()
        self.evicted = 0  # how many terminal tasks left memory (a counter for metrics)

    # Mapping: resident tasks first, then the cached terminal ones.
    def __getitem__(self, task_id: str) -> Task:
        task = self.live.get(task_id)
        if task is None:
            task = self.recent[task_id]
        return task

    def __contains__(self, task_id: object) -> bool:
        return task_id in self.live or task_id in self.recent

    def __iter__(self) -> Iterator[str]:
        yield from self.live
        yield from self.recent

    def __len__(self) -> int:
        return len(self.live) + len(self.recent)

    def find(self, task_id: str) -> Task | None:
        task = self.live.get(task_id)
        if task is None:
            task = self.recent.get(task_id)
            if task is not None:
                self.recent.move_to_end(task_id)
        return task

    def add(self, task: Task) -> None:
        """Make ``task`` resident (new, restored, or read back from the store to be started again)."""
        self.recent.pop(task.id, None)
        self.live[task.id] = task

    def settle(self, task: Task) -> None:
        """``task`` is terminal and nothing needs it: from the resident set into the bounded cache."""
        if self.live.pop(task.id, None) is None and task.id not in self.recent:
            return
        self.remember(task)

    def remember(self, task: Task) -> None:
        self.recent[task.id] = task
        self.recent.move_to_end(task.id)
        while len(self.recent) > self.cache_size:
            self.recent.popitem(last=False)
            self.evicted += 1

    def discard(self, task_id: str) -> None:
        self.live.pop(task_id, None)
        self.recent.pop(task_id, None)
