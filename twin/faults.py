"""Fault definitions as data (sans-I/O): what goes wrong, to which devices, and for how long.

The scenario runner schedules them (`at`, seconds after the scenario starts) and tests inject them
directly; neither executes anything here. `fault_from_mapping(d, where)` builds one from a plain mapping
(as read from YAML), raising `ValueError` that names the key and `where` on any mistake.

Durations accept numbers of seconds or strings with a unit: "250ms", "30s", "5m"/"5min", "1h".
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from twin.link_profile import CLEAN, LinkProfile

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|s|min|m|h)\s*$")


def parse_duration(value: Any, key: str, where: str, *, allow_negative: bool = False) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{where}: {key} must be a duration (seconds or e.g. '30s'), got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value.lstrip("-+"))):
        seconds = float(m.group(1)) * _UNITS[m.group(2)] * (-1.0 if value.strip().startswith("-") else 1.0)
    else:
        raise ValueError(f"{where}: {key} must be a duration (seconds or e.g. '30s'), got {value!r}")
    if not math.isfinite(seconds) or (seconds < 0 and not allow_negative):
        raise ValueError(f"{where}: {key} must be a finite duration >= 0, got {value!r}")
    return seconds


@dataclass(frozen=True)
class DeviceRef:
    """What a selector sees of a device."""

    device_id: str
    kind: str


@dataclass(frozen=True)
class Target:
    """Which devices a fault hits: an explicit id, all of a kind, and/or a seeded random fraction."""

    device: str | None = None
    kind: str | None = None
    fraction: float | None = None  # of the devices left after the filters above

    def __post_init__(self) -> None:
        if self.fraction is not None and not (
            isinstance(self.fraction, int | float) and not isinstance(self.fraction, bool)
            and 0 < self.fraction <= 1
        ):
            raise ValueError(f"target.fraction must be in (0, 1], got {self.fraction!r}")

    def select(self, devices: Sequence[DeviceRef], rng: random.Random) -> list[str]:
        """The chosen device ids, in fleet order. The fraction rounds to nearest, at least one device
        when any candidate exists; `rng` makes the choice reproducible."""
        pool = [d for d in devices if (self.device is None or d.device_id == self.device)
                and (self.kind is None or d.kind == self.kind)]  # fmt: skip
        if self.fraction is None or not pool:
            return [d.device_id for d in pool]
        n = max(1, round(self.fraction * len(pool)))
        chosen = set(rng.sample(range(len(pool)), n))
        return [d.device_id for i, d in enumerate(pool) if i in chosen]

    @classmethod
    def from_mapping(cls, d: Any, where: str) -> Target:
        if not isinstance(d, Mapping):
            raise ValueError(f"{where}: target must be a mapping with device/kind/fraction, got {d!r}")
        _check_keys(d, {"device", "kind", "fraction"}, where)
        for key in ("device", "kind"):
            if key in d and (not isinstance(d[key], str) or not d[key]):
                raise ValueError(f"{where}: target.{key} must be a non-empty string, got {d[key]!r}")
        try:
            return cls(d.get("device"), d.get("kind"), d.get("fraction"))
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None


ALL = Target()


def _check_keys(d: Mapping[str, Any], allowed: set[str], where: str) -> None:
    for key in d:
        if key not in allowed:
            raise ValueError(f"{where}: unknown key {key!r} (expected one of: {', '.join(sorted(allowed))})")


@dataclass(frozen=True)
class Fault:
    """Base of every fault: `at` (None when injected by a test) and, for device faults, `target`."""

    kind: ClassVar[str] = ""
    device_level: ClassVar[bool] = True
    at: float | None = field(default=None, kw_only=True)
    target: Target = field(default=ALL, kw_only=True)

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any], where: str) -> Fault:
        """This fault from a mapping (the `type` key, if present, is ignored here)."""
        return _from_mapping(cls, d, where)


@dataclass(frozen=True)
class PowerLoss(Fault):
    """Power cut: the device sends nothing more, not even a FIN; the broker fires the will when the
    keep-alive expires (1.5 × keepalive). Power returns after `off_for` seconds (None: stays off)."""

    kind: ClassVar[str] = "power_loss"
    off_for: float | None = None


@dataclass(frozen=True)
class CleanShutdown(Fault):
    """Orderly power-off: the device announces `offline` and sends DISCONNECT (the broker drops the
    will); back after `off_for` seconds (None: stays off)."""

    kind: ClassVar[str] = "clean_shutdown"
    off_for: float | None = None


@dataclass(frozen=True)
class WifiDrop(Fault):
    """The radio link goes silent for `duration`: no FIN, so only keep-alive expiry ends the session."""

    kind: ClassVar[str] = "wifi_drop"
    duration: float = 60.0


@dataclass(frozen=True)
class LinkFault(Fault):
    """The device's link (a `twin.links.LinkProxy`) takes `profile` for `duration`, then is clean."""

    kind: ClassVar[str] = "link"
    profile: LinkProfile = CLEAN
    duration: float = 60.0


