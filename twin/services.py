"""The processes a live scenario runs against: the MQTT broker and the manager, each its own process.

Separate processes, so that a broker restart or a manager ``kill -9`` is the real thing: the kernel
closes their sockets, the devices see it as they would in the field. Both listen on ephemeral ports
(``free_port``); a restart reuses the same port so that clients reconnect to where they were.

``broker: embedded`` runs ``propeller broker`` (amqtt, keep-alive enforced); ``broker: mosquitto`` runs a
PRIVATE mosquitto with a generated conf (never the machine's one on 1883). The manager is
``propeller manager`` with the scenario's timers and placement; its log lines go to a file and, one by
one, to ``on_line`` (the observer).

Every process is killed on every exit path: ``Services`` is an async context manager, and an
``atexit`` hook kills whatever is left if the interpreter dies another way.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from orchestrator.settings import ManagerSettings, to_argv

REPO_ROOT = Path(__file__).resolve().parents[1]
PLACEMENTS = {"round_robin": "round-robin", "least_loaded": "least-loaded", "memory_aware": "memory-aware"}
_LIVE: set[asyncio.subprocess.Process] = set()
MAX_QUEUED_MESSAGES = 100_000  # per offline persistent session (the private mosquitto's conf; the model's)


class ServiceError(RuntimeError):
    """A service would not start; the message says which and why (with its last log lines)."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _kill_leftovers() -> None:
    for proc in list(_LIVE):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()


atexit.register(_kill_leftovers)


async def _port_open(host: str, port: int) -> bool:
    try:
        _r, w = await asyncio.open_connection(host, port)
    except OSError:
        return False
    w.close()
    with contextlib.suppress(OSError):
        await w.wait_closed()
    return True


@dataclass
class ManagedProcess:
    """One child process whose output is copied line by line to a log file and to ``on_line``."""

    name: str
    argv: list[str]
    log_path: Path
    on_line: Callable[[str], None] | None = None
    proc: asyncio.subprocess.Process | None = None
    starts: int = 0
    _reader: asyncio.Task[None] | None = None
    _log: IO[str] | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def start(self) -> None:
        if self.running:
            raise ServiceError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("a", encoding="utf-8")
        self._log.write(f"--- {self.name} start #{self.starts + 1}: {' '.join(self.argv)}\n")
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, cwd=str(REPO_ROOT), env=env,
        )  # fmt: skip
        _LIVE.add(self.proc)
        self.starts += 1
        self._reader = asyncio.create_task(self._read(self.proc), name=f"{self.name}-output")

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while True:
            raw = await proc.stdout.readline()
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if self._log is not None:
                self._log.write(line + "\n")
            if self.on_line is not None:
                self.on_line(line)

    async def kill(self, sig: int = signal.SIGKILL, timeout: float = 5.0) -> int | None:
        """Send ``sig`` and wait for the exit (SIGKILL after ``timeout``); returns the exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 2.0)
            self._reader = None
        _LIVE.discard(proc)
        if self._log is not None:
            self._log.write(f"--- {self.name} exited with {proc.returncode}\n")
            self._log.close()
            self._log = None
        return proc.returncode

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Broker:
    """The scenario's broker process on a fixed ephemeral port; ``restart`` keeps the port."""

    def __init__(
        self, kind: str, work_dir: Path, host: str = "127.0.0.1", port: int | None = None,
        identities: Path | None = None, tuning: str = "",
    ) -> None:  # fmt: skip
        """``identities``: the run's manager database, whose enrolled identities the (closed) broker
        admits (twin/identities.py); None runs an OPEN broker. ``tuning``: more mosquitto.conf lines
        (``propeller bench e2e --mosquitto private`` adds the recommended ``MOSQUITTO_TUNING``)."""
        if kind not in ("embedded", "mosquitto"):
            raise ValueError(f"broker must be 'embedded' or 'mosquitto', got {kind!r}")
        self.kind, self.host = kind, host
        self.port = port or free_port(host)
        if kind == "mosquitto":
            exe = shutil.which("mosquitto") or (
                "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
            )
            if exe is None:
                raise ServiceError("broker: mosquitto is not installed (apt-get install mosquitto)")
            conf = work_dir / "mosquitto.conf"
            access = "allow_anonymous true\n"
            if identities is not None:  # files written by TwinIdentities (SIGHUP reloads them)
                # Started as root, Mosquitto drops to the `mosquitto` user before it reads the password
                # file, which a 0700 test directory hides from it: this private broker stays root.
                stay = "user root\n" if os.geteuid() == 0 else ""
                access = stay + (
                    f"allow_anonymous false\nuse_username_as_clientid true\n"
                    f"password_file {(work_dir / 'mosquitto.passwd').resolve()}\n"
                    f"acl_file {(work_dir / 'mosquitto.acl').resolve()}\n"
                )
            conf.write_text(
                f"listener {self.port} {host}\n{access}"
                f"max_queued_messages {MAX_QUEUED_MESSAGES}\n"
                "max_inflight_messages 100\npersistence false\nmax_keepalive 65535\n"
                f"log_dest stdout\nlog_type error\nlog_type warning\n{tuning}",
                encoding="utf-8",
            )
            argv = [exe, "-c", str(conf)]
        else:
            argv = [sys.executable, "-m", "orchestrator.cli", "--log-level", "warning", "broker",
                    "--listen", f"{host}:{port or self.port}"]  # fmt: skip
            argv += ["--db", str(identities), "--refresh", "0.5"] if identities is not None else ["--open"]
        self.process = ManagedProcess(f"broker ({kind})", argv, work_dir / "broker.log")

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    async def start(self, timeout: float = 15.0) -> None:
        await self.process.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not await _port_open(self.host, self.port):
            if not self.process.running:
                raise ServiceError(f"the {self.kind} broker exited at start:\n{self.process.tail()}")
            if loop.time() > deadline:
                raise ServiceError(f"the {self.kind} broker did not listen on {self.port} in {timeout:g} s")
            await asyncio.sleep(0.05)

    async def stop(self, sig: int = signal.SIGKILL) -> None:
        await self.process.kill(sig)


