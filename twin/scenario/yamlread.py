"""Typed reading of a YAML node tree that keeps line numbers, collecting every problem it finds.

PyYAML's ``compose`` keeps a mark (line, column) on every node, which plain ``safe_load`` throws away.
Each reader below returns ``None`` on a bad value after recording an ``Issue`` that names the file,
the line and the key path, so one pass reports all the mistakes in a file instead of the first.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode


@dataclass(frozen=True)
class Issue:
    source: str
    line: int  # 1-based
    path: str  # key path such as ``fleet[0].count``; empty for the whole document
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ScenarioError(ValueError):
    """A scenario file is invalid; ``issues`` lists every problem, each with file, line and key."""

    def __init__(self, issues: Iterable[Issue]) -> None:
        self.issues = tuple(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|s|min|m|h)\s*$")
_SIZES = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


def _plain(node: Node) -> Any:
    """The Python value of a node, as ``safe_load`` would build it."""
    return yaml.SafeLoader("").construct_object(node, deep=True)


def _show(value: Any) -> str:
    return repr(value) if not isinstance(value, dict | list) else type(value).__name__


class Reader:
    def __init__(self, source: str) -> None:
        self.source = source
        self.issues: list[Issue] = []

    # ------------------------------------------------------------------ errors
    def error(self, node: Node | None, path: str, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 1
        self.issues.append(Issue(self.source, line, path, message))

    # ------------------------------------------------------------------ containers
    def mapping(
        self, node: Node, path: str, keys: Iterable[str], required: Iterable[str] = ()
    ) -> dict[str, Node] | None:
        """The children of a mapping, by key; unknown, duplicate and missing keys are issues."""
        if not isinstance(node, MappingNode):
            self.error(node, path, f"must be a mapping, got {_show(_plain(node))}")
            return None
        allowed = list(keys)
        out: dict[str, Node] = {}
        for key_node, value_node in node.value:
            key = str(_plain(key_node))
            where = f"{path}.{key}" if path else key
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                if close:
                    hint = f" (did you mean {close[0]!r}?)"
                else:
                    hint = f" (expected one of: {', '.join(allowed)})" if allowed else " (none allowed here)"
                self.error(key_node, where, f"unknown key{hint}")
            elif key in out:
                self.error(key_node, where, "duplicate key")
            else:
                out[key] = value_node
        for key in required:
            if key not in out:
                self.error(node, path or "(top level)", f"missing required key {key!r}")
        return out

    def sequence(self, node: Node, path: str) -> list[Node] | None:
        if not isinstance(node, SequenceNode):
            self.error(node, path, f"must be a list, got {_show(_plain(node))}")
            return None
        return list(node.value)

    # ------------------------------------------------------------------ scalars
    def plain(self, node: Node) -> Any:
        return _plain(node)

    def string(self, node: Node, path: str, choices: Iterable[str] | None = None) -> str | None:
        value = _plain(node) if isinstance(node, ScalarNode) else None
        if not isinstance(value, str) or not value:
            self.error(node, path, f"must be a non-empty string, got {_show(_plain(node))}")
            return None
        if choices is not None:
            options = list(choices)
            if value not in options:
                close = difflib.get_close_matches(value, options, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                self.error(node, path, f"must be one of {', '.join(options)}, got {value!r}{hint}")
                return None
        return value

    def boolean(self, node: Node, path: str) -> bool | None:
        value = _plain(node)
        if not isinstance(value, bool):
            self.error(node, path, f"must be true or false, got {_show(value)}")
            return None
        return value

    def number(
        self, node: Node, path: str, *, minimum: float | None = None, positive: bool = False,
        maximum: float | None = None, integer: bool = False,
    ) -> float | None:  # fmt: skip
        value = _plain(node)
        ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
        if isinstance(value, bool) or not ok_type or not math.isfinite(value):
            what = "an integer" if integer else "a number"
            if positive:
                what = f"a positive {what.split(' ', 1)[1]}"
            self.error(node, path, f"must be {what}, got {_show(value)}")
            return None
        return self._bounded(node, path, float(value), minimum, positive, maximum)

    def integer(self, node: Node, path: str, *, minimum: int | None = None) -> int | None:
        value = self.number(node, path, minimum=minimum, integer=True)
        return None if value is None else int(value)

    def duration(self, node: Node, path: str, *, positive: bool = True) -> float | None:
        """Seconds: a number, or a string with a unit (``500ms``, ``2s``, ``1.5m``, ``1h``)."""
        value = _plain(node)
        seconds: float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            seconds = float(value)
        elif isinstance(value, str) and (m := _DURATION.match(value)):
            seconds = float(m.group(1)) * _UNITS[m.group(2)]
        if seconds is None:
            what = "a positive number" if positive else "a number >= 0"
            self.error(node, path, f"must be {what}, got {_show(value)} (seconds, or with a unit: 500ms, 2s)")
            return None
        return self._bounded(node, path, seconds, 0.0, positive, None)

    def size(self, node: Node, path: str) -> int | None:
        """Bytes: an integer, or a string with a unit (``64KiB``, ``8MB``)."""
        value = _plain(node)
        count: float | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            count = float(value)
        elif isinstance(value, str) and (m := _SIZE.match(value)) and m.group(2).lower() in _SIZES:
            count = float(m.group(1)) * _SIZES[m.group(2).lower()]
        if count is None or count <= 0:
            self.error(
                node, path, f"must be a positive size in bytes (e.g. 65536 or 64KiB), got {_show(value)}"
            )
            return None
        return int(count)

    def strings(self, node: Node, path: str) -> tuple[str, ...] | None:
        """A list of strings; a single string is a list of one."""
        if isinstance(node, ScalarNode):
            one = self.string(node, path)
            return None if one is None else (one,)
        items = self.sequence(node, path)
        if items is None:
            return None
        out = [self.string(item, f"{path}[{i}]") for i, item in enumerate(items)]
        return None if any(v is None for v in out) else tuple(v for v in out if v is not None)

    def _bounded(
        self,
        node: Node,
        path: str,
        value: float,
        minimum: float | None,
        positive: bool,
        maximum: float | None,
    ) -> float | None:
        shown = f"{value:g}"
        if positive and value <= 0:
            self.error(node, path, f"must be a positive number, got {shown}")
            return None
        if minimum is not None and value < minimum:
            self.error(node, path, f"must be >= {minimum:g}, got {shown}")
            return None
        if maximum is not None and value > maximum:
            self.error(node, path, f"must be <= {maximum:g}, got {shown}")
            return None
        return value


def compose(text: str, source: str) -> Node | None:
    """The node tree of a YAML document; a syntax error becomes a ScenarioError with its line."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise ScenarioError([Issue(source, line, "", f"YAML syntax error: {exc.problem or exc}")]) from None
    except yaml.YAMLError as exc:
        raise ScenarioError([Issue(source, 1, "", f"YAML error: {exc}")]) from None
