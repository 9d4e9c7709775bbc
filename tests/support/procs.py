"""Real processes for delivery tests: a private Mosquitto, a `propeller manager`, `propeller proplet`s.

Every process is started by the test and stopped by PID; the private Mosquitto listens on an ephemeral
port with its own configuration file (the machine's shared broker is never touched).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port, tcp_reachable


class Proc:
    """One child process with its output in a log file."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.args, self.log = args, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def kill9(self) -> None:
        self.signal(signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with_cont = [signal.SIGCONT, signal.SIGTERM]  # a stopped process cannot act on SIGTERM
        for sig in with_cont:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def events(self, name: str) -> list[dict[str, Any]]:
        """The structured log events named ``name`` this process wrote (``{"event": name, ...}``)."""
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            start = line.find("{")
            if start < 0 or f'"{name}"' not in line:
                continue
            try:
                record = json.loads(line[start:])
            except ValueError:
                continue
            if record.get("event") == name:
                out.append(record)
        return out


class PrivateMosquitto(Proc):
    """``mosquitto -c conf`` on an ephemeral 127.0.0.1 port; can be killed and started again.

    ``settings`` override or add configuration lines (``{"max_inflight_messages": "100"}``; TLS:
    ``certfile``/``keyfile``, which apply to the listener since they come after it).
    """

    def __init__(self, tmp: Path, settings: dict[str, str] | None = None) -> None:
        self.port = free_port()
        lines = {
            "allow_anonymous": "true",
            "persistence": "false",
            "max_queued_messages": "100000",
            "max_inflight_messages": "0",
            **(settings or {}),
        }
        conf = tmp / "mosquitto.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\n" + "".join(f"{k} {v}\n" for k, v in lines.items()))
        super().__init__([mosquitto_binary(), "-c", str(conf)], tmp / "mosquitto.log")

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        super().start()

        def listening() -> bool:
            assert self.proc is not None
            assert self.proc.poll() is None, f"private mosquitto exited: {self.log.read_text()[-2000:]}"
            return tcp_reachable("127.0.0.1", self.port)

        wait_for(listening, 10, "private mosquitto to listen")


def mosquitto_binary() -> str:
    """The installed ``mosquitto`` (Debian puts it in /usr/sbin, often not on PATH); skips without one."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.path.exists(binary):
        pytest.skip("mosquitto is not installed")
    return binary


class Manager(Proc):
    def __init__(self, tmp: Path, broker: str, domain: str, *extra: str) -> None:
        self.api_port = free_port()
        args = [
            sys.executable, "-m", "orchestrator.cli", "manager", "--broker", broker,
            "--db", str(tmp / "manager.db"), "--api", f"127.0.0.1:{self.api_port}",
            "--domain", domain, *extra,
        ]  # fmt: skip
        super().__init__(args, tmp / "manager.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self) -> None:
        super().start()

        def up() -> bool:
            assert self.proc is not None
            assert self.proc.poll() is None, f"manager exited: {self.log.read_text()[-2000:]}"
            try:
                return httpx.get(f"{self.url}/health", timeout=0.5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 30, "the manager's API")


class Proplet(Proc):
    def __init__(self, tmp: Path, broker: str, domain: str, proplet_id: str, *extra: str) -> None:
        self.proplet_id = proplet_id
        args = [
            sys.executable, "-m", "orchestrator.cli", "proplet", "--broker", broker, "--id", proplet_id,
            "--domain", domain, "--cache-dir", "", "--metrics-interval", "0", *extra,
        ]  # fmt: skip
        super().__init__(args, tmp / f"{proplet_id}.log")


def wait_for(check: Any, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def stopping(*procs: Proc) -> Iterator[None]:
    try:
        yield
    finally:
        for p in reversed(procs):
            p.stop()
