"""Embedded MQTT 3.1.1 broker over amqtt 0.12.1, with its keep-alive bug fixed.

Why patch amqtt: `BrokerProtocolHandler.handle_read_timeout()` is a no-op in 0.12.1, so a client whose
link goes silent (Wi-Fi loss, no RST) is never timed out and its Last Will never fires. The twin
depends on that will, so `_install_keepalive_fix()` replaces the method once per process with one that
treats the read timeout as a lost connection (the broker then publishes the will). It refuses to run,
loudly, if the amqtt internals it relies on have changed.

The timeout itself is `keepalive × (1 + keepalive_grace)`; the default grace 0.5 gives MQTT 3.1.1's
1.5 × keep-alive (§3.1.2.10), which is also what Mosquitto does. amqtt's own
`timeout-disconnect-delay` only takes whole seconds, so the broker subclass sets the session's
keep-alive directly.

Session takeover: when a client connects with the id of a connection that is still open (a device
that rebooted after a silent power loss or watchdog reset, its old TCP connection half-open), Mosquitto
closes the old connection and publishes its will before it answers the new CONNECT (design §7). amqtt
0.12.1 does neither for clean sessions: the old connection lingers until its keep-alive expires and
its will then arrives *after* the device came back, so the manager would bury a live device. The
broker subclass therefore takes the old connection over itself (`_Broker._take_over`). (Persistent
sessions keep amqtt's own takeover.)

Authentication: amqtt's AnonymousAuthPlugin marks *every* session anonymous, and anonymous sessions
never queue offline messages, which breaks `clean_session=False`. We use our own cheap plugin
(`_UserAuthPlugin`, a constant-time compare of SHA-256 digests; amqtt's argon2 FileAuth costs ~90 ms of
loop time per login): clients without a user name are anonymous (allowed only if `allow_anonymous`),
clients with a known user name and the right password get full persistent sessions.

Identities (a closed broker): given an `IdentityRegistry` (orchestrator/core/identity.py) and
``allow_anonymous=False``, the broker admits only enrolled identities and enforces their rules. amqtt
checks credentials only *after* a clean-session CONNECT has already deleted the session of the same
client id (and performs a takeover even for a refused client), so an anonymous client could deafen the
manager by borrowing its client id. `_Broker` therefore reads the CONNECT itself and decides before
anything of an existing session is touched (`_initialize_client_session`). A denied PUBLISH is
dropped and counted (`BrokerGuard.counters`): amqtt's topic plugins never see payloads, so the check
of the ``proplet_id`` a message claims runs in `_handle_message_delivery`. A Last Will is checked like
a publish at CONNECT (amqtt broadcasts wills without any check). `drop_client()` ends a revoked
identity's connection and deletes its session.

Threading: `EmbeddedBroker` runs in the caller's event loop (the manager's all-in-one mode).
`BrokerThread` runs one in a daemon thread with its own loop, for synchronous code and for
benchmarks that should not share a loop with the clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import hmac
import inspect
import json
import logging
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.errors import AMQTTError, BrokerError, MQTTError, NoDataError
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.mqtt.protocol.handler import ProtocolHandler
from amqtt.plugins.base import BaseAuthPlugin
from amqtt.session import Session
from amqtt.utils import gen_client_id

from orchestrator.core.identity import WILL_REFUSED, Identity, IdentityRegistry

log = logging.getLogger(__name__)

__all__ = ["BrokerGuard", "BrokerStartError", "BrokerThread", "EmbeddedBroker"]


class BrokerStartError(RuntimeError):
    """The embedded broker could not start (the message names host:port and the cause)."""


# --- amqtt's unacknowledged-delivery traceback ----------------------------------------------------


class _UnackedDeliveryLog(logging.Filter):
    """Turn amqtt's traceback for a subscriber that never acknowledged a QoS 1/2 delivery into one line.

    amqtt waits 5 s for PUBACK/PUBREC/PUBCOMP, raises TimeoutError, and its broadcast loop logs the
    whole traceback ("Task failed and will be skipped"). For an operator that is a slow or stuck
    subscriber, not a broker bug: say that, once, as a warning.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, TimeoutError) and "Timeout waiting for PUB" in str(exc):
            record.msg = "a subscriber did not acknowledge a QoS delivery in time (%s); dropped for it"
            record.args = (exc,)
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


