"""Per-device fault-injecting TCP link: an asyncio proxy between one device and the broker.

A device connects to `link.port` instead of the broker; every byte is forwarded with the link's current
`LinkProfile`, which can be changed at any time. Built on asyncio protocols with `call_at` timers (no
task, no thread per connection), so thousands of links share one loop: each costs one listening socket
plus two sockets per open connection.

What the faults mean on a TCP stream:
- latency/jitter: each chunk is delivered `latency ± jitter` later, never out of order (a late chunk
  holds the ones behind it, as TCP does).
- loss: TCP never loses bytes, it retransmits. A lost segment therefore shows up as extra delay: with
  probability `loss` a chunk waits an extra `retransmit_s` (Linux's minimum RTO is 200 ms), and
  everything behind it waits too (head-of-line blocking).
- blackhole: nothing moves either way but both sockets stay open, as when Wi-Fi drops without a FIN.
  Reading stops, so the kernel buffers fill and TCP flow control holds the senders; MQTT keep-alive
  expiry is what ends the session. Lifting it lets held data flow again (TCP retransmission).
- bandwidth: chunks are serialised at `bandwidth_bps` bits per second each way.
- `reset()`: RST to both sides (SO_LINGER 0), as a NAT or access point that forgets the connection.
- `sever()`: the device end vanishes (power loss, brownout, watchdog reset): the device's socket is
  dropped, but the broker's side hears nothing at all, no FIN, no RST, not the bytes still queued. The
  broker learns of it only when the keep-alive expires (1.5 × keepalive) or when the same client id
  connects again (a session takeover); whichever closes the broker's socket ends the severed
  connection. New connections through the link are not affected.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import socket
import struct
from dataclasses import dataclass, field, replace
from typing import Any

from orchestrator.adapters.aio import cancel_and_wait
from twin.link_profile import CLEAN, LinkProfile

HIGH_WATER = 256 * 1024  # bytes queued in a direction before we stop reading its source
LOW_WATER = 64 * 1024




@dataclass
class LinkStats:
    up_bytes: int = 0  # device -> broker, delivered
    down_bytes: int = 0  # broker -> device, delivered
    connections: int = 0  # accepted so far
    resets: int = 0
    severed: int = 0  # connections whose device end vanished without a packet
    upstream_failures: int = 0  # accepted but the broker could not be reached


class _Direction:
    """One direction of one connection: a FIFO of (due time, bytes) drained by a single timer."""

    def __init__(self, link: LinkProxy, conn: _Conn, up: bool) -> None:
        self.link, self.conn, self.up = link, conn, up
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.queued = 0
        self.last_due = 0.0
        self.wire_free_at = 0.0
        self.timer: asyncio.Handle | None = None
        self.src_paused = False  # we paused the source because this queue is full
        self.finishing = False  # the source closed: deliver what is queued, then close the connection
        self.dst_full = False  # the destination transport asked us to pause

    def push(self, data: bytes) -> None:
        p = self.link.profile
        now = self.link.loop.time()
        start = now
        if p.bandwidth_bps is not None:
            start = max(now, self.wire_free_at)
            self.wire_free_at = start + len(data) * 8 / p.bandwidth_bps
            start = self.wire_free_at
        delay = p.latency_s
        if p.jitter_s:
            delay = max(0.0, delay + self.link.rng.uniform(-p.jitter_s, p.jitter_s))
        if p.loss and self.link.rng.random() < p.loss:
            delay += p.retransmit_s
        due = max(start + delay, self.last_due)
        self.last_due = due
        self.queue.append((due, data))
        self.queued += len(data)
        if self.queued > HIGH_WATER:
            self._pause_source()
        self.schedule()

    def schedule(self) -> None:
        if self.timer is not None or not self.queue or self.link.profile.blackhole or self.dst_full:
            return
        due = self.queue[0][0]
        if due <= self.link.loop.time():
            self.timer = self.link.loop.call_soon(self.drain)
        else:
            self.timer = self.link.loop.call_at(due, self.drain)

    def drain(self) -> None:
        self.timer = None
        dst = self.conn.dst(self.up)
        if dst is None or dst.is_closing():
            return
        now = self.link.loop.time()
        blackhole = self.link.profile.blackhole
        while self.queue and self.queue[0][0] <= now and not blackhole and not self.dst_full:
            _, data = self.queue.popleft()
            self.queued -= len(data)
            dst.write(data)
            if self.up:
                self.link.stats.up_bytes += len(data)
            else:
                self.link.stats.down_bytes += len(data)
        if self.queued < LOW_WATER:
            self._resume_source()
        if self.finishing and not self.queue:
            self.conn.close()
            return
        self.schedule()

    def _pause_source(self) -> None:
        src = self.conn.src(self.up)
        if src is not None and not self.src_paused and not src.is_closing():
            self.src_paused = True
            src.pause_reading()

    def _resume_source(self) -> None:
        src = self.conn.src(self.up)
        if self.src_paused and src is not None and not src.is_closing() and not self.link.profile.blackhole:
            self.src_paused = False
            src.resume_reading()

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class _Side(asyncio.Protocol):
    """Protocol of one socket of a proxied connection (`device` or `broker` side)."""

    def __init__(self, conn: _Conn, is_device: bool) -> None:
        self.conn, self.is_device = conn, is_device
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.conn.severed:
            return  # the device is gone: nothing it sent and nothing sent to it moves any more
        (self.conn.up if self.is_device else self.conn.down).push(data)

    def eof_received(self) -> bool | None:
        if self.conn.severed:
            if not self.is_device:  # the broker gave up on the silent device: the connection ends
                self.conn.close()
            return True
        self.conn.finish(self.is_device)
        return True  # keep our write side open until the queued bytes are delivered

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn.severed:
            if not self.is_device:
                self.conn.close()
            return
        if exc is None:
            self.conn.finish(self.is_device)  # bytes still on their way (a DISCONNECT) arrive first
        else:
            self.conn.close(rst=True)

    def pause_writing(self) -> None:  # our peer is slow: stop delivering into it
        (self.conn.down if self.is_device else self.conn.up).dst_full = True

    def resume_writing(self) -> None:
        d = self.conn.down if self.is_device else self.conn.up
        d.dst_full = False
        d.schedule()


class _Conn:
    def __init__(self, link: LinkProxy) -> None:
        self.link = link
        self.device = _Side(self, True)
        self.broker = _Side(self, False)
        self.up = _Direction(link, self, up=True)
        self.down = _Direction(link, self, up=False)
        self.closed = False
        self.severed = False  # the device end vanished; the broker end stays open and silent

    def sever(self) -> None:
        """Drop the device's socket and everything queued; leave the broker's socket open, unread and
        unwritten, until the broker closes it."""
        if self.closed or self.severed:
            return
        self.severed = True
        for direction in (self.up, self.down):
            direction.cancel()
            direction.queue.clear()
            direction.queued = 0
        t = self.device.transport
        if t is not None:
            t.abort()
        # Keep reading the broker's side (and dropping what comes) so that its close is noticed.
        b = self.broker.transport
        if b is not None and not b.is_closing():
            with contextlib.suppress(RuntimeError):
                b.resume_reading()

    def src(self, up: bool) -> asyncio.Transport | None:
        return (self.device if up else self.broker).transport

    def dst(self, up: bool) -> asyncio.Transport | None:
        return (self.broker if up else self.device).transport

    def set_reading(self, on: bool) -> None:
        if self.severed:
            return
        for side, direction in ((self.device, self.up), (self.broker, self.down)):
            t = side.transport
            if t is None or t.is_closing():
                continue
            if on and not direction.src_paused:
                t.resume_reading()
            elif not on:
                with contextlib.suppress(RuntimeError):
                    t.pause_reading()

    def finish(self, from_device: bool) -> None:
        """One side closed in order: deliver what it sent before, then close both sides."""
        direction = self.up if from_device else self.down
        direction.finishing = True
        if not direction.queue:
            self.close()

    def close(self, rst: bool = False) -> None:
        """Close both sockets now; bytes still queued in either direction are lost with the link."""
        if self.closed:
            return
        self.closed = True
        self.up.cancel()
        self.down.cancel()
        for side in (self.device, self.broker):
            t = side.transport
            if t is None:
                continue
            if rst:
                sock = t.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                t.abort()
            else:
                t.close()
        self.link._conns.discard(self)


@dataclass
class LinkProxy:
    """A listening proxy for one device. `await start()`, point the device at `port`, change `profile`
    (or call `blackhole()`, `reset()`) at any time, `await close()` at the end."""

    target_host: str
    target_port: int
    profile: LinkProfile = CLEAN
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    listen_host: str = "127.0.0.1"
    stats: LinkStats = field(default_factory=LinkStats)
    _server: asyncio.Server | None = None
    _conns: set[_Conn] = field(default_factory=set)
    _dials: set[asyncio.Task[None]] = field(default_factory=set)
    _loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "LinkProxy used before start()"
        return self._loop

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("LinkProxy.port is known only after start()")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    async def start(self, port: int = 0) -> LinkProxy:
        self._loop = asyncio.get_running_loop()
        self._server = await self._loop.create_server(self._accept, self.listen_host, port, backlog=128)
        return self

    def _accept(self) -> asyncio.Protocol:
        conn = _Conn(self)
        self._conns.add(conn)
        self.stats.connections += 1
        # Reading from the device waits until the broker side is connected; bytes queue meanwhile.
        task = self.loop.create_task(self._dial(conn))
        self._dials.add(task)
        task.add_done_callback(self._dials.discard)
        return conn.device

    async def _dial(self, conn: _Conn) -> None:
        try:
            await self.loop.create_connection(lambda: conn.broker, self.target_host, self.target_port)
        except OSError:
            self.stats.upstream_failures += 1
            conn.close(rst=True)
            return
        if conn.closed or conn.severed:  # the device gave up or vanished while we dialled
            t = conn.broker.transport
            if t is not None:
                t.close()
            conn.close()
            return
        if self.profile.blackhole:
            conn.set_reading(False)
        conn.up.schedule()

    def set_profile(self, profile: LinkProfile) -> None:
        was = self.profile.blackhole
        self.profile = profile
        if profile.blackhole != was:
            for conn in list(self._conns):
                conn.set_reading(not profile.blackhole)
        if not profile.blackhole:
            for conn in list(self._conns):
                conn.up.schedule()
                conn.down.schedule()

    def update(self, **changes: Any) -> None:
        """Change some fields of the profile, e.g. `link.update(latency_s=0.2)`."""
        self.set_profile(replace(self.profile, **changes))

    def blackhole(self, on: bool = True) -> None:
        self.update(blackhole=on)

    def sever(self) -> int:
        """The device vanished: every open connection goes silent towards the broker (see the module
        doc); returns how many were severed. The link itself stays usable for the next connection."""
        conns = [c for c in self._conns if not c.severed]
        for conn in conns:
            conn.sever()
        self.stats.severed += len(conns)
        return len(conns)

    def reset(self) -> int:
        """RST every open connection on both sides; returns how many were reset."""
        conns = list(self._conns)
        for conn in conns:
            conn.close(rst=True)
        self.stats.resets += len(conns)
        return len(conns)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        await cancel_and_wait(list(self._dials), "link proxy close")
        for conn in list(self._conns):
            conn.close(rst=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> LinkProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
