"""The store's JSON column reader answers the empty values without the parser: same values as
``json.loads``, and never one shared list or dict between two rows."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.adapters.store import _json_loads

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@given(JSON_VALUES)
def test_reads_what_json_loads_reads(value: Any) -> None:
    for text in (json.dumps(value), json.dumps(value, separators=(",", ":"))):
        assert _json_loads(text) == json.loads(text)
        assert _json_loads(text.encode()) == json.loads(text)
        assert _json_loads(bytearray(text.encode())) == json.loads(text)


@pytest.mark.parametrize(
    "form",
    [str, str.encode, lambda text: bytearray(text.encode())],
    ids=["sqlite-text", "psycopg-bytes", "bytearray"],
)
def test_empty_containers_are_new_each_time(form: Any) -> None:
    first, second = _json_loads(form("[]")), _json_loads(form("[]"))
    first.append(1)
    assert second == [] and _json_loads(form("[]")) == []
    a, b = _json_loads(form("{}")), _json_loads(form("{}"))
    a["k"] = 1
    assert b == {} and _json_loads(form("{}")) == {}
    assert _json_loads(form("null")) is None and _json_loads(form('""')) == ""
    assert _json_loads(form("1")) == 1 and _json_loads(form("true")) is True
