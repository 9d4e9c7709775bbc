"""``propeller twin scale`` as a user runs it (real subprocesses: a private mosquitto, the devices in a
child interpreter), plus the pure pieces: the hold criterion and the argument parsing. No timing asserts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from twin.scale import ScaleConfig, ScaleResult, judge, parse_devices, percentiles

needs_mosquitto = pytest.mark.skipif(
    shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists()
    and os.environ.get("PROPELLER_REQUIRE_SERVICES") != "1",
    reason="mosquitto is not installed (the command starts a private one)",
)  # fmt: skip


def propeller(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args], capture_output=True, text=True, timeout=timeout
    )


@needs_mosquitto
@pytest.mark.timeout(300)
def test_scale_50_devices_against_mosquitto_prints_the_table(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    run = propeller("twin", "scale", "--devices", "50", "--duration", "3", "--broker", "mosquitto",
                    "--output", str(out))  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("broker"))
    assert "hb recv/sent" in lines[header] and "loop p99 ms" in lines[header]
    row = lines[header + 1].split()
    assert row[:2] == ["mosquitto", "50"] and row[3] == "50/50"
    assert "largest fleet held with mosquitto: 50" in run.stdout
    (point,) = json.loads(out.read_text())
    # Every device heartbeats once on connect, so even a 3 s window has 50 to count.
    assert point["hb_sent"] >= 50 and point["hb_received"] == point["hb_sent"]
    assert point["broker_rss_mib"] > 0 and point["runner_rss_mib"] > 0 and point["error"] is None


def test_scale_rejects_bad_device_counts_by_name() -> None:
    run = propeller("twin", "scale", "--devices", "100,0", timeout=30)
    assert run.returncode == 2 and "--devices" in run.stderr and "'0'" in run.stderr


def test_parse_devices_and_config_errors_name_the_field() -> None:
    assert parse_devices("1000, 2000,5000") == [1000, 2000, 5000]
    with pytest.raises(ValueError, match="--devices"):
        parse_devices("1k")
    with pytest.raises(ValueError, match="broker"):
        ScaleConfig(10, "rabbitmq")
    with pytest.raises(ValueError, match="heartbeat"):
        ScaleConfig(10, heartbeat=0.0)


def _point(**changes: object) -> ScaleResult:
    lag = {"p50": 1.0, "p99": 20.0, "max": 40.0}
    r = ScaleResult("mosquitto", 100, 10.0, 60.0, False, connect_s=3.0, online_start=100, online_end=100,
                    hb_sent=700, hb_received=700, loop_lag_ms=lag)  # fmt: skip
    for key, value in changes.items():
        setattr(r, key, value)
    return r


def test_judge_holds_only_when_every_criterion_is_met() -> None:
    assert judge(_point()) == []
    assert judge(_point(hb_received=693)) == []  # exactly 99 %
    assert any("heartbeats delivered 692/700" in w for w in judge(_point(hb_received=692)))
    assert any("3 of 100 devices offline" in w for w in judge(_point(online_end=97)))
    assert any("link drops" in w for w in judge(_point(link_drops=1)))
    assert any("loop lag p99" in w for w in judge(_point(loop_lag_ms={"p99": 1000.0})))
    assert any("heartbeats" in w for w in judge(_point(hb_sent=0, hb_received=0)))


def test_percentiles_in_milliseconds() -> None:
    assert percentiles([]) == {"p50": 0.0, "p99": 0.0, "max": 0.0}
    p = percentiles([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert p == {"p50": 51.0, "p99": 99.0, "max": 100.0}
