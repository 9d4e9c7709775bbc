"""``TimelineFeed``: the twin's faults and the boards' console lines join the manager's task timelines.

A live twin run knows what the manager cannot: which fault it injected on which device, and what a
board printed on its console. The feed listens to the run's trace (``Trace.listeners``) and reports
those events through the manager's API (``POST /proplets/{id}/events``, ``POST /tasks/{id}/events``,
docs/api.md "Timelines from outside"), stamped with the wall time they happened at:

- a device fault (``power_loss``, ``brownout``, ``reboot``, ``wifi_drop``, ``link``, ``reset``...,
  start and end) as ``fault`` on the device's proplet: the manager adds it to the proplet's timeline
  and to the timeline of each task whose attempt was on it then;
- a board console line as ``console``: on the task it names (``task_start id=...``), else on the
  board's proplet (it joins the tasks running there at that moment).

Reports go in batches from one background task; a report the manager refuses or cannot take (it is
being restarted by a ``manager_kill`` fault) is dropped and counted in ``dropped``: the timeline is an
aid, the scenario's verdict never depends on it.

One feed, two sinks: a live run's ``ApiSink`` posts the reports to the manager process; a virtual run's
``EngineSink`` hands the same reports to the in-process engine (``twin.vmanager``) at the simulated
instant they happen, through the same parsing and ``Engine.observations`` the API route uses.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from hil.scenario_boards import console_report
from orchestrator.core.errors import NotFound, ValidationError
from orchestrator.core.observations import MAX_EVENTS, parse_events
from twin.scenario.trace import TraceEvent

if TYPE_CHECKING:
    from twin.vmanager import VirtualManager

SOURCE = "twin"
BATCH_S = 0.1  # events reported together: one manager transaction for a burst of console lines


class Sink(Protocol):
    """Where the feed's reports go: ``deliver`` one event on ``/{path}/{subject_id}/events``."""

    sent: int
    dropped: int

    def deliver(self, path: str, subject_id: str, item: dict[str, Any]) -> None: ...


class TimelineFeed:
    def __init__(self, wall_of: Callable[[float], float], sink: Sink) -> None:
        """``wall_of``: UNIX seconds of a trace time (seconds since the run started)."""
        self.wall_of, self.sink = wall_of, sink
        self.pids: dict[str, str] = {}  # device name -> proplet id (from the trace's device events)

    @property
    def sent(self) -> int:
        return self.sink.sent

    @property
    def dropped(self) -> int:
        return self.sink.dropped

    def on_event(self, event: TraceEvent) -> None:
        """A trace listener (called in the event loop's thread)."""
        data = event.data
        if event.kind == "device" and "proplet_id" in data:
            self.pids[event.subject] = str(data["proplet_id"])
            return
        if event.kind != "fault" and event.kind != "console":
            return  # the rest (a device's state, its free memory, ...) is not reported
        pid = self.pids.get(event.subject)
        if pid is None:
            return
        at = round(self.wall_of(event.t), 6)
        if event.kind == "fault":
            fault, phase = str(data.get("fault", "")), str(data.get("phase", ""))
            params = dict(data.get("params") or {})
            cause = fault if phase == "start" else f"{fault} ended"
            fields = {"fault": fault, "phase": phase, "device": event.subject, "params": params}
            self.sink.deliver("proplets", pid, {"kind": "fault", "cause": cause, "at": at, "source": SOURCE,
                                                "fields": fields})  # fmt: skip
        elif event.kind == "console" and data.get("kind") not in ("prompt", "echo"):
            path, task_id, item = console_report(event.subject, dict(data), at)
            if task_id is not None:
                item["fields"]["proplet_id"] = pid
            self.sink.deliver(path, task_id or pid, item)


class ApiSink:
    """Live: the reports go to the manager process's API, in batches, from one background task."""

    def __init__(self, api_url: str, token: str = "") -> None:
        self.api_url = api_url
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.pending: list[tuple[str, str, dict[str, Any]]] = []  # (subject path, id, event)
        self.sent = 0
        self.dropped = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None

    def deliver(self, path: str, subject_id: str, item: dict[str, Any]) -> None:
        self.pending.append((path, subject_id, item))
        self._wake.set()

    async def start(self) -> None:
        self._client = httpx.AsyncClient(base_url=self.api_url, timeout=5.0, headers=self.headers)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(BATCH_S)
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        """Report every pending event now."""
        batch, self.pending = self.pending, []
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for path, subject_id, item in batch:
            groups.setdefault((path, subject_id), []).append(item)
        for (path, subject_id), items in groups.items():
            for i in range(0, len(items), MAX_EVENTS):
                chunk = items[i : i + MAX_EVENTS]
                if await self._post(f"/{path}/{subject_id}/events", chunk):
                    self.sent += len(chunk)
                else:
                    self.dropped += len(chunk)

    async def _post(self, path: str, events: list[dict[str, Any]]) -> bool:
        if self._client is None:
            return False
        try:
            response = await self._client.post(path, json={"events": events})
        except httpx.HTTPError:
            return False
        return response.status_code == 201

    async def close(self) -> None:
        """Report what is pending and stop; never raises."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        with contextlib.suppress(Exception):
            await self.flush()
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()
            self._client = None


class EngineSink:
    """Virtual: the reports go to the virtual manager's engine, as ``POST .../events`` would take them
    (``parse_events``, then ``Engine.observations``), one simulated instant later than they happened:
    never in the middle of the engine's own handling, in the same order for the same seed. A report the
    manager cannot take (killed by ``manager_kill``, an unknown task or proplet) is dropped."""

    def __init__(self, manager: VirtualManager) -> None:
        self.manager = manager
        self.sent = 0
        self.dropped = 0

    def deliver(self, path: str, subject_id: str, item: dict[str, Any]) -> None:
        self.manager.env.timeout(0).callbacks.append(lambda _ev: self._report(path, subject_id, item))

    def _report(self, path: str, subject_id: str, item: dict[str, Any]) -> None:
        vm = self.manager
        engine = vm.engine
        if engine is None or not engine.config.timeline:
            self.dropped += 1
            return
        try:
            events = parse_events({"events": [item]}, vm.wall)
            if path == "tasks":
                if engine.find_task(subject_id) is None and subject_id not in vm.store.tasks:
                    raise NotFound(f"task {subject_id!r} not found")
                engine.observations.report_on_task(subject_id, events)
            else:
                engine.get_proplet(subject_id)
                engine.observations.report_on_proplet(subject_id, events)
        except (NotFound, ValidationError):
            self.dropped += 1
            return
        self.sent += 1
        vm.flush()
