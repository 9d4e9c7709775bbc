"""Identities of one live twin run, so scenarios run against a CLOSED broker like a real fleet.

The run's manager database is the one place identities live (as for ``propeller manager``):
``bootstrap()`` enrolls the manager (its identity file goes to ``--identity``) and a probe identity
before the broker starts; the broker admits what that database holds (``propeller broker --db`` re-reads
it every ``REFRESH_S``; a private Mosquitto gets generated password and ACL files, reloaded by SIGHUP).
Devices are enrolled in memory as the fleet is built (``device()``: our devices get an Ed25519 key for
receipts, upstream firmware its own key only) and written in one transaction by ``commit()``, which
returns once the broker admits them (the probe connects), so no device's first CONNECT is refused.
Monitors of a run (``observer()``) get a manager-kind identity: they read every topic.

A virtual run (``VirtualIdentities``) enrolls the same way in memory, into the broker model's registry.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import random
import secrets
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.adapters.mqtt import BrokerUrl, MqttClient, MqttError
from orchestrator.adapters.store import Store
from orchestrator.core.identity import SALT_BYTES, Enrollment, IdentityRegistry, new_enrollment
from orchestrator.enrollment import enroll, mosquitto_files, write_identity

REFRESH_S = 0.5  # how often `propeller broker --db` re-reads the identities in a twin run
PROBE_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)
    signing_key: bytes | None = field(default=None, repr=False)


def kind_of(device_kind: str) -> str:
    """Identity kind of a twin device kind: upstream firmware cannot sign; ours (esp32s3, host) can."""
    return "upstream" if device_kind in ("upstream-firmware", "board") else "proplet"


class TwinIdentities:
    def __init__(self, work_dir: Path, db: Path | None = None) -> None:
        self.work_dir = work_dir
        self.db = db or work_dir / "manager.db"
        self.manager_file = work_dir / "manager-identity.json"
        self._pending: list[Enrollment] = []
        self._probe: Enrollment | None = None
        self.board_key = secrets.token_urlsafe(18)  # provisioned to this run's boards as their api_key

    async def bootstrap(self, domain: str) -> Path:
        """Enroll the manager and the probe into the run's database; returns the manager's identity file."""
        wall = time.time()
        manager = enroll("manager", f"twin-manager-{domain}", wall=wall)
        self._probe = enroll("proplet", f"twin-probe-{secrets.token_hex(4)}", wall=wall)
        async with await Store.open(str(self.db)) as store:
            await store.save_identities([manager.identity, self._probe.identity])
        write_identity(self.manager_file, manager.identity_file())
        await self.write_mosquitto_files()
        return self.manager_file

    def device(self, device_kind: str, proplet_id: str) -> Credentials:
        """Enroll a device (written by the next ``commit``): its credentials and signing key."""
        kind = kind_of(device_kind)
        key = self.board_key if device_kind == "board" else None
        enrollment = enroll(kind, proplet_id, wall=time.time(), key=key)
        self._pending.append(enrollment)
        return Credentials(enrollment.identity.username, enrollment.password, enrollment.signing_key)

    def observer(self, client_id: str) -> Credentials:
        """A monitor that reads the whole channel (manager kind)."""
        enrollment = enroll("manager", client_id, wall=time.time())
        self._pending.append(enrollment)
        return Credentials(enrollment.identity.username, enrollment.password)

    async def commit(self, host: str, port: int, mosquitto_pid: int | None = None) -> None:
        """Write the pending identities, let the broker reload them, and wait until it admits them."""
        if self._pending:
            # A fresh probe in the same batch: its admission proves the broker has re-read the batch.
            self._probe = enroll("proplet", f"twin-probe-{secrets.token_hex(4)}", wall=time.time())
            self._pending.append(self._probe)
        pending, self._pending = self._pending, []
        if pending:
            async with await Store.open(str(self.db)) as store:
                await store.save_identities([e.identity for e in pending])
        if mosquitto_pid is not None:
            await self.write_mosquitto_files()
            with contextlib.suppress(ProcessLookupError):
                os.kill(mosquitto_pid, signal.SIGHUP)  # Mosquitto re-reads its password and ACL files
        await self._wait_admitted(host, port)

    async def write_mosquitto_files(self) -> tuple[Path, Path]:
        async with await Store.open(str(self.db)) as store:
            passwd, acl = mosquitto_files(await store.load_identities())
        paths = (self.work_dir / "mosquitto.passwd", self.work_dir / "mosquitto.acl")
        for path, text in zip(paths, (passwd, acl), strict=True):
            path.write_text(text, encoding="utf-8")
            path.chmod(0o600)
        return paths

    async def _wait_admitted(self, host: str, port: int) -> None:
        probe = self._probe
        assert probe is not None, "bootstrap() first"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PROBE_TIMEOUT_S
        ident = probe.identity
        while True:
            url = BrokerUrl("mqtt", host, port, ident.username, probe.password)
            client = MqttClient(url, ident.client_id, reconnect=False)
            try:
                await client.connect(timeout=5.0)
                await client.disconnect()
                return
            except MqttError as err:
                if loop.time() > deadline:
                    raise RuntimeError(f"the broker did not admit this run's identities: {err}") from None
            await asyncio.sleep(0.1)


class VirtualIdentities:
    """A virtual run's identities: enrolled in memory into the broker model's registry through the same
    core as live enrollment (``new_enrollment``: Mosquitto's ``$7$`` hash, ~0.1 ms a device), with every
    secret (password, salt, signing key) drawn from the run's seed, so a seed gives the same trace.
    Nothing touches disk; ``device`` has the signature of ``TwinIdentities.device`` for ``Fleet``."""

    def __init__(self, seed: int | str, wall: float) -> None:
        self.registry = IdentityRegistry()
        self.wall = wall
        self._rng = random.Random(f"{seed}:identities")
        self.board_key = self._token()

    def _token(self) -> str:
        return base64.urlsafe_b64encode(self._rng.randbytes(24)).decode()

    def _enroll(self, kind: str, proplet_id: str, key: str | None = None) -> Credentials:
        signing_key = self._rng.randbytes(32) if kind != "upstream" else None
        enrollment = new_enrollment(
            kind=kind, proplet_id=proplet_id, password=key if key is not None else self._token(),
            salt=self._rng.randbytes(SALT_BYTES), signing_key=signing_key, wall=self.wall,
        )  # fmt: skip
        self.registry.enroll(enrollment.identity)
        return Credentials(enrollment.identity.username, enrollment.password, enrollment.signing_key)

    def manager(self, client_id: str) -> Credentials:
        return self._enroll("manager", client_id)

    def device(self, device_kind: str, proplet_id: str) -> Credentials:
        key = self.board_key if device_kind == "board" else None
        return self._enroll(kind_of(device_kind), proplet_id, key)
