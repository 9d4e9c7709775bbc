"""Virtual boards: a real device path whose far end behaves like our firmware's console.

`PtyBoard` opens a pseudo-terminal; tools (and `SerialBoard`) open `port` (/dev/pts/N) exactly like a
USB-serial board, and one thread on the master side runs the `FirmwareConsole`. A pty has no line
control, so resets come from the shell (`kernel reboot cold`) or from `power_cycle()` here. For DTR/RTS
use `esp32sim://NAME` instead (`esp32sim_board`), which needs no thread at all.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
import tty
from collections.abc import Callable

from hil import esp32sim
from hil.vfirmware import FirmwareConsole, StandInDevice, VirtualDevice

TICK_S = 0.01


class PtyBoard:
    """A firmware console on the master end of a pty. Use as a context manager, or call close()."""

    def __init__(self, name: str = "virtual", device: VirtualDevice | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.clock = clock
        self.device: VirtualDevice = device if device is not None else StandInDevice()
        self.console = FirmwareConsole(self.device)
        self._master, self._slave = os.openpty()
        # Raw mode on the slave: no echo and no CR/LF translation by the kernel, as on a USB CDC tty.
        tty.setraw(self._slave)
        self.port = os.ttyname(self._slave)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._r, self._w = os.pipe()  # wakes the reader for close() and queued output
        with self._lock:
            self.console.boot("power_on", self.clock())
            # Printed before anyone opens the port: a host that opens later flushes it, as on a board.
            os.write(self._master, self.console.take_output())
        self._thread = threading.Thread(target=self._run, name=f"pty-board-{name}", daemon=True)
        self._thread.start()

    def __enter__(self) -> PtyBoard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def power_cycle(self) -> None:
        self.call(lambda now: self.console.boot("power_on", now))

    def call(self, action: Callable[[float], object]) -> None:
        """Run `action(now)` on the board's side (inject a fault, drive the device) under its lock."""
        with self._lock:
            action(self.clock())
        os.write(self._w, b"x")

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([self._master, self._r], [], [], TICK_S)
                with self._lock:
                    now = self.clock()
                    if self._r in ready:
                        os.read(self._r, 4096)
                    if self._master in ready:
                        try:
                            data = os.read(self._master, 4096)
                        except OSError:  # EIO: nobody has the slave open right now
                            data = b""
                        self.console.receive(data, now)
                    self.console.tick(now)
                    out = self.console.take_output()
                if out:
                    self._write_all(out)
        except OSError:
            if not self._stop.is_set():
                raise

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view and not self._stop.is_set():
            _, writable, _ = select.select([], [self._master], [], TICK_S)
            if writable:
                view = view[os.write(self._master, view):]

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        with contextlib.suppress(OSError):
            os.write(self._w, b"x")
        self._thread.join(timeout=2)
        for fd in (self._master, self._slave, self._r, self._w):
            with contextlib.suppress(OSError):
                os.close(fd)


def esp32sim_board(name: str, device: VirtualDevice | None = None) -> str:
    """Create a simulated board in the esp32sim registry and return its port URL."""
    esp32sim.register()
    esp32sim.create_board(name, device)
    return f"esp32sim://{name}"
