"""User input that no backend could store, or that is unbounded, is refused naming the field."""

from __future__ import annotations

import base64
import itertools
from typing import Any

import pytest

from orchestrator.core.engine import Engine
from orchestrator.core.errors import ValidationError
from orchestrator.core.model import TaskState
from orchestrator.core.validation import (
    MAX_DEPTH,
    MAX_ID_CHARS,
    MAX_ITEMS,
    MAX_MODULE_BYTES,
    MAX_NAME_CHARS,
    MAX_TEXT_CHARS,
    build_task,
)

_ids = (f"id-{i}" for i in itertools.count())


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


BAD: list[tuple[dict[str, Any], str, str]] = [
    ({"name": "a\ud800"}, "name", "lone surrogate"),
    ({"name": "a\x00b"}, "name", "NUL"),
    ({"name": "x" * (MAX_NAME_CHARS + 1)}, "name", "longer than"),
    ({"name": "t", "id": "i" * (MAX_ID_CHARS + 1)}, "id", "longer than"),
    ({"name": "t", "metadata": nested(900)}, "metadata", f"deeper than {MAX_DEPTH}"),
    ({"name": "t", "metadata": {"k": "v\x00"}}, "metadata.k", "NUL"),
    ({"name": "t", "metadata": {"\udc80": 1}}, "metadata key", "lone surrogate"),
    ({"name": "t", "metadata": {"n": float("nan")}}, "metadata.n", "finite"),
    ({"name": "t", "metadata": {"n": 1 << 70}}, "metadata.n", "64-bit"),
    ({"name": "t", "inputs": ["1", "\ud83d"]}, "inputs[1]", "lone surrogate"),
    ({"name": "t", "inputs": list(range(MAX_ITEMS + 1))}, "inputs", "more than"),
    ({"name": "t", "env": {"K": "v\x00"}}, "env.K", "NUL"),
    ({"name": "t", "env": {"K\x00": "v"}}, "env key", "NUL"),
    ({"name": "t", "cli_args": ["--x", "y" * (MAX_TEXT_CHARS + 1)]}, "cli_args[1]", "longer than"),
    ({"name": "t", "image_url": "http://h/\x00"}, "image_url", "NUL"),
    ({"name": "t", "schedule": "* * * * *\ud800"}, "schedule", "lone surrogate"),
    ({"name": "t", "depends_on": ["d" * (MAX_ID_CHARS + 1)]}, "depends_on[0]", "longer than"),
    ({"name": "t", "limits": {"timeout_s": float("inf")}}, "limits.timeout_s", "finite"),
    ({"name": "t", "timezone": "Z" * 65}, "timezone", "longer than"),
]


@pytest.mark.parametrize(("spec", "field", "reason"), BAD, ids=[f"{f}-{r}" for _, f, r in BAD])
def test_unstorable_or_unbounded_input_is_refused_naming_the_field(
    spec: dict[str, Any], field: str, reason: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        build_task(spec, lambda: next(_ids))
    assert caught.value.field.startswith(field.split(" ")[0]), caught.value.field
    assert field in caught.value.message and reason in caught.value.message, caught.value.message


def test_a_module_over_the_inline_bound_is_refused_before_decoding() -> None:
    big = base64.b64encode(b"\0asm" + bytes(MAX_MODULE_BYTES)).decode()
    with pytest.raises(ValidationError) as caught:
        build_task({"name": "t", "file": big}, lambda: "x")
    assert caught.value.field == "file" and "image_url" in caught.value.message


def test_values_at_the_bounds_are_accepted() -> None:
    task = build_task(
        {
            "name": "n" * MAX_NAME_CHARS,
            "id": "i" * MAX_ID_CHARS,
            "metadata": nested(MAX_DEPTH),
            "inputs": ["é", "😀", -(1 << 63)],
            "env": {"K": "v" * MAX_TEXT_CHARS},
        },
        lambda: "x",
    )
    assert task.inputs == ["é", "😀", str(-(1 << 63))]


def test_engine_entry_points_refuse_and_keep_nothing() -> None:
    engine = Engine()
    with pytest.raises(ValidationError):
        engine.create_task({"name": "ok\x00", "id": "t1"}, 0.0)
    with pytest.raises(ValidationError) as job:
        engine.create_job("job\ud800", [{"name": "a"}], "", 0.0)
    assert job.value.field == "name"
    with pytest.raises(ValidationError) as flow:
        engine.create_workflow([{"name": "a"}, {"name": "b", "metadata": nested(100)}], 0.0)
    assert flow.value.field == "tasks[1].metadata"
    task = engine.create_task({"name": "ok", "id": "t2"}, 0.0)
    with pytest.raises(ValidationError) as update:
        engine.update_task(task.id, {"name": "bad\x00"}, 0.0)
    assert update.value.field == "name" and task.name == "ok"
    assert list(engine.tasks) == ["t2"] and not engine.jobs
    assert task.state is TaskState.PENDING
