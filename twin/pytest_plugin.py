"""pytest plugin of the digital twin: fixtures to run scenarios and judge them in your own CI tests.

Loaded in every pytest run of the project (entry point ``pytest11: propeller``), so importing it costs
nothing: the twin is imported inside fixtures, and no fixture runs unless a test asks for it.

    def test_power_loss(scenario_runner):
        result = scenario_runner.run("scenarios/lwt_reschedule.yaml")
        scenario_runner.assert_passed(result)

Fixtures: ``scenario_runner`` (run a Scenario, a file or YAML text; returns the ScenarioResult with its
verdicts), ``twin_runner`` (the Runner used when none is given; override it in a conftest.py, e.g. to
return ``ReplayRunner(path)``), ``twin_trace`` (an empty Trace). Options: ``--twin-report DIR`` (write
each run's HTML report and trace under DIR/<test name>/), ``--twin-seed N`` (override every seed).

Hooks for the live runner (``twin.runner``): it adds its fixtures here — ``twin_broker``,
``twin_orchestrator``, ``twin_fleet``, ``twin_faults`` — built the same lazy way, and ``twin_runner``
keeps returning ``get_runner("live")`` so that ``scenario_runner`` uses them.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from twin.scenario import Runner, Scenario, Trace
    from twin.scenario.result import ScenarioResult


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("propeller-twin", "propeller digital twin")
    group.addoption("--twin-report", metavar="DIR", default=None, help="write reports and traces here")
    group.addoption("--twin-seed", metavar="N", type=int, default=None, help="override every scenario's seed")


class ScenarioRunner:
    """Runs scenarios for one test; the ``scenario_runner`` fixture."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self._request = request
        self.results: list[ScenarioResult] = []

    def load(self, scenario: Scenario | str | Path, *, seed: int | None = None) -> Scenario:
        """A Scenario from an object, a file path, or YAML text (anything containing a newline)."""
        from twin.scenario.spec import Scenario, load_scenario, load_scenario_text

        option_seed = self._request.config.getoption("--twin-seed")
        seed = seed if seed is not None else option_seed
        if isinstance(scenario, Scenario):
            return scenario.with_seed(seed)
        if isinstance(scenario, str) and "\n" in scenario:
            return load_scenario_text(scenario, f"<{self._request.node.name}>", seed=seed)
        return load_scenario(scenario, seed=seed)

    async def arun(
        self, scenario: Scenario | str | Path, *, runner: Runner | None = None, seed: int | None = None
    ) -> ScenarioResult:
        """Run and judge a scenario (from an async test); never raises on a failed expectation."""
        from twin.scenario.pipeline import run_scenario, write_outputs

        loaded = self.load(scenario, seed=seed)
        chosen: Runner = runner if runner is not None else self._request.getfixturevalue("twin_runner")
        result = await run_scenario(loaded, chosen)
        report = self._request.config.getoption("--twin-report")
        if report is not None:
            safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", self._request.node.name)
            write_outputs(result, Path(report) / safe, many=True)
        self.results.append(result)
        return result

    def run(
        self, scenario: Scenario | str | Path, *, runner: Runner | None = None, seed: int | None = None
    ) -> ScenarioResult:
        """As ``arun``, from a synchronous test."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.arun(scenario, runner=runner, seed=seed))
        raise RuntimeError("scenario_runner.run() inside an event loop: use await scenario_runner.arun()")

    @staticmethod
    def assert_passed(result: ScenarioResult) -> None:
        """Fail the test with every failed expectation explained."""
        if not result.passed:
            pytest.fail(result.summary(), pytrace=False)


@pytest.fixture
def scenario_runner(request: pytest.FixtureRequest) -> ScenarioRunner:
    return ScenarioRunner(request)


@pytest.fixture
def twin_runner() -> Runner:
    from twin.scenario import RunnerUnavailable, get_runner

    try:
        return get_runner("live")
    except RunnerUnavailable as exc:
        pytest.fail(f"{exc} (or override the twin_runner fixture)", pytrace=False)


@pytest.fixture
def twin_trace() -> Trace:
    from twin.scenario.trace import Trace

    return Trace("pytest")