_UNACKED_LOG = _UnackedDeliveryLog()


# --- the keep-alive fix ------------------------------------------------------------------------------

_PATCH_MARK = "_propeller_keepalive_fix"


def _keepalive_expired(self: BrokerProtocolHandler) -> None:
    # Called by ProtocolHandler._reader_loop when no packet arrived within session.keep_alive seconds.
    # Treat it as a dropped link: the broker's disconnect path publishes the will and stops the handler.
    if self.session is not None:
        log.info("keep-alive expired for client %r: closing it", self.session.client_id)
    task = asyncio.ensure_future(self.handle_connection_closed())
    _closing_tasks.add(task)  # keep a reference until done, or the task may be garbage-collected
    task.add_done_callback(_closing_tasks.discard)


_closing_tasks: set[asyncio.Future[None]] = set()


setattr(_keepalive_expired, _PATCH_MARK, True)


def _install_keepalive_fix() -> None:
    """Patch amqtt once per process; raise RuntimeError if its internals no longer match."""
    current = BrokerProtocolHandler.handle_read_timeout
    if getattr(current, _PATCH_MARK, False):
        return
    problems = []
    body = inspect.getsource(current).strip().splitlines()
    if body[-1].strip() != "pass":
        problems.append("BrokerProtocolHandler.handle_read_timeout is no longer a no-op")
    reader = inspect.getsource(ProtocolHandler._reader_loop)
    if "self.session.keep_alive" not in reader or "self.handle_read_timeout()" not in reader:
        problems.append("ProtocolHandler._reader_loop no longer times reads by session.keep_alive")
    if not inspect.iscoroutinefunction(BrokerProtocolHandler.handle_connection_closed):
        problems.append("BrokerProtocolHandler.handle_connection_closed is gone")
    if not inspect.iscoroutinefunction(getattr(Broker, "_initialize_client_session", None)):
        problems.append("Broker._initialize_client_session is gone")
    for name in ("_authenticate", "_topic_filtering", "_handle_message_delivery", "_delete_session"):
        if not inspect.iscoroutinefunction(getattr(Broker, name, None)):
            problems.append(f"Broker.{name} is gone (the identity guard overrides it)")
    if problems:
        raise RuntimeError(
            "amqtt internals changed, review orchestrator/adapters/broker.py keep-alive fix: "
            + "; ".join(problems)
        )
    BrokerProtocolHandler.handle_read_timeout = _keepalive_expired


class BrokerGuard:
    """A closed broker's decisions (from the identity registry) and what it refused, counted."""

    def __init__(self, registry: IdentityRegistry) -> None:
        self.registry = registry
        # connect_refused, publish_dropped, subscribe_refused, will_refused, revoked_dropped
        self.counters: Counter[str] = Counter()

    def admit(self, session: Session) -> str | None:
        """None if the CONNECT in ``session`` is admitted, else why it is refused."""
        will = session.will_flag and session.will_topic is not None
        verdict = self.registry.connect_verdict(
            session.client_id or "", session.username, session.password,
            session.will_topic if will else None, bytes(session.will_message or b""),
        )  # fmt: skip
        if verdict.identity is None:
            if verdict.reason.startswith(WILL_REFUSED):
                self.counters["will_refused"] += 1
            return verdict.reason
        return None

    def identity(self, session: Session) -> Identity | None:
        # A client id belongs to exactly one active identity, and admit() made them match.
        return self.registry.owner_of_client(session.client_id or "")

    def refuse(self, what: str, session: Session, reason: str, **fields: Any) -> None:
        self.counters[what] += 1
        log.warning(
            json.dumps(
                {"event": f"broker_{what}", "client_id": str(session.client_id)[:128],
                 "username": str(session.username)[:128], "reason": reason, **fields}
            )
        )  # fmt: skip


