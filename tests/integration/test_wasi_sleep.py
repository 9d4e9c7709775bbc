"""A guest sleeping in WASI p1 `poll_oneoff` ends on a stop or its wall-time limit while it sleeps.

wasmtime's epoch interruption only reaches wasm code, so the proplet shadows `poll_oneoff` with its
own (proplets/runtime/wasip1_poll.py). These tests run the real proplet and wasmtime: a daemon that
sleeps 30 s at a time is stopped over MQTT, or hits its wall-time limit, and ends the way a task busy
in wasm code does; and our `poll_oneoff` answers every case the way wasmtime's own does.
"""

from __future__ import annotations

import base64
import struct
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from proplets.runtime import CancelToken, Limits, RunOutcome, RunRequest
from proplets.runtime import wasip1_poll as p1
from proplets.runtime.wasmtime_runtime import WasmtimeRuntime
from tests.integration.conftest import Cluster, eventually

WASM_DIR = Path(__file__).resolve().parents[1] / "wasm"
SLEEPER = wasmtime.wat2wasm((WASM_DIR / "daemon_sleep30.wat").read_text())
FOREVER = wasmtime.wat2wasm('(module (func (export "main") (loop (br 0))))')


def b64(wasm: bytes) -> str:
    return base64.b64encode(wasm).decode()


async def started_and_printed(c: Cluster, task_id: str) -> None:
    """Wait until the daemon has printed its first line: it is then asleep in poll_oneoff."""

    async def printed() -> bool:
        body = (await c.api.get(f"/tasks/{task_id}/logs", params={"live": 1})).json()
        return any(row["stream"] == "stdout" and "first line" in row["data"] for row in body["logs"])

    await eventually(printed, 30, f"daemon {task_id} to print its first line")


async def start(c: Cluster, spec: dict[str, Any]) -> str:
    created = await c.api.post("/tasks", json=spec)
    assert created.status_code == 201, created.text
    task_id: str = created.json()["id"]
    assert (await c.api.post(f"/tasks/{task_id}/start")).status_code == 200
    return task_id


async def final_runtime_notes(c: Cluster, task_id: str) -> str:
    """The runtime notes of the proplet's final record for the task's run."""
    rows: list[dict[str, Any]] = []

    async def final() -> bool:
        nonlocal rows
        rows = (await c.api.get(f"/tasks/{task_id}/logs")).json()["logs"]
        return any(row["final"] for row in rows)

    await eventually(final, 20, f"the final record of {task_id}")
    return "".join(row["data"] for row in rows if row["stream"] == "runtime")


def outcome(task: dict[str, Any]) -> tuple[Any, Any]:
    return task["state"], task.get("error")


async def test_a_stop_ends_a_daemon_asleep_in_poll_oneoff_as_it_ends_a_busy_one(
    embedded_cluster: Cluster,
) -> None:
    c = embedded_cluster
    proplet = await c.add_proplet("sleep-p1")
    sleeper = await start(c, {"name": "daemon", "file": b64(SLEEPER), "daemon": True})
    busy = await start(c, {"name": "main", "file": b64(FOREVER)})
    await started_and_printed(c, sleeper)

    async def running() -> bool:
        return int((await c.api.get(f"/tasks/{busy}")).json()["state"]) == 2

    await eventually(running, 30, "the busy task to run")
    for task_id in (sleeper, busy):
        assert (await c.api.post(f"/tasks/{task_id}/stop")).status_code == 200

    async def released() -> bool:  # the manager marks a stop at once; the proplet's run must end too
        return sleeper not in proplet.engine.running and busy not in proplet.engine.running

    # Within 20 s, while the 30 s sleep would still go on (generous, not a timing assert).
    await eventually(released, 20, "the proplet to end both runs")
    stopped = await c.wait_terminal(sleeper, timeout=20)
    stopped_busy = await c.wait_terminal(busy, timeout=20)
    assert outcome(stopped) == outcome(stopped_busy)
    for task_id in (sleeper, busy):  # the run's own record: ended by the stop, not by anything else
        assert "limit hit: stopped" in await final_runtime_notes(c, task_id)


