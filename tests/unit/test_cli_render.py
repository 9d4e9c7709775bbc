"""The CLI's parsing and rendering, without a manager: help on every option, tables that fit, errors."""

from __future__ import annotations

import argparse
import json
from typing import Any

import httpx
import pytest

from orchestrator.cli import build_parser
from orchestrator.cli_api import filter_metrics, metrics_samples, summarise_module
from orchestrator.client import _table, cell, error_message, task_table, tasks_table


def all_parsers(parser: argparse.ArgumentParser, path: str = "propeller") -> list[tuple[str, Any]]:
    out = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:  # aliases (trace/events) share one parser
                    seen.add(id(sub))
                    out += all_parsers(sub, f"{path} {name}")
    return out


def test_every_option_of_every_command_has_help() -> None:
    missing = [
        f"{path} {action.option_strings or action.dest}"
        for path, parser in all_parsers(build_parser())
        for action in parser._actions
        if not action.help and not isinstance(action, argparse._SubParsersAction)
    ]
    assert not missing, "options without help text:\n" + "\n".join(missing)


def test_help_shows_defaults_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["task", "list", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--limit LIMIT show at most this many (default: 100)" in out
    assert "--offset OFFSET skip this many (default: 0)" in out  # a zero default is shown too
    assert "env PROPELLER_API_URL; default: http://127.0.0.1:7070" in out
    assert "exit codes: 0 success; 1 the manager answered with an error or could not be reached" in out
    with pytest.raises(SystemExit):
        build_parser().parse_args(["proplet", "--help"])
    assert "--max-instances MAX_INSTANCES" in capsys.readouterr().out


def test_json_prints_and_output_writes_on_every_api_command() -> None:
    """One meaning each: --json is a switch (print JSON), --output takes the FILE to write."""
    checked = 0
    for path, parser in all_parsers(build_parser()):
        flags = {s: a for a in parser._actions for s in a.option_strings}
        if "--api-url" not in flags:
            continue
        assert flags["--json"].nargs == 0, f"{path}: --json takes no value"
        if "--output" in flags:
            assert flags["--output"].metavar == "FILE", path
            checked += 1
    assert checked >= 25  # task, job, workflow, proplets, metrics commands


def test_the_new_commands_parse() -> None:
    parse = build_parser().parse_args
    args = parse(["job", "create", "--spec", "j.yaml", "--mode", "sequential", "--start", "-o", "out.json"])
    assert (args.spec, args.mode, args.start, args.output, args.json) == ("j.yaml", "sequential", True,
                                                                            "out.json", False)  # fmt: skip
    assert parse(["workflow", "get", "w1", "--json"]).json is True
    assert parse(["metrics", "tasks", "proplets"]).filter == ["tasks", "proplets"]
    assert parse(["task", "invoke", "t1", "--inputs", "1,2", "--env", "A=b"]).inputs == ["1,2"]
    assert parse(["task", "get", "t1", "--with-module"]).with_module is True
    assert parse(["proplets", "events", "p1"]).subject == "proplet"  # alias of `proplets trace`
    assert parse(["proplets", "alive", "p1", "--limit", "5"]).limit == 5
    with pytest.raises(SystemExit):
        parse(["job", "list", "--status", "sleeping"])


LONG_ERROR = "proplet p-7 refused: " + "out of memory while instantiating the module " * 12
TASKS = [
    {"id": "5f0c9a1e-0000-4000-8000-000000000001", "name": "add", "state": 3, "proplet_id": "p-1",
     "results": "42", "start_time": "0001-01-01T00:00:00Z"},
    {"id": "5f0c9a1e-0000-4000-8000-000000000002", "name": "add", "state": 4, "proplet_id": "p-7",
     "error": LONG_ERROR},
]  # fmt: skip


def test_a_long_error_is_cut_not_padded_into_every_row(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    lines = tasks_table({"tasks": TASKS, "total": 2}).splitlines()
    assert len(lines) == 4  # header, one line per task, the count
    assert all(len(line) <= 80 for line in lines), lines
    assert TASKS[0]["id"] in lines[1] and TASKS[1]["id"] in lines[2]  # ids whole
    assert lines[1].endswith("42       -")  # the short row is not padded to the long error
    assert lines[2].endswith("…") and "pro" in lines[2]
    monkeypatch.setenv("COLUMNS", "200")
    wide = tasks_table({"tasks": TASKS, "total": 2}).splitlines()
    assert len(wide) == 4 and "proplet p-7 refused: out of memory" in wide[2]


def test_unset_values_and_times_show_as_a_dash() -> None:
    assert cell("0001-01-01T00:00:00Z") == "-" and cell(None) == "-" and cell("") == "-"
    assert cell("2026-12-01T17:24:39.229158Z", today="2026-12-01") == "17:24:39"
    assert cell("2026-11-30T09:05:00Z", today="2026-12-01") == "2026-11-30 09:05"
    table = _table(["ID", "STARTED"], [["t1", "0001-01-01T00:00:00Z"]], width=40)
    assert table.splitlines()[-1].split() == ["t1", "-"]


def test_task_details_summarise_the_module_and_wrap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")  # the wrapping below is for 100 columns, whatever runs the test
    task = {**TASKS[1], "file": "AGFzbQEAAA<REDACTED>AAAAAAAAAA", "module": {"size": 73, "sha256": "ab" * 32}}
    shown = summarise_module(task)
    assert "file" not in shown and shown["module"]["size"] == 73
    assert summarise_module(task, with_module=True)["file"] == task["file"]
    text = task_table(shown)
    assert "73 bytes, sha256 " + "ab" * 32 in text.replace("\n", "").replace(" " * 12, "")
    assert "started    -" in text
    assert "out of memory" in text  # wrapped, not cut: the detail view shows the whole error


def test_metrics_filter_keeps_whole_families() -> None:
    text = (
        "# HELP propeller_tasks Tasks by state\n# TYPE propeller_tasks gauge\n"
        'propeller_tasks{state="pending"} 3.0\n'
        "# HELP propeller_proplets_alive Alive proplets\n# TYPE propeller_proplets_alive gauge\n"
        "propeller_proplets_alive 2.0\n"
    )
    kept = filter_metrics(text, ["proplets"])
    assert kept.splitlines() == text.splitlines()[3:]
    assert metrics_samples(kept) == [{"name": "propeller_proplets_alive", "labels": {}, "value": 2.0}]
    assert filter_metrics(text, ["nothing"]) == ""


def test_error_messages_are_the_bodys_message() -> None:
    request = httpx.Request("POST", "http://m/tasks")
    body = {"error": "limits.timeout_s must be a positive number", "field": "limits.timeout_s"}
    assert error_message(httpx.Response(400, json=body, request=request)) == body["error"]
    other = {"error": "name is required", "field": "name_x"}
    got = error_message(httpx.Response(400, json=other, request=request))
    assert got == "name is required (field name_x)"
    assert error_message(httpx.Response(502, text="bad gateway\n", request=request)) == "bad gateway"
    assert json.loads(error_message(httpx.Response(422, json={"detail": [1]}, request=request))) == [1]


def test_files_are_written_with_output_and_the_old_json_path_is_refused_by_name(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parse = build_parser().parse_args
    assert parse(["bench", "registry", "--output", "r.json"]).output == "r.json"
    assert parse(["twin", "scale", "-o", "s.json"]).output == "s.json"
    with pytest.raises(SystemExit):
        parse(["bench", "dispatch", "--json", "d.json"])
    assert "--json d.json: write files with --output d.json" in capsys.readouterr().err
