"""Core-module argument conversion and result formatting (sans-I/O).

wasmtime-py wraps out-of-range i32/i64 silently (stack-notes §3a), so every input is range-checked here.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

from proplets.runtime.api import InputValue

CORE_TYPES = ("i32", "i64", "f32", "f64")
_INT_RANGES = {"i32": (-(2**31), 2**31 - 1), "i64": (-(2**63), 2**63 - 1)}
_F32_MAX = 3.4028234663852886e38


class InputError(ValueError):
    """An input does not fit the export's signature; the message names the input and the type."""


def convert_inputs(
    export: str, param_types: Sequence[str], inputs: Sequence[InputValue]
) -> list[int | float]:
    if len(inputs) != len(param_types):
        raise InputError(
            f"export '{export}' expects {len(param_types)} argument(s) ({', '.join(param_types) or 'none'}), "
            f"got {len(inputs)}"
        )
    return [convert_one(i, t, v) for i, (t, v) in enumerate(zip(param_types, inputs, strict=True))]


def convert_one(index: int, wasm_type: str, value: InputValue) -> int | float:
    where = f"input {index} ({value!r}) for parameter type {wasm_type}"
    if wasm_type not in CORE_TYPES:
        raise InputError(
            f"unsupported parameter type {wasm_type} at position {index}; "
            f"only i32, i64, f32, f64 can be passed"
        )
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise InputError(f"{where}: expected a number or a numeric string")
    if wasm_type in _INT_RANGES:
        number = _to_int(value, where)
        low, high = _INT_RANGES[wasm_type]
        if not low <= number <= high:
            raise InputError(f"{where}: out of range [{low}, {high}]")
        return number
    f = _to_float(value, where)
    if wasm_type == "f32" and math.isfinite(f) and abs(f) > _F32_MAX:
        raise InputError(f"{where}: out of range for f32")
    return f


def _to_int(value: InputValue, where: str) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not value.is_integer():
            raise InputError(f"{where}: not an integer")
        return int(value)
    text = value.strip()
    try:
        return int(text, 10)
    except ValueError:
        raise InputError(f"{where}: not a decimal integer") from None


def _to_float(value: InputValue, where: str) -> float:
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(value.strip())
    except ValueError:
        raise InputError(f"{where}: not a number") from None


def format_value(value: int | float, wasm_type: str = "") -> str:
    """Decimal text as upstream's Rust proplet writes it (`{}` Display: 2.0 → "2", NaN → "NaN")."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    return format_float(value, f32=wasm_type == "f32")


def format_float(value: float, *, f32: bool = False) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if f32:
        value = _shortest_f32(value)
    if value.is_integer() and abs(value) < 1e16:
        return str(int(value)) if value != 0 or math.copysign(1, value) > 0 else "-0"
    return repr(value)


def _shortest_f32(value: float) -> float:
    target = struct.unpack("<f", struct.pack("<f", value))[0]
    for digits in range(1, 10):
        candidate = float(f"{target:.{digits}g}")
        if struct.unpack("<f", struct.pack("<f", candidate))[0] == target:
            return candidate
    return target
