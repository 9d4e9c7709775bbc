"""Fit the twin's esp32s3 profile from the output of upstream's Zephyr benchmark (reference §10).

The benchmark (`examples/esp32s3-wasm-benchmark-zephyr`) ramps instances of a workload one at a time
and prints, per step and at the end of a ramp (its printf formats, verbatim)::

    instances=%-3d  heap=%4uKB  min=%4uKB  cpu=%3u%%  up=%us
      +instance cost ~%uKB  latency %uus
    instances=%-3d  SPAWN_FAIL
    instances=%-3d  TASK_DIED (errors=%u)
    Peak: %d concurrent WASM instances

Lines may carry Zephyr log prefixes (``[00:00:01.234,000] <inf> bench: ``), ANSI colours and CRLF;
one log may hold several workloads and experiments (a line naming the workload, e.g.
``=== Workload: mem_stress ===`` or ``workload: cpu_stress``, or ``EXPERIMENT=6`` for the diverse
sets, starts its ramps; a ramp also ends when the instance count starts again).

Per workload, free heap falls linearly with the instance count, so a least-squares line
heap(N) = baseline − N × cost gives the free arena before any instance and the cost of one; heap − min
(min is the low-water mark) is what an instantiation needs on top, only while it runs. From those the
calibration builds one profile: the arena (``--arena``, default the benchmark's 192 KiB), the runtime's
share of it, the per-instance overhead (the workloads' costs less their linear memory) and the
transient; it then replays every ramp on that profile (`simulate_ramp`) and prints the peak the fitted
model predicts next to the peak the log recorded, and writes the profile for scenarios
(``profile: FILE.yaml`` in a fleet group).
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from twin.devices.esp32s3 import (
    DIVERSE,
    ESP32S3,
    WORKLOAD_MODULE_BYTES,
    WORKLOAD_PAGES,
    Esp32S3Spec,
    Ramp,
    simulate_ramp,
)  # fmt: skip

KIB = 1024
WASM_PAGE = 64 * KIB
ARENA_BYTES = 196_608  # §10: CONFIG_COMMON_LIBC_MALLOC_ARENA_SIZE
_NUM = r"(\d+(?:\.\d+)?)"
_KB = r"\s*(?:KB|KiB|K)?"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_SAMPLE = re.compile(
    rf"instances=\s*(\d+)\s+heap=\s*{_NUM}{_KB}\s+min=\s*{_NUM}{_KB}"
    rf"(?:\s+cpu=\s*{_NUM}\s*%?)?(?:\s+up=\s*{_NUM}\s*s?)?"
)
_END = re.compile(r"instances=\s*(\d+)\s+(SPAWN_FAIL|TASK_DIED)(?:\s*\(errors=\s*(\d+)\))?")
_COST = re.compile(rf"\+instance cost\s*~?\s*{_NUM}{_KB}(?:\s+latency\s+{_NUM}\s*us)?")
_PEAK = re.compile(r"Peak:\s*(\d+)\s+concurrent WASM instances")
_NAMES = "|".join(sorted({*WORKLOAD_PAGES, "diverse"}, key=len, reverse=True))
_WORKLOAD = re.compile(rf"(?i)(?:workload\s*[:=]?\s*|={{2,}}\s*|-{{2,}}\s*)({_NAMES})\b")
_EXPERIMENT = re.compile(r"(?i)experiment\s*[:=#]?\s*(\d+)")


class CalibrationError(ValueError):
    pass


@dataclass
class Run:
    """One ramp of one workload."""

    source: str
    workload: str
    samples: list[tuple[int, float, float]] = field(default_factory=list)  # (instances, heap KB, min KB)
    costs_kb: list[float] = field(default_factory=list)
    latencies_us: list[float] = field(default_factory=list)
    end: str | None = None  # SPAWN_FAIL | TASK_DIED, as printed; None: the ramp ran to MAX_INSTANCES
    errors: int | None = None
    peak_line: int | None = None

    @property
    def recorded_peak(self) -> int:
        """The peak the log states ("Peak: N"), else the highest instance count it sampled."""
        if self.peak_line is not None:
            return self.peak_line
        return max((n for n, _, _ in self.samples), default=0)

    @property
    def closed(self) -> bool:
        return self.end is not None or self.peak_line is not None


@dataclass(frozen=True)
class Fit:
    baseline_kb: float  # free heap with no instance
    per_instance_kb: float
    rmse_kb: float
    samples: int


def parse_log(text: str, source: str = "<log>") -> list[Run]:
    runs: list[Run] = []
    current: Run | None = None
    workload = "unknown"

    def new_run() -> Run:
        run = Run(f"{source}#{len(runs) + 1}", workload)
        runs.append(run)
        return run

    for raw in text.splitlines():
        line = _ANSI.sub("", raw).strip()
        if m := _SAMPLE.search(line):
            n, heap, low = int(m.group(1)), float(m.group(2)), float(m.group(3))
            if current is None or current.closed or (current.samples and n <= current.samples[-1][0]):
                current = new_run()
            current.samples.append((n, heap, low))
        elif m := _END.search(line):
            if current is None or current.closed:
                current = new_run()
            current.end = m.group(2)
            current.errors = int(m.group(3)) if m.group(3) is not None else None
        elif (m := _COST.search(line)) and current is not None:
            current.costs_kb.append(float(m.group(1)))
            if m.group(2) is not None:
                current.latencies_us.append(float(m.group(2)))
        elif (m := _PEAK.search(line)) and current is not None:
            current.peak_line = int(m.group(1))
        elif m := _WORKLOAD.search(line):
            workload, current = m.group(1).lower(), None
        elif (m := _EXPERIMENT.search(line)) and m.group(1) == "6":
            workload, current = "diverse", None
    return [r for r in runs if r.samples or r.end]


def fit_line(samples: Sequence[tuple[int, float]]) -> Fit:
    """Least squares of heap_free = baseline - n * cost."""
    count = len(samples)
    xs = [float(n) for n, _ in samples]
    if len(set(xs)) < 2:
        raise CalibrationError(f"need samples at two or more instance counts to fit, got {count}")
    mean_x, mean_y = sum(xs) / count, sum(y for _, y in samples) / count
    sxx = sum((x - mean_x) ** 2 for x in xs)
    sxy = sum((x - mean_x) * (y - mean_y) for x, (_, y) in zip(xs, samples, strict=True))
    slope = sxy / sxx
    intercept = mean_y - slope * mean_x
    sse = sum((y - (intercept + slope * x)) ** 2 for x, (_, y) in zip(xs, samples, strict=True))
    return Fit(intercept, -slope, (sse / count) ** 0.5, count)


def _ramp(spec: Esp32S3Spec, workload: str, pages: int) -> Ramp:
    if workload == "diverse":
        cycle = [(w, WORKLOAD_MODULE_BYTES, WORKLOAD_PAGES[w]) for w in DIVERSE]
        return simulate_ramp(spec, 0, 0, cycle)
    return simulate_ramp(spec, WORKLOAD_MODULE_BYTES, pages)


@dataclass(frozen=True)
class WorkloadFit:
    workload: str
    runs: tuple[Run, ...]
    fit: Fit | None
    pages: int | None  # linear memory pages per instance: known, or inferred from the fit
    model_peak: int = 0  # what the fitted profile admits in the benchmark's ramp

    @property
    def samples(self) -> list[tuple[int, float, float]]:
        return [s for run in self.runs for s in run.samples]


@dataclass(frozen=True)
class Calibration:
    workloads: tuple[WorkloadFit, ...]
    spec: Esp32S3Spec  # the fitted profile
    arena_bytes: int
    baseline_kb: float
    fixed_kb: float  # per instance, without linear memory
    transient_kb: float
    sources: tuple[str, ...] = ()

    @property
    def runs(self) -> list[Run]:
        return [run for w in self.workloads for run in w.runs]

    def profile(self) -> dict[str, Any]:
        """The profile file's content (twin.devices.profiles): base, overrides, and the fit."""
        s = self.spec
        return {
            "base": "esp32s3",
            "name": "calibrated from the Zephyr benchmark's output",
            "source": list(self.sources),
            "free_dram_bytes": s.free_dram_bytes,
            "wamr_baseline_bytes": s.wamr_baseline_bytes,
            "instance_overhead_bytes": s.instance_overhead_bytes,
            "spawn_transient_bytes": s.spawn_transient_bytes,
            "fit": {w.workload: {"baseline_kb": round(w.fit.baseline_kb, 2) if w.fit else None,
                                 "per_instance_kb": round(w.fit.per_instance_kb, 2) if w.fit else None,
                                 "recorded_peak": max(r.recorded_peak for r in w.runs),
                                 "model_peak": w.model_peak} for w in self.workloads},
        }  # fmt: skip

    def report(self) -> str:
        head = (f"{'workload':<11} {'ramps':>5} {'samples':>7} {'baseline':>9} {'per inst.':>9} {'rmse':>6} "
                f"{'recorded peak':<24} {'model peak':>10}")  # fmt: skip
        lines = [head]
        for w in self.workloads:
            f = w.fit
            fitted = (f"{f.baseline_kb:7.1f}KB {f.per_instance_kb:7.2f}KB {f.rmse_kb:6.2f}"
                      if f is not None else f"{'(too few samples)':>25}")  # fmt: skip
            for run in w.runs:
                recorded = f"{run.recorded_peak} ({_ending(run)})"
                mark = "" if _agrees(run, w.model_peak) else "  <- differs"
                lines.append(f"{w.workload:<11} {len(w.runs):>5} {len(w.samples):>7} {fitted} "
                             f"{recorded:<24} {w.model_peak:>10}{mark}")  # fmt: skip
        lines.append(
            f"fit: arena {self.arena_bytes / KIB:.0f} KiB, free before any instance {self.baseline_kb:.1f} "
            f"KB, {self.fixed_kb:.2f} KB per instance + 64 KB per linear memory page, "
            f"{self.transient_kb:.1f} KB while instantiating"
        )
        lines.append("esp32s3 profile (--write FILE.yaml writes it; a fleet group takes profile: FILE.yaml):")
        lines += [f"  {k}: {v}" for k, v in self.profile().items() if k not in ("fit", "source", "name")]
        return "\n".join(lines)


