"""Workers: blocking calls on threads for an event loop, with run_in_executor's semantics."""

from __future__ import annotations

import asyncio
import threading

import pytest

from orchestrator.adapters.workers import Workers


async def test_a_call_runs_on_a_named_thread_and_returns_its_value() -> None:
    workers = Workers(1, "unit")
    try:
        name = await workers.run(lambda: threading.current_thread().name)
        assert name == "unit_0"
        assert await workers.run(pow, 2, 10) == 1024
    finally:
        workers.shutdown()


async def test_what_the_call_raises_reaches_the_caller() -> None:
    workers = Workers(1, "unit")
    try:
        with pytest.raises(ZeroDivisionError):
            await workers.run(lambda: 1 / 0)
        assert await workers.run(lambda: "still working") == "still working"
    finally:
        workers.shutdown()


class Held:
    """A call that says when a thread has entered it and returns (its thread's name) once released."""

    def __init__(self) -> None:
        self.inside = threading.Semaphore(0)
        self.released = threading.Event()

    def __call__(self) -> str:
        self.inside.release()
        self.released.wait(30)
        return threading.current_thread().name

    async def entered(self) -> bool:
        return await asyncio.to_thread(self.inside.acquire, True, 30)


async def test_calls_run_at_once_up_to_the_thread_count_and_no_further() -> None:
    workers = Workers(2, "unit")
    hold = Held()
    try:
        held = [asyncio.ensure_future(workers.run(hold)) for _ in range(3)]
        # Two calls are inside at once; the third cannot enter until one ends (only two threads exist).
        assert await hold.entered() and await hold.entered()
        assert not hold.inside.acquire(timeout=0.2)
        hold.released.set()
        names = await asyncio.gather(*held)
        assert set(names) == {"unit_0", "unit_1"}
    finally:
        hold.released.set()
        workers.shutdown()


async def test_a_call_cancelled_before_a_thread_takes_it_never_runs() -> None:
    workers = Workers(1, "unit")
    gate = threading.Event()
    ran: list[str] = []
    try:
        first = asyncio.ensure_future(workers.run(gate.wait, 30))
        await asyncio.sleep(0)  # queued first: the only thread takes it and waits at the gate
        second = asyncio.ensure_future(workers.run(ran.append, "second"))
        await asyncio.sleep(0)
        second.cancel()
        gate.set()
        assert await first is True
        # A call queued after the cancelled one runs: the thread went past the cancelled one.
        await workers.run(ran.append, "third")
        assert ran == ["third"]
        with pytest.raises(asyncio.CancelledError):
            await second
    finally:
        gate.set()
        workers.shutdown()


async def test_shutdown_cancels_what_no_thread_took_and_refuses_new_calls() -> None:
    workers = Workers(1, "unit")
    hold = Held()
    running = asyncio.ensure_future(workers.run(hold))
    queued = asyncio.ensure_future(workers.run(lambda: "never"))
    assert await hold.entered()
    workers.shutdown(wait=False, cancel_pending=True)
    hold.released.set()
    assert await running == "unit_0"  # a running call finishes
    with pytest.raises(asyncio.CancelledError):
        await queued
    with pytest.raises(RuntimeError, match="shut down"):
        await workers.run(lambda: None)
    await asyncio.to_thread(workers.shutdown)  # joins the thread


def test_at_least_one_thread() -> None:
    with pytest.raises(ValueError, match="at least one thread"):
        Workers(0, "unit")
