"""SerialBoard against virtual boards: a real pty device path, and esp32sim:// ports with reset lines."""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from hil import esp32sim
from hil.board import BoardError, ExpectTimeout, Provisioning, SerialBoard, ShellError
from hil.cli import cmd_console
from hil.console import ConsoleEvent
from hil.rig import PortBusy
from hil.vfirmware import StandInDevice, StandInTimings
from hil.virtual_board import PtyBoard

PROV = Provisioning(ssid="lab net", psk="s3cr3t", broker="127.0.0.1:18830", proplet_id="p-7",
                    api_key="k-1", domain="dom", channel="chan")
FAST = StandInTimings(wifi_s=0.02, mqtt_s=0.04, heartbeat_s=0.1, heap_s=0.15)


@pytest.fixture
def pty_board(tmp_path: Path) -> Iterator[tuple[PtyBoard, SerialBoard]]:
    with PtyBoard("pty1", StandInDevice(FAST)) as virtual, \
            SerialBoard("pty1", virtual.port, tmp_path / "run", lock_dir=tmp_path / "locks") as board:
        yield virtual, board


def test_pty_is_a_real_device_path(pty_board: tuple[PtyBoard, SerialBoard]) -> None:
    virtual, _ = pty_board
    assert virtual.port.startswith("/dev/pts/") and Path(virtual.port).exists()


def test_reset_on_a_pty_falls_back_to_the_shell(pty_board: tuple[PtyBoard, SerialBoard]) -> None:
    _, board = pty_board
    boot = board.reset(timeout=3)
    assert boot.fields == {"version": "0.1.0", "reset": "sw", "board": "esp32s3_devkitc"}
    assert "no line control" in board.log_path.read_text()


def test_provision_then_the_board_joins(pty_board: tuple[PtyBoard, SerialBoard]) -> None:
    _, board = pty_board
    board.reset(timeout=3)
    provisioned = board.provision(PROV)
    assert provisioned.fields == {"proplet_id": "p-7", "broker": "127.0.0.1:18830", "domain": "dom",
                                  "channel": "chan"}
    board.expect_event("wifi_up", timeout=3)
    board.expect_event("mqtt_connected", timeout=3, broker="127.0.0.1:18830")
    board.expect_event("discovery_sent", timeout=3, proplet_id="p-7")
    board.expect_event("heartbeat", timeout=3, seq="1")
    status = board.status()
    assert (status["wifi"], status["mqtt"], status["state"]) == ("up", "connected", "idle")
    assert int(status["uptime_ms"]) > 0


def test_reboot_keeps_credentials_and_reconnects(pty_board: tuple[PtyBoard, SerialBoard]) -> None:
    _, board = pty_board
    board.provision(PROV)
    board.expect_event("mqtt_connected", timeout=3)
    board.mark()
    board.send("kernel reboot cold")
    boot = board.expect_event("boot", timeout=3)
    assert boot.fields["reset"] == "sw"
    board.expect_event("provisioned", timeout=3, proplet_id="p-7")
    board.expect_event("mqtt_connected", timeout=3)
    assert board.status()["mqtt"] == "connected"


def test_shell_errors_are_clear(pty_board: tuple[PtyBoard, SerialBoard]) -> None:
    _, board = pty_board
    with pytest.raises(ShellError, match="'frobnicate' failed: frobnicate: command not found"):
        board.command("frobnicate now")
    bad = Provisioning(**{**PROV.__dict__, "broker": "nohost"})
    with pytest.raises(ShellError, match="bad value: broker=nohost"):
        board.provision(bad)
    with pytest.raises(ShellError, match="missing key: api_key"):
        board.command("prop provision ssid=a psk=b broker=h:1 proplet_id=p domain=d channel=c")


def test_expect_timeout_shows_unmatched_tail_and_log_path(pty_board: tuple[PtyBoard, SerialBoard]) -> None:
    _, board = pty_board
    board.provision(PROV)
    board.expect_event("heartbeat", timeout=3)
    with pytest.raises(ExpectTimeout) as info:
        board.expect(r"task_start id=never", timeout=0.3)
    message = str(info.value)
    assert "no console line matched 'task_start id=never' within 0.3s" in message
    assert re.search(r"\| \[\d\d:\d\d:\d\d\.\d{3},\d{3}\] <inf> prop: heartbeat seq=\d+", message)
    assert f"Console log: {board.log_path}" in message


