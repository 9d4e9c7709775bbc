"""The pytest plugin with --hil-map: the same test runs on mapped boards (here a pty served by this
process, standing in for a USB board's device path) instead of virtual ones."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hil.virtual_board import PtyBoard

ROOT = Path(__file__).resolve().parents[2]

INNER = """
def test_on_the_mapped_board(board, boards, hil_backends):
    assert list(boards) == ["rig1"] and hil_backends == {}
    assert board.reset(timeout=5).fields["reset"] == "sw"
    assert board.status()["state"] == "idle"
    print("PORT", board.port)
"""


def run_inner(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_inner.py").write_text(INNER)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PROPELLER_LOCK_DIR": str(tmp_path / "locks")}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "hil.plugin", "-p",
                           "no:cacheprovider", "--rootdir", str(tmp_path), "-c", str(tmp_path / "pytest.ini"),
                           str(tmp_path / "test_inner.py"), *extra],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60, check=False)


def test_hil_map_selects_real_boards(tmp_path: Path) -> None:
    with PtyBoard("rig1") as virtual:
        hw = tmp_path / "map.yaml"
        hw.write_text(f"- name: rig1\n  platform: esp32s3_devkitc\n  serial: {virtual.port}\n"
                      "- name: spare\n  platform: esp32s3_devkitc\n  serial: /dev/nonexistent\n"
                      "  connected: false\n")
        result = run_inner(tmp_path, "--hil-map", str(hw))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"PORT {virtual.port}" in result.stdout


def test_a_bad_map_fails_with_its_line(tmp_path: Path) -> None:
    hw = tmp_path / "map.yaml"
    hw.write_text("- name: rig1\n  platform: esp32s3_devkitc\n  serail: /dev/ttyACM0\n")
    result = run_inner(tmp_path, "--hil-map", str(hw))
    assert result.returncode != 0
    assert "map.yaml:3: unknown key 'serail'" in result.stdout + result.stderr