async def test_the_wall_time_limit_ends_a_daemon_asleep_in_poll_oneoff(embedded_cluster: Cluster) -> None:
    c = embedded_cluster
    await c.add_proplet("sleep-p2")
    limits = {"timeout_s": 2}
    sleeper = await start(c, {"name": "daemon", "file": b64(SLEEPER), "daemon": True, "limits": limits})
    busy = await start(c, {"name": "main", "file": b64(FOREVER), "limits": limits})
    # Within 20 s, while the 30 s sleep would still go on (generous, not a timing assert).
    timed_out = await c.wait_terminal(sleeper, timeout=20)
    timed_out_busy = await c.wait_terminal(busy, timeout=20)
    assert outcome(timed_out) == outcome(timed_out_busy)
    assert "wall-time limit of 2 s exceeded" in str(timed_out.get("error"))
    for task_id in (sleeper, busy):
        assert "limit hit: wall-time limit of 2 s exceeded" in await final_runtime_notes(c, task_id)


def stopped_then_timed_out(rt: WasmtimeRuntime, wasm: bytes) -> tuple[RunOutcome, RunOutcome]:
    """One run stopped 0.3 s in, one run with a 0.5 s wall-time limit; both end with that reason,
    within 20 s (the sleeper's sleep is 30 s: generous, not a timing assert)."""
    cancel = CancelToken()
    timer = threading.Timer(0.3, cancel.cancel)
    timer.start()
    with ThreadPoolExecutor(1) as pool:
        stopped = pool.submit(rt.run, RunRequest("t", wasm, limits=Limits(timeout_s=60)), cancel).result(20)
        timed = pool.submit(rt.run, RunRequest("t", wasm, limits=Limits(timeout_s=0.5))).result(20)
    timer.join()
    assert stopped.error == "stopped" and "limit hit: stopped" in stopped.notes
    assert timed.error == "wall-time limit of 0.5 s exceeded"
    assert "limit hit: wall-time limit of 0.5 s exceeded" in timed.notes
    return stopped, timed


def test_runtime_stop_and_wall_time_cut_a_sleep_and_report_as_for_busy_code() -> None:
    with WasmtimeRuntime() as rt:
        stopped_then_timed_out(rt, FOREVER)
        stopped, timed = stopped_then_timed_out(rt, SLEEPER)
    # ended mid-sleep: it never woke to print "tick"
    assert stopped.stdout == timed.stdout == b"first line\n"


def test_a_component_asleep_in_pollable_block_reports_the_stop_when_it_returns() -> None:
    """WASI p2 cannot be cut short (wasmtime's own host blocks; docs/hal.md says why): the stop or
    the deadline takes effect when the 2 s sleep returns, and the run reports it instead of success."""
    component = wasmtime.wat2wasm((WASM_DIR / "p2_sleep.component.wat").read_text())
    with WasmtimeRuntime() as rt:
        assert rt.run(RunRequest("t", component, limits=Limits(timeout_s=60))).error is None
        stopped_then_timed_out(rt, component)


# --- our poll_oneoff against wasmtime's own ----------------------------------------------------------

# Reads a 16-byte header (subscriptions, events, count, nevents pointers) and the subscriptions from
# stdin into memory at 1000, calls poll_oneoff with them, and writes to stdout what it got back:
# nevents and errno at 16000, then four events' worth of memory from 16008.
PROBE = wasmtime.wat2wasm("""
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 1000))
    (i32.store (i32.const 4) (i32.const 4096))
    (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.store (i32.const 16004)
      (call $poll (i32.load (i32.const 1000)) (i32.load (i32.const 1004))
                  (i32.load (i32.const 1008)) (i32.load (i32.const 1012))))
    (i32.store (i32.const 16) (i32.const 16000))
    (i32.store (i32.const 20) (i32.const 136))
    (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24)))))
""")
SUBS_AT, EVENTS_AT, NEVENTS_AT = 1024, 16008, 16000


def clock(userdata: int, clock_id: int, timeout_ns: int, absolute: bool = False) -> bytes:
    return p1.encode_subscription(p1.ClockSubscription(userdata, clock_id, timeout_ns, 0, absolute))


def fd(userdata: int, eventtype: int, number: int) -> bytes:
    return p1.encode_subscription(p1.FdSubscription(userdata, eventtype, number))


def raw_sub(userdata: int, tag: int, body: bytes) -> bytes:
    return struct.pack("<QB7x", userdata, tag) + body.ljust(32, b"\0")