@dataclass(frozen=True)
class Reboot(Fault):
    """Watchdog reset: silence, running tasks lost, then a reboot whose reconnect with the same client
    id takes the old session over (the broker fires the old will at that moment)."""

    kind: ClassVar[str] = "reboot"
    only_if_running: bool = False  # wait for a task to be running, to reboot mid-task


@dataclass(frozen=True)
class OutOfMemory(Fault):
    """A leak takes `reserve_bytes` (None: all free heap) for `duration`; new instances are refused."""

    kind: ClassVar[str] = "out_of_memory"
    reserve_bytes: int | None = None
    duration: float = 60.0


@dataclass(frozen=True)
class BrokerRestart(Fault):
    kind: ClassVar[str] = "broker_restart"
    device_level: ClassVar[bool] = False
    downtime: float = 5.0


@dataclass(frozen=True)
class ManagerKill(Fault):
    """kill -9 of the manager process, restarted after `restart_after` seconds (None: never)."""

    kind: ClassVar[str] = "manager_kill"
    device_level: ClassVar[bool] = False
    restart_after: float | None = 5.0


@dataclass(frozen=True)
class ClockSkew(Fault):
    """The device's wall clock is off by `offset` seconds (may be negative)."""

    kind: ClassVar[str] = "clock_skew"
    offset: float = 0.0


FAULT_TYPES: dict[str, type[Fault]] = {
    t.kind: t
    for t in (PowerLoss, CleanShutdown, WifiDrop, LinkFault, Reboot, OutOfMemory, BrokerRestart, ManagerKill,
              ClockSkew)
}


def _optional_duration(key: str) -> Callable[[Any, str], float | None]:
    def parse(v: Any, where: str) -> float | None:
        return None if v is None else parse_duration(v, key, where)

    return parse


def _bytes(v: Any, where: str) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ValueError(f"{where}: reserve_bytes must be a positive integer, got {v!r}")
    return v


def _bool(key: str) -> Callable[[Any, str], bool]:
    def parse(v: Any, where: str) -> bool:
        if not isinstance(v, bool):
            raise ValueError(f"{where}: {key} must be true or false, got {v!r}")
        return v

    return parse


def _profile(v: Any, where: str) -> LinkProfile:
    if not isinstance(v, Mapping):
        raise ValueError(f"{where}: profile must be a mapping of LinkProfile fields, got {v!r}")
    names = {f.name for f in fields(LinkProfile)}
    _check_keys(v, names, f"{where}.profile")
    values: dict[str, Any] = {}
    for key, raw in v.items():
        if key in ("latency_s", "jitter_s", "retransmit_s"):
            values[key] = parse_duration(raw, f"profile.{key}", where)
        else:
            values[key] = raw
    try:
        return LinkProfile(**values)
    except ValueError as e:
        raise ValueError(f"{where}: profile: {e}") from None


_PARSERS: dict[str, Callable[[Any, str], Any]] = {
    "off_for": _optional_duration("off_for"),
    "duration": lambda v, w: parse_duration(v, "duration", w),
    "downtime": lambda v, w: parse_duration(v, "downtime", w),
    "restart_after": _optional_duration("restart_after"),
    "offset": lambda v, w: parse_duration(v, "offset", w, allow_negative=True),
    "reserve_bytes": _bytes,
    "only_if_running": _bool("only_if_running"),
    "profile": _profile,
    "at": lambda v, w: parse_duration(v, "at", w),
}


def fault_from_mapping(d: Any, where: str) -> Fault:
    """Build a fault from `{"type": "wifi_drop", "duration": "30s", "target": {...}, "at": 10}`."""
    if not isinstance(d, Mapping):
        raise ValueError(f"{where}: a fault must be a mapping, got {d!r}")
    kind = d.get("type")
    if kind not in FAULT_TYPES:
        raise ValueError(f"{where}: type must be one of {', '.join(sorted(FAULT_TYPES))}, got {kind!r}")
    return FAULT_TYPES[kind].from_mapping(d, where)


def _from_mapping(cls: type[Fault], d: Mapping[str, Any], where: str) -> Fault:
    params = {f.name for f in fields(cls)} - {"target"}
    allowed = params | {"type"} | ({"target"} if cls.device_level else set())
    if not cls.device_level and "target" in d:
        raise ValueError(f"{where}: target is not allowed for {cls.kind} (it is not a device fault)")
    _check_keys(d, allowed, where)
    kwargs: dict[str, Any] = {}
    for key, raw in d.items():
        if key == "type":
            continue
        if key == "target":
            kwargs["target"] = Target.from_mapping(raw, f"{where}.target")
        else:
            kwargs[key] = _PARSERS[key](raw, where)
    return cls(**kwargs)
