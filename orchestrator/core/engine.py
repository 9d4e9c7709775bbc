"""The orchestrator engine: proplet registry, liveness, placement and the task state machine.

Sans-I/O (model: h11.Connection). Network input arrives through ``handle(MessageReceived, now,
wall)``; user operations are methods that raise typed errors and leave state unchanged on error;
timers are ``next_deadline()`` / ``on_timer(now, wall)``. Everything the outside world must do is
queued as commands and collected with ``take_commands()``. ``now`` is monotonic seconds, ``wall`` is
UNIX seconds (only for what users see).
"""

from __future__ import annotations

import dataclasses
import heapq
import uuid
from collections import Counter, deque
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
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
    RecordPropletEvent,
    RecordPropletMetrics,
    RecordTaskEvent,
    RecordTaskLogs,
    RecordTaskMetrics,
)
from orchestrator.core.errors import Conflict, NotFound, ShuttingDown, ValidationError
from orchestrator.core.groups import Groups
from orchestrator.core.latent import Latent
from orchestrator.core.model import Job, Proplet, PropletMetadata, Task, TaskState
from orchestrator.core.observations import Observations
from orchestrator.core.placement import PlacementPolicy, RoundRobin
from orchestrator.core.states import Trigger
from orchestrator.core.tasktable import TaskTable
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
    # Every attempt has a deadline: the task's ``limits.timeout_s`` plus ``attempt_grace`` (fetch,
    # queueing on the device, the result in flight), or ``attempt_timeout`` when it sets no limit
    # (None = no deadline then). Daemon and latent tasks run on purpose and have none.
    attempt_grace: float = 30.0
    attempt_timeout: float | None = 3600.0
    # Refusals (busy, out of memory) spend no attempt; this bounds how often one task is refused.
    max_refusals: int = 50
    # Terminal tasks kept in memory after they settle (older ones are read from the store).
    terminal_cache: int = 10_000
    # Unplaceable tasks one queue drain examines before it stops (keeps a drain O(k log n)).
    drain_scan_limit: int = 256
    # Record each task's and proplet's timeline (RecordTaskEvent / RecordPropletEvent commands).
    timeline: bool = True
    # Events reported from outside (console lines, twin faults: core/observations.py) kept per task.
    observations_per_task: int = 100

    @property
    def timeout(self) -> float:
        return self.liveness_timeout if self.liveness_timeout is not None else 3 * self.heartbeat_interval


