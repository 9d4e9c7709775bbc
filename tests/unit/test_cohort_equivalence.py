"""Bulk heartbeats (``twin.cohort``) leave the manager's engine in the state the per-message path does.

A small fleet in virtual time, run twice with the same seed: every heartbeat as a message, then steady
devices' heartbeats in bulk (a bucket's round through ``Engine.heartbeat_batch`` by key). Devices lose
power for good, lose it and reboot, and lose Wi-Fi long enough to be declared dead and come back: the
manager records the same proplet timeline (deaths and returns at the same instants) and ends with the
same last-seen times and alive histories for every proplet.
"""

from __future__ import annotations

import asyncio
from typing import Any

from orchestrator.core.engine import Engine
from twin.device import SimDevice
from twin.session import TwinSession
from twin.virtual_scale import VirtualScaleConfig, VirtualScaleResult, run_virtual_point


def _run(cohort: bool) -> tuple[VirtualScaleResult, Engine, dict[Any, Any]]:
    seen: dict[str, Any] = {}

    def faults(session: TwinSession, devices: list[SimDevice]) -> None:
        env, manager = session.env, session.virtual_manager
        assert manager is not None and manager.engine is not None
        seen["engine"], seen["store"] = manager.engine, manager.store
        for at, act in (
            (61.3, lambda: devices[3].power_loss(None)),  # gone for good
            (83.0, lambda: devices[5].power_loss(20.0)),  # back after a reboot
            (104.5, lambda: devices[8].wifi_drop(50.0)),  # silent past keep-alive and liveness
            (130.0, lambda: devices[11].clean_shutdown(15.0)),  # offline announced, then back
        ):
            env.timeout(at).callbacks.append(lambda _ev, act=act: act())

    cfg = VirtualScaleConfig(40, duration=240.0, heartbeat=10.0, seed=3, cohort=cohort)
    result = asyncio.run(run_virtual_point(cfg, before_run=faults))
    return result, seen["engine"], seen["store"].timelines


def test_bulk_heartbeats_leave_the_same_engine_state_and_deaths_as_messages() -> None:
    per_message, engine_a, timelines_a = _run(cohort=False)
    bulk, engine_b, timelines_b = _run(cohort=True)
    assert bulk.cohort > 0  # steady devices were in bulk at the end
    assert (bulk.heartbeats_sent, bulk.heartbeats_received) == (
        per_message.heartbeats_sent,
        per_message.heartbeats_received,
    )
    assert per_message.deaths >= 3 and bulk.deaths == per_message.deaths
    assert timelines_b == timelines_a  # same deaths and returns, at the same instants
    engine_b.settle_liveness()
    assert engine_b.proplets.keys() == engine_a.proplets.keys()
    for pid, p in engine_a.proplets.items():
        q = engine_b.proplets[pid]
        assert (q.alive, q.last_seen, q.alive_history) == (p.alive, p.last_seen, p.alive_history), pid
