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

Imperative fault tests (``twin.harness``): ``twin_cluster`` yields a started ``TwinCluster`` (the
embedded broker, the real manager, no devices yet; options from ``@pytest.mark.twin(broker=...,
timers=..., placement=..., seed=...)``), ``twin_cluster_factory`` starts more or custom ones
(``await twin_cluster_factory(broker="mosquitto")``). Both stop every process and socket at teardown,
also when the test fails; with ``--twin-report DIR`` each cluster's HTML report and trace are written
under DIR/<test name>/. See docs/twin-pytest.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

try:  # strict-mode projects only run async fixtures declared through pytest-asyncio
    from pytest_asyncio import fixture as async_fixture
except ImportError:  # pragma: no cover - without pytest-asyncio no async test can use them anyway
    async_fixture = pytest.fixture  # type: ignore[assignment]

if TYPE_CHECKING:
    from twin.harness import TwinCluster
    from twin.scenario import Runner, Scenario, Trace
    from twin.scenario.result import ScenarioResult

TWIN_MARKER = (
    "twin(**options): options of the twin_cluster fixture's TwinCluster "
    "(broker, timers, placement, max_attempts, queue_timeout, seed)"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("propeller-twin", "propeller digital twin")
    group.addoption("--twin-report", metavar="DIR", default=None, help="write reports and traces here")
    group.addoption("--twin-seed", metavar="N", type=int, default=None, help="override every scenario's seed")
    group.addoption("--twin-mode", metavar="MODE", default="live", choices=("live", "virtual"),
                    help="runner of the scenario_runner fixture: live (default) or virtual time")  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", TWIN_MARKER)


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
        """Fail the test with every failed expectation explained; skip it, with the figures, when the
        run is inconclusive (the host could not keep up with the scenario's timers)."""
        if result.inconclusive:
            pytest.skip(f"inconclusive: {result.summary()}")
        if not result.passed:
            pytest.fail(result.summary(), pytrace=False)


@pytest.fixture
def scenario_runner(request: pytest.FixtureRequest) -> ScenarioRunner:
    return ScenarioRunner(request)


@pytest.fixture
def twin_runner(request: pytest.FixtureRequest) -> Runner:
    from twin.scenario import RunnerUnavailable, get_runner

    try:
        return get_runner(request.config.getoption("--twin-mode"))
    except RunnerUnavailable as exc:
        pytest.fail(f"{exc} (or override the twin_runner fixture)", pytrace=False)


@pytest.fixture
def twin_trace() -> Trace:
    from twin.scenario.trace import Trace

    return Trace("pytest")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A test on a twin cluster that failed while the host could not keep up with the cluster's
    timers is reported as skipped, with the lag and the budget, not as a failure."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    for cluster in getattr(item, "_twin_clusters", ()):
        fidelity = cluster.fidelity()
        if not fidelity.faithful:
            path, line, _ = item.reportinfo()
            failure = call.excinfo.exconly().splitlines()[0] if call.excinfo is not None else "?"
            report.outcome = "skipped"
            report.longrepr = (str(path), (line or 0) + 1,
                               f"inconclusive: {fidelity.reason} (the test failed: {failure})")  # fmt: skip
            return


# ---------------------------------------------------------------------------------------------- clusters
ClusterFactory = Callable[..., Awaitable["TwinCluster"]]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


@async_fixture
async def twin_cluster_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[ClusterFactory]:
    """``await twin_cluster_factory(**options)``: a started ``TwinCluster`` (options as its constructor:
    broker, timers, placement, max_attempts, queue_timeout, seed, name); all closed at teardown."""
    from twin.harness import TwinCluster

    clusters: list[TwinCluster] = []
    request.node._twin_clusters = clusters  # for pytest_runtest_makereport: did the host keep up?
    seed_option = request.config.getoption("--twin-seed")

    async def start(**options: Any) -> TwinCluster:
        if seed_option is not None:
            options["seed"] = seed_option
        options.setdefault("name", f"{_safe(request.node.name)}-{len(clusters) + 1}")
        options.setdefault("work_dir", tmp_path / f"twin-{len(clusters) + 1}")
        cluster = TwinCluster(**options)
        clusters.append(cluster)  # closed at teardown even if it fails to start
        await cluster.start()
        return cluster

    try:
        yield start
    finally:
        report = request.config.getoption("--twin-report")
        for cluster in reversed(clusters):
            if report is not None and cluster.fleet is not None:
                with contextlib.suppress(Exception):
                    cluster.report(Path(report) / _safe(request.node.name) / f"{cluster.name}.html")
            await cluster.close()


@async_fixture
async def twin_cluster(request: pytest.FixtureRequest, twin_cluster_factory: ClusterFactory) -> TwinCluster:
    """A started ``TwinCluster`` on the embedded broker, no devices yet; ``@pytest.mark.twin(...)``
    sets its options."""
    marker = request.node.get_closest_marker("twin")
    if marker is not None and marker.args:
        raise pytest.UsageError(f"@pytest.mark.twin takes keyword options only, got {marker.args!r}")
    options = dict(marker.kwargs) if marker is not None else {}
    options.setdefault("name", _safe(request.node.name))
    return await twin_cluster_factory(**options)
