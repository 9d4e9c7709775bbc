"""When the proplet engine asks for metrics and how it reports them in the upstream Rust format
(§2.7 proplet metrics, §2.8 task metrics); results that could not be handed to the broker are kept."""

from __future__ import annotations

import json
from typing import Any

import pytest

from orchestrator import wire
from proplets.core import CollectMetrics, ProcessSample, PropletConfig, PropletEngine, Publish

T = wire.Topics("d", "c")
START = json.dumps({"id": "t1", "name": "add", "file": "AGFzbQEAAAA=", "proplet_id": "me"}).encode()


def engine(**kw: Any) -> PropletEngine:
    return PropletEngine(
        PropletConfig(proplet_id="me", domain="d", channel="c", heartbeat_interval=5.0, **kw)
    )


def published(commands: list[Any], topic: str) -> list[dict[str, Any]]:
    return [json.loads(c.payload) for c in commands if isinstance(c, Publish) and c.topic == topic]


def sample(cpu: float, rss: int, read: int = 0) -> ProcessSample:
    return ProcessSample(
        cpu_user_seconds=1.25,
        cpu_system_seconds=0.5,
        cpu_percent=cpu,
        rss_bytes=rss,
        memory_percent=1.5,
        thread_count=7,
        fd_count=12,
        disk_read_bytes=read,
        disk_write_bytes=0,
        container_usage_bytes=1000,
        container_limit_bytes=None,
    )


def test_metrics_are_requested_on_their_own_deadline_next_to_heartbeats() -> None:
    e = engine(metrics_interval=3.0)
    e.on_connected(0.0)
    e.take_commands()
    assert e.next_deadline() == 3.0  # metrics before the 5 s heartbeat
    e.on_timer(3.0)
    assert e.take_commands() == [CollectMetrics(())]
    assert e.next_deadline() == 5.0
    e.on_timer(5.0)
    assert not [c for c in e.take_commands() if isinstance(c, CollectMetrics)]
    e.on_timer(6.0)
    assert [c for c in e.take_commands() if isinstance(c, CollectMetrics)] == [CollectMetrics(())]


def test_zero_interval_disables_metrics_and_disconnected_engine_asks_nothing() -> None:
    e = engine(metrics_interval=0)
    e.on_connected(0.0)
    e.take_commands()
    for now in range(1, 30):
        e.on_timer(float(now))
    assert not [c for c in e.take_commands() if isinstance(c, CollectMetrics)]
    e2 = engine(metrics_interval=1.0)
    e2.on_connected(0.0)
    e2.on_disconnected(0.5)
    e2.take_commands()
    assert e2.next_deadline() is None
    e2.metrics_sampled(sample(1.0, 1), 2.0, 1.0)
    assert not e2.take_commands()


def test_proplet_metrics_in_the_rust_format_with_a_systemtime_timestamp() -> None:
    e = engine(metrics_interval=10.0)
    e.on_connected(0.0)
    e.take_commands()
    e.metrics_sampled(sample(25.0, 50_000_000), 10.0, 1_700_000_000.25)
    (pm,) = published(e.take_commands(), T.metrics)
    assert pm == {
        "proplet_id": "me",
        "namespace": "default",
        "timestamp": {"secs_since_epoch": 1_700_000_000, "nanos_since_epoch": 250_000_000},
        "cpu_metrics": {"user_seconds": 1.25, "system_seconds": 0.5, "percent": 25.0},
        "memory_metrics": {
            "rss_bytes": 50_000_000,
            "heap_alloc_bytes": 0,
            "heap_sys_bytes": 0,
            "heap_inuse_bytes": 0,
            "container_usage_bytes": 1000,
        },
    }
    decoded = wire.decode(T, T.metrics, json.dumps(pm).encode())
    assert isinstance(decoded, wire.PropletMetrics)
    assert decoded.timestamp == pytest.approx(1_700_000_000.25)


def test_task_metrics_aggregate_over_the_samples_of_each_running_task() -> None:
    e = engine(metrics_interval=10.0)
    e.on_connected(0.0)
    e.handle(T.start, START, 1.0)
    e.take_commands()
    e.metrics_sampled(sample(10.0, 100, read=500), 11.0, 1e9)
    e.metrics_sampled(sample(30.0, 300, read=800), 21.0, 1e9 + 10)
    last = published(e.take_commands(), T.task_metrics)[-1]
    assert last["task_id"] == "t1" and last["proplet_id"] == "me"
    assert last["metrics"] == {
        "cpu_percent": 30.0,
        "memory_bytes": 300,
        "memory_percent": 1.5,
        "disk_read_bytes": 800,
        "disk_write_bytes": 0,
        "uptime_seconds": 20,
        "thread_count": 7,
        "file_descriptor_count": 12,
    }
    assert last["aggregated"] == {
        "avg_cpu_usage": 20.0,
        "max_cpu_usage": 30.0,
        "avg_memory_usage": 200,
        "max_memory_usage": 300,
        "total_disk_read": 300,
        "total_disk_write": 0,
        "sample_count": 2,
    }
    e.task_finished("t1", "3", None, 22.0)
    e.take_commands()
    e.metrics_sampled(sample(1.0, 1), 31.0, 1e9 + 20)
    assert not published(e.take_commands(), T.task_metrics)  # finished tasks are not reported


def test_a_result_the_driver_could_not_publish_is_resent_after_reconnect() -> None:
    e = engine()
    e.on_connected(0.0)
    e.handle(T.start, START, 1.0)
    e.task_finished("t1", "3", None, 2.0)
    (publish,) = [c for c in e.take_commands() if isinstance(c, Publish) and c.topic == T.results]
    e.publish_failed(publish.topic, publish.payload)
    e.publish_failed(T.alive, b"{}")  # heartbeats are not worth keeping
    e.on_disconnected(2.5)
    e.on_connected(3.0)
    assert [r["task_id"] for r in published(e.take_commands(), T.results)] == ["t1"]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"metrics_interval": -1}, "metrics_interval must be >= 0"),
        ({"heartbeat_interval": 0}, "heartbeat_interval must be > 0"),
        ({"max_instances": -2}, "max_instances must be >= 0"),
    ],
)
def test_bad_config_is_refused_naming_the_field(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PropletConfig(proplet_id="me", **kw)


def _start_with_profile(task_id: str, **profile: Any) -> bytes:
    full = {k: True for k in wire.messages.MONITORING_BOOL_KEYS} | {"interval": 0, "history_size": 10}
    return json.dumps(
        {
            "id": task_id,
            "name": "add",
            "file": "AGFzbQEAAAA=",
            "proplet_id": "me",
            "monitoring_profile": full | profile,
        }
    ).encode()


def test_a_tasks_monitoring_profile_decides_its_task_metrics() -> None:
    e = engine(metrics_interval=1.0)
    e.on_connected(0.0)
    e.handle(T.start, _start_with_profile("quiet", enabled=False), 0.0)
    e.handle(T.start, _start_with_profile("local", export_to_mqtt=False), 0.0)
    e.handle(T.start, _start_with_profile("slow", interval=10), 0.0)
    e.handle(T.start, START, 0.0)  # no profile: every sample
    e.take_commands()
    sent = []
    for now in range(1, 13):
        e.metrics_sampled(sample(1.0, 1), float(now), 1_700_000_000.0 + now)
        sent += [m["task_id"] for m in published(e.take_commands(), T.task_metrics)]
    assert sent.count("t1") == 12 and sent.count("slow") == 2  # at 1 s and 11 s
    assert "quiet" not in sent and "local" not in sent
