"""The embedded profile: the Python proplet constrained like our Zephyr + WAMR firmware. Sans-I/O.

`propeller proplet --profile esp32s3` runs the same engine with these rules, so the manager's handling
of constrained devices is tested against a real process, and the twin's device model can reuse them:

- wire: `wire.Profile.EMBEDDED` (numeric inputs, results without proplet_id, 1023-byte messages),
  namespace ``embedded``, discovery metadata as the firmware writes it (reference §2.1), with the budget's
  total/free memory and instance limit;
- entry point: the firmware always calls ``main`` (§9.2). We call the export named like the task when
  the module has one (so the manager's ``name`` still means something), and ``main`` otherwise;
  nothing else (no ``run``/``_start`` fallback, no WASI, no components);
- inputs are i32 and the result is every i32 return value joined with ``,``; a ``main`` that returns
  nothing fails with the firmware's "Function has no return value";
- memory: every instance is admitted through `DeviceBudget` (module bytes + declared pages × 64 KiB +
  wasm stack + app heap + exec env, reference §9.2); the admission decision is the engine's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from proplets.runtime.budget import EMBED_PROPLET, BudgetConfig
from proplets.runtime.wasmbin import PAGE_BYTES, memory_requirements

I32_MIN, I32_MAX = -(2**31), 2**31 - 1
NAMESPACE = "embedded"
FIRMWARE_VERSION = "0.1.0-PROP-103"  # what upstream's embed-proplet announces (§2.1)


class EmbeddedInputError(ValueError):
    """An input the firmware could not pass as an i32; the message names the input."""


@dataclass(frozen=True)
class DeviceProfile:
    """A named embedded device: its wire identity and its WAMR memory budget."""

    name: str
    description: str
    cpu_arch: str
    tags: tuple[str, ...]
    budget: BudgetConfig


# upstream embed-proplet on an ESP32-S3 (§9.2, §9.4): 64 KiB heap, 16 KiB stack/heap/exec env per
# instance, 10 app slots. One small module fits at a time, exactly as on the board.
ESP32S3 = DeviceProfile(
    name="esp32s3",
    description="ESP32-S3 embed-proplet",
    cpu_arch="xtensa",
    tags=("embedded", "esp32s3", "zephyr"),
    budget=EMBED_PROPLET,
)

PROFILES: Mapping[str, DeviceProfile] = {ESP32S3.name: ESP32S3}


def device_profile(name: str) -> DeviceProfile:
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(["host", *sorted(PROFILES)])
        raise ValueError(f"unknown proplet profile {name!r} (known: {known})") from None


def discovery_metadata(
    device: DeviceProfile, *, total_bytes: int, free_bytes: int, max_instances: int, tags: Sequence[str] = ()
) -> dict[str, Any]:
    """Metadata as the firmware's `publish_discovery` writes it, plus our capacity extensions."""
    return {
        "description": device.description,
        "tags": list(tags) or list(device.tags),
        "environment": "embedded",
        "os": "zephyr",
        "hostname": "",
        "cpu_arch": device.cpu_arch,
        "total_memory_bytes": total_bytes,
        "free_memory_bytes": max(0, free_bytes),
        "max_instances": max_instances,
        "proplet_version": FIRMWARE_VERSION,
        "wasm_runtime": "wamr",
    }


@dataclass(frozen=True)
class CallPlan:
    """How the embedded proplet calls a module: which export, with which i32 inputs, and how far its
    linear memory may grow (None: no cap)."""

    function: str
    inputs: tuple[int, ...]
    memory_cap_bytes: int | None


def call_plan(task_name: str, inputs: Sequence[object], wasm: bytes, free_after: int | None) -> CallPlan:
    """The firmware's call of a task: its export or ``main``, i32 inputs, and linear memory capped at the
    declared pages plus what the heap has left after this instance (``free_after``, from admission;
    None: no budget, no cap). ValueError (the task's error) for a module or inputs it refuses. One plan
    for the proplet agent's embedded profile and the twin's devices."""
    function = select_export(task_name, function_exports(wasm))
    args = i32_inputs(inputs)
    cap = None
    if free_after is not None:
        pages, _ = memory_requirements(wasm)
        cap = pages * PAGE_BYTES + max(0, free_after)
    return CallPlan(function, args, cap)


def select_export(task_name: str, exports: Sequence[str]) -> str:
    """The export to call: the task's name if the module exports it, else ``main``."""
    if task_name and task_name in exports:
        return task_name
    if "main" in exports:
        return "main"
    listed = ", ".join(exports) or "no functions"
    raise ValueError(f"export 'main' not found (the embedded proplet calls main); module exports: {listed}")


def i32_inputs(values: Sequence[object]) -> tuple[int, ...]:
    """Inputs as the firmware passes them: integers in i32 range, or decimal strings of them."""
    out: list[int] = []
    for i, value in enumerate(values):
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, float) and value.is_integer():
            number = int(value)
        elif isinstance(value, str):
            try:
                number = int(value.strip(), 10)
            except ValueError:
                number = None
        if number is None:
            raise EmbeddedInputError(
                f"inputs[{i}] ({value!r}) is not an integer; the embedded proplet takes i32s"
            )
        if not I32_MIN <= number <= I32_MAX:
            raise EmbeddedInputError(f"inputs[{i}] ({number}) is out of i32 range [{I32_MIN}, {I32_MAX}]")
        out.append(number)
    return tuple(out)


def join_results(values: Sequence[int | float]) -> str:
    """Every i32 return value joined with ``,`` (wasm_handler.c); ValueError as the firmware would fail."""
    if not values:
        raise ValueError("Function has no return value")
    for i, v in enumerate(values):
        if isinstance(v, float) or not I32_MIN <= v <= I32_MAX:
            raise ValueError(f"return value {i} ({v!r}) is not an i32; the embedded proplet returns i32 only")
    return ",".join(str(int(v)) for v in values)


def function_exports(data: bytes) -> list[str]:
    """Names of a core module's exported functions, read from its export section (id 7)."""
    if data[:4] != b"\0asm" or len(data) < 8:
        raise ValueError("not a WebAssembly binary (missing \\0asm header)")
    if data[4] == 0x0D:
        raise ValueError("a component; the embedded proplet runs core modules only")
    pos, names = 8, []
    while pos < len(data):
        section = data[pos]
        size, pos = _uleb(data, pos + 1)
        end = pos + size
        if end > len(data):
            raise ValueError(f"section {section} at offset {pos} runs past the end of the module")
        if section == 7:
            count, p = _uleb(data, pos)
            for _ in range(count):
                length, p = _uleb(data, p)
                name = data[p : p + length].decode("utf-8", "replace")
                p += length
                kind = data[p]
                _index, p = _uleb(data, p + 1)
                if kind == 0x00:
                    names.append(name)
        pos = end
    return names


def _uleb(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError(f"truncated module: LEB128 runs past the end at offset {pos}")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 35:
            raise ValueError(f"malformed module: LEB128 too long at offset {pos}")
