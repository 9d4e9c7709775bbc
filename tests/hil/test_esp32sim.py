"""esp32sim://: reset lines behave like an ESP32-S3 DevKit's auto-reset circuit."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import serial

from hil import esp32sim
from hil.serial_link import SerialLink


@pytest.fixture
def sim() -> Iterator[tuple[esp32sim.SimBoard, str]]:
    esp32sim.register()
    name = f"t-{uuid.uuid4().hex[:8]}"
    board = esp32sim.create_board(name)
    time.sleep(esp32sim.RC_DELAY_S * 2)  # the power-on boot happens before any test opens the port
    board.poll()
    yield board, f"esp32sim://{name}"
    esp32sim.remove_board(name)


def read_until(port: serial.SerialBase, needle: bytes, timeout: float = 2.0) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while needle not in data and time.monotonic() < deadline:
        data += port.read(256)
    return data


def esptool_classic_reset(port: serial.SerialBase) -> None:
    # esptool's ClassicReset (esptool/reset.py): EN low, then IO0 low while EN rises, then release.
    port.dtr = False
    port.rts = True
    time.sleep(0.1)
    port.dtr = True
    port.rts = False
    time.sleep(0.05)
    port.dtr = False


def test_esptool_classic_reset_enters_download_mode(sim: tuple[esp32sim.SimBoard, str]) -> None:
    board, url = sim
    with serial.serial_for_url(url, timeout=0.05) as port:
        esptool_classic_reset(port)
        out = read_until(port, b"waiting for download")
    assert b"boot:0x3 (DOWNLOAD(USB/UART0))" in out and b"waiting for download" in out
    assert b"prop: boot" not in out
    assert board.mode == "download"


def test_rts_pulse_boots_the_firmware(sim: tuple[esp32sim.SimBoard, str]) -> None:
    board, url = sim
    with serial.serial_for_url(url, timeout=0.05) as port:
        port.dtr = False
        port.rts = True
        time.sleep(0.01)
        port.rts = False
        out = read_until(port, b"uart:~$ ")
    assert b"SPI_FAST_FLASH_BOOT" in out
    assert b"<inf> prop: boot version=0.1.0 reset=ext board=esp32s3_devkitc" in out
    assert board.mode == "app" and board.history[-1] == "app"


def test_without_rc_delay_the_classic_reset_boots_the_wrong_mode() -> None:
    # Why the model samples IO0 2 ms after EN rises: at the instant both lines are asserted IO0 is high.
    esp32sim.register()
    name = f"t-{uuid.uuid4().hex[:8]}"
    board = esp32sim.create_board(name, rc_delay=0.0)
    try:
        with serial.serial_for_url(f"esp32sim://{name}", timeout=0.05) as port:
            esptool_classic_reset(port)
            read_until(port, b"uart:~$ ", timeout=0.3)
        assert board.history[-1] == "app"
    finally:
        esp32sim.remove_board(name)


def test_opening_and_closing_the_port_does_not_reset(sim: tuple[esp32sim.SimBoard, str]) -> None:
    board, url = sim
    time.sleep(0.01)
    board.poll()
    boots = len(board.history)
    assert board.history == ["app"]  # the power-on boot
    for _ in range(3):
        serial.serial_for_url(url, timeout=0.05).close()
    with serial.serial_for_url(url, timeout=0.05) as port:
        port.read(10)
    assert len(board.history) == boots


def test_shell_over_esp32sim_and_download_mode_ignores_input(sim: tuple[esp32sim.SimBoard, str]) -> None:
    _, url = sim
    link = SerialLink(url)
    try:
        assert link.pulse_reset(hold_s=0.01)
        out = b""
        deadline = time.monotonic() + 2
        # Wait for the prompt of this boot: typed before the firmware is up, input is lost.
        while not (b"reset=ext" in out and out.endswith(b"uart:~$ ")) and time.monotonic() < deadline:
            out += link.read()
        link.write(b"prop status\r\n")
        deadline = time.monotonic() + 2
        while b"OK\r\n" not in out and time.monotonic() < deadline:
            out += link.read()
        assert b"status state=idle wifi=down mqtt=disconnected tasks=0" in out
    finally:
        link.close()
    with serial.serial_for_url(url, timeout=0.05) as port:
        esptool_classic_reset(port)
        read_until(port, b"waiting for download")
        port.write(b"prop status\r\n")
        assert b"status" not in read_until(port, b"status", timeout=0.2)


def test_unplugged_port_fails_and_comes_back_after_replug(sim: tuple[esp32sim.SimBoard, str]) -> None:
    board, url = sim
    port = serial.serial_for_url(url, timeout=0.05)
    board.unplug()
    with pytest.raises(serial.SerialException, match="device disconnected"):
        port.read(1)
    port.close()
    with pytest.raises(serial.SerialException, match="device disconnected"):
        serial.serial_for_url(url)
    board.replug()
    with serial.serial_for_url(url, timeout=0.05) as again:
        # Replugging powers the chip on: wait for that boot's prompt first, so the reset below is seen
        # as its own boot however slowly this test runs (a busy machine could let the power-on boot
        # land after the reset pulse began and answer the read below with its prompt).
        assert b"reset=power_on" in read_until(again, b"uart:~$ ")
        again.rts = True
        again.dtr = False
        again.rts = False
        assert b"reset=ext" in read_until(again, b"uart:~$ ")


def test_unknown_board_and_busy_port_errors(sim: tuple[esp32sim.SimBoard, str]) -> None:
    _, url = sim
    with pytest.raises(serial.SerialException, match="no esp32sim board named 'nope'"):
        serial.serial_for_url("esp32sim://nope")
    with serial.serial_for_url(url), pytest.raises(serial.SerialException, match="busy"):
        serial.serial_for_url(url)
