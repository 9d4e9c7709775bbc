"""`WasmRuntime` on wasmtime-py: core modules, WASI preview 1 commands, components; limits on every run.

One Engine (fuel + epoch interruption + component model) is shared by every run, so cached artifacts
fit every Store. One ticker thread bumps the epoch every `tick_s` while a run is in progress (it
sleeps while the runtime is idle); each Store's deadline is one tick and an epoch callback decides,
every tick, whether to go on: it stops the guest on cancel, wall-time or output overflow
(stack-notes §3b). One Store per run makes runs thread-safe; wasm runs with the
GIL released, so runs on threads use every core (§3g). Never fork after importing this (§3g).
"""

from __future__ import annotations

import ctypes
import os
import struct
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi
from wasmtime import component as cm

from proplets import egress
from proplets.runtime import wasi_http, wasip1_poll, wave
from proplets.runtime.api import STREAM_INTERVAL_S, CancelToken, Limits, RunKind, RunOutcome, RunRequest
from proplets.runtime.cache import ArtifactCache
from proplets.runtime.component import UnsupportedComponentType, lift, lower, to_wave_type
from proplets.runtime.hal import host as hal
from proplets.runtime.hal.options import HalOptions, default_root
from proplets.runtime.inputs import InputError, convert_inputs, format_value
from proplets.runtime.wasmbin import PAGE_BYTES, WasmFormatError, custom_section_names, is_component, is_wasm

FUEL_UNLIMITED = 2**63 - 1
# What a run on the caller's thread may spend before it is abandoned and run again on a worker
# (run_inline): about 1 fuel per simple instruction, so a millisecond or two of guest code.
INLINE_FUEL = 1_000_000
FALLBACK_EXPORTS = ("main", "run", "_start")
_STDERR_TAIL = 512

_EpochCallback = ctypes.CFUNCTYPE(
    ctypes.c_size_t,
    ctypes.POINTER(ffi.wasmtime_context_t),
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_uint64),
    ctypes.POINTER(ctypes.c_uint8),
)
_Finalizer = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_NO_FINALIZER = _Finalizer(lambda _p: None)
_WASI_P1 = "wasi_snapshot_preview1"
_MAX_WAIT_S = 3600.0  # one wait of a host-call sleep (threading waits overflow on huge timeouts)


def _out_of_fuel(e: Exception) -> bool:
    if isinstance(e, wasmtime.Trap) and e.trap_code == wasmtime.TrapCode.OUT_OF_FUEL:
        return True
    return _cause(e) == "wasm trap: all fuel consumed by WebAssembly"  # components: no trap code


def _source_note(kind: RunKind, cache: ArtifactCache[Any]) -> str:
    """The run's first note: its kind and how this thread's last cache lookup was served."""
    source = cache.last_source()
    return f"{kind} {source}" if source else kind


class _OverInlineBudget(Exception):
    """An inline run spent INLINE_FUEL: it is dropped and runs again on a worker thread."""


class _RunError(Exception):
    """A run failed for a reason we can already phrase for the user."""


