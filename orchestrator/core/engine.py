"""The orchestrator engine: proplet registry, liveness, placement and the task state machine.

Sans-I/O (model: h11.Connection). Network input arrives through ``handle(MessageReceived, now,
wall)``; user operations are methods that raise typed errors and leave state unchanged on error;
timers are ``next_deadline()`` / ``on_timer(now, wall)``. Everything the outside world must do is
queued as commands and collected with ``take_commands()``. ``now`` is monotonic seconds, ``wall`` is
UNIX seconds (only for what users see).
"""

from __future__ import annotations

import copy
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from orchestrator import wire
from orchestrator.core import cron, receipts, result_trust, states
from orchestrator.core.commands import (
    Command,
    DeleteProplet,
    DeleteTask,
    LogEvent,
    MessageReceived,
    PersistProplet,
    PersistTask,
    Publish,
    RecordPropletMetrics,
    RecordTaskMetrics,
)
from orchestrator.core.errors import Conflict, NotFound, ShuttingDown, ValidationError
from orchestrator.core.groups import Groups
from orchestrator.core.latent import Latent
from orchestrator.core.model import Job, Proplet, PropletMetadata, Task, TaskState
from orchestrator.core.placement import PlacementPolicy, RoundRobin
from orchestrator.core.states import Trigger
from orchestrator.core.validation import build_task, printable


@dataclass(frozen=True)
class EngineConfig:
    domain: str = "default"
    channel: str = "default"
    heartbeat_interval: float = 10.0
    # None = 3x the heartbeat interval. Upstream uses 1x, so healthy proplets flap.
    liveness_timeout: float | None = None
    history_limit: int = 10
    max_attempts: int = 3
    # How long a task may wait for a proplet with capacity before it fails (None = forever).
    queue_timeout: float | None = None
    invoke_timeout: float = 30.0
    qos: int = 1

    @property
    def timeout(self) -> float:
        return self.liveness_timeout if self.liveness_timeout is not None else 3 * self.heartbeat_interval


