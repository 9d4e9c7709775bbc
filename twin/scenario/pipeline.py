"""Load → run → judge → write: what ``propeller scenario run`` does, usable from Python and pytest.

Exit codes: 0 every expectation of every scenario holds; 1 one failed (or a run crashed); 2 a file
is invalid or no runner is available (nothing was run); 3 none failed for sure, but at least one
scenario is inconclusive: an expectation failed while the host could not keep up with its timers
(twin.scenario.fidelity; the summary gives the lag and the budget).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from twin.scenario import Runner, RunnerUnavailable, get_runner
from twin.scenario.expectations import evaluate_all
from twin.scenario.progress import Progress
from twin.scenario.result import ScenarioResult
from twin.scenario.spec import Scenario, ScenarioError, load_scenario
from twin.scenario.trace import Trace

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_INCONCLUSIVE = 0, 1, 2, 3


def new_trace(scenario: Scenario) -> Trace:
    meta = {"duration_s": scenario.duration_s, "source": scenario.source, "broker": scenario.broker}
    return Trace(scenario.name, scenario.seed, meta)


async def run_scenario(
    scenario: Scenario, runner: Runner, *, progress: Callable[[float], None] | None = None,
    trace: Trace | None = None,
) -> ScenarioResult:  # fmt: skip
    """Run one scenario and judge it; a crashing runner gives a failed result, not an exception."""
    trace = trace if trace is not None else new_trace(scenario)
    started = time.monotonic()
    error = None
    try:
        await runner.run(scenario, trace, progress or (lambda _f: None))
    except Exception as exc:  # the verdict must say the run broke, and the other scenarios still run
        error = f"{type(exc).__name__}: {exc}"
    trace.meta["trace_hash"] = trace.digest()
    result = ScenarioResult(scenario, trace, [], time.monotonic() - started, error)
    if error is None:
        result.verdicts = evaluate_all(trace, scenario)
    return result


def output_paths(report: str | Path, scenario: Scenario, many: bool) -> tuple[Path, Path]:
    """(html, trace) paths: ``report`` is a directory, or an ``.html`` file when one scenario runs."""
    p = Path(report)
    if p.suffix == ".html":
        html = p if not many else p.with_name(f"{p.stem}-{scenario.name}.html")
    else:
        html = p / f"{scenario.name}.html"
    return html, html.with_name(html.name.removesuffix(".html") + ".trace.jsonl")


def write_outputs(result: ScenarioResult, report: str | Path, many: bool) -> None:
    from twin.scenario.report import write_report

    html, trace_path = output_paths(report, result.scenario, many)
    result.outputs["trace"] = str(result.trace.write(trace_path))
    result.outputs["report"] = str(write_report(result, html))


def load_all(paths: Sequence[str | Path], seed: int | None, err: TextIO) -> list[Scenario] | None:
    scenarios, bad = [], False
    for path in paths:
        try:
            scenarios.append(load_scenario(path, seed=seed))
        except ScenarioError as exc:
            bad = True
            print(exc, file=err)
    if not paths:
        print("no scenario file given", file=err)
        return None
    return None if bad else scenarios


def run_scenarios(
    paths: Sequence[str | Path], seed: int | None = None, junit: str | Path | None = None,
    report_dir: str | Path | None = None, *, runner: Runner | None = None, mode: str = "live",
    runner_options: dict[str, object] | None = None, out: TextIO | None = None, err: TextIO | None = None,
) -> int:  # fmt: skip
    out = out or sys.stdout
    err = err or sys.stderr
    scenarios = load_all(paths, seed, err)
    if scenarios is None:
        return EXIT_INVALID
    if runner is None:
        try:
            runner = get_runner(mode, **(runner_options or {}))
        except RunnerUnavailable as exc:
            print(f"error: {exc}", file=err)
            return EXIT_INVALID
    results: list[ScenarioResult] = []
    for scenario in scenarios:
        bar = Progress(f"{scenario.name} (seed {scenario.seed})", err)
        with bar:
            result = asyncio.run(run_scenario(scenario, runner, progress=bar))
        if report_dir is not None:
            write_outputs(result, report_dir, len(scenarios) > 1)
        results.append(result)
        print(result.summary(), file=out)
        for kind, path in result.outputs.items():
            print(f"  {kind}: {path}", file=out)
    if junit is not None:
        from twin.scenario.junit import write_junit

        print(f"junit: {write_junit(results, junit)}", file=out)
    failed = [r for r in results if not r.passed and not r.inconclusive]
    unsure = [r for r in results if r.inconclusive]
    if len(results) > 1:
        passed = len(results) - len(failed) - len(unsure)
        extra = f", {len(unsure)} inconclusive" if unsure else ""
        print(f"{passed}/{len(results)} scenarios passed{extra}", file=out)
    return EXIT_FAILED if failed else EXIT_INCONCLUSIVE if unsure else EXIT_OK
