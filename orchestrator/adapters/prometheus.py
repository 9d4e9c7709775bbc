"""Prometheus exposition of the manager's state, read from the engine at scrape time."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from orchestrator.core.model import TaskState

if TYPE_CHECKING:
    from orchestrator.service import ManagerService

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _EngineCollector(Collector):
    def __init__(self, manager: ManagerService) -> None:
        self.manager = manager

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
        engine = self.manager.engine
        by_state = Counter(t.state for t in engine.tasks.values())
        tasks = GaugeMetricFamily("propeller_tasks", "Tasks by state", labels=["state"])
        for state in TaskState:
            tasks.add_metric([state.label.lower()], by_state.get(state, 0))
        yield tasks
        alive = sum(1 for p in engine.proplets.values() if self.manager.proplet_alive(p))
        yield GaugeMetricFamily("propeller_proplets_alive", "Proplets alive now", value=alive)
        yield GaugeMetricFamily("propeller_proplets_known", "Proplets registered", value=len(engine.proplets))
        yield GaugeMetricFamily(
            "propeller_tasks_queued", "Tasks waiting for capacity", value=len(engine.queued())
        )
        dropped = CounterMetricFamily(
            "propeller_messages_malformed", "Malformed messages dropped, by topic", labels=["topic"]
        )
        for suffix, count in sorted(engine.malformed.items()):
            dropped.add_metric([suffix], count)
        yield dropped
        rejected = CounterMetricFamily(
            "propeller_results_rejected",
            "Results refused by the sender and receipt checks (forged, unsigned, unknown sender), by reason",
            labels=["reason"],
        )
        for reason, count in sorted(engine.results_rejected.items()):
            rejected.add_metric([reason], count)
        yield rejected
        events = CounterMetricFamily("propeller_engine_events", "Engine event counters", labels=["event"])
        for name, count in sorted(engine.counters.items()):
            events.add_metric([name], count)
        yield events
        unenrolled = CounterMetricFamily(
            "propeller_messages_unenrolled",
            "Proplet messages dropped because the id they claim is not an enrolled, active proplet",
            labels=["topic"],
        )
        for suffix, count in sorted(self.manager.unenrolled.items()):
            unenrolled.add_metric([suffix], count)
        yield unenrolled
        guard = self.manager.broker.guard if self.manager.broker is not None else None
        if guard is not None:
            refused = CounterMetricFamily(
                "propeller_broker_refused",
                "Embedded broker: refused CONNECTs and SUBSCRIBEs, dropped PUBLISHes and wills, by kind",
                labels=["what"],
            )
            for what, count in sorted(guard.counters.items()):
                refused.add_metric([what], count)
            yield refused
        samples = engine.dispatch_latencies
        buckets = [(str(b), float(sum(1 for s in samples if s <= b))) for b in LATENCY_BUCKETS]
        buckets.append(("+Inf", float(len(samples))))
        yield HistogramMetricFamily(
            "propeller_dispatch_latency_seconds",
            "Dispatch to result latency",
            buckets=buckets,
            sum_value=sum(samples),
        )


def render(manager: ManagerService) -> bytes:
    registry = CollectorRegistry()
    registry.register(_EngineCollector(manager))
    return generate_latest(registry)
