"""Bounded asyncio teardown, shared by the manager, the proplet agent and the twin.

``task.cancel()`` followed by ``await task`` (or ``asyncio.gather``, or ``asyncio.wait_for``, which also
waits for the cancelled task to end) waits without bound: a task that swallows its cancellation, or
awaits something that cannot be cancelled, turns a stop into a hang, and in a test the hang lands in
the event loop's teardown where nothing names the culprit. ``cancel_and_wait`` waits a bounded time
and logs every task still running with the line it is stuck on, so a stop always returns.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

# How long a cancelled task may take to end. A well-behaved one ends within a few loop iterations
# (plus a socket close); on a host whose cores are saturated, loop lag reaches a few hundred ms, so 5 s
# is a wide margin, and still far below the test timeout so a stuck task is named rather than hung on.
CANCEL_GRACE_S = 5.0


async def cancel_and_wait(
    tasks: Iterable[asyncio.Future[Any] | None], what: str, timeout: float = CANCEL_GRACE_S
) -> set[asyncio.Future[Any]]:
    """Cancel ``tasks`` (``None`` and finished ones are skipped) and wait at most ``timeout`` seconds for
    them to end. Returns the ones still pending, each logged as a warning naming ``what`` was stopping,
    the task and where it is stuck. Exceptions of the ended tasks are consumed (a stop reports none)."""
    me = asyncio.current_task()
    pending = {t for t in tasks if t is not None and t is not me and not t.done()}
    for t in pending:
        t.cancel()
    still: set[asyncio.Future[Any]] = set()
    if pending:
        _done, still = await asyncio.wait(pending, timeout=timeout)
    for t in pending - still:
        if not t.cancelled():
            t.exception()  # retrieved: the loop would log "exception was never retrieved" otherwise
    for t in still:
        log.warning("%s: %s still running %.1f s after cancel, at %s", what, _name(t), timeout, _where(t))
    return still


def _name(future: asyncio.Future[Any]) -> str:
    return future.get_name() if isinstance(future, asyncio.Task) else repr(future)


def _where(future: asyncio.Future[Any]) -> str:
    if not isinstance(future, asyncio.Task):
        return "?"
    stack = future.get_stack()
    if not stack:
        return "?"
    frame = stack[-1]
    return f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until ``event`` is set or ``timeout`` seconds pass; True if it was set.

    Not ``asyncio.wait_for(event.wait(), timeout)``: on Python 3.11 that returns normally when the
    event is set in the same loop iteration as the caller is cancelled, swallowing the cancellation,
    so a timer loop built on it may never stop (seen as a manager stop waiting out CANCEL_GRACE_S).
    ``asyncio.timeout`` counts cancellations and always re-raises an outside one.
    """
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True
