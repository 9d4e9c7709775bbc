"""WasmtimeRuntime with real wasmtime and hand-written WAT modules/components (tests/wasm/)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import wasmtime

from proplets.runtime import CancelToken, Limits, Preopen, RunRequest, memory_requirements, wasmtime_runtime
from proplets.runtime.wasmtime_runtime import WasmtimeRuntime

WASM_DIR = Path(__file__).resolve().parents[1] / "wasm"
SAMPLES = Path(__file__).resolve().parents[2] / "proplets" / "wasm"


def wasm(name: str) -> bytes:
    return bytes(wasmtime.wat2wasm((WASM_DIR / name).read_text()))


@pytest.fixture(scope="module")
def rt() -> Iterator[WasmtimeRuntime]:
    runtime = WasmtimeRuntime()
    yield runtime
    runtime.close()


@pytest.fixture(scope="module")
def core() -> bytes:
    return wasm("core.wat")


def req(binary: bytes, function: str = "", *inputs: str | int | float, **kw: object) -> RunRequest:
    return RunRequest("t-1", binary, function, tuple(inputs), **kw)  # type: ignore[arg-type]


# -- core modules -----------------------------------------------------------------------------------


def test_sample_add_module_for_the_demo(rt: WasmtimeRuntime) -> None:
    add = bytes(wasmtime.wat2wasm((SAMPLES / "add.wat").read_text()))
    assert rt.run(req(add, "add", "2", "40")).results == "42"
    assert rt.run(req(add, "main", 1, 2)).results == "3"  # the embedded profile's entry point


def test_core_call_types_fallback_initialize_and_all_values(rt: WasmtimeRuntime, core: bytes) -> None:
    out = rt.run(req(core, "add", "2", 40))
    assert (out.results, out.error, out.kind, out.values) == ("42", None, "core", (42,))
    assert rt.run(req(core, "", 6, 7)).results == "42"  # no name -> main
    assert rt.run(req(core, "fl-round-1", 6, 7)).results == "42"  # no such export -> main
    assert rt.run(req(core, "get_init")).results == "7"  # _initialize ran first
    assert rt.run(req(core, "mix", "5", "1.5", 2.25)).results == "8.75"
    assert rt.run(req(core, "half", "1")).results == "0.5"
    pair = rt.run(req(core, "pair"))
    assert pair.results == "4" and pair.values == (4, -5)  # first value, all exposed
    assert rt.run(req(core, "nothing")).results == ""
    assert rt.run(req(core, "fib", 30)).fuel_consumed


def test_core_bad_inputs_are_clear_errors(rt: WasmtimeRuntime, core: bytes) -> None:
    assert "out of range [-2147483648, 2147483647]" in (rt.run(req(core, "add", "2147483648", 1)).error or "")
    assert "expects 2 argument(s) (i32, i32), got 1" in (rt.run(req(core, "add", 1)).error or "")
    assert "unsupported parameter type" in (rt.run(req(core, "takes_ref", 1)).error or "")
    no_main = bytes(wasmtime.wat2wasm('(module (func (export "f")))'))
    err = rt.run(req(no_main, "g")).error or ""
    assert "export 'g' not found" in err and "module exports: f" in err


def test_a_named_export_that_is_missing_fails_not_main(rt: WasmtimeRuntime, core: bytes) -> None:
    out = rt.run(req(core, "ad", 6, 7))  # a typo: `main` exists, but must not run in its place
    assert out.results == "" and out.error is not None
    assert "export 'ad' not found" in out.error and "add" in out.error and "main" in out.error
    assert "invalid wasm core" in (rt.run(req(b"\0asm\x01\0\0\0garbage")).error or "")
    assert "not a WebAssembly binary" in (rt.run(req(b"hello")).error or "")


def test_trap_is_reported_with_its_message(rt: WasmtimeRuntime, core: bytes) -> None:
    out = rt.run(req(core, "div", 1, 0))
    assert out.error == "wasm trap: integer divide by zero" and out.results == ""


# -- small pure modules run inline (WasmtimeRuntime.run_inline) -------------------------------------


def test_a_small_pure_module_runs_inline_with_the_outcome_it_has_on_a_thread(core: bytes) -> None:
    with WasmtimeRuntime() as fresh:
        assert fresh.run_inline(req(core, "add", 2, 40)) is None  # not compiled yet: no compiling there
        threaded = fresh.run(req(core, "add", 2, 40))
        inline = fresh.run_inline(req(core, "add", 2, 40))
        assert inline is not None
        fields = ("results", "error", "values", "fuel_consumed", "kind", "exit_code")
        assert [getattr(inline, f) for f in fields] == [getattr(threaded, f) for f in fields]
        assert (inline.results, inline.error) == ("42", None)
        assert inline.notes[1:] == threaded.notes[1:]  # entry point, fuel consumed


def test_a_pure_module_past_the_inline_budget_is_dropped_then_runs_on_a_thread(core: bytes) -> None:
    reps = 10_000  # fib(30) 10,000 times: a few million fuel, well past INLINE_FUEL
    expected = (832_040 * reps + 2**31) % 2**32 - 2**31  # i32 arithmetic wraps
    assert 1_000 * reps > wasmtime_runtime.INLINE_FUEL
    with WasmtimeRuntime() as fresh:
        fresh.run(req(core, "add", 1, 1))
        assert fresh.run_inline(req(core, "fib_reps", 30, reps)) is None
        # The module is remembered as a long one: its later runs go to a thread at once.
        assert fresh.run_inline(req(core, "add", 1, 2)) is None
        out = fresh.run(req(core, "fib_reps", 30, reps))
        assert (out.results, out.error) == (str(expected), None)


def test_an_inline_run_that_spends_its_own_fuel_limit_fails_as_on_a_thread(core: bytes) -> None:
    with WasmtimeRuntime() as fresh:
        fresh.run(req(core, "add", 1, 1))
        out = fresh.run_inline(req(core, "spin", limits=Limits(fuel=200_000)))
        assert out is not None
        assert out.error == "CPU budget exhausted (fuel 200000)" and out.fuel_consumed == 200_000
        stopped = CancelToken()
        stopped.cancel()
        before = fresh.run_inline(req(core, "add", 1, 1), stopped)
        assert before is not None and before.error == "stopped"


def test_a_module_that_imports_anything_never_runs_inline() -> None:
    wasi = wasm("wasi_cmd.wat")
    imports_host = bytes(wasmtime.wat2wasm('(module (import "env" "f" (func)) (func (export "main")))'))
    with WasmtimeRuntime() as fresh:
        for binary in (wasi, imports_host):
            fresh.run(req(binary))
            assert fresh.run_inline(req(binary)) is None


# -- hostile modules --------------------------------------------------------------------------------


def test_infinite_loop_under_fuel(rt: WasmtimeRuntime, core: bytes) -> None:
    out = rt.run(req(core, "spin", limits=Limits(fuel=200_000)))
    assert out.error == "CPU budget exhausted (fuel 200000)" and out.fuel_consumed == 200_000


def test_infinite_loop_under_wall_time_only(rt: WasmtimeRuntime, core: bytes) -> None:
    out = rt.run(req(core, "spin", limits=Limits(timeout_s=0.1)))
    assert out.error == "wall-time limit of 0.1 s exceeded"


def test_memory_bomb_is_contained(rt: WasmtimeRuntime, core: bytes) -> None:
    cap = 8 * 65536
    out = rt.run(req(core, "grow_bomb", limits=Limits(memory_bytes=cap)))
    assert out.error is not None and out.error.startswith(f"memory limit of {cap} bytes exceeded")
    # the guest saw -1 from memory.grow and the host is fine: the next run works
    assert rt.run(req(core, "grow_polite", limits=Limits(memory_bytes=cap))).results == "8"
    assert memory_requirements(core) == (1, None)
    too_small = rt.run(req(core, "add", 1, 2, limits=Limits(memory_bytes=0)))
    assert (too_small.error or "").startswith("memory limit of 0 bytes exceeded")


def test_output_flood_is_stopped_and_truncated(rt: WasmtimeRuntime) -> None:
    out = rt.run(req(wasm("wasi_flood.wat"), limits=Limits(output_bytes=100_000, timeout_s=10)))
    assert out.error == "output exceeded 100000 bytes"
    assert len(out.stdout) == 100_000 and set(out.stdout) == {ord("x")}


def test_stop_from_another_thread_mid_run(rt: WasmtimeRuntime, core: bytes) -> None:
    cancel = CancelToken()
    started = threading.Event()
    result: list[object] = []

    def run() -> None:
        started.set()
        result.append(rt.run(req(core, "spin", limits=Limits(timeout_s=30)), cancel))

    worker = threading.Thread(target=run)
    worker.start()
    started.wait()
    time.sleep(0.05)
    assert worker.is_alive()
    cancel.cancel()
    worker.join(timeout=5)
    assert not worker.is_alive()
    assert result[0].error == "stopped"  # type: ignore[attr-defined]
    assert rt.run(req(core, "add", 1, 1), cancel).error == "stopped"  # cancelled before start


COUNTER_WAT = """(module
  (global $n (mut i32) (i32.const 0))
  (func (export "bump") (result i32) (global.set $n (i32.add (global.get $n) (i32.const 1))) (global.get $n))
  (func (export "spin") (loop $l (br $l))))"""


def test_a_cached_module_gets_a_fresh_instance_and_its_limits_on_every_run(rt: WasmtimeRuntime) -> None:
    counter = bytes(wasmtime.wat2wasm(COUNTER_WAT))
    compiles = rt.modules.stats.compiles
    # instance state never carries over: every run starts from the module's initial globals
    assert [rt.run(req(counter, "bump")).results for _ in range(3)] == ["1", "1", "1"]
    assert rt.modules.stats.compiles == compiles + 1  # compiled once, from the cache afterwards
    cancel = CancelToken()
    stopper = threading.Timer(0.05, cancel.cancel)
    stopper.start()
    assert rt.run(req(counter, "spin", limits=Limits(timeout_s=30)), cancel).error == "stopped"
    timed_out = rt.run(req(counter, "spin", limits=Limits(timeout_s=0.1)))
    assert timed_out.error == "wall-time limit of 0.1 s exceeded"
    out_of_fuel = rt.run(req(counter, "spin", limits=Limits(fuel=10_000)))
    assert out_of_fuel.error == "CPU budget exhausted (fuel 10000)"
    assert rt.run(req(counter, "bump")).results == "1"  # after a stopped and a timed-out run


# -- WASI -------------------------------------------------------------------------------------------


def test_wasi_argv_env_stdin_stdout_stderr(rt: WasmtimeRuntime, tmp_path: Path) -> None:
    out = rt.run(RunRequest("t-2", wasm("wasi_cmd.wat"), "", (), ("a", "b c"), {"K": "V", "TASK": "t-2"},
                            b"line one\nline two", dirs=(Preopen(str(tmp_path), "/data"),)))
    assert out.error is None and out.kind == "wasi" and out.exit_code == 0
    assert out.stdout == b"task.wasm\na\nb c\nK=V\nTASK=t-2\nline one\nline two"
    assert out.stderr == b"warn\n"
    assert out.results == "task.wasm\na\nb c\nK=V\nTASK=t-2\nline one\nline two"  # stdout only


def test_wasi_exit_code_with_stderr_tail(rt: WasmtimeRuntime) -> None:
    out = rt.run(req(wasm("wasi_exit.wat")))
    assert (out.exit_code, out.error, out.stderr) == (3, "exited with code 3: boom", b"boom\n")


# -- components -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def calc() -> bytes:
    return wasm("calc.component.wat")


@pytest.mark.parametrize(("function", "inputs", "expected"), [
    ("add", ("2", "40"), "42"),
    ("echo", ('"h\\u{e9}llo \\"q\\""',), '"héllo \\"q\\""'),
    ("sum", ("{x: 3, y: 4}",), "7"),
    ("maybe", ("some(5)",), "5"),
    ("maybe", ("none",), "-1"),
    ("code", ("blue",), "2"),
    ("same", ("{read, exec}",), "{read, exec}"),
    ("first", ("[7, 8]",), "some(7)"),
    ("first", ("[]",), "none"),
    ("check", ("5",), "ok(5)"),
    ("check", ("-5",), 'err("negative")'),
    ("example:calc/api#add", ("1", "2"), "3"),
])
def test_component_call_with_wave(rt: WasmtimeRuntime, calc: bytes, function: str, inputs: tuple[str, ...],
                                  expected: str) -> None:
    out = rt.run(req(calc, function, *inputs))
    assert (out.results, out.error, out.kind) == (expected, None, "component")


def test_component_errors(rt: WasmtimeRuntime, calc: bytes) -> None:
    mismatch = rt.run(req(calc, "add", "1")).error or ""
    assert "argument count mismatch: 'add' expects 2 (a, b), got 1" in mismatch
    assert "bad WAVE input for parameter 'a'" in (rt.run(req(calc, "add", "x", "1")).error or "")
    missing = rt.run(req(calc, "missing")).error or ""
    assert "component export 'missing' not found" in missing and "example:calc/api" in missing
    spin = rt.run(req(calc, "example:calc/api#spin", limits=Limits(timeout_s=0.1)))
    assert spin.error == "wall-time limit of 0.1 s exceeded"
    assert rt.run(req(calc, "example:calc/api#spin", limits=Limits(fuel=10_000))).error == \
        "CPU budget exhausted (fuel 10000)"


def test_component_wasi_cli_run_command(rt: WasmtimeRuntime) -> None:
    ok = rt.run(req(wasm("cmd_ok.component.wat")))
    assert (ok.kind, ok.error, ok.exit_code, ok.results) == ("wasi", None, 0, "")
    bad = rt.run(req(wasm("cmd_err.component.wat")))
    assert (bad.error, bad.exit_code) == ("exited with code 1", 1)


# -- cache and concurrency --------------------------------------------------------------------------


def test_disk_cache_shared_across_runtime_instances(tmp_path: Path, core: bytes, calc: bytes) -> None:
    with WasmtimeRuntime(cache_dir=tmp_path) as first:
        assert first.run(req(core, "add", 1, 2)).results == "3"
        assert first.run(req(calc, "add", "1", "2")).results == "3"
        assert first.run(req(core, "add", 1, 2)).results == "3"
        assert (first.modules.stats.compiles, first.modules.stats.memory_hits) == (1, 1)
    files = list(tmp_path.glob("*.cwasm"))
    assert len(files) == 2
    with WasmtimeRuntime(cache_dir=tmp_path) as second:
        assert second.run(req(core, "add", 1, 2)).results == "3"
        assert second.run(req(calc, "add", "1", "2")).results == "3"
        assert second.modules.stats.disk_hits == 1 and second.modules.stats.compiles == 0
        assert second.components.stats.disk_hits == 1
    for f in files:
        f.write_bytes(b"corrupt")
    with WasmtimeRuntime(cache_dir=tmp_path) as third:
        assert third.run(req(core, "add", 1, 2)).results == "3"  # recompiled, not loaded
        assert third.modules.stats.corrupt_files == 1 and third.modules.stats.compiles == 1


def test_24_concurrent_runs_from_threads(rt: WasmtimeRuntime, core: bytes) -> None:
    def one(i: int) -> str:
        return rt.run(req(core, "fib_reps", 20 + i % 5, 200)).results

    with ThreadPoolExecutor(24) as pool:
        results = list(pool.map(one, range(24)))
    fib = {20: 6765, 21: 10946, 22: 17711, 23: 28657, 24: 46368}
    assert results == [str(fib[20 + i % 5] * 200) for i in range(24)]


def test_gil_is_released_while_wasm_runs(rt: WasmtimeRuntime, core: bytes) -> None:
    # a pure-Python thread must make progress while a long wasm call runs on another thread
    done = threading.Event()
    counter = [0]

    def spin() -> None:
        while not done.is_set():
            counter[0] += 1

    t = threading.Thread(target=spin)
    t.start()
    try:
        before = counter[0]
        out = rt.run(req(core, "spin", limits=Limits(timeout_s=0.3)))
        during = counter[0] - before
    finally:
        done.set()
        t.join()
    assert out.error is not None and during > 1000
