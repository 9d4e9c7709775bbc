"""Bounded teardown: a stop returns even when a task swallows its cancellation, and names that task."""

from __future__ import annotations

import asyncio
import logging

import pytest

from orchestrator.adapters.aio import cancel_and_wait, wait_event


async def test_a_task_ignoring_cancel_is_named_and_not_waited_on_forever(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue  # the bug a bounded teardown must survive

    async def fails() -> None:
        raise RuntimeError("already failed")

    stuck = asyncio.create_task(stubborn(), name="stubborn")
    polite = asyncio.create_task(asyncio.sleep(3600), name="polite")
    failed = asyncio.create_task(fails())
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="orchestrator.adapters.aio"):
        left = await cancel_and_wait([stuck, polite, failed, None], "test stop", timeout=0.2)
    assert left == {stuck}
    assert polite.cancelled() and not stuck.done()
    (record,) = caplog.records
    assert record.getMessage().startswith("test stop: stubborn still running 0.2 s after cancel, at ")
    assert record.getMessage().endswith("in stubborn")
    release.set()
    await stuck


async def test_nothing_to_cancel_returns_at_once() -> None:
    done = asyncio.create_task(asyncio.sleep(0))
    await done
    assert await cancel_and_wait([done, None], "idle stop") == set()


async def test_a_timer_loop_on_wait_event_stops_even_when_woken_as_it_is_cancelled() -> None:
    # The manager's and the proplet's timer loops: woken by an event, cancelled by stop(). When the
    # wake-up and the cancel land in the same loop iteration, the loop must still end.
    wake = asyncio.Event()
    rounds = 0

    async def timer_loop() -> None:
        nonlocal rounds
        while True:
            wake.clear()
            await wait_event(wake, 3600)
            rounds += 1

    loop_task = asyncio.create_task(timer_loop())
    await asyncio.sleep(0)  # it waits on the event
    wake.set()
    loop_task.cancel()
    assert await cancel_and_wait([loop_task], "test", timeout=5) == set()
    assert loop_task.cancelled()


async def test_wait_event_says_whether_the_event_was_set() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 0.01) is True
