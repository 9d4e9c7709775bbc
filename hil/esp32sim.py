"""`esp32sim://NAME`: a pyserial port whose far end is an ESP32-S3 with its auto-reset circuit.

Unlike a pty, this port sees DTR and RTS, so reset logic (ours and esptool's) is exercised for real.
The circuit (stack-notes §6): EN is held low while RTS && !DTR; IO0 is low while DTR && !RTS. When EN
rises the chip samples IO0 after an RC delay of 2 ms: low boots the ROM's download mode, high boots
the firmware (a `FirmwareConsole`). Without the delay, the instant where both lines are asserted in
esptool's classic sequence would boot the wrong mode.

Boards live in an in-process registry so a test can reach the board behind a port:
`create_board("b1")`, then `serial.serial_for_url("esp32sim://b1")` after `register()`.
No thread: the board advances its clock whenever the port is read, written or polled.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import serial
from serial.serialutil import PortNotOpenError, SerialBase, SerialException

from hil.vfirmware import FirmwareConsole, StandInDevice, VirtualDevice

RC_DELAY_S = 0.002
ROM_BANNER = "ESP-ROM:esp32s3-20210327\r\nBuild:Mar 27 2021\r\n"
DOWNLOAD_BOOT = "rst:0x1 (POWERON),boot:0x3 (DOWNLOAD(USB/UART0))\r\nwaiting for download\r\n"
FLASH_BOOT = ("rst:0x1 (POWERON),boot:0x8 (SPI_FAST_FLASH_BOOT)\r\n"
              "I (25) boot: ESP-IDF 2nd stage bootloader\r\n*** Booting Zephyr OS ***\r\n")
BUFFER_LIMIT = 64 * 1024


class SimBoard:
    """One simulated chip. Modes: reset (EN low), download (ROM), app (firmware running), off."""

    def __init__(self, name: str, device: VirtualDevice | None = None,
                 clock: Callable[[], float] = time.monotonic, rc_delay: float = RC_DELAY_S) -> None:
        self.name = name
        self.clock = clock
        self.rc_delay = rc_delay
        self.console = FirmwareConsole(device if device is not None else StandInDevice())
        self.cond = threading.Condition()
        self.dtr = self.rts = False
        self.mode = "off"
        self.plugged = True
        self.port_open = False
        self.history: list[str] = []  # modes booted, in order: a test's view of what happened
        self._boot_at: float | None = None
        self._boot_reset = "power_on"
        self._rx = bytearray()
        self.power_on()

    # -- circuit ------------------------------------------------------------------------------
    @property
    def en_low(self) -> bool:
        return self.rts and not self.dtr

    @property
    def io0_low(self) -> bool:
        return self.dtr and not self.rts

    def set_lines(self, dtr: bool | None = None, rts: bool | None = None) -> None:
        with self.cond:
            self._advance()
            was_low = self.en_low
            if dtr is not None:
                self.dtr = dtr
            if rts is not None:
                self.rts = rts
            if self.en_low and not was_low:
                self.mode, self._boot_at = "reset", None
                self.console.halt()
            elif was_low and not self.en_low:
                self._boot_at, self._boot_reset = self.clock() + self.rc_delay, "ext"

    def power_on(self) -> None:
        with self.cond:
            self.console.halt()
            self.mode = "reset"
            self._boot_at, self._boot_reset = self.clock() + self.rc_delay, "power_on"
            self._advance()

    def power_off(self) -> None:
        with self.cond:
            self.console.halt()
            self.mode, self._boot_at = "off", None

    def power_cycle(self) -> None:
        self.power_off()
        self.power_on()

    def unplug(self) -> None:
        """The USB cable is pulled: open ports fail, and the chip loses power."""
        with self.cond:
            self.plugged = False
            self.power_off()
            self.cond.notify_all()

    def replug(self) -> None:
        with self.cond:
            self.plugged = True
            self.dtr = self.rts = False
        self.power_on()

    def poll(self) -> None:
        """Advance the chip to now without touching the port."""
        with self.cond:
            self._advance()

    def _advance(self) -> None:
        """Bring the chip up to now: a due boot samples IO0 as the lines stand until this moment."""
        now = self.clock()
        if self._boot_at is not None and now >= self._boot_at and not self.en_low:
            booted_at, self._boot_at = self._boot_at, None
            if self.io0_low:
                self.mode = "download"
                self._put(ROM_BANNER + DOWNLOAD_BOOT)
            else:
                self.mode = "app"
                self._put(ROM_BANNER + FLASH_BOOT)
                self.console.boot(self._boot_reset, booted_at)
            self.history.append(self.mode)
        if self.mode == "app":
            self.console.tick(now)
        self._put_bytes(self.console.take_output())

    def _put(self, text: str) -> None:
        self._put_bytes(text.encode())

    def _put_bytes(self, data: bytes) -> None:
        # A USB-serial bridge drops what the chip prints while no host has the port open.
        if data and self.port_open:
            self._rx += data
            del self._rx[:-BUFFER_LIMIT]
            self.cond.notify_all()

    # -- port side -----------------------------------------------------------------------------
    def host_write(self, data: bytes) -> None:
        with self.cond:
            self._advance()
            if self.mode == "app":
                self.console.receive(data, self.clock())
                self._put_bytes(self.console.take_output())

    def host_read(self, size: int, timeout: float | None) -> bytes:
        deadline = None if timeout is None else self.clock() + timeout
        with self.cond:
            while True:
                self._check_plugged()
                self._advance()
                if self._rx:
                    out = bytes(self._rx[:size])
                    del self._rx[:size]
                    return out
                left = 0.005 if deadline is None else min(0.005, deadline - self.clock())
                if left <= 0:
                    return b""
                self.cond.wait(left)

    def waiting(self) -> int:
        with self.cond:
            self._check_plugged()
            self._advance()
            return len(self._rx)

    def clear_input(self) -> None:
        with self.cond:
            self._rx.clear()

    def _check_plugged(self) -> None:
        if not self.plugged:
            raise SerialException(f"esp32sim://{self.name}: device disconnected")


_boards: dict[str, SimBoard] = {}
_boards_lock = threading.Lock()


def create_board(name: str, device: VirtualDevice | None = None, **kwargs: Any) -> SimBoard:
    with _boards_lock:
        if name in _boards:
            raise ValueError(f"esp32sim board {name!r} already exists")
        board = _boards[name] = SimBoard(name, device, **kwargs)
        return board


def get_board(name: str) -> SimBoard:
    with _boards_lock:
        try:
            return _boards[name]
        except KeyError:
            known = ", ".join(sorted(_boards)) or "none"
            raise SerialException(f"no esp32sim board named {name!r} (known: {known})") from None


def remove_board(name: str) -> None:
    with _boards_lock:
        _boards.pop(name, None)


def register() -> None:
    """Make serial.serial_for_url understand esp32sim:// (module hil.protocol_esp32sim)."""
    if "hil" not in serial.protocol_handler_packages:
        serial.protocol_handler_packages.append("hil")


