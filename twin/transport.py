"""The one interface between the twin's cores and MQTT, with a live and a virtual implementation.

A simulated device (``twin.device.SimDevice``) and the fleet talk to MQTT, to their per-device link and
to the Wasm runtime only through a ``Transport``, chosen by the runner:

- ``LiveTransport``: a real ``MqttClient`` per device life (paho on the asyncio loop), a ``LinkProxy``
  (real TCP, fault-injecting) per faulted device, modules run on wasmtime in a worker thread. Callbacks
  enter the simulation through ``AsyncSimClock.inject`` at the scaled wall time.
- ``VirtualTransport``: a ``ModelClient`` of the in-process ``BrokerModel`` (no sockets), a ``ModelLink``
  with the LinkProxy's controls per device, modules run on wasmtime synchronously (their result is the
  real one; their duration is the device model's, never the host's wall time). Everything happens on
  the simpy clock, so the run is deterministic for a seed and independent of host load.

``MqttLink`` is what both clients offer the device: publish, subscribe, abort (the OS closes the socket:
the broker fires the will at once), silence/unsilence (half-open link: Wi-Fi drop, or a module blocking
the callback).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import replace
from typing import Any, Protocol

import simpy

from orchestrator.adapters.mqtt import BrokerUrl, MqttClient, MqttError, Will
from proplets.runtime import CancelToken, RunOutcome, RunRequest, WasmRuntime
from twin.broker_model import BrokerModel, ModelClient
from twin.clock import AsyncSimClock
from twin.link_profile import CLEAN, LinkProfile
from twin.links import LinkProxy

__all__ = ["LinkControl", "LiveTransport", "ModelLink", "MqttLink", "Transport", "VirtualTransport"]

OnDone = Callable[[bool], None]


class MqttLink(Protocol):
    """A device's MQTT client, live or modelled."""

    @property
    def connected(self) -> bool: ...
    @property
    def silenced(self) -> bool: ...
    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int: ...
    def subscribe(self, topic_filter: str, qos: int = 1) -> None: ...
    def abort(self, reconnect: bool = False) -> None: ...
    def silence(self) -> None: ...
    def unsilence(self) -> None: ...


class LinkControl(Protocol):
    """The controls of a device's link, as ``LinkProxy`` has them (faults act through these)."""

    def set_profile(self, profile: LinkProfile) -> None: ...
    def reset(self) -> int: ...
    def sever(self) -> int: ...
    async def close(self) -> None: ...


class Transport(Protocol):
    virtual: bool

    async def link(self, device: str, host: str, port: int, profile: LinkProfile,
                   rng: random.Random) -> tuple[LinkControl, str, int]:  # fmt: skip
        """A link for ``device`` to the broker at (host, port): its controls and the address the device
        dials through it."""
        ...

    def client(
        self, device: str, host: str, port: int, client_id: str, *, keepalive: float, will: Will,
        reconnect: bool, backoff_min: float, backoff_max: float, rng: random.Random | float,
        on_message: Callable[[str, bytes], None], on_connect: Callable[[], None],
        on_disconnect: Callable[[], None], username: str | None = None, password: str | None = None,
    ) -> MqttLink:  # fmt: skip
        """A client for ``device``; ``rng``: its generator, or the seed to make it from."""
        ...

    def connect(self, link: MqttLink, done: OnDone) -> None:
        """Start connecting ``link``; ``done(ok)`` runs in the simulation when it is known."""
        ...

    def disconnect(self, link: MqttLink) -> None:
        """A clean DISCONNECT (the broker drops the will), in the background."""
        ...

    def run_wasm(self, request: RunRequest, token: CancelToken, done: Callable[[RunOutcome], None]) -> None:
        """Run a module; ``done(outcome)`` runs in the simulation afterwards."""
        ...

    def spawn(self, coro: Any) -> None: ...


# ---------------------------------------------------------------------------------------------- live
class LiveTransport:
    """Real MQTT clients and TCP link proxies on the asyncio loop, wasmtime in a thread pool."""

    virtual = False

    def __init__(self, clock: AsyncSimClock, runtime: WasmRuntime, executor: Executor,
                 spawn: Callable[[Any], None]) -> None:  # fmt: skip
        self.clock, self.runtime, self.executor = clock, runtime, executor
        self.spawn = spawn  # the owner keeps the asyncio jobs, to cancel them at teardown

    async def link(self, device: str, host: str, port: int, profile: LinkProfile,
                   rng: random.Random) -> tuple[LinkControl, str, int]:  # fmt: skip
        proxy = LinkProxy(host, port, profile, rng=rng)
        await proxy.start()
        return proxy, "127.0.0.1", proxy.port

    def client(
        self, device: str, host: str, port: int, client_id: str, *, keepalive: float, will: Will,
        reconnect: bool, backoff_min: float, backoff_max: float, rng: random.Random | float,
        on_message: Callable[[str, bytes], None], on_connect: Callable[[], None],
        on_disconnect: Callable[[], None], username: str | None = None, password: str | None = None,
    ) -> MqttLink:  # fmt: skip
        inject = self.clock.inject
        # A closed broker: the device's enrolled credentials (twin/identities.py); None: anonymous.
        url = BrokerUrl("mqtt", host, port, username, password)
        if not isinstance(rng, random.Random):
            rng = random.Random(rng)
        return MqttClient(
            url, client_id, keepalive=max(1, round(keepalive)), will=will,
            reconnect=reconnect, backoff_min=backoff_min, backoff_max=backoff_max, rng=rng,
            on_message=lambda tp, pl: inject(on_message, tp, pl),
            on_connect=lambda: inject(on_connect), on_disconnect=lambda: inject(on_disconnect),
        )  # fmt: skip

    def connect(self, link: MqttLink, done: OnDone) -> None:
        assert isinstance(link, MqttClient)
        self.spawn(self._connect(link, done))

    def disconnect(self, link: MqttLink) -> None:
        assert isinstance(link, MqttClient)
        self.spawn(link.disconnect())

    async def _connect(self, client: MqttClient, done: OnDone) -> None:
        try:
            await client.connect()
            ok = True
        except MqttError:
            ok = False
        self.clock.inject(done, ok)

    def run_wasm(self, request: RunRequest, token: CancelToken, done: Callable[[RunOutcome], None]) -> None:
        self.spawn(self._run(request, token, done))

    async def _run(self, request: RunRequest, token: CancelToken, done: Callable[[RunOutcome], None]) -> None:
        loop = asyncio.get_running_loop()
        outcome = await loop.run_in_executor(self.executor, self.runtime.run, request, token)
        self.clock.inject(done, outcome)


