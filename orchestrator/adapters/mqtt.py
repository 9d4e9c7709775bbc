"""Asyncio MQTT 3.1.1 client over paho-mqtt 2.2, using paho's external-loop hooks.

Why not paho's threaded loop (`loop_start()` / `loop_forever()`): it waits in `select.select()`, which
rejects file descriptors >= 1024, and each client holds 3 fds (its socket plus a socketpair). Past about
340 clients per process the extra clients fail *silently* (no on_connect, no on_disconnect), and each
costs an OS thread and ~35 KiB. Here every client's socket is registered with the asyncio loop
(`add_reader` / `add_writer`, epoll underneath), so thousands of clients share one loop and no thread.
One ticker task per event loop calls `loop_misc()` for all live clients (keep-alive pings, ping
timeouts); it ticks every min(1 s, smallest keep-alive / 4), so a ping always leaves well within the
broker's 1.5 × keep-alive.

Why the TCP connect is ours: paho's `connect()` calls a blocking `socket.create_connection()`. With the
embedded broker in the same loop, hundreds of back-to-back connects fill the broker's accept backlog
(100) while the loop is blocked, and `connect()` times out. We connect the socket with
`loop.sock_connect()` and hand it to paho through a one-method subclass (`_Paho`). A TLS handshake still
runs inside paho, blocking for at most one round trip bounded by `connect_timeout` (the embedded broker
does not serve TLS, so it cannot deadlock on itself).

Why every read ends with ``TCP_QUICKACK`` (Linux): a broker that leaves Nagle's algorithm on (Mosquitto's
default, ``set_tcp_nodelay false``) holds a small message for us while an earlier one it sent us is not
yet ACKed at TCP level, and our kernel delays that ACK by up to 40 ms when we have nothing to send back.
A result then reached the manager ~40 ms late (docs/benchmarks.md). Setting ``TCP_QUICKACK`` after each
read sends a pending ACK at once, so the broker's next message leaves without waiting; our own sockets
already set ``TCP_NODELAY``. A broker with ``set_tcp_nodelay true`` (recommended: docs/trust.md, "Mosquitto")
needs neither, but other clients of the same broker (firmware, upstream proplets) still gain from it.

Semantics a caller relies on:
- `connect()` raises `MqttError` naming host:port and the reason (refused, not authorised, timeout).
  Automatic reconnection (capped, jittered exponential backoff from the injected rng) starts only after
  an established connection is lost; `on_connect` fires on every (re)connect, after remembered
  subscriptions have been re-sent, and before `connect()` returns.
- `publish()` while not connected raises `MqttError` (nothing is queued silently across an outage).
  QoS 1/2 messages already handed to paho are re-sent by paho after a reconnect.
- `disconnect()` sends DISCONNECT (the broker drops the will); `abort()` drops the TCP link without it
  (power loss: the will fires); `silence()` stops all reading, writing and pinging with the socket open
  (a Wi-Fi drop: the broker must notice by keep-alive). Publishes while silenced stay in paho's queue.
- Exceptions raised by user callbacks are logged and counted (`callback_errors`), never propagated
  into paho or the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ipaddress
import logging
import math
import os
import random
import socket
import ssl
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt import _packet as _paho_packet
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from orchestrator.adapters.aio import cancel_and_wait
from orchestrator.adapters.broker_url import BrokerUrl, parse_broker_url
from orchestrator.wire.mqtt_names import check_filter, check_topic
from proplets.backoff import Backoff

__all__ = ["BrokerUrl", "MqttClient", "MqttError", "TlsOptions", "Will", "parse_broker_url"]

log = logging.getLogger(__name__)

# Linux only (see the module docstring); elsewhere reads just skip it.
_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


class MqttError(Exception):
    """An MQTT operation failed; the message names the broker and the reason."""


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes = b""
    qos: int = 1
    retain: bool = False

    def __post_init__(self) -> None:
        check_topic(self.topic, "will topic")
        _check_qos(self.qos)
        if not isinstance(self.payload, bytes | bytearray):
            raise ValueError(f"will payload must be bytes, not {type(self.payload).__name__}")


@dataclass(frozen=True)
class TlsOptions:
    """TLS for mqtts://. No ca_file means the system CAs; `insecure` skips certificate checks."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False

    def __post_init__(self) -> None:
        if self.cert_file and not self.key_file:
            raise ValueError("TLS options: cert_file is given but key_file is missing")
        if self.key_file and not self.cert_file:
            raise ValueError("TLS options: key_file is given but cert_file is missing")
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path is not None and not os.path.isfile(path):
                raise ValueError(f"TLS options: {name} {path!r} does not exist")


