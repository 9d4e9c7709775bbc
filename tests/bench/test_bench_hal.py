"""HAL cost per run: a component without the HAL vs the HAL probe (11 interfaces linked) doing one,
and four, HAL calls. Side by side in one process; `pytest tests/bench/test_bench_hal.py --benchmark-enable`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from proplets.runtime import RunRequest
from proplets.runtime.hal.options import HalOptions
from proplets.runtime.wasmtime_runtime import WasmtimeRuntime

WASM = Path(__file__).resolve().parents[1] / "wasm"
CALC = bytes(wasmtime.wat2wasm((WASM / "calc.component.wat").read_text()))
PROBE = bytes(wasmtime.wat2wasm((WASM / "hal_probe.component.wat").read_text()))


@pytest.fixture(scope="module")
def rt() -> Iterator[WasmtimeRuntime]:
    runtime = WasmtimeRuntime()
    yield runtime
    runtime.close()


@pytest.mark.parametrize(
    ("wasm", "function", "inputs", "expected"),
    [
        (CALC, "add", ("2", "40"), "42"),
        (PROBE, "platform-info", (), 'platform-type: "host"'),
        (PROBE, "hash", ("[1, 2, 3]", "sha256"), "ok(["),
        (PROBE, "put-get", ('"b"', '"k"', "[1]"), "ok([1])"),
    ],
    ids=["no-hal", "hal-platform-info", "hal-hash", "hal-storage-4-calls"],
)
def test_bench_component_run(
    benchmark: Any,
    rt: WasmtimeRuntime,
    tmp_path: Path,
    wasm: bytes,
    function: str,
    inputs: tuple[str, ...],
    expected: str,
) -> None:
    request = RunRequest("bench", wasm, function, inputs, hal=HalOptions(str(tmp_path)))
    out = benchmark(lambda: rt.run(request))
    assert out.error is None and expected in out.results
