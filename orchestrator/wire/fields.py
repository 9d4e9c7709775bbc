"""Strict, path-aware readers over parsed JSON; every failure is a CodecError naming the field.

JSON in Python has traps that a hostile or buggy device can spring: ``true`` is an ``int``, ``1e400``
parses to ``inf``, ``NaN`` is accepted by default, deep nesting raises RecursionError, and ``\\ud800``
yields a string that cannot be re-encoded as UTF-8. This module closes each of them.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping
from typing import Any, NoReturn

from orchestrator.wire.errors import CodecError

DEFAULT_MAX_PAYLOAD_BYTES = 10 * 1024 * 1024
# Deeper than any message the protocol defines (FL envelopes are 3 levels); bounds the walk below.
MAX_DEPTH = 64
U64_MAX = 2**64 - 1
U32_MAX = 2**32 - 1
I32_MAX = 2**31 - 1


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


# json.loads(text, parse_constant=..., parse_float=...) builds a new decoder on every call; this is it,
# built once (every wire message goes through it).
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def parse_object(payload: object, topic: str, max_payload_bytes: int) -> dict[str, Any]:
    """Parse a payload that must be one JSON object of UTF-8 text."""
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise CodecError(topic, "", f"payload must be bytes, got {type(payload).__name__}")
    size = len(payload) if not isinstance(payload, memoryview) else payload.nbytes
    if size > max_payload_bytes:
        raise CodecError(topic, "", f"payload of {size} bytes exceeds the limit of {max_payload_bytes}")
    try:
        text = bytes(payload).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CodecError(topic, "", f"payload is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        if text.startswith("\ufeff"):  # as json.loads refuses it
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        data = _DECODER.decode(text)
    except RecursionError:
        raise CodecError(topic, "", "JSON is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity, huge floats, over-long integers
        raise CodecError(topic, "", f"payload is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CodecError(topic, "", f"payload must be a JSON object, got {_json_type(data)}")
    # Only an escaped \ud800..\udfff can produce a lone surrogate from valid UTF-8 input.
    _check_tree(data, topic, check_strings="\\ud" in text or "\\uD" in text)
    return data


def _check_tree(root: Any, topic: str, check_strings: bool) -> None:
    stack: list[tuple[Any, int]] = [(root, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise CodecError(topic, "", f"JSON is nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            for key, item in value.items():
                if check_strings:
                    _check_text(key, topic)
                stack.append((item, depth + 1))
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)
        elif check_strings and isinstance(value, str):
            _check_text(value, topic)


def _check_text(value: str, topic: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise CodecError(topic, "", "payload contains an unpaired UTF-16 surrogate escape") from None


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def b64decode(text: str, topic: str, field: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as exc:  # binascii.Error is a ValueError
        raise CodecError(topic, field, f"invalid standard base64: {exc}") from None


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class Obj:
    """A JSON object being read, with the dotted path that error messages name."""

    def __init__(self, data: Mapping[str, Any], topic: str, path: str = "") -> None:
        self.data = data
        self.topic = topic
        self.path = path

    def name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: str, reason: str) -> NoReturn:
        raise CodecError(self.topic, self.name(key) if key else self.path, reason)

    def _wrong(self, key: str, want: str, got: object) -> NoReturn:
        self.fail(key, f"must be {want}, got {_json_type(got)}")

    def raw(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def text(self, key: str, *, required: bool = False, default: str = "") -> str:
        """A string; null counts as absent. ``required`` also rejects the empty string."""
        value = self.data.get(key)
        if value is None:
            if required:
                self.fail(key, "is required")
            return default
        if not isinstance(value, str):
            self._wrong(key, "a string", value)
        if required and not value:
            self.fail(key, "must not be empty")
        return value

    def opt_text(self, key: str) -> str | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            self._wrong(key, "a string or null", value)
        return value

    def flag(self, key: str, default: bool = False) -> bool:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self._wrong(key, "a boolean", value)
        return value

    def integer(
        self, key: str, *, default: int = 0, lo: int = 0, hi: int = U64_MAX, lenient: bool = False
    ) -> int:
        """An integer in [lo, hi]; ``lenient`` admits integral floats (cJSON prints some as 1e+10)."""
        value = self.data.get(key)
        if value is None:
            return default
        return check_int(value, self.topic, self.name(key), lo=lo, hi=hi, lenient=lenient)

    def opt_integer(self, key: str, *, lo: int = 0, hi: int = U64_MAX) -> int | None:
        if self.data.get(key) is None:
            return None
        return self.integer(key, lo=lo, hi=hi)

    def number(self, key: str, *, default: float = 0.0, lo: float = 0.0) -> float:
        value = self.data.get(key)
        if value is None:
            return default
        return check_float(value, self.topic, self.name(key), lo=lo)

    def text_list(self, key: str) -> tuple[str, ...]:
        value = self.data.get(key)
        if value is None:
            return ()
        if not isinstance(value, list):
            self._wrong(key, "an array of strings", value)
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.fail(f"{key}[{i}]", f"must be a string, got {_json_type(item)}")
        return tuple(value)

    def text_map(self, key: str) -> dict[str, str]:
        value = self.data.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self._wrong(key, "an object of strings", value)
        for k, item in value.items():
            if not isinstance(item, str):
                self.fail(f"{key}.{k}", f"must be a string, got {_json_type(item)}")
        return dict(value)

    def obj(self, key: str) -> Obj | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            self._wrong(key, "an object", value)
        return Obj(value, self.topic, self.name(key))

    def any_map(self, key: str) -> dict[str, Any] | None:
        sub = self.obj(key)
        return None if sub is None else dict(sub.data)

    def b64(self, key: str) -> bytes:
        value = self.data.get(key)
        if value is None:
            return b""
        if not isinstance(value, str):
            self._wrong(key, "a base64 string", value)
        return b64decode(value, self.topic, self.name(key))


def check_int(value: object, topic: str, field: str, *, lo: int, hi: int, lenient: bool = False) -> int:
    if lenient and isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise CodecError(topic, field, f"must be an integer, got {_json_type(value)}")
    if not lo <= value <= hi:
        raise CodecError(topic, field, f"must be between {lo} and {hi}, got {value}")
    return value


def check_float(value: object, topic: str, field: str, *, lo: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CodecError(topic, field, f"must be a number, got {_json_type(value)}")
    if isinstance(value, int) and abs(value) >= 2**64:
        raise CodecError(topic, field, f"number is out of range ({len(str(value))} digits)")
    number = float(value)
    if not math.isfinite(number):
        raise CodecError(topic, field, "must be a finite number")
    if number < lo:
        raise CodecError(topic, field, f"must be at least {lo}, got {number}")
    return number