MS = 1_000_000
CASES: dict[str, tuple[list[bytes], tuple[int, int, int, int]]] = {
    # name: (subscriptions, (subs pointer, events pointer, count or -1 for len, nevents pointer))
    "monotonic relative": ([clock(7, p1.CLOCK_MONOTONIC, 20 * MS)], (SUBS_AT, EVENTS_AT, -1, NEVENTS_AT)),
    "realtime relative": ([clock(7, p1.CLOCK_REALTIME, 20 * MS)], (SUBS_AT, EVENTS_AT, -1, NEVENTS_AT)),
    "realtime absolute, past": ([clock(7, 0, 10, absolute=True)], (SUBS_AT, EVENTS_AT, -1, NEVENTS_AT)),
    "monotonic absolute, past": ([clock(7, 1, 10, absolute=True)], (SUBS_AT, EVENTS_AT, -1, NEVENTS_AT)),
    "zero timeout": ([clock(3, 1, 0)], (SUBS_AT, EVENTS_AT, -1, NEVENTS_AT)),
    "the earlier of two clocks": (
        [clock(1, 1, 200 * MS), clock(2, 1, 10 * MS)],
        (SUBS_AT, EVENTS_AT, -1, NEVENTS_AT),
    ),
    "two clocks due together": ([clock(1, 1, 0), clock(2, 0, 0)], (SUBS_AT, EVENTS_AT, -1, NEVENTS_AT)),
    "fd_read stdin beside a long clock": (
        [clock(1, 1, 10_000 * MS), fd(2, p1.EVENTTYPE_FD_READ, 0)],
        (SUBS_AT, EVENTS_AT, -1, NEVENTS_AT),
    ),
    "fd_write stdout and stderr": (
        [fd(1, p1.EVENTTYPE_FD_WRITE, 1), fd(2, p1.EVENTTYPE_FD_WRITE, 2)],
        (SUBS_AT, EVENTS_AT, -1, NEVENTS_AT),
    ),
    "fd_read stdout": ([fd(2, p1.EVENTTYPE_FD_READ, 1)], (SUBS_AT, EVENTS_AT, -1, NEVENTS_AT)),
    "fd_write stdin": ([fd(2, p1.EVENTTYPE_FD_WRITE, 0)], (SUBS_AT, EVENTS_AT, -1, NEVENTS_AT)),
    "process CPU-time clock": (
        [clock(1, p1.CLOCK_PROCESS_CPUTIME, 10)],
        (SUBS_AT, EVENTS_AT, -1, NEVENTS_AT),
    ),
    "clock id out of the enum": ([clock(1, 9, 10)], (SUBS_AT, EVENTS_AT, -1, NEVENTS_AT)),
    "unknown tag": ([raw_sub(1, 5, b"")], (SUBS_AT, EVENTS_AT, -1, NEVENTS_AT)),
    "unknown clock flag": (
        [raw_sub(1, 0, struct.pack("<I4xQQH", 1, 10, 0, 4))],
        (SUBS_AT, EVENTS_AT, -1, NEVENTS_AT),
    ),
    "bad one after a good one": ([clock(1, 1, 0), clock(2, 9, 0)], (SUBS_AT, EVENTS_AT, -1, NEVENTS_AT)),
    "no subscriptions": ([], (SUBS_AT, EVENTS_AT, 0, NEVENTS_AT)),
    "subscriptions misaligned": ([clock(1, 1, 0)], (SUBS_AT + 4, EVENTS_AT, -1, NEVENTS_AT)),
    "events misaligned": ([clock(1, 1, 0)], (SUBS_AT, EVENTS_AT + 4, -1, NEVENTS_AT)),
    "nevents misaligned": ([clock(1, 1, 0)], (SUBS_AT, EVENTS_AT, -1, NEVENTS_AT + 1)),
    "subscriptions out of bounds": ([clock(1, 1, 0)], (65536 - 16, EVENTS_AT, -1, NEVENTS_AT)),
    "events out of bounds": ([clock(1, 1, 0)], (SUBS_AT, 65536 - 16, -1, NEVENTS_AT)),
    "more subscriptions than wasmtime takes": ([clock(1, 1, 0)], (SUBS_AT, EVENTS_AT, 2**21 + 1, NEVENTS_AT)),
    "as many as it takes, past memory": ([clock(1, 1, 0)], (SUBS_AT, EVENTS_AT, 2**21, NEVENTS_AT)),
    "a bad one before memory ends": (
        [clock(1, 1, 0), clock(2, 9, 0)],
        (SUBS_AT, EVENTS_AT, 1400, NEVENTS_AT),
    ),
}


def stdin_for(subs: list[bytes], pointers: tuple[int, int, int, int]) -> bytes:
    subs_ptr, events_ptr, count, nevents_ptr = pointers
    header = struct.pack("<IIII", subs_ptr, events_ptr, len(subs) if count < 0 else count, nevents_ptr)
    return header + bytes(SUBS_AT - 1000 - len(header)) + b"".join(subs)


