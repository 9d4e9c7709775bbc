"""Bounded teardown: a stop returns even when a task swallows its cancellation, and names that task."""

from __future__ import annotations

import asyncio
import logging

import pytest

from orchestrator.adapters.aio import cancel_and_wait


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
