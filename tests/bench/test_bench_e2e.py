"""End-to-end orchestrator throughput as a pytest-benchmark: manager + embedded broker + one Python
proplet in this process, 10 `add` tasks submitted through the REST API, plus the broker's raw QoS 1
round trip. Under the default ``--benchmark-disable`` each body runs once as a correctness pass.

Run the figures with ``pytest tests/bench/test_bench_e2e.py --benchmark-enable``; the full matrix
(1/10/50 proplets, subprocess layout, Mosquitto) is ``propeller bench e2e`` (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from orchestrator.adapters.broker import EmbeddedBroker
from orchestrator.bench import (
    E2EResult,
    RoundTrip,
    broker_roundtrip,
    cpu_seconds_of,
    describe_mosquitto,
    e2e_table,
    histogram_quantile,
    parse_histogram,
    parse_sample,
    percentile,
    proplet_shares,
    py_spy_top,
    run_e2e,
)
from tests.conftest import free_port
from tests.support.procs import PrivateMosquitto

TASKS = 10


def test_bench_e2e_tasks_through_api_to_stored_result(benchmark: Any) -> None:
    def run() -> E2EResult:
        return asyncio.run(run_e2e("embedded", 1, TASKS, 4, layout="inprocess", rtt_messages=200))

    result = benchmark.pedantic(run, rounds=3, iterations=1)
    assert result.errors == 0, result.error_samples
    assert result.completed == TASKS and len(result.latencies_s) == TASKS
    assert all(0 < s < 60 for s in result.latencies_s)
    assert result.tasks_per_s > 0
    # The manager's own dispatch→result histogram saw exactly the measured tasks.
    assert not math.isnan(result.manager_p50_le_s)
    assert result.broker_rtt is not None and result.broker_rtt.messages == 200
    benchmark.extra_info.update({k: v for k, v in result.summary().items() if k != "error_samples"})
    assert "embedded" in e2e_table([result])


def test_bench_raw_qos1_roundtrip_embedded_broker(benchmark: Any) -> None:
    async def run() -> RoundTrip:
        broker = EmbeddedBroker("127.0.0.1", 0)
        await broker.start()
        try:
            return await broker_roundtrip(broker.url, f"bench-rtt/{uuid.uuid4().hex[:8]}", 1000)
        finally:
            await broker.stop()

    rtt = benchmark.pedantic(lambda: asyncio.run(run()), rounds=3, iterations=1)
    assert rtt.messages == 1000 and rtt.rate > 0 and rtt.p50_s <= rtt.p99_s


# ---------------------------------------------------------------------- the pure helpers behind the figures

METRICS = """\
# TYPE propeller_dispatch_latency_seconds histogram
propeller_dispatch_latency_seconds_bucket{le="0.01"} 1.0
propeller_dispatch_latency_seconds_bucket{le="0.1"} 5.0
propeller_dispatch_latency_seconds_bucket{le="1.0"} 10.0
propeller_dispatch_latency_seconds_bucket{le="+Inf"} 10.0
propeller_proplets_known 1000.0
propeller_messages_malformed_total{topic="control/proplet/alive"} 3.0
"""


def test_histogram_quantile_counts_only_observations_between_two_scrapes() -> None:
    after = parse_histogram(METRICS, "propeller_dispatch_latency_seconds")
    assert after == [(0.01, 1.0), (0.1, 5.0), (1.0, 10.0), (math.inf, 10.0)]
    before = [(0.01, 1.0), (0.1, 5.0), (1.0, 5.0), (math.inf, 5.0)]
    # the 5 new observations all fell in (0.1, 1.0]: the earlier fast ones must not pull p50 down
    assert histogram_quantile(before, after, 0.5) == 1.0
    assert histogram_quantile([], after, 0.5) == 0.1
    assert math.isnan(histogram_quantile(after, after, 0.5))


def test_parse_sample_reads_plain_and_labelled_samples() -> None:
    assert parse_sample(METRICS, "propeller_proplets_known") == 1000
    assert parse_sample(METRICS, "propeller_messages_malformed_total", 'topic="control/proplet/alive"') == 3
    assert parse_sample(METRICS, "propeller_messages_malformed_total", 'topic="other"') == 0


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50 and percentile(values, 99) == 99 and percentile(values, 100) == 100
    assert percentile([3.0], 99) == 3.0
    assert math.isnan(percentile([], 50))


def test_py_spy_top_shares_are_inclusive_and_name_function_and_file(tmp_path: Path) -> None:
    raw = tmp_path / "manager.txt"
    raw.write_text(
        "main (cli.py:9);run (/x/orchestrator/service.py:5);write (/x/orchestrator/adapters/store.py:7) 3\n"
        "main (cli.py:9);run (/x/orchestrator/service.py:5) 1\n"
        "main (cli.py:9);idle 4\n"
    )
    lines = py_spy_top(raw).splitlines()
    assert lines[0] == "8 samples"
    assert lines[1:4] == [
        " 100.0%  main (cli.py:9)",
        "  50.0%  run (orchestrator/service.py:5)",
        "  50.0%  idle",
    ]
    assert lines[4] == "  37.5%  write (adapters/store.py:7)"


def test_cpu_seconds_of_leaves_out_a_process_that_has_ended() -> None:
    """A broker restarted during a run has no figure (the run's total leaves it out), not a crash."""
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    read = cpu_seconds_of([os.getpid(), ended.pid])
    assert list(read) == [os.getpid()] and read[os.getpid()] > 0


def test_proplets_are_spread_evenly_over_processes_with_contiguous_ids() -> None:
    assert proplet_shares(10, 2) == [(0, 5), (5, 5)]
    assert proplet_shares(5, 2) == [(0, 3), (3, 2)]
    assert proplet_shares(1, 2) == [(0, 1)]  # never an empty process
    assert proplet_shares(0, 2) == []
    with pytest.raises(ValueError, match="proplet processes must be >= 1"):
        proplet_shares(4, 0)


@pytest.mark.skipif(shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists(),
                    reason="needs the mosquitto binary")  # fmt: skip
def test_private_mosquitto_run_names_the_recommended_config_it_used(tmp_path: Path) -> None:
    """``--mosquitto private``: a broker of its own with set_tcp_nodelay, and the output says so."""
    out = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "bench", "e2e", "--proplets", "1", "--broker", "mosquitto",
         "--mosquitto", "private", "--tasks", "5", "--concurrency", "2", "--rtt-messages", "0", "--no-celery",
         "--output", str(tmp_path / "e2e.json")],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    said = next(line for line in out.stdout.splitlines() if line.startswith("broker: mosquitto at"))
    assert "set_tcp_nodelay true" in said and "127.0.0.1:1883" not in said
    (row,) = json.loads((tmp_path / "e2e.json").read_text())["e2e"]
    assert row["completed"] == 5 and row["broker_config"] == said.removeprefix("broker: ")
    # the private Mosquitto's own CPU is measured, and part of the run's total
    assert row["broker_cpu_s"] is not None and 0 <= row["broker_cpu_s"] <= row["system_cpu_s"]
    assert row["system_cpu_s"] >= row["manager_cpu_s"] + row["proplets_cpu_s"] + row["broker_cpu_s"]


def test_describe_mosquitto_reads_the_config_of_the_broker_on_that_port(tmp_path: Path) -> None:
    broker = PrivateMosquitto(tmp_path)  # its conf leaves set_tcp_nodelay at Mosquitto's default
    broker.start()
    try:
        said = describe_mosquitto(broker.url)
    finally:
        broker.stop()
    assert f"pid {broker.pid}" in said and str(tmp_path / "mosquitto.conf") in said
    assert "set_tcp_nodelay false (default)" in said and "max_queued_messages 100000" in said
    assert "not visible" in describe_mosquitto(f"mqtt://127.0.0.1:{free_port()}")
