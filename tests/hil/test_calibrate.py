"""`propeller hil calibrate` on logs in the Zephyr benchmark's real output format (see logs/README.md):
the fit gives back the constants the logs were written from, the fitted profile reproduces every
recorded peak, and the profile file it writes is what a scenario's fleet group can use."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml

from hil.calibrate import KIB, CalibrationError, calibrate_files, calibrate_texts, fit_line, parse_log
from hil.cli import cmd_calibrate
from twin.devices.esp32s3 import MemoryModel, simulate_ramp
from twin.devices.profiles import load_profile
from twin.scenario.spec import load_scenario_text

LOGS = Path(__file__).parent / "logs"
ALL = sorted(LOGS.glob("*.log"))
EXP0, DIVERSE, DIED = LOGS / "bench_exp0_three_workloads.log", LOGS / "bench_exp6_diverse.log", \
    LOGS / "bench_exp1_task_died.log"  # fmt: skip
# What the logs were written from (logs/README.md).
TRUE_FREE_KB, TRUE_FIXED_KB, TRUE_TRANSIENT_KB = 180.3, 6.4, 4.7


def test_real_format_lines_parse_padded_prefixed_and_coloured() -> None:
    runs = parse_log(EXP0.read_text())
    assert [(r.workload, len(r.samples), r.end, r.recorded_peak) for r in runs] == [
        ("cpu_stress", 24, None, 24), ("mem_stress", 2, "SPAWN_FAIL", 2), ("msg_stress", 2, "SPAWN_FAIL", 2),
    ]  # fmt: skip
    first = runs[0]
    assert first.samples[0] == (1, 173.0, 169.0)  # from "instances=1    heap= 173KB  min= 169KB  ..."
    assert len(first.costs_kb) == len(first.latencies_us) == 24
    (died,) = parse_log(DIED.read_text())
    assert (died.workload, died.end, died.errors, died.recorded_peak) == ("cpu_stress", "TASK_DIED", 2, 9)
    (mixed,) = parse_log(DIVERSE.read_text())
    assert (mixed.workload, mixed.end, mixed.recorded_peak) == ("diverse", "SPAWN_FAIL", 8)


def test_the_fit_gives_back_the_constants_the_logs_were_written_from() -> None:
    result = calibrate_files(ALL)
    assert result.baseline_kb == pytest.approx(TRUE_FREE_KB, abs=1.0)
    assert result.fixed_kb == pytest.approx(TRUE_FIXED_KB, abs=0.2)
    assert result.transient_kb == pytest.approx(TRUE_TRANSIENT_KB, abs=0.8)
    fits = {w.workload: w.fit for w in result.workloads}
    assert fits["cpu_stress"] is not None and fits["mem_stress"] is not None
    assert fits["cpu_stress"].per_instance_kb == pytest.approx(TRUE_FIXED_KB, abs=0.2)
    assert fits["mem_stress"].per_instance_kb == pytest.approx(TRUE_FIXED_KB + 64, abs=1.0)


def test_the_fitted_profile_reproduces_every_recorded_peak() -> None:
    result = calibrate_files(ALL)
    for w in result.workloads:
        for run in w.runs:
            if run.end != "TASK_DIED":  # a dead task is not a memory limit: nothing to predict
                assert w.model_peak == run.recorded_peak, (w.workload, run.source)
    model = {w.workload: w.model_peak for w in result.workloads}
    assert model == {"cpu_stress": 24, "mem_stress": 2, "msg_stress": 2, "diverse": 8}
    # The headline, on the fitted profile: 24 CPU-bound instances with memory still free.
    ramp = simulate_ramp(result.spec, 200, 0)
    assert ramp.stop == "max_instances" and ramp.free_bytes > 20 * KIB  # written from: ≈26.7 KiB


def test_report_prints_predicted_next_to_recorded_peaks() -> None:
    text = calibrate_files(ALL).report()
    lines = text.splitlines()
    mem = next(line for line in lines if line.startswith("mem_stress"))
    assert "2 (SPAWN_FAIL)" in mem and mem.rstrip().endswith("2")
    died = next(line for line in lines if "TASK_DIED, errors=2" in line)
    assert died.startswith("cpu_stress") and "differs" not in died
    assert "esp32s3 profile" in text and "instance_overhead_bytes:" in text


def test_cli_writes_a_profile_a_scenario_can_use(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "profiles" / "bench.yaml"
    assert cmd_calibrate(argparse.Namespace(logs=[str(p) for p in ALL], arena=None, write=str(out))) == 0
    assert f"profile: {out}" in capsys.readouterr().out
    data = yaml.safe_load(out.read_text())
    assert data["base"] == "esp32s3" and data["fit"]["mem_stress"]["recorded_peak"] == 2
    spec = load_profile(str(out))
    assert spec.free_dram_bytes == 196_608
    # Free before any module is loaded: the free arena of the log plus one workload module (2 × 200 B).
    assert MemoryModel(spec).free_bytes == pytest.approx(TRUE_FREE_KB * KIB + 400, abs=1.5 * KIB)
    scenario = load_scenario_text(
        "duration: 5s\nfleet:\n  - {kind: esp32s3, count: 2, profile: profiles/bench.yaml}\n"
        "expect:\n  - tasks_lost: 0\n", "s.yaml", base_dir=tmp_path)  # fmt: skip
    assert scenario.fleet[0].profile == spec


def test_fit_is_exact_on_a_line_and_refuses_a_single_point() -> None:
    fit = fit_line([(1, 90.0), (2, 80.0), (3, 70.0)])
    assert (fit.baseline_kb, fit.per_instance_kb, fit.rmse_kb) == pytest.approx((100.0, 10.0, 0.0))
    with pytest.raises(CalibrationError, match="two or more instance counts"):
        fit_line([(4, 50.0), (4, 51.0)])


def test_mistakes_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(CalibrationError, match=r"notes\.txt: no benchmark lines"):
        calibrate_texts([("notes.txt", "hello\n")])
    with pytest.raises(CalibrationError, match="exceeds the arena"):
        calibrate_files(ALL, arena_bytes=100 * KIB)
    empty = tmp_path / "empty.log"
    empty.write_text("nothing\n")
    assert cmd_calibrate(argparse.Namespace(logs=[str(empty)], arena=None, write=None)) == 2
    assert "empty.log: no benchmark lines" in capsys.readouterr().err
    missing = str(tmp_path / "missing.log")
    assert cmd_calibrate(argparse.Namespace(logs=[missing], arena=None, write=None)) == 2
    assert "cannot read" in capsys.readouterr().err
