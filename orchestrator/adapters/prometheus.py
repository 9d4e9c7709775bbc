"""Prometheus exposition of the manager's state, read from the engine at scrape time."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from orchestrator.core.model import TaskState

if TYPE_CHECKING:
    from orchestrator.service import ManagerService

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _counters(name: str, text: str, label: str, counts: Mapping[str, int]) -> CounterMetricFamily:
    """One counter family with a sample per key of ``counts``, in key order."""
    family = CounterMetricFamily(name, text, labels=[label])
    for key, count in sorted(counts.items()):
        family.add_metric([key], count)
    return family


class _EngineCollector(Collector):
    def __init__(self, manager: ManagerService) -> None:
        self.manager = manager

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
        engine = self.manager.engine
        role = GaugeMetricFamily(
            "propeller_manager_role",
            "1 for this manager's role (leader, standby, starting, deposed)",
            labels=["role"],
        )
        for name in ("leader", "standby", "starting", "deposed"):
            role.add_metric([name], 1 if self.manager.role == name else 0)
        yield role
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
        yield _counters(
            "propeller_messages_malformed", "Malformed messages dropped, by topic", "topic", engine.malformed
        )
        yield _counters(
            "propeller_results_rejected",
            "Results refused by the sender and receipt checks (forged, unsigned, unknown sender), by reason",
            "reason",
            engine.results_rejected,
        )
        yield _counters("propeller_engine_events", "Engine event counters", "event", engine.counters)
        yield _counters(
            "propeller_messages_unenrolled",
            "Proplet messages dropped because the id they claim is not an enrolled, active proplet",
            "topic",
            self.manager.unenrolled,
        )
        guard = self.manager.broker.guard if self.manager.broker is not None else None
        if guard is not None:
            yield _counters(
                "propeller_broker_refused",
                "Embedded broker: refused CONNECTs and SUBSCRIBEs, dropped PUBLISHes and wills, by kind",
                "what",
                guard.counters,
            )
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
