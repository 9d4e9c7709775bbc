"""Live runs that the host could not keep up with are judged inconclusive, with the figures, not failed:
the summary, the exit code, the JUnit file and the pytest plugin all say so."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.unit.scenario_helpers import LWT, lwt, lwt_trace
from twin.pytest_plugin import ScenarioRunner
from twin.scenario import ReplayRunner
from twin.scenario.expectations import evaluate_all
from twin.scenario.fidelity import Fidelity, lag_budget, timer_slack
from twin.scenario.junit import junit_xml
from twin.scenario.pipeline import EXIT_FAILED, EXIT_INCONCLUSIVE, EXIT_OK, run_scenarios
from twin.scenario.result import ScenarioResult
from twin.scenario.spec import Timers
from twin.scenario.trace import Trace

LAGGING = Fidelity(budget_s=0.15, loop_p99_s=0.41, sim_p99_s=0.02, loop_max_s=0.9, samples=900)
KEEPING_UP = Fidelity(budget_s=0.15, loop_p99_s=0.004, sim_p99_s=0.003, samples=900)


def test_budget_is_a_fraction_of_the_tightest_timer_slack() -> None:
    # heartbeat 0.5 s, liveness 1.5 s (1 s of slack), keepalive 2 s (1 s before expiry): 0.5 s
    assert timer_slack(Timers(0.5, 1.5, 2.0)) == 0.5
    assert lag_budget(Timers(0.5, 1.5, 2.0)) == pytest.approx(0.15)
    # reconnect_storm's timers: heartbeat 1 s, liveness 3 s, keepalive 2 s -> slack 1 s
    assert lag_budget(Timers(1.0, 3.0, 2.0)) == pytest.approx(0.3)
    # a liveness barely above the heartbeat leaves almost no slack
    assert timer_slack(Timers(1.0, 1.2, 10.0)) == pytest.approx(0.2)


def test_reason_names_the_lag_and_the_budget() -> None:
    assert LAGGING.reason == "loop lag p99 410 ms > budget 150 ms"
    assert not LAGGING.faithful
    assert KEEPING_UP.reason is None and KEEPING_UP.faithful
    both = Fidelity(0.15, 0.2, 0.31)
    assert both.reason == "loop lag p99 200 ms > budget 150 ms; simulation lag p99 310 ms > budget 150 ms"
    assert Fidelity.from_meta(LAGGING.to_meta()) == Fidelity(0.15, 0.41, 0.02, 0.9, 900)
    assert Fidelity.from_meta({"budget_ms": "x"}) is None


def _recorded(dead_after: float, fidelity: Fidelity | None) -> Trace:
    tr = lwt_trace(dead_after=dead_after)
    if fidelity is not None:
        tr.meta["fidelity"] = fidelity.to_meta()
    return tr


def _result(dead_after: float, fidelity: Fidelity | None) -> ScenarioResult:
    tr = _recorded(dead_after, fidelity)
    return ScenarioResult(lwt(), tr, evaluate_all(tr, lwt()))


def test_a_failure_on_a_lagging_host_is_inconclusive_with_the_figures() -> None:
    late = _result(5.0, LAGGING)  # marked dead 5 s after the fault: beyond the 4.5 s bound
    assert not late.passed
    assert late.inconclusive == "loop lag p99 410 ms > budget 150 ms"
    assert late.status == "INCONCLUSIVE"
    assert late.summary().startswith("INCONCLUSIVE lwt_reschedule (seed 42")
    assert "loop lag p99 410 ms > budget 150 ms: this host could not keep up" in late.summary()
    # The same failure on a host that kept up is a failure; a pass on a lagging host is a pass.
    assert _result(5.0, KEEPING_UP).status == "FAIL"
    assert _result(5.0, None).status == "FAIL"
    assert _result(2.5, LAGGING).status == "PASS"


def test_junit_reports_an_inconclusive_failure_as_skipped() -> None:
    root = ET.fromstring(junit_xml([_result(5.0, LAGGING), _result(5.0, KEEPING_UP)]))
    unsure, failed = root.findall("testsuite")
    assert unsure.get("failures") == "0" and unsure.get("skipped") == "1"
    (skipped,) = unsure.iter("skipped")
    assert skipped.get("message") == "inconclusive: loop lag p99 410 ms > budget 150 ms"
    assert "esp-1 was marked dead 5.00 s after power_loss" in (skipped.text or "")
    assert failed.get("failures") == "1" and failed.get("skipped") == "0"
    assert root.get("skipped") == "1" and root.get("failures") == "1"


@pytest.mark.parametrize(
    ("dead_after", "fidelity", "code"),
    [(5.0, LAGGING, EXIT_INCONCLUSIVE), (5.0, KEEPING_UP, EXIT_FAILED), (2.5, LAGGING, EXIT_OK)],
)
def test_exit_code_of_an_inconclusive_run_is_distinct(
    tmp_path: Path, dead_after: float, fidelity: Fidelity, code: int
) -> None:
    recorded = _recorded(dead_after, fidelity).write(tmp_path / "recorded.jsonl")
    junit = tmp_path / "junit.xml"
    assert run_scenarios([LWT], runner=ReplayRunner(recorded), junit=junit) == code


def test_scenario_runner_skips_an_inconclusive_result_and_fails_a_failed_one() -> None:
    with pytest.raises(pytest.skip.Exception, match="inconclusive: INCONCLUSIVE lwt_reschedule"):
        ScenarioRunner.assert_passed(_result(5.0, LAGGING))
    with pytest.raises(pytest.fail.Exception, match="FAIL lwt_reschedule"):
        ScenarioRunner.assert_passed(_result(5.0, KEEPING_UP))
