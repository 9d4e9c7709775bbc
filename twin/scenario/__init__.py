"""Scenarios of the digital twin: the language (spec), the trace, the verdict, and the outputs.

A runner executes a Scenario and records what happened into a Trace; it is anything with::

    async def run(self, scenario: Scenario, trace: Trace, progress: Callable[[float], None]) -> None

``progress`` takes the fraction done in [0, 1]. The live runner (broker + manager + simulated fleet)
lives in ``twin.runner``, which must offer ``create_runner(mode: str, **options) -> Runner``;
``get_runner`` imports it only when asked, so validating or replaying never needs it.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from typing import Any, Protocol

from twin.scenario.expectations import EXPECTATIONS, Expectation, Verdict, evaluate_all
from twin.scenario.replay import ReplayRunner
from twin.scenario.spec import Scenario, ScenarioError, load_scenario, load_scenario_text
from twin.scenario.trace import Trace, TraceEvent
from twin.scenario.yamlread import Issue

__all__ = [
    "EXPECTATIONS",
    "Expectation",
    "Issue",
    "ReplayRunner",
    "Runner",
    "RunnerUnavailable",
    "Scenario",
    "ScenarioError",
    "Trace",
    "TraceEvent",
    "Verdict",
    "evaluate_all",
    "get_runner",
    "load_scenario",
    "load_scenario_text",
    "run_scenarios",
]


class Runner(Protocol):
    async def run(self, scenario: Scenario, trace: Trace, progress: Callable[[float], None]) -> None: ...


class RunnerUnavailable(RuntimeError):
    pass


def get_runner(mode: str = "live", **options: Any) -> Runner:
    """``replay`` (options: trace=PATH, speed=None) or a mode of ``twin.runner`` (live, virtual...)."""
    if mode == "replay":
        if "trace" not in options:
            raise RunnerUnavailable("the replay runner needs a recorded trace (--replay TRACE)")
        return ReplayRunner(options["trace"], speed=options.get("speed"))
    if importlib.util.find_spec("twin.runner") is None:
        raise RunnerUnavailable(
            f"the {mode} runner (module twin.runner) is not installed yet; "
            "replay a recorded trace with --replay TRACE"
        )
    create = getattr(importlib.import_module("twin.runner"), "create_runner", None)
    if create is None:
        raise RunnerUnavailable("twin.runner has no create_runner(mode, **options)")
    runner: Runner = create(mode, **options)
    return runner


def run_scenarios(*args: Any, **kwargs: Any) -> int:
    """Load, run, judge and write outputs for scenario files; the exit code (see pipeline.run_scenarios)."""
    from twin.scenario.pipeline import run_scenarios as run

    return run(*args, **kwargs)
