"""Hardware map (load, validate, write), USB discovery and port locks."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from hil import rig
from hil.cli import cmd_discover
from hil.rig import BoardSpec, MapError, PortBusy, PortLock, discover, dump_map, load_map, parse_map

GOOD = """\
- name: s3-a
  platform: esp32s3_devkitc
  serial: /dev/ttyACM0
  id: "F4:12:FA:00:11:22"
  runner: esptool
  write_flash: write-flash
  power_cycle: uhubctl -l 1-1 -p 2 -a cycle
  fixtures: [wifi_ap, relay]
- name: s3-b
  platform: esp32s3_devkitc
  location: "1-1.3"
  runner: west
  build_dir: build/s3
  baud: 921600
  connected: false
"""


def test_a_good_map_loads(tmp_path: Path) -> None:
    path = tmp_path / "map.yaml"
    path.write_text(GOOD)
    a, b = load_map(path)
    assert a == BoardSpec(name="s3-a", platform="esp32s3_devkitc", serial="/dev/ttyACM0",
                          id="F4:12:FA:00:11:22", write_flash="write-flash",
                          power_cycle="uhubctl -l 1-1 -p 2 -a cycle", fixtures=("wifi_ap", "relay"))
    assert (b.runner, b.build_dir, b.baud, b.connected) == ("west", "build/s3", 921600, False)
    assert b.flash_config().build_dir == Path("build/s3")
    assert parse_map(dump_map([a, b])) == [a, b]


M = r"map\.yaml:"


@pytest.mark.parametrize(("text", "message"), [
    (GOOD.replace("  fixtures:", "  fixtrues:"), M + r"8: unknown key 'fixtrues'"),
    (GOOD.replace("baud: 921600", "baud: fast"), M + r"14: key 'baud' must be a positive integer"),
    (GOOD.replace("runner: west", "runner: openocd"), M + r"12: key 'runner' must be one of esptool, west"),
    (GOOD.replace("connected: false", "connected: maybe"), M + r"15: key 'connected' must be true or false"),
    (GOOD.replace("name: s3-b", "name: s3-a"), M + r"9: duplicate board name 's3-a' \(first at line 1\)"),
    (GOOD.replace("  platform: esp32s3_devkitc\n  location", "  location"), M + r"9: board is missing "
                                                                           r"required key 'platform'"),
    (GOOD.replace("  build_dir: build/s3\n", ""), M + r"9: board 's3-b' uses runner west but has no key"),
    ("name: x\n", M + r"1: a hardware map is a list of boards"),
    ("- [1, 2]\n", M + r"1: each board must be a mapping"),
    ("- name: x\n  platform: [a]\n", M + r"2: key 'platform' must be a single value"),
    ("- name: x\n  platform: p\n  vid_pid: 303a-1001\n", M + r"3: key 'vid_pid' must look like 303a:1001"),
    ("- name: [unclosed\n", M + r" not valid YAML"),
])  # fmt: skip
def test_map_errors_name_file_line_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "map.yaml"
    path.write_text(text)
    with pytest.raises(MapError, match=message):
        load_map(path)


def fake_ports() -> list[SimpleNamespace]:
    def port(device: str, vid: int | None, pid: int | None, serial: str | None = None,
             location: str | None = None, product: str | None = None) -> SimpleNamespace:
        return SimpleNamespace(device=device, vid=vid, pid=pid, serial_number=serial, location=location,
                               product=product)

    return [
        port("/dev/ttyACM1", 0x303A, 0x1001, "F4:12:FA:00:11:22", "1-1.2", "USB JTAG/serial debug unit"),
        port("/dev/ttyUSB0", 0x10C4, 0xEA60, "0001", "1-1.3"),
        port("/dev/ttyUSB1", 0x1A86, 0x55D4, None, "1-1.4"),
        port("/dev/ttyUSB2", 0x0403, 0x6015, "FT1"),
        port("/dev/ttyACM0", 0x2341, 0x0043, "arduino"),  # not an ESP32 console
        port("/dev/ttyS0", None, None),  # a UART without USB
    ]


def test_discover_keeps_only_esp32s3_consoles() -> None:
    found = discover(fake_ports)
    assert [p.device for p in found] == ["/dev/ttyACM1", "/dev/ttyUSB0", "/dev/ttyUSB1", "/dev/ttyUSB2"]
    assert [p.kind for p in found] == ["ESP32-S3 USB-Serial/JTAG", "CP210x", "CH9102", "FTDI FT231X"]


def test_a_mapped_board_is_found_by_serial_number_or_location() -> None:
    by_id = BoardSpec(name="a", platform="p", id="F4:12:FA:00:11:22", serial="/dev/stale")
    by_location = BoardSpec(name="b", platform="p", location="1-1.4")
    assert rig.resolve_port(by_id, fake_ports) == "/dev/ttyACM1"
    assert rig.resolve_port(by_location, fake_ports) == "/dev/ttyUSB1"
    with pytest.raises(PortBusy, match="no attached port with id='nope'"):
        rig.resolve_port(BoardSpec(name="c", platform="p", id="nope"), fake_ports)


def test_discover_writes_a_map_that_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(rig, "_comports", fake_ports)
    out = tmp_path / "map.yaml"
    args = argparse.Namespace(write=str(out), force=False, platform="esp32s3_devkitc")
    assert cmd_discover(args) == 0
    assert "/dev/ttyACM1\t303a:1001\tESP32-S3 USB-Serial/JTAG" in capsys.readouterr().out
    boards = load_map(out)
    assert [(b.name, b.serial, b.vid_pid) for b in boards][:2] == [
        ("board1", "/dev/ttyACM1", "303a:1001"), ("board2", "/dev/ttyUSB0", "10c4:ea60")]
    assert cmd_discover(args) == 2  # refuses to overwrite
    assert "exists; pass --force" in capsys.readouterr().err


def test_port_lock_refuses_a_second_user_until_released(tmp_path: Path) -> None:
    first = PortLock("/dev/ttyACM0", tmp_path).acquire()
    with pytest.raises(PortBusy, match=r"port /dev/ttyACM0 is in use by another run \(pid \d+"):
        PortLock("/dev/ttyACM0", tmp_path).acquire()
    with PortLock("/dev/ttyACM1", tmp_path):
        pass  # other ports are independent
    first.release()
    with PortLock("/dev/ttyACM0", tmp_path):
        pass


def test_port_lock_holds_against_another_process(tmp_path: Path) -> None:
    code = ("import sys; from pathlib import Path; from hil.rig import PortLock, PortBusy\n"
            "try:\n    PortLock('esp32sim://x', Path(sys.argv[1])).acquire()\n"
            "except PortBusy as e:\n    print(e); sys.exit(3)\n")
    with PortLock("esp32sim://x", tmp_path):
        busy = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                              check=False, cwd=Path(__file__).parents[2])
    assert busy.returncode == 3 and "in use by another run" in busy.stdout
    free = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                          check=False, cwd=Path(__file__).parents[2])
    assert free.returncode == 0, free.stdout + free.stderr
