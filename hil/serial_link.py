"""The pyserial adapter: open a port by path or URL, move bytes, toggle DTR/RTS where the port can.

A pty (a virtual board, or some USB CDC drivers) refuses the modem-line ioctls with
`OSError: [Errno 25] Inappropriate ioctl for device`; `set_lines` reports that as False instead of
raising, and remembers it, so callers can fall back to a software reset.
"""

from __future__ import annotations

import contextlib
import errno
import time

import serial

from hil import esp32sim


class LinkError(RuntimeError):
    pass


class SerialLink:
    def __init__(self, port: str, baud: int = 115200, read_timeout: float = 0.05) -> None:
        esp32sim.register()
        self.port = port
        self.baud = baud
        self.line_control = True
        try:
            self._serial = serial.serial_for_url(port, baudrate=baud, timeout=read_timeout,
                                                 do_not_open=True)
            # Don't assert DTR/RTS on open: on an auto-reset circuit that is harmless, but
            # some bridges glitch EN while the two are set one after the other.
            self._serial.dtr = False
            self._serial.rts = False
            self._serial.open()
        except (serial.SerialException, ValueError, OSError) as exc:
            raise LinkError(f"cannot open serial port {port!r} at {baud} baud: {exc}") from exc

    def read(self, size: int = 4096) -> bytes:
        """Up to `size` bytes; returns b"" after the read timeout. LinkError when the port vanished."""
        try:
            waiting = self._serial.in_waiting
            return bytes(self._serial.read(max(1, min(size, waiting)) if waiting else 1))
        except (serial.SerialException, OSError, TypeError) as exc:
            # pyserial raises TypeError from a closed fd in a racing close(); treat it as unplugged.
            raise LinkError(f"{self.port}: read failed: {exc}") from exc

    def write(self, data: bytes) -> None:
        try:
            self._serial.write(data)
            self._serial.flush()
        except (serial.SerialException, OSError) as exc:
            raise LinkError(f"{self.port}: write failed: {exc}") from exc

    def set_lines(self, *, dtr: bool | None = None, rts: bool | None = None) -> bool:
        """Set modem lines; False (and no error) when the port has no line control (a pty)."""
        if not self.line_control:
            return False
        try:
            if dtr is not None:
                self._serial.dtr = dtr
            if rts is not None:
                self._serial.rts = rts
        except OSError as exc:
            if exc.errno in (errno.ENOTTY, errno.EINVAL):
                self.line_control = False
                return False
            raise LinkError(f"{self.port}: cannot set DTR/RTS: {exc}") from exc
        return True

    def pulse_reset(self, hold_s: float = 0.1) -> bool:
        """Reset into the firmware through the auto-reset circuit: EN low with IO0 high, then release."""
        if not self.set_lines(dtr=False, rts=True):
            return False
        time.sleep(hold_s)
        return self.set_lines(rts=False)

    def close(self) -> None:
        with contextlib.suppress(serial.SerialException, OSError):
            self._serial.close()
