"""Twin fleet scale in virtual time, small: 1,000 esp32s3 devices and the manager's engine over the
broker model for 10 simulated minutes of 10 s heartbeats (60,000 heartbeats, each encoded, routed and
decoded for real). The 100k-device figures are ``propeller twin scale --mode virtual``; see
docs/twin-scale.md.

Run with ``pytest tests/bench/test_bench_twin_virtual.py --benchmark-enable``; under the default
``--benchmark-disable`` the body runs once, as a correctness pass: every heartbeat sent is decoded by
the manager and every proplet is held alive at the end.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from twin.virtual_scale import VirtualScaleConfig, VirtualScaleResult, as_dict, run_virtual_point

pytestmark = pytest.mark.timeout(300)


def test_bench_twin_virtual_1000_devices_10_minutes(benchmark: Any) -> None:
    cfg = VirtualScaleConfig(1000, duration=600.0, heartbeat=10.0)

    def one() -> VirtualScaleResult:
        return asyncio.run(run_virtual_point(cfg))

    r: VirtualScaleResult = benchmark.pedantic(one, rounds=1, iterations=1)
    benchmark.extra_info.update(as_dict(r))
    assert r.heartbeats_sent >= 1000 * 59, r  # a first one on connect, then every 10 s
    assert r.heartbeats_received == r.heartbeats_sent, r
    assert r.alive_at_end == 1000 and r.deaths == 0, r
