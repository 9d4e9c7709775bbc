"""Smoke test of the ``propeller bench`` commands as a user runs them (real subprocesses, real broker).
No timing asserts: only that they finish, print their table and JSON, and refuse bad input clearly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def propeller(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def test_bench_e2e_one_proplet_embedded_prints_the_table(tmp_path: Path) -> None:
    out = tmp_path / "e2e.json"
    run = propeller(
        "bench", "e2e", "--proplets", "1", "--tasks", "20", "--broker", "embedded",
        "--rtt-messages", "500", "--no-celery", "--output", str(out),
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Celery + Redis comparison: skipped (--no-celery)" in run.stdout
    lines = run.stdout.splitlines()
    assert any(line.startswith("broker: embedded") for line in lines)  # which broker, how configured
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["broker", "proplets"])
    assert "tasks/s" in lines[header] and "p99ms" in lines[header] and "qos1-rtt" in lines[header]
    row = lines[header + 2].split()
    assert row[:4] == ["embedded", "1", "20", "16"]
    data = json.loads(out.read_text())
    (e2e,) = data["e2e"]
    assert e2e["completed"] == 20 and e2e["errors"] == 0 and e2e["proplet_procs"] == 1
    assert e2e["p50_s"] <= e2e["p99_s"] <= e2e["max_s"]
    assert e2e["broker_rtt"]["messages"] == 500
    # the embedded broker's CPU is the manager's; every process of the run is counted once
    assert e2e["broker_cpu_s"] is None and "all-cpu/task-ms" in lines[header]
    assert e2e["system_cpu_s"] >= e2e["manager_cpu_s"] + e2e["proplets_cpu_s"] > 0
    assert data["conditions"]["cpus"] >= 1


def test_bench_e2e_batch_submit_beside_celery(tmp_path: Path) -> None:
    """Tasks through POST /tasks/batch, and Celery + Redis on the same work when the extra is there
    (otherwise the output says why it was left out)."""
    from orchestrator.bench_celery import available

    out = tmp_path / "e2e.json"
    run = propeller(
        "bench", "e2e", "--proplets", "1", "--tasks", "40", "--concurrency", "8", "--broker", "embedded",
        "--submit", "batch", "--rtt-messages", "100", "--output", str(out), timeout=240,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    data = json.loads(out.read_text())
    (e2e,) = data["e2e"]
    assert e2e["submit"] == "batch" and e2e["completed"] == 40 and e2e["errors"] == 0
    assert e2e["manager_cpu_per_task_ms"] > 0
    why_not = available()
    if why_not is None:
        assert "celery tasks/s" in run.stdout and "cpu-ratio" in run.stdout and "maxms" in run.stdout
        celery = data["celery"]["1"]
        assert celery["completed"] == 40 and celery["errors"] == 0
        # Celery's pauses show in its latency tail as ours do in e2e's (docs/benchmarks.md)
        assert 0 < celery["p50_s"] <= celery["p99_s"] <= celery["max_s"]
    else:
        assert f"Celery + Redis comparison: {why_not}" in run.stdout


def test_bench_e2e_rounds_pair_each_measurement_with_celerys(tmp_path: Path) -> None:
    """--rounds N: each row N times, each followed by Celery's, and the ratios' median and spread."""
    from orchestrator.bench_celery import available

    out = tmp_path / "e2e.json"
    run = propeller(
        "bench", "e2e", "--proplets", "1", "--tasks", "20", "--concurrency", "4", "--broker", "embedded",
        "--submit", "batch", "--rtt-messages", "0", "--rounds", "2", "--output", str(out), timeout=240,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    data = json.loads(out.read_text())
    assert [(e["round"], e["completed"]) for e in data["e2e"]] == [(0, 20), (1, 20)]
    if available() is None:
        assert [c["completed"] for c in data["celery_rounds"]["1"]] == [20, 20]
        assert "ratio median" in run.stdout and "ratio min..max" in run.stdout
    for bad in ("0", "-1", "two"):
        refused = propeller("bench", "e2e", "--rounds", bad)
        assert refused.returncode == 2 and "--rounds" in refused.stderr and repr(bad) in refused.stderr


def test_bench_registry_reports_rss_and_heartbeat_rate(tmp_path: Path) -> None:
    out = tmp_path / "reg.json"
    run = propeller("bench", "registry", "--proplets", "100", "--rounds", "2", "--output", str(out))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "RSS per proplet" in run.stdout and "heartbeats processed" in run.stdout
    (reg,) = json.loads(out.read_text())["registry"]
    assert reg["proplets"] == 100 and reg["heartbeats"] == 200
    assert reg["rss_before"] > 0 and reg["rss_after_heartbeats"] > 0


def test_bench_restore_fills_a_store_and_restores_only_the_queued_tasks(tmp_path: Path) -> None:
    out = tmp_path / "restore.json"
    run = propeller(
        "bench", "restore", "--backend", "sqlite", "--stored", "2k", "--queued", "30", "--ops", "50",
        "--full-max", "2k", "--output", str(out),
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "restore s" in run.stdout and "full load s" in run.stdout
    (row,) = json.loads(out.read_text())
    assert row["backend"] == "sqlite" and row["stored"] == 2000
    assert row["resident_tasks"] == 30 and row["drained"] == 30  # the history stayed in the store
    assert row["rss_mb"] > 0 and row["full_restore_s"] >= 0


def test_bench_rejects_bad_arguments_by_name() -> None:
    run = propeller("bench", "e2e", "--proplets", "1,0", timeout=30)
    assert run.returncode == 2 and "--proplets" in run.stderr and "positive" in run.stderr
    run = propeller("bench", "e2e", "--broker", "rabbit", timeout=30)
    assert run.returncode == 2 and "--broker" in run.stderr
    run = propeller("bench", "restore", "--backend", "mysql", timeout=30)
    assert run.returncode == 2 and "--backend" in run.stderr and "mysql" in run.stderr
