"""Composition root of the manager: the sans-I/O engine wired to MQTT, the store and the HTTP API.

All engine calls happen on the one asyncio loop. Commands the engine queues are executed by one
flusher task (``_flush_loop``): everything queued since its last pass is written in one transaction
(group commit), then the messages are published, so a task is durable before its start message goes
out; an API call waits for the pass that took its commands, so it returns only after its effects are
durable. A row the store refuses is reverted in the engine and the call gets a 422; the rest of the
window is written and published as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from orchestrator import wire
from orchestrator.adapters.aio import CANCEL_GRACE_S, cancel_and_wait, wait_event
from orchestrator.adapters.broker import EmbeddedBroker
from orchestrator.adapters.lease import LeaseKeeper, PgLease
from orchestrator.adapters.mqtt import MqttClient, TlsOptions, Will, parse_broker_url
from orchestrator.adapters.otel import Tracing
from orchestrator.adapters.store import Refusals, Store, StoreError, TaskLogBatch, WriteBatch
from orchestrator.chunk_server import ChunkServer
from orchestrator.core.commands import (
    Command,
    DeleteProplet,
    DeleteTask,
    InvocationFinished,
    LogEvent,
    MessageReceived,
    PersistJob,
    PersistProplet,
    PersistTask,
    Publish,
    RecordPropletEvent,
    RecordPropletMetrics,
    RecordTaskEvent,
    RecordTaskLogs,
    RecordTaskMetrics,
)
from orchestrator.core.engine import Engine, EngineConfig
from orchestrator.core.errors import Conflict, EngineError, NotFound, NotLeader, ValidationError
from orchestrator.core.identity import Enrollment, Identity, IdentityRegistry
from orchestrator.core.lease import LeaseConfig, LeaseCore
from orchestrator.core.model import Job, Proplet, Task
from orchestrator.core.observations import parse_events
from orchestrator.core.placement import make_policy
from orchestrator.core.receipts import KeyLookup, ProverKey
from orchestrator.enrollment import enroll as enroll_identity
from orchestrator.settings import ManagerSettings

log = logging.getLogger("propeller.manager")

IDENTITY_REFRESH_S = 2.0
MAX_HELD = 10_000  # messages from not-yet-known ids held for one re-read; beyond: dropped and counted


class StoreRefused(EngineError):
    """The store cannot hold this input (it was not kept): the request is refused."""

    status = 422


class StoreUnavailable(EngineError):
    """The store failed to write (the change is retried); the caller cannot be told it is durable."""

    status = 503


class ManagerService:
    def __init__(self, settings: ManagerSettings, *, keys: KeyLookup | None = None) -> None:
        """``keys``: the identity registry's key lookup; with it, results must verify (result_trust)."""
        self.settings = settings
        self.engine = Engine(
            EngineConfig(
                domain=settings.domain,
                channel=settings.channel,
                heartbeat_interval=settings.heartbeat_interval,
                liveness_timeout=settings.liveness_timeout,
                max_attempts=settings.max_attempts,
                queue_timeout=settings.queue_timeout,
                attempt_grace=settings.attempt_grace,
                attempt_timeout=settings.attempt_timeout,
                terminal_cache=settings.terminal_cache,
                timeline=settings.timeline,
                observations_per_task=settings.timeline_observations,
            ),
            policy=make_policy(settings.placement),
            keys=keys,
        )
        self.tracing = Tracing(settings.otel, "propeller-manager")  # --otel: spans (adapters/otel.py)
        self.broker: EmbeddedBroker | None = None
        self.store: Store | None = None
        self.mqtt: MqttClient | None = None
        self.broker_url = ""
        self.api_port = settings.api_port
        self._wake = asyncio.Event()
        # Group commit (see _flush_loop): commands wait in the engine until the flusher takes them.
        self._dirty = asyncio.Event()
        self._waiters: list[asyncio.Future[Refusals]] = []
        self._retry: list[Command] = []
        self._flusher: asyncio.Task[None] | None = None
        self._last_refusals = Refusals()
        self._unacked: list[tuple[int, list[tuple[int, int]]]] = []  # MQTT acks waiting for durability
        self._tasks: list[asyncio.Task[None]] = []
        self._api_server: Any = None
        self._invocations: dict[str, asyncio.Future[InvocationFinished]] = {}
        self.chunks = ChunkServer()
        # Enrolled identities (from the store); the embedded broker decides with them, live.
        self.identities = IdentityRegistry()
        self.unenrolled: Counter[str] = Counter()  # messages dropped by enrolled_only, by topic suffix
        self._own_identity = ""  # the manager's identity on its embedded broker (in memory only)
        # Messages naming an id not yet known here, held until the identities are re-read once (an
        # enrolment made by another process: `proplets enroll --db`, the twin, a standby manager).
        self._held: list[tuple[str, bytes]] = []
        self._reloading: asyncio.Task[None] | None = None
        # --ha: the lease keeper; ``serving`` once this manager leads and has restored and connected.
        self.lease: LeaseKeeper | None = None
        self.serving = not settings.ha
        self.deposed = ""  # why this manager lost its lease (it then exits)
        self.finished = asyncio.Event()  # set when the service must stop on its own (deposed)

    # ------------------------------------------------------------------ lifecycle

    def now(self) -> float:
        return time.monotonic()

    async def start(self) -> None:
        """Open the store, recover, start the broker, MQTT and the API; on failure undo what was started."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        url = parse_broker_url(self.settings.broker)
        self.store = await Store.open(self.settings.db)
        if self.settings.ha:
            await self._start_standby(url.scheme)
            return
        await self._refuse_beside_a_leader()
        await self._restore()
        await self._connect_broker()
        if self.settings.serve_api:
            await self._start_api()
        await self.flush()
        log.info(
            json.dumps(
                {
                    "event": "manager_started",
                    "broker": self.broker_url,
                    "db": self.settings.db,
                    "api": f"http://{self.settings.api_host}:{self.api_port}",
                }
            )
        )

    async def _restore(self) -> None:
        assert self.store is not None
        # Only what the engine needs: finished tasks stay in the store (the API reads them there), so a
        # restart or a standby's takeover costs what is live, not the history (issue 10).
        tasks, proplets, jobs = await self._read_live()
        self.engine.restore(tasks, proplets, self.now(), time.time(), jobs)

    async def _read_live(self) -> tuple[list[Task], list[Proplet], list[Job]]:
        assert self.store is not None
        # At once, each on its own pooled connection: a standby's takeover waits for the slowest, not the sum.
        return await asyncio.gather(
            self.store.load_live_tasks(), self.store.load_proplets(), self.store.load_jobs()
        )

    async def _connect_broker(self) -> None:
        assert self.store is not None
        url = parse_broker_url(self.settings.broker)
        # Every manager of a domain/channel uses this id, standbys included, so a new leader takes
        # over the old leader's broker session (and the results queued in it). A standby therefore
        # connects only once it leads.
        client_id = (
            self.settings.client_id or f"propeller-manager-{self.settings.domain}-{self.settings.channel}"
        )
        own_password: str | None = None
        # The manager's own identity is not a proplet; on its embedded broker it gets a fresh one below.
        stored = [i for i in await self.store.load_identities() if i.proplet_id != client_id]
        self.identities = IdentityRegistry(stored)
        if url.scheme == "embedded":
            if self.settings.broker_open:
                log.warning(
                    json.dumps(
                        {"event": "broker_open", "warning": "the embedded broker admits ANY client, "
                         "anonymous included, with no topic rules (--broker-open): debugging only"}
                    )
                )  # fmt: skip
            else:
                self.settings.enrolled_only = True
                # The manager's own identity for its own broker: fresh secrets each start, never stored.
                own = enroll_identity("manager", client_id, wall=time.time())
                self.identities.enroll(own.identity)
                self._own_identity = own.identity.proplet_id
                own_password = own.password
            self.broker = EmbeddedBroker(
                url.host, url.port, allow_anonymous=self.settings.broker_open, identities=self.identities
            )
            await self.broker.start()
            self.broker_url = self.broker.url
        else:
            self.broker_url = self.settings.broker
        topics = self.engine.topics
        broker = parse_broker_url(self.broker_url)
        if own_password is not None:
            broker = dataclasses.replace(broker, username=client_id, password=own_password)
        elif not broker.username:
            # A named session: brokers (amqtt too) keep a named client's QoS 1 messages while it is
            # away, so results published during a manager restart are delivered when it is back.
            broker = dataclasses.replace(broker, username=client_id)
        self.mqtt = MqttClient(
            broker,
            client_id,
            keepalive=self.settings.mqtt_keepalive,
            will=Will(topics.alive, json.dumps({"status": "offline", "proplet_id": client_id}).encode(), 0),
            on_message=self._on_message,
            on_connect=self._on_connect,
            on_disconnect=self._on_disconnect,
            clean_session=url.scheme == "embedded",  # an external broker keeps our results while we restart
            tls=self._tls(),
            # Acknowledge a result only once its effects are stored (flush): if this manager dies in
            # between, the broker redelivers it to the session, to us restarted or to the new leader.
            manual_ack=url.scheme != "embedded",
        )
        for topic in topics.manager_subscriptions:
            self.mqtt.subscribe(topic, 1)
        self._flusher = asyncio.create_task(self._flush_loop(), name="manager-flush")
        await self.mqtt.connect()
        if self.settings.enrolled_only and self.engine.keys is None:
            # Identities enforced: every result is judged against its proplet's enrolled key (receipts).
            self.engine.keys = self.prover_key
        self._tasks.append(asyncio.create_task(self._timer_loop(), name="manager-timers"))
        if self.settings.enrolled_only:
            self._tasks.append(asyncio.create_task(self._identity_loop(), name="manager-identities"))

    # ------------------------------------------------------------------ standby (--ha)

    async def _start_standby(self, scheme: str) -> None:
        """Serve the API as a standby and wait for the lease; ``_take_over`` runs when it is ours."""
        assert self.store is not None
        if scheme == "embedded":
            raise ValueError(
                "--ha needs an external broker (mqtt:// or mqtts://): an embedded one dies with its manager"
            )
        self.lease = LeaseKeeper(
            PgLease(self.store),
            LeaseCore(LeaseConfig(self.settings.lease_ttl)),
            self._take_over,
            self._deposed,
        )
        await self.lease.lease.ensure()
        # Read once what a takeover reads, and drop it (it will be stale by then): SQLAlchemy compiles
        # the statements and the pool opens the connections now, not inside the handover.
        await self._read_live()
        await self.store.load_identities()
        if self.settings.serve_api:
            await self._start_api()
        self._tasks.append(asyncio.create_task(self.lease.run(), name="manager-lease"))
        log.info(
            json.dumps({"event": "manager_standby", "holder": self.lease.lease.holder, "db": self.store.url})
        )

    async def _refuse_beside_a_leader(self) -> None:
        """A manager without --ha on a database that an --ha manager leads would act beside it."""
        assert self.store is not None
        if self.store.sa_engine.dialect.name != "postgresql":
            return
        current = await PgLease(self.store).current()
        if current is not None and current[0] and current[2] > 0:
            raise ValueError(
                f"manager {current[0]} leads this database with --ha (lease epoch {current[1]}); "
                "start this one with --ha too, as its standby"
            )

    async def _take_over(self, epoch: int) -> None:
        """We hold the lease: every write from now on is fenced by ``epoch``; restore, connect, serve."""
        assert self.store is not None and self.lease is not None
        started = self.now()
        # a write transaction may sit idle at most half a lease (see PgLease.fence)
        self.store.fence = self.lease.lease.fence(epoch, self.lease.core.config.ttl / 2)
        await self.store.refresh_seq()
        await self._restore()
        restored = self.now()
        await self._connect_broker()
        connected = self.now()
        if not self.lease.is_leader():
            return  # lost it while restoring; _deposed has run
        self.serving = True
        await self.flush()
        log.info(
            json.dumps(
                {
                    "event": "manager_leading",
                    "holder": self.lease.lease.holder,
                    "epoch": epoch,
                    "tasks": len(self.engine.tasks),
                    "took_s": round(self.now() - started, 3),
                    "restore_s": round(restored - started, 3),
                    "connect_s": round(connected - restored, 3),
                }
            )
        )

    def _deposed(self, reason: str) -> None:
        """The lease can no longer be trusted: stop publishing and writing at once, then exit.

        Exiting, not going back to standby: this process cannot know what the new leader has done
        since, and its engine state is stale; a supervisor restarts it, as a standby.
        """
        self.serving = False
        self.deposed = reason
        self.engine.shutting_down = True
        if self.mqtt is not None:
            self.mqtt.abort()  # no DISCONNECT and no reconnect: the session stays for the new leader
        self.finished.set()

    def leading(self) -> bool:
        """May this manager publish and write now? Always, without --ha."""
        return self.lease is None or self.lease.is_leader()

    @property
    def role(self) -> str:
        """leader | standby | starting | deposed (docs/ha.md). ``starting``: leads and still restores,
        or has not read the lease yet (a standby names the leader it waits for)."""
        if self.lease is None:
            return "leader"
        role = self.lease.core.role.value
        if role == "leader" and not self.serving:
            return "starting"
        if role == "standby" and self.lease.leader_seen is None:
            return "starting"
        return role

    def _tls(self) -> TlsOptions | None:
        s = self.settings
        if not (s.mqtt_ca or s.mqtt_cert or s.mqtt_key or s.mqtt_insecure):
            return None
        return TlsOptions(s.mqtt_ca, s.mqtt_cert, s.mqtt_key, s.mqtt_insecure)

    async def _start_api(self) -> None:
        import uvicorn

        from orchestrator.adapters.http_api import create_app

        config = uvicorn.Config(
            create_app(self),
            host=self.settings.api_host,
            port=self.settings.api_port,
            log_level="warning",
            lifespan="off",
            proxy_headers=False,  # not behind a proxy by default; the check cost ~1 % per request
        )
        server = uvicorn.Server(config)
        # The CLI owns SIGINT/SIGTERM (graceful stop of everything); uvicorn must not take them over.
        server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        sockets = [_bind_api(self.settings.api_host, self.settings.api_port)]
        self.api_port = sockets[0].getsockname()[1]
        self._api_server = server
        self._tasks.append(asyncio.create_task(server.serve(sockets=sockets), name="manager-api"))
        while not server.started:
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self.engine.shutting_down = True
        if self._api_server is not None:
            self._api_server.should_exit = True
        api = [t for t in self._tasks if t.get_name() == "manager-api"]
        await cancel_and_wait([t for t in self._tasks if t not in api], "manager stop")
        if api:  # uvicorn ends on should_exit once its connections close; cancelled if they do not
            _done, slow = await asyncio.wait(api, timeout=CANCEL_GRACE_S)
            await cancel_and_wait(slow, "manager stop (API)")
        if self.lease is not None:
            await self.lease.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.flush(), 10)  # the flusher finishes what is queued
        await cancel_and_wait([self._flusher], "manager stop")  # idle now: waiting for the next window
        if self.mqtt is not None:
            with contextlib.suppress(Exception):
                await self.mqtt.disconnect()
        if self.lease is not None and self.lease.is_leader():
            with contextlib.suppress(Exception):  # a clean stop hands over at once, not after the ttl
                await asyncio.wait_for(self.lease.lease.release(self.lease.core.epoch), 5)
        if self.broker is not None:
            await self.broker.stop()
        if self.store is not None:
            await self.store.close()

    # ------------------------------------------------------------------ engine I/O

    def _on_connect(self) -> None:
        if not self.leading():
            # A deposed manager's client reconnected before it was stopped: it must not hold the
            # session that the new leader uses.
            assert self.mqtt is not None
            self.mqtt.abort()
            return
        log.info(json.dumps({"event": "manager_mqtt_connected", "broker": self.broker_url}))
        self.engine.link_restored(self.now(), time.time())
        self._wake.set()
        self._kick()

    def _on_disconnect(self) -> None:
        if self.engine.shutting_down:
            return  # our own clean disconnect at shutdown
        self.engine.link_lost(self.now())
        self._kick()

    def _on_message(self, topic: str, payload: bytes) -> None:
        if topic == self.engine.topics.registry_request:
            asyncio.get_running_loop().create_task(self._serve_registry(payload))
            return
        if self.settings.enrolled_only:
            reason = self.identities.sender_verdict(topic, payload)
            if reason is not None:
                if len(self._held) < MAX_HELD and self.identities.claims_unknown(topic, payload):
                    self._held.append((topic, payload))
                    if self._reloading is None or self._reloading.done():
                        self._reloading = asyncio.get_running_loop().create_task(self._release_held())
                    return
                self._drop_unenrolled(topic, reason)
                return
        if self.tracing.enabled and topic == self.engine.topics.results:
            self._trace_result(payload)
        self.engine.handle(MessageReceived(topic, payload), self.now(), time.time())
        self._wake.set()
        self._kick()

    # ------------------------------------------------------------------ --otel spans (adapters/otel.py)

    def _traced_start(self, payload: bytes) -> tuple[bytes, Any]:
        """The start with the dispatch span's context in it (``traceparent``), and the span."""
        try:
            body = json.loads(payload)
            attributes = {"task_id": body.get("id"), "task_name": body.get("name"),
                          "proplet_id": body.get("proplet_id"), "attempt": body.get("attempt")}  # fmt: skip
            span = self.tracing.start("propeller.dispatch", attributes, kind="producer")
            traceparent = self.tracing.traceparent(span)
            return (wire.with_traceparent(payload, traceparent) if traceparent else payload), span
        except (ValueError, AttributeError, wire.CodecError):  # tracing never stops a start
            return payload, None

    def _trace_result(self, payload: bytes) -> None:
        try:
            body = json.loads(payload)
            error = body.get("error") or body.get("refused")
            attributes = {"task_id": body.get("task_id"), "proplet_id": body.get("proplet_id"),
                          "attempt": body.get("attempt"), "refused": body.get("refused")}  # fmt: skip
            span = self.tracing.start("propeller.result", attributes, body.get("traceparent"))
        except (ValueError, AttributeError, TypeError):
            return
        self.tracing.end(span, str(error) if error else None)

    def _drop_unenrolled(self, topic: str, reason: str) -> None:
        suffix = self.engine.topics.suffix(topic) or topic
        self.unenrolled[suffix] += 1
        log.warning(json.dumps({"event": "message_unenrolled", "topic": suffix, "reason": reason}))

    async def _release_held(self) -> None:
        """Re-read the identities, then handle (in order) or drop what was held; again while more came."""
        while self._held:
            await asyncio.sleep(0.05)  # let a burst of messages from a newly enrolled fleet gather
            with contextlib.suppress(Exception):  # the store may be briefly busy: dropped as unenrolled
                await self.reload_identities()
            held, self._held = self._held, []
            for topic, payload in held:
                reason = self.identities.sender_verdict(topic, payload)
                if reason is not None:
                    self._drop_unenrolled(topic, reason)
                    continue
                self.engine.handle(MessageReceived(topic, payload), self.now(), time.time())
            self._wake.set()
            self._kick()

    async def _identity_loop(self) -> None:
        # Revocations and enrolments made by another process reach this manager within IDENTITY_REFRESH_S.
        assert self.store is not None
        version = await self.store.identities_version()
        while True:
            await asyncio.sleep(IDENTITY_REFRESH_S)
            try:
                now = await self.store.identities_version()
                if now != version:
                    version = now
                    await self.reload_identities()
            except Exception as err:
                log.warning(json.dumps({"event": "identities_reload_failed", "error": str(err)}))

    async def reload_identities(self) -> None:
        """Re-read the identities from the store (keeping the manager's own in-memory one); sessions of
        identities revoked meanwhile are dropped from the embedded broker."""
        assert self.store is not None
        own_id = self._own_identity or (self.mqtt.client_id if self.mqtt is not None else "")
        stored = [i for i in await self.store.load_identities() if i.proplet_id != own_id]
        own = self.identities.get(self._own_identity) if self._own_identity else None
        gone = self.identities.replace_all(stored + ([own] if own is not None else []))
        for identity in gone:
            if self.broker is not None:
                await self.broker.drop_client(identity.client_id)

    async def _serve_registry(self, payload: bytes) -> None:
        """Answer a proplet's `registry/proplet` request with the module in chunks (reference §2.10).

        Only a module that a task we hold names (``Engine.module_request``) is pulled, from its OCI
        registry, once, pinned by the task's sha256, and kept; anything else, or a module we cannot
        pull, gets an explicit refusal, so the proplet fails at once instead of waiting for its timeout.
        """
        from orchestrator import wire
        from orchestrator.chunk_server import encode_reply
        from proplets.delivery import DeliveryError, FetchLimits, WasmSource, fetch_wasm

        try:
            request = wire.decode(self.engine.topics, self.engine.topics.registry_request, payload)
        except wire.CodecError as err:
            self.engine.malformed["registry/proplet"] += 1
            log.warning(json.dumps({"event": "malformed_message", "error": str(err)}))
            return
        assert isinstance(request, wire.RegistryRequest)
        app = request.app_name
        replies: list[wire.RegistryChunk] = []
        if app not in self.chunks:
            task = self.engine.module_request(app)
            self._wake.set()  # its refusal log
            if task is None:
                replies = [wire.RegistryChunk.refusal(app, "no task of this manager refers to this module")]
            else:
                try:
                    wasm = await fetch_wasm(
                        WasmSource(image_url=app, sha256=task.sha256), limits=FetchLimits()
                    )
                    self.chunks.register(app, wasm)
                except DeliveryError as err:
                    log.warning(
                        json.dumps({"event": "registry_pull_failed", "app_name": app, "error": str(err)})
                    )
                    # The user sees the proplet's failure, so it must carry the real cause.
                    replies = [wire.RegistryChunk.refusal(app, f"the manager could not pull it: {err}")]
        assert self.mqtt is not None
        for reply in replies or self.chunks.handle_request(app):
            self.mqtt.publish(self.engine.topics.registry_server, encode_reply(reply), 1)
        await self.flush()

    async def _timer_loop(self) -> None:
        cap = max(0.02, min(1.0, self.engine.config.timeout / 10))
        while True:
            deadline = self.engine.next_deadline()
            delay = cap if deadline is None else min(cap, max(0.0, deadline - self.now()))
            self._wake.clear()
            await wait_event(self._wake, delay)
            self.engine.on_timer(self.now(), time.time())
            self._kick()

    # ------------------------------------------------------------------ group commit

    def _kick(self) -> None:
        """There are commands to execute: wake the flusher (no task, no allocation per message)."""
        self._dirty.set()

    async def flush(self) -> Refusals:
        """Return once every command queued so far is executed (written, then published)."""
        if self._flusher is None or self._flusher.done():
            await self._flush_once()  # before start-up or after shutdown: do it here
            return self._last_refusals
        waiter: asyncio.Future[Refusals] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._dirty.set()
        return await waiter

    async def _flush_loop(self) -> None:
        """The one writer: each pass takes every command queued since the last one (one flush window),
        writes them in one transaction and then publishes, so API calls and MQTT messages that arrive
        while a transaction is running share the next one (group commit)."""
        delay = 0.0
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self._flush_once()
                delay = 0.0
            except StoreError:
                # The database is away (the batch is kept and retried): back off, callers were told.
                delay = min(5.0, max(0.05, delay * 2))
                await asyncio.sleep(delay)
                self._dirty.set()
            except Exception:  # a bug must not stop every later flush (and hang every API call)
                log.exception(json.dumps({"event": "flush_failed"}))

    async def _flush_once(self) -> None:
        waiters, self._waiters = self._waiters, []
        # Messages received so far have had their effects queued by the engine (handle() is
        # synchronous); they are acknowledged once this window is durable (kept with a retried one).
        if self.mqtt is not None:
            self._unacked.append(self.mqtt.take_unacked())
        commands = self._retry + self.engine.take_commands()
        self._retry = []
        if not self.leading():
            # Fenced: a deposed (or not yet leading) manager publishes and writes nothing, and a
            # caller waiting for durability is told so (503), not that it succeeded.
            if commands:
                self.engine.counters["commands_fenced"] += len(commands)
                log.warning(json.dumps({"event": "commands_fenced", "count": len(commands)}))
            fenced = NotLeader(f"this manager no longer leads ({self.deposed or 'lease expired'})")
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(fenced)
            return
        if commands:
            self.engine.counters["flush_windows"] += 1
        try:
            refused = await self._execute(commands)
        except StoreError as err:
            self._retry = commands  # nothing was written or published; the same window again later
            log.warning(json.dumps({"event": "store_write_failed", "error": str(err)}))
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(StoreUnavailable(str(err)))
            raise
        except Exception as err:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(err)
            raise
        self._last_refusals = refused
        if self.mqtt is not None and self.leading():
            for received in self._unacked:
                self.mqtt.ack(received)
        self._unacked = []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(refused)
        if refused:  # reverting a refused task may itself have queued commands (a log line, ...)
            self._dirty.set()

    async def _execute(self, commands: Sequence[Command]) -> Refusals:
        """Write every state change of the window in one transaction, then act on the rest in order.

        Nothing is published before the transaction commits: a task is durable before its start
        message goes out. A row the store refuses is reverted in the engine to what the store holds
        (a task that was never stored is forgotten), and messages about it are not sent.
        """
        assert self.store is not None
        batch = WriteBatch()
        after: list[Command] = []
        for command in commands:
            if isinstance(command, PersistTask):
                batch.tasks[command.task.id] = command.task
            elif isinstance(command, PersistProplet):
                batch.proplets[command.proplet.id] = command.proplet
            elif isinstance(command, PersistJob):
                batch.jobs[command.job.id] = command.job
            elif isinstance(command, DeleteTask):
                batch.delete_task(command.task_id)
            elif isinstance(command, DeleteProplet):
                batch.delete_proplet(command.proplet_id)
            elif isinstance(command, RecordTaskMetrics):
                batch.task_metrics.append(
                    {
                        "task_id": command.task_id,
                        "proplet_id": command.proplet_id,
                        "metrics": command.metrics,
                        "aggregated": command.aggregated,
                        "timestamp": float(command.timestamp),
                    }
                )
            elif isinstance(command, RecordTaskLogs):  # task output, in the same transaction
                c = command
                where = (c.task_id, c.attempt, c.proplet_id)
                batch.task_logs.append(TaskLogBatch(*where, c.lines, c.final, c.timestamp, c.seq, c.replace))
            elif isinstance(command, RecordPropletMetrics):
                batch.proplet_metrics.append(
                    {
                        "proplet_id": command.proplet_id,
                        "namespace": command.namespace,
                        "cpu_metrics": command.cpu_metrics,
                        "memory_metrics": command.memory_metrics,
                        "timestamp": float(command.timestamp),
                    }
                )
            elif isinstance(command, RecordTaskEvent | RecordPropletEvent):
                is_task = isinstance(command, RecordTaskEvent)
                batch.events.append(
                    {
                        "subject": "task" if is_task else "proplet",
                        "subject_id": command.task_id if is_task else command.proplet_id,  # type: ignore[union-attr]
                        "at": float(command.at_wall),
                        "kind": command.kind,
                        "cause": command.cause,
                        "fields": command.fields,
                    }
                )
            else:
                after.append(command)
        refused = await self.store.write(batch) if batch else Refusals()
        dropped: set[str] = set()
        if refused:
            dropped = await self._revert(refused)
        for command in after:
            if isinstance(command, Publish):
                if not self.leading():  # the lease ran out during this batch
                    self.engine.counters["publishes_fenced"] += 1
                    continue
                if dropped and _message_task_id(command.payload) in dropped:
                    continue
                payload, span = command.payload, None
                if self.tracing.enabled and self.engine.topics.is_start(command.topic):
                    payload, span = self._traced_start(payload)
                if self.mqtt is not None:
                    try:
                        self.mqtt.publish(command.topic, payload, command.qos)
                    except Exception as err:  # the broker may be away; the task stays recoverable
                        log.warning(
                            json.dumps({"event": "publish_failed", "topic": command.topic, "error": str(err)})
                        )
                self.tracing.end(span)
            elif isinstance(command, InvocationFinished):
                waiter = self._invocations.pop(command.invocation_id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(command)
            elif isinstance(command, LogEvent):
                level = logging.WARNING if command.level == "warning" else logging.INFO
                if log.isEnabledFor(level):  # encoding JSON for a dropped record cost ~5 % per task
                    log.log(level, json.dumps({"event": command.name, **command.fields}, default=str))
            else:  # a command type added to the engine but not here must not vanish silently
                log.error(json.dumps({"event": "unknown_command", "command": repr(command)[:200]}))
        return refused

    async def _revert(self, refused: Refusals) -> set[str]:
        """Make the engine hold what the store holds for every refused row; returns the task ids."""
        assert self.store is not None
        store = self.store

        async def revert(task_id: str) -> None:
            try:
                stored = await store.get_task(task_id)
            except StoreError:
                stored = None  # unreadable is as good as absent: memory must not claim more
            self.engine.revert_task(task_id, stored, self.now())

        dropped = set(refused.tasks)
        for task_id, reason in refused.tasks.items():
            log.warning(json.dumps({"event": "store_refused_task", "task_id": task_id, "reason": reason}))
            await revert(task_id)
        for job_id, reason in refused.jobs.items():
            log.warning(json.dumps({"event": "store_refused_job", "job_id": job_id, "reason": reason}))
            for task in self.engine.job_tasks(job_id) if job_id in self.engine.jobs else []:
                dropped.add(task.id)
                await revert(task.id)
            self.engine.jobs.pop(job_id, None)
        for proplet_id, reason in refused.proplets.items():
            # An id the store cannot hold came from the network: the proplet is not kept (it would
            # take tasks whose rows are refused in turn); its next message brings it back to be
            # refused and logged again.
            fields = {"event": "store_refused_proplet", "proplet_id": proplet_id, "reason": reason}
            log.warning(json.dumps(fields))
            with contextlib.suppress(EngineError):
                self.engine.delete_proplet(proplet_id)
        for reason in refused.metrics:
            log.warning(json.dumps({"event": "store_refused_metrics", "reason": reason}))
        return dropped

    async def _durable(self, *task_ids: str) -> None:
        """Wait until the commands queued so far are executed; raise if one of ``task_ids`` was refused."""
        refused = await self.flush()
        for task_id in task_ids:
            if task_id in refused.tasks:
                raise StoreRefused(f"task {task_id} cannot be stored: {refused.tasks[task_id]}")

    # ------------------------------------------------------------------ operations (API, CLI)

    async def create_task(self, spec: dict[str, Any], *, start: bool = False) -> Task:
        """Create a task (and with ``start``, queue it at once); returns once it is durable."""
        await self._refuse_stored_id(spec)
        task = self._create(spec, start)
        await self._durable(task.id)
        return task

    async def _refuse_stored_id(self, spec: Any) -> None:
        """An explicit id of a task that settled out of memory but is still stored is taken."""
        wanted = spec.get("id") if isinstance(spec, dict) else None
        if isinstance(wanted, str) and wanted and self.engine.find_task(wanted) is None:
            assert self.store is not None
            if await self.store.get_task(wanted) is not None:
                raise Conflict(f"task {wanted} already exists", "id")

    def _create(self, spec: dict[str, Any], start: bool) -> Task:
        task = self.engine.create_task(spec, time.time())
        if start:
            try:
                self.engine.start_task(task.id, self.now(), time.time())
            except EngineError:
                self.engine.delete_task(task.id)  # all or nothing: a task that cannot start is not kept
                raise
        return task

    async def create_tasks(self, specs: Sequence[Any], *, start: bool = False) -> list[Task | EngineError]:
        """Create (and start) many tasks in one flush window, hence one transaction.

        Each item succeeds or fails on its own: the result holds the task or the error, in order.
        """
        out: list[Task | EngineError] = []
        for i, spec in enumerate(specs):
            try:
                if not isinstance(spec, dict):
                    raise ValidationError(f"tasks[{i}] must be a JSON object", "tasks")
                item_start = spec.pop("start", start)  # an item may say otherwise than the batch
                if not isinstance(item_start, bool):
                    raise ValidationError(f"tasks[{i}].start must be true or false", "start")
                await self._refuse_stored_id(spec)
                out.append(self._create(spec, item_start))
            except EngineError as err:
                out.append(err)
        refused = await self.flush()
        return [
            StoreRefused(f"task {r.id} cannot be stored: {refused.tasks[r.id]}")
            if isinstance(r, Task) and r.id in refused.tasks
            else r
            for r in out
        ]

    async def update_task(self, task_id: str, spec: Any) -> Task:
        await self._resident(task_id)
        task = self.engine.update_task(task_id, spec, time.time())
        await self._durable(task_id)
        return task

    async def start_task(self, task_id: str) -> Task:
        await self._resident(task_id)
        task = self.engine.start_task(task_id, self.now(), time.time())
        await self._durable(task_id)
        return task

    async def stop_task(self, task_id: str) -> Task:
        await self._resident(task_id)
        task = self.engine.stop_task(task_id, time.time())
        await self._durable(task_id)
        return task

    async def delete_task(self, task_id: str) -> None:
        await self._resident(task_id)
        self.engine.delete_task(task_id)
        await self._durable()

    # -- tasks that settled out of the engine's memory live in the store (GET /tasks pages there)

    async def find_task(self, task_id: str) -> Task:
        """The task from memory, or from the store once it settled out of memory; NotFound if neither."""
        task = self.engine.find_task(task_id)
        if task is None:
            assert self.store is not None
            task = await self.store.get_task(task_id)
        if task is None:
            raise NotFound(f"task {task_id} not found")
        return task

    async def _resident(self, task_id: str) -> None:
        """Bring a settled task back into the engine before an operation that changes it."""
        if self.engine.find_task(task_id) is not None:
            return
        assert self.store is not None
        task = await self.store.get_task(task_id)
        if task is not None and self.engine.find_task(task_id) is None:
            self.engine.readmit(task)

    async def report_events(self, subject: str, subject_id: str, body: Any) -> dict[str, Any]:
        """``POST /tasks|proplets/{id}/events``: events seen from outside (console lines, twin faults)
        join the timelines (orchestrator/core/observations.py); returns what was recorded where."""
        events = parse_events(body, time.time())
        if not self.engine.config.timeline:
            raise Conflict("the manager records no timelines (started with --no-timeline)")
        if subject == "task":
            await self.find_task(subject_id)
            kept = self.engine.observations.report_on_task(subject_id, events)
            joined = {subject_id: kept} if kept else {}
        else:
            self.engine.get_proplet(subject_id)
            joined = self.engine.observations.report_on_proplet(subject_id, events)
        await self._durable()
        return {"recorded": len(events), "tasks": joined}

    async def delete_proplet(self, proplet_id: str) -> None:
        self.engine.delete_proplet(proplet_id)
        await self._durable()

    async def create_workflow(self, specs: Any) -> list[Task]:
        tasks = self.engine.create_workflow(specs, time.time())
        refused = await self.flush()
        why = next((refused.tasks[t.id] for t in tasks if t.id in refused.tasks), "")
        if why:  # all or nothing, like the engine's own validation of a workflow
            await self._forget(tasks)
            raise StoreRefused(f"workflow cannot be stored: {why}")
        return tasks

    async def _forget(self, tasks: list[Task]) -> None:
        """Delete tasks created by a call that is refused as a whole."""
        for task in tasks:
            with contextlib.suppress(EngineError):
                self.engine.delete_task(task.id)
        await self.flush()

    async def create_job(self, name: str, specs: Any, mode: str) -> tuple[Job, list[Task]]:
        job, tasks = self.engine.create_job(name, specs, mode, time.time())
        refused = await self.flush()
        why = refused.jobs.get(job.id) or next(
            (refused.tasks[t.id] for t in tasks if t.id in refused.tasks), ""
        )
        if why:  # all or nothing: the job's stored tasks go too
            await self._forget(tasks)
            raise StoreRefused(f"job {job.id} cannot be stored: {why}")
        return job, tasks

    async def start_job(self, job_id: str) -> None:
        self.engine.start_job(job_id, self.now(), time.time())
        await self._durable()

    async def stop_job(self, job_id: str) -> None:
        self.engine.stop_job(job_id, time.time())
        await self._durable()

    async def invoke(self, task_id: str, inputs: Any, env: Any) -> InvocationFinished:
        invocation_id = self.engine.invoke(task_id, inputs, env, self.now())
        waiter: asyncio.Future[InvocationFinished] = asyncio.get_running_loop().create_future()
        self._invocations[invocation_id] = waiter
        self._wake.set()
        await self._durable()
        return await waiter

    # ------------------------------------------------------------------ identities

    @property
    def broker_link_up(self) -> bool:
        """Whether the manager's own MQTT session is up (``/health`` fails while it is not)."""
        return self.mqtt is not None and self.mqtt.connected

    async def enroll(
        self, kind: str = "proplet", proplet_id: str | None = None, client_id: str | None = None,
        key: str | None = None,
    ) -> Enrollment:  # fmt: skip
        """Enroll an identity; it is durable before this returns. Conflict if the id is in use."""
        assert self.store is not None
        if kind == "manager":
            from orchestrator.core.errors import ValidationError

            raise ValidationError("the manager's identity is not enrolled through the API", "kind")
        enrollment = enroll_identity(kind, proplet_id, wall=time.time(), client_id=client_id, key=key)
        previous = self.identities.get(enrollment.identity.proplet_id)
        self.identities.enroll(enrollment.identity)  # raises Conflict, registry unchanged
        try:
            await self.store.save_identity(enrollment.identity)
        except BaseException:
            self.identities.replace_all(
                [i for i in self.identities.all() if i.proplet_id != enrollment.identity.proplet_id]
                + ([previous] if previous is not None else [])
            )
            raise
        log.info(json.dumps({"event": "identity_enrolled", **enrollment.identity.view()}))
        return enrollment

    def prover_key(self, proplet_id: str) -> ProverKey | None:
        """The receipts KeyLookup over the enrolled identities: None for unknown or revoked proplets."""
        found = self.identities.prover(proplet_id)
        return None if found is None else ProverKey(*found)

    async def revoke(self, proplet_id: str) -> Identity:
        """Revoke: refused from now on, and its live session (embedded broker) is dropped at once."""
        assert self.store is not None
        identity = self.identities.revoke(proplet_id, time.time())
        await self.store.save_identity(identity)
        dropped = False
        if self.broker is not None:
            dropped = await self.broker.drop_client(identity.client_id)
        log.warning(
            json.dumps({"event": "identity_revoked", "proplet_id": proplet_id, "disconnected": dropped})
        )
        return identity

    def proplet_alive(self, proplet: Proplet) -> bool:
        return self.engine.is_alive(proplet, self.now())


def _message_task_id(payload: bytes) -> str | None:
    """The task a start/stop message is about (only read on the rare path of a refused write)."""
    try:
        body = json.loads(payload)
    except ValueError:
        return None
    return body.get("id") if isinstance(body, dict) else None


def _bind_api(host: str, port: int) -> Any:
    import socket

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # asyncio sets TCP_NODELAY only on sockets created with proto=IPPROTO_TCP, which this is not;
    # accepted sockets inherit it from here. Without it every keep-alive request waits ~40 ms
    # (Nagle + delayed ACK), measured by `propeller bench e2e`.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise OSError(f"cannot serve the HTTP API on {host}:{port}: {err.strerror}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock
