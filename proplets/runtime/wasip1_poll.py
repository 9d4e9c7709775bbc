"""WASI preview 1 `poll_oneoff` and `clock_time_get` as data, with no wasmtime in sight.

The runtime shadows wasmtime's own `wasi_snapshot_preview1.poll_oneoff` so that a stop or the
wall-time limit can cut a guest's sleep short (epoch interruption only reaches wasm code, never a
host call); `clock_time_get` is shadowed with it so that absolute CLOCK_MONOTONIC timeouts and the
guest's clock share one origin. This module holds the pure part: the subscription and event layouts
of the WASI p1 spec (witx `typenames.witx`), what each subscription waits for, and which are ready.
The host functions (`wasmtime_runtime`) read guest memory, sleep, and write the answer back.

Behaviour follows wasmtime 50's own implementation, checked case by case against it: zero
subscriptions, an unknown tag, clock id or clock flag bit give EINVAL (the CPU-time clocks too);
fd_read/fd_write are ready at once (files and stdio always are), except stdio used the wrong way
round (EBADF); a clock event carries nbytes 0, an fd event nbytes 1; ready events are written in
subscription order.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

SUBSCRIPTION_SIZE = 48  # userdata u64 @0, tag u8 @8, union @16 (clock: 32 bytes, fd: u32)
EVENT_SIZE = 32  # userdata u64 @0, error u16 @8, type u8 @10, nbytes u64 @16, flags u16 @24
ALIGN = 8  # of both records

ERRNO_SUCCESS = 0
ERRNO_BADF = 8
ERRNO_INTR = 27
ERRNO_INVAL = 28
ERRNO_NOMEM = 48

# wasmtime 50 answers ENOMEM to more subscriptions than this, before reading any (found by probing it).
MAX_SUBSCRIPTIONS = 2**21

CLOCK_REALTIME = 0
CLOCK_MONOTONIC = 1
CLOCK_PROCESS_CPUTIME = 2
CLOCK_THREAD_CPUTIME = 3

EVENTTYPE_CLOCK = 0
EVENTTYPE_FD_READ = 1
EVENTTYPE_FD_WRITE = 2

SUBCLOCK_ABSTIME = 1

STDIN, STDOUT, STDERR = 0, 1, 2

_HEAD = struct.Struct("<QB7x")  # userdata, tag (union starts at 16)
_CLOCK = struct.Struct("<I4xQQH6x")  # id, timeout, precision, flags
_FD = struct.Struct("<I")  # file descriptor
_EVENT = struct.Struct("<QHB5xQH6x")  # userdata, error, type, nbytes, flags


class PollError(Exception):
    """The call fails with `errno` (nothing is written to guest memory)."""

    def __init__(self, errno: int) -> None:
        super().__init__(f"errno {errno}")
        self.errno = errno


class Truncated(Exception):
    """The subscriptions run past the end of guest memory: wasmtime traps the guest."""


class InvalidClock(Exception):
    """A clock id outside the enum: wasmtime traps the guest (it does not return an errno)."""


@dataclass(frozen=True)
class ClockSubscription:
    userdata: int
    clock_id: int
    timeout_ns: int
    precision_ns: int
    absolute: bool


@dataclass(frozen=True)
class FdSubscription:
    userdata: int
    eventtype: int  # EVENTTYPE_FD_READ or EVENTTYPE_FD_WRITE
    fd: int


Subscription = ClockSubscription | FdSubscription


@dataclass(frozen=True)
class Event:
    userdata: int
    eventtype: int
    nbytes: int = 0
    flags: int = 0
    error: int = ERRNO_SUCCESS


def check_count(count: int) -> None:
    """What wasmtime checks before reading any subscription."""
    if count == 0:
        raise PollError(ERRNO_INVAL)
    if count > MAX_SUBSCRIPTIONS:
        raise PollError(ERRNO_NOMEM)


def decode_subscriptions(raw: bytes, count: int) -> list[Subscription]:
    """`count` subscriptions from `raw` (guest memory from the array's start to at most its end),
    checked one by one in order as wasmtime reads them: the first bad one raises `PollError`, and
    running out of `raw` before a bad one raises `Truncated`."""
    check_count(count)
    subs: list[Subscription] = []
    for at in range(0, count * SUBSCRIPTION_SIZE, SUBSCRIPTION_SIZE):
        if at + SUBSCRIPTION_SIZE > len(raw):
            raise Truncated(f"Pointer out of bounds: subscription {at // SUBSCRIPTION_SIZE} of {count}")
        userdata, tag = _HEAD.unpack_from(raw, at)
        if tag == EVENTTYPE_CLOCK:
            clock_id, timeout, precision, flags = _CLOCK.unpack_from(raw, at + 16)
            if clock_id not in (CLOCK_REALTIME, CLOCK_MONOTONIC) or flags & ~SUBCLOCK_ABSTIME:
                raise PollError(ERRNO_INVAL)
            subs.append(ClockSubscription(userdata, clock_id, timeout, precision, bool(flags)))
        elif tag in (EVENTTYPE_FD_READ, EVENTTYPE_FD_WRITE):
            (fd,) = _FD.unpack_from(raw, at + 16)
            wrong_way = fd == STDIN if tag == EVENTTYPE_FD_WRITE else fd in (STDOUT, STDERR)
            if wrong_way:
                raise PollError(ERRNO_BADF)
            subs.append(FdSubscription(userdata, tag, fd))
        else:
            raise PollError(ERRNO_INVAL)
    return subs


def deadlines(subs: list[Subscription], now_ns: int, realtime_ns: int, origin_ns: int) -> list[int]:
    """When each subscription is ready, on the host's monotonic clock (ns), measured at the call.

    Relative timeouts count from `now_ns`; an absolute CLOCK_MONOTONIC one is on the guest's
    monotonic clock, which starts at `origin_ns`; an absolute CLOCK_REALTIME one is converted at the
    call (a later change of the wall clock does not move it). fd subscriptions are ready now.
    """
    out: list[int] = []
    for sub in subs:
        if isinstance(sub, FdSubscription):
            out.append(now_ns)
        elif not sub.absolute:
            out.append(now_ns + sub.timeout_ns)
        elif sub.clock_id == CLOCK_MONOTONIC:
            out.append(origin_ns + sub.timeout_ns)
        else:
            out.append(now_ns + max(0, sub.timeout_ns - realtime_ns))
    return out


def ready_events(subs: list[Subscription], due: list[int], now_ns: int) -> list[Event]:
    """The events of the subscriptions due by `now_ns`, in subscription order."""
    events: list[Event] = []
    for sub, at in zip(subs, due, strict=True):
        if at > now_ns:
            continue
        if isinstance(sub, FdSubscription):
            events.append(Event(sub.userdata, sub.eventtype, nbytes=1))
        else:
            events.append(Event(sub.userdata, EVENTTYPE_CLOCK))
    return events


def encode_events(events: list[Event]) -> bytes:
    return b"".join(_EVENT.pack(e.userdata, e.error, e.eventtype, e.nbytes, e.flags) for e in events)


def decode_events(raw: bytes) -> list[Event]:
    """The inverse of `encode_events` (what a guest reads back)."""
    out = []
    for at in range(0, len(raw) - EVENT_SIZE + 1, EVENT_SIZE):
        userdata, error, eventtype, nbytes, flags = _EVENT.unpack_from(raw, at)
        out.append(Event(userdata, eventtype, nbytes, flags, error))
    return out


def encode_subscription(sub: Subscription) -> bytes:
    """One subscription as a guest lays it out (for tests and tools)."""
    if isinstance(sub, FdSubscription):
        return _HEAD.pack(sub.userdata, sub.eventtype) + _FD.pack(sub.fd).ljust(32, b"\0")
    flags = SUBCLOCK_ABSTIME if sub.absolute else 0
    return _HEAD.pack(sub.userdata, EVENTTYPE_CLOCK) + _CLOCK.pack(
        sub.clock_id, sub.timeout_ns, sub.precision_ns, flags
    )


def clock_now(clock_id: int, now_ns: int, realtime_ns: int, origin_ns: int) -> int:
    """`clock_time_get`: wall time since the Unix epoch, or monotonic time since `origin_ns` (the
    guest's start, as wasmtime counts it). CPU-time clocks are EBADF; an id outside the enum traps."""
    if clock_id == CLOCK_REALTIME:
        return realtime_ns
    if clock_id == CLOCK_MONOTONIC:
        return now_ns - origin_ns
    if clock_id in (CLOCK_PROCESS_CPUTIME, CLOCK_THREAD_CPUTIME):
        raise PollError(ERRNO_BADF)
    raise InvalidClock(f"invalid enum value Clockid: {clock_id}")