# ---------------------------------------------------------------------------------------------- virtual
class ModelLink:
    """A device's link in virtual time: the ``LinkProxy`` controls over the device's ``ModelClient``."""

    def __init__(self, profile: LinkProfile) -> None:
        self.profile = profile
        self.client: ModelClient | None = None  # the device's current life
        self._blackholed = False
        self.on_change: Callable[[], None] | None = None  # told before a fault acts on the link

    def attach(self, client: ModelClient) -> None:
        self.client = client
        client.link = self.profile
        self._blackholed = False
        if self.profile.blackhole:
            self._hole(True)

    def set_profile(self, profile: LinkProfile) -> None:
        if self.on_change is not None:
            self.on_change()
        self.profile = profile
        if self.client is not None:
            self.client.link = profile
            self._hole(profile.blackhole)

    def update(self, **changes: Any) -> None:
        self.set_profile(replace(self.profile, **changes))

    def blackhole(self, on: bool = True) -> None:
        self.update(blackhole=on)

    def _hole(self, on: bool) -> None:
        # Nothing moves either way and no FIN: to both ends the link is silent until it is lifted.
        if self.client is None or on == self._blackholed:
            return
        self._blackholed = on
        if on:
            self.client.silence()
        else:
            self.client.unsilence()

    def sever(self) -> int:
        """The device vanished (power loss): its connection goes mute towards the broker, which notices
        at keep-alive expiry and then fires the will (``LinkProxy.sever``); returns how many were cut."""
        if self.on_change is not None:
            self.on_change()
        client = self.client
        if client is None or not client.connected:
            return 0
        client.vanish()
        return 1

    def reset(self) -> int:
        """RST to both sides: the broker sees the close (will at once), the client reconnects."""
        if self.on_change is not None:
            self.on_change()
        client = self.client
        if client is None or not client.connected:
            return 0
        client.abort(reconnect=True)
        return 1

    async def close(self) -> None:
        self.client = None


class VirtualTransport:
    """``ModelClient``s of one ``BrokerModel``; modules run synchronously on wasmtime."""

    virtual = True

    def __init__(self, env: simpy.Environment, broker: BrokerModel, runtime: WasmRuntime) -> None:
        self.env, self.broker, self.runtime = env, broker, runtime
        self.links: dict[str, ModelLink] = {}

    def spawn(self, coro: Any) -> None:
        raise RuntimeError("the virtual transport runs no asyncio jobs")

    async def link(self, device: str, host: str, port: int, profile: LinkProfile,
                   rng: random.Random) -> tuple[LinkControl, str, int]:  # fmt: skip
        link = self.links[device] = ModelLink(profile)
        return link, host, port

    def client(
        self, device: str, host: str, port: int, client_id: str, *, keepalive: float, will: Will,
        reconnect: bool, backoff_min: float, backoff_max: float, rng: random.Random | float,
        on_message: Callable[[str, bytes], None], on_connect: Callable[[], None],
        on_disconnect: Callable[[], None], username: str | None = None, password: str | None = None,
    ) -> MqttLink:  # fmt: skip
        link = self.links.get(device)
        client = self.broker.client(
            client_id, keepalive=max(1, round(keepalive)), will=will, reconnect=reconnect,
            backoff_min=backoff_min, backoff_max=backoff_max, rng=rng, link=link.profile if link else CLEAN,
            on_message=on_message, on_connect=on_connect, on_disconnect=on_disconnect,
            username=username, password=password,
        )  # fmt: skip
        if link is not None:
            link.attach(client)
        return client

    def connect(self, link: MqttLink, done: OnDone) -> None:
        assert isinstance(link, ModelClient)
        event = link.connect()
        event.callbacks.append(lambda ev: done(bool(ev.value)))

    def disconnect(self, link: MqttLink) -> None:
        assert isinstance(link, ModelClient)
        link.disconnect()

    def run_wasm(self, request: RunRequest, token: CancelToken, done: Callable[[RunOutcome], None]) -> None:
        # The true result, computed now; it reaches the device as a later event of the same instant,
        # as the live thread pool's answer does, so the device's bookkeeping runs in the same order.
        outcome = self.runtime.run(request, token)
        self.env.timeout(0).callbacks.append(lambda _ev: done(outcome))