@dataclass(eq=False, slots=True)
class _HeardTogether:
    """The liveness of the proplets one heartbeat batch held routine: member ``pid``'s last-seen time is
    ``times[index[pid]]`` and its newest alive-history entries are ``times[index[pid]] + offset`` for
    each of ``rounds``, rather than on its Proplet, until ``Engine._disown`` writes them back."""

    index: dict[str, int]  # member -> its position in ``times``
    source: Sequence[wire.Heartbeat] | None  # the heartbeats it was made from, if all were routine
    times: Sequence[float]
    rounds: deque[tuple[Sequence[float], float]]  # (times, wall - now) of the rounds since it was made
    held: int  # members whose liveness it holds
    seq: int  # of its latest liveness entry
    key: object | None = field(default=None)


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
        # Resident tasks plus a bounded cache of terminal ones: use find_task / get_task.
        self.tasks = TaskTable(self.config.terminal_cache)
        self.jobs: dict[str, Job] = {}
        # wall - now, refreshed on every call that passes both: converts cron times to deadlines.
        self._wall_offset: float | None = None
        self._event_wall = 0.0  # wall time of the message being handled (timeline entries)
        # Tasks whose current attempt a heartbeat has reported running (a "running" timeline entry).
        self._seen_running: set[str] = set()
        # Tasks waiting for capacity, with the monotonic time they started waiting; the heap orders
        # them by (priority, since) and the FIFO by since (queue timeouts). Both are lazy: an entry
        # whose task left the queue (or re-entered it later) is skipped when it surfaces.
        self._queue: dict[str, float] = {}
        self._queue_heap: list[tuple[int, float, str]] = []
        self._queue_fifo: deque[tuple[float, str]] = deque()
        self._parked: list[tuple[int, float, str]] = []  # heap entries set aside (see _drain_queue)
        # Indexes, so no event scans every task: running tasks by proplet, memory they reserve,
        # running broadcasts, workflow and job members, cron times, attempt deadlines.
        self._running_on: dict[str, dict[str, Task]] = {}
        self._reserved_bytes: dict[str, int] = {}
        self._broadcasts: dict[str, Task] = {}
        self._members: dict[tuple[str, str], dict[str, Task]] = {}
        self._cron_heap: list[tuple[float, str]] = []
        self._deadlines: list[tuple[float, str, int]] = []
        self._deadline_of: dict[str, float] = {}  # the current deadline of each running attempt
        # Attempts superseded while their proplet was away, still to be stopped: proplet -> task -> attempt.
        self._stale: dict[str, dict[str, int]] = {}
        # Proplets that refused a start as busy: not chosen again until they report room.
        self._busy: set[str] = set()
        # Proplets that announced their own start topic (direct_start): those that have answered a start
        # (a heartbeat listed it, or a result came), and those whose topic seems not to reach them (a
        # start sent there was lost before any was answered: most likely a broker ACL written before
        # direct starts). These get the shared topic until they announce themselves afresh.
        self._direct_answered: set[str] = set()
        self._direct_unreachable: set[str] = set()
        self._refusals: Counter[str] = Counter()
        self._no_fit: dict[str, set[str]] = {}  # task -> proplets that refused it out of memory while empty
        # When we last asked a proplet without metadata to announce itself.
        self._asked_discovery: dict[str, float] = {}
        # Tasks that turned terminal since the last take_commands: settled (maybe evicted) there.
        self._settling: list[Task] = []
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
        self._link_lost_at: float | None = None
        self._quiet_until = 0.0  # no "lost start" verdicts before this (just back on the broker)
        # Liveness deadlines, a lazy heap: (deadline, seq, proplet id) for one heartbeat, or
        # (earliest deadline, seq, batch, latest deadline) for a batch (heartbeat_batch). An entry is
        # stale once its proplet heartbeats again, dies or goes; stale ones are dropped when they
        # surface, so a timer wake costs O(expiring), not O(proplets).
        self._liveness: list[tuple[Any, ...]] = []
        self._liveness_seq = 0
        # Which batch holds each batched proplet's last-seen time (and newest alive history), instead of
        # its Proplet; a batch repeated with the same members (``key``) is found again in ``_batches``.
        self._owner: dict[str, _HeardTogether] = {}
        self._batches: dict[object, _HeardTogether] = {}
        self.groups = Groups(self)
        self.latent = Latent(self)
        self.observations = Observations(self, self.config.observations_per_task)

    # ------------------------------------------------------------------ commands

    def take_commands(self) -> list[Command]:
        self._settle()
        out, self._commands = self._commands, []
        return out

    def _emit(self, command: Command) -> None:
        self._commands.append(command)

    def _log(self, event: str, level: str = "info", **fields: Any) -> None:
        self._emit(LogEvent(event, fields, level))

    def _task_event(self, task_id: str, wall: float, kind: str, cause: str = "", **fields: Any) -> None:
        """A timeline entry of a task. Bounded: every kind is emitted at most once per transition, and
        transitions per task are bounded by max_attempts and max_refusals (the store caps it too)."""
        if self.config.timeline:
            self._emit(RecordTaskEvent(task_id, wall, kind, cause, fields))

    def _proplet_event(self, proplet_id: str, wall: float, kind: str, cause: str = "", **fields: Any) -> None:
        if self.config.timeline:
            self._emit(RecordPropletEvent(proplet_id, wall, kind, cause, fields))

    def _persist_task(self, task: Task, wall: float) -> None:
        task.updated_at = wall
        self._emit(PersistTask(snapshot(task)))
        if task.state.is_terminal:
            self._settling.append(task)

    def _persist_proplet(self, proplet: Proplet) -> None:
        self._emit(PersistProplet(_proplet_copy(proplet)))

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
        tasks are re-dispatched like a death. ``tasks`` need only be what the engine keeps
        (``Store.load_live_tasks``: unfinished, cron, job and running-workflow tasks); terminal tasks
        that nothing needs, if given, go to the bounded cache only, so memory does not grow with the
        history.
        """
        # Restored, not yet on the broker: what waits to hear from proplets (the grace below, lost
        # starts, liveness, attempt deadlines) and dispatch start when link_restored says we are on it,
        # so a slow connect (a standby's takeover under load) does not count as proplets' silence.
        self.link_up = False
        self._link_lost_at = None
        for p in proplets:
            p.alive = False
            p.last_seen = None
            p.task_count = 0
            self.proplets[p.id] = p
        for job in jobs:
            self.jobs[job.id] = job
        restored = 0
        for t in tasks:
            restored += 1
            if t.schedule and wall is not None and (t.next_run is None or t.next_run <= wall):
                t.next_run = cron.next_run(t.schedule, t.timezone, wall)  # missed runs are skipped
            if t.state.is_terminal and not self._pinned(t) and not t.workflow_id:
                self.tasks.remember(t)
                continue
            self._admit(t)
            if t.state is TaskState.SCHEDULED:
                self._enqueue(t, now)
            elif t.state is TaskState.RUNNING and t.broadcast:
                self._broadcasts[t.id] = t
            elif t.state is TaskState.RUNNING and t.proplet_id:
                self._grace.setdefault(t.proplet_id, now + self.config.timeout)
                self._dispatched_at[t.id] = now
                if t.proplet_id not in self.proplets:
                    self.proplets[t.proplet_id] = Proplet(id=t.proplet_id)
                self._occupy(t, self.proplets[t.proplet_id])
                self._arm_deadline(t, now)
        # Workflows whose every task is terminal need none of them resident any more.
        for key, members in list(self._members.items()):
            if key[0] == "w" and all(m.state.is_terminal for m in members.values()):
                self._settle_group(key)
        if wall is not None:
            self._wall_offset = wall - now
        self._log(
            "engine_restored",
            tasks=restored,
            resident=len(self.tasks.live),
            proplets=len(self.proplets),
            jobs=len(self.jobs),
        )

    # ------------------------------------------------------------------ task table and indexes

    def _pinned(self, task: Task) -> bool:
        """A terminal task stays resident while cron or its job will start it again."""
        return bool(task.schedule and task.next_run is not None) or bool(task.job_id)

    def _admit(self, task: Task) -> None:
        self.tasks.add(task)
        if task.schedule and task.next_run is not None:
            heapq.heappush(self._cron_heap, (task.next_run, task.id))
        for key in _group_keys(task):
            self._members.setdefault(key, {})[task.id] = task

    def _settle(self) -> None:
        """Move tasks that turned terminal out of the resident set when nothing needs them."""
        settling, self._settling = self._settling, []
        for task in settling:
            self._refusals.pop(task.id, None)
            self._no_fit.pop(task.id, None)
            if not task.state.is_terminal or self._pinned(task) or task.id not in self.tasks.live:
                continue
            if task.workflow_id:
                key = ("w", task.workflow_id)
                members = self._members.get(key, {})
                if all(m.state.is_terminal for m in members.values()):
                    self._settle_group(key)
                continue  # a running workflow still needs its parents' results
            self.tasks.settle(task)

    def _settle_group(self, key: tuple[str, str]) -> None:
        for member in self._members.pop(key, {}).values():
            if member.state.is_terminal and not self._pinned(member):
                self.tasks.settle(member)

    def group_members(self, task: Task) -> list[Task]:
        """The resident tasks of ``task``'s workflow or job (itself included)."""
        out: dict[str, Task] = {}
        for key in _group_keys(task):
            out.update(self._members.get(key, {}))
        return list(out.values())

    def _occupy(self, task: Task, proplet: Proplet) -> None:
        running = self._running_on.setdefault(proplet.id, {})
        if task.id in running:
            return
        running[task.id] = task
        proplet.task_count += 1
        if task.memory_bytes:
            self._reserved_bytes[proplet.id] = self._reserved_bytes.get(proplet.id, 0) + task.memory_bytes

    def _vacate(self, task: Task, wall: float | None = None) -> None:
        """``task`` no longer holds a slot on its proplet (idempotent); ``wall``: when its attempt ended."""
        self._deadline_of.pop(task.id, None)
        self._seen_running.discard(task.id)
        running = self._running_on.get(task.proplet_id)
        if running is None or running.pop(task.id, None) is None:
            return
        if wall is not None:
            self.observations.ended(task, wall)
        if not running:
            del self._running_on[task.proplet_id]
        proplet = self.proplets.get(task.proplet_id)
        if proplet is not None and proplet.task_count > 0:
            proplet.task_count -= 1
        if task.memory_bytes:
            held = self._reserved_bytes.get(task.proplet_id, 0) - task.memory_bytes
            if held > 0:
                self._reserved_bytes[task.proplet_id] = held
            else:
                self._reserved_bytes.pop(task.proplet_id, None)

    def _enqueue(self, task: Task, now: float) -> None:
        self._queue[task.id] = now
        heapq.heappush(self._queue_heap, (-task.priority, now, task.id))
        self._queue_fifo.append((now, task.id))

    def _dequeue(self, task_id: str) -> None:
        self._queue.pop(task_id, None)  # heap and FIFO entries go stale and are skipped

    def _arm_deadline(self, task: Task, now: float) -> None:
        limit = self.attempt_deadline(task)
        if limit is not None:
            self._deadline_of[task.id] = now + limit
            heapq.heappush(self._deadlines, (now + limit, task.id, task.attempt))

    def attempt_deadline(self, task: Task) -> float | None:
        """Seconds an attempt of ``task`` may run before the manager gives up on it (None = forever)."""
        if task.daemon or task.latent or task.broadcast:
            return None
        timeout = task.limits.get("timeout_s") if task.limits else None
        if timeout:
            return float(timeout) + self.config.attempt_grace
        return self.config.attempt_timeout

    def _supersede(self, task: Task, proplet_id: str) -> None:
        """The attempt of ``task`` on ``proplet_id`` no longer counts: stop it when the proplet is back."""
        if not proplet_id or not task.attempt:
            return
        stale = self._stale.setdefault(proplet_id, {})
        stale[task.id] = task.attempt
        if len(stale) > _STALE_LIMIT:  # a proplet that never comes back must not grow this forever
            del stale[next(iter(stale))]

    def _publish_stale_stops(self, proplet_id: str, task_ids: Iterable[str]) -> None:
        stale = self._stale.get(proplet_id, {})
        for task_id in task_ids:
            task = self.tasks.find(task_id)
            attempt = stale.get(task_id, 0)
            current = task is not None and (
                task.broadcast or (task.state is TaskState.RUNNING and task.proplet_id == proplet_id)
            )
            if attempt == 0 and current:
                continue  # the current attempt: nothing stale
            name = task.name if task is not None else ""
            self._emit_stop(task_id, name, proplet_id, attempt)
            self.counters["superseded_stops_sent"] += 1
            self._log("superseded_attempt_stopped", task_id=task_id, proplet_id=proplet_id, attempt=attempt)

    # ------------------------------------------------------------------ queries

    def find_task(self, task_id: str) -> Task | None:
        """The task if it is in memory (resident or recently finished), else None (read the store)."""
        return self.tasks.find(task_id)

    def running_on(self, proplet_id: str) -> list[Task]:
        """The tasks the engine believes run on ``proplet_id`` now (broadcasts excluded)."""
        return list(self._running_on.get(proplet_id, {}).values())

    def reserved_bytes(self, proplet_id: str) -> int:
        return self._reserved_bytes.get(proplet_id, 0)

    def readmit(self, task: Task) -> Task:
        """Bring a terminal task read back from the store into memory (to start, change or delete it)."""
        known = self.tasks.find(task.id)
        if known is not None:
            return known
        if not task.state.is_terminal:
            raise Conflict(f"task {task.id} is {task.state.label.lower()} in the store but not in memory")
        self._admit(task)
        self._settling.append(task)  # settles again unless started
        return task

    def revert_task(self, task_id: str, stored: Task | None, now: float) -> None:
        """The store refused this task's latest state: hold what the store holds instead.

        ``stored`` is the task as the store has it, or None when it never stored it (the task is
        then forgotten). Memory never claims what a restart would not find; the running, queue,
        deadline and group indexes follow the state that stays.
        """
        task = self.tasks.find(task_id)
        if task is not None:
            self._vacate(task)
            self._dequeue(task_id)
            self._dispatched_at.pop(task_id, None)
            self._broadcasts.pop(task_id, None)
            for key in _group_keys(task):
                self._members.get(key, {}).pop(task_id, None)
            self.tasks.discard(task_id)
        self.counters["tasks_refused_by_store"] += 1
        self._log("task_reverted", "warning", task_id=task_id, stored=stored is not None)
        if stored is None:
            return
        self._admit(stored)
        if stored.state is TaskState.SCHEDULED:
            self._enqueue(stored, now)
        elif stored.state is TaskState.RUNNING and stored.broadcast:
            self._broadcasts[stored.id] = stored
        elif stored.state is TaskState.RUNNING and stored.proplet_id:
            proplet = self.proplets.get(stored.proplet_id)
            if proplet is not None:
                self._occupy(stored, proplet)
            self._dispatched_at[task_id] = now
            self._arm_deadline(stored, now)
        elif stored.state.is_terminal:
            self._settling.append(stored)

    # ------------------------------------------------------------------ network input

    def handle(self, event: MessageReceived, now: float, wall: float) -> None:
        self._wall_offset = wall - now
        self._event_wall = wall
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
        elif isinstance(message, wire.TaskLogs):
            self._on_logs(message, wall)
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
        self._disown(proplet_id)  # before its fields change: its batch may hold them
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
        self._watch(proplet_id, now + self.config.timeout)
        proplet.alive_history.append(wall)
        del proplet.alive_history[: -self.config.history_limit]
        self._grace.pop(proplet_id, None)
        if not was_alive:
            self._log("proplet_alive", proplet_id=proplet_id, new=created)
            self._proplet_event(proplet_id, wall, "joined" if created else "back", "heard from it")
            self._persist_proplet(proplet)
            self._unpark()
            self._drain_queue(now, wall)
        return proplet, created

    def _on_heartbeat(self, msg: wire.Heartbeat, now: float, wall: float) -> None:
        if msg.status == "offline":
            proplet = self.proplets.get(msg.proplet_id)
            if proplet is not None:
                reason = LEFT_REASON if msg.leaving else "last will: offline"
                self._mark_dead(proplet, reason, now, wall)
            return
        proplet, _ = self._sighting(msg.proplet_id, now, wall)
        if msg.namespace and proplet.namespace != msg.namespace:
            proplet.namespace = msg.namespace
            self._persist_proplet(proplet)
        if proplet.metadata == PropletMetadata():
            self._ask_discovery(proplet, now)
        if msg.running is not None:
            self._reconcile(proplet, msg.running, now, wall)
        room = msg.running is None or not proplet.metadata.max_instances
        if room or len(msg.running or ()) < proplet.metadata.max_instances:
            self._room(proplet, now, wall)

    def heartbeat_batch(
        self,
        heartbeats: Sequence[wire.Heartbeat],
        times: Sequence[float],
        now: float,
        wall: float,
        key: object | None = None,
    ) -> None:
        """Many heartbeats at once (a virtual-time fleet's steady devices): ``heartbeats[i]`` was
        received at ``times[i]`` (each <= ``now``). Decides exactly what ``handle`` would for each, in
        order; a proplet that is alive, announced, idle and in good standing (the common case) costs a
        field update, and the whole batch files one liveness entry.

        ``key`` names a batch that comes back every heartbeat interval: when it comes back as the same
        ``heartbeats`` object (same members, same messages; the caller makes a new one when they change)
        and all of them are still routine, the round costs O(1) Python work: the batch keeps the
        members' last-seen ``times`` and its last rounds (for their alive histories) and files one
        liveness entry; a member's own fields are written back when anything else touches it
        (``_disown``). ``times`` is kept, not copied: the caller must not change it afterwards."""
        offset = wall - now
        self._wall_offset = offset
        timeout = self.config.timeout
        known = self._batches.get(key) if key is not None else None
        if known is not None and known.source is heartbeats and known.held == len(known.index):
            special = {k for k, v in self._running_on.items() if v}
            special.update(self._stale, self._busy, self._grace)
            if known.index.keys().isdisjoint(special):
                self._liveness_seq += 1
                known.seq, known.times = self._liveness_seq, times
                known.rounds.append((times, offset))
                heapq.heappush(self._liveness, (min(times) + timeout, known.seq, known, max(times) + timeout))
                return
        if known is not None:  # its members are heard one by one below, or no longer in it
            del self._batches[key]
            self._release(known, {h.proplet_id for h in heartbeats})
        self._heartbeat_each(heartbeats, times, offset, key)

    def _heartbeat_each(
        self, heartbeats: Sequence[wire.Heartbeat], times: Sequence[float], offset: float, key: object | None
    ) -> None:
        timeout, limit = self.config.timeout, self.config.history_limit
        proplets, owner = self.proplets, self._owner
        # Proplets with anything on them (tasks, stale attempts, busy, restored): the full handling.
        special = {k for k, v in self._running_on.items() if v}
        special.update(self._stale, self._busy, self._grace)
        empty = PropletMetadata()
        fast: list[str] = []
        fast_times: list[float] = []
        for msg, t in zip(heartbeats, times, strict=True):
            pid = msg.proplet_id
            p = proplets.get(pid)
            if (
                p is None or not p.alive or pid in special or msg.running or msg.status != "alive"
                or (msg.namespace and p.namespace != msg.namespace)
                or (not p.metadata.total_memory_bytes and p.metadata == empty)
            ):  # fmt: skip
                self._event_wall = t + offset
                self._on_heartbeat(msg, t, t + offset)
                continue
            if pid in owner:
                self._disown(pid)
            p.last_seen = t
            history = p.alive_history
            history.append(t + offset)
            if len(history) > limit:
                del history[0]
            fast.append(pid)
            fast_times.append(t)
        if not fast:
            return
        self._liveness_seq += 1
        index = dict(zip(fast, range(len(fast)), strict=True))  # heard twice: the last one counts
        routine = len(index) == len(fast) == len(heartbeats)
        batch = _HeardTogether(
            index, heartbeats if routine else None, fast_times, deque(maxlen=limit), len(index),
            self._liveness_seq, key if routine else None,
        )  # fmt: skip
        owner.update(zip(index, repeat(batch)))
        if batch.key is not None:
            self._batches[batch.key] = batch
        entry = (min(fast_times) + timeout, batch.seq, batch, max(fast_times) + timeout)
        heapq.heappush(self._liveness, entry)

    def _ask_discovery(self, proplet: Proplet, now: float) -> None:
        """A proplet we only know from heartbeats (it started before us): ask it to announce itself."""
        asked = self._asked_discovery.get(proplet.id)
        if asked is not None and now - asked < self.config.timeout:
            return
        self._asked_discovery[proplet.id] = now
        self.counters["discovery_requests"] += 1
        request = wire.DiscoveryRequest(proplet.id)
        self._emit(Publish(self.topics.discover, wire.encode(request), self.config.qos))
        self._log("discovery_requested", proplet_id=proplet.id)

    def _room(self, proplet: Proplet, now: float, wall: float) -> None:
        """``proplet`` reports room again after refusing a start as busy."""
        if proplet.id in self._busy:
            self._busy.discard(proplet.id)
            self._unpark()
            self._drain_queue(now, wall)

    def _reconcile(self, proplet: Proplet, reported: tuple[str, ...], now: float, wall: float) -> None:
        """Compare what ``proplet`` runs with what we think it runs.

        A task we think runs there but that it does not report has lost its start or its result; a
        task it reports that is not its current attempt is a superseded attempt: stop it.
        """
        settle = 2 * self.config.heartbeat_interval  # the start may still be in flight
        running = set(reported)
        if not running.isdisjoint(self._running_on.get(proplet.id, {})):
            self._direct_answered.add(proplet.id)
        lost = [
            t
            for t in self._running_on.get(proplet.id, {}).values()
            if t.id not in running and now - self._dispatched_at.get(t.id, now) >= settle
        ]
        if now < self._quiet_until:
            lost = []  # just back on the broker: re-sent results may still be on their way
        if self.config.timeline and running:
            for task_id in running:
                task = self._running_on.get(proplet.id, {}).get(task_id)
                if task is not None and task_id not in self._seen_running:
                    self._seen_running.add(task_id)
                    self._task_event(
                        task_id, wall, "running", "reported by its heartbeat", proplet_id=proplet.id,
                        attempt=task.attempt,
                    )  # fmt: skip
        stale = self._stale.get(proplet.id)
        if stale:
            for task_id in [t for t in stale if t not in running]:
                del stale[task_id]  # that attempt is over
            if not stale:
                del self._stale[proplet.id]
        if lost and self._sends_direct(proplet) and proplet.id not in self._direct_answered:
            self._direct_unreachable.add(proplet.id)
            self.counters["direct_start_unreachable"] += 1
            self._log(
                "direct_start_unreachable",
                "warning",
                proplet_id=proplet.id,
                reason="no start sent to its own topic was ever answered (a broker ACL without "
                "control/manager/start/{proplet_id}?); its starts go to the shared topic",
            )
        for task in lost:
            # Most likely its start was lost (results are sent before the heartbeat that drops a
            # task): nothing ran, so no attempt is spent; bounded like refusals.
            self.counters["tasks_lost_on_proplet"] += 1
            self._on_refusal(task, "lost", "it no longer reports the task running", now, wall, drain=False)
        self._publish_stale_stops(proplet.id, running)
        if lost:
            self._drain_queue(now, wall)

    def _on_discovery(self, msg: wire.Discovery, now: float, wall: float) -> None:
        metadata = PropletMetadata.from_json(dict(msg.metadata))
        known = self.proplets.get(msg.proplet_id)
        unchanged = (
            known is not None
            and known.alive
            and known.metadata == metadata
            and known.namespace == msg.namespace
        )
        proplet, _ = self._sighting(msg.proplet_id, now, wall, metadata)
        self._asked_discovery.pop(proplet.id, None)
        self._busy.discard(proplet.id)  # a fresh announcement is a fresh start
        if unchanged:
            return  # an alive proplet announcing the same again (asked after a broker outage)
        self._direct_answered.discard(proplet.id)  # (re)joined: its own start topic is tried again
        self._direct_unreachable.discard(proplet.id)
        proplet.namespace = msg.namespace
        self._log("proplet_discovered", proplet_id=proplet.id, embedded=proplet.is_embedded)
        self._persist_proplet(proplet)
        self._unpark()
        self._drain_queue(now, wall)

    def _on_logs(self, msg: wire.TaskLogs, wall: float) -> None:
        """A live piece of a running attempt's output; pieces of other attempts are stale."""
        task = self.tasks.find(msg.task_id)
        attempt = msg.attempt if msg.attempt is not None else task.attempt if task else 0
        if task is None or task.state is not TaskState.RUNNING or attempt != task.attempt:
            self.counters["logs_ignored"] += 1
            return
        if not task.broadcast and msg.proplet_id and msg.proplet_id != task.proplet_id:
            self.counters["logs_ignored"] += 1  # not from the proplet running this attempt
            return
        if len(msg.data) > MAX_LOG_PIECE_CHARS:
            self.counters["logs_oversized"] += 1
            self._log("log_piece_oversized", "warning", task_id=task.id, chars=len(msg.data))
            return
        line = ((msg.stream, msg.data),)
        self._emit(RecordTaskLogs(task.id, attempt, msg.proplet_id, line, False, wall, msg.seq))

    def _record_final_logs(
        self, task: Task, msg: wire.TaskResult, wall: float, *, again: bool = False
    ) -> None:
        """The record that came with an accepted result (one per attempt and proplet); ``again``: a
        result after a stop may come twice, so it replaces any earlier record."""
        if msg.logs is not None:
            pid = msg.proplet_id or ""
            self._emit(RecordTaskLogs(task.id, task.attempt, pid, tuple(msg.logs), True, wall, replace=again))

    def _on_result(self, msg: wire.TaskResult, now: float, wall: float) -> None:
        task = self.tasks.find(msg.task_id)
        sender = msg.proplet_id or ""
        late = False  # the result of an attempt we had given up on (its proplet was away)
        if sender in self._stale and msg.attempt is not None:
            stale = self._stale[sender]
            if stale.get(msg.task_id) == msg.attempt:
                del stale[msg.task_id]  # the superseded attempt has ended (stopped or finished)
                late = True
                self.counters["superseded_attempts_ended"] += 1
                self._log(
                    "superseded_attempt_ended", task_id=msg.task_id, proplet_id=sender, attempt=msg.attempt
                )
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
        if sender and sender == task.proplet_id:
            self._direct_answered.add(sender)  # it received a start (see _reconcile)
        if (
            late
            and msg.is_success
            and task.state is TaskState.SCHEDULED
            and wire.refusals.refusal_of(msg) is None
        ):
            # Given up on while its proplet was away, not yet placed again: it ran, so it counts
            # (running it again would run it twice). Once a newer attempt runs, that one decides.
            self._accept_late_result(task, sender, msg, now, wall)
            return
        superseded = (msg.attempt is not None and msg.attempt != task.attempt) or (
            sender and task.proplet_id and sender != task.proplet_id and not task.broadcast
        )
        if task.state is not TaskState.RUNNING or superseded:
            if not superseded and task.state is TaskState.INTERRUPTED:
                self._record_final_logs(task, msg, wall, again=True)  # a stopped attempt's logs still count
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
        refused = wire.refusals.refusal_of(msg)
        if refused is not None:
            self._on_refusal(task, refused, printable(msg.error or refused), now, wall)
            return
        task.results = msg.results
        task.result_type = msg.result_type or ""
        self._record_final_logs(task, msg, wall)
        task.finish_time = wall
        if msg.is_success:
            states.apply(task, Trigger.COMPLETE)
            task.error = ""
        else:
            states.apply(task, Trigger.FAIL)
            task.error = printable(msg.error or "")
        self._vacate(task, wall)
        started = self._dispatched_at.pop(task.id, None)
        if started is not None:
            self.dispatch_latencies.append(now - started)
        self.counters[f"tasks_{task.state.name.lower()}"] += 1
        self._log("task_finished", task_id=task.id, state=task.state.label, proplet_id=task.proplet_id)
        self._task_event(
            task.id, wall, "result", task.error or task.state.label, state=task.state.label,
            proplet_id=task.proplet_id, attempt=task.attempt, verified=task.verified,
        )  # fmt: skip
        self._persist_task(task, wall)
        self._after_terminal(task, now, wall)
        proplet = self.proplets.get(task.proplet_id)
        if proplet is not None:
            self._busy.discard(proplet.id)  # it just finished one: it has room
        self._drain_queue(now, wall)

    def _accept_late_result(
        self, task: Task, sender: str, msg: wire.TaskResult, now: float, wall: float
    ) -> None:
        # Judged like a result of the attempt it answers (sender, receipt), not of the queued task.
        probe = dataclasses.replace(task, attempt=msg.attempt or 0, proplet_id=sender)
        verdict = result_trust.judge(probe, msg, self.proplets.get(sender), self.keys)
        if not verdict.accepted:
            self._reject_result(task, msg, verdict)
            return
        task.receipt, task.verified = verdict.receipt, verdict.verified
        self._dequeue(task.id)
        assert msg.attempt is not None
        # The attempt number stays the highest sent (never reused); the event names the one that ran.
        task.attempt, task.proplet_id = max(task.attempt, msg.attempt), sender
        task.results, task.error, task.finish_time = msg.results, "", wall
        states.apply(task, Trigger.COMPLETE)
        self.counters["late_results_accepted"] += 1
        self.counters["tasks_completed"] += 1
        self._log("task_finished", task_id=task.id, state=task.state.label, proplet_id=sender, late=True)
        self._task_event(
            task.id, wall, "result", "late result of a superseded attempt", state=task.state.label,
            proplet_id=sender, attempt=msg.attempt, verified=task.verified,
        )  # fmt: skip
        self._persist_task(task, wall)
        self._after_terminal(task, now, wall)
        self._drain_queue(now, wall)

    def _on_refusal(
        self, task: Task, kind: str, reason: str, now: float, wall: float, *, drain: bool = True
    ) -> None:
        """The proplet did not run the start (refused, or the start was lost): re-queue, no attempt spent."""
        proplet = self.proplets.get(task.proplet_id) or Proplet(id=task.proplet_id)
        if kind == wire.refusals.OUT_OF_MEMORY and task.memory_bytes:
            # Its free memory is less than it announced: note what it can hold (not the refused task).
            held = self._reserved_bytes.get(proplet.id, 0) - task.memory_bytes
            proplet.metadata.free_memory_bytes = max(1, held)
        elif kind == wire.refusals.BUSY or kind not in (wire.refusals.OUT_OF_MEMORY, "lost"):
            self._busy.add(proplet.id)  # not chosen again until it reports room
        self._refusals[task.id] += 1
        self.counters[f"starts_refused_{kind}"] += 1
        if kind == "lost":
            self._supersede(task, proplet.id)  # if it ran after all, its late result still counts
        self._vacate(task, wall)
        self._dispatched_at.pop(task.id, None)
        verdict = ""
        if kind == wire.refusals.OUT_OF_MEMORY and not self._running_on.get(proplet.id):
            # Refused with nothing else running there: it will never fit on that proplet. When no
            # other alive proplet is left to try (or it is pinned), that is the task's answer.
            no_fit = self._no_fit.setdefault(task.id, set())
            no_fit.add(proplet.id)
            alive = {p.id for p in self.proplets.values() if p.alive}
            if task.metadata.get("pinned") or alive <= no_fit:
                verdict = f"{reason} (on {proplet.id}, with nothing else running there)"
        if not verdict and self._refusals[task.id] > self.config.max_refusals:
            times = self._refusals[task.id]
            verdict = f"not run after {times} refusals or lost starts, last on {proplet.id}: {reason}"
        if verdict:
            self._fail(task, verdict, wall)
            self._after_terminal(task, now, wall)
            if drain:
                self._drain_queue(now, wall)
            return
        # Nothing ran: the attempt does not count. Its number is not given back: a stop or a late
        # result aimed at this attempt must never be taken for the next one's.
        task.uncounted_attempts += 1
        states.apply(task, Trigger.REQUEUE)
        task.error = f"refused by {proplet.id} ({kind}): {reason}"
        if not task.metadata.get("pinned"):
            task.proplet_id = ""
        self._enqueue(task, now)
        self._log("start_refused", task_id=task.id, proplet_id=proplet.id, refused=kind, reason=reason)
        self._task_event(task.id, wall, "refused", reason, proplet_id=proplet.id, refusal=kind)
        self._persist_task(task, wall)
        if drain:
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
        self._task_event(
            task.id, self._event_wall, "receipt_rejected", verdict.detail or verdict.reason,
            reason=verdict.reason, sender=msg.proplet_id,
        )  # fmt: skip

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
        if msg.result_type:
            results[key]["result_type"] = msg.result_type
        task.results = results
        self._record_final_logs(task, msg, wall)
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
        self._broadcasts.pop(task.id, None)
        self.counters[f"tasks_{task.state.name.lower()}"] += 1
        self._persist_task(task, wall)
        self._after_terminal(task, now, wall)

    # ------------------------------------------------------------------ our broker link

    def link_lost(self, now: float) -> None:
        if self.link_up:
            self.link_up = False
            self._link_lost_at = now
            self._log("manager_link_lost", "warning")

    def link_restored(self, now: float, wall: float) -> None:
        """Back on the broker: every proplet gets a full liveness timeout to heartbeat again."""
        was_down = not self.link_up
        self.link_up = True
        if was_down:
            # Proplets lost the broker too, and their reconnect backoff grew with the outage: allow
            # them about the outage again (capped) on top of the liveness timeout to come back.
            outage = now - self._link_lost_at if self._link_lost_at is not None else 0.0
            back_by = now + min(max(outage, 0.0), _RECONNECT_ALLOWANCE_CAP)
            for proplet in self.proplets.values():
                self._disown(proplet.id)
                if proplet.alive and proplet.last_seen is not None:
                    proplet.last_seen = max(proplet.last_seen, back_by)
                    self._watch(proplet.id, proplet.last_seen + self.config.timeout)
            # Give proplets time (their re-sent results too) before a task a heartbeat does not list
            # is taken for lost.
            self._quiet_until = now + 2 * self.config.heartbeat_interval
            for proplet_id, deadline in self._grace.items():  # restored tasks' proplets: from now too
                self._grace[proplet_id] = max(deadline, now + self.config.timeout)
            # Attempts that were running through the outage get their full deadline again.
            for running in self._running_on.values():
                for task in running.values():
                    if self._deadline_of.get(task.id, now) < now + (self.attempt_deadline(task) or 0):
                        self._arm_deadline(task, now)
            if self._link_lost_at is not None:
                # What proplets published while we were away may be gone with the broker's sessions:
                # ask everyone to announce again and re-send recent results.
                request = wire.DiscoveryRequest("")
                self._emit(Publish(self.topics.discover, wire.encode(request), self.config.qos))
                self._log("manager_link_restored")
            # else the first connect after a (re)start: our named session kept what was published to
            # us meanwhile (a standby takes it over), so nothing is asked again.
        self._drain_queue(now, wall)

    # ------------------------------------------------------------------ liveness

    def _watch(self, proplet_id: str, deadline: float) -> None:
        self._disown(proplet_id)
        self._liveness_seq += 1
        heapq.heappush(self._liveness, (deadline, self._liveness_seq, proplet_id))

    def _disown(self, proplet_id: str) -> None:
        """``proplet_id``'s liveness is no longer its batch's (heard alone, dead, gone): its last-seen
        time and alive history go back on its Proplet, from where the batch kept them."""
        batch = self._owner.pop(proplet_id, None)
        if batch is None:
            return
        batch.held -= 1
        proplet = self.proplets.get(proplet_id)
        if proplet is None:
            return
        i = batch.index[proplet_id]
        proplet.last_seen = batch.times[i]
        if batch.rounds:
            history = proplet.alive_history
            history.extend(times[i] + offset for times, offset in batch.rounds)
            del history[: -self.config.history_limit]

    def _release(self, batch: _HeardTogether, keep: Container[str] = ()) -> None:
        """Every proplet ``batch`` still holds gets its own liveness entry (but those in ``keep``, about
        to be heard again)."""
        owner, proplets, timeout = self._owner, self.proplets, self.config.timeout
        for pid in batch.index:
            if owner.get(pid) is batch:
                self._disown(pid)
                p = proplets.get(pid)
                if pid not in keep and p is not None and p.alive and p.last_seen is not None:
                    self._watch(pid, p.last_seen + timeout)

    def settle_liveness(self) -> None:
        """Write every batched proplet's last-seen time and alive history back on its Proplet (for a
        caller that reads them directly; the engine's own decisions do not need it)."""
        for batch in {id(b): b for b in self._owner.values()}.values():
            self._release(batch)
        self._batches.clear()

    def last_seen(self, proplet: Proplet) -> float | None:
        batch = self._owner.get(proplet.id)
        return batch.times[batch.index[proplet.id]] if batch is not None else proplet.last_seen

    def _prune_liveness(self) -> None:
        """Drop stale entries from the top of the liveness heap until the top is a live proplet's
        current deadline, or a batch's latest entry while it holds all its members (its deadline is
        then the earliest of theirs); a batch holding some is split into one entry per member it holds."""
        heap, timeout, proplets, owner = self._liveness, self.config.timeout, self.proplets, self._owner
        while heap:
            top = heap[0]
            if len(top) == 3:
                p = proplets.get(top[2])
                if (
                    p is not None and p.alive and p.last_seen is not None and top[2] not in owner
                    and p.last_seen + timeout == top[0]
                ):  # fmt: skip
                    return
                heapq.heappop(heap)
                continue
            batch = top[2]
            if batch.seq == top[1] and batch.held == len(batch.index):
                return
            self._split(heapq.heappop(heap))

    def _split(self, entry: tuple[Any, ...]) -> None:
        """A batch entry taken off the heap: one entry for each member whose deadline it still holds."""
        batch: _HeardTogether = entry[2]
        if batch.seq != entry[1] or not batch.held:
            return  # the batch was heard again since (a later entry), or holds nobody
        if batch.key is not None and self._batches.get(batch.key) is batch:
            del self._batches[batch.key]
        self._release(batch)

    def next_deadline(self) -> float | None:
        deadlines: list[float] = []
        if self.link_up:
            self._prune_liveness()
            if self._liveness:
                deadlines.append(self._liveness[0][0])
        if self.link_up:
            deadlines.extend(self._grace.values())
        deadlines.extend(self.latent.deadlines())
        if self.config.queue_timeout is not None:
            self._prune_fifo()
            if self._queue_fifo:
                deadlines.append(self._queue_fifo[0][0] + self.config.queue_timeout)
        if self._wall_offset is not None:
            self._prune_cron()
            if self._cron_heap:
                deadlines.append(self._cron_heap[0][0] - self._wall_offset)
        if self._deadlines and self.link_up:
            deadlines.append(self._deadlines[0][0])
        return min(deadlines, default=None)

    def _prune_fifo(self) -> None:
        while self._queue_fifo and self._queue.get(self._queue_fifo[0][1]) != self._queue_fifo[0][0]:
            self._queue_fifo.popleft()

    def _prune_cron(self) -> None:
        while self._cron_heap:
            due, task_id = self._cron_heap[0]
            task = self.tasks.live.get(task_id)
            if task is not None and task.schedule and task.next_run == due:
                return
            heapq.heappop(self._cron_heap)

    def due_cron(self, wall: float) -> list[Task]:
        """Cron tasks whose next run is due, taken off the cron heap (the caller reschedules them)."""
        due: list[Task] = []
        self._prune_cron()
        while self._cron_heap and self._cron_heap[0][0] <= wall:
            _, task_id = heapq.heappop(self._cron_heap)
            task = self.tasks.live.get(task_id)
            if task is not None and task not in due:
                due.append(task)
            self._prune_cron()
        return due

    def schedule_cron(self, task: Task) -> None:
        """(Re)file ``task`` on the cron heap after its ``next_run`` changed."""
        if task.schedule and task.next_run is not None:
            heapq.heappush(self._cron_heap, (task.next_run, task.id))

    def on_timer(self, now: float, wall: float) -> None:
        self._wall_offset = wall - now
        self.latent.expire(now)
        self.groups.run_due_cron(now, wall)
        timeout = self.config.timeout
        expired: list[Proplet] = []
        while self.link_up:
            self._prune_liveness()
            if not self._liveness or self._liveness[0][0] > now:
                break
            top = heapq.heappop(self._liveness)
            if len(top) == 3:
                expired.append(self.proplets[top[2]])
            else:  # a batch whose earliest member is due: each member it holds gets its own entry
                self._split(top)
        if len(expired) > 1:  # in registry order, as a walk over every proplet would find them
            due = {p.id for p in expired}
            expired = [p for p in self.proplets.values() if p.id in due]
        for proplet in expired:
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
        if self.link_up:
            self._expire_attempts(now, wall)
        if self.config.queue_timeout is not None:
            self._prune_fifo()
            while self._queue_fifo and now >= self._queue_fifo[0][0] + self.config.queue_timeout:
                _, task_id = self._queue_fifo.popleft()
                task = self.tasks.live[task_id]
                self._dequeue(task_id)
                reason = task.error or "no proplet available"
                self._fail(task, f"not dispatched within {self.config.queue_timeout:g} s: {reason}", wall)
                self._after_terminal(task, now, wall)
                self._prune_fifo()
        self._drain_queue(now, wall)

    def _expire_attempts(self, now: float, wall: float) -> None:
        """Attempts past their deadline: stop them where they are and place the task again (or fail)."""
        while self._deadlines and self._deadlines[0][0] <= now:
            due, task_id, attempt = heapq.heappop(self._deadlines)
            task = self.tasks.live.get(task_id)
            if task is None or task.state is not TaskState.RUNNING or task.attempt != attempt:
                continue  # that attempt already ended
            if self._deadline_of.get(task_id) != due:
                continue  # re-armed later (our link was down meanwhile)
            limit = self.attempt_deadline(task) or 0
            proplet = self.proplets.get(task.proplet_id) or Proplet(id=task.proplet_id)
            self.counters["attempts_timed_out"] += 1
            self._emit_stop(task.id, task.name, task.proplet_id, task.attempt)
            self._supersede(task, task.proplet_id)
            self._requeue_or_fail(task, proplet, f"no result within {limit:g} s", now, wall)

    def _mark_dead(self, proplet: Proplet, reason: str, now: float, wall: float) -> None:
        self._grace.pop(proplet.id, None)
        self._busy.discard(proplet.id)
        if proplet.alive:
            proplet.alive = False
            self._disown(proplet.id)
            self.counters["proplets_died"] += 1
            if reason == LEFT_REASON:  # an orderly stop is news, not a warning
                self._log("proplet_left", proplet_id=proplet.id, reason=reason)
            else:
                self._log("proplet_dead", "warning", proplet_id=proplet.id, reason=reason)
            self._proplet_event(
                proplet.id, wall, "died", reason, running=len(self._running_on.get(proplet.id, {}))
            )
            self._persist_proplet(proplet)
        self._release_tasks(proplet, reason, now, wall)

    def _release_tasks(self, proplet: Proplet, reason: str, now: float, wall: float) -> None:
        for task in [t for t in self._broadcasts.values() if proplet.id in t.targets]:
            results = task.results if isinstance(task.results, dict) else {}
            if task.state is TaskState.RUNNING and proplet.id not in results:
                results[proplet.id] = {"results": "", "error": f"proplet died ({reason})"}
                task.results = results
                self._maybe_finish_broadcast(task, now, wall)
        for task in list(self._running_on.get(proplet.id, {}).values()):
            # It may still be running there (a partition, not a death): stop it when it is back.
            self._supersede(task, proplet.id)
            self._task_event(
                task.id, wall, "proplet_died", reason, proplet_id=proplet.id, attempt=task.attempt
            )
            self._requeue_or_fail(task, proplet, f"proplet {proplet.id} died ({reason})", now, wall)
        self._drain_queue(now, wall)

    def _requeue_or_fail(self, task: Task, proplet: Proplet, why: str, now: float, wall: float) -> None:
        self._vacate(task, wall)
        self._dispatched_at.pop(task.id, None)
        if task.attempts_counted >= task.max_attempts:
            counted = f"{task.attempts_counted}/{task.max_attempts}"
            self._fail(task, f"{why} on attempt {counted}", wall, already_released=True)
            self._after_terminal(task, now, wall)
            return
        states.apply(task, Trigger.REQUEUE)
        task.error = f"attempt {task.attempt} lost on {proplet.id}: {why}"
        if not task.metadata.get("pinned"):
            task.proplet_id = ""
        self._enqueue(task, now)
        self.counters["tasks_redispatched"] += 1
        self._log("task_requeued", task_id=task.id, proplet_id=proplet.id, attempt=task.attempt, reason=why)
        self._task_event(task.id, wall, "requeued", why, proplet_id=proplet.id, attempt=task.attempt)
        self._persist_task(task, wall)

    # ------------------------------------------------------------------ user operations

    def create_task(self, spec: dict[str, Any], wall: float) -> Task:
        if self.shutting_down:
            raise ShuttingDown("service is shutting down")
        task = build_task(spec, self._new_id, default_max_attempts=self.config.max_attempts)
        task.created_at = task.updated_at = wall
        if task.id in self.tasks:
            raise Conflict(f"task {task.id} already exists", "id")
        if task.schedule:
            cron.validate(task.schedule, task.timezone)
            task.next_run = cron.next_run(task.schedule, task.timezone, wall)
        self._admit(task)
        self._persist_task(task, wall)
        self._log("task_created", task_id=task.id, name=task.name)
        self._task_event(task.id, wall, "created", "", name=task.name)
        return task

    def get_task(self, task_id: str) -> Task:
        """A task in memory; NotFound when unknown or settled out of memory (read it from the store)."""
        task = self.tasks.find(task_id)
        if task is None:
            raise NotFound(f"task {task_id} not found")
        return task

    def get_proplet(self, proplet_id: str) -> Proplet:
        proplet = self.proplets.get(proplet_id)
        if proplet is None:
            raise NotFound(f"proplet {proplet_id} not found")
        return proplet

    @staticmethod
    def reset_for_rerun(task: Task) -> None:
        """A terminal task about to run again (started by hand, or its job restarted): nothing of the
        last run's outcome stays, and its next attempts still get new numbers, none of them counted yet."""
        states.apply(task, Trigger.RESET)
        task.uncounted_attempts = task.attempt
        task.results, task.result_type, task.error, task.finish_time = None, "", "", None
        task.receipt, task.verified = None, False

    def start_task(self, task_id: str, now: float, wall: float) -> Task:
        if self.shutting_down:
            raise ShuttingDown("service is shutting down")
        task = self.get_task(task_id)
        if task.state in (TaskState.RUNNING, TaskState.SCHEDULED):
            raise Conflict(f"task {task_id} is already {task.state.label.lower()}")
        # As upstream: a dependent starts once every dependency has ended (its workflow starts it
        # then). A dependency not in memory has ended: unfinished tasks are always resident.
        unmet = [d for d in task.depends_on if (dep := self.tasks.find(d)) and not dep.state.is_terminal]
        if unmet:
            raise Conflict(f"task {task_id} has unmet dependencies: {', '.join(unmet)} not finished")
        if not task.file and not task.image_url:
            raise ValidationError("task has no module: set file or image_url", "file")
        if task.proplet_id:
            target = self.proplets.get(task.proplet_id)
            if target is None:
                raise NotFound(f"proplet {task.proplet_id} not found", "proplet_id")
            if not target.alive:
                raise Conflict(f"specified proplet {task.proplet_id} is not alive", "proplet_id")
            task.metadata = {**task.metadata, "pinned": True}
        if task.id not in self.tasks.live:
            self._admit(task)  # a settled task started again is resident until it settles again
        if task.state.is_terminal:
            self.reset_for_rerun(task)
        task.error = ""
        task.finish_time = None
        if task.broadcast:
            self._dispatch_broadcast(task, now, wall)
            return task
        states.apply(task, Trigger.QUEUE)
        self._enqueue(task, now)
        self._task_event(task.id, wall, "queued", "started", pinned=task.proplet_id or None)
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
        self._broadcasts[task.id] = task
        self.counters["tasks_dispatched"] += 1
        self._persist_task(task, wall)
        self._emit(Publish(self.topics.start, wire.encode(start), self.config.qos))
        self._log("task_broadcast", task_id=task.id, targets=len(targets))
        self._task_event(task.id, wall, "broadcast", "started", targets=len(targets))

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
                self._vacate(task, wall)
        # Attempts superseded while their proplet was away may still run there: stop them too.
        for proplet_id, stale in self._stale.items():
            if task.id in stale:
                self._emit_stop(task.id, task.name, proplet_id, stale[task.id])
        self._broadcasts.pop(task.id, None)
        self._dequeue(task.id)
        self._dispatched_at.pop(task.id, None)
        states.apply(task, Trigger.INTERRUPT)
        task.error = reason
        task.finish_time = wall
        self._persist_task(task, wall)
        self._log("task_interrupted", task_id=task.id, reason=reason)
        self._task_event(task.id, wall, "stopped", reason)

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
        if task.schedule and task.next_run is not None:
            self.tasks.add(task)  # a cron task stays resident
            self.schedule_cron(task)
        self._persist_task(task, wall)
        self._log("task_updated", task_id=task_id, fields=sorted(changes))
        return task

    def delete_task(self, task_id: str) -> None:
        task = self.get_task(task_id)
        if task.state in (TaskState.RUNNING, TaskState.SCHEDULED):
            raise Conflict(f"task {task_id} is {task.state.label.lower()}; stop it first")
        self.tasks.discard(task_id)
        for key in _group_keys(task):
            members = self._members.get(key)
            if members is not None:
                members.pop(task_id, None)
                if not members:
                    del self._members[key]
        self._emit(DeleteTask(task_id))

    def delete_proplet(self, proplet_id: str) -> None:
        proplet = self.get_proplet(proplet_id)
        if proplet.task_count > 0:
            raise Conflict(f"proplet {proplet_id} has {proplet.task_count} running tasks")
        del self.proplets[proplet_id]
        self._disown(proplet_id)
        for table in (self._stale, self._asked_discovery, self._grace):
            table.pop(proplet_id, None)
        self.observations.forget_proplet(proplet_id)
        for ids in (self._busy, self._direct_answered, self._direct_unreachable):
            ids.discard(proplet_id)
        self._emit(DeleteProplet(proplet_id))

    # ------------------------------------------------------------------ dispatch

    def _drain_queue(self, now: float, wall: float) -> None:
        """Dispatch queued tasks in (priority, waiting since) order while proplets have room.

        Costs O(k log n) for k tasks examined: it stops as soon as no candidate has a free slot, and
        after ``drain_scan_limit`` tasks that could not be placed (they wait for the next drain). A
        task needing more memory than any alive proplet announces is parked aside until a proplet
        (re)announces itself, so it is not examined on every event.
        """
        if not self._queue or not self.link_up:
            return
        deferred: list[tuple[int, float, str]] = []
        alive = [p for p in self.proplets.values() if p.alive and p.id not in self._busy]
        open_ = [p for p in alive if _has_slot(p)]
        largest = _largest_memory(alive)
        while self._queue_heap and open_ and len(deferred) < self.config.drain_scan_limit:
            entry = heapq.heappop(self._queue_heap)
            _, since, task_id = entry
            if self._queue.get(task_id) != since:
                continue  # stale entry: the task left the queue or re-entered it later
            task = self.tasks.live[task_id]
            pool = [p for p in alive if p.id == task.proplet_id] if task.proplet_id else open_
            no_fit = self._no_fit.get(task_id)
            if no_fit:
                pool = [p for p in pool if p.id not in no_fit]
            choice = self.policy.choose(task, pool, self._reserved_bytes)
            if choice.proplet is None:
                reason = choice.reason
                if not pool and task.proplet_id in self._busy:
                    reason = f"proplet {task.proplet_id} is busy; waiting for it to report room"
                if reason != task.error:  # only when the reason to wait changes (keeps it bounded)
                    self._task_event(task_id, wall, "waiting", reason)
                task.error = reason
                if largest is not None and task.memory_bytes > largest and not task.proplet_id:
                    self._parked.append(entry)  # no alive proplet could ever hold it as announced
                else:
                    deferred.append(entry)
                continue
            del self._queue[task_id]
            if self.config.timeline:
                self._task_event(
                    task_id, wall, "placed", self.policy.name, proplet_id=choice.proplet.id,
                    candidates=len(pool), considered=[p.id for p in pool[:5]],
                )  # fmt: skip
            self._dispatch(task, choice.proplet, now, wall)
            if not _has_slot(choice.proplet):
                open_ = [p for p in open_ if p is not choice.proplet]
        for entry in deferred:
            heapq.heappush(self._queue_heap, entry)
        if not open_ and self._queue:
            # Nothing can be placed: say why on the next task in line (one placement call).
            self._prune_heap()
            head = self.tasks.live.get(self._queue_heap[0][2]) if self._queue_heap else None
            if head is not None:
                reason = self.policy.choose(head, alive, self._reserved_bytes).reason
                if not alive and self._busy:
                    reason = "every alive proplet is busy; waiting for one to report room"
                if reason and reason != head.error:
                    self._task_event(head.id, wall, "waiting", reason)
                head.error = reason or head.error

    def _unpark(self) -> None:
        """A proplet (re)announced itself: parked tasks may fit now."""
        for entry in self._parked:
            if self._queue.get(entry[2]) == entry[1]:
                heapq.heappush(self._queue_heap, entry)
        self._parked.clear()

    def _prune_heap(self) -> None:
        while self._queue_heap and self._queue.get(self._queue_heap[0][2]) != self._queue_heap[0][1]:
            heapq.heappop(self._queue_heap)

    def _dispatch(self, task: Task, proplet: Proplet, now: float, wall: float) -> None:
        profile = wire.Profile.EMBEDDED if proplet.is_embedded else wire.Profile.RUST
        task.attempt += 1
        start = self._start_message(task, proplet_id=proplet.id, broadcast=False)
        try:
            payload = wire.encode(start, profile)
        except wire.CodecError as err:
            task.attempt -= 1
            self._fail(task, f"cannot send task to {proplet.id}: {err}", wall)
            self._after_terminal(task, now, wall)
            return
        states.apply(task, Trigger.DISPATCH)
        stale = self._stale.get(proplet.id)
        if stale is not None:
            stale.pop(task.id, None)  # a new attempt there: an old record must not stop it
        task.proplet_id = proplet.id
        task.receipt, task.verified = None, False  # a new attempt: its receipt is still to come
        task.error = ""
        task.start_time = wall
        self._occupy(task, proplet)
        self._dispatched_at[task.id] = now
        self._arm_deadline(task, now)
        self.counters["tasks_dispatched"] += 1
        self._persist_task(task, wall)
        self._emit(Publish(self._start_topic(proplet), payload, self.config.qos))
        self._log("task_dispatched", task_id=task.id, proplet_id=proplet.id, attempt=task.attempt)
        self._task_event(task.id, wall, "start_published", "", proplet_id=proplet.id, attempt=task.attempt)

    def _sends_direct(self, proplet: Proplet) -> bool:
        """Whether starts for ``proplet`` alone go to its own topic: it announced that it reads one
        (``direct_start``: one delivery instead of one per proplet of the channel), its id can name a
        topic level, and that topic has not proved unreachable (_reconcile)."""
        return (
            proplet.metadata.direct_start
            and proplet.id not in self._direct_unreachable
            and wire.direct_start_ok(proplet.id)
        )

    def _start_topic(self, proplet: Proplet) -> str:
        return self.topics.start_for(proplet.id) if self._sends_direct(proplet) else self.topics.start

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
            parent_result_types=self._parent_result_types(task),
            sha256=task.sha256,
            attempt=task.attempt,
            limits=dict(task.limits) or None,
        )

    def _completed_parents(self, task: Task) -> list[Task]:
        found = (self.tasks.find(d) for d in task.depends_on)
        return [
            p for p in found if p is not None and p.state is TaskState.COMPLETED and p.results is not None
        ]

    def _parent_results(self, task: Task) -> dict[str, Any] | None:
        # Upstream's value: each parent's results as stored (a proplet's text, "42"), never re-typed
        return {p.id: p.results for p in self._completed_parents(task)} or None

    def _parent_result_types(self, task: Task) -> dict[str, str] | None:
        # Our extension: how to read each parent's text (json/text/binary), for proplets that know it
        return {p.id: p.result_type for p in self._completed_parents(task) if p.result_type} or None

    def _publish_stop(self, task: Task) -> None:
        self._emit_stop(task.id, task.name, "" if task.broadcast else task.proplet_id, 0, task.broadcast)

    def _emit_stop(
        self, task_id: str, name: str, proplet_id: str, attempt: int, broadcast: bool = False
    ) -> None:
        stop = wire.StopTask(
            id=task_id,
            name=name,
            state=TaskState.INTERRUPTED.label,
            proplet_id=proplet_id,
            broadcast=broadcast,
            attempt=attempt,
        )
        self._emit(Publish(self.topics.stop, wire.encode(stop), self.config.qos))

    def _fail(self, task: Task, reason: str, wall: float, *, already_released: bool = False) -> None:
        if task.state is TaskState.RUNNING and not already_released:
            self._vacate(task, wall)
        self._dequeue(task.id)
        self._broadcasts.pop(task.id, None)
        states.apply(task, Trigger.FAIL)
        task.error = reason
        task.finish_time = wall
        self.counters["tasks_failed"] += 1
        self._log("task_failed", "warning", task_id=task.id, reason=reason)
        self._task_event(task.id, wall, "failed", reason, attempt=task.attempt)
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
        last_seen = self.last_seen(proplet)
        return proplet.alive and last_seen is not None and now - last_seen < self.config.timeout

    def queued(self) -> list[str]:
        return list(self._queue)


