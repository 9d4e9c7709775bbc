"""Boards in a scenario: provisioned to its broker, console in the trace, faults injected."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hil import esp32sim
from hil.board import BoardError
from hil.scenario_boards import ScenarioBoards
from hil.vfirmware import StandInDevice, StandInTimings

Record = tuple[str, float, dict[str, Any]]


@pytest.fixture
def trace() -> list[Record]:
    return []


@pytest.fixture
def fleet(tmp_path: Path, trace: list[Record]) -> Iterator[ScenarioBoards]:
    lock = threading.Lock()

    def on_console(device: str, t: float, data: dict[str, Any]) -> None:
        with lock:
            trace.append((device, t, data))

    boards = ScenarioBoards(tmp_path, on_console=on_console, lock_dir=tmp_path / "locks",
                            device_factory=lambda name: StandInDevice(StandInTimings(heartbeat_s=0.1)))
    yield boards
    boards.close()


def events(trace: list[Record], device: str) -> list[str]:
    return [d["event"] for dev, _, d in list(trace) if dev == device and d["kind"] == "event"]


def wait_for(predicate: Any, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_boards_join_with_the_scenarios_settings(fleet: ScenarioBoards, trace: list[Record]) -> None:
    fleet.open("esp-a", "virtual")
    fleet.open("esp-b", "virtual")
    done = fleet.provision_all(broker="127.0.0.1:18831", domain="d-1", channel="c-1", api_key="k")
    assert {d: e.fields["proplet_id"] for d, e in done.items()} == {"esp-a": "esp-a", "esp-b": "esp-b"}
    for event in done.values():
        assert (event.fields["broker"], event.fields["channel"]) == ("127.0.0.1:18831", "c-1")
    for device in ("esp-a", "esp-b"):
        fleet.boards[device].expect_event("heartbeat", timeout=3)
        assert events(trace, device)[:5] == ["boot", "provisioned", "wifi_up", "mqtt_connected",
                                             "discovery_sent"]
    times = [t for _, t, _ in trace]
    assert all(t >= 0 for t in times)
    mqtt = next(d for dev, _, d in trace if dev == "esp-a" and d.get("event") == "mqtt_connected")
    assert mqtt["fields"] == {"broker": "127.0.0.1:18831"} and "<inf> prop: mqtt_connected" in mqtt["line"]


def test_board_faults_show_in_the_trace(fleet: ScenarioBoards, trace: list[Record]) -> None:
    fleet.open("esp-a", "virtual")
    fleet.provision_all(broker="127.0.0.1:18831", domain="d", channel="c")
    board = fleet.boards["esp-a"]
    board.expect_event("mqtt_connected", timeout=3)

    fleet.fault("esp-a", "power_cycle")
    board.expect_event("mqtt_connected", timeout=3)  # credentials survive, the board rejoins
    boots = [d["fields"]["reset"] for dev, _, d in list(trace) if d.get("event") == "boot"]
    assert boots[-1] == "power_on"

    fleet.fault("esp-a", "unplug")
    wait_for(lambda: board.disconnects == 1)
    assert board.disconnects == 1
    fleet.fault("esp-a", "replug")
    wait_for(lambda: "reopened" in board.log_path.read_text())
    fleet.fault("esp-a", "reset")
    board.expect_event("mqtt_connected", timeout=3)
    assert events(trace, "esp-a").count("boot") >= 3


def test_bad_fault_requests_are_named(fleet: ScenarioBoards, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bad board fault 'melt'"):
        fleet.fault("esp-a", "melt")
    with pytest.raises(BoardError, match="no scenario board named 'esp-z'"):
        fleet.fault("esp-z", "reset")


def test_close_removes_the_simulated_boards(tmp_path: Path) -> None:
    fleet = ScenarioBoards(tmp_path, lock_dir=tmp_path / "locks")
    board = fleet.open("esp-a", "virtual")
    sim_name = board.port.removeprefix("esp32sim://")
    assert esp32sim.get_board(sim_name).name == sim_name
    fleet.close()
    with pytest.raises(Exception, match="no esp32sim board named"):
        esp32sim.get_board(sim_name)