class _Broker(Broker):
    """amqtt Broker whose keep-alive timeout is keepalive × factor (amqtt only adds whole seconds),
    which takes an open connection over, as Mosquitto does, when its client id connects again, and
    which enforces identities when it has a guard (see the module docstring)."""

    keepalive_factor: float = 1.5
    guard: BrokerGuard | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # client id -> (session, handler) of its latest connection. amqtt forgets a clean session's
        # old connection when the id connects again, so we keep our own reference to take it over.
        self._latest: dict[str, tuple[Session, BrokerProtocolHandler]] = {}

    def force_close(self) -> None:
        """Abort every listener and client socket and cancel the broker's own loops (see stop())."""
        for server in self._servers.values():
            if server.instance is not None:
                server.instance.close()
        for _session, handler in self._latest.values():
            writer = getattr(handler.writer, "_writer", None)  # amqtt's StreamWriterAdapter
            if writer is not None:
                writer.transport.abort()
        self._latest.clear()
        for task in (self._broadcast_task, self._session_monitor_task):
            if task is not None:
                task.cancel()

    async def _initialize_client_session(self, *args: Any, **kwargs: Any) -> tuple[Any, Session]:
        if self.guard is None:
            handler, session = await super()._initialize_client_session(*args, **kwargs)
        else:
            handler, session = await self._guarded_session(self.guard, *args, **kwargs)
        if session.keep_alive > 0:
            session.keep_alive = session.keep_alive * self.keepalive_factor
        client_id = session.client_id
        if client_id:
            old = self._latest.get(client_id)
            if old is not None and old[0] is not session and old[1] is not handler:
                await self._take_over(*old)
            self._latest[client_id] = (session, handler)
        return handler, session

    async def _take_over(self, old: Session, handler: BrokerProtocolHandler) -> None:
        """The old connection of a reconnecting client id ends as a lost one: its will is published
        now, before the new connection is acknowledged, and its handler is stopped."""
        if not old.transitions.is_connected():
            return
        log.info("client %r connected again: taking over its open connection", old.client_id)
        if old.will_flag:
            await self._broadcast_message(old, old.will_topic, old.will_message, old.will_qos)
            if old.will_retain:
                await self.retain_message(old, old.will_topic, old.will_message, old.will_qos)
            old.will_flag = False  # the old connection's own end must not publish it a second time
        await handler.handle_connection_closed()

    async def _guarded_session(
        self, guard: BrokerGuard, reader: Any, writer: Any, remote_address: str, remote_port: int
    ) -> tuple[Any, Session]:
        # amqtt's own version, with the identity decided before an existing session is deleted or
        # taken over (amqtt 0.12.1 does both before it checks credentials).
        try:
            handler, session = await BrokerProtocolHandler.init_from_connect(
                reader, writer, self.plugins_manager
            )
        except (AMQTTError, MQTTError, NoDataError) as exc:
            with contextlib.suppress(Exception):
                await writer.close()
            raise AMQTTError(f"bad CONNECT from {remote_address}:{remote_port}: {exc}") from exc
        reason = guard.admit(session)
        if reason is not None:
            guard.refuse("connect_refused", session, reason, peer=f"{remote_address}:{remote_port}")
            handler.attach(session, reader, writer)
            with contextlib.suppress(Exception):
                await handler.mqtt_connack_authorize(False)
            with contextlib.suppress(Exception):
                await writer.close()
            raise AMQTTError(f"client {session.client_id!r} refused: {reason}")
        if session.clean_session:
            if session.client_id:
                await self._delete_session(session.client_id)
            else:
                session.client_id = gen_client_id()
            session.parent = 0
        elif session.client_id in self._sessions:
            existing, _ = self._sessions[session.client_id]
            for name in (
                "will_flag",
                "will_message",
                "will_topic",
                "will_qos",
                "keep_alive",
                "username",
                "password",
            ):
                setattr(existing, name, getattr(session, name))
            session = existing
            session.parent = 1
        else:
            session.parent = 0
        return handler, session

    async def _authenticate(self, session: Session, listener: Any) -> bool:
        if self.guard is None:
            return await super()._authenticate(session, listener)
        return True  # decided in _guarded_session, before the session was touched

    async def _topic_filtering(self, session: Session, topic: str, action: Action) -> bool:
        guard = self.guard
        if guard is None:
            return await super()._topic_filtering(session, topic, action)
        if action != Action.SUBSCRIBE:
            return True  # PUBLISH: _handle_message_delivery (it needs the payload); RECEIVE: by subscription
        identity = guard.identity(session)
        reason = "identity revoked" if identity is None else guard.registry.subscribe_verdict(identity, topic)
        if reason is not None:
            guard.refuse("subscribe_refused", session, reason, topic=topic[:200])
            return False
        return True

    async def _handle_message_delivery(self, session: Session, handler: Any, wait_deliver: Any) -> bool:
        guard = self.guard
        message = wait_deliver.result() if guard is not None else None
        if guard is not None and message is not None and message.topic:
            identity = guard.identity(session)
            payload = bytes(message.data or b"")
            reason = (
                "identity revoked"
                if identity is None
                else guard.registry.publish_verdict(identity, message.topic, payload)
            )
            if reason is not None:
                guard.refuse("publish_dropped", session, reason, topic=message.topic[:200])
                return True  # acked and dropped, like amqtt's own ACL: the client stays connected
        return bool(await super()._handle_message_delivery(session, handler, wait_deliver))

    async def drop_client(self, client_id: str) -> bool:
        """End ``client_id``'s connection (its will fires) and delete its session; False if unknown."""
        entry = self._sessions.get(client_id)
        if entry is None:
            return False
        _session, handler = entry
        with contextlib.suppress(Exception):
            await handler.handle_connection_closed()
        with contextlib.suppress(Exception):
            await handler.stop()
        await self._delete_session(client_id)
        return True


