"""The runtime contract: what a proplet asks for (`RunRequest`), what it gets back (`RunOutcome`).

Blocking `WasmRuntime.run` is called from a worker thread; `CancelToken.cancel()` may be called from
any other thread and interrupts the running module within one epoch tick (10 ms by default).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from proplets.runtime.hal.options import HalOptions

KiB = 1024
MiB = 1024 * KiB

InputValue = str | int | float
RunKind = Literal["core", "wasi", "component"]


@dataclass(frozen=True)
class Limits:
    """Per-run resource limits. `None` means "no limit of this kind".

    Defaults, and why:
    - fuel=None: no deterministic CPU budget by default; the wall-time limit bounds runaway code.
      About 10 fuel units per wasm call, ~1 per simple instruction (stack-notes §3b).
    - memory_bytes=256 MiB: a generous cap on one instance's linear memory so a memory bomb cannot take
      the host down; a gateway runs many instances.
    - timeout_s=300: upstream has no limit at all (§8.3); five minutes keeps a stuck task from
      holding a worker slot forever.
    - output_bytes=1 MiB per stream: upstream's INVOCATION_OUTPUT_CAPACITY for components (§8.3).
      A module writing more is stopped; the result keeps the first ``output_bytes`` with a marker.
    - log_bytes=64 KiB: how much of stderr (and runtime notes) is kept as the task's logs; the rest
      is cut with a marker. Logs travel in the result message, so they stay well under 1 MiB.
    - max_table_elements=100_000, max_tables/memories=10, max_instances=50: wasmtime defaults are
      unbounded; these are far above what normal toolchains emit (a componentize-py guest, CPython
      inside, instantiates 11+ core instances: tests/wasm/hal_guest_py).
    """

    fuel: int | None = None
    memory_bytes: int | None = 256 * MiB
    timeout_s: float | None = 300.0
    output_bytes: int = 1 * MiB
    log_bytes: int = 64 * KiB
    max_table_elements: int | None = 100_000
    max_instances: int | None = 50
    max_tables: int | None = 10
    max_memories: int | None = 10

    def __post_init__(self) -> None:
        for name in (
            "fuel",
            "memory_bytes",
            "max_table_elements",
            "max_instances",
            "max_tables",
            "max_memories",
        ):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ValueError(f"Limits.{name} must be a non-negative int or None, got {value!r}")
        if self.timeout_s is not None and not (self.timeout_s > 0):
            raise ValueError(f"Limits.timeout_s must be > 0 or None, got {self.timeout_s!r}")
        for name in ("output_bytes", "log_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"Limits.{name} must be a non-negative int, got {value!r}")


@dataclass(frozen=True)
class Preopen:
    """A host directory visible to the guest (WASI preopen) at `guest_path`."""

    host_path: str
    guest_path: str


@dataclass(frozen=True)
class RunRequest:
    """One execution of a Wasm binary.

    `function` is the task name: the export to call. Core modules fall back to `main`, `run`,
    `_start`; components without a custom export run as `wasi:cli/run` commands (upstream §8.3).
    `cli_args` become argv[1:] for WASI modules (upstream's Rust proplet drops them; we pass them).
    `on_output`, when set, receives ``(stream, bytes)`` as the module writes them: its stderr, and
    its stdout too with `live_stdout` (a daemon's stdout is its running output, not a result to
    come). It is called from a streaming thread of the run about every `STREAM_INTERVAL_S`, also
    while the guest sleeps in a host call, so a driver can stream a long task's progress.
    """

    task_id: str
    wasm: bytes
    function: str = ""
    inputs: tuple[InputValue, ...] = ()
    cli_args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    stdin: bytes = b""
    limits: Limits = field(default_factory=Limits)
    dirs: tuple[Preopen, ...] = ()
    # Components may import the ELASTIC HAL (proplets/runtime/hal); None: a per-task temp root.
    hal: HalOptions | None = None
    on_output: Callable[[str, bytes], None] | None = field(default=None, compare=False, repr=False)
    live_stdout: bool = False


STREAM_INTERVAL_S = 0.2


@dataclass(frozen=True)
class RunOutcome:
    """What happened. `error is None` means success.

    `results` is the first return value as decimal (core) or WAVE text (component); for commands
    (and exports that return nothing) it is stdout as text. `stdout` and `stderr` are the raw bytes
    (at most `Limits.output_bytes` each); `stdout_total` is how much the module wrote, so a cut is
    visible. `values` holds every return value of a core call. `notes` are what the runtime has to
    say about the run (entry point chosen, limits hit, fuel used, compile cache hit).
    """

    results: str
    error: str | None
    stdout: bytes = b""
    stderr: bytes = b""
    exit_code: int | None = None
    fuel_consumed: int | None = None
    duration_s: float = 0.0
    kind: RunKind = "core"
    values: tuple[int | float, ...] = ()
    notes: tuple[str, ...] = ()
    stdout_total: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


class CancelToken:
    """Thread-safe stop flag. The runtime polls it on every epoch tick of a running module, and waits
    on it while the module sleeps in a host call (WASI p1 poll_oneoff, HAL sleep).

    The ``threading.Event`` (a Condition and two locks) is made by the first ``wait``: every task gets
    a token, few tasks sleep, and building one was a visible share of a small task's cost."""

    _making = threading.Lock()  # makes the Event once even if two threads wait at once

    def __init__(self) -> None:
        self._cancelled = False
        self._event: threading.Event | None = None

    def cancel(self) -> None:
        self._cancelled = True  # before reading _event: a waiter that makes it after sees the flag
        event = self._event
        if event is not None:
            event.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def wait(self, timeout: float | None = None) -> bool:
        event = self._event
        if event is None:
            with CancelToken._making:
                if self._event is None:
                    self._event = threading.Event()
                event = self._event
        if self._cancelled:  # cancelled before the Event existed: it was never set
            return True
        return event.wait(timeout)


class WasmRuntime(Protocol):
    """What the agent runs modules with. A runtime may also offer ``run_inline(request, cancel) ->
    RunOutcome | None``, a run on the caller's (the event loop's) thread when it is cheap and has no
    effect but its result, None otherwise; the agent tries it first when it exists
    (``WasmtimeRuntime.run_inline``)."""

    def run(self, request: RunRequest, cancel: CancelToken | None = None) -> RunOutcome:
        """Execute `request` to completion (blocking). Never raises for guest misbehaviour."""
        ...

    def close(self) -> None: ...