def _ack_now(sock: Any) -> None:
    """ACK what ``sock`` (paho's socket, TLS or not) has read at once, not after the delayed-ACK timer."""
    if sock is None or _TCP_QUICKACK is None:
        return
    with contextlib.suppress(OSError):  # a socket closed by this very read
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)


def _check_qos(qos: int) -> None:
    if qos not in (0, 1, 2):
        raise ValueError(f"QoS must be 0, 1 or 2, got {qos!r}")


# One recv() takes up to this much; the rest waits in _Paho's read buffer for the next packets.
_READ_CHUNK = 64 * 1024


def _frame(buf: bytes, pos: int) -> tuple[int, int, int] | None:
    """(fixed-header byte, body start, body end) of the MQTT packet at ``buf[pos]`` when ``buf`` holds
    all of it; None when it does not (or the remaining length is not a valid 1-4 byte varint, which
    paho's own reader then reports)."""
    size = len(buf)
    i, length, shift = pos + 1, 0, 0
    while i < size and shift <= 21:
        byte = buf[i]
        length |= (byte & 0x7F) << shift
        i += 1
        if byte < 0x80:
            return (buf[pos], i, i + length) if i + length <= size else None
        shift += 7
    return None


# What a MQTT 3.1.1 PUBACK carries for on_publish: always success, no properties (paho builds new
# objects for each one); our on_publish reads only the message id.
_PUBACK_SUCCESS = ReasonCode(PacketTypes.PUBACK)
_NO_PROPERTIES = Properties(PacketTypes.PUBACK)


