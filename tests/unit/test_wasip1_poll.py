"""The pure part of our WASI p1 poll_oneoff: layouts, checks, deadlines, ready events, the clock."""

from __future__ import annotations

import struct

import pytest

from proplets.runtime import wasip1_poll as p1

MS = 1_000_000


def clock(userdata: int, clock_id: int, timeout_ns: int, absolute: bool = False) -> p1.ClockSubscription:
    return p1.ClockSubscription(userdata, clock_id, timeout_ns, 0, absolute)


def test_a_clock_subscription_has_the_spec_layout_and_decodes_back() -> None:
    sub = p1.ClockSubscription(0x1122334455667788, p1.CLOCK_MONOTONIC, 30 * 10**9, 1000, True)
    raw = p1.encode_subscription(sub)
    assert len(raw) == p1.SUBSCRIPTION_SIZE
    # userdata @0, tag @8, clock id @16, timeout @24, precision @32, flags @40 (witx typenames)
    assert struct.unpack_from("<Q", raw, 0)[0] == 0x1122334455667788
    assert raw[8] == p1.EVENTTYPE_CLOCK
    assert struct.unpack_from("<IQQH", raw[16:20] + raw[24:42]) == (1, 30 * 10**9, 1000, 1)
    assert p1.decode_subscriptions(raw, 1) == [sub]


def test_an_fd_subscription_has_the_spec_layout_and_decodes_back() -> None:
    sub = p1.FdSubscription(9, p1.EVENTTYPE_FD_WRITE, 1)
    raw = p1.encode_subscription(sub)
    assert len(raw) == 48 and raw[8] == 2 and struct.unpack_from("<I", raw, 16)[0] == 1
    assert p1.decode_subscriptions(raw, 1) == [sub]


def test_an_event_has_the_spec_layout() -> None:
    event = p1.Event(7, p1.EVENTTYPE_FD_READ, nbytes=1, flags=1, error=0)
    raw = p1.encode_events([event, p1.Event(8, p1.EVENTTYPE_CLOCK)])
    assert len(raw) == 2 * p1.EVENT_SIZE
    # userdata @0, error @8, type @10, nbytes @16, flags @24
    assert struct.unpack_from("<QHBxxxxxQH", raw) == (7, 0, 1, 1, 1)
    assert p1.decode_events(raw) == [event, p1.Event(8, p1.EVENTTYPE_CLOCK)]


@pytest.mark.parametrize(
    ("raw", "count", "errno"),
    [
        (b"", 0, p1.ERRNO_INVAL),
        (b"", p1.MAX_SUBSCRIPTIONS + 1, p1.ERRNO_NOMEM),
        (p1.encode_subscription(clock(1, p1.CLOCK_PROCESS_CPUTIME, 1)), 1, p1.ERRNO_INVAL),
        (p1.encode_subscription(clock(1, 9, 1)), 1, p1.ERRNO_INVAL),
        (struct.pack("<QB7x", 1, 5) + bytes(32), 1, p1.ERRNO_INVAL),
        (struct.pack("<QB7xI4xQQH6x", 1, 0, 1, 10, 0, 2), 1, p1.ERRNO_INVAL),  # unknown flag bit
        (p1.encode_subscription(p1.FdSubscription(1, p1.EVENTTYPE_FD_READ, p1.STDOUT)), 1, p1.ERRNO_BADF),
        (p1.encode_subscription(p1.FdSubscription(1, p1.EVENTTYPE_FD_WRITE, p1.STDIN)), 1, p1.ERRNO_BADF),
    ],
)
def test_bad_subscriptions_fail_with_wasmtimes_errno(raw: bytes, count: int, errno: int) -> None:
    with pytest.raises(p1.PollError) as caught:
        p1.decode_subscriptions(raw, count)
    assert caught.value.errno == errno


def test_subscriptions_are_checked_in_order_and_running_out_of_memory_is_a_trap() -> None:
    good = p1.encode_subscription(clock(1, 1, 0))
    bad = p1.encode_subscription(clock(2, 9, 0))
    with pytest.raises(p1.PollError):
        p1.decode_subscriptions(good + bad, 1000)  # the bad one comes before memory ends
    with pytest.raises(p1.Truncated):
        p1.decode_subscriptions(good + good[:20], 2)


def test_deadlines_relative_absolute_monotonic_and_realtime() -> None:
    now, realtime, origin = 5_000 * MS, 1_700_000_000_000 * MS, 1_000 * MS
    subs: list[p1.Subscription] = [
        clock(1, p1.CLOCK_MONOTONIC, 30 * MS),
        clock(2, p1.CLOCK_REALTIME, 30 * MS),
        clock(3, p1.CLOCK_MONOTONIC, 4_500 * MS, absolute=True),  # guest time 4.5 s = host 5.5 s
        clock(4, p1.CLOCK_REALTIME, realtime + 70 * MS, absolute=True),
        clock(5, p1.CLOCK_REALTIME, realtime - 70 * MS, absolute=True),  # already past
        p1.FdSubscription(6, p1.EVENTTYPE_FD_READ, p1.STDIN),
    ]
    due = p1.deadlines(subs, now, realtime, origin)
    assert due == [now + 30 * MS, now + 30 * MS, 5_500 * MS, now + 70 * MS, now, now]


def test_ready_events_are_the_due_ones_in_subscription_order() -> None:
    subs: list[p1.Subscription] = [
        clock(1, 1, 50 * MS),
        clock(2, 1, 10 * MS),
        p1.FdSubscription(3, p1.EVENTTYPE_FD_WRITE, p1.STDOUT),
    ]
    due = p1.deadlines(subs, 0, 0, 0)
    assert p1.ready_events(subs, due, 0) == [p1.Event(3, p1.EVENTTYPE_FD_WRITE, nbytes=1)]
    assert p1.ready_events(subs, due, 10 * MS) == [
        p1.Event(2, p1.EVENTTYPE_CLOCK),
        p1.Event(3, p1.EVENTTYPE_FD_WRITE, nbytes=1),
    ]
    assert [e.userdata for e in p1.ready_events(subs, due, 50 * MS)] == [1, 2, 3]


def test_clock_time_get_counts_monotonic_time_from_the_guests_start() -> None:
    assert p1.clock_now(p1.CLOCK_MONOTONIC, 7_000, 99, 2_000) == 5_000
    assert p1.clock_now(p1.CLOCK_REALTIME, 7_000, 99, 2_000) == 99
    with pytest.raises(p1.PollError) as caught:
        p1.clock_now(p1.CLOCK_THREAD_CPUTIME, 0, 0, 0)
    assert caught.value.errno == p1.ERRNO_BADF
    with pytest.raises(p1.InvalidClock):
        p1.clock_now(4, 0, 0, 0)
