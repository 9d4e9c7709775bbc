"""A runner that replays a recorded trace, so the whole pipeline (verdict, report, JUnit, CLI) can be
exercised without a broker, and a past run can be re-judged after its expectations change."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from twin.scenario.spec import Scenario
from twin.scenario.trace import Trace


class ReplayRunner:
    def __init__(self, recorded: Trace | str | Path, *, speed: float | None = None) -> None:
        """``speed`` None replays at once, else sleeps so ``speed`` trace seconds pass per second."""
        self.recorded = recorded if isinstance(recorded, Trace) else Trace.read(recorded)
        self.speed = speed

    async def run(self, scenario: Scenario, trace: Trace, progress: Callable[[float], None]) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        if "fidelity" in self.recorded.meta:  # whether the recorded host kept up is a fact of that run
            trace.meta["fidelity"] = self.recorded.meta["fidelity"]
        horizon = max(scenario.duration_s, self.recorded.end, 1e-9)
        for i, event in enumerate(self.recorded.events):
            if self.speed is not None:
                delay = start + event.t / self.speed - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            elif i % 1000 == 0:
                await asyncio.sleep(0)  # let a progress redraw or a cancellation in
            trace.append(event)
            progress(event.t / horizon)
        progress(1.0)
