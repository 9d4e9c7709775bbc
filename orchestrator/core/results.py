"""Typed results: what a task's ``results`` mean, given the ``result_type`` its proplet reported. Pure.

Proplets send results as text (upstream's shape) plus our ``result_type`` extension: ``json`` (the text
is one JSON value), ``text`` or ``binary`` (standard base64 of the bytes). Upstream proplets say
nothing, and their results are kept exactly as they came.
"""

from __future__ import annotations

import json
from typing import Any

from orchestrator.core.model import Task


def parsed(task: Task) -> Any:
    """The result as a value: JSON parsed; anything else as stored (text, base64 text, FL objects)."""
    if task.result_type == "json" and isinstance(task.results, str):
        try:
            return json.loads(task.results)
        except ValueError:  # a proplet that called it JSON and was wrong: hand over the text
            return task.results
    return task.results
