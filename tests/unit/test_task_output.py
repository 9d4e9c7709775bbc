"""Task output, pure parts: typed results, bounded logs, the wire extensions, both engines' handling."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import pytest

from orchestrator import wire
from orchestrator.core.commands import RecordTaskLogs
from orchestrator.core.engine import MAX_LOG_PIECE_CHARS
from proplets.core import LOG_PIECE_CHARS, PropletConfig, PropletEngine, Publish
from proplets.output import LOGS_CUT, OUTPUT_CUT, LogEntry, TaskOutput, bounded, task_output, typed_result
from tests.unit.test_engine import T, heartbeat, make_engine, publishes, send, submit
from tests.unit.test_engine_groups import spec


@dataclass(frozen=True)
class Outcome:
    kind: str = "wasi"
    results: str = ""
    stdout: bytes = b""
    stderr: bytes = b""
    stdout_total: int = 0
    values: tuple[int | float, ...] = ()
    notes: tuple[str, ...] = ()


# -- typed results ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"loss": 0.25}\n', ('{"loss": 0.25}\n', "json")),
        (b"[1, 2]", ("[1, 2]", "json")),
        (b"42", ("42", "json")),
        (b"hello world\n", ("hello world\n", "text")),
        (b"NaN", ("NaN", "text")),  # Python would parse it; JSON does not
        (b"", ("", "text")),
        ("héllo".encode(), ("héllo", "text")),
        (b"\xff\x00\xfe\x01", ("/wD+AQ==", "binary")),
    ],
)
def test_a_result_is_typed_by_what_its_bytes_are(data: bytes, expected: tuple[str, str]) -> None:
    assert typed_result(data) == expected


def test_a_cut_result_says_so_and_never_splits_a_character() -> None:
    text, kind = typed_result("abcé".encode()[:4], total=1000)  # the cut fell inside "é"
    assert kind == "text"
    assert text == "abc" + OUTPUT_CUT.format(shown=3, total=1000)


def test_logs_keep_the_tail_after_a_marker() -> None:
    assert bounded("short", 100, "stderr") == "short"
    kept = bounded("line 1\nline 2\nlast line\n", 10, "stderr")
    assert kept.endswith("last line\n") and kept.startswith(LOGS_CUT.format(cut=14, stream="stderr"))


def test_a_command_result_is_its_stdout_and_its_stderr_goes_to_the_logs() -> None:
    outcome = Outcome(stdout=b'{"a": 1}', stderr=b"progress 1\nprogress 2\n", notes=("entry: _start",))
    out = task_output(outcome, 1024, ["module: 10 bytes from inline file"])
    assert (out.results, out.result_type) == ('{"a": 1}', "json")
    assert out.logs == (
        LogEntry("runtime", "module: 10 bytes from inline file\nentry: _start\n"),
        LogEntry("stderr", "progress 1\nprogress 2\n"),
    )


def test_a_return_value_is_the_result_and_what_the_export_printed_is_a_log() -> None:
    out = task_output(Outcome(kind="core", results="42", values=(42,), stdout=b"printed"), 1024)
    assert (out.results, out.result_type) == ("42", "json")
    assert out.logs == (LogEntry("stdout", "printed"),)
    quiet = task_output(Outcome(kind="core", stdout=b'{"r": 1}'), 1024)  # returns nothing, prints JSON
    assert (quiet.results, quiet.result_type) == ('{"r": 1}', "json")


# -- wire -------------------------------------------------------------------------------------------


def test_result_extensions_round_trip_and_stay_out_of_the_embedded_shape() -> None:
    lines = (("stderr", "hi\n"), ("runtime", "x"))
    result = wire.TaskResult("t1", '{"a":1}', None, "p1", 2, result_type="json", logs=lines)
    decoded = wire.decode(T, T.results, wire.encode(result))
    assert decoded == result
    embedded = json.loads(wire.encode(result, wire.Profile.EMBEDDED))
    assert embedded == {"task_id": "t1", "results": '{"a":1}'}
    upstream = wire.decode(T, T.results, b'{"task_id":"t1","results":"7","error":null}')
    assert isinstance(upstream, wire.TaskResult) and upstream.result_type is None and upstream.logs is None


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"task_id": "t", "results": "", "result_type": "xml"}, "result_type"),
        ({"task_id": "t", "results": "", "logs": "oops"}, "logs"),
        ({"task_id": "t", "results": "", "logs": [{"data": "x"}]}, "logs[0].stream"),
    ],
)
def test_bad_result_extensions_are_refused_naming_the_field(payload: dict[str, Any], field: str) -> None:
    with pytest.raises(wire.CodecError) as err:
        wire.decode(T, T.results, json.dumps(payload).encode())
    assert err.value.field == field


def test_live_logs_round_trip_on_their_own_topic() -> None:
    piece = wire.TaskLogs("t1", "p1", 3, 7, "stderr", "tick\n")
    assert wire.decode(T, T.logs, wire.encode(piece)) == piece
    assert wire.topic_for(T, piece) == "m/d1/c/c1/control/proplet/logs"
    with pytest.raises(wire.CodecError):
        wire.encode(piece, wire.Profile.EMBEDDED)


# -- proplet engine ---------------------------------------------------------------------------------


def _proplet(**kw: Any) -> PropletEngine:
    engine = PropletEngine(PropletConfig(proplet_id="me", domain="d1", channel="c1", **kw))
    engine.on_connected(0.0)
    start = wire.StartTask(id="t1", name="_start", file=b"\0asm", proplet_id="me", attempt=2)
    engine.handle(T.start, wire.encode(start), 0.0)
    engine.take_commands()
    return engine


def _sent(engine: PropletEngine, topic: str) -> list[dict[str, Any]]:
    commands = engine.take_commands()
    return [json.loads(c.payload) for c in commands if isinstance(c, Publish) and c.topic == topic]


def test_proplet_streams_output_in_numbered_pieces_whole_characters_only() -> None:
    engine = _proplet()
    engine.task_output("t1", b"step 1\n")
    engine.task_output("t1", "caf\u00e9\n".encode()[:4])  # ends inside "é"
    engine.task_output("t1", "caf\u00e9\n".encode()[4:])
    pieces = _sent(engine, T.logs)
    assert [(p["seq"], p["data"], p["attempt"]) for p in pieces] == [
        (0, "step 1\n", 2), (1, "caf", 2), (2, "\u00e9\n", 2),
    ]  # fmt: skip
    engine.task_output("unknown-task", b"x")
    assert _sent(engine, T.logs) == []


def test_proplet_keeps_each_streams_split_character_apart() -> None:
    engine = _proplet()
    e_acute = "\u00e9".encode()
    engine.task_output("t1", b"out " + e_acute[:1], "stdout")  # a daemon's stdout, cut inside "é"
    engine.task_output("t1", b"err\n", "stderr")
    engine.task_output("t1", e_acute[1:] + b"\n", "stdout")
    pieces = _sent(engine, T.logs)
    assert [(p["stream"], p["data"]) for p in pieces] == [
        ("stdout", "out "), ("stderr", "err\n"), ("stdout", "\u00e9\n"),
    ]  # fmt: skip


def test_proplet_splits_a_burst_into_pieces() -> None:
    engine = _proplet()
    engine.task_output("t1", b"x" * (LOG_PIECE_CHARS * 2 + 5))
    pieces = _sent(engine, T.logs)
    assert [len(p["data"]) for p in pieces] == [LOG_PIECE_CHARS, LOG_PIECE_CHARS, 5]
    assert [p["seq"] for p in pieces] == [0, 1, 2]


def test_proplet_live_output_is_bounded_with_a_marker() -> None:
    engine = _proplet(live_log_bytes=8)
    engine.task_output("t1", b"0123456789")
    engine.task_output("t1", b"more")
    (piece,) = _sent(engine, T.logs)
    assert piece["data"].startswith("01234567") and "live output stops after 8 bytes" in piece["data"]


def test_proplet_result_carries_the_typed_result_and_logs() -> None:
    engine = _proplet()
    output = TaskOutput('{"a":1}', "json", (LogEntry("stderr", "warn\n"),))
    engine.task_finished("t1", "ignored", None, 1.0, output=output)
    (result,) = _sent(engine, T.results)
    assert result["results"] == '{"a":1}' and result["result_type"] == "json"
    assert result["logs"] == [{"stream": "stderr", "data": "warn\n"}] and result["attempt"] == 2


# -- manager engine ---------------------------------------------------------------------------------


def test_manager_records_live_pieces_of_the_current_attempt_only() -> None:
    engine = make_engine()
    heartbeat(engine, "p1", 0.0)
    task_id = submit(engine, 1.0)
    engine.take_commands()
    piece = {"task_id": task_id, "proplet_id": "p1", "attempt": 1, "seq": 0, "stream": "stderr"}
    piece["data"] = "a\n"
    send(engine, T.logs, piece, 2.0)
    send(engine, T.logs, {**piece, "attempt": 9}, 2.0)  # a stale attempt
    send(engine, T.logs, {**piece, "task_id": "nope"}, 2.0)
    send(engine, T.logs, {**piece, "proplet_id": "intruder"}, 2.0)  # not the proplet running it
    send(engine, T.logs, {**piece, "data": "x" * (MAX_LOG_PIECE_CHARS + 1)}, 2.0)
    logs = [c for c in engine.take_commands() if isinstance(c, RecordTaskLogs)]
    assert [(c.task_id, c.attempt, c.final, c.seq, c.lines) for c in logs] == [
        (task_id, 1, False, 0, (("stderr", "a\n"),))
    ]
    assert (engine.counters["logs_ignored"], engine.counters["logs_oversized"]) == (3, 1)


def test_manager_keeps_the_result_type_and_the_final_logs_with_the_attempt() -> None:
    engine = make_engine()
    heartbeat(engine, "p1", 0.0)
    task_id = submit(engine, 1.0)
    engine.take_commands()
    result = {"task_id": task_id, "proplet_id": "p1", "results": '{"a": 1}', "error": None, "attempt": 1,
              "result_type": "json", "logs": [{"stream": "stderr", "data": "done\n"}]}  # fmt: skip
    send(engine, T.results, result, 2.0)
    (final,) = [c for c in engine.take_commands() if isinstance(c, RecordTaskLogs)]
    assert (final.attempt, final.final, final.lines) == (1, True, (("stderr", "done\n"),))
    assert engine.tasks[task_id].result_type == "json"


def test_a_json_result_reaches_the_workflow_child_as_upstream_text_with_its_type_beside() -> None:
    engine = make_engine()
    heartbeat(engine, "p1", 0.0)
    engine.create_workflow([spec("a"), spec("b", "a")], 0)
    engine.start_task("a", 1.0, 1.0)
    engine.take_commands()
    result = {"task_id": "a", "proplet_id": "p1", "results": '{"loss": 0.25}\n', "error": None}
    result["result_type"] = "json"
    send(engine, T.results, result, 2.0)
    (start,) = publishes(engine.take_commands(), T.start)
    # upstream sends each parent's results as stored (text); the type travels in our extension
    assert start["parent_results"] == {"a": '{"loss": 0.25}\n'}
    assert start["parent_result_types"] == {"a": "json"}


def test_binary_results_stay_base64_text() -> None:
    engine = make_engine()
    heartbeat(engine, "p1", 0.0)
    task_id = submit(engine, 1.0)
    blob = base64.b64encode(b"\xff\x00").decode()
    result = {"task_id": task_id, "proplet_id": "p1", "results": blob, "error": None, "result_type": "binary"}
    send(engine, T.results, result, 2.0)
    task = engine.tasks[task_id]
    assert (task.results, task.result_type) == (blob, "binary")


def test_an_upstream_result_types_nothing_and_leaves_the_logs_empty() -> None:
    engine = make_engine()
    heartbeat(engine, "p1", 0.0)
    task_id = submit(engine, 1.0)
    engine.take_commands()
    send(engine, T.results, {"task_id": task_id, "proplet_id": "p1", "results": "42", "error": None}, 2.0)
    assert not [c for c in engine.take_commands() if isinstance(c, RecordTaskLogs)]
    assert (engine.tasks[task_id].results, engine.tasks[task_id].result_type) == ("42", "")