@dataclass
class _Watch:
    """Per-run stop conditions, polled from the epoch callback on the running thread."""

    cancel: CancelToken | None
    deadline: float | None
    timeout_s: float | None
    output_cap: int
    fds: tuple[int, ...] = ()
    reason: str | None = None
    callback: Any = field(default=None, repr=False)
    wasi_origin_ns: int = 0  # the guest's CLOCK_MONOTONIC zero (time.monotonic_ns() at set_wasi)
    on_output: Any = field(default=None, repr=False)
    live_stdout: bool = False
    streamed: list[int] = field(default_factory=lambda: [0, 0])  # stdout, stderr bytes handed over
    streamer: threading.Thread | None = field(default=None, repr=False)
    # Made with the streaming thread: most runs (a plain core module) never stream, and an Event per
    # run was a visible share of a small task's cost (as CancelToken's was).
    stream_done: threading.Event | None = field(default=None, repr=False)

    def stream(self) -> None:
        """Hand output written since the last call to ``on_output`` (at most ``output_cap`` a stream)."""
        if self.on_output is None or len(self.fds) < 2:
            return
        for index, name in enumerate(("stdout", "stderr")):
            if name == "stdout" and not self.live_stdout:
                continue
            want = self.output_cap - self.streamed[index]
            chunk = os.pread(self.fds[index], want, self.streamed[index]) if want > 0 else b""
            if not chunk:
                continue
            self.streamed[index] += len(chunk)
            try:
                self.on_output(name, chunk)
            except Exception:  # a driver's bug must not stop the guest; the final logs still hold it
                self.on_output = None
                return

    def start_streaming(self) -> None:
        """Stream from a thread of our own: the epoch callback does not run while the guest sleeps in
        a host call (WASI poll_oneoff), and a daemon that prints then sleeps must still be seen."""
        if self.on_output is None or self.streamer is not None:
            return
        done = self.stream_done = threading.Event()

        def loop() -> None:
            while not done.wait(STREAM_INTERVAL_S):
                self.stream()

        self.streamer = threading.Thread(target=loop, name="wasm-output", daemon=True)
        self.streamer.start()

    def finish_streaming(self) -> None:
        """Stop the streaming thread and hand over what is left (idempotent)."""
        if self.stream_done is not None:
            self.stream_done.set()
        if self.streamer is not None:
            self.streamer.join()
            self.streamer = None
            self.stream()

    def check(self) -> str | None:
        if self.cancel is not None and self.cancel.cancelled:
            return "stopped"
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return f"wall-time limit of {self.timeout_s:g} s exceeded"
        for fd in self.fds:
            if os.fstat(fd).st_size > self.output_cap:
                return f"output exceeded {self.output_cap} bytes"
        return None

    def poll(self) -> str | None:
        """`check` for host code that blocks (HAL sleep): a reason found here also fails the run."""
        reason = self.check()
        if reason is not None and self.reason is None:
            self.reason = reason
        return reason

    def sleep_until(self, end: float) -> str | None:
        """Sleep in a host call (WASI p1 poll_oneoff, HAL sleep) until `end` (time.monotonic()), cut
        short by a stop or the wall-time limit: epoch interruption never reaches a host call. Returns
        the reason the run must end (recorded as for `poll`), or None when the time came."""
        while (reason := self.poll()) is None:
            now = time.monotonic()
            if now >= end:
                return None
            wake = end if self.deadline is None else min(end, self.deadline)
            wait = min(max(wake - now, 0.0), _MAX_WAIT_S)
            if self.cancel is not None:
                self.cancel.wait(wait)  # set by a stop: wakes at once
            else:
                time.sleep(wait)
        return reason

    def install(self, store: wasmtime.Store) -> None:
        def on_deadline(_ctx: Any, _data: Any, delta: Any, kind: Any) -> int:
            reason = self.check()
            if reason is not None:
                self.reason = reason
                return ctypes.cast(ffi.wasmtime_error_new(reason.encode()), ctypes.c_void_p).value or 0
            delta[0] = 1
            kind[0] = 0  # WASMTIME_UPDATE_DEADLINE_CONTINUE
            return 0

        self.callback = _EpochCallback(on_deadline)  # must outlive the store
        ffi.wasmtime_store_epoch_deadline_callback(store.ptr(), self.callback, None, _NO_FINALIZER)
        store.set_epoch_deadline(1)


@dataclass
class _Io:
    """Temp files for WASI stdio (stdout_custom would abort the process at exit, stack-notes §3d)."""

    dir: Path
    stdout: Path
    stderr: Path
    stdin: Path
    fds: tuple[int, int]

    def read(self, cap: int) -> tuple[bytes, bytes]:
        def head(p: Path) -> bytes:
            with p.open("rb") as f:
                return f.read(cap)

        return head(self.stdout), head(self.stderr)


@dataclass(frozen=True)
class _PreparedCore:
    """A compiled core module and what each run of it needs, resolved once (cached by sha256)."""

    module: wasmtime.Module
    wasi: bool  # imports WASI preview 1: runs get stdio files, args, env
    pre: wasmtime.InstancePre | None  # None: an import is undefined (instantiate names it)
    funcs: dict[str, tuple[list[str], list[str]]]  # export -> (param types, result types)
    memories: tuple[str, ...]  # exported memories (limit diagnostics)
    pure: bool = False  # imports nothing: a run has no effect but its result (see run_inline)


