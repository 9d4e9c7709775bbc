"""Boards in scenarios: virtual ESP32-S3 boards join the twin's fleet over their serial console.

The shipped ``hil_boards`` scenario runs live (real broker and manager processes, twenty simulated
devices, two virtual boards whose network side is a twin esp32s3): the boards are provisioned over
the console, run tasks, are reset / unplugged, and their console lines land in the trace and report.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pytest

from hil import esp32sim
from twin.pytest_plugin import ScenarioRunner
from twin.runner import LiveRunner, board_port, is_real_port
from twin.scenario.pipeline import run_scenario, write_outputs
from twin.scenario.result import ScenarioResult

SCENARIO = Path(__file__).resolve().parents[2] / "scenarios" / "hil_boards.yaml"
BOARDS = ("board-a1", "board-b1")
Outcome = tuple[ScenarioResult, Path, set[int], int]


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    import asyncio

    from twin.scenario.spec import load_scenario

    work = tmp_path_factory.mktemp("hil_boards")
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    threads = threading.active_count()
    result = asyncio.run(run_scenario(load_scenario(SCENARIO), LiveRunner(log_dir=work / "logs")))
    write_outputs(result, work / "report", many=True)
    return result, work, before, threads


def console(result: ScenarioResult, board: str) -> Counter[str]:
    return Counter(str(e.data["event"]) for e in result.trace.of("console")
                   if e.subject == board and e.data.get("kind") == "event")  # fmt: skip


@pytest.mark.timeout(300)
def test_the_boards_scenario_passes(outcome: Outcome) -> None:
    result, _, before, threads = outcome
    left = {p.pid for p in psutil.Process().children(recursive=True) if p.is_running()} - before
    assert not left, f"processes left behind: {left}"
    assert threading.active_count() <= threads, [t.name for t in threading.enumerate()]
    assert not [n for n in esp32sim._boards if any(n.startswith(b) for b in BOARDS)]
    ScenarioRunner.assert_passed(result)  # skipped, with the lag figures, if the host could not keep up
    live = result.trace.meta["live"]
    assert live["boards"] == 2 and live["devices"] == 20
    assert live["devices_online_once"] == live["devices"]
    assert result.trace.of("proplet"), "no manager event was observed"
    # Tasks really ran on the boards' twin devices, and the manager saw them there.
    assert live["tasks_run_on_virtual_boards"] >= 6
    ran_on = {result.trace.task_device(e) for t in result.trace.tasks().values() for e in t.runs}
    assert set(BOARDS) <= ran_on


def console_task_ids(result: ScenarioResult, board: str, event: str) -> set[str]:
    return {str(e.data["fields"]["id"]) for e in result.trace.of("console")
            if e.subject == board and e.data.get("event") == event}  # fmt: skip


def test_both_boards_console_events_are_in_the_trace(outcome: Outcome) -> None:
    result = outcome[0]
    if result.inconclusive:  # a host that lagged the timers may have buried a board: no facts to check
        pytest.skip(f"inconclusive: {result.inconclusive}")
    by_id = {str(h.events[0].data["task_id"]): h for h in result.trace.tasks().values()}
    for board in BOARDS:
        seen = console(result, board)
        for event in ("boot", "provisioned", "wifi_up", "mqtt_connected", "discovery_sent", "heartbeat",
                      "task_start", "task_end"):  # fmt: skip
            assert seen[event] >= 1, f"{board}: no {event} on its console: {dict(seen)}"
        # Joined once at the start and once again after its fault.
        assert seen["mqtt_connected"] >= 2, f"{board} did not rejoin after its fault: {dict(seen)}"
        started = console_task_ids(result, board, "task_start")
        ended = console_task_ids(result, board, "task_end")
        assert ended <= started, f"{board}: task_end without task_start: {ended - started}"
        # A task its board started but never ended was cut off there (its fault, or the manager moved
        # it): it then ran again elsewhere, or on the same board, and completed.
        for task_id in started - ended:
            history = by_id[task_id]
            where = [(e.t, result.trace.task_device(e)) for e in history.runs]
            assert len(history.runs) >= 2 and history.final_state == "Completed", (board, history.name, where)
    lines = [e for e in result.trace.of("console") if e.data.get("event") == "task_end"]
    assert all("<inf> prop: task_end" in e.data["line"] and e.data["fields"]["ok"] == "1" for e in lines)
    # The console's clock is the scenario's: the reset's boot line follows the fault, not the start.
    reboots = [e.t for e in result.trace.of("console")
               if e.subject == "board-a1" and e.data.get("event") == "boot"]  # fmt: skip
    assert any(10.0 <= t < 12.0 for t in reboots), reboots


def test_the_report_shows_the_boards_consoles(outcome: Outcome) -> None:
    work = outcome[1]
    html = (work / "report" / "hil_boards.html").read_text()
    assert 'id="console-events"' in html
    for board in BOARDS:
        assert f"<td>{board}</td><td>mqtt_connected</td>" in html
        assert f"<td>{board}</td><td>task_start</td>" in html
    for board in BOARDS:
        assert (work / "logs" / "hil_boards" / "boards" / board / "console.log").stat().st_size > 0


def test_board_console_lines_join_the_timeline_of_the_task_they_ran(outcome: Outcome) -> None:
    import asyncio

    from orchestrator.adapters.store import Store

    result, work = outcome[0], outcome[1]
    trace = result.trace
    on_board = {name: h for name, h in trace.tasks().items()
                if h.final_state == "Completed" and trace.task_device(h.runs[-1]) in BOARDS}  # fmt: skip
    assert on_board, "no task completed on a board"

    pids = {e.subject: str(e.data["proplet_id"]) for e in trace.of("device") if "proplet_id" in e.data}

    async def timelines() -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
        store = await Store.open(str(work / "logs" / "hil_boards" / "manager.db"))
        try:
            ids = {name: str(h.events[0].data["task_id"]) for name, h in on_board.items()}
            tasks = {name: await store.list_events("task", tid) for name, tid in ids.items()}
            boards = {board: await store.list_events("proplet", pids[board]) for board in BOARDS}
            return tasks, boards
        finally:
            await store.close()

    tasks, boards = asyncio.run(timelines())
    # The scripted board faults are on the boards' own timelines, before the manager's verdict.
    for board, fault in (("board-a1", "reset"), ("board-b1", "unplug")):
        kinds = [(e.kind, e.cause) for e in boards[board]]
        assert ("fault", fault) in kinds, (board, kinds)
        after = [k for k, _ in kinds[kinds.index(("fault", fault)) :]]
        assert "died" in after, (board, kinds)
    for name, events in tasks.items():
        board = trace.task_device(on_board[name].runs[-1])
        kinds = [e.kind for e in events]
        lines = [e for e in events if e.kind == "console"]
        seen = {e.fields.get("event") for e in lines}
        assert {"task_start", "task_end"} <= seen, (name, [(e.kind, e.cause) for e in events])
        assert all(e.fields["device"] in BOARDS for e in lines)
        # The attempt that completed: the last start its board printed. An earlier attempt cut off by
        # a fault may have printed its own start before the manager re-published.
        starts = [e for e in lines if e.fields.get("event") == "task_start" and e.fields["device"] == board]
        start = starts[-1]
        assert "<inf> prop: task_start" in start.cause
        # After the manager published the start it answers (the board printed it on receipt).
        last_start = max(i for i, k in enumerate(kinds) if k == "start_published")
        assert events.index(start) > last_start, [(e.kind, e.cause) for e in events]
    assert trace.meta["timeline_feed"]["sent"] > 0


def test_board_ports_resolve_through_the_hardware_map_only(tmp_path: Path) -> None:
    hw = tmp_path / "rig.yaml"
    hw.write_text("- {name: s3-a, platform: esp32s3_devkitc, serial: ABC123}\n")
    names = {b.name for b in LiveRunner(hil_map=hw).hw_map or []}
    assert names == {"s3-a"}
    # The shipped scenario's ports: virtual without a map, the rig's boards with one.
    assert board_port("s3-a", None) == "virtual"
    assert board_port("s3-a", names) == "s3-a" and is_real_port("s3-a", names)
    assert board_port("/dev/ttyACM0", None) == "/dev/ttyACM0" and is_real_port("/dev/ttyACM0", ())
    assert board_port("esp32sim://x", names) == "esp32sim://x" and not is_real_port("virtual", names)
    with pytest.raises(ValueError, match=r"board port 's3-b' is not in the hardware map \(boards: s3-a\)"):
        board_port("s3-b", names)
