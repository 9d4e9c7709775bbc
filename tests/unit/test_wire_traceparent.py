"""Our ``traceparent`` extension (``--otel``): absent unless set, never in embedded starts, tolerant."""

from __future__ import annotations

import json

import pytest

from orchestrator.wire import CodecError, Profile, StartTask, TaskResult, decode, encode, with_traceparent
from tests.unit.test_wire_golden import GO_START, T

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_start_without_tracing_is_byte_identical_and_with_it_carries_the_key() -> None:
    msg = decode(T, T.start, GO_START)
    assert isinstance(msg, StartTask) and msg.traceparent == ""
    plain = encode(msg)
    assert b"traceparent" not in plain
    traced = with_traceparent(plain, TP)
    assert json.loads(traced) == {**json.loads(plain), "traceparent": TP}
    back = decode(T, T.start, traced)
    assert isinstance(back, StartTask) and back.traceparent == TP and encode(back) == traced


def test_an_embedded_start_never_gets_it() -> None:
    msg = StartTask(id="t", name="add", file=b"\x00asm\x01\x00\x00\x00", traceparent=TP)
    embedded = encode(msg, Profile.EMBEDDED)
    assert b"traceparent" not in embedded
    assert with_traceparent(embedded, TP) == embedded


def test_results_carry_it_in_the_rust_profile_only() -> None:
    result = TaskResult("t", "42", None, "p1", 1, traceparent=TP)
    assert json.loads(encode(result))["traceparent"] == TP
    assert b"traceparent" not in encode(result, Profile.EMBEDDED)
    back = decode(T, T.results, encode(result))
    assert isinstance(back, TaskResult) and back.traceparent == TP


@pytest.mark.parametrize("bad", ["", "01-xyz", 42, None, "00-" + "0" * 32 + "-" + "0" * 16 + "-0"])
def test_a_malformed_trace_context_is_ignored_not_a_reason_to_drop(bad: object) -> None:
    payload = json.dumps({**json.loads(GO_START), "traceparent": bad}).encode()
    msg = decode(T, T.start, payload)
    assert isinstance(msg, StartTask) and msg.traceparent == "" and msg.name == "add"


def test_encoding_a_malformed_trace_context_names_the_field() -> None:
    with pytest.raises(CodecError, match="traceparent"):
        encode(TaskResult("t", "42", None, "p1", traceparent="nope"))