# Our proplets send pieces of at most 64 KiB; anything far larger is not a live log piece.
MAX_LOG_PIECE_CHARS = 256 * 1024
# Why a proplet that stopped cleanly (its own ``offline``, marked ``leaving``) is no longer alive.
LEFT_REASON = "left: clean shutdown"


def snapshot(task: Task) -> Task:
    """A copy the engine will not change under the store's feet, at a fraction of a deep copy's cost.

    The engine replaces field values and mutates only the top level of its containers (a broadcast's
    per-proplet ``results``, list fields); what sits below (user metadata, result values) is never
    mutated in place, so copying one level is enough.
    """
    out = object.__new__(Task)  # copy.copy's __reduce_ex__ path costs several times this
    out.__dict__.update(task.__dict__)
    for name in _CONTAINER_FIELDS:
        value = getattr(task, name)
        if isinstance(value, list | dict):
            setattr(out, name, value.copy())
    return out


_CONTAINER_FIELDS = tuple(
    f.name
    for f in dataclasses.fields(Task)
    if f.name in {"cli_args", "inputs", "env", "depends_on", "results", "metadata", "limits", "targets"}
)


def _largest_memory(proplets: list[Proplet]) -> int | None:
    """The most memory any of ``proplets`` announces; None if one announces none (anything may fit)."""
    largest = 0
    for p in proplets:
        announced = p.metadata.free_memory_bytes or p.metadata.total_memory_bytes
        if not announced:
            return None
        largest = max(largest, announced)
    return largest if proplets else None