def _ending(run: Run) -> str:
    if run.end == "TASK_DIED":
        return f"TASK_DIED, errors={run.errors}" if run.errors is not None else "TASK_DIED"
    return run.end or "MAX_INSTANCES"


def _agrees(run: Run, model_peak: int) -> bool:
    # A task that died ended its ramp for another reason than memory: the model cannot predict it.
    return run.end == "TASK_DIED" or run.recorded_peak == model_peak


def calibrate_runs(runs: Sequence[Run], *, arena_bytes: int = ARENA_BYTES, base: Esp32S3Spec = ESP32S3,
                   sources: Sequence[str] = ()) -> Calibration:  # fmt: skip
    by_workload: dict[str, list[Run]] = {}
    for run in runs:
        by_workload.setdefault(run.workload, []).append(run)
    fits: dict[str, Fit | None] = {}
    for name, group in by_workload.items():
        try:
            fits[name] = fit_line([(n, heap) for run in group for n, heap, _ in run.samples])
        except CalibrationError:
            fits[name] = None
    fitted = {name: f for name, f in fits.items() if f is not None}
    if not fitted:
        raise CalibrationError("no workload has samples at two or more instance counts: nothing to fit")
    # Lines are fitted on ramps of one known workload (the diverse sets mix costs: no line).
    known = {n: f for n, f in fitted.items() if n in WORKLOAD_PAGES}
    if not known:
        raise CalibrationError("no ramp of a known single workload (cpu_stress, mem_stress, ...) to fit "
                               "the per-instance cost from")  # fmt: skip
    # Every ramp starts from the same arena: one baseline, weighted by samples.
    weight = sum(f.samples for f in known.values())
    baseline_kb = sum(f.baseline_kb * f.samples for f in known.values()) / weight
    fixed_kb = sum((f.per_instance_kb - WORKLOAD_PAGES[n] * 64) * f.samples for n, f in known.items()) \
        / sum(f.samples for f in known.values())
    gaps = [heap - low for run in runs for _, heap, low in run.samples]
    transient_kb = max(0.0, statistics.median(gaps)) if gaps else 0.0
    parts = base.wasm_stack_bytes + base.exec_env_bytes + base.thread_stack_bytes + base.app_heap_bytes
    overhead = round(fixed_kb * KIB) - parts
    if overhead < 0:
        raise CalibrationError(
            f"fitted per-instance cost {fixed_kb:.2f} KB is below the profile's fixed parts ({parts} B: "
            "wasm stack, exec env, thread stack, app heap): check the workloads and --arena")
    runtime = round(arena_bytes - baseline_kb * KIB) - base.module_cost(WORKLOAD_MODULE_BYTES)
    if runtime < 0:
        raise CalibrationError(f"the log's free heap ({baseline_kb:.1f} KB before any instance) exceeds the "
                               f"arena ({arena_bytes} B): give the board's --arena")  # fmt: skip
    transient = round(transient_kb * KIB)
    spec = replace(base, free_dram_bytes=arena_bytes, wamr_baseline_bytes=runtime,
                   instance_overhead_bytes=overhead, spawn_transient_bytes=transient)
    workloads = []
    for name, group in by_workload.items():
        f = fits[name]
        pages = WORKLOAD_PAGES.get(name)
        if pages is None and f is not None and name != "diverse":
            pages = max(0, round((f.per_instance_kb - fixed_kb) / 64))
        peak = _ramp(spec, name, pages or 0).peak
        workloads.append(WorkloadFit(name, tuple(group), f, pages, peak))
    return Calibration(tuple(workloads), spec, arena_bytes, baseline_kb, fixed_kb, transient_kb,
                       tuple(sources))  # fmt: skip


def calibrate_texts(texts: Iterable[tuple[str, str]], *, arena_bytes: int = ARENA_BYTES) -> Calibration:
    runs: list[Run] = []
    sources: list[str] = []
    for source, text in texts:
        found = parse_log(text, source)
        if not found:
            raise CalibrationError(
                f"{source}: no benchmark lines ('instances=N  heap=  KB  min=  KB  cpu=  %  up=s')"
            )
        runs += found
        sources.append(source)
    return calibrate_runs(runs, arena_bytes=arena_bytes, sources=sources)


def calibrate_files(paths: Iterable[Path], *, arena_bytes: int = ARENA_BYTES) -> Calibration:
    texts = []
    for path in paths:
        try:
            texts.append((str(path), path.read_text(errors="replace")))
        except OSError as exc:
            raise CalibrationError(f"{path}: cannot read: {exc.strerror}") from exc
    return calibrate_texts(texts, arena_bytes=arena_bytes)
