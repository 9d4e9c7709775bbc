"""Dispatch cost with a long history: the engine restored with many finished tasks, then one task
created, dispatched and completed per round (``propeller bench dispatch`` has the full table).

Run with ``pytest tests/bench/test_bench_dispatch.py --benchmark-enable`` to compare the sizes side by
side; under the default ``--benchmark-disable`` each body runs once, as a plain test.
"""

from __future__ import annotations

import itertools

import pytest

from orchestrator.bench_dispatch import WALL0, _announce, _history, _result
from orchestrator.core.engine import Engine, EngineConfig


@pytest.mark.parametrize("stored", [1_000, 50_000])
def test_dispatch_with_history(benchmark: pytest.FixtureRequest, stored: int) -> None:
    engine = Engine(EngineConfig(domain="bench", channel="c", terminal_cache=1_000))
    engine.restore(_history(stored), [], now=0.0, wall=WALL0)
    engine.link_restored(0.0, WALL0)  # on the broker, as a manager is after its restore
    _announce(engine, "p1", 0.0)
    engine.take_commands()
    clock = itertools.count(1)
    spec = {"name": "add", "file": "AGFzbQEAAAA=", "inputs": [1, 2]}

    def one_task() -> None:
        now = next(clock) * 1e-3
        task = engine.create_task(spec, WALL0 + now)
        engine.start_task(task.id, now, WALL0 + now)
        engine.take_commands()
        _result(engine, task.id, now)
        engine.take_commands()

    benchmark(one_task)  # type: ignore[operator]
    # The history stays in the store: memory holds the live tasks and a bounded cache only.
    assert engine.tasks.live == {} and len(engine.tasks) <= 1_000
