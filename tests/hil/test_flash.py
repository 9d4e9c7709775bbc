"""Flashing through esptool / west, with fake executables on PATH standing in at the process boundary."""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from pathlib import Path

import pytest

from hil.board import SerialBoard
from hil.cli import cmd_flash
from hil.flash import FlashConfig, FlashError, flash

FAKE = """#!{python}
import json, os, sys
name = os.path.basename(sys.argv[0])
with open(os.environ["FAKE_FLASH_RECORD"], "a") as f:
    f.write(json.dumps([name] + sys.argv[1:]) + "\\n")
print(f"{{name}} v5.0.0 (fake)")
print("Connecting....")
print("Chip is ESP32-S3 (QFN56) (revision v0.2)")
for i in range(30):
    print(f"Writing at 0x{{i * 0x4000:08x}}... ({{(i + 1) * 100 // 30}} %)")
code = int(os.environ.get("FAKE_FLASH_EXIT", "0"))
if code:
    print("A fatal error occurred: Failed to connect to ESP32-S3: No serial data received.", file=sys.stderr)
else:
    print("Hash of data verified.")
    print("Hard resetting via RTS pin...")
sys.exit(code)
"""


@pytest.fixture
def fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("esptool", "west"):
        exe = bin_dir / name
        exe.write_text(FAKE.format(python=sys.executable))
        exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    record = tmp_path / "calls.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_FLASH_RECORD", str(record))
    return record


def calls(record: Path) -> list[list[str]]:
    return [json.loads(line) for line in record.read_text().splitlines()]


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "zephyr.bin"
    path.write_bytes(b"\xe9" + bytes(4095))
    return path


def test_esptool_command_line_and_kept_output(fakes: Path, image: Path, tmp_path: Path) -> None:
    result = flash(FlashConfig(), "/dev/ttyACM0", image, tmp_path / "run")
    assert calls(fakes) == [["esptool", "--chip", "esp32s3", "--port", "/dev/ttyACM0", "--baud", "460800",
                             "--before", "default_reset", "--after", "hard_reset", "write_flash", "0x0",
                             str(image)]]
    kept = result.log_path.read_text()
    assert result.log_path.parent == tmp_path / "run"
    assert "Hash of data verified." in kept and "[exit 0]" in kept and "--chip esp32s3" in kept


def test_esptool_v5_spelling(fakes: Path, image: Path, tmp_path: Path) -> None:
    flash(FlashConfig(write_flash="write-flash", baud=921600), "esp32sim://b", image, tmp_path)
    [call] = calls(fakes)
    assert call[call.index("--baud") + 1] == "921600" and "write-flash" in call and "write_flash" not in call


def test_west_command_line(fakes: Path, tmp_path: Path) -> None:
    result = flash(FlashConfig(runner="west", build_dir=tmp_path / "build"), "/dev/ttyUSB0", None, tmp_path)
    assert calls(fakes) == [["west", "flash", "--build-dir", str(tmp_path / "build"),
                             "--esp-device", "/dev/ttyUSB0"]]
    assert "Hard resetting" in result.output


def test_failing_flasher_names_exit_code_and_last_lines(fakes: Path, image: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_FLASH_EXIT", "2")
    with pytest.raises(FlashError) as info:
        flash(FlashConfig(), "/dev/ttyACM0", image, tmp_path)
    message = str(info.value)
    assert "esptool failed with exit code 2" in message
    assert "No serial data received" in message and "Writing at 0x00074000" in message
    assert "Writing at 0x00000000" not in message  # only the tail
    assert "(full output: " in message and "flash-1.log" in message


def test_bad_inputs_are_named(fakes: Path, tmp_path: Path) -> None:
    with pytest.raises(FlashError, match=r"flash image not found: .*missing\.bin"):
        flash(FlashConfig(), "/dev/ttyACM0", tmp_path / "missing.bin", tmp_path)
    with pytest.raises(FlashError, match="west flash needs a build directory"):
        flash(FlashConfig(runner="west"), "/dev/ttyACM0", None, tmp_path)
    with pytest.raises(ValueError, match="bad flash runner 'openocd'"):
        FlashConfig(runner="openocd")
    present = tmp_path / "a.bin"
    present.write_bytes(b"x")
    with pytest.raises(FlashError, match="executable not found: /nonexistent/esptool"):
        flash(FlashConfig(esptool=("/nonexistent/esptool",)), "/dev/x", present, tmp_path)
    assert not fakes.exists()  # nothing ran


def test_board_hands_its_port_to_the_flasher_and_takes_it_back(fakes: Path, image: Path,
                                                              board: SerialBoard) -> None:
    board.reset(timeout=3)
    result = board.flash(image)
    [call] = calls(fakes)
    assert call[call.index("--port") + 1] == board.port
    assert result.log_path.parent == board.log_path.parent
    assert board.reset(timeout=3).event == "boot"  # the console is back
    assert "flash: done" in board.log_path.read_text()


def test_cli_flash_from_a_map(fakes: Path, image: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    hw = tmp_path / "map.yaml"
    hw.write_text("- name: s3\n  platform: esp32s3_devkitc\n  serial: /dev/ttyFAKE0\n"
                  "  write_flash: write-flash\n  flash_baud: 115200\n")
    args = argparse.Namespace(map=str(hw), board="s3", port=None, image=str(image), runner=None,
                              build_dir=None, run_dir=str(tmp_path / "runs"))
    assert cmd_flash(args) == 0
    [call] = calls(fakes)
    assert call[:5] == ["esptool", "--chip", "esp32s3", "--port", "/dev/ttyFAKE0"] and "write-flash" in call
    assert "flashed s3 on /dev/ttyFAKE0" in capsys.readouterr().out
    args.board = "nope"
    assert cmd_flash(args) == 2
    assert "no board named 'nope'" in capsys.readouterr().err