# Calls clock_time_get(id, 0, ptr) with id and ptr read from stdin; writes its errno to stdout.
CLOCK_PROBE = wasmtime.wat2wasm("""
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $now (param i32 i64 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 1000))
    (i32.store (i32.const 4) (i32.const 8))
    (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.store (i32.const 16000)
      (call $now (i32.load (i32.const 1000)) (i64.const 0) (i32.load (i32.const 1004))))
    (i32.store (i32.const 16) (i32.const 16000))
    (i32.store (i32.const 20) (i32.const 4))
    (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24)))))
""")


def wasmtimes_own(stdin: bytes, probe: bytes = PROBE) -> tuple[bool, bytes]:
    """(trapped, stdout) of the probe under wasmtime's own WASI, as the proplet had it before."""
    engine = wasmtime.Engine()
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "in").write_bytes(stdin)
        config = wasmtime.WasiConfig()
        config.stdin_file = str(Path(tmp) / "in")
        config.stdout_file = str(Path(tmp) / "out")
        store = wasmtime.Store(engine)
        store.set_wasi(config)
        trapped = False
        try:
            start = linker.instantiate(store, wasmtime.Module(engine, probe)).exports(store)["_start"]
            assert isinstance(start, wasmtime.Func)
            start(store)
        except (wasmtime.Trap, wasmtime.WasmtimeError):
            trapped = True
        store.close()
        return trapped, (Path(tmp) / "out").read_bytes()


@pytest.fixture(scope="module")
def runtime() -> Any:
    with WasmtimeRuntime() as rt:
        yield rt


@pytest.mark.parametrize("case", list(CASES))
def test_our_poll_oneoff_answers_as_wasmtimes_own(runtime: WasmtimeRuntime, case: str) -> None:
    subs, pointers = CASES[case]
    stdin = stdin_for(subs, pointers)
    ours = runtime.run(RunRequest("probe", PROBE, stdin=stdin, limits=Limits(timeout_s=30)))
    theirs_trapped, theirs = wasmtimes_own(stdin)
    assert (ours.error is not None) == theirs_trapped, ours.error
    assert ours.stdout == theirs
    if not theirs_trapped:
        nevents, errno = struct.unpack_from("<II", ours.stdout)
        events = p1.decode_events(ours.stdout[8:])[:nevents] if errno == 0 else []
        assert errno != 0 or events, case  # a successful poll reports at least one event


@pytest.mark.parametrize(("clock_id", "ptr"), [(0, 8), (1, 8), (2, 8), (3, 8), (4, 8), (1, 12), (1, 65532)])
def test_our_clock_time_get_answers_as_wasmtimes_own(
    runtime: WasmtimeRuntime, clock_id: int, ptr: int
) -> None:
    stdin = struct.pack("<II", clock_id, ptr)
    ours = runtime.run(RunRequest("probe", CLOCK_PROBE, stdin=stdin, limits=Limits(timeout_s=30)))
    theirs_trapped, theirs = wasmtimes_own(stdin, CLOCK_PROBE)
    assert (ours.error is not None) == theirs_trapped, ours.error
    assert ours.stdout == theirs  # the errno (the time itself differs from run to run)


def test_an_absolute_monotonic_sleep_is_on_the_guests_own_clock(runtime: WasmtimeRuntime) -> None:
    """clock_time_get(MONOTONIC) + 200 ms as an absolute deadline wakes once that time has come:
    not at once (the clock and the sleep share one origin) and not never (the run would time out)."""
    wat = """
    (module
      (import "wasi_snapshot_preview1" "clock_time_get" (func $now (param i32 i64 i32) (result i32)))
      (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "slept") (result i64)
        (drop (call $now (i32.const 1) (i64.const 0) (i32.const 0)))
        (i64.store (i32.const 64) (i64.const 5))
        (i32.store8 (i32.const 72) (i32.const 0))
        (i32.store (i32.const 80) (i32.const 1))
        (i64.store (i32.const 88) (i64.add (i64.load (i32.const 0)) (i64.const 200000000)))
        (i32.store16 (i32.const 104) (i32.const 1))
        (drop (call $poll (i32.const 64) (i32.const 128) (i32.const 1) (i32.const 160)))
        (drop (call $now (i32.const 1) (i64.const 0) (i32.const 8)))
        (i64.sub (i64.load (i32.const 8)) (i64.load (i32.const 0)))))
    """
    out = runtime.run(RunRequest("t", wasmtime.wat2wasm(wat), function="slept", limits=Limits(timeout_s=30)))
    assert out.error is None, out.error
    assert int(out.results) >= 200 * MS