class WasmtimeRuntime:
    def __init__(
        self,
        cache_dir: Path | None = None,
        *,
        max_concurrency: int | None = None,
        memory_cache_entries: int = 64,
        tick_s: float = 0.01,
    ) -> None:
        cfg = wasmtime.Config()
        cfg.consume_fuel = True
        cfg.epoch_interruption = True
        cfg.wasm_component_model = True
        cfg.wasm_reference_types = True
        cfg.wasm_bulk_memory = True
        cfg.wasm_simd = True
        self.engine = wasmtime.Engine(cfg)
        flags = "fuel,epoch,component,reftypes,bulk,simd"
        from importlib.metadata import version

        namespace = f"wasmtime-{version('wasmtime')}|{flags}"
        entries = memory_cache_entries
        self.modules: ArtifactCache[wasmtime.Module] = ArtifactCache(namespace, cache_dir, entries)
        self.components: ArtifactCache[cm.Component] = ArtifactCache(namespace, cache_dir, entries)
        self._prepared: OrderedDict[str, _PreparedCore] = OrderedDict()
        self._prepared_lock = threading.Lock()
        self._long_modules: OrderedDict[str, None] = OrderedDict()  # spent INLINE_FUEL once: workers only
        self._http_gate_component: cm.Component | None = None  # built on the first wasi:http guest
        # Linkers are immutable after this and shared by every run (WASI state lives in each Store).
        self._core_linker = wasmtime.Linker(self.engine)
        self._wasi_linker = wasmtime.Linker(self.engine)
        self._wasi_linker.define_wasi()
        self._wasi_p1 = _WasiP1Host()
        self._wasi_p1.shadow(self._wasi_linker)
        self.tick_s = tick_s
        self.hal_bus = hal.MessageBus()  # HAL `communication` between this runtime's running tasks
        self._slots = threading.BoundedSemaphore(max_concurrency) if max_concurrency else None
        self._stop = threading.Event()
        # The ticker sleeps while no run is in progress (an idle proplet costs no wake-ups).
        self._active = 0
        self._active_lock = threading.Lock()
        self._busy = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="wasm-epoch", daemon=True)
        self._ticker.start()

    def _tick(self) -> None:
        while True:
            self._busy.wait()
            if self._stop.wait(self.tick_s):
                return
            self.engine.increment_epoch()

    def _started(self) -> None:
        with self._active_lock:
            self._active += 1
            self._busy.set()

    def _ended(self) -> None:
        with self._active_lock:
            self._active -= 1
            if self._active == 0:
                self._busy.clear()

    def close(self) -> None:
        self._stop.set()
        self._busy.set()
        if self._ticker.is_alive() and self._ticker is not threading.current_thread():
            self._ticker.join()

    def __enter__(self) -> WasmtimeRuntime:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- compile (cached) ----------------------------------------------------------------------------

    def compile_module(self, wasm: bytes, key: str | None = None) -> wasmtime.Module:
        return self.modules.get(
            wasm,
            "module",
            lambda b: wasmtime.Module(self.engine, b),
            lambda m: bytes(m.serialize()),
            lambda b: wasmtime.Module.deserialize(self.engine, b),
            key=key,
        )

    def _prepare_core(self, wasm: bytes) -> _PreparedCore:
        """The module and what every run of it needs (imports resolved once: an InstancePre on the
        shared linker; its exports), cached by the sha256 of ``wasm`` like the compiled module.
        Only compiled code is shared between runs: every run gets a fresh Store and instance."""
        key = self.modules.key(wasm, "module")
        hit = self._cached_core(key)
        if hit is not None:
            return hit
        module = self.compile_module(wasm, key)
        wasi = any(i.module.startswith(("wasi_snapshot_preview1", "wasi_unstable")) for i in module.imports)
        linker = self._wasi_linker if wasi else self._core_linker
        try:
            pre: wasmtime.InstancePre | None = linker.instantiate_pre(module)
        except wasmtime.WasmtimeError:
            pre = None  # an import nothing defines: instantiate says which, run by run
        funcs: dict[str, tuple[list[str], list[str]]] = {}
        memories: list[str] = []
        for export in module.exports:
            kind = export.type
            if isinstance(kind, wasmtime.FuncType):
                funcs[export.name] = ([str(p) for p in kind.params], [str(r) for r in kind.results])
            elif isinstance(kind, wasmtime.MemoryType):
                memories.append(export.name)
        prepared = _PreparedCore(module, wasi, pre, funcs, tuple(memories), pure=not module.imports)
        with self._prepared_lock:
            self._prepared[key] = prepared
            while len(self._prepared) > self.modules.max_entries:
                self._prepared.popitem(last=False)
        return prepared

    def _cached_core(self, key: str, *, inline: bool = False) -> _PreparedCore | None:
        """The prepared module under ``key`` if it is in memory (a hit: counted, kept fresh); with
        ``inline``, only one that may run on the caller's thread (pure, not known to run long)."""
        with self._prepared_lock:
            hit = self._prepared.get(key)
            if hit is None or (inline and (not hit.pure or key in self._long_modules)):
                return None
            self._prepared.move_to_end(key)
        self.modules.count_memory_hit()
        return hit

    def compile_component(self, wasm: bytes) -> cm.Component:
        return self.components.get(
            wasm,
            "component",
            lambda b: cm.Component(self.engine, b),
            lambda c: bytes(c.serialize()),
            lambda b: cm.Component.deserialize(self.engine, b),
        )

    # -- run -----------------------------------------------------------------------------------------

    def run(self, request: RunRequest, cancel: CancelToken | None = None) -> RunOutcome:
        if self._stop.is_set():
            raise RuntimeError("WasmtimeRuntime is closed")
        start = time.monotonic()
        if self._slots is not None:
            while not self._slots.acquire(timeout=0.05):
                if cancel is not None and cancel.cancelled:
                    return RunOutcome("", "stopped", duration_s=time.monotonic() - start)
        self._started()
        try:
            return self._run(request, cancel, start)
        finally:
            self._ended()
            if self._slots is not None:
                self._slots.release()

    def run_inline(self, request: RunRequest, cancel: CancelToken | None = None) -> RunOutcome | None:
        """Run ``request`` on the calling thread when that is cheap and safe, else return None (the
        caller then uses ``run`` on a worker thread).

        Why: handing a run to a worker thread and its outcome back costs more CPU than a small
        module's whole run (tens of microseconds per hop with the GIL on a busy host). So a core
        module that imports nothing (it can read and change nothing outside its own instance: its
        only effect is its result), already compiled, runs here with at most ``INLINE_FUEL`` fuel.
        If it spends that, the run is dropped, the module is remembered as a long one, and None sends
        it to a worker, where it runs again from the start under its own limits: nobody can tell the
        dropped run happened, except for the time it took (bounded by the fuel cap).
        """
        if self._stop.is_set() or is_component(request.wasm) or not is_wasm(request.wasm):
            return None
        key = self.modules.key(request.wasm, "module")
        prepared = self._cached_core(key, inline=True)
        if prepared is None:
            return None
        start = time.monotonic()
        if cancel is not None and cancel.cancelled:
            return RunOutcome("", "stopped", kind="core", duration_s=0.0)
        notes = [_source_note("core", self.modules)]
        try:
            return self._execute_plain(request, prepared, notes, cancel, start, fuel_cap=INLINE_FUEL)
        except _OverInlineBudget:
            with self._prepared_lock:
                self._long_modules[key] = None
                while len(self._long_modules) > self.modules.max_entries:
                    self._long_modules.popitem(last=False)
            return None

    def _run(self, req: RunRequest, cancel: CancelToken | None, start: float) -> RunOutcome:
        kind: RunKind = "component" if is_component(req.wasm) else "core"
        if cancel is not None and cancel.cancelled:
            return RunOutcome("", "stopped", kind=kind, duration_s=time.monotonic() - start)
        if not is_wasm(req.wasm):
            return RunOutcome("", "not a WebAssembly binary (missing \\0asm header)", kind=kind)
        cache = self.components if kind == "component" else self.modules
        compile_start = time.monotonic()
        try:
            artifact: Any = (
                self.compile_component(req.wasm) if kind == "component" else self._prepare_core(req.wasm)
            )
        except wasmtime.WasmtimeError as e:
            return RunOutcome(
                "", f"invalid wasm {kind}: {_cause(e)}", kind=kind, duration_s=time.monotonic() - start
            )
        notes = [_source_note(kind, cache)]
        compile_s = time.monotonic() - compile_start
        if compile_s >= 1.0:  # the wall-time limit counts it: say where the time went
            notes[0] += f" in {compile_s:.1f} s"
        if isinstance(artifact, _PreparedCore) and not artifact.wasi:
            return self._execute_plain(req, artifact, notes, cancel, start)
        lim = req.limits
        deadline = None if lim.timeout_s is None else start + lim.timeout_s
        with tempfile.TemporaryDirectory(prefix=f"wasm-{_safe(req.task_id)}-", dir=_IO_DIR) as tmp:
            io = _open_io(Path(tmp), req.stdin)
            watch = _Watch(
                cancel, deadline, lim.timeout_s, lim.output_bytes, io.fds,
                on_output=req.on_output, live_stdout=req.live_stdout,
            )  # fmt: skip
            try:
                return self._execute(req, kind, artifact, notes, watch, io, start)
            finally:
                watch.finish_streaming()  # before the fds it reads are closed
                for fd in io.fds:
                    os.close(fd)

    def _execute_plain(
        self,
        req: RunRequest,
        prepared: _PreparedCore,
        notes: list[str],
        cancel: CancelToken | None,
        start: float,
        fuel_cap: int | None = None,
    ) -> RunOutcome:
        """A core module without WASI imports: it cannot see stdio, files, args or env, so none are
        set up (and there is no output to stream)."""
        lim = req.limits
        deadline = None if lim.timeout_s is None else start + lim.timeout_s
        watch = _Watch(cancel, deadline, lim.timeout_s, lim.output_bytes)
        return self._execute(req, "core", prepared, notes, watch, None, start, fuel_cap)

    def _execute(
        self,
        req: RunRequest,
        kind: RunKind,
        artifact: Any,
        notes: list[str],
        watch: _Watch,
        io: _Io | None,
        start: float,
        fuel_cap: int | None = None,
    ) -> RunOutcome:
        """One run in a fresh Store. With ``fuel_cap`` below the run's own fuel limit, raises
        ``_OverInlineBudget`` when the guest spends the cap (nothing of the run is kept)."""
        lim = req.limits
        store = wasmtime.Store(self.engine)
        fuel = FUEL_UNLIMITED if lim.fuel is None else lim.fuel
        capped = False
        if fuel_cap is not None and fuel > fuel_cap:
            fuel, capped = fuel_cap, True
        memories: list[wasmtime.Memory] = []
        results, exit_code, error = "", None, None
        values: tuple[float, ...] = ()
        store_address = _context_address(store)
        try:
            store.set_limits(**_store_limits(lim))
            store.set_fuel(fuel)
            watch.install(store)
            watch.start_streaming()
            if kind == "component":
                assert io is not None
                kind, results, exit_code = self._call_component(req, artifact, store, io, watch, notes)
            else:
                self._wasi_p1.watches[store_address] = watch
                kind, results, values, exit_code = self._call_core(
                    req, artifact, store, io, watch, memories, notes
                )
        except _RunError as e:
            error = str(e)
        except InputError as e:
            error = str(e)
        except wave.WaveError as e:
            error = f"bad WAVE input: {e}"
        except UnsupportedComponentType as e:
            error = str(e)
        except wasmtime.ExitTrap as e:
            exit_code = e.code
        except (wasmtime.Trap, wasmtime.WasmtimeError) as e:
            if capped and watch.reason is None and _out_of_fuel(e):
                store.close()
                raise _OverInlineBudget from None
            error = self._describe(e, watch, lim, fuel, store, memories)
        finally:
            self._wasi_p1.watches.pop(store_address, None)
        if error is None and watch.reason is None:
            # A stop or the deadline that came while the guest slept in a host call nothing can cut
            # short (a component's wasi:io pollable.block): it ended late, but it was stopped.
            watch.poll()
        try:
            consumed: int | None = fuel - store.get_fuel()
        except wasmtime.WasmtimeError:
            consumed = None
        store.close()
        stdout, stderr = io.read(lim.output_bytes) if io is not None else (b"", b"")
        watch.finish_streaming()
        stdout_total = _size(io.stdout) if io is not None else 0
        overflow = io is not None and max(stdout_total, _size(io.stderr)) > lim.output_bytes
        if error is None and watch.reason is None and overflow:
            watch.reason = f"output exceeded {lim.output_bytes} bytes"
        if error is None and watch.reason is not None:
            error = watch.reason  # overflow noticed after the guest returned
        if error is None and exit_code not in (None, 0):
            tail = stderr[-_STDERR_TAIL:].decode("utf-8", "replace").strip()
            error = f"exited with code {exit_code}" + (f": {tail}" if tail else "")
        if kind == "wasi" or (kind == "core" and not values and stdout):
            # a command's result is its stdout, byte for byte; stderr is kept apart as logs
            results = stdout.decode("utf-8", "replace")
        if exit_code is not None:
            notes.append(f"exit code {exit_code}")
        if consumed is not None and lim.fuel is not None:
            notes.append(f"fuel consumed {consumed} of {lim.fuel}")
        elif consumed is not None:
            notes.append(f"fuel consumed {consumed}")
        if error is not None and (watch.reason is not None or "limit" in error or "budget" in error):
            notes.append(f"limit hit: {error}")
        return RunOutcome(
            results, error, stdout, stderr, exit_code, consumed, time.monotonic() - start, kind, values,
            tuple(notes), stdout_total,
        )  # fmt: skip

    def _describe(
        self,
        e: Exception,
        watch: _Watch,
        lim: Limits,
        fuel: int,
        store: wasmtime.Store,
        memories: list[wasmtime.Memory],
    ) -> str:
        if watch.reason is not None:
            return watch.reason
        message = _cause(e)
        if _out_of_fuel(e):
            message = f"CPU budget exhausted (fuel {fuel})"
        # memory.grow past the limit returns -1 inside the guest (stack-notes §3c): a guest that then
        # traps or spins looks like any other failure unless we check where its memory stands
        if lim.memory_bytes is not None:
            for memory in memories:
                try:
                    at_cap = memory.data_len(store) + PAGE_BYTES > lim.memory_bytes
                except wasmtime.WasmtimeError:
                    continue
                if at_cap:
                    return f"memory limit of {lim.memory_bytes} bytes exceeded ({message})"
        if "exceeds memory limits" in message:
            return f"memory limit of {lim.memory_bytes} bytes exceeded ({message})"
        return message

    # -- core modules --------------------------------------------------------------------------------

    def _call_core(
        self,
        req: RunRequest,
        prepared: _PreparedCore,
        store: wasmtime.Store,
        io: _Io | None,
        watch: _Watch,
        memories: list[wasmtime.Memory],
        notes: list[str],
    ) -> tuple[RunKind, str, tuple[float, ...], int | None]:
        if prepared.wasi:
            assert io is not None
            watch.wasi_origin_ns = time.monotonic_ns()  # where wasmtime's WASI clock starts too
            store.set_wasi(_wasi_config(req, io))
        if prepared.pre is not None:
            instance = prepared.pre.instantiate(store)
        else:  # fails naming the import no linker defines
            linker = self._wasi_linker if prepared.wasi else self._core_linker
            instance = linker.instantiate(store, prepared.module)
        exports = instance.exports(store)
        for memory_name in prepared.memories:
            memory = exports[memory_name]
            if isinstance(memory, wasmtime.Memory):
                memories.append(memory)
        name, why = _entry_point(req.function, list(prepared.funcs), req.wasm)
        notes.append(why)
        if "_initialize" in prepared.funcs and name != "_initialize":
            init = exports["_initialize"]
            assert isinstance(init, wasmtime.Func)
            init(store)
        func = exports[name]
        assert isinstance(func, wasmtime.Func)
        if name == "_start":
            # a WASI command: argv/env/stdin in, stdout out; a normal return is exit code 0
            try:
                func(store)
            except wasmtime.ExitTrap as e:
                return "wasi", "", (), e.code
            return "wasi", "", (), 0
        params, result_types = prepared.funcs[name]
        args = convert_inputs(name, params, req.inputs)
        raw = func(store, *args)
        values: tuple[int | float, ...] = (
            tuple(raw) if isinstance(raw, list | tuple) else (() if raw is None else (raw,))
        )
        results = format_value(values[0], result_types[0]) if values else ""
        return "core", results, values, None

    # -- components ----------------------------------------------------------------------------------

    def _http_gate(self) -> cm.Component:
        with self._prepared_lock:
            if self._http_gate_component is None:
                self._http_gate_component = wasi_http.compile_gate(self.engine)
            return self._http_gate_component

    def _call_component(
        self,
        req: RunRequest,
        component: cm.Component,
        store: wasmtime.Store,
        io: _Io,
        watch: _Watch,
        notes: list[str],
    ) -> tuple[RunKind, str, int | None]:
        imports = list(component.type.imports(self.engine))
        linker = cm.Linker(self.engine)
        linker.add_wasip2()
        store.set_wasi(_wasi_config(req, io))
        if any(n.startswith("wasi:http/") for n in imports):
            egress_entries = req.hal.egress if req.hal is not None else egress.DEFAULT_ENTRIES
            policy = egress.EgressPolicy(egress_entries)
            gate = wasi_http.HttpGate(self.engine, self._http_gate(), policy, notes.append, watch.deadline)
            gate.link(linker, store, imports)
        hal_run = None
        if hal.imports_hal(component, self.engine):
            options = req.hal or HalOptions(str(default_root() / _safe(req.task_id)))
            hal_run = hal.HalRun(
                req.task_id, options, self.hal_bus, watch.sleep_until, req.limits.memory_bytes
            )
        try:
            if hal_run is not None:
                hal.link(linker, component, self.engine, hal_run)
            return self._call_linked(req, component, store, linker, notes)
        except wasmtime.WasmtimeError as e:
            missing = _missing_import(e)
            if missing is not None:
                raise _RunError(missing) from None
            raise
        finally:
            if hal_run is not None:
                hal_run.close()

    def _call_linked(
        self,
        req: RunRequest,
        component: cm.Component,
        store: wasmtime.Store,
        linker: cm.Linker,
        notes: list[str],
    ) -> tuple[RunKind, str, int | None]:
        instance = linker.instantiate(store, component)
        export_names = list(component.type.exports(self.engine))
        if _has_custom_export(req.function):
            func = _resolve_component_func(instance, store, req.function, export_names)
            notes.append(f"entry: component export '{req.function}'")
            ftype = func.type(store)
            params = ftype.params
            if len(params) != len(req.inputs):
                raise _RunError(
                    f"argument count mismatch: '{req.function}' expects {len(params)} "
                    f"({', '.join(n for n, _ in params) or 'none'}), got {len(req.inputs)}"
                )
            args = []
            for (pname, ptype), text in zip(params, req.inputs, strict=True):
                try:
                    args.append(lower(wave.parse(str(text), to_wave_type(ptype)), ptype))
                except wave.WaveError as e:
                    raise _RunError(f"bad WAVE input for parameter '{pname}': {e}") from None
            out = func(store, *args)
            result_t = ftype.result
            return (
                "component",
                "" if result_t is None else wave.format_value(lift(out, result_t), to_wave_type(result_t)),
                None,
            )
        run_name = next((n for n in export_names if n.startswith("wasi:cli/run@")), None)
        if run_name is None:
            raise _RunError(
                f"component has no export '{req.function or '(none)'}' and is not a wasi:cli/run "
                f"command; exports: {', '.join(export_names) or 'none'}"
            )
        idx = instance.get_export_index(store, run_name)
        fidx = instance.get_export_index(store, "run", idx) if idx is not None else None
        run = instance.get_func(store, fidx) if fidx is not None else None
        if run is None:
            raise _RunError(f"{run_name} does not export a 'run' function")
        notes.append(f"entry: {run_name} (component command)")
        status = run(store)
        tag = status.tag if isinstance(status, cm.Variant) else "ok"
        return "wasi", "", 0 if tag == "ok" else 1


