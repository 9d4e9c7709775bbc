"""A task moved by a power loss: its timeline as docs/timelines.md shows it, live and virtual."""

from __future__ import annotations

from typing import Any

STEPS = ("placed", "fault", "proplet_died", "requeued", "result")


def steps(timeline: list[dict[str, Any]]) -> list[tuple[str, Any, str]]:
    """(kind, proplet id, cause) of the timeline's steps that tell where the task went and why."""
    return [(e["kind"], e["fields"].get("proplet_id"), e["cause"]) for e in timeline if e["kind"] in STEPS]


def moved_by_power_loss(victim: str, other: str) -> list[tuple[str, Any, str]]:
    """Placed on ``victim``, its power lost, declared dead by its will, requeued, completed on ``other``."""
    return [
        ("placed", victim, "round-robin"),
        ("fault", victim, "power_loss"),
        ("proplet_died", victim, "last will: offline"),
        ("requeued", victim, f"proplet {victim} died (last will: offline)"),
        ("placed", other, "round-robin"),
        ("result", other, "Completed"),
    ]
