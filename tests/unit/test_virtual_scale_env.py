"""The fleet-scale run's simpy environment keeps events due now in a FIFO: the order must be simpy's."""

from __future__ import annotations

import random
from typing import Any

import pytest
import simpy

from twin.virtual_scale import _CountingEnv


def _workload(env: simpy.Environment, seed: int) -> list[tuple[float, str]]:
    """Processes and callbacks that schedule zero-delay and later events, succeed events, interrupt
    processes (urgent) and chain callbacks within one instant: the order they ran in."""
    rng = random.Random(seed)
    seen: list[tuple[float, str]] = []

    def note(label: str) -> None:
        seen.append((float(env.now), label))

    def chain(label: str, depth: int) -> None:
        note(label)
        if depth:
            delay = rng.choice((0.0, 0.0, 0.0, 0.5, 1.0))  # many due now, some on integer instants
            env.timeout(delay).callbacks.append(lambda _e: chain(f"{label}.{depth}", depth - 1))
            if rng.random() < 0.3:
                ev = env.event()
                ev.callbacks.append(lambda _e: note(f"{label} event"))
                ev.succeed()

    def proc(name: str) -> Any:
        try:
            for i in range(4):
                yield env.timeout(rng.choice((0.0, 0.5, 1.0)))
                note(f"{name} step {i}")
                chain(f"{name}/{i}", 3)
        except simpy.Interrupt:
            note(f"{name} interrupted")

    procs = [env.process(proc(f"p{i}")) for i in range(30)]

    def interrupter() -> Any:
        yield env.timeout(1.0)
        for p in procs[::7]:
            if p.is_alive:
                p.interrupt()
                note("interrupt")

    env.process(interrupter())
    return seen


def test_same_order_as_simpy_and_every_event_counted() -> None:
    for seed in range(5):
        plain = _PlainCounting()
        expected = _workload(plain, seed)
        plain.run(until=6.0)
        fast = _CountingEnv()
        got = _workload(fast, seed)
        fast.run(until=6.0)
        assert got == expected
        assert len(got) > 500
        assert fast.steps == plain.steps
        assert fast.steps == plain.steps  # reading the count does not change it
        assert fast.peek() == plain.peek()


class _PlainCounting(simpy.Environment):
    steps = 0

    def step(self) -> None:
        self.steps += 1
        super().step()


def test_run_ends_as_simpy_run_does() -> None:
    for make in (simpy.Environment, _CountingEnv):
        env = make()
        _workload(env, 1)
        assert env.run() is None  # nothing left to do
        done = env.event()

        def finish(_ev: Any, done: simpy.Event = done) -> None:
            done.succeed("value")

        env.timeout(2.0).callbacks.append(finish)
        assert env.run(until=done) == "value"
        failing = env.event()
        failing.fail(ValueError("boom"))
        with pytest.raises(ValueError, match="boom"):
            env.run()
        never = env.event()
        with pytest.raises(RuntimeError, match="was not triggered"):
            env.run(until=never)
