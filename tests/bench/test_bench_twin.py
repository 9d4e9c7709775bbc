"""Twin fleet scale, small: 200 simulated esp32s3 devices (the real ``SimDevice`` path) against a
private mosquitto process, 5 s of steady heartbeats at 1 s. The fleet-size sweep (1000-5000 devices) is
``propeller twin scale``; its figures are in docs/twin-scale.md.

Run with ``pytest tests/bench/test_bench_twin.py --benchmark-enable``; under the default
``--benchmark-disable`` the body runs once, as a correctness pass: every device online, no link drop,
every heartbeat sent arrives.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from twin.scale import ScaleConfig, ScaleResult, run_point

pytestmark = pytest.mark.timeout(300)


def test_bench_twin_200_devices_heartbeats(benchmark: Any, tmp_path: Path) -> None:
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        if os.environ.get("PROPELLER_REQUIRE_SERVICES") == "1":
            pytest.fail("mosquitto is not installed")
        pytest.skip("mosquitto is not installed (a private one is started for this benchmark)")
    cfg = ScaleConfig(200, "mosquitto", heartbeat=1.0, duration=5.0, ramp=1000.0, drain=1.0,
                      connect_timeout=30.0)  # fmt: skip

    def one() -> ScaleResult:
        return asyncio.run(run_point(cfg, tmp_path / "point"))

    r: ScaleResult = benchmark.pedantic(one, rounds=1, iterations=1)
    benchmark.extra_info.update(
        connect_s=r.connect_s, runner_cpu_pct=r.runner_cpu_pct, runner_rss_mib=r.runner_rss_mib,
        broker_cpu_pct=r.broker_cpu_pct, loop_p99_ms=r.loop_lag_ms.get("p99"), hb=r.hb_received,
    )  # fmt: skip
    assert r.error is None, r.error
    assert r.connect_s is not None and r.online_end == 200 and r.link_drops == 0, r
    # Each device heartbeats on connect and then every second: about 6 per device in the window.
    assert r.hb_sent >= 200 * 5, r
    assert r.hb_received == r.hb_sent, r
    assert r.holds, r.why_not
    assert r.broker_rss_mib is not None and r.runner_rss_mib > 0
