"""`propeller scenario validate|run` end to end with the ReplayRunner, and the pytest plugin's fixtures."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from orchestrator.cli import main
from tests.unit.scenario_helpers import LWT, lwt_trace
from twin.pytest_plugin import ScenarioRunner
from twin.scenario import ReplayRunner, RunnerUnavailable, Trace, get_runner

ROOT = Path(__file__).resolve().parents[2]


def test_validate_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scenario", "validate", str(LWT)]) == 0
    assert "ok: " in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(LWT.read_text().replace("count: 3", "cuont: 3"))
    assert main(["scenario", "validate", str(LWT), str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:13: fleet[0].cuont: unknown key (did you mean 'count'?)" in err


def test_run_replay_passes_and_writes_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recorded = lwt_trace().write(tmp_path / "recorded.jsonl")
    out = tmp_path / "out"
    junit = tmp_path / "junit.xml"
    code = main(
        [
            "scenario",
            "run",
            str(LWT),
            "--replay",
            str(recorded),
            "--report",
            str(out),
            "--junit",
            str(junit),
            "--seed",
            "7",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.out
    assert "PASS lwt_reschedule (seed 7" in captured.out and "5/5 expectations hold" in captured.out
    assert "lwt_reschedule (seed 7): 100%" in captured.err  # the non-TTY progress lines
    page = (out / "lwt_reschedule.html").read_text()
    assert "data:image/png;base64," in page and "PASS" in page
    assert (
        (out / "lwt_reschedule.trace.jsonl")
        .read_text()
        .startswith('{"trace": 1, "scenario": "lwt_reschedule", "seed": 7')
    )
    assert ET.parse(junit).getroot().get("failures") == "0"


def test_run_fails_with_explanation_when_expecting_the_impossible(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    impossible = tmp_path / "impossible.yaml"
    impossible.write_text(LWT.read_text().replace("seconds: 4.5,", "seconds: 0.1,"))
    recorded = lwt_trace().write(tmp_path / "recorded.json")
    code = main(
        ["scenario", "run", str(impossible), "--replay", str(recorded), "--report", str(tmp_path / "r.html")]
    )
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL lwt_reschedule (seed 42" in out and "4/5 expectations hold" in out
    assert re.search(
        r"x dead_within\(seconds=0\.1, devices=esp-1, not_before=2\): esp-1 was marked dead 2\.50 s after "
        r"power_loss at t=3\.00 s; bound 0\.1 s",
        out,
    )
    assert "FAIL" in (tmp_path / "r.html").read_text()


def test_run_without_a_runner_or_with_a_bad_file_runs_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("duration: soon\n")
    assert main(["scenario", "run", str(bad), "--report", str(tmp_path)]) == 2
    assert "bad.yaml:1: duration: must be a positive number, got 'soon'" in capsys.readouterr().err
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        "importlib.util.find_spec", lambda name: None if name == "twin.runner" else real(name)
    )
    with pytest.raises(RunnerUnavailable, match=r"twin\.runner"):
        get_runner("live")
    assert main(["scenario", "run", str(LWT), "--report", str(tmp_path)]) == 2
    assert "replay a recorded trace with --replay TRACE" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.html"))


def test_runner_crash_is_a_failed_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from twin.scenario.pipeline import run_scenarios

    class Crashing:
        async def run(self, scenario: object, trace: object, progress: object) -> None:
            raise OSError("broker port in use")

    assert run_scenarios([LWT], runner=Crashing()) == 1
    assert "the run failed: OSError: broker port in use" in capsys.readouterr().out


def test_plugin_fixtures(scenario_runner: ScenarioRunner, twin_trace: Trace) -> None:
    assert len(twin_trace) == 0
    good = scenario_runner.run(LWT, runner=ReplayRunner(lwt_trace()))
    scenario_runner.assert_passed(good)
    bad = scenario_runner.run(LWT, runner=ReplayRunner(lwt_trace(dead_after=9.0)), seed=3)
    assert not bad.passed and bad.scenario.seed == 3
    with pytest.raises(pytest.fail.Exception, match=r"esp-1 was marked dead 9\.00 s after power_loss"):
        scenario_runner.assert_passed(bad)
    text = LWT.read_text().replace("duration: 20s", "duration: 30s")
    assert scenario_runner.load(text).duration_s == 30.0


async def test_plugin_fixture_in_async_test(scenario_runner: ScenarioRunner) -> None:
    result = await scenario_runner.arun(LWT, runner=ReplayRunner(lwt_trace(), speed=1000.0))
    assert result.passed and len(result.trace) == len(lwt_trace())
    with pytest.raises(RuntimeError, match=r"use await scenario_runner\.arun"):
        scenario_runner.run(LWT, runner=ReplayRunner(lwt_trace()))


def test_a_manager_setting_the_virtual_manager_does_not_model_fails_the_run_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "grace.yaml"
    spec.write_text(
        "name: grace\nduration: 1s\nmanager: {attempt_grace: 4}\n"
        "fleet: [{kind: host, count: 1}]\nexpect: [{tasks_lost: {max: 0}}]\n"
    )
    assert main(["scenario", "run", "--mode", "virtual", str(spec), "--report", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "manager.attempt_grace: the virtual manager models only placement" in out
