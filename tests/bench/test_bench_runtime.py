"""Runtime speed: cold compile vs memory-cache vs disk-cache start, instantiate+call, thread scaling.

Run with `pytest tests/bench --benchmark-enable`; with benchmarks disabled each runs once as a test.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from proplets.runtime import RunRequest
from proplets.runtime.wasmtime_runtime import WasmtimeRuntime

CORE = bytes(wasmtime.wat2wasm((Path(__file__).resolve().parents[1] / "wasm" / "core.wat").read_text()))


def _unique(i: int) -> bytes:
    # a distinct module per round so "cold" really compiles (a custom section changes the sha256)
    name = b"bench"
    payload = bytes([len(name)]) + name + i.to_bytes(8, "little")
    return CORE + bytes([0, len(payload)]) + payload


@pytest.fixture(scope="module")
def rt() -> Iterator[WasmtimeRuntime]:
    runtime = WasmtimeRuntime()
    yield runtime
    runtime.close()


def test_bench_cold_compile_start(benchmark: Any, rt: WasmtimeRuntime) -> None:
    counter = iter(range(10**9))
    out = benchmark(lambda: rt.run(RunRequest("b", _unique(next(counter)), "add", (1, 2))))
    assert out.results == "3"


def test_bench_warm_memory_cache_start(benchmark: Any, rt: WasmtimeRuntime) -> None:
    rt.run(RunRequest("b", CORE, "add", (1, 2)))
    out = benchmark(lambda: rt.run(RunRequest("b", CORE, "add", (1, 2))))
    assert out.results == "3"


def test_bench_disk_cache_start(benchmark: Any, tmp_path: Path) -> None:
    with WasmtimeRuntime(cache_dir=tmp_path) as warmup:
        warmup.run(RunRequest("b", CORE, "add", (1, 2)))

    def fresh_process_like() -> str:
        with WasmtimeRuntime(cache_dir=tmp_path, memory_cache_entries=1) as r:
            module = r.compile_module(CORE)  # disk hit: deserialize only
            assert r.modules.stats.disk_hits == 1
            return str(module)

    assert benchmark(fresh_process_like)


def test_bench_instantiate_and_call_small_export(benchmark: Any, rt: WasmtimeRuntime) -> None:
    module = rt.compile_module(CORE)
    engine = rt.engine

    def call() -> int:
        store = wasmtime.Store(engine)
        store.set_fuel(10**9)
        store.set_epoch_deadline(10**6)
        func = wasmtime.Instance(store, module, []).exports(store)["add"]
        assert isinstance(func, wasmtime.Func)
        value = func(store, 2, 40)
        store.close()
        return int(value)

    assert benchmark(call) == 42


@pytest.mark.parametrize("threads", [1, 24])
def test_bench_cpu_bound_thread_scaling(benchmark: Any, rt: WasmtimeRuntime, threads: int) -> None:
    jobs = 24
    request = RunRequest("b", CORE, "fib_reps", (25, 1_000_000))

    def batch() -> list[str]:
        with ThreadPoolExecutor(threads) as pool:
            return [o.results for o in pool.map(lambda _: rt.run(request), range(jobs))]

    t0, c0 = time.perf_counter(), time.process_time()
    results = benchmark.pedantic(batch, rounds=1, iterations=1)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    benchmark.extra_info.update(jobs=jobs, threads=threads, wall_s=wall, cpu_s=cpu, cores=os.cpu_count())
    assert len(set(results)) == 1 and results[0] != ""