class Engine:
    def __init__(
        self,
        config: EngineConfig | None = None,
        *,
        policy: PlacementPolicy | None = None,
        new_id: Callable[[], str] | None = None,
        keys: receipts.KeyLookup | None = None,
    ) -> None:
        self.config = config or EngineConfig()
        # The identity registry: with it, results must come from enrolled proplets and ours must carry
        # a receipt that verifies (orchestrator/core/result_trust.py). None = accept as unverified.
        self.keys = keys
        self.topics = wire.Topics(self.config.domain, self.config.channel)
        self.policy: PlacementPolicy = policy or RoundRobin()
        self._new_id = new_id or (lambda: str(uuid.uuid4()))
        self.proplets: dict[str, Proplet] = {}
        self.tasks: dict[str, Task] = {}
        self.jobs: dict[str, Job] = {}
        # wall - now, refreshed on every call that passes both: converts cron times to deadlines.
        self._wall_offset: float | None = None
        # Tasks waiting for capacity, with the monotonic time they started waiting.
        self._queue: dict[str, float] = {}
        # Proplets restored from the store keep their running tasks until this deadline.
        self._grace: dict[str, float] = {}
        self._commands: list[Command] = []
        self.malformed: Counter[str] = Counter()
        self.results_rejected: Counter[str] = Counter()  # by reason (result_trust.Judgement.reason)
        self.counters: Counter[str] = Counter()
        self.dispatch_latencies: deque[float] = deque(maxlen=10_000)
        self._dispatched_at: dict[str, float] = {}
        self.shutting_down = False
        # Our own link to the broker: while it is down nobody's heartbeats can reach us, so liveness
        # verdicts and dispatch wait (otherwise a broker restart kills every proplet and burns attempts).
        self.link_up = True
        self.groups = Groups(self)
        self.latent = Latent(self)

    # ------------------------------------------------------------------ commands

    def take_commands(self) -> list[Command]:
        out, self._commands = self._commands, []
        return out

    def _emit(self, command: Command) -> None:
        self._commands.append(command)

    def _log(self, event: str, level: str = "info", **fields: Any) -> None:
        self._emit(LogEvent(event, fields, level))

    def _persist_task(self, task: Task, wall: float) -> None:
        task.updated_at = wall
        self._emit(PersistTask(copy.deepcopy(task)))

    def _persist_proplet(self, proplet: Proplet) -> None:
        self._emit(PersistProplet(copy.deepcopy(proplet)))

    # ------------------------------------------------------------------ recovery

    def restore(
        self,
        tasks: Iterable[Task],
        proplets: Iterable[Proplet],
        now: float,
        wall: float | None = None,
        jobs: Iterable[Job] = (),
    ) -> None:
        """Rebuild state from the store after a (re)start.

        Proplets are not alive until they heartbeat again, but one that had running tasks keeps
        them for one liveness timeout: if it heartbeats, its results still count; if not, its
        tasks are re-dispatched like a death.
        """
        for p in proplets:
            p.alive = False
            p.last_seen = None
            self.proplets[p.id] = p
        for job in jobs:
            self.jobs[job.id] = job
        for t in tasks:
            self.tasks[t.id] = t
            if t.schedule and wall is not None and (t.next_run is None or t.next_run <= wall):
                t.next_run = cron.next_run(t.schedule, t.timezone, wall)  # missed runs are skipped
            if t.state is TaskState.SCHEDULED:
                self._queue[t.id] = now
            elif t.state is TaskState.RUNNING and t.proplet_id:
                self._grace.setdefault(t.proplet_id, now + self.config.timeout)
                self._dispatched_at[t.id] = now
                if t.proplet_id not in self.proplets:
                    self.proplets[t.proplet_id] = Proplet(id=t.proplet_id)
        for p in self.proplets.values():
            p.task_count = sum(
                1 for t in self.tasks.values() if t.state is TaskState.RUNNING and t.proplet_id == p.id
            )
        if wall is not None:
            self._wall_offset = wall - now
        self._log("engine_restored", tasks=len(self.tasks), proplets=len(self.proplets), jobs=len(self.jobs))

    # ------------------------------------------------------------------ network input

    def handle(self, event: MessageReceived, now: float, wall: float) -> None:
        self._wall_offset = wall - now
        suffix = self.topics.suffix(event.topic)
        if suffix is None or suffix not in _HANDLED_SUFFIXES:
            return  # our own commands echoed back, or topics we do not serve here
        try:
            message = wire.decode(self.topics, event.topic, event.payload)
        except wire.CodecError as err:
            self.malformed[suffix] += 1
            self._log(
                "malformed_message",
                "warning",
                topic=event.topic,
                field=err.field,
                reason=err.reason,
                size=len(event.payload),
            )
            return
        if isinstance(message, wire.Heartbeat):
            self._on_heartbeat(message, now, wall)
        elif isinstance(message, wire.Discovery):
            self._on_discovery(message, now, wall)
        elif isinstance(message, wire.TaskResult):
            self._on_result(message, now, wall)
        elif isinstance(message, wire.InvokeResult):
            self.latent.on_result(message, now, wall)
        elif isinstance(message, wire.PropletMetrics):
            stamp = message.timestamp if message.timestamp_kind == "unix" else wall
            self._emit(
                RecordPropletMetrics(
                    message.proplet_id,
                    message.namespace,
                    dict(message.cpu_metrics),
                    dict(message.memory_metrics),
                    stamp,
                )
            )
        elif isinstance(message, wire.TaskMetrics):
            stamp = message.timestamp if message.timestamp_kind == "unix" else wall
            aggregated = dict(message.aggregated) if message.aggregated is not None else None
            self._emit(
                RecordTaskMetrics(
                    message.task_id, message.proplet_id, dict(message.metrics), aggregated, stamp
                )
            )
        else:
            self.counters[f"received_{suffix.replace('/', '_')}"] += 1

    def _sighting(
        self, proplet_id: str, now: float, wall: float, metadata: PropletMetadata | None = None
    ) -> tuple[Proplet, bool]:
        """Record that ``proplet_id`` is alive now; returns the proplet and whether it was new."""
        proplet = self.proplets.get(proplet_id)
        created = proplet is None
        if proplet is None:
            proplet = Proplet(id=proplet_id, name=_name_for(proplet_id))
            self.proplets[proplet_id] = proplet
        if metadata is not None:  # before the queue drains: placement must see the announced memory
            proplet.metadata = metadata
        if not proplet.name:
            proplet.name = _name_for(proplet_id)
        was_alive = proplet.alive
        proplet.alive = True
        proplet.last_seen = now
        proplet.alive_history.append(wall)
        del proplet.alive_history[: -self.config.history_limit]
        self._grace.pop(proplet_id, None)
        if not was_alive:
            self._log("proplet_alive", proplet_id=proplet_id, new=created)
            self._persist_proplet(proplet)
            self._drain_queue(now, wall)
        return proplet, created

    def _on_heartbeat(self, msg: wire.Heartbeat, now: float, wall: float) -> None:
        if msg.status == "offline":
            proplet = self.proplets.get(msg.proplet_id)
            if proplet is not None:
                self._mark_dead(proplet, "last will: offline", now, wall)
            return
        proplet, _ = self._sighting(msg.proplet_id, now, wall)
        if msg.namespace and proplet.namespace != msg.namespace:
            proplet.namespace = msg.namespace
            self._persist_proplet(proplet)
        if msg.running is not None:
            self._reconcile(proplet, set(msg.running), now, wall)

    def _reconcile(self, proplet: Proplet, reported: set[str], now: float, wall: float) -> None:
        """A task we think runs on ``proplet`` but that it does not report has lost its start or result."""
        settle = 2 * self.config.heartbeat_interval  # the start may still be in flight
        lost = [
            t
            for t in self.tasks.values()
            if t.state is TaskState.RUNNING
            and not t.broadcast
            and t.proplet_id == proplet.id
            and t.id not in reported
            and now - self._dispatched_at.get(t.id, now) >= settle
        ]
        for task in lost:
            self.counters["tasks_lost_on_proplet"] += 1
            self._requeue_or_fail(task, proplet, "it no longer reports the task running", now, wall)
        if lost:
            self._drain_queue(now, wall)

    def _on_discovery(self, msg: wire.Discovery, now: float, wall: float) -> None:
        metadata = PropletMetadata.from_json(dict(msg.metadata))
        proplet, _ = self._sighting(msg.proplet_id, now, wall, metadata)
        proplet.namespace = msg.namespace
        self._log("proplet_discovered", proplet_id=proplet.id, embedded=proplet.is_embedded)
        self._persist_proplet(proplet)
        self._drain_queue(now, wall)

    def _on_result(self, msg: wire.TaskResult, now: float, wall: float) -> None:
        task = self.tasks.get(msg.task_id)
        if task is None:
            self.counters["results_unknown_task"] += 1
            self._log("result_for_unknown_task", "warning", task_id=msg.task_id)
            return
        verdict = self._trust_result(task, msg)
        if verdict is None:
            return
        sender = msg.proplet_id or ""
        if task.broadcast:
            self._on_broadcast_result(task, sender or _receipt_signer(msg), msg, now, wall, verdict)
            return
        superseded = (msg.attempt is not None and msg.attempt != task.attempt) or (
            sender and task.proplet_id and sender != task.proplet_id and not task.broadcast
        )
        if task.state is not TaskState.RUNNING or superseded:
            self.counters["results_ignored"] += 1
            self._log(
                "result_ignored",
                task_id=task.id,
                state=task.state.label,
                sender=sender,
                attempt=msg.attempt,
                current_attempt=task.attempt,
                superseded=bool(superseded),
            )
            return
        if msg.error and msg.error.startswith("out of memory") and task.attempt < task.max_attempts:
            # The device could not fit it after all: its free memory is less than it announced. Note
            # that, and place the task again where it fits instead of failing it.
            proplet = self.proplets.get(task.proplet_id)
            if proplet is not None and task.memory_bytes:
                held = self._reserved().get(proplet.id, 0) - task.memory_bytes  # not the refused task
                proplet.metadata.free_memory_bytes = max(1, held)
            self.counters["tasks_oom_replaced"] += 1
            self._requeue_or_fail(
                task, proplet or Proplet(id=task.proplet_id), printable(msg.error), now, wall
            )
            self._drain_queue(now, wall)
            return
        task.results = msg.results
        task.finish_time = wall
        if msg.is_success:
            states.apply(task, Trigger.COMPLETE)
            task.error = ""
        else:
            states.apply(task, Trigger.FAIL)
            task.error = printable(msg.error or "")
        self._release_slot(task)
        started = self._dispatched_at.pop(task.id, None)
        if started is not None:
            self.dispatch_latencies.append(now - started)
        self.counters[f"tasks_{task.state.name.lower()}"] += 1
        self._log("task_finished", task_id=task.id, state=task.state.label, proplet_id=task.proplet_id)
        self._persist_task(task, wall)
        self._after_terminal(task, now, wall)
        self._drain_queue(now, wall)

    def _trust_result(self, task: Task, msg: wire.TaskResult) -> result_trust.Judgement | None:
        """The sender and receipt checks (result_trust.judge), before anything else looks at a result.

        Only a result that could finish the current attempt is judged; stale and duplicate ones go on
        to be ignored as before. A rejected result (None) is counted by reason, logged, changes nothing.
        """
        if task.state is not TaskState.RUNNING or (msg.attempt is not None and msg.attempt != task.attempt):
            return result_trust.Judgement(True)
        owner: str | None = None
        if task.broadcast:
            if self.keys is None:
                return result_trust.Judgement(True, receipt=dict(msg.receipt) if msg.receipt else None)
            owner = msg.proplet_id or _receipt_signer(msg)  # any target may answer: which one is it?
            if owner not in task.targets:
                detail = f"{owner!r:.80} is not a target of this broadcast"
                self._reject_result(task, msg, result_trust.Judgement(False, False, "wrong_proplet", detail))
                return None
        proplet = self.proplets.get(owner if owner is not None else task.proplet_id)
        verdict = result_trust.judge(task, msg, proplet, self.keys, sender_of_record=owner)
        if not verdict.accepted:
            self._reject_result(task, msg, verdict)
            return None
        if not task.broadcast:
            task.receipt, task.verified = verdict.receipt, verdict.verified
        return verdict

    def _reject_result(
        self, task: Task, msg: wire.TaskResult | wire.InvokeResult, verdict: result_trust.Judgement
    ) -> None:
        self.results_rejected[verdict.reason] += 1
        self.counters["results_rejected"] += 1
        self._log(
            "result_rejected",
            "warning",
            task_id=task.id,
            reason=verdict.reason,
            detail=verdict.detail,
            sender=msg.proplet_id,
            attempt=task.attempt,
            proplet_id=task.proplet_id,
        )

    def _on_broadcast_result(
        self,
        task: Task,
        sender: str,
        msg: wire.TaskResult,
        now: float,
        wall: float,
        verdict: result_trust.Judgement | None = None,
    ) -> None:
        results = task.results if isinstance(task.results, dict) else {}
        key = sender or f"anonymous-{len(results) + 1}"
        if task.state is not TaskState.RUNNING or key in results or (sender and sender not in task.targets):
            self.counters["results_ignored"] += 1
            return
        results[key] = {"results": msg.results, "error": msg.error or ""}
        task.results = results
        if verdict is not None:  # receipts per target; the task is verified when every answer was
            signed = dict(task.receipt or {})
            if verdict.receipt is not None:
                signed[key] = verdict.receipt
            task.receipt = signed or None
            task.verified = (task.verified or len(results) == 1) and verdict.verified
        self._maybe_finish_broadcast(task, now, wall)

    def _maybe_finish_broadcast(self, task: Task, now: float, wall: float) -> None:
        results = task.results if isinstance(task.results, dict) else {}
        if len(results) < len(task.targets):
            self._persist_task(task, wall)
            return
        failed = sorted(k for k, v in results.items() if v["error"])
        task.finish_time = wall
        if failed:
            states.apply(task, Trigger.FAIL)
            task.error = f"{len(failed)}/{len(results)} proplets failed: " + "; ".join(
                f"{k}: {results[k]['error']}" for k in failed[:5]
            )
        else:
            states.apply(task, Trigger.COMPLETE)
        self.counters[f"tasks_{task.state.name.lower()}"] += 1
        self._persist_task(task, wall)
        self._after_terminal(task, now, wall)

    # ------------------------------------------------------------------ our broker link

    def link_lost(self, now: float) -> None:
        if self.link_up:
            self.link_up = False
            self._log("manager_link_lost", "warning")

    def link_restored(self, now: float, wall: float) -> None:
        """Back on the broker: every proplet gets a full liveness timeout to heartbeat again."""
        was_down = not self.link_up
        self.link_up = True
        if was_down:
            for proplet in self.proplets.values():
                if proplet.alive and proplet.last_seen is not None:
                    proplet.last_seen = max(proplet.last_seen, now)
            self._log("manager_link_restored")
        self._drain_queue(now, wall)

    # ------------------------------------------------------------------ liveness

    def next_deadline(self) -> float | None:
        deadlines = [
            p.last_seen + self.config.timeout
            for p in self.proplets.values()
            if p.alive and p.last_seen is not None and self.link_up
        ]
        deadlines.extend(self._grace.values())
        deadlines.extend(self.latent.deadlines())
        if self.config.queue_timeout is not None:
            deadlines.extend(t + self.config.queue_timeout for t in self._queue.values())
        if self._wall_offset is not None:
            deadlines.extend(
                t.next_run - self._wall_offset for t in self.tasks.values() if t.schedule and t.next_run
            )
        return min(deadlines, default=None)

    def on_timer(self, now: float, wall: float) -> None:
        self._wall_offset = wall - now
        self.latent.expire(now)
        self.groups.run_due_cron(now, wall)
        timeout = self.config.timeout
        for proplet in list(self.proplets.values()):
            if not self.link_up:
                break
            if proplet.alive and proplet.last_seen is not None and now >= proplet.last_seen + timeout:
                self._mark_dead(proplet, f"no heartbeat for {timeout:g} s", now, wall)
        for proplet_id, deadline in list(self._grace.items()):
            if now >= deadline and self.link_up:
                del self._grace[proplet_id]
                proplet = self.proplets[proplet_id]
                if not proplet.alive:
                    self._release_tasks(proplet, "did not come back after manager restart", now, wall)
        if self.config.queue_timeout is not None:
            for task_id, since in list(self._queue.items()):
                if now >= since + self.config.queue_timeout:
                    task = self.tasks[task_id]
                    del self._queue[task_id]
                    reason = task.error or "no proplet available"
                    self._fail(task, f"not dispatched within {self.config.queue_timeout:g} s: {reason}", wall)
                    self._after_terminal(task, now, wall)
        self._drain_queue(now, wall)

    def _mark_dead(self, proplet: Proplet, reason: str, now: float, wall: float) -> None:
        self._grace.pop(proplet.id, None)
        if proplet.alive:
            proplet.alive = False
            self.counters["proplets_died"] += 1
            self._log("proplet_dead", "warning", proplet_id=proplet.id, reason=reason)
            self._persist_proplet(proplet)
        self._release_tasks(proplet, reason, now, wall)

    def _release_tasks(self, proplet: Proplet, reason: str, now: float, wall: float) -> None:
        for task in [t for t in self.tasks.values() if t.state is TaskState.RUNNING]:
            if task.broadcast and proplet.id in task.targets:
                results = task.results if isinstance(task.results, dict) else {}
                if proplet.id not in results:
                    results[proplet.id] = {"results": "", "error": f"proplet died ({reason})"}
                    task.results = results
                    self._maybe_finish_broadcast(task, now, wall)
                continue
            if task.proplet_id != proplet.id or task.broadcast:
                continue
            self._requeue_or_fail(task, proplet, f"proplet {proplet.id} died ({reason})", now, wall)
        self._drain_queue(now, wall)

    def _requeue_or_fail(self, task: Task, proplet: Proplet, why: str, now: float, wall: float) -> None:
        self._release_slot(task)
        self._dispatched_at.pop(task.id, None)
        if task.attempt >= task.max_attempts:
            self._fail(
                task, f"{why} on attempt {task.attempt}/{task.max_attempts}", wall, already_released=True
            )
            self._after_terminal(task, now, wall)
            return
        states.apply(task, Trigger.REQUEUE)
        task.error = f"attempt {task.attempt} lost on {proplet.id}: {why}"
        if not task.metadata.get("pinned"):
            task.proplet_id = ""
        self._queue[task.id] = now
        self.counters["tasks_redispatched"] += 1
        self._log("task_requeued", task_id=task.id, proplet_id=proplet.id, attempt=task.attempt, reason=why)
        self._persist_task(task, wall)

    # ------------------------------------------------------------------ user operations

    def create_task(self, spec: dict[str, Any], wall: float) -> Task:
        if self.shutting_down:
            raise ShuttingDown("service is shutting down")
        task = task_from_spec(spec, self._new_id)
        task.created_at = task.updated_at = wall
        if task.id in self.tasks:
            raise Conflict(f"task {task.id} already exists", "id")
        if task.schedule:
            cron.validate(task.schedule, task.timezone)
            task.next_run = cron.next_run(task.schedule, task.timezone, wall)
        self.tasks[task.id] = task
        self._persist_task(task, wall)
        self._log("task_created", task_id=task.id, name=task.name)
        return task

    def get_task(self, task_id: str) -> Task:
        task = self.tasks.get(task_id)
        if task is None:
            raise NotFound(f"task {task_id} not found")
        return task

    def get_proplet(self, proplet_id: str) -> Proplet:
        proplet = self.proplets.get(proplet_id)
        if proplet is None:
            raise NotFound(f"proplet {proplet_id} not found")
        return proplet

    def start_task(self, task_id: str, now: float, wall: float) -> Task:
        if self.shutting_down:
            raise ShuttingDown("service is shutting down")
        task = self.get_task(task_id)
        if task.state in (TaskState.RUNNING, TaskState.SCHEDULED):
            raise Conflict(f"task {task_id} is already {task.state.label.lower()}")
        if not task.file and not task.image_url:
            raise ValidationError("task has no module: set file or image_url", "file")
        if task.proplet_id:
            target = self.proplets.get(task.proplet_id)
            if target is None:
                raise NotFound(f"proplet {task.proplet_id} not found", "proplet_id")
            if not target.alive:
                raise Conflict(f"specified proplet {task.proplet_id} is not alive", "proplet_id")
            task.metadata = {**task.metadata, "pinned": True}
        if task.state.is_terminal:
            states.apply(task, Trigger.RESET)
            task.attempt = 0
            task.results = None
            task.receipt, task.verified = None, False
        task.error = ""
        task.finish_time = None
        if task.broadcast:
            self._dispatch_broadcast(task, now, wall)
            return task
        states.apply(task, Trigger.QUEUE)
        self._queue[task.id] = now
        self._persist_task(task, wall)
        self._drain_queue(now, wall)
        return task

    def _dispatch_broadcast(self, task: Task, now: float, wall: float) -> None:
        wanted = set(task.metadata.get("tags") or [])
        targets = sorted(p.id for p in self.proplets.values() if p.alive and wanted <= set(p.metadata.tags))
        if not targets:
            raise Conflict(
                "no alive proplet" + (f" with tags {sorted(wanted)}" if wanted else "") + " to broadcast to"
            )
        task.attempt += 1
        start = self._start_message(task, proplet_id="", broadcast=True)
        states.apply(task, Trigger.DISPATCH)
        task.targets = targets
        task.results = {}
        task.receipt, task.verified = None, False  # a new attempt: its receipts are still to come
        task.start_time = wall
        self.counters["tasks_dispatched"] += 1
        self._persist_task(task, wall)
        self._emit(Publish(self.topics.start, wire.encode(start), self.config.qos))
        self._log("task_broadcast", task_id=task.id, targets=len(targets))

    def stop_task(self, task_id: str, wall: float) -> Task:
        task = self.get_task(task_id)
        if task.state not in (TaskState.RUNNING, TaskState.SCHEDULED):
            raise Conflict(f"task {task_id} is not running (state {task.state.label})")
        self._interrupt(task, "stopped by user", wall)
        return task

    def _interrupt(self, task: Task, reason: str, wall: float) -> None:
        if task.state is TaskState.RUNNING:
            self._publish_stop(task)
            if not task.broadcast:
                self._release_slot(task)
        self._queue.pop(task.id, None)
        self._dispatched_at.pop(task.id, None)
        states.apply(task, Trigger.INTERRUPT)
        task.error = reason
        task.finish_time = wall
        self._persist_task(task, wall)
        self._log("task_interrupted", task_id=task.id, reason=reason)

    UPDATABLE = ("name", "inputs", "file", "priority", "metadata", "schedule", "is_recurring", "timezone")

    def update_task(self, task_id: str, spec: Any, wall: float) -> Task:
        """Upstream's PUT /tasks/{id}: only the fields in UPDATABLE change; each is validated first."""
        task = self.get_task(task_id)
        if not isinstance(spec, dict):
            raise ValidationError("task must be a JSON object")
        if task.state in (TaskState.RUNNING, TaskState.SCHEDULED):
            raise Conflict(f"task {task_id} is {task.state.label.lower()}; stop it before changing it")
        ignored = sorted(set(spec) - set(self.UPDATABLE) - {"id"})
        if ignored:
            raise ValidationError(
                f"field {ignored[0]!r} cannot be updated (updatable: {', '.join(self.UPDATABLE)})", ignored[0]
            )
        probe = build_task({"name": task.name, **{k: v for k, v in spec.items() if k != "id"}}, self._new_id)
        changes = {k: getattr(probe, k) for k in self.UPDATABLE if k in spec}
        if "file" in spec:
            changes["memory_bytes"] = probe.memory_bytes
        if changes.get("schedule"):
            cron.validate(probe.schedule, probe.timezone)
            changes["next_run"] = cron.next_run(probe.schedule, probe.timezone, wall)
        elif "schedule" in spec:
            changes["next_run"] = None
        for key, value in changes.items():
            setattr(task, key, value)
        self._persist_task(task, wall)
        self._log("task_updated", task_id=task_id, fields=sorted(changes))
        return task

    def delete_task(self, task_id: str) -> None:
        task = self.get_task(task_id)
        if task.state in (TaskState.RUNNING, TaskState.SCHEDULED):
            raise Conflict(f"task {task_id} is {task.state.label.lower()}; stop it first")
        del self.tasks[task_id]
        self._emit(DeleteTask(task_id))

    def delete_proplet(self, proplet_id: str) -> None:
        proplet = self.get_proplet(proplet_id)
        if proplet.task_count > 0:
            raise Conflict(f"proplet {proplet_id} has {proplet.task_count} running tasks")
        del self.proplets[proplet_id]
        self._emit(DeleteProplet(proplet_id))

    # ------------------------------------------------------------------ dispatch

    def _drain_queue(self, now: float, wall: float) -> None:
        if not self._queue or not self.link_up:
            return
        order = sorted(self._queue, key=lambda tid: (-self.tasks[tid].priority, self._queue[tid], tid))
        for task_id in order:
            task = self.tasks[task_id]
            candidates = [p for p in self.proplets.values() if p.alive]
            if task.proplet_id:
                candidates = [p for p in candidates if p.id == task.proplet_id]
            choice = self.policy.choose(task, candidates, self._reserved())
            if choice.proplet is None:
                if task.error != choice.reason:
                    task.error = choice.reason
                continue
            del self._queue[task_id]
            self._dispatch(task, choice.proplet, now, wall)

    def _reserved(self) -> dict[str, int]:
        """Memory reserved on each proplet by the tasks running there."""
        held: dict[str, int] = {}
        for t in self.tasks.values():
            if t.state is TaskState.RUNNING and t.memory_bytes and t.proplet_id and not t.broadcast:
                held[t.proplet_id] = held.get(t.proplet_id, 0) + t.memory_bytes
        return held

    def _dispatch(self, task: Task, proplet: Proplet, now: float, wall: float) -> None:
        profile = wire.Profile.EMBEDDED if proplet.is_embedded else wire.Profile.RUST
        task.attempt += 1
        start = self._start_message(task, proplet_id=proplet.id, broadcast=False)
        try:
            payload = wire.encode(start, profile)
        except wire.CodecError as err:
            task.attempt -= 1
            self._fail(task, f"cannot send task to {proplet.id}: {err}", wall)
            return
        states.apply(task, Trigger.DISPATCH)
        task.proplet_id = proplet.id
        task.receipt, task.verified = None, False  # a new attempt: its receipt is still to come
        task.error = ""
        task.start_time = wall
        proplet.task_count += 1
        self._dispatched_at[task.id] = now
        self.counters["tasks_dispatched"] += 1
        self._persist_task(task, wall)
        self._emit(Publish(self.topics.start, payload, self.config.qos))
        self._log("task_dispatched", task_id=task.id, proplet_id=proplet.id, attempt=task.attempt)

    def _start_message(self, task: Task, *, proplet_id: str, broadcast: bool) -> wire.StartTask:
        return wire.StartTask(
            id=task.id,
            name=task.name,
            state=int(TaskState.RUNNING),
            image_url=task.image_url,
            file=task.file,
            inputs=tuple(task.inputs),
            cli_args=tuple(task.cli_args),
            broadcast=broadcast,
            daemon=task.daemon,
            latent=task.latent,
            env=dict(task.env),
            encrypted=task.encrypted,
            kbs_resource_path=task.kbs_resource_path,
            monitoring_profile=task.monitoring_profile,
            hal_storage_path=task.hal_storage_path,
            proplet_id=proplet_id,
            parent_results=self._parent_results(task),
            sha256=task.sha256,
            attempt=task.attempt,
            limits=dict(task.limits) or None,
        )

    def _parent_results(self, task: Task) -> dict[str, Any] | None:
        parents = {
            d: self.tasks[d].results
            for d in task.depends_on
            if d in self.tasks
            and self.tasks[d].state is TaskState.COMPLETED
            and self.tasks[d].results is not None
        }
        return parents or None

    def _publish_stop(self, task: Task) -> None:
        stop = wire.StopTask(
            id=task.id,
            name=task.name,
            state=task.state.label,
            proplet_id=task.proplet_id,
            broadcast=task.broadcast,
        )
        self._emit(Publish(self.topics.stop, wire.encode(stop), self.config.qos))

    def _release_slot(self, task: Task) -> None:
        proplet = self.proplets.get(task.proplet_id)
        if proplet is not None and proplet.task_count > 0:
            proplet.task_count -= 1

    def _fail(self, task: Task, reason: str, wall: float, *, already_released: bool = False) -> None:
        if task.state is TaskState.RUNNING and not already_released:
            self._release_slot(task)
        self._queue.pop(task.id, None)
        states.apply(task, Trigger.FAIL)
        task.error = reason
        task.finish_time = wall
        self.counters["tasks_failed"] += 1
        self._log("task_failed", "warning", task_id=task.id, reason=reason)
        self._persist_task(task, wall)

    # ------------------------------------------------------------------ workflows, jobs, cron, latent

    def create_workflow(self, specs: Any, wall: float) -> list[Task]:
        return self.groups.create_workflow(specs, wall)

    def create_job(self, name: str, specs: Any, mode: str, wall: float) -> tuple[Job, list[Task]]:
        return self.groups.create_job(name, specs, mode, wall)

    def job_tasks(self, job_id: str) -> list[Task]:
        return self.groups.job_tasks(job_id)

    def start_job(self, job_id: str, now: float, wall: float) -> None:
        self.groups.start_job(job_id, now, wall)

    def stop_job(self, job_id: str, wall: float) -> None:
        self.groups.stop_job(job_id, wall)

    def invoke(self, task_id: str, inputs: Any, env: Any, now: float) -> str:
        return self.latent.invoke(task_id, inputs, env, now)

    def _after_terminal(self, task: Task, now: float, wall: float) -> None:
        self.groups.after_terminal(task, now, wall)

    # ------------------------------------------------------------------ views

    def module_request(self, app_name: str) -> Task | None:
        """A task of ours whose module ``app_name`` is (its ``image_url``): the only modules the registry
        fetches and serves. Anything else, e.g. a URL planted on ``registry/proplet``, is refused,
        counted and logged, and nothing is fetched (no SSRF from the broker)."""
        for task in self.tasks.values():
            if task.image_url and task.image_url == app_name:
                return task
        self.counters["registry_requests_refused"] += 1
        self._log(
            "registry_request_refused",
            "warning",
            app_name=printable(app_name)[:200],
            reason="no task refers to it",
        )
        return None

    def is_alive(self, proplet: Proplet, now: float) -> bool:
        return (
            proplet.alive and proplet.last_seen is not None and now - proplet.last_seen < self.config.timeout
        )

    def queued(self) -> list[str]:
        return list(self._queue)


