"""CancelToken: the stop flag a running module polls and sleeps on. Its Event is made by the first
wait, so a cancel that comes before, during or after that moment must still stop every waiter."""

from __future__ import annotations

import threading

from proplets.runtime.api import CancelToken


def test_a_cancel_before_any_wait_is_seen_at_once() -> None:
    token = CancelToken()
    assert not token.cancelled
    token.cancel()
    assert token.cancelled
    assert token.wait(timeout=30) is True  # returns without waiting: the flag is checked first


def test_a_wait_without_cancel_times_out() -> None:
    assert CancelToken().wait(timeout=0.01) is False


def test_every_waiter_is_woken_by_a_later_cancel() -> None:
    for _ in range(50):  # the cancel lands at varying moments around the Event's making
        token = CancelToken()
        woken: list[bool] = []
        started = threading.Barrier(5)

        def waiter(
            token: CancelToken = token, woken: list[bool] = woken, started: threading.Barrier = started
        ) -> None:
            started.wait()
            woken.append(token.wait(timeout=30))

        threads = [threading.Thread(target=waiter) for _ in range(4)]
        for t in threads:
            t.start()
        started.wait()
        token.cancel()
        for t in threads:
            t.join(timeout=30)
        assert woken == [True] * 4
