"""Threads that run blocking calls for an event loop: the manager's SQLite writer, the proplet's Wasm runs.

Why not ``loop.run_in_executor(ThreadPoolExecutor(...), ...)``: each call there builds a
``concurrent.futures.Future`` (with its own ``Condition``), chains it to an asyncio future and wakes the
loop through both. On the 2-core machines we measure on, that round trip costs about 165 µs of CPU
(uvloop; 200 µs on asyncio's loop) against about 60 µs for the hand-off here: one ``SimpleQueue.put``
to a waiting thread, one ``call_soon_threadsafe`` back. The manager pays it per flush window and the
proplet per task (``docs/benchmarks.md``), so it is a fixed share of every task's cost.

Semantics follow ``run_in_executor``: a call whose awaiting coroutine was cancelled before a thread
picked it up is not run; one already running finishes and its result is dropped. Threads start on
demand, up to ``count``, and stay.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_Call = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]


class Workers:
    """Up to ``count`` threads named ``{name}_N``; ``await workers.run(fn, *args)`` runs ``fn`` on one."""

    def __init__(self, count: int, name: str) -> None:
        if count < 1:
            raise ValueError(f"Workers needs at least one thread, got {count}")
        self.count = count
        self.name = name
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = threading.Semaphore(0)  # released by a thread each time it waits for work
        self._closed = False
        self._start_lock = threading.Lock()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise RuntimeError(f"{self.name} workers are shut down")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put((loop, future, fn, args))
        if not self._idle.acquire(blocking=False):
            self._add_thread()
        return await future

    def shutdown(self, *, wait: bool = True, cancel_pending: bool = False) -> None:
        """Stop the threads once the calls queued so far are done (or, with ``cancel_pending``, once
        the ones already running are: the rest are cancelled)."""
        self._closed = True
        if cancel_pending:
            while True:
                try:
                    call = self._calls.get_nowait()
                except queue.Empty:
                    break
                if call is not None:
                    _deliver(call[0], _cancel, call[1])
        with self._start_lock:
            threads = list(self._threads)
        for _ in threads:
            self._calls.put(None)
        if wait:
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join()

    def _add_thread(self) -> None:
        with self._start_lock:
            if len(self._threads) >= self.count or self._closed:
                return  # every thread is busy: the call waits in the queue for the first one free
            thread = threading.Thread(
                target=self._work, name=f"{self.name}_{len(self._threads)}", daemon=True
            )
            self._threads.append(thread)
        thread.start()

    def _work(self) -> None:
        while True:
            call = self._calls.get()
            if call is None:
                return
            loop, future, fn, args = call
            if not future.cancelled():  # a plain flag read; a cancel racing with it only drops the result
                try:
                    result = fn(*args)
                except BaseException as exc:  # as ThreadPoolExecutor: the caller gets whatever was raised
                    _deliver(loop, _fail, future, exc)
                else:
                    _deliver(loop, _settle, future, result)
            del call, future, fn, args  # do not keep the last call's objects alive while idle
            self._idle.release()


def _deliver(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
        loop.call_soon_threadsafe(callback, *args)


def _settle(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def _cancel(future: asyncio.Future[Any]) -> None:
    future.cancel()
