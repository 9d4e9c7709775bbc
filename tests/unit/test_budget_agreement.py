"""One memory budget: the twin's esp32s3 device and the proplet engine admit the same instances.

Both admit through ``proplets.runtime.budget.DeviceBudget`` with ``ESP32S3_ZEPHYR_BENCH`` (the twin's
default profile is built from it): the Zephyr benchmark's two headline results must come out of both,
instance for instance: 24 CPU-bound instances with memory still free, and modules declaring one
64 KiB page each stopping after a handful.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from orchestrator import wire
from proplets.core import PropletConfig, PropletEngine, RunTask
from proplets.runtime.budget import ESP32S3_ZEPHYR_BENCH
from twin.devices.esp32s3 import ESP32S3, MemoryModel

T = wire.Topics("d", "c")


def _module(pages: int, pad: int = 100) -> bytes:
    out = b"\0asm\x01\0\0\0"
    if pages:
        out += bytes([0x05, 0x03, 0x01, 0x00, pages])
    body = b"\x01x" + b"\0" * pad
    return out + bytes([0x00, len(body)]) + body


def _engine_ramp(wasm: bytes, tries: int = 40) -> tuple[int, str, int]:
    """Starts one after another on the proplet engine until one is refused: (admitted, why, free)."""
    budget = ESP32S3_ZEPHYR_BENCH  # the engine's own slot limit set from it, as SimDevice sets it
    e = PropletEngine(PropletConfig(proplet_id="dev1", domain="d", channel="c", namespace="embedded",
                                    profile=wire.Profile.EMBEDDED, budget=budget,
                                    max_instances=budget.max_instances))  # fmt: skip
    e.on_connected(0.0)
    e.take_commands()
    assert e.budget is not None
    for i in range(tries):
        spec = {"id": f"t{i}", "name": "main", "file": "AGFzbQEAAAA=", "inputs": [1], "proplet_id": "dev1"}
        e.handle(T.start, json.dumps(spec).encode(), 1.0)
        if not any(isinstance(c, RunTask) for c in e.take_commands()):
            return i, "busy", e.budget.free_bytes
        refusal = e.admit(f"t{i}", wasm)
        if refusal is not None:
            return i, refusal, e.budget.free_bytes
    raise AssertionError(f"{tries} instances admitted")


def _twin_ramp(wasm: bytes, tries: int = 40) -> tuple[int, str, int]:
    model = MemoryModel(ESP32S3)
    pages = wasm.count(b"\x05\x03\x01\x00") and wasm[wasm.index(b"\x05\x03\x01\x00") + 4]
    for i in range(tries):
        got = model.admit(len(wasm), pages, module_key=hashlib.sha256(wasm).hexdigest())  # as SimDevice
        if isinstance(got, str):
            return i, got, model.free_bytes
    raise AssertionError(f"{tries} instances admitted")


def test_the_twin_profile_is_the_engines_budget() -> None:
    assert ESP32S3.budget_config() == ESP32S3_ZEPHYR_BENCH


@pytest.mark.parametrize(("pages", "expected"), [(0, 24), (1, 2)])
def test_twin_device_and_proplet_engine_admit_the_same_instances(pages: int, expected: int) -> None:
    wasm = _module(pages)
    admitted, why, free = _engine_ramp(wasm)
    twin_admitted, twin_why, twin_free = _twin_ramp(wasm)
    assert (admitted, free) == (twin_admitted, twin_free)
    assert admitted == expected
    if pages == 0:  # CPU-bound: the instance limit stops the ramp, with memory still free
        assert why == "busy" and twin_why.startswith("proplet busy") and free > 32 * 1024
    else:  # one 64 KiB page each: out of memory after a handful
        assert why.startswith("out of memory") and why == twin_why
