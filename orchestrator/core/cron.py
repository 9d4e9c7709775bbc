"""Cron schedules: 5-field expressions in an IANA time zone. Pure: the caller passes the wall time.

Missed runs (the manager was down when a run was due) are skipped, not caught up: on restore the next
run is computed from the current time, as upstream does.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo

from croniter import croniter

from orchestrator.core.errors import ValidationError


def validate(schedule: str, timezone: str) -> None:
    if len(schedule.split()) != 5:
        raise ValidationError(
            f"schedule {schedule!r} must have 5 fields (minute hour day month weekday)", "schedule"
        )
    if not croniter.is_valid(schedule):
        raise ValidationError(f"invalid cron expression {schedule!r}", "schedule")
    zone(timezone)


def zone(name: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(name or "UTC")
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValidationError(f"unknown time zone {name!r}", "timezone") from None


def next_run(schedule: str, timezone: str, after_wall: float) -> float:
    """UNIX time of the first run strictly after ``after_wall``."""
    start = dt.datetime.fromtimestamp(after_wall, zone(timezone))
    return float(croniter(schedule, start).get_next(float))
