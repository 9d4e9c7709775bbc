"""AsyncSimClock: drive a plain `simpy.Environment` from an asyncio task, at `speed` simulated seconds per
wall second, so simulated devices and real MQTT clients share one thread (stack-notes §4).

Why not `simpy.rt.RealtimeEnvironment`: its `step()` blocks in `time.sleep`, which would freeze the
asyncio loop that carries the MQTT traffic. Instead the driver sleeps on the loop until the next simpy
event is due (at least `min_tick`, at most `max_sleep`) and then runs simpy up to the scaled wall time.
The minimum tick batches events due close together: without it the driver woke for every event and
used a whole core for 100 devices; with 2 ms it used under a quarter (measured, stack-notes §4).

MQTT callbacks call `inject(fn, *args)`: simulated time first catches up with the scaled wall clock, so
the callback runs "now", and the driver wakes to serve whatever the callback scheduled.

`lag_stats()` reports how late simpy events ran against the scaled wall clock, in wall seconds: the
measure of whether the process keeps up at this speed. `LoopLagProbe` measures the event loop itself:
how late a timer set for every `period` actually fires (a busy host or a blocking callback shows up
there first). twin.scenario.fidelity judges both against the scenario's timers.
"""

from __future__ import annotations

import asyncio
import collections
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import simpy


@dataclass(frozen=True)
class LagStats:
    events: int  # events measured (the most recent `window` of them)
    median_s: float
    p99_s: float
    max_s: float


class AsyncSimClock:
    def __init__(
        self,
        env: simpy.Environment,
        speed: float = 1.0,
        *,
        min_tick: float = 0.002,
        max_sleep: float = 0.05,
        window: int = 100_000,
    ) -> None:
        if not (isinstance(speed, int | float) and math.isfinite(speed) and speed > 0):
            raise ValueError(f"speed must be a finite number > 0 (simulated s per wall s), got {speed!r}")
        if not 0 < min_tick <= max_sleep:
            raise ValueError(f"need 0 < min_tick <= max_sleep, got min_tick={min_tick}, "
                             f"max_sleep={max_sleep}")
        self.env = env
        self.speed = float(speed)
        self.min_tick = min_tick
        self.max_sleep = max_sleep
        self.iterations = 0  # driver wake-ups, to check it does not spin
        self.injected = 0
        self._lags: collections.deque[float] = collections.deque(maxlen=window)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._t0_sim = env.now
        self._t0_wall = 0.0
        self._until: float | None = None  # set while run() is active
        self._wake: asyncio.Future[None] | None = None

    @property
    def running(self) -> bool:
        return self._until is not None

    def target(self) -> float:
        """Simulated time that corresponds to wall-now (capped at the running `until`)."""
        if self._loop is None or self._until is None:
            return float(self.env.now)
        t = self._t0_sim + (self._loop.time() - self._t0_wall) * self.speed
        return min(t, self._until)

    def sync(self) -> None:
        """Process every event due by the scaled wall clock, then set `env.now` to it."""
        t = self.target()
        env = self.env
        while env.peek() <= t:
            self._lags.append(max(0.0, (t - env.peek()) / self.speed))
            env.step()
        if t > env.now:
            # Nothing is due by t: a bare timeout moves the clock. Not env.run(until=t): simpy 4.1
            # leaves its stop marker queued at t, which makes the next peek() look due and the
            # driver wake every min_tick while idle.
            env.timeout(t - env.now)
            env.step()

    def inject(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(*args)` in the simulation at the current scaled time and wake the driver."""
        self.sync()
        self.injected += 1
        try:
            return fn(*args)
        finally:
            if self._wake is not None and not self._wake.done():
                self._wake.set_result(None)

    async def run(self, until: float) -> None:
        """Advance the simulation to `until` (simulated seconds) in step with the scaled wall clock."""
        if self._until is not None:
            raise RuntimeError("AsyncSimClock.run() is already active")
        if until < self.env.now:
            raise ValueError(f"until={until} is before the simulation's now={self.env.now}")
        loop = self._loop = asyncio.get_running_loop()
        self._t0_sim, self._t0_wall, self._until = float(self.env.now), loop.time(), float(until)
        try:
            while True:
                self.sync()
                if self.env.now >= until:
                    break
                self.iterations += 1
                nxt = min(self.env.peek(), until)
                delay = min(max((nxt - self.target()) / self.speed, self.min_tick), self.max_sleep)
                wake = self._wake = loop.create_future()
                handle = loop.call_later(delay, _resolve, wake)
                try:
                    await wake
                finally:
                    handle.cancel()
                    self._wake = None
        finally:
            self._until = None

    def lag_stats(self) -> LagStats:
        return _stats(self._lags)


class LoopLagProbe:
    """How late the running event loop serves a timer: one `call_at` every `period` seconds, each
    recording (fired − due). `start()` on the loop, `stop()` at the end, `stats()` any time."""

    def __init__(self, period: float = 0.02, window: int = 100_000) -> None:
        if not period > 0:
            raise ValueError(f"period must be > 0, got {period!r}")
        self.period = period
        self._lags: collections.deque[float] = collections.deque(maxlen=window)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    def start(self) -> LoopLagProbe:
        self._loop = asyncio.get_running_loop()
        self._arm(self._loop.time())
        return self

    def _arm(self, now: float) -> None:
        assert self._loop is not None
        self._due = now + self.period
        self._handle = self._loop.call_at(self._due, self._fire)

    def _fire(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        self._lags.append(max(0.0, now - self._due))
        self._arm(now)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def stats(self) -> LagStats:
        return _stats(self._lags)


def _stats(lags: collections.deque[float]) -> LagStats:
    if not lags:
        return LagStats(0, 0.0, 0.0, 0.0)
    ordered = sorted(lags)
    n = len(ordered)
    return LagStats(n, ordered[n // 2], ordered[min(n - 1, math.ceil(0.99 * n) - 1)], ordered[-1])


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
