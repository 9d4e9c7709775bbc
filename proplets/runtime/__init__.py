"""The proplet's Wasm runtime: `WasmRuntime` protocol, wasmtime implementation, device budget model.

The names imported eagerly here load no I/O library beyond `threading` (CancelToken), so the twin and
sans-I/O cores can use them; `WasmtimeRuntime` is resolved lazily on first access because importing it
loads wasmtime (and nothing may fork after wasmtime has compiled, stack-notes §3g).
"""

from typing import TYPE_CHECKING, Any

from proplets.runtime.api import (
    CancelToken,
    InputValue,
    Limits,
    Preopen,
    RunKind,
    RunOutcome,
    RunRequest,
    WasmRuntime,
)
from proplets.runtime.budget import Admission, BudgetConfig, DeviceBudget, Refusal
from proplets.runtime.wasmbin import MemoryDecl, WasmFormatError, is_component, memory_requirements

if TYPE_CHECKING:
    from proplets.runtime.wasmtime_runtime import WasmtimeRuntime


def __getattr__(name: str) -> Any:
    if name == "WasmtimeRuntime":
        from proplets.runtime.wasmtime_runtime import WasmtimeRuntime

        return WasmtimeRuntime
    raise AttributeError(f"module 'proplets.runtime' has no attribute {name!r}")


__all__ = [
    "Admission",
    "BudgetConfig",
    "CancelToken",
    "DeviceBudget",
    "InputValue",
    "Limits",
    "MemoryDecl",
    "Preopen",
    "Refusal",
    "RunKind",
    "RunOutcome",
    "RunRequest",
    "WasmFormatError",
    "WasmRuntime",
    "WasmtimeRuntime",
    "is_component",
    "memory_requirements",
]