def test_console_log_has_timestamps_per_line(pty_board: tuple[PtyBoard, SerialBoard]) -> None:
    _, board = pty_board
    board.provision(PROV)
    board.expect_event("mqtt_connected", timeout=3)
    lines = board.log_path.read_text().splitlines()
    assert board.log_path.parent.name == "pty1" and board.log_path.name == "console.log"
    stamps = []
    for line in lines:
        wall, rel, kind = line.split()[:3]
        datetime.fromisoformat(wall)
        stamps.append(float(rel.lstrip("+")))
        assert kind
    assert stamps == sorted(stamps)
    assert any("event:mqtt_connected" in line for line in lines)


def test_a_second_user_of_the_port_is_refused(pty_board: tuple[PtyBoard, SerialBoard],
                                              tmp_path: Path) -> None:
    virtual, board = pty_board
    with pytest.raises(PortBusy, match=f"port {virtual.port} is in use by another run"):
        SerialBoard("again", virtual.port, tmp_path / "run2", lock_dir=tmp_path / "locks")
    board.close()
    with SerialBoard("again", virtual.port, tmp_path / "run2", lock_dir=tmp_path / "locks") as again:
        assert again.status(timeout=3)["state"] == "idle"


def test_events_reach_an_observer_in_order(tmp_path: Path) -> None:
    seen: list[tuple[str, str]] = []

    def observe(name: str, item: object) -> None:
        if isinstance(item, ConsoleEvent):
            seen.append((name, item.event))

    with PtyBoard("obs", StandInDevice(FAST)) as virtual, \
            SerialBoard("obs", virtual.port, tmp_path, lock_dir=tmp_path / "l", on_item=observe) as board:
        board.provision(PROV)
        board.expect_event("discovery_sent", timeout=3)
    names = [e for _, e in seen]
    assert names[:4] == ["provisioned", "wifi_up", "mqtt_connected", "discovery_sent"]
    assert {n for n, _ in seen} == {"obs"}


# -- esp32sim: reset lines, power and unplug faults ------------------------------------------------
def test_fixture_boards_reset_by_rts_pulse(boards: dict[str, SerialBoard], hil_backends: dict) -> None:
    assert set(boards) == {"virtual1", "virtual2"}
    for board in boards.values():
        boot = board.reset(timeout=3)
        assert boot.fields["reset"] == "ext"
        assert "reset: RTS pulse" in board.log_path.read_text()
    assert all(b.history[-1] == "app" for b in hil_backends.values())


def test_power_cycle_through_the_hook(board: SerialBoard, hil_backends: dict) -> None:
    boot = board.power_cycle(timeout=3)
    assert boot.fields["reset"] == "power_on"


def test_power_cycle_command_failure_is_reported(board: SerialBoard) -> None:
    board.power_cycle_cmd = ["false"]
    with pytest.raises(BoardError, match="power-cycle command exited 1"):
        board.power_cycle(timeout=1)


def test_serial_unplug_and_replug(board: SerialBoard, hil_backends: dict) -> None:
    sim: esp32sim.SimBoard = hil_backends[board.name]
    board.reset(timeout=3)
    sim.unplug()
    deadline = time.monotonic() + 3
    while board.disconnects == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert board.disconnects == 1
    with pytest.raises(BoardError, match="not connected"):
        board.command("prop status")
    board.mark()
    sim.replug()
    deadline = time.monotonic() + 3
    while "reopened" not in board.log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert board.reset(timeout=3).fields["reset"] == "ext"
    assert "link lost" in board.log_path.read_text()


def test_cli_console_sends_commands_and_prints_the_console(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    with PtyBoard("cli", StandInDevice(FAST)) as virtual:
        args = argparse.Namespace(map=None, board=None, port=virtual.port, run_dir=str(tmp_path),
                                  reset=True, send=["prop status", "nope"], seconds=0.1)
        assert cmd_console(args) == 1  # the second command fails
    captured = capsys.readouterr()
    assert "reset=sw" in captured.out and "status state=idle" in captured.out
    assert "'nope' failed: nope: command not found" in captured.err
    assert "console log:" in captured.err
