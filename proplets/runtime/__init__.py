"""The proplet's Wasm runtime: `WasmRuntime` protocol, wasmtime implementation, device budget model.

Import `WasmtimeRuntime` from `proplets.runtime.wasmtime_runtime` (it loads wasmtime); the names
re-exported here are pure and safe to import anywhere, including sans-I/O cores and the twin.
"""

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
    "is_component",
    "memory_requirements",
]