# --- authentication ----------------------------------------------------------------------------------


def _digest(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


class _UserAuthPlugin(BaseAuthPlugin):
    """User/password check against SHA-256 digests; anonymous clients only if allowed."""

    @dataclass
    class Config:
        allow_anonymous: bool = True
        users: dict[str, str] = field(default_factory=dict)  # user -> sha256 hex of the password

    async def authenticate(self, *, session: Session) -> bool:
        config = self.context.config
        assert isinstance(config, _UserAuthPlugin.Config)
        if not session.username:
            # amqtt drops anonymous sessions on disconnect, so only named users keep offline queues.
            session.is_anonymous = True
            return bool(config.allow_anonymous)
        expected = config.users.get(session.username)
        if expected is None:
            # Open broker: a user name it does not know is a label, not a credential. Accepting it
            # still gives the client a persistent session (a manager's queued results survive its
            # restart), which anonymous sessions never get.
            # With no users configured at all (`--broker-open`), enrolled clients' credentials are
            # labels too: debugging an open broker must not lock out the fleet's own proplets.
            return bool(config.allow_anonymous) and (not session.password or not config.users)
        given = _digest(session.password or "")
        return hmac.compare_digest(expected, given)


# --- the broker --------------------------------------------------------------------------------------


class EmbeddedBroker:
    """An amqtt broker in the running event loop. Restartable: stop() then start() keeps the port."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        allow_anonymous: bool = True,
        users: dict[str, str] | None = None,
        keepalive_grace: float = 0.5,
        max_connections: int = -1,
        identities: IdentityRegistry | None = None,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"embedded broker port {port} is out of range 0..65535")
        if keepalive_grace < 0:
            raise ValueError(f"keepalive_grace must be >= 0, got {keepalive_grace}")
        for user, password in (users or {}).items():
            if not user or not isinstance(password, str):
                raise ValueError(f"embedded broker users: bad entry for user {user!r}")
        if not allow_anonymous and not users and identities is None:
            raise ValueError("embedded broker: allow_anonymous=False needs identities or entries in users")
        if identities is not None and users:
            raise ValueError("embedded broker: give identities or users, not both")
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self._allow_anonymous = allow_anonymous
        self._users = {u: _digest(p) for u, p in (users or {}).items()}
        self._keepalive_factor = 1.0 + keepalive_grace
        self._max_connections = max_connections
        self._broker: _Broker | None = None
        # Closed broker: only enrolled identities, each bound to its own client id, topics and id.
        self.guard = BrokerGuard(identities) if identities is not None and not allow_anonymous else None

    @property
    def running(self) -> bool:
        return self._broker is not None

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with port 0); valid after the first start()."""
        if self._port is None:
            raise RuntimeError("embedded broker has not been started yet: its port is unknown")
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtt://{host}:{self.port}"

    def _config(self, port: int) -> dict[str, Any]:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return {
            "listeners": {
                "default": {"type": "tcp", "bind": f"{host}:{port}", "max_connections": self._max_connections}
            },
            "timeout_disconnect_delay": 0,
            # Listing plugins replaces amqtt's defaults: no per-packet logger, no $SYS (both cost).
            "plugins": {
                f"{__name__}._UserAuthPlugin": {
                    "allow_anonymous": self._allow_anonymous,
                    "users": dict(self._users),
                }
            },
        }

    async def start(self) -> None:
        """Bind and serve; raise BrokerStartError naming host:port on failure (e.g. address in use)."""
        if self._broker is not None:
            raise RuntimeError(f"embedded broker on {self.host}:{self._port} is already running")
        _install_keepalive_fix()
        logging.getLogger("amqtt.broker").addFilter(_UNACKED_LOG)  # idempotent: a set of filters
        port = self._port if self._port is not None else self._requested_port
        broker = _Broker(self._config(port))
        broker.keepalive_factor = self._keepalive_factor
        broker.guard = self.guard
        amqtt_log = logging.getLogger("amqtt.broker")
        previous = amqtt_log.disabled
        amqtt_log.disabled = True  # amqtt logs a full traceback for a taken port; we raise a clear error
        try:
            await broker.start()
        except BrokerError as exc:
            raise BrokerStartError(
                f"cannot start embedded MQTT broker on {self.host}:{port}: {_cause(exc)}"
            ) from exc
        finally:
            amqtt_log.disabled = previous
        server = broker._servers["default"].instance
        self._port = int(server.sockets[0].getsockname()[1])
        self._broker = broker
        log.info("embedded MQTT broker listening on %s", self.url)

    async def drop_client(self, client_id: str) -> bool:
        """Disconnect ``client_id`` now (a revoked identity) and delete its session."""
        if self._broker is None:
            return False
        dropped = await self._broker.drop_client(client_id)
        if dropped and self.guard is not None:
            self.guard.counters["revoked_dropped"] += 1
        return dropped

    async def stop(self, timeout: float = 5.0) -> None:
        """Close the listener and every client connection; sessions and retained messages are lost.

        Bounded: amqtt 0.12.1's shutdown can wait forever on a client handler whose reader never
        reports stopped (seen under CPU load with a proplet connected). After ``timeout`` seconds the
        listener and every client socket are closed by force and the broker's loops cancelled.
        """
        broker, self._broker = self._broker, None
        if broker is None:
            return
        try:
            await asyncio.wait_for(broker.shutdown(), timeout)
        except TimeoutError:
            log.warning(
                "embedded broker on %s:%s: amqtt's shutdown did not finish in %.0f s; closing %d client "
                "connection(s) by force", self.host, self._port, timeout, len(broker._latest),
            )  # fmt: skip
            broker.force_close()

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _cause(exc: BaseException) -> str:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.EADDRINUSE:
            return "address already in use"
        if isinstance(seen, OSError) and seen.errno == errno.EADDRNOTAVAIL:
            return "address not available on this machine"
        if isinstance(seen, OSError):
            return seen.strerror or str(seen)
        seen = seen.__cause__
    return str(exc)


class BrokerThread:
    """An EmbeddedBroker in a daemon thread with its own event loop (for sync code and benchmarks)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **kwargs: Any) -> None:
        self._kwargs = kwargs
        self._host, self._port = host, port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.broker: EmbeddedBroker | None = None

    @property
    def url(self) -> str:
        assert self.broker is not None, "BrokerThread not started"
        return self.broker.url

    def start(self, timeout: float = 10.0) -> None:
        loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        async def boot() -> None:
            self.broker = EmbeddedBroker(self._host, self._port, **self._kwargs)
            try:
                await self.broker.start()
            except BaseException as exc:
                failure.append(exc)
            finally:
                started.set()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(boot())
            if not failure:
                loop.run_forever()
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="embedded-mqtt-broker", daemon=True)
        self._thread.start()
        if not started.wait(timeout):
            raise BrokerStartError(f"embedded MQTT broker thread did not start within {timeout} s")
        if failure:
            self._thread.join(timeout)
            self._loop = self._thread = None
            raise failure[0]

    def stop(self, timeout: float = 10.0) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or self.broker is None:
            return
        asyncio.run_coroutine_threadsafe(self.broker.stop(), loop).result(timeout)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        self._loop = self._thread = None

    def __enter__(self) -> BrokerThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