def _pick_export(function: str, names: list[str]) -> str:
    """The export a task names; with no name, upstream's fallbacks `main`, `run`, `_start`.

    A name that is not exported fails naming it and listing what is there (upstream silently ran
    `main`/`run` and reported Completed). One exception keeps upstream task specs working: a WASI
    command (it exports `_start` and no `main`/`run`) is a program, and its task name names the
    program, not an export, so it runs `_start`. Federated rounds (`fl-round-N`) name the round, not
    an export, and keep the fallbacks (as `_has_custom_export` for components).
    """
    if function in names:
        return function
    if function and function not in FALLBACK_EXPORTS and not function.startswith("fl-round-"):
        if "_start" in names and not any(n in names for n in ("main", "run")):
            return "_start"
        raise _RunError(
            f"export '{function}' not found; module exports: {', '.join(names) or 'no functions'}"
        )
    tried = ([function] if function else []) + [n for n in FALLBACK_EXPORTS if n != function]
    for candidate in tried:
        if candidate in names:
            return candidate
    raise _RunError(
        f"export '{function or tried[0]}' not found (also tried {', '.join(tried[1:])}); "
        f"module exports: {', '.join(names) or 'no functions'}"
    )


def _missing_import(e: Exception) -> str | None:
    """wasmtime's "matching implementation was not found" as one line naming the import."""
    text = str(e)
    if "was not found in the linker" not in text and "matching implementation" not in text:
        return None
    first = text.strip().splitlines()[0]
    cause = _cause(e)
    detail = f" ({cause})" if cause != first else ""
    return f"component cannot be instantiated on this proplet: {first}{detail}"


