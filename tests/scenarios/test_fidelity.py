"""A live run whose host cannot keep up is inconclusive, not failed: here a callback blocks the event
loop 0.3 s of every 0.35 s, as a starved host would, and the run says so with the figures (exit code 3,
JUnit skipped), while the same expectation failing on a host that keeps up stays a failure."""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest

from twin.scenario import Scenario, Trace, get_runner
from twin.scenario.pipeline import EXIT_FAILED, EXIT_INCONCLUSIVE, run_scenarios

SCENARIO = """\
name: starved
description: three hosts, a few tasks, and an expectation that does not hold (no fault to check).
seed: 3
duration: 6s
timers: {heartbeat_interval: 0.5, liveness_timeout: 1.5, keepalive: 2}
fleet:
  - {kind: host, count: 3, prefix: h-}
workload:
  - {name: add, module: add, inputs: [1, 2], count: 4, every: 0.5, at: 1}
expect:
  - tasks_lost: {max: 0}
  - dead_within: {devices: "*", seconds: 1}
"""


class BlockingRunner:
    """The live runner beside a callback that blocks the loop ``block`` s every ``every`` s."""

    def __init__(self, block: float, every: float) -> None:
        self.inner = get_runner("live")
        self.block, self.every = block, every

    async def run(self, scenario: Scenario, trace: Trace, progress: Callable[[float], None]) -> None:
        loop = asyncio.get_running_loop()
        handle: list[asyncio.TimerHandle] = []

        def hog() -> None:
            time.sleep(self.block)  # the whole point: nothing else on this loop runs meanwhile
            handle[:] = [loop.call_later(self.every - self.block, hog)]

        handle.append(loop.call_later(0.5, hog))
        try:
            await self.inner.run(scenario, trace, progress)
        finally:
            for h in handle:
                h.cancel()


def _meta(report: Path) -> dict[str, object]:
    return Trace.read(report / "starved.trace.jsonl").meta


@pytest.mark.timeout(300)
def test_a_starved_run_is_inconclusive_with_the_lag_figures(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tmp_path / "starved.yaml"
    scenario.write_text(SCENARIO)
    junit, report = tmp_path / "junit.xml", tmp_path / "report"
    code = run_scenarios([scenario], runner=BlockingRunner(0.3, 0.35), junit=junit, report_dir=report)
    out = capsys.readouterr().out
    assert code == EXIT_INCONCLUSIVE, out
    assert "INCONCLUSIVE starved" in out and "loop lag p99" in out and "> budget 150 ms" in out, out
    fidelity = _meta(report)["fidelity"]
    assert isinstance(fidelity, dict)
    assert fidelity["faithful"] is False and fidelity["loop_lag_p99_ms"] >= 150
    root = ET.parse(junit).getroot()
    assert root.get("failures") == "0" and root.get("skipped") == "1"
    assert "INCONCLUSIVE" in (report / "starved.html").read_text()


@pytest.mark.timeout(300)
def test_the_same_failure_on_a_host_that_keeps_up_is_a_failure(tmp_path: Path) -> None:
    scenario = tmp_path / "starved.yaml"
    scenario.write_text(SCENARIO)
    report = tmp_path / "report"
    code = run_scenarios([scenario], report_dir=report)
    fidelity = _meta(report)["fidelity"]
    assert isinstance(fidelity, dict)
    if not fidelity["faithful"]:  # this machine is busy right now: the runner must have said so
        assert code == EXIT_INCONCLUSIVE
        pytest.skip(f"host too busy for a faithful run: {fidelity['reason']}")
    assert code == EXIT_FAILED
