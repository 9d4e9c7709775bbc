"""Fit the twin's esp32s3 memory constants from upstream benchmark logs (reference §10).

The benchmark ramps instances one at a time and prints, per step,
`instances=N heap=KB min=KB cpu=% up=s` and `+instance cost ~KB latency us`, then
`Peak: N concurrent WASM instances`. Free heap falls linearly with N, so a least-squares line
heap_free(N) = baseline - N * cost gives the free heap before any instance and the cost of one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from twin.devices.esp32s3 import ESP32S3, Esp32S3Spec

KIB = 1024
WASM_PAGE = 64 * KIB
_NUM = r"(-?\d+(?:\.\d+)?)"
_SAMPLE = re.compile(
    rf"instances={_NUM}\s+heap={_NUM}\s*(?:KB|KiB|K)?\s+min={_NUM}\s*(?:KB|KiB|K)?"
    rf"(?:\s+cpu={_NUM}\s*%?)?(?:\s+up={_NUM}\s*s?)?"
)
_COST = re.compile(rf"\+instance cost\s*~?\s*{_NUM}\s*(?:KB|KiB|K)?(?:\s+latency\s+{_NUM}\s*us)?")
_PEAK = re.compile(r"Peak:\s*(\d+)\s+concurrent WASM instances")


class CalibrationError(ValueError):
    pass


@dataclass
class Run:
    """One ramp: the samples between a restart of the instance count and the next."""

    source: str
    samples: list[tuple[int, float]] = field(default_factory=list)  # (instances, free heap KB)
    costs_kb: list[float] = field(default_factory=list)
    latencies_us: list[float] = field(default_factory=list)
    peak: int | None = None


@dataclass(frozen=True)
class Fit:
    baseline_kb: float  # free heap with no instance
    per_instance_kb: float
    rmse_kb: float
    samples: int


@dataclass(frozen=True)
class Calibration:
    overall: Fit
    runs: list[tuple[Run, Fit | None]]
    peak: int | None

    def constants(self) -> dict[str, int]:
        """Constants for the twin's esp32s3 model, in bytes."""
        return {"heap_free_baseline_bytes": round(self.overall.baseline_kb * KIB),
                "per_instance_bytes": round(self.overall.per_instance_kb * KIB)}

    def esp32s3_overrides(self, *, module_bytes: int = 312, memory_pages: int = 0,
                          spec: Esp32S3Spec = ESP32S3) -> dict[str, int]:
        """`Esp32S3Spec` fields that make the twin's model reproduce the fit (twin/devices/esp32s3.py).

        The benchmark's free heap at N=0 is the model's heap minus WAMR's baseline, and one instance
        costs the model's fixed parts plus module and linear memory; what is left is the overhead.
        """
        fixed = spec.wasm_stack_bytes + spec.exec_env_bytes + spec.thread_stack_bytes + spec.app_heap_bytes
        constants = self.constants()
        overhead = constants["per_instance_bytes"] - fixed - module_bytes - memory_pages * WASM_PAGE
        if overhead < 0:
            raise CalibrationError(
                f"fitted per-instance cost {constants['per_instance_bytes']} B is below the model's fixed "
                f"parts ({fixed} B stacks/exec env + {module_bytes} B module + {memory_pages} pages): "
                "check the workload's module size and memory pages")
        return {"free_dram_bytes": constants["heap_free_baseline_bytes"] + spec.wamr_baseline_bytes,
                "instance_overhead_bytes": overhead}

    def report(self) -> str:
        lines = [f"samples={self.overall.samples} baseline={self.overall.baseline_kb:.1f}KB "
                 f"per_instance={self.overall.per_instance_kb:.2f}KB rmse={self.overall.rmse_kb:.2f}KB"
                 + (f" peak={self.peak}" if self.peak is not None else "")]
        for run, fit in self.runs:
            detail = (f"baseline={fit.baseline_kb:.1f}KB per_instance={fit.per_instance_kb:.2f}KB"
                      if fit is not None else "too few samples to fit")
            reported = (f" reported_cost~{sum(run.costs_kb) / len(run.costs_kb):.1f}KB"
                        if run.costs_kb else "")
            lines.append(f"  {run.source}: n={len(run.samples)} {detail}{reported} peak={run.peak}")
        constants = self.constants()
        lines.append("esp32s3:")
        lines += [f"  {k}: {v}" for k, v in constants.items()]
        try:
            overrides = self.esp32s3_overrides()
        except CalibrationError as exc:
            lines.append(f"  # no Esp32S3Spec overrides: {exc}")
        else:
            lines.append("  # Esp32S3Spec overrides (cpu-bound 312-byte module, no linear memory):")
            lines += [f"  {k}: {v}" for k, v in overrides.items()]
        return "\n".join(lines)


def parse_log(text: str, source: str = "<log>") -> list[Run]:
    runs: list[Run] = []
    current: Run | None = None
    for line in text.splitlines():
        if m := _SAMPLE.search(line):
            n, heap = int(float(m.group(1))), float(m.group(2))
            if current is None or (current.samples and n <= current.samples[-1][0]) or current.peak:
                current = Run(f"{source}#{len(runs) + 1}")
                runs.append(current)
            current.samples.append((n, heap))
        elif (m := _COST.search(line)) and current is not None:
            current.costs_kb.append(float(m.group(1)))
            if m.group(2) is not None:
                current.latencies_us.append(float(m.group(2)))
        elif (m := _PEAK.search(line)) and current is not None:
            current.peak = int(m.group(1))
    return runs


def fit_line(samples: Sequence[tuple[int, float]]) -> Fit:
    """Least squares of heap_free = baseline - n * cost."""
    count = len(samples)
    xs = [float(n) for n, _ in samples]
    distinct = len(set(xs))
    if distinct < 2:
        raise CalibrationError(f"need samples at two or more instance counts to fit, got {count}")
    mean_x, mean_y = sum(xs) / count, sum(y for _, y in samples) / count
    sxx = sum((x - mean_x) ** 2 for x in xs)
    sxy = sum((x - mean_x) * (y - mean_y) for x, (_, y) in zip(xs, samples, strict=True))
    slope = sxy / sxx
    intercept = mean_y - slope * mean_x
    sse = sum((y - (intercept + slope * x)) ** 2 for x, (_, y) in zip(xs, samples, strict=True))
    return Fit(intercept, -slope, (sse / count) ** 0.5, count)


def calibrate_texts(texts: Iterable[tuple[str, str]]) -> Calibration:
    runs: list[Run] = []
    for source, text in texts:
        found = parse_log(text, source)
        if not found:
            raise CalibrationError(f"{source}: no benchmark lines ('instances=N heap=KB min=KB ...')")
        runs += found
    fits: list[tuple[Run, Fit | None]] = []
    for run in runs:
        try:
            fits.append((run, fit_line(run.samples)))
        except CalibrationError:
            fits.append((run, None))
    everything = [s for run in runs for s in run.samples]
    peaks = [run.peak for run in runs if run.peak is not None]
    return Calibration(fit_line(everything), fits, max(peaks) if peaks else None)


def calibrate_files(paths: Iterable[Path]) -> Calibration:
    texts = []
    for path in paths:
        try:
            texts.append((str(path), path.read_text(errors="replace")))
        except OSError as exc:
            raise CalibrationError(f"{path}: cannot read: {exc}") from exc
    return calibrate_texts(texts)