def _entry_point(function: str, names: list[str], wasm: bytes) -> tuple[str, str]:
    """The export to call and a note saying why, by the module's shape (WASI application ABI).

    A reactor (exports ``_initialize``, or neither entry point) has ``_initialize`` called first, then
    the named export, falling back to ``main``, ``run``, ``_start`` (upstream's order). A command
    (exports ``_start`` and no ``_initialize``) runs ``_start`` unless the task names another of its
    exports explicitly; upstream would try ``main`` and ``run`` first, which for a Go command calls a
    ``//go:wasmexport`` before the Go runtime exists and traps. A Go command's exports can only run
    while its ``main`` runs, so a Go command always runs as a whole (``_start``).
    """
    command = "_start" in names and "_initialize" not in names
    if not command:
        name = _pick_export(function, names)
        init = "_initialize, then " if "_initialize" in names and name != "_initialize" else ""
        return name, f"entry: {init}'{name}' (reactor)" if init else f"entry: '{name}'"
    named = bool(function) and function != "_start" and function in names
    if named and not function.startswith("fl-round-"):
        try:
            go = "go:buildid" in custom_section_names(wasm)
        except WasmFormatError:
            go = False
        if not go:
            return function, f"entry: '{function}' (an export of a WASI command, called on its own)"
        return "_start", (
            f"entry: _start (WASI command): '{function}' is a //go:wasmexport of a Go command, which Go "
            "allows only while main runs; build with -buildmode=c-shared to call it on its own"
        )
    return "_start", "entry: _start (WASI command)"


