"""One DUT interface for a real serial board and a virtual one (a pty or an esp32sim:// port).

`SerialBoard` owns the port lock, a reader thread that feeds the console parser, and the run's
console log (one line per console line, with wall-clock and run-relative timestamps). `expect()` waits
for a console item after the cursor, pexpect-style; `mark()` moves the cursor to now.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from hil.console import ConsoleEvent, ConsoleLine, ConsoleParser, Item, format_fields
from hil.flash import FlashConfig, FlashResult, flash
from hil.rig import PortLock
from hil.serial_link import LinkError, SerialLink

Pattern = str | re.Pattern[str] | Callable[[Item], bool]
TAIL_ITEMS = 20
REOPEN_S = 0.1
RESET_HOLD_S = 0.1


class BoardError(RuntimeError):
    pass


class ExpectTimeout(BoardError):
    pass


class ShellError(BoardError):
    pass


@dataclass(frozen=True)
class Provisioning:
    ssid: str
    psk: str
    broker: str  # HOST:PORT
    proplet_id: str
    api_key: str
    domain: str
    channel: str

    def command(self) -> str:
        return "prop provision" + format_fields(asdict(self), quoted=frozenset())


def item_text(item: Item) -> str:
    if isinstance(item, ConsoleEvent):
        return item.raw
    if item.kind == "log":
        return f"<{item.level}> {item.module}: {item.text}"
    return item.text if item.kind != "prompt" else "uart:~$"


class Board(Protocol):
    name: str
    log_path: Path

    def reset(self, timeout: float = 10.0) -> ConsoleEvent: ...
    def power_cycle(self, timeout: float = 10.0) -> ConsoleEvent: ...
    def flash(self, image: Path | None) -> FlashResult: ...
    def provision(self, provisioning: Provisioning, timeout: float = 5.0) -> ConsoleEvent: ...
    def status(self, timeout: float = 5.0) -> dict[str, str]: ...
    def send(self, text: str) -> None: ...
    def command(self, text: str, timeout: float = 5.0) -> list[Item]: ...
    def expect(self, pattern: Pattern, timeout: float = 10.0) -> Item: ...
    def expect_event(self, event: str, timeout: float = 10.0, **fields: str) -> ConsoleEvent: ...
    def mark(self) -> None: ...
    def events(self) -> list[ConsoleEvent]: ...
    def close(self) -> None: ...


class SerialBoard:
    """A board behind a serial port path (/dev/ttyACM0, /dev/pts/N) or URL (esp32sim://NAME)."""

    def __init__(self, name: str, port: str, run_dir: Path, *, baud: int = 115200,
                 flash_config: FlashConfig | None = None, power_cycle_cmd: str | Sequence[str] | None = None,
                 power_cycle_hook: Callable[[], None] | None = None, lock_dir: Path | None = None,
                 on_item: Callable[[str, Item], None] | None = None) -> None:
        self.name = name
        self.port = port
        self.baud = baud
        self.flash_config = flash_config or FlashConfig()
        if isinstance(power_cycle_cmd, str):
            power_cycle_cmd = shlex.split(power_cycle_cmd)
        self.power_cycle_cmd = list(power_cycle_cmd) if power_cycle_cmd else None
        self.power_cycle_hook = power_cycle_hook
        self.on_item = on_item
        self.run_dir = run_dir / name
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.run_dir / "console.log"
        self._lock = PortLock(port, lock_dir) if lock_dir is not None else PortLock(port)
        self._lock.acquire()
        self._cond = threading.Condition()
        self._items: list[Item] = []
        self._cursor = 0
        self._parser = ConsoleParser()
        self._t0 = time.monotonic()
        self._log = self.log_path.open("a", encoding="utf-8", buffering=1)
        self._stop = threading.Event()
        self._paused = threading.Event()
        self.disconnects = 0
        try:
            self._link: SerialLink | None = SerialLink(port, baud)
        except LinkError as exc:
            self._lock.release()
            self._log.close()
            raise BoardError(f"board {name!r}: {exc}") from exc
        self._note(f"opened {port} at {baud} baud")
        self._thread = threading.Thread(target=self._read_loop, name=f"board-{name}", daemon=True)
        self._thread.start()

    # -- reader ------------------------------------------------------------------------------
    def _read_loop(self) -> None:
        while not self._stop.is_set():
            link = self._link
            if link is None or self._paused.is_set():
                if not self._paused.is_set() and not self._reopen():
                    self._stop.wait(REOPEN_S)
                else:
                    self._stop.wait(0.01)
                continue
            try:
                data = link.read()
            except LinkError as exc:
                if self._stop.is_set() or self._paused.is_set():
                    continue
                self.disconnects += 1
                self._note(f"link lost: {exc}")
                link.close()
                self._link = None
                continue
            if data:
                self._ingest(data)

    def _reopen(self) -> bool:
        try:
            self._link = SerialLink(self.port, self.baud)
        except LinkError:
            return False
        self._note(f"reopened {self.port}")
        return True

    def _ingest(self, data: bytes) -> None:
        now = time.monotonic()
        with self._cond:
            items = self._parser.feed(data, now)
            for item in items:
                self._write_log(item.t, self._kind(item), item_text(item))
            self._items += items
            self._cond.notify_all()
        if self.on_item is not None:
            for item in items:
                self.on_item(self.name, item)

    @staticmethod
    def _kind(item: Item) -> str:
        return f"event:{item.event}" if isinstance(item, ConsoleEvent) else item.kind

    def _write_log(self, t: float, kind: str, text: str) -> None:
        wall = datetime.now(UTC).isoformat(timespec="milliseconds")
        if not self._log.closed:
            self._log.write(f"{wall} +{t - self._t0:.6f} {kind:<24} {text}\n")

    def _note(self, text: str) -> None:
        with self._cond:
            self._write_log(time.monotonic(), "rig", text)

    # -- expect ------------------------------------------------------------------------------
    def mark(self) -> None:
        with self._cond:
            self._cursor = len(self._items)

    def items(self) -> list[Item]:
        with self._cond:
            return list(self._items)

    def events(self) -> list[ConsoleEvent]:
        return [i for i in self.items() if isinstance(i, ConsoleEvent)]

    def expect(self, pattern: Pattern, timeout: float = 10.0) -> Item:
        """The first item after the cursor matching `pattern` (regex searched in the line text, or a
        predicate); moves the cursor past it. ExpectTimeout shows the unmatched tail and the log path."""
        match = self._matcher(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for index in range(self._cursor, len(self._items)):
                    if match(self._items[index]):
                        self._cursor = index + 1
                        return self._items[index]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ExpectTimeout(self._timeout_message(pattern, timeout))
                self._cond.wait(left)

    def expect_event(self, event: str, timeout: float = 10.0, **fields: str) -> ConsoleEvent:
        def wanted(item: Item) -> bool:
            return (isinstance(item, ConsoleEvent) and item.event == event
                    and all(item.fields.get(k) == str(v) for k, v in fields.items()))

        wanted.__name__ = f"event {event}" + "".join(f" {k}={v}" for k, v in fields.items())
        found = self.expect(wanted, timeout)
        assert isinstance(found, ConsoleEvent)
        return found

    @staticmethod
    def _matcher(pattern: Pattern) -> Callable[[Item], bool]:
        if callable(pattern) and not isinstance(pattern, str | re.Pattern):
            return pattern
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        return lambda item: regex.search(item_text(item)) is not None

    def _timeout_message(self, pattern: Pattern, timeout: float) -> str:
        unmatched = [item_text(i) for i in self._items[self._cursor:]][-TAIL_ITEMS:]
        pending = self._parser.pending
        if pending:
            unmatched.append(pending + "  <- incomplete line")
        shown = getattr(pattern, "pattern", None) or getattr(pattern, "__name__", None) or pattern
        tail = "\n".join(f"  | {line}" for line in unmatched) or "  | (nothing received)"
        return (f"board {self.name!r}: no console line matched {shown!r} within {timeout:g}s.\n"
                f"Unmatched console tail:\n{tail}\nConsole log: {self.log_path}")

    # -- shell -------------------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        link = self._link
        if link is None:
            raise BoardError(f"board {self.name!r}: port {self.port} is not connected; log: {self.log_path}")
        try:
            link.write(data)
        except LinkError as exc:
            raise BoardError(f"board {self.name!r}: {exc}; log: {self.log_path}") from exc

    def send(self, text: str) -> None:
        """Type a shell line without waiting for its reply (`kernel reboot cold` has none)."""
        self._note(f"> {text}")
        self._write(text.encode() + b"\r\n")

    def command(self, text: str, timeout: float = 5.0) -> list[Item]:
        """Run a shell command; the items up to its OK. ShellError on ERROR or an unknown command."""
        with self._cond:
            start = len(self._items)
        self.send(text)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for index in range(start, len(self._items)):
                    item = self._items[index]
                    if isinstance(item, ConsoleLine) and item.kind in ("ok", "error", "not_found"):
                        reply = self._items[start:index]
                        if item.kind == "ok":
                            return reply
                        raise ShellError(f"board {self.name!r}: {text.split()[0]!r} failed: "
                                         f"{item.text or 'ERROR'} (log: {self.log_path})")
                left = deadline - time.monotonic()
                if left <= 0:
                    self._cursor = start
                    raise ExpectTimeout(self._timeout_message(f"OK after {text!r}", timeout))
                self._cond.wait(left)

    def provision(self, provisioning: Provisioning, timeout: float = 5.0) -> ConsoleEvent:
        reply = self.command(provisioning.command(), timeout)
        for item in reply:
            if isinstance(item, ConsoleEvent) and item.event == "provisioned":
                return item
        raise BoardError(f"board {self.name!r}: provisioned, but no 'provisioned' event was logged "
                         f"(log: {self.log_path})")

    def status(self, timeout: float = 5.0) -> dict[str, str]:
        for item in self.command("prop status", timeout):
            if isinstance(item, ConsoleEvent) and item.event == "status":
                return item.fields
        raise BoardError(f"board {self.name!r}: 'prop status' printed no status line (log: {self.log_path})")

    # -- reset, power, flash -----------------------------------------------------------------
    def reset(self, timeout: float = 10.0) -> ConsoleEvent:
        """Reset into the firmware: the DTR/RTS pulse where the port has line control, else the shell."""
        self.mark()
        link = self._link
        if link is not None and link.set_lines(dtr=False, rts=True):
            # While EN is held low the chip is silent, so whatever is read by the end of the hold
            # was printed before the reset: mark past it, then release EN.
            time.sleep(RESET_HOLD_S)
            self.mark()
            link.set_lines(rts=False)
            self._note("reset: RTS pulse")
            return self.expect_event("boot", timeout)
        self._note("reset: no line control on this port, using 'kernel reboot cold'")
        self.send("kernel reboot cold")
        return self.expect_event("boot", timeout, reset="sw")

    def power_cycle(self, timeout: float = 10.0) -> ConsoleEvent:
        self.mark()
        if self.power_cycle_cmd:
            self._note(f"power cycle: {shlex.join(self.power_cycle_cmd)}")
            try:
                proc = subprocess.run(self.power_cycle_cmd, capture_output=True, text=True, timeout=60,
                                      check=False)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise BoardError(f"board {self.name!r}: power-cycle command failed: {exc}") from exc
            if proc.returncode != 0:
                raise BoardError(f"board {self.name!r}: power-cycle command exited {proc.returncode}: "
                                 f"{(proc.stdout + proc.stderr).strip()[-500:]}")
        elif self.power_cycle_hook is not None:
            self._note("power cycle: hook")
            self.power_cycle_hook()
        else:
            raise BoardError(f"board {self.name!r}: no power-cycle command configured "
                             "(hardware map key power_cycle)")
        return self.expect_event("boot", timeout)

    def flash(self, image: Path | None) -> FlashResult:
        """Hand the port to the flasher (our lock stays held), then take it back."""
        self._paused.set()
        link, self._link = self._link, None
        if link is not None:
            link.close()
        self._note(f"flash: {self.flash_config.runner} {image or ''}")
        try:
            result = flash(self.flash_config, self.port, image, self.run_dir)
            self._note(f"flash: done in {result.duration_s:.1f}s, output in {result.log_path}")
            return result
        finally:
            self._reopen()
            self._paused.clear()

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=2)
        if self._link is not None:
            self._link.close()
            self._link = None
        with self._cond:
            self._items += self._parser.flush(time.monotonic())
            self._write_log(time.monotonic(), "rig", "closed")
            self._log.close()
        self._lock.release()

    def __enter__(self) -> SerialBoard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