class Serial(SerialBase):
    """The pyserial port object for esp32sim://NAME."""

    board: SimBoard | None = None
    is_open: bool

    def open(self) -> None:
        if self.is_open:
            raise SerialException("Port is already open.")
        if self._port is None:
            raise SerialException("Port must be configured before it can be used.")
        parts = urllib.parse.urlsplit(self._port)
        if parts.scheme != "esp32sim" or not parts.netloc:
            raise SerialException(f"expected esp32sim://NAME, got {self._port!r}")
        board = get_board(parts.netloc)
        board._check_plugged()
        with board.cond:
            if board.port_open:
                raise SerialException(f"{self._port}: port is busy (already open)")
            board.port_open = True
            board.clear_input()
        self.board = board
        self.is_open = True
        # As a real driver does on open, assert the lines as configured (pyserial defaults: both on).
        if not self._dsrdtr:
            self._update_dtr_state()
        if not self._rtscts:
            self._update_rts_state()

    def close(self) -> None:
        if self.is_open and self.board is not None:
            with self.board.cond:
                self.board.port_open = False
                self.board.clear_input()
            # Closing a tty drops both lines (HUPCL); with the circuit that leaves EN high.
            self.board.set_lines(dtr=False, rts=False)
        self.is_open = False

    def _reconfigure_port(self, *args: Any, **kwargs: Any) -> None:
        pass

    def _board(self) -> SimBoard:
        if not self.is_open or self.board is None:
            raise PortNotOpenError()
        return self.board

    @property
    def in_waiting(self) -> int:
        return self._board().waiting()

    def read(self, size: int = 1) -> bytes:
        return self._board().host_read(size, self._timeout)

    def write(self, data: Any) -> int:
        payload = bytes(data)
        board = self._board()
        board._check_plugged()
        board.host_write(payload)
        return len(payload)

    def reset_input_buffer(self) -> None:
        self._board().clear_input()

    def reset_output_buffer(self) -> None:
        self._board()

    def _update_dtr_state(self) -> None:
        if self.is_open and self.board is not None:
            self.board.set_lines(dtr=self._dtr_state)

    def _update_rts_state(self) -> None:
        if self.is_open and self.board is not None:
            self.board.set_lines(rts=self._rts_state)

    def _update_break_state(self) -> None:
        pass

    @property
    def cts(self) -> bool:
        return False

    @property
    def dsr(self) -> bool:
        return False

    @property
    def ri(self) -> bool:
        return False

    @property
    def cd(self) -> bool:
        return False