def _has_custom_export(name: str) -> bool:
    return bool(name) and name != "_start" and not name.startswith("fl-round-")


def _resolve_component_func(
    instance: cm.Instance, store: wasmtime.Store, name: str, export_names: list[str]
) -> cm.Func:
    if "#" in name:
        outer, inner = name.split("#", 1)
        idx = instance.get_export_index(store, outer)
        fidx = instance.get_export_index(store, inner, idx) if idx is not None else None
        func = instance.get_func(store, fidx) if fidx is not None else None
    else:
        func = _try_func(instance, store, name)
        for outer in export_names:
            if func is not None:
                break
            if outer.startswith(("elastic:", "wasi:")):
                idx = instance.get_export_index(store, outer)
                fidx = instance.get_export_index(store, name, idx) if idx is not None else None
                func = instance.get_func(store, fidx) if fidx is not None else None
    if func is None:
        raise _RunError(f"component export '{name}' not found; exports: {', '.join(export_names) or 'none'}")
    return func


def _try_func(instance: cm.Instance, store: wasmtime.Store, name: str) -> cm.Func | None:
    try:
        return instance.get_func(store, name)
    except wasmtime.WasmtimeError:
        return None


def _safe_get(exports: Any, name: str) -> Any:
    try:
        return exports[name]
    except KeyError:
        return None


