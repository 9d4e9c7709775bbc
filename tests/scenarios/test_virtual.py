"""Every shipped scenario passes in virtual time, and a seed gives the same trace, even on a busy host.

Virtual time (``--mode virtual``) runs the same scenario file with the same cores on simpy's clock over
the broker model: a 30 s scenario takes about a second. The trace hash is the digest of every event
(time, kind, subject, data): equal hashes mean the same facts at the same simulated instants.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from twin.scenario import get_runner

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "scenarios"
SHIPPED = sorted(p.stem for p in SCENARIOS.glob("*.yaml"))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_scenario_passes_in_virtual_time(name: str, scenario_runner) -> None:
    result = scenario_runner.run(SCENARIOS / f"{name}.yaml", runner=get_runner("virtual"))
    scenario_runner.assert_passed(result)
    figures = result.trace.meta["virtual"]
    assert figures["devices_online_once"] == figures["devices"]
    assert figures["tasks_run_on_devices"] > 0, "no task ran on a device"
    assert result.trace.of("proplet"), "no manager event was observed"
    assert re.fullmatch(r"[0-9a-f]{64}", result.trace_hash)


def _hash(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "scenario", "run", "--mode", "virtual", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = re.findall(r"trace_hash: ([0-9a-f]{64})", proc.stdout)
    assert len(found) == 1, proc.stdout
    return found[0]


@pytest.mark.timeout(600)
def test_same_seed_same_trace_in_separate_processes_and_under_cpu_load(tmp_path: Path) -> None:
    # flaky_fleet: random faults (power loss, Wi-Fi drops, reboots) over a mixed fleet on lossy links,
    # 150 tasks. Each run is its own interpreter (string hashing differs between processes).
    scenario = str(SCENARIOS / "flaky_fleet.yaml")
    first = _hash(scenario, "--report", str(tmp_path / "a"))
    assert _hash(scenario, "--report", str(tmp_path / "b")) == first
    assert _hash(scenario, "--seed", "2025", "--report", str(tmp_path / "c")) != first  # the seed matters
    yes = shutil.which("yes")
    assert yes is not None
    hogs = [subprocess.Popen([yes], stdout=subprocess.DEVNULL) for _ in range(2)]  # both cores busy
    try:
        loaded = _hash(scenario, "--report", str(tmp_path / "d"))
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert loaded == first


def test_real_boards_cannot_run_in_virtual_time(scenario_runner) -> None:
    text = (SCENARIOS / "hil_boards.yaml").read_text(encoding="utf-8")
    text = text.replace("port: s3-a", "port: /dev/ttyACM0")
    result = scenario_runner.run(text, runner=get_runner("virtual"))
    assert not result.passed
    assert result.error is not None and "real hardware" in result.error and "board-a1" in result.error


LINK_FAULTS = """\
name: link_faults_virtual
description: a blackholed link is silence (keep-alive or liveness finds it), a lossy one only slows.
seed: 3
duration: 20s
timers: {heartbeat_interval: 0.5, liveness_timeout: 1.5, keepalive: 2}
fleet:
  - {kind: esp32s3, count: 3, prefix: esp-, link: {profile: wifi, loss: 0.2}}
workload:
  - {name: add, module: add, inputs: [2, 3], count: 30, rate: 3, at: 3}
faults:
  - {at: 6, kind: link, target: esp-1, duration: 4, params: {blackhole: true}}
expect:
  - dead_within: {device: esp-1, seconds: 3.5, faults: [link]}
  - alive_within: {device: esp-1, seconds: 4}
  - tasks_lost: {max: 0}
  - completed_ratio: {min: 1.0}
"""


def test_link_faults_act_on_the_modelled_link(scenario_runner) -> None:
    result = scenario_runner.run(LINK_FAULTS, runner=get_runner("virtual"))
    scenario_runner.assert_passed(result)