_HANDLED_SUFFIXES = frozenset(
    {
        "control/proplet/create",
        "control/proplet/alive",
        "control/proplet/results",
        "control/proplet/invoke_results",
        "control/proplet/metrics",
        "control/proplet/task_metrics",
    }
)

_ADJECTIVES = ("brave", "calm", "eager", "fuzzy", "gentle", "happy", "jolly", "keen", "lucid", "merry")
_NOUNS = ("otter", "falcon", "badger", "heron", "lynx", "marten", "osprey", "puffin", "raven", "wren")


def _receipt_signer(msg: wire.TaskResult) -> str:
    """The proplet a result's receipt names (results of the firmware's shape carry no proplet_id)."""
    signer = msg.receipt.get("proplet_id") if msg.receipt is not None else None
    return signer if isinstance(signer, str) else ""


def _name_for(proplet_id: str) -> str:
    """A stable human-readable name derived from the id (upstream picks a random one)."""
    h = sum(ord(c) * (i + 1) for i, c in enumerate(proplet_id))
    return f"{_ADJECTIVES[h % len(_ADJECTIVES)]}-{_NOUNS[(h // 10) % len(_NOUNS)]}"


def task_from_spec(spec: dict[str, Any], new_id: Callable[[], str]) -> Task:
    """Validate a user's task JSON (upstream field names) and build a Task. Raises ValidationError."""
    return build_task(spec, new_id)