def _has_slot(proplet: Proplet) -> bool:
    limit = proplet.metadata.max_instances
    return not limit or proplet.task_count < limit


def _group_keys(task: Task) -> list[tuple[str, str]]:
    keys = []
    if task.workflow_id:
        keys.append(("w", task.workflow_id))
    if task.job_id:
        keys.append(("j", task.job_id))
    return keys


# Longest extra time after our broker outage that proplets get to reconnect (their backoff cap).
_RECONNECT_ALLOWANCE_CAP = 30.0

# Superseded attempts remembered per proplet (a proplet that never returns must not grow them forever).
_STALE_LIMIT = 10_000


_HANDLED_SUFFIXES = frozenset(
    {
        "control/proplet/create",
        "control/proplet/alive",
        "control/proplet/results",
        "control/proplet/logs",
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


def _proplet_copy(p: Proplet) -> Proplet:
    """A deep copy of ``p`` (its lists are its only mutable parts), ~30x cheaper than copy.deepcopy."""
    md = dataclasses.replace(p.metadata, tags=list(p.metadata.tags))
    return dataclasses.replace(p, metadata=md, alive_history=list(p.alive_history))


def _name_for(proplet_id: str) -> str:
    """A stable human-readable name derived from the id (upstream picks a random one)."""
    h = sum(ord(c) * (i + 1) for i, c in enumerate(proplet_id))
    return f"{_ADJECTIVES[h % len(_ADJECTIVES)]}-{_NOUNS[(h // 10) % len(_NOUNS)]}"


def task_from_spec(spec: dict[str, Any], new_id: Callable[[], str]) -> Task:
    """Validate a user's task JSON (upstream field names) and build a Task. Raises ValidationError."""
    return build_task(spec, new_id)
