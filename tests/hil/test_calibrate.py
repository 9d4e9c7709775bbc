"""Calibration of the twin's esp32s3 memory constants from recorded benchmark logs (see logs/README.md)."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import pytest

from hil.calibrate import KIB, CalibrationError, calibrate_files, calibrate_texts, fit_line, parse_log
from hil.cli import cmd_calibrate
from twin.devices.esp32s3 import ESP32S3, MemoryModel

LOGS = Path(__file__).parent / "logs"
ALL = sorted(LOGS.glob("*.log"))
TRUE_BASELINE_KB, TRUE_COST_KB = 183.0, 16.5  # what the logs were generated from


def test_recorded_logs_give_back_the_constants_they_were_made_from() -> None:
    result = calibrate_files(ALL)
    assert result.overall.samples == 11 + 7 + 11 + 9
    assert result.overall.per_instance_kb == pytest.approx(TRUE_COST_KB, abs=0.1)
    assert result.overall.baseline_kb == pytest.approx(TRUE_BASELINE_KB, abs=1.0)
    assert result.overall.rmse_kb < 1.0
    assert result.peak == 11
    constants = result.constants()
    assert constants["per_instance_bytes"] == pytest.approx(TRUE_COST_KB * KIB, abs=0.1 * KIB)
    assert constants["heap_free_baseline_bytes"] == pytest.approx(TRUE_BASELINE_KB * KIB, abs=KIB)


def test_the_fit_maps_onto_the_twins_esp32s3_spec() -> None:
    result = calibrate_files(ALL)
    overrides = result.esp32s3_overrides(module_bytes=312)
    spec = replace(ESP32S3, free_dram_bytes=overrides["free_dram_bytes"],
                   instance_overhead_bytes=overrides["instance_overhead_bytes"])
    model = MemoryModel(spec)
    assert model.free_bytes == pytest.approx(TRUE_BASELINE_KB * KIB, abs=KIB)
    assert spec.instance_cost(312, 0) == pytest.approx(TRUE_COST_KB * KIB, abs=0.15 * KIB)
    # The calibrated twin admits as many instances as the ramps that ended in a spawn failure reached.
    assert model.capacity(312, 0) == result.peak
    with pytest.raises(CalibrationError, match="below the model's fixed parts"):
        result.esp32s3_overrides(module_bytes=312, memory_pages=1)


def test_each_ramp_is_fitted_on_its_own() -> None:
    result = calibrate_files([LOGS / "bench_experiment0_zephyr_prefix.log"])
    assert [len(run.samples) for run, _ in result.runs] == [11, 9]
    assert [run.peak for run, _ in result.runs] == [11, 9]
    for run, fit in result.runs:
        assert fit is not None
        assert fit.per_instance_kb == pytest.approx(TRUE_COST_KB, abs=0.2)
        assert sum(run.costs_kb) / len(run.costs_kb) == pytest.approx(TRUE_COST_KB, abs=0.6)
        assert len(run.latencies_us) == len(run.samples)


def test_fit_is_exact_on_a_line_and_refuses_a_single_point() -> None:
    fit = fit_line([(1, 90.0), (2, 80.0), (3, 70.0)])
    assert (fit.baseline_kb, fit.per_instance_kb, fit.rmse_kb) == pytest.approx((100.0, 10.0, 0.0))
    with pytest.raises(CalibrationError, match="two or more instance counts"):
        fit_line([(4, 50.0), (4, 51.0)])


def test_units_and_prefixes_are_tolerated() -> None:
    runs = parse_log("x <inf> bench: instances=1 heap=100KB min=99KB cpu=5% up=2s\n"
                     "instances=2 heap=90.5 min=88\n")
    assert runs[0].samples == [(1, 100.0), (2, 90.5)]


def test_a_file_without_benchmark_lines_is_named() -> None:
    with pytest.raises(CalibrationError, match=r"notes\.txt: no benchmark lines"):
        calibrate_texts([("notes.txt", "hello\n")])


def test_cli_prints_the_constants(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cmd_calibrate(argparse.Namespace(logs=[str(p) for p in ALL])) == 0
    out = capsys.readouterr().out
    assert "esp32s3:" in out and "per_instance_bytes:" in out and "peak=11" in out
    empty = tmp_path / "empty.log"
    empty.write_text("nothing\n")
    assert cmd_calibrate(argparse.Namespace(logs=[str(empty)])) == 2
    assert "empty.log: no benchmark lines" in capsys.readouterr().err
    assert cmd_calibrate(argparse.Namespace(logs=[str(tmp_path / "missing.log")])) == 2
    assert "cannot read" in capsys.readouterr().err