class _Paho(paho.Client):
    """paho client that takes an already-connected socket instead of connecting (see docstring), reads
    through a buffer and writes every queued packet with one send().

    Why: paho reads a packet with three or more recv() calls (the command byte, each byte of the
    remaining length, the body, then one more that finds nothing) and sends each packet with its own
    send(). Each of those calls releases the GIL and must take it back, which in the manager means
    waiting for the store-writer thread; most of the manager's samples were there (docs/benchmarks.md).
    Here one recv() fills a buffer paho's reads are served from, and one send() carries all packets
    queued in an event-loop turn. paho still does all the protocol work: the buffer and the joined send
    only change how many system calls carry the same bytes, in the same order.
    """

    preconnected: socket.socket | None = None
    # (topic, payload, mid, qos) of each QoS 0/1 message received, bypassing paho's MQTTMessage (see
    # _handle_publish); None: paho's own path and its on_message.
    deliver: Callable[[str, bytes, int, int], None] | None = None
    _rbuf: bytes = b""  # bytes read from the socket and not yet handed to paho, from _rpos on
    _rpos = 0
    _send_credit = -1  # >= 0 while paho accounts for bytes a joined send() already wrote

    @property
    def buffered(self) -> bool:
        """Bytes already read from the socket wait here (epoll will not report them again)."""
        return self._rpos < len(self._rbuf)

    def _create_socket_connection(self) -> socket.socket:
        sock, self.preconnected = self.preconnected, None
        if sock is None:
            raise OSError("internal: no pre-connected socket for paho")
        self._rbuf, self._rpos = b"", 0  # nothing read on an earlier connection carries over
        return sock

    def _sock_recv(self, bufsize: int) -> bytes:
        buf, pos = self._rbuf, self._rpos
        if pos < len(buf):
            self._rpos = pos + bufsize
            return buf[pos : pos + bufsize]
        data: bytes = super()._sock_recv(max(bufsize, _READ_CHUNK))
        if len(data) <= bufsize:
            self._rbuf, self._rpos = b"", 0
            return data
        self._rbuf, self._rpos = data, bufsize
        return data[:bufsize]

    def _sock_close(self) -> None:
        self._rbuf, self._rpos = b"", 0
        super()._sock_close()

    def _packet_write(self) -> MQTTErrorCode:
        queued = self._out_packet
        if len(queued) < 2 or self._sock is None:
            return super()._packet_write()
        chunks = []
        for packet in queued:
            chunks.append(packet["packet"][packet["pos"] :])
            if packet["command"] & 0xF0 == paho.DISCONNECT:
                break  # paho closes the socket after a DISCONNECT: nothing behind it goes out
        try:
            sent = super()._sock_send(b"".join(chunks))
        except Exception:
            # paho's own path meets the same error on the first packet and handles it as it always has.
            return super()._packet_write()
        # paho now walks the queue as usual (completing QoS 0 publishes, closing after DISCONNECT),
        # each _sock_send taking its share of `sent`; past it the socket is full (BlockingIOError).
        self._send_credit = sent
        try:
            return super()._packet_write()
        finally:
            self._send_credit = -1

    def _packet_read(self) -> MQTTErrorCode:
        """A packet that the read buffer holds whole goes straight to paho's handler.

        Why: paho reads a packet through five or more ``_sock_recv`` calls (the command byte, each
        length byte, the body, then one more), updating its reader state at each; for the manager
        and a proplet that framing was a fifth of the MQTT time per message. Here one slice frames it
        and paho's own ``_packet_handle`` does the protocol work, with paho's error handling and
        keep-alive bookkeeping. A packet begun on an earlier read, split across reads, or with a bad
        length takes paho's path, which reads it from the same buffer.
        """
        if self._in_packet["command"] != 0 or self._sock is None:
            return super()._packet_read()
        buf, pos = self._rbuf, self._rpos
        if pos >= len(buf):
            try:
                data: bytes = paho.Client._sock_recv(self, _READ_CHUNK)
            except BlockingIOError:
                return MQTTErrorCode.MQTT_ERR_AGAIN
            except OSError:
                return super()._packet_read()  # paho meets the same error and reports it its way
            if not data:
                return super()._packet_read()  # the peer closed: so does paho's path
            buf, pos = self._rbuf, self._rpos = data, 0
        framed = _frame(buf, pos)
        if framed is None or framed[0] == 0:
            return super()._packet_read()
        command, start, end = framed
        self._rpos = end
        self._in_packet = {"command": command, "have_remaining": 1, "remaining_count": [],
                           "remaining_mult": 1, "remaining_length": end - start,
                           "packet": bytearray(buf[start:end]), "to_process": 0, "pos": 0}  # fmt: skip
        try:
            rc = self._packet_handle()
        except MalformedPacket:
            rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
        self._in_packet = {"command": 0, "have_remaining": 0, "remaining_count": [],
                           "remaining_mult": 1, "remaining_length": 0, "packet": bytearray(),
                           "to_process": 0, "pos": 0}  # fmt: skip
        with self._msgtime_mutex:
            self._last_bytes_received = paho.time_func()
        return rc

    def _handle_pubackcomp(self, cmd: Any) -> MQTTErrorCode:
        """A MQTT 3.1.1 PUBACK without paho's ReasonCode and Properties objects per packet (the
        broker acknowledges every QoS 1 message we send); anything else takes paho's path."""
        packet = self._in_packet["packet"]
        if cmd != "PUBACK" or self._protocol == paho.MQTTv5 or len(packet) != 2:
            return super()._handle_pubackcomp(cmd)
        mid = (packet[0] << 8) | packet[1]
        with self._out_message_mutex:
            if mid in self._out_messages:
                return self._do_on_publish(mid, _PUBACK_SUCCESS, _NO_PROPERTIES)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_publish(self) -> MQTTErrorCode:
        """A QoS 0/1 PUBLISH of MQTT 3.1.1 straight to ``deliver``, then its PUBACK as paho sends it.

        Why: for every message paho builds an MQTTMessage (with a MQTTMessageInfo and its
        threading.Condition), walks its per-topic callback trie (we register none), formats a debug
        line and takes two mutexes; for a proplet that is a tenth of its time per task. The packet is
        decoded by paho's own decoder; QoS 2, MQTT 5 and a topic that is not UTF-8 take paho's path.
        """
        deliver = self.deliver
        if deliver is None or self._protocol == paho.MQTTv5:
            return super()._handle_publish()
        packet = _paho_packet.decode_publish(
            self._in_packet["command"], self._in_packet["packet"], self._protocol
        )
        qos = packet.qos
        if qos > 1:
            return super()._handle_publish()
        try:
            topic = packet.topic.decode("utf-8")
        except UnicodeDecodeError:
            return super()._handle_publish()
        deliver(topic, bytes(packet.payload), packet.mid, qos)  # already bytes (struct.unpack): no copy
        if qos == 1 and not self._manual_ack:
            return self._send_puback(packet.mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _sock_send(self, buf: bytes | bytearray) -> int:
        credit = self._send_credit
        if credit < 0:
            return super()._sock_send(buf)
        if credit == 0:
            raise BlockingIOError
        taken = min(credit, len(buf))
        self._send_credit = credit - taken
        return taken


for _internal in (
    "_create_socket_connection", "_sock_recv", "_sock_send", "_sock_close", "_packet_write",
    "_handle_publish", "_send_puback", "_packet_read", "_packet_handle", "_handle_pubackcomp",
    "_do_on_publish",
):  # fmt: skip
    if not callable(getattr(paho.Client, _internal, None)):
        raise RuntimeError(f"paho-mqtt internals changed: Client.{_internal} is gone (see mqtt.py)")
if not callable(getattr(paho, "time_func", None)):
    raise RuntimeError("paho-mqtt internals changed: client.time_func is gone (see mqtt.py)")
if not callable(getattr(_paho_packet, "decode_publish", None)):
    raise RuntimeError("paho-mqtt internals changed: _packet.decode_publish is gone (see mqtt.py)")


class _Ticker:
    """One task per event loop running paho's periodic work for all its clients."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.clients: set[MqttClient] = set()
        self.task: asyncio.Task[None] | None = None

    def add(self, client: MqttClient) -> None:
        self.clients.add(client)
        if self.task is None or self.task.done():
            self.task = self.loop.create_task(self._run(), name="mqtt-misc-ticker")

    def discard(self, client: MqttClient) -> None:
        self.clients.discard(client)
        if not self.clients and self.task is not None:
            # Stop now rather than after the next sleep, so a loop closed right after the last
            # disconnect() has no pending task left.
            self.task.cancel()
            self.task = None

    async def _run(self) -> None:
        while self.clients:
            keepalives = [c.keepalive for c in self.clients if c.keepalive > 0]
            await asyncio.sleep(min([1.0, *(k / 4 for k in keepalives)]))
            for client in list(self.clients):
                client._tick()


_tickers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Ticker] = weakref.WeakKeyDictionary()


def _ticker(loop: asyncio.AbstractEventLoop) -> _Ticker:
    ticker = _tickers.get(loop)
    if ticker is None:
        ticker = _tickers[loop] = _Ticker(loop)
    return ticker


class _State(enum.Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"


class MqttClient:
    """One MQTT connection driven by the running asyncio loop. Create and use it inside that loop."""

    total_callback_errors = 0  # across all clients of the process

    def __init__(
        self,
        url: BrokerUrl | str,
        client_id: str,
        *,
        keepalive: float = 30,
        will: Will | None = None,
        clean_session: bool = True,
        on_message: Callable[[str, bytes], None] | None = None,
        on_connect: Callable[[], None] | None = None,
        on_disconnect: Callable[[], None] | None = None,
        reconnect: bool = True,
        backoff_min: float = 0.5,
        backoff_max: float = 30.0,
        rng: random.Random | None = None,
        tls: TlsOptions | None = None,
        connect_timeout: float = 10.0,
        max_inflight: int = 20,
        max_queued: int = 10_000,
        manual_ack: bool = False,
    ) -> None:
        self.url = parse_broker_url(url) if isinstance(url, str) else url
        if not isinstance(client_id, str) or (not client_id and not clean_session):
            raise ValueError(f"client_id must be a string (empty only with clean_session), got {client_id!r}")
        if keepalive < 0 or keepalive > 65535 or keepalive != math.floor(keepalive):
            raise ValueError(f"keepalive must be whole seconds in 0..65535, got {keepalive}")
        if not 0 < backoff_min <= backoff_max:
            raise ValueError(f"backoff needs 0 < backoff_min <= backoff_max, got {backoff_min}/{backoff_max}")
        if connect_timeout <= 0:
            raise ValueError(f"connect_timeout must be > 0, got {connect_timeout}")
        if tls is not None and not self.url.tls:
            raise ValueError(f"TLS options given for {self.url.url}; use an mqtts:// URL")
        self.client_id = client_id
        self.keepalive = int(keepalive)
        self.callback_errors = 0
        self._on_message, self._on_connect, self._on_disconnect = on_message, on_connect, on_disconnect
        self._reconnect_enabled = reconnect
        self._backoff_min, self._backoff_max = backoff_min, backoff_max
        self._rng = rng if rng is not None else random.Random()
        self._connect_timeout = connect_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._state = _State.IDLE
        self._auto = False  # reconnect after an unexpected loss (set once connected)
        self._silenced = False
        self._write_wanted = False
        self._write_soon_pending = False
        self._subs: dict[str, int] = {}
        self._connack: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] | None = None
        self._pub_waiters: dict[int, asyncio.Future[None]] = {}
        self._sub_waiters: dict[int, asyncio.Future[list[Any]]] = {}
        self._reconnect_task: asyncio.Task[None] | None = None
        # manual_ack: QoS 1/2 messages are acknowledged by ack(), not on receipt, so a message whose
        # effects were not yet made durable is redelivered to the session after a crash.
        self._manual_ack = manual_ack
        self._unacked: list[tuple[int, int]] = []
        self._generation = 0  # connections so far: mids of an older connection must not be acked
        self._paho = self._make_paho(clean_session, will, tls, max_inflight, max_queued)
        self._paho.manual_ack_set(manual_ack)

    def _make_paho(
        self, clean_session: bool, will: Will | None, tls: TlsOptions | None, inflight: int, queued: int
    ) -> _Paho:
        p = _Paho(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=clean_session,
            protocol=paho.MQTTv311,
            reconnect_on_failure=False,
        )
        p.suppress_exceptions = True
        p.max_inflight_messages_set(inflight)
        p.max_queued_messages_set(queued)
        p.connect_timeout = self._connect_timeout
        if self.url.username is not None:
            p.username_pw_set(self.url.username, self.url.password)
        if will is not None:
            p.will_set(will.topic, bytes(will.payload), will.qos, will.retain)
        if self.url.tls:
            opts = tls or TlsOptions()
            p.tls_set(
                ca_certs=opts.ca_file,
                certfile=opts.cert_file,
                keyfile=opts.key_file,
                cert_reqs=ssl.CERT_NONE if opts.insecure else ssl.CERT_REQUIRED,
            )
            p.tls_insecure_set(opts.insecure)
        p.on_socket_open = self._sock_open
        p.on_socket_close = self._sock_close
        p.on_socket_register_write = self._want_write
        p.on_socket_unregister_write = self._unwant_write
        p.on_connect = self._paho_connect
        p.on_disconnect = self._paho_disconnect
        p.on_message = self._paho_message
        p.deliver = self._deliver
        p.on_publish = self._paho_publish
        p.on_subscribe = self._paho_subscribe
        return p

    # --- public API -------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._state is _State.CONNECTED

    @property
    def silenced(self) -> bool:
        return self._silenced

    @property
    def subscriptions(self) -> dict[str, int]:
        return dict(self._subs)

    async def connect(self, timeout: float | None = None) -> None:
        """Connect and wait for CONNACK; raise MqttError naming host:port and the reason."""
        if self._state is _State.CONNECTED:
            return
        if self._state is _State.CONNECTING:
            raise MqttError(f"{self.client_id}: connect() to {self.url.hostport} is already in progress")
        await self._cancel_reconnect()
        self._loop = asyncio.get_running_loop()
        await self._attempt(timeout if timeout is not None else self._connect_timeout)
        self._auto = self._reconnect_enabled

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int:
        """Queue a message for sending (returns its message id); MqttError if not connected."""
        check_topic(topic)
        _check_qos(qos)
        if not isinstance(payload, bytes | bytearray):
            raise ValueError(f"payload for {topic!r} must be bytes, not {type(payload).__name__}")
        if self._state is not _State.CONNECTED:
            raise MqttError(
                f"{self.client_id}: cannot publish to {topic!r}: not connected to {self.url.hostport}"
            )
        info = self._paho.publish(topic, bytes(payload), qos, retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            raise MqttError(f"{self.client_id}: cannot publish to {topic!r}: the outgoing queue is full")
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise MqttError(f"{self.client_id}: cannot publish to {topic!r}: {paho.error_string(info.rc)}")
        return info.mid

    async def publish_and_wait(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, timeout: float = 10.0
    ) -> None:
        """Publish and wait until the broker acknowledged it (QoS 1/2) or it was written (QoS 0)."""
        mid = self.publish(topic, payload, qos, retain)
        waiter = self._running_loop().create_future()
        self._pub_waiters[mid] = waiter
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            raise MqttError(
                f"{self.client_id}: no acknowledgement from {self.url.hostport} "
                f"for {topic!r} within {timeout} s"
            ) from None
        finally:
            self._pub_waiters.pop(mid, None)

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Subscribe now if connected, and again after every reconnect."""
        check_filter(topic_filter)
        _check_qos(qos)
        self._subs[topic_filter] = qos
        if self._state is _State.CONNECTED:
            self._paho.subscribe(topic_filter, qos)

    async def subscribe_and_wait(self, topic_filter: str, qos: int = 1, timeout: float = 10.0) -> int:
        """Subscribe and wait for the SUBACK; return the granted QoS, MqttError if refused."""
        check_filter(topic_filter)
        _check_qos(qos)
        if self._state is not _State.CONNECTED:
            raise MqttError(f"{self.client_id}: cannot subscribe to {topic_filter!r}: not connected")
        self._subs[topic_filter] = qos
        _rc, sub_mid = self._paho.subscribe(topic_filter, qos)
        mid = sub_mid if sub_mid is not None else -1
        waiter: asyncio.Future[list[Any]] = self._running_loop().create_future()
        self._sub_waiters[mid] = waiter
        try:
            codes = await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            raise MqttError(f"{self.client_id}: no SUBACK for {topic_filter!r} within {timeout} s") from None
        finally:
            self._sub_waiters.pop(mid, None)
        if not codes or codes[0].is_failure:
            raise MqttError(
                f"{self.client_id}: {self.url.hostport} refused the subscription to {topic_filter!r}"
            )
        return int(codes[0].value)

    def unsubscribe(self, topic_filter: str) -> None:
        self._subs.pop(topic_filter, None)
        if self._state is _State.CONNECTED:
            self._paho.unsubscribe(topic_filter)

    async def disconnect(self, timeout: float = 5.0) -> None:
        """Clean DISCONNECT (the broker discards the will); stops reconnecting. A silenced link
        cannot carry a DISCONNECT, so a silenced client just closes its socket."""
        self._auto = False
        await self._cancel_reconnect()
        if self._state is _State.CONNECTED and not self._silenced:
            self._closed = self._running_loop().create_future()
            self._paho.disconnect()
            try:
                await asyncio.wait_for(asyncio.shield(self._closed), timeout)
            except TimeoutError:
                self._kill_socket()
            finally:
                self._closed = None
        else:
            self._kill_socket()
        self._state = _State.IDLE
        self._retire()

    def abort(self, reconnect: bool = False) -> None:
        """Drop the TCP link without DISCONNECT, as on a power loss: the broker fires the will.
        With reconnect=True the client then behaves as after any unexpected loss."""
        if not reconnect:
            self._auto = False
            if self._reconnect_task is not None:
                self._reconnect_task.cancel()
        self._kill_socket()
        if not reconnect:
            self._state = _State.IDLE
            self._retire()

    def silence(self) -> None:
        """Stop reading, writing and keep-alive pings, keeping the socket open (a silent link)."""
        if self._silenced:
            return
        self._silenced = True
        sock = self._paho.socket()
        if sock is not None and self._loop is not None:
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)

    def unsilence(self) -> None:
        """Resume I/O; if the broker has meanwhile dropped us, the loss is noticed and handled."""
        if not self._silenced:
            return
        self._silenced = False
        sock = self._paho.socket()
        if sock is not None and self._loop is not None:
            self._loop.add_reader(sock, self._on_readable)
            if self._write_wanted:
                self._loop.add_writer(sock, self._on_writable)
            if self._paho.buffered:  # read before the silence: epoll will not report these bytes
                self._loop.call_soon(self._on_readable)

    # --- connection attempts ----------------------------------------------------------------------

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    async def _attempt(self, timeout: float) -> None:
        loop = self._running_loop()
        where = f"MQTT broker at {self.url.hostport} (client {self.client_id!r})"
        self._state = _State.CONNECTING
        self._connack = loop.create_future()
        _ticker(loop).add(self)
        try:
            async with asyncio.timeout(timeout):
                sock = await self._open_tcp(loop)
                self._paho.preconnected = sock
                try:
                    self._paho.connect(self.url.host, self.url.port, self.keepalive)
                except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                    sock.close()
                    raise MqttError(f"cannot connect to {where}: {exc}") from exc
                await self._connack
        except TimeoutError:
            self._kill_socket()
            raise MqttError(f"cannot connect to {where}: timed out after {timeout} s") from None
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            if isinstance(exc, ConnectionRefusedError):
                reason = "connection refused (is the broker running?)"
            raise MqttError(f"cannot connect to {where}: {reason}") from exc
        finally:
            self._connack = None
            if self._state is _State.CONNECTING:
                self._state = _State.IDLE

    async def _open_tcp(self, loop: asyncio.AbstractEventLoop) -> socket.socket:
        host, port = self.url.host, self.url.port
        try:
            ip = ipaddress.ip_address(host)
            family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
            targets: list[tuple[Any, ...]] = [(family, socket.SOCK_STREAM, 0, "", (host, port))]
        except ValueError:  # a name: resolving it uses the loop's executor
            targets = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        error: OSError = OSError(f"no address found for {host!r}")
        for family, kind, proto, _name, address in targets:
            sock = socket.socket(family, kind, proto)
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                await loop.sock_connect(sock, address)
                return sock
            except OSError as exc:
                sock.close()
                error = exc
            except BaseException:
                sock.close()
                raise
        raise error

    async def _reconnect_loop(self) -> None:
        backoff = Backoff(self._backoff_min, self._backoff_max, self._rng)
        while self._auto:
            delay = backoff.next()
            attempt = backoff.attempt
            await asyncio.sleep(delay)
            if not self._auto:
                return
            try:
                await self._attempt(self._connect_timeout)
                return
            except MqttError as exc:
                self._state = _State.RECONNECTING
                log.info("%s: reconnect attempt %d failed: %s", self.client_id, attempt, exc)

    async def _cancel_reconnect(self) -> None:
        task, self._reconnect_task = self._reconnect_task, None
        await cancel_and_wait([task], f"{self.client_id}: reconnect loop")

    def _kill_socket(self) -> None:
        """Close the link without DISCONNECT; paho notices EOF at once and reports the loss."""
        self._silenced = False
        sock = self._paho.socket()
        if sock is None:
            return
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # type: ignore[attr-defined]
        self._on_readable()

    def _retire(self) -> None:
        if self._loop is not None:
            _ticker(self._loop).discard(self)

    # --- loop and ticker hooks --------------------------------------------------------------------

    def _on_readable(self) -> None:
        try:
            paho_client = self._paho
            paho_client.loop_read()
            sock = paho_client.socket()
            _ack_now(sock)
            # Our read buffer, and TLS, can hold bytes that epoll does not see; drain them now.
            while sock is not None and not self._silenced:
                if not paho_client.buffered and not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
                    break
                paho_client.loop_read()
                sock = paho_client.socket()
        except Exception:
            self._count_error("loop_read")

    def _on_writable(self) -> None:
        try:
            self._paho.loop_write()
        except Exception:
            self._count_error("loop_write")

    def _tick(self) -> None:
        # Not while CONNECTING: paho would close a socket whose CONNACK is slower than keep-alive,
        # and connect() has its own timeout.
        if self._silenced or self._state is not _State.CONNECTED:
            return
        try:
            self._paho.loop_misc()
        except Exception:
            self._count_error("loop_misc")

    def _count_error(self, where: str) -> None:
        self.callback_errors += 1
        MqttClient.total_callback_errors += 1
        log.exception("%s: exception in %s (counted, loop continues)", self.client_id, where)

    def _fire(self, callback: Callable[..., None] | None, *args: Any) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:
            self._count_error(getattr(callback, "__qualname__", "callback"))

    # --- paho callbacks (all run inside loop_read / loop_write / loop_misc) -----------------------

    def _sock_open(self, _c: Any, _u: Any, sock: Any) -> None:
        if not self._silenced and self._loop is not None:
            self._loop.add_reader(sock, self._on_readable)

    def _sock_close(self, _c: Any, _u: Any, sock: Any) -> None:
        if self._loop is not None:
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)
        self._write_wanted = False

    def _want_write(self, _c: Any, _u: Any, _sock: Any) -> None:
        # Write once the loop has run this turn's callbacks, so every packet they queue leaves in one
        # send(); the socket is almost always writable, so asking epoll first (add_writer, then
        # remove_writer: two epoll_ctl calls per write) is only done once a send could not finish.
        self._write_wanted = True
        if not self._silenced and self._loop is not None and not self._write_soon_pending:
            self._write_soon_pending = True
            self._loop.call_soon(self._write_soon)

    def _write_soon(self) -> None:
        self._write_soon_pending = False
        if self._silenced or not self._write_wanted or self._loop is None:
            return
        self._on_writable()
        sock = self._paho.socket()
        if self._write_wanted and not self._silenced and sock is not None:
            self._loop.add_writer(sock, self._on_writable)  # the socket is full: wait until it drains

    def _unwant_write(self, _c: Any, _u: Any, sock: Any) -> None:
        self._write_wanted = False
        if self._loop is not None:
            self._loop.remove_writer(sock)

    def _paho_connect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        waiter = self._connack
        if reason.is_failure:
            if waiter is not None and not waiter.done():
                waiter.set_exception(
                    MqttError(
                        f"MQTT broker at {self.url.hostport} refused client {self.client_id!r}: "
                        f"{reason.getName()}"
                    )
                )
            return
        self._state = _State.CONNECTED
        for topic_filter, qos in self._subs.items():
            self._paho.subscribe(topic_filter, qos)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._fire(self._on_connect)

    def _paho_disconnect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        was_connected = self._state is _State.CONNECTED
        self._generation += 1
        self._unacked.clear()
        self._state = _State.RECONNECTING if self._auto else _State.IDLE
        waiter = self._connack
        if waiter is not None and not waiter.done():
            waiter.set_exception(
                MqttError(
                    f"MQTT broker at {self.url.hostport} closed the connection before CONNACK ({reason})"
                )
            )
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        for sub_waiter in self._sub_waiters.values():
            if not sub_waiter.done():
                sub_waiter.set_exception(MqttError(f"{self.client_id}: connection lost before SUBACK"))
        if not was_connected:
            return
        log.debug("%s: disconnected from %s (%s)", self.client_id, self.url.hostport, reason)
        self._fire(self._on_disconnect)
        idle = self._reconnect_task is None or self._reconnect_task.done()
        if self._auto and self._loop is not None and idle:
            self._reconnect_task = self._loop.create_task(
                self._reconnect_loop(), name=f"mqtt-reconnect-{self.client_id}"
            )

    def _paho_message(self, _c: Any, _u: Any, message: paho.MQTTMessage) -> None:
        self._deliver(message.topic, bytes(message.payload), message.mid, message.qos)

    def _deliver(self, topic: str, payload: bytes, mid: int, qos: int) -> None:
        if self._manual_ack and qos > 0:
            self._unacked.append((mid, qos))
        self._fire(self._on_message, topic, payload)

    def take_unacked(self) -> tuple[int, list[tuple[int, int]]]:
        """(connection, messages received and not yet acknowledged), in arrival order (manual_ack)."""
        out, self._unacked = self._unacked, []
        return self._generation, out

    def ack(self, taken: tuple[int, list[tuple[int, int]]]) -> None:
        """Acknowledge what ``take_unacked`` returned, unless that connection is gone: then the broker
        redelivers those messages to the session, and acking their mids here would ack others."""
        generation, messages = taken
        if generation != self._generation or self._state is not _State.CONNECTED:
            return
        for mid, qos in messages:
            self._paho.ack(mid, qos)

    def _paho_publish(self, _c: Any, _u: Any, mid: int, _reason: Any, _props: Any) -> None:
        waiter = self._pub_waiters.get(mid)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _paho_subscribe(self, _c: Any, _u: Any, mid: int, codes: list[Any], _props: Any) -> None:
        waiter = self._sub_waiters.get(mid)
        if waiter is not None and not waiter.done():
            waiter.set_result(list(codes))
