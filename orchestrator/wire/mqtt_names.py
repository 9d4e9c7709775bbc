"""Validity of MQTT topic names and filters (MQTT 3.1.1 §4.7), shared by the live client and the model."""

from __future__ import annotations


def check_topic(topic: str, what: str = "topic") -> None:
    """A topic to publish on: non-empty, no wildcards."""
    if not isinstance(topic, str) or not topic:
        raise ValueError(f"{what} must be a non-empty string, got {topic!r}")
    if "+" in topic or "#" in topic:
        raise ValueError(f"{what} {topic!r} must not contain the wildcards '+' or '#'")


def check_filter(topic_filter: str) -> None:
    """A subscription filter: '+' only as a whole level, '#' only as the whole last level."""
    if not isinstance(topic_filter, str) or not topic_filter:
        raise ValueError(f"topic filter must be a non-empty string, got {topic_filter!r}")
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ValueError(f"topic filter {topic_filter!r}: '#' must be a whole, last level")
        if "+" in level and level != "+":
            raise ValueError(f"topic filter {topic_filter!r}: '+' must be a whole level")
