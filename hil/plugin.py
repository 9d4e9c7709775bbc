"""pytest plugin: fixtures `board` and `boards`, virtual by default, real with `--hil-map FILE`.

Virtual boards are esp32sim:// ports (they see DTR/RTS) or, with `--hil-virtual=pty`, pseudo-terminals
(a real /dev/pts device path). `hil_backends` maps board names to the virtual objects so a test can
inject faults (power cycle, unplug) on the board's side; it is empty for real boards.

Register it in the top-level conftest (`pytest_plugins = ["hil.plugin"]`) or with `-p hil.plugin`;
pytest refuses `pytest_plugins` in a nested conftest. Without registration, importing the fixtures
still works and the options fall back to their defaults (virtual boards).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil import esp32sim
from hil.board import SerialBoard
from hil.rig import BoardSpec, load_map, resolve_port
from hil.virtual_board import PtyBoard, esp32sim_board

Backend = esp32sim.SimBoard | PtyBoard


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hil", "hardware in the loop")
    group.addoption("--hil-map", default=None, help="hardware map YAML: run HIL tests on real boards")
    group.addoption("--hil-virtual", default="esp32sim", choices=("esp32sim", "pty"),
                    help="kind of virtual board when no map is given")
    group.addoption("--hil-virtual-count", type=int, default=2, help="number of virtual boards")


@pytest.fixture(scope="session")
def hil_map(pytestconfig: pytest.Config) -> list[BoardSpec] | None:
    path = pytestconfig.getoption("--hil-map", None)
    if path is None:
        return None
    return [spec for spec in load_map(Path(path)) if spec.connected]


@pytest.fixture
def hil_backends() -> dict[str, Backend]:
    return {}


@pytest.fixture
def boards(hil_map: list[BoardSpec] | None, hil_backends: dict[str, Backend], tmp_path: Path,
           pytestconfig: pytest.Config) -> Iterator[dict[str, SerialBoard]]:
    opened: dict[str, SerialBoard] = {}
    pty_boards: list[PtyBoard] = []
    sim_names: list[str] = []
    run_dir = tmp_path / "hil-run"
    try:
        if hil_map is not None:
            for spec in hil_map:
                opened[spec.name] = SerialBoard(spec.name, resolve_port(spec), run_dir, baud=spec.baud,
                                                flash_config=spec.flash_config(),
                                                power_cycle_cmd=spec.power_cycle)
        else:
            kind = pytestconfig.getoption("--hil-virtual", "esp32sim")
            for i in range(1, int(pytestconfig.getoption("--hil-virtual-count", 2)) + 1):
                name = f"virtual{i}"
                backend: Backend
                if kind == "pty":
                    pty = PtyBoard(name)
                    pty_boards.append(pty)
                    backend, port = pty, pty.port
                else:
                    sim_name = f"{name}-{uuid.uuid4().hex[:8]}"
                    port = esp32sim_board(sim_name)
                    sim_names.append(sim_name)
                    backend = esp32sim.get_board(sim_name)
                    # Let the power-on boot finish before the port opens, as a board plugged in earlier.
                    time.sleep(esp32sim.RC_DELAY_S * 2)
                    backend.poll()
                hil_backends[name] = backend
                opened[name] = SerialBoard(name, port, run_dir, lock_dir=tmp_path / "locks",
                                           power_cycle_hook=backend.power_cycle)
        yield opened
    finally:
        for b in opened.values():
            b.close()
        for p in pty_boards:
            p.close()
        for n in sim_names:
            esp32sim.remove_board(n)


@pytest.fixture
def board(boards: dict[str, SerialBoard]) -> SerialBoard:
    if not boards:
        pytest.skip("the hardware map has no connected board")
    return next(iter(boards.values()))
