"""Workflows, jobs and cron: what runs after what, and when. Part of the engine (sans-I/O).

``Groups`` holds no state of its own: tasks and jobs live in the engine; it adds the rules that start,
skip or stop tasks of a workflow or job as their dependencies finish, and starts cron tasks when due.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from orchestrator.core import cron, states, workflow
from orchestrator.core.commands import PersistJob
from orchestrator.core.errors import Conflict, EngineError, NotFound, ShuttingDown, ValidationError
from orchestrator.core.model import Job, Task, TaskState
from orchestrator.core.states import Trigger
from orchestrator.core.validation import MAX_NAME_CHARS, build_task, check_text

if TYPE_CHECKING:
    from orchestrator.core.engine import Engine


class Groups:
    def __init__(self, engine: Engine) -> None:
        self.e = engine

    def create_workflow(self, specs: Any, wall: float) -> list[Task]:
        tasks = self._build_group(specs, wall)
        workflow_id = next((t.workflow_id for t in tasks if t.workflow_id), "") or self.e._new_id()
        for t in tasks:
            t.workflow_id = workflow_id
        self._admit_group(tasks, wall)
        self.e._log("workflow_created", workflow_id=workflow_id, tasks=len(tasks))
        return tasks

    def create_job(self, name: str, specs: Any, mode: str, wall: float) -> tuple[Job, list[Task]]:
        check_text(name, "name", MAX_NAME_CHARS)
        mode = mode or "parallel"
        if mode not in workflow.EXECUTION_MODES:
            raise ValidationError(
                f"execution_mode must be one of {', '.join(workflow.EXECUTION_MODES)}", "execution_mode"
            )
        tasks = self._build_group(specs, wall)
        job_id = next((t.job_id for t in tasks if t.job_id), "") or self.e._new_id()
        if job_id in self.e.jobs:
            raise Conflict(f"job {job_id} already exists", "job_id")
        for i, t in enumerate(tasks):
            t.job_id = job_id
            if mode == "sequential" and i > 0 and not t.depends_on:
                t.depends_on = [tasks[i - 1].id]  # one after another, each waiting for the previous
        job = Job(id=job_id, name=name, execution_mode=mode, created_at=wall, updated_at=wall)
        self._admit_group(tasks, wall)
        self.e.jobs[job_id] = job
        self.e._emit(PersistJob(copy.deepcopy(job)))
        self.e._log("job_created", job_id=job_id, tasks=len(tasks), mode=mode)
        return job, tasks

    def _build_group(self, specs: Any, wall: float) -> list[Task]:
        if self.e.shutting_down:
            raise ShuttingDown("service is shutting down")
        if not isinstance(specs, list) or not specs:
            raise ValidationError("tasks must be a non-empty list", "tasks")
        tasks: list[Task] = []
        for i, spec in enumerate(specs):
            try:
                task = build_task(spec, self.e._new_id, default_max_attempts=self.e.config.max_attempts)
            except ValidationError as err:
                raise ValidationError(f"tasks[{i}]: {err.message}", f"tasks[{i}].{err.field}") from None
            if task.id in self.e.tasks or any(t.id == task.id for t in tasks):
                raise Conflict(f"tasks[{i}]: task {task.id} already exists", f"tasks[{i}].id")
            task.created_at = task.updated_at = wall
            tasks.append(task)
        workflow.validate_dag(tasks)
        return tasks

    def _admit_group(self, tasks: list[Task], wall: float) -> None:
        for t in tasks:
            self.e._admit(t)
            self.e._persist_task(t, wall)
            self.e._task_event(t.id, wall, "created", "", name=t.name)

    def job_tasks(self, job_id: str) -> list[Task]:
        if job_id not in self.e.jobs:
            raise NotFound(f"job {job_id} not found")
        return list(self.e._members.get(("j", job_id), {}).values())  # job tasks stay resident

    def start_job(self, job_id: str, now: float, wall: float) -> None:
        tasks = self.job_tasks(job_id)
        if any(t.state in (TaskState.RUNNING, TaskState.SCHEDULED) for t in tasks):
            raise Conflict(f"job {job_id} is already running")
        for t in tasks:
            if t.state.is_terminal:
                self.e.reset_for_rerun(t)
        for t in workflow.topological_order(tasks):
            if not t.depends_on:
                self.e.start_task(t.id, now, wall)
        self.e._log("job_started", job_id=job_id)

    def stop_job(self, job_id: str, wall: float) -> None:
        for t in self.job_tasks(job_id):
            if t.state in (TaskState.RUNNING, TaskState.SCHEDULED):
                self.e._interrupt(t, "job stopped by user", wall)

    def after_terminal(self, task: Task, now: float, wall: float) -> None:
        """Advance the task's workflow or job: start ready dependents, skip unreachable ones."""
        group = self.e.group_members(task)  # resident while the group has unfinished tasks
        if not group:
            return
        if task.job_id and task.state in (TaskState.FAILED, TaskState.INTERRUPTED):
            for t in group:  # fail fast: nothing else of a failed job runs
                if t.state in (TaskState.RUNNING, TaskState.SCHEDULED):
                    self.e._interrupt(
                        t, f"job failed fast: task {task.name} ({task.id}) {task.state.label.lower()}", wall
                    )
                elif t.state is TaskState.PENDING:
                    states.apply(t, Trigger.SKIP)
                    t.error = f"job failed fast: task {task.name} ({task.id}) {task.state.label.lower()}"
                    self.e._persist_task(t, wall)
            return
        by_id = {t.id: t for t in group}
        progressed = True
        while progressed:
            progressed = False
            for t in group:
                if t.state is not TaskState.PENDING or not t.depends_on:
                    continue
                verdict = workflow.decide(t, by_id)
                if verdict == "start":
                    try:
                        self.e.start_task(t.id, now, wall)
                    except EngineError as err:
                        self.e._fail(t, err.message, wall)
                    progressed = True
                elif verdict == "skip":
                    states.apply(t, Trigger.SKIP)
                    t.error = "run_if condition not met"
                    t.finish_time = wall
                    self.e._persist_task(t, wall)
                    progressed = True

    def run_due_cron(self, now: float, wall: float) -> None:
        for task in self.e.due_cron(wall):
            if task.state in (TaskState.RUNNING, TaskState.SCHEDULED):
                self.e.counters["cron_runs_skipped"] += 1
                self.e._log("cron_run_skipped", task_id=task.id, reason=f"still {task.state.label.lower()}")
            else:
                try:
                    self.e.start_task(task.id, now, wall)
                    self.e.counters["cron_runs"] += 1
                except (Conflict, NotFound, ValidationError) as err:
                    self.e._log("cron_run_failed", "warning", task_id=task.id, reason=err.message)
            if task.is_recurring:
                task.next_run = cron.next_run(task.schedule, task.timezone, wall)
                self.e.schedule_cron(task)
            else:
                task.schedule, task.next_run = "", None
            self.e._persist_task(task, wall)
