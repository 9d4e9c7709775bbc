"""The embedded profile of the proplet engine, driven by hand: firmware wire shapes, WAMR-like memory
admission and release, instance limit, and oversized messages that become clear error results."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest

from orchestrator import wire
from proplets import profile
from proplets.core import PropletConfig, PropletEngine, Publish, RunTask
from proplets.runtime.budget import BudgetConfig, KiB

T = wire.Topics("d", "c")
HEADER = b"\0asm\x01\0\0\0"


def module(pages: int = 0, pad: int = 0) -> bytes:
    """A valid core module declaring `pages` of linear memory, padded with a custom section."""
    out = HEADER
    if pages:
        out += bytes([0x05, 0x03, 0x01, 0x00, pages])
    if pad:
        body = b"\x01x" + b"\0" * pad
        out += bytes([0x00]) + _uleb(len(body)) + body
    return out


def _uleb(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def engine(budget: BudgetConfig | None = None, **kw: Any) -> PropletEngine:
    e = PropletEngine(
        PropletConfig(
            proplet_id="dev1",
            domain="d",
            channel="c",
            namespace="embedded",
            profile=wire.Profile.EMBEDDED,
            budget=budget or profile.ESP32S3.budget,
            report_running=False,
            **kw,
        )
    )
    e.on_connected(0.0)
    e.take_commands()
    return e


def start(task_id: str, **extra: Any) -> bytes:
    spec = {"id": task_id, "name": "main", "file": "AGFzbQEAAAA=", "inputs": [1, 2], "proplet_id": "dev1"}
    return json.dumps({**spec, **extra}).encode()


def published(commands: list[Any], topic: str) -> list[dict[str, Any]]:
    return [json.loads(c.payload) for c in commands if isinstance(c, Publish) and c.topic == topic]


def test_discovery_and_heartbeat_look_like_the_firmware() -> None:
    e = PropletEngine(
        PropletConfig(
            proplet_id="dev1",
            domain="d",
            channel="c",
            namespace="embedded",
            profile=wire.Profile.EMBEDDED,
            budget=profile.ESP32S3.budget,
            report_running=False,
            metadata=profile.discovery_metadata(
                profile.ESP32S3, total_bytes=0, free_bytes=0, max_instances=0
            ),
        )
    )
    e.on_connected(0.0)
    commands = e.take_commands()
    (disc,) = published(commands, T.create)
    md = disc["metadata"]
    assert disc["namespace"] == "embedded"
    assert (md["os"], md["wasm_runtime"], md["cpu_arch"]) == ("zephyr", "wamr", "xtensa")
    assert md["total_memory_bytes"] == md["free_memory_bytes"] == 64 * KiB
    assert md["max_instances"] == 10
    (beat,) = [c.payload for c in commands if isinstance(c, Publish) and c.topic == T.alive]
    assert beat == b'{"status":"alive","proplet_id":"dev1","namespace":"embedded"}'


def test_instance_that_does_not_fit_is_refused_with_need_and_free_and_nothing_runs() -> None:
    e = engine()
    e.handle(T.start, start("big"), 1.0)
    assert [c.start.id for c in e.take_commands() if isinstance(c, RunTask)] == ["big"]
    wasm = module(pages=1)  # 64 KiB linear memory + 48 KiB stacks/heap > 64 KiB device heap
    refusal = e.admit("big", wasm)
    need = len(wasm) + 64 * KiB + 48 * KiB
    assert refusal == f"out of memory: need {need} bytes, free {64 * KiB} bytes"
    e.task_finished("big", "", refusal, 2.0)
    (result,) = published(e.take_commands(), T.results)
    assert result == {"task_id": "big", "results": "", "error": refusal}  # firmware shape: no proplet_id
    assert e.budget is not None and e.budget.used_bytes == 0


def test_memory_is_held_while_running_and_released_when_the_task_ends() -> None:
    e = engine()
    small = module(pad=100)
    e.handle(T.start, start("a"), 1.0)
    e.handle(T.start, start("b"), 1.0)
    assert e.admit("a", small) is None
    assert e.budget is not None and e.budget.used_bytes == len(small) + 48 * KiB
    assert e.admit("b", small) is not None and e.admit("b", small).startswith("out of memory")  # type: ignore[union-attr]
    e.task_finished("a", "3", None, 2.0)
    assert e.budget.used_bytes == 0
    e.handle(T.start, start("c"), 3.0)
    assert e.admit("c", small) is None


def test_discovery_after_reconnect_announces_the_free_memory_left() -> None:
    e = engine()
    e.handle(T.start, start("a"), 1.0)
    e.admit("a", module())
    e.on_disconnected(2.0)
    e.on_connected(3.0)
    (disc,) = published(e.take_commands(), T.create)
    assert disc["metadata"]["free_memory_bytes"] == 64 * KiB - (8 + 48 * KiB)


def test_instance_limit_of_the_budget_refuses_the_extra_start() -> None:
    e = engine(BudgetConfig(heap_bytes=1024 * KiB, max_instances=2))
    for task_id in ("a", "b", "c"):
        e.handle(T.start, start(task_id), 1.0)
    commands = e.take_commands()
    assert [c.start.id for c in commands if isinstance(c, RunTask)] == ["a", "b"]
    (busy,) = published(commands, T.results)
    assert busy["task_id"] == "c" and busy["error"] == "proplet busy: 2/2 instances running"


def test_a_component_or_garbage_is_refused_before_it_runs() -> None:
    e = engine()
    e.handle(T.start, start("comp"), 1.0)
    e.handle(T.start, start("junk"), 1.0)
    assert "core modules only" in (e.admit("comp", b"\0asm\x0d\0\x01\0") or "")
    assert "invalid wasm module" in (e.admit("junk", b"hello") or "")


def test_oversized_start_gets_an_error_result_not_a_crash() -> None:
    e = engine()
    e.handle(T.start, start("huge", env={"PAD": "x" * 2000}), 1.0)
    commands = e.take_commands()
    assert not [c for c in commands if isinstance(c, RunTask)]
    (result,) = published(commands, T.results)
    assert result["task_id"] == "huge"
    assert "the embedded proplet reads at most 1023" in result["error"]


def test_result_too_large_for_1023_bytes_becomes_an_error_that_fits() -> None:
    e = engine()
    e.handle(T.start, start("t"), 1.0)
    e.take_commands()
    e.task_finished("t", ",".join(["2147483647"] * 200), None, 2.0)
    ((payload,),) = [
        [c.payload for c in e.take_commands() if isinstance(c, Publish) and c.topic == T.results]
    ]
    assert len(payload) <= 1023
    result = json.loads(payload)
    assert result["results"] == "" and "1023-byte buffer" in result["error"]


def test_embedded_metrics_use_uptime_and_the_heap_of_the_budget() -> None:
    from proplets.core import CollectMetrics, ProcessSample

    e = PropletEngine(
        PropletConfig(
            proplet_id="dev1",
            domain="d",
            channel="c",
            namespace="embedded",
            profile=wire.Profile.EMBEDDED,
            budget=profile.ESP32S3.budget,
            metrics_interval=30.0,
        )
    )
    e.on_connected(100.0)
    e.handle(T.start, start("a"), 101.0)
    e.admit("a", module())
    e.take_commands()
    e.on_timer(130.0)
    assert [c for c in e.take_commands() if isinstance(c, CollectMetrics)] == [CollectMetrics(("a",))]
    e.metrics_sampled(ProcessSample(cpu_percent=12.5, rss_bytes=10**8, thread_count=9), 130.0, 1.7e9)
    commands = e.take_commands()
    (pm,) = published(commands, T.metrics)
    used = 8 + 48 * KiB
    assert pm["timestamp"] == 30000  # k_uptime_get() milliseconds since boot
    assert pm["cpu_metrics"] == {"user_seconds": 0.0, "system_seconds": 0.0, "percent": 12.5}
    assert pm["memory_metrics"] == {
        "rss_bytes": 0,
        "heap_alloc_bytes": used,
        "heap_sys_bytes": 64 * KiB,
        "heap_inuse_bytes": used,
        "heap_free_bytes": 64 * KiB - used,
        "heap_max_alloc_bytes": used,
    }
    (tm,) = published(commands, T.task_metrics)
    assert tm["metrics"]["memory_bytes"] == used and tm["metrics"]["file_descriptor_count"] == 0
    assert tm["metrics"]["uptime_seconds"] == 29 and tm["timestamp"] == 30000


# ---------------------------------------------------------------------- profile helpers


def test_export_is_the_task_name_when_exported_else_main() -> None:
    assert profile.select_export("add", ["add", "main"]) == "add"
    assert profile.select_export("other", ["add", "main"]) == "main"
    with pytest.raises(ValueError, match=r"export 'main' not found.*exports: add, run"):
        profile.select_export("x", ["add", "run"])


def test_inputs_must_be_i32_and_the_error_names_the_input() -> None:
    assert profile.i32_inputs([1, "2", 3.0, " -4 "]) == (1, 2, 3, -4)
    with pytest.raises(ValueError, match=r"inputs\[1\] \('abc'\) is not an integer"):
        profile.i32_inputs([1, "abc"])
    with pytest.raises(ValueError, match=r"inputs\[0\] \(2147483648\) is out of i32 range"):
        profile.i32_inputs([2**31])


def test_results_are_comma_joined_i32s_and_no_return_value_is_the_firmware_error() -> None:
    assert profile.join_results([3, -1, 7]) == "3,-1,7"
    with pytest.raises(ValueError, match="Function has no return value"):
        profile.join_results([])
    with pytest.raises(ValueError, match="not an i32"):
        profile.join_results([1.5])


def test_function_exports_reads_the_export_section() -> None:
    wasmtime = pytest.importorskip("wasmtime")
    wasm = wasmtime.wat2wasm(
        '(module (memory (export "mem") 1) (func (export "main") (result i32) i32.const 1)'
        ' (func (export "add") (param i32 i32) (result i32) local.get 0))'
    )
    assert profile.function_exports(wasm) == ["main", "add"]
    with pytest.raises(ValueError, match="missing \\\\0asm header"):
        profile.function_exports(b"nope")


def test_unknown_profile_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown proplet profile 'esp8266' \\(known: host, esp32s3\\)"):
        profile.device_profile("esp8266")


def test_profile_module_is_sans_io() -> None:
    tree = ast.parse(Path(profile.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    forbidden = {"asyncio", "socket", "time", "threading", "wasmtime", "paho", "random", "serial", "httpx"}
    assert not imported & forbidden