def _store_limits(lim: Limits) -> dict[str, int]:
    def n(v: int | None) -> int:
        return -1 if v is None else v

    return {
        "memory_size": n(lim.memory_bytes),
        "table_elements": n(lim.max_table_elements),
        "instances": n(lim.max_instances),
        "tables": n(lim.max_tables),
        "memories": n(lim.max_memories),
    }


def _io_dir() -> str | None:
    """Where runs' stdio files live: RAM (/dev/shm) when there is one, else the temp dir. Each file is
    capped by the output limit; on a busy disk, creating and removing them cost milliseconds per run."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK) else None


_IO_DIR = _io_dir()


def _open_io(tmp: Path, stdin: bytes) -> _Io:
    paths = {name: tmp / name for name in ("stdin", "stdout", "stderr")}
    paths["stdin"].write_bytes(stdin)
    fds = []
    for name in ("stdout", "stderr"):
        paths[name].touch()
        fds.append(os.open(paths[name], os.O_RDONLY))
    return _Io(tmp, paths["stdout"], paths["stderr"], paths["stdin"], (fds[0], fds[1]))


def _wasi_config(req: RunRequest, io: _Io) -> wasmtime.WasiConfig:
    w = wasmtime.WasiConfig()
    w.argv = [req.function or "task.wasm", *req.cli_args]
    w.env = list(req.env.items())
    w.stdin_file = str(io.stdin)
    w.stdout_file = str(io.stdout)
    w.stderr_file = str(io.stderr)
    for d in req.dirs:
        w.preopen_dir(d.host_path, d.guest_path)
    return w


class _WasiP1Host:
    """Our WASI p1 `poll_oneoff` (and `clock_time_get`, the clock it measures against), shadowing
    wasmtime's so that a stop or the wall-time limit ends a guest sleeping in it (wasip1_poll says
    what they do). A class of its own, not runtime methods: the linker keeps these functions alive
    for as long as the process, and they must not keep a closed runtime and its caches alive too."""

    def __init__(self) -> None:
        self.watches: dict[int, _Watch] = {}  # running stores by context address (`_context_address`)

    def shadow(self, linker: wasmtime.Linker) -> None:
        i32, i64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()
        linker.allow_shadowing = True
        linker.define_func(
            _WASI_P1, "poll_oneoff", wasmtime.FuncType([i32] * 4, [i32]), self.poll_oneoff,
            access_caller=True,
        )  # fmt: skip
        linker.define_func(
            _WASI_P1, "clock_time_get", wasmtime.FuncType([i32, i64, i32], [i32]), self.clock_time_get,
            access_caller=True,
        )  # fmt: skip
        linker.allow_shadowing = False

    def watch(self, caller: wasmtime.Caller) -> _Watch:
        watch = self.watches.get(_context_address(caller))
        if watch is None:  # every WASI run registers its store before instantiating
            raise wasmtime.Trap("internal error: a WASI host call from a store that is not running")
        return watch

    def poll_oneoff(
        self, caller: wasmtime.Caller, subs_ptr: int, events_ptr: int, count: int, nevents_ptr: int
    ) -> int:
        watch = self.watch(caller)
        memory = _GuestMemory(caller)
        count &= 0xFFFFFFFF
        try:
            wasip1_poll.check_count(count)
            raw = memory.read_upto(subs_ptr, count * wasip1_poll.SUBSCRIPTION_SIZE, wasip1_poll.ALIGN)
            subs = wasip1_poll.decode_subscriptions(raw, count)
        except wasip1_poll.PollError as e:
            return e.errno
        except wasip1_poll.Truncated as e:
            raise wasmtime.Trap(str(e)) from None
        now = time.monotonic_ns()
        due = wasip1_poll.deadlines(subs, now, time.time_ns(), watch.wasi_origin_ns)
        wake = min(due)
        if wake > now and watch.sleep_until(wake / 1e9) is not None:
            # Stopped or out of time: the guest's next epoch check (a call or loop) ends the run with
            # the reason, as for a guest busy in wasm code; EINTR is all it sees before that.
            ffi.wasmtime_context_set_epoch_deadline(caller._context(), 0)
            return wasip1_poll.ERRNO_INTR
        events = wasip1_poll.ready_events(subs, due, max(wake, time.monotonic_ns()))
        memory.write(events_ptr, wasip1_poll.encode_events(events), wasip1_poll.ALIGN)
        memory.write(nevents_ptr, struct.pack("<I", len(events)), 4)
        return wasip1_poll.ERRNO_SUCCESS

    def clock_time_get(self, caller: wasmtime.Caller, clock_id: int, _precision: int, out_ptr: int) -> int:
        watch = self.watch(caller)
        try:
            value = wasip1_poll.clock_now(
                clock_id & 0xFFFFFFFF, time.monotonic_ns(), time.time_ns(), watch.wasi_origin_ns
            )
        except wasip1_poll.PollError as e:
            return e.errno
        except wasip1_poll.InvalidClock as e:
            raise wasmtime.Trap(str(e)) from None
        _GuestMemory(caller).write(out_ptr, struct.pack("<Q", value), 8)
        return wasip1_poll.ERRNO_SUCCESS


def _context_address(store: wasmtime.Store | wasmtime.Caller) -> int:
    """The address of a store's context: the same for the Store and for a Caller inside it."""
    return ctypes.addressof(store._context().contents)


