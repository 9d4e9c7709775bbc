"""Bulk heartbeats (``twin.cohort``) change nothing but speed: each shipped scenario gives the same trace,
event for event, with steady devices' heartbeats sent in bulk and with every one sent as a message.

The scenarios' faults (power loss, Wi-Fi drops, resets, link faults, broker restart, manager kill) and
tasks make devices leave and rejoin the cohort throughout, so this compares the manager's liveness
decisions (deaths, detection times, re-dispatch) on both paths, not only the quiet case.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from twin.virtual import VirtualRunner

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
SHIPPED = sorted(p.stem for p in SCENARIOS.glob("*.yaml"))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", SHIPPED)
def test_same_trace_with_and_without_bulk_heartbeats(name: str, scenario_runner) -> None:
    path = SCENARIOS / f"{name}.yaml"
    per_message = scenario_runner.run(path, runner=VirtualRunner())
    bulk = scenario_runner.run(path, runner=VirtualRunner(cohort=True))
    assert bulk.error is None, bulk.error
    stats = bulk.trace.meta["virtual"]["cohort"]
    assert bulk.trace_hash == per_message.trace_hash
    if not stats["heartbeats"]:
        pytest.skip("every device is on a modelled Wi-Fi link (per-packet delays): none went in bulk")
    assert stats["leaves"] > 0, "no device ever left the cohort"
    assert bulk.status == per_message.status == "PASS"