@dataclass
class ManagerOptions:
    domain: str
    heartbeat_interval: float
    liveness_timeout: float
    placement: str = "round_robin"
    max_attempts: int = 3
    queue_timeout: float | None = None
    db: str = ""
    settings: tuple[tuple[str, Any], ...] = ()  # other ManagerSettings fields (a scenario's manager:)


class Manager:
    """``propeller manager`` as a child process, its REST API on an ephemeral port."""

    def __init__(self, broker_url: str, opts: ManagerOptions, work_dir: Path,
                 on_line: Callable[[str], None] | None = None,
                 identity: Path | None = None) -> None:  # fmt: skip
        if opts.placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got {opts.placement!r}")
        self.api_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        db = opts.db or str(work_dir / "manager.db")
        settings = ManagerSettings(
            broker=broker_url, db=db, api_host="127.0.0.1", api_port=self.api_port, domain=opts.domain,
            heartbeat_interval=opts.heartbeat_interval, liveness_timeout=opts.liveness_timeout,
            placement=PLACEMENTS[opts.placement], max_attempts=opts.max_attempts,
            queue_timeout=opts.queue_timeout,
            identity=str(identity) if identity is not None else None,  # its identity on the closed broker
        )  # fmt: skip
        settings = dataclasses.replace(settings, **dict(opts.settings))
        # Derived from the one settings source: every field reaches the child's argparse unchanged.
        argv = [sys.executable, "-m", "orchestrator.cli", "--log-level", "info", "manager"]
        argv += to_argv(settings)
        self.process = ManagedProcess("manager", argv, work_dir / "manager.log", on_line)

    async def start(self, timeout: float = 30.0) -> None:
        await self.process.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                if not self.process.running:
                    raise ServiceError(f"the manager exited at start:\n{self.process.tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.api_url}/health")).status_code == 200:
                        return
                if loop.time() > deadline:
                    raise ServiceError(
                        f"the manager's API did not answer in {timeout:g} s:\n{self.process.tail()}"
                    )
                await asyncio.sleep(0.05)

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        await self.process.kill(sig)
