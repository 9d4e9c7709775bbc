"""``--otel``: one task through a real manager and proplet (embedded broker, wasmtime) is one trace.

The manager's dispatch span, the proplet's execute span and the manager's result span share a trace
id and chain parent to child, carried over MQTT in the start's and the result's ``traceparent``.
Spans are collected with the SDK's in-memory exporter."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import wasmtime
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.conftest import free_port
from tests.integration.conftest import Cluster, _async, close_cluster, eventually, make_cluster

ADD = base64.b64encode(
    wasmtime.wat2wasm("""
(module (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))
""")
).decode()


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # the process has none yet: this one is global
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()


@pytest.fixture
async def traced(tmp_path: Path, spans: InMemorySpanExporter) -> AsyncIterator[Cluster]:
    spans.clear()
    c = await make_cluster("embedded://127.0.0.1:0", tmp_path, otel=True)
    try:
        yield c
    finally:
        await close_cluster(c)


def named(spans: InMemorySpanExporter, name: str, task_id: str) -> list[ReadableSpan]:
    return [s for s in spans.get_finished_spans()
            if s.name == name and (s.attributes or {}).get("propeller.task_id") == task_id]  # fmt: skip


async def test_one_task_is_one_connected_trace(traced: Cluster, spans: InMemorySpanExporter) -> None:
    c = traced
    await c.add_proplet("otel-a", otel=True)
    task = await c.run_task({"name": "add", "file": ADD, "inputs": [2, 40]})
    assert task["results"] == "42"

    async def all_three() -> bool:
        return all(named(spans, n, task["id"]) for n in ("propeller.dispatch", "propeller.execute",
                                                          "propeller.result"))  # fmt: skip

    await eventually(all_three, 10, "the dispatch, execute and result spans")
    [dispatch] = named(spans, "propeller.dispatch", task["id"])
    [execute] = named(spans, "propeller.execute", task["id"])
    [result] = named(spans, "propeller.result", task["id"])
    assert dispatch.context is not None and execute.context is not None and result.context is not None
    trace_id = dispatch.context.trace_id
    assert execute.context.trace_id == trace_id and result.context.trace_id == trace_id
    assert execute.parent is not None and execute.parent.span_id == dispatch.context.span_id
    assert result.parent is not None and result.parent.span_id == execute.context.span_id
    assert dispatch.kind is trace.SpanKind.PRODUCER and execute.kind is trace.SpanKind.CONSUMER
    assert (dispatch.attributes or {})["propeller.proplet_id"] == "otel-a"
    assert (execute.attributes or {})["propeller.attempt"] == 1
    assert result.status.is_ok


async def test_a_proplet_without_tracing_still_runs_a_traced_start(
    traced: Cluster, spans: InMemorySpanExporter
) -> None:
    # An upstream-like proplet ignores the extension key: the task runs, the manager's spans stand alone.
    c = traced
    await c.add_proplet("plain-a")
    task = await c.run_task({"name": "add", "file": ADD, "inputs": [1, 2]})
    assert task["results"] == "3"
    await eventually(lambda: _async(bool(named(spans, "propeller.result", task["id"]))), 10, "result span")
    [dispatch] = named(spans, "propeller.dispatch", task["id"])
    [result] = named(spans, "propeller.result", task["id"])
    assert not named(spans, "propeller.execute", task["id"])
    assert result.parent is None and dispatch.context is not None
    assert result.context is not None and result.context.trace_id != dispatch.context.trace_id


def test_a_bad_exporter_choice_is_refused_with_its_name(tmp_path: Path) -> None:
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "zipkinn", "PROPELLER_OTEL": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "manager", "--db", str(tmp_path / "m.db"),
         "--broker", "embedded://127.0.0.1:0", "--api", f"127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert "OTEL_TRACES_EXPORTER must be otlp, console or none, got 'zipkinn'" in run.stderr