class _GuestMemory:
    """The calling module's `memory`, read and written the way wasmtime's WASI does: a pointer out
    of bounds or misaligned traps the guest (it is not an errno)."""

    def __init__(self, caller: wasmtime.Caller) -> None:
        memory = caller.get("memory")
        if not isinstance(memory, wasmtime.Memory):
            raise wasmtime.Trap("missing required memory export")
        self.caller = caller
        self.memory = memory

    def _check(self, ptr: int, size: int, align: int) -> int:
        ptr &= 0xFFFFFFFF
        if ptr % align:
            raise wasmtime.Trap(f"Pointer not aligned to {align}: Region {{ start: {ptr}, len: {size} }}")
        if ptr + size > self.memory.data_len(self.caller):
            raise wasmtime.Trap(f"Pointer out of bounds: Region {{ start: {ptr}, len: {size} }}")
        return ptr

    def read_upto(self, ptr: int, size: int, align: int) -> bytes:
        """At most `size` bytes from `ptr`: fewer where memory ends (the caller decides if that traps)."""
        start = self._check(ptr, 0, align)
        return bytes(self.memory.read(self.caller, start, start + size))

    def write(self, ptr: int, data: bytes, align: int) -> None:
        start = self._check(ptr, len(data), align)
        if data:
            self.memory.write(self.caller, data, start)


def _cause(e: Exception) -> str:
    """The "Caused by" line of a wasmtime error, without the backtrace."""
    text = str(e).strip()
    if "Caused by:" in text:
        lines = [ln.strip() for ln in text.split("Caused by:", 1)[1].splitlines() if ln.strip()]
        return "; ".join(lines) if lines else text
    return text.splitlines()[0] if text else type(e).__name__


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return 0


def _safe(task_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in task_id)[:40]
