"""``propeller hil console --report-to``: a board's console lines join the timeline of the task it runs.

A virtual board (a pty with our firmware's console) stands for a bench board whose proplet runs a task
on a real manager (embedded broker, an in-process proplet under the board's proplet id)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import pytest

from hil.cli import cmd_console
from hil.vfirmware import StandInDevice
from hil.virtual_board import PtyBoard
from tests.hil.test_virtual_board import FAST
from tests.integration.conftest import close_cluster, eventually, make_cluster
from tests.integration.test_proplet_agent import FILE


async def test_the_boards_console_lines_join_the_running_tasks_timeline(tmp_path: Path) -> None:
    c = await make_cluster("embedded://127.0.0.1:0", tmp_path)
    try:
        await c.add_proplet("bench-1")
        created = await c.api.post("/tasks", json={"name": "spin", "file": FILE, "limits": {"timeout_s": 60}})
        task_id = created.json()["id"]
        await c.api.post(f"/tasks/{task_id}/start")

        async def events() -> list[dict[str, Any]]:
            return list((await c.api.get(f"/tasks/{task_id}/events")).json()["events"])

        async def running() -> bool:
            return any(e["kind"] == "running" for e in await events())

        await eventually(running, 10, "the task running on bench-1")
        with PtyBoard("bench", StandInDevice(FAST)) as virtual:
            args = argparse.Namespace(
                map=None, board=None, port=virtual.port, run_dir=str(tmp_path / "hil"), reset=True,
                send=["prop status"], seconds=0.3, report_to=str(c.api.base_url), proplet_id="bench-1",
                api_token=None,
            )  # fmt: skip
            assert await asyncio.to_thread(cmd_console, args) == 0
        lines = [e for e in await events() if e["kind"] == "console"]
        causes = [e["cause"] for e in lines]
        assert any("status state=idle" in line for line in causes), causes
        assert any("reset=sw" in line for line in causes), causes  # the reset's boot line
        assert {(e["fields"]["proplet_id"], e["fields"]["source"]) for e in lines} == {
            ("bench-1", "console")
        }
        await c.api.post(f"/tasks/{task_id}/stop")
    finally:
        await close_cluster(c)


def test_report_to_needs_the_boards_proplet_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = argparse.Namespace(map=None, board=None, port="/dev/null", run_dir=str(tmp_path), reset=False,
                              send=None, seconds=0.1, report_to="http://127.0.0.1:9", proplet_id=None,
                              api_token=None)  # fmt: skip
    assert cmd_console(args) == 2
    assert "--report-to needs --proplet-id" in capsys.readouterr().err
