"""The fault section of the scenario language: which fault kinds exist and what parameters they take.

Device-level faults (power loss, Wi-Fi drop, reboot, ...) are also defined as data by ``twin.faults``;
when that module offers ``from_mapping(d, where)`` it gets the last word on a device fault, and its
errors are reported with the scenario's file and line. Fleet-level faults (``broker_restart``,
``manager_kill``) and the seeded ``random`` generator belong to the runner and are checked here.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any

from yaml.nodes import MappingNode, Node

from twin.scenario.yamlread import Reader


@dataclass(frozen=True)
class FaultKind:
    needs_target: bool
    duration: str  # "required" | "optional" | "none"
    params: dict[str, tuple[str, bool]]  # name -> (type, required)
    device_level: bool = True
    lethal: bool = False  # the manager should mark the device dead (dead_within's default)
    doc: str = ""


FAULTS: dict[str, FaultKind] = {
    "power_loss": FaultKind(
        True, "optional", {}, lethal=True,
        doc="power cut: the connection goes silent, the broker fires the will at keep-alive expiry "
            "(1.5 x keepalive); duration = time until power returns (off_for)",
    ),
    "clean_shutdown": FaultKind(
        True, "optional", {}, lethal=True,
        doc="orderly power-off: an offline message, then DISCONNECT (no will); duration = time off",
    ),
    "wifi_drop": FaultKind(
        True, "required", {}, lethal=True, doc="link silent for duration (half-open TCP)"
    ),
    "wifi_flap": FaultKind(
        True, "none", {"down": ("duration", True), "up": ("duration", True), "cycles": ("int", True)},
        doc="cycles of wifi_drop(down) then up; lethal only when down exceeds the liveness timeout",
    ),
    "reboot": FaultKind(
        True, "none", {"only_if_running": ("bool", False)}, lethal=True,
        doc="watchdog reset: silence, then a reboot whose reconnect takes the old session over (the old "
            "will fires then)",
    ),
    "brownout": FaultKind(
        True, "optional", {}, lethal=True, doc="supply dip: a (silent) power loss of duration (default 0.2 s)"
    ),
    "out_of_memory": FaultKind(
        True, "optional", {"reserve_bytes": ("size", False)},
        doc="a leak takes reserve_bytes (default: all free heap) for duration",
    ),
    "clock_skew": FaultKind(True, "none", {"offset": ("number", True)}, doc="clock off by offset s"),
    "link": FaultKind(
        True, "optional",
        {"latency": ("duration0", False), "jitter": ("duration0", False), "loss": ("probability", False),
         "blackhole": ("bool", False), "bandwidth": ("number", False)},
        doc="the device's link takes this profile for duration",
    ),
    # Board faults (hardware in the loop): only boards of the fleet take them.
    "reset": FaultKind(True, "none", {}, lethal=True, doc="board: reset through DTR/RTS (EN low, then high)"),
    "power_cycle": FaultKind(
        True, "optional", {}, lethal=True,
        doc="board: the hardware map's power-cycle command (e.g. a USB hub switch); duration = time off",
    ),
    "unplug": FaultKind(
        True, "optional", {}, lethal=True, doc="board: USB serial unplugged for duration (virtual only)"
    ),
    "broker_restart": FaultKind(
        False, "optional", {}, device_level=False, doc="broker down for duration"
    ),
    "manager_kill": FaultKind(
        False, "none", {"signal": ("signal", False), "restart_after": ("duration", False)},
        device_level=False, doc="kill the manager (signal 9), restart it from its store after restart_after",
    ),
    "random": FaultKind(
        False, "required",
        {"rate": ("number", True), "kinds": ("kinds", True), "down_min": ("duration", False),
         "down_max": ("duration", False)},
        device_level=False,
        doc="seeded random device faults, rate per second over duration, among target (default: all)",
    ),
}  # fmt: skip
# Our ``duration`` under the name twin.faults gives it, per kind.
DURATION_KEYS = {
    "power_loss": "off_for", "clean_shutdown": "off_for", "wifi_drop": "duration", "link": "duration",
    "out_of_memory": "duration", "broker_restart": "downtime",
}  # fmt: skip
LINK_KEYS = {"latency": "latency_s", "jitter": "jitter_s", "loss": "loss", "blackhole": "blackhole",
             "bandwidth": "bandwidth_bps"}  # fmt: skip
FAULT_KINDS = tuple(FAULTS)
LETHAL_FAULTS = frozenset(k for k, f in FAULTS.items() if f.lethal)
BOARD_ONLY_FAULTS = frozenset({"reset", "power_cycle", "unplug"})
RANDOM_KINDS = ("power_loss", "wifi_drop", "reboot", "brownout", "out_of_memory", "clean_shutdown")


def read_fault(
    r: Reader,
    item: Node,
    path: str,
    kind: str,
    has_target: bool,
    duration: float | None,
    params_node: Node | None,
) -> dict[str, Any]:
    """Check one fault's target, duration and params against its kind; returns the typed params."""
    spec = FAULTS[kind]
    if spec.needs_target and not has_target:
        r.error(item, path, f"a {kind} fault needs a 'target' (a device name, glob or selector)")
    if not spec.needs_target and has_target and kind != "random":
        r.error(item, f"{path}.target", f"a {kind} fault affects the whole run and takes no target")
    if spec.duration == "required" and duration is None:
        r.error(item, path, f"a {kind} fault needs a 'duration'")
    if spec.duration == "none" and duration is not None:
        r.error(item, f"{path}.duration", f"a {kind} fault takes no duration")
    typed = _typed_params(r, params_node, f"{path}.params", spec) if params_node is not None else {}
    given = {str(r.plain(k)) for k, _ in params_node.value} if isinstance(params_node, MappingNode) else set()
    missing = [n for n, (_, req) in spec.params.items() if req and n not in given]
    for name in missing:
        r.error(params_node or item, f"{path}.params", f"missing required parameter {name!r} for {kind}")
    _delegate(r, item, path, kind, duration, typed)
    return typed


def _typed_params(r: Reader, node: Node, path: str, spec: FaultKind) -> dict[str, Any]:
    m = r.mapping(node, path, spec.params)
    out: dict[str, Any] = {}
    for name, value in (m or {}).items():
        kind = spec.params[name][0]
        where = f"{path}.{name}"
        got: Any
        if kind == "duration":
            got = r.duration(value, where)
        elif kind == "duration0":
            got = r.duration(value, where, positive=False)
        elif kind == "int":
            got = r.integer(value, where, minimum=1)
        elif kind == "size":
            got = r.size(value, where)
        elif kind == "bool":
            got = r.boolean(value, where)
        elif kind == "probability":
            got = r.number(value, where, minimum=0, maximum=1)
        elif kind == "signal":
            got = r.integer(value, where)
            if got is not None and got not in (9, 15):
                r.error(value, where, f"must be 9 (SIGKILL) or 15 (SIGTERM), got {got}")
        elif kind == "kinds":
            got = r.strings(value, where)
            for k in got or ():
                if k not in RANDOM_KINDS:
                    r.error(
                        value,
                        where,
                        f"unknown random fault kind {k!r} (choose from {', '.join(RANDOM_KINDS)})",
                    )
        else:
            got = r.number(value, where)
        if got is not None:
            out[name] = got
    return out


def to_fault_mapping(kind: str, duration: float | None, params: dict[str, Any]) -> dict[str, Any] | None:
    """The mapping ``twin.faults.fault_from_mapping`` takes for this fault; None for kinds the runner
    composes itself (wifi_flap, brownout, random)."""
    if kind in ("wifi_flap", "brownout", "random") or kind in BOARD_ONLY_FAULTS:
        return None
    data: dict[str, Any] = {"type": kind}
    if kind == "link":
        data["profile"] = {LINK_KEYS[k]: v for k, v in params.items()}
    elif kind == "manager_kill":
        data.update({k: v for k, v in params.items() if k != "signal"})
    else:
        data.update(params)
    if duration is not None and kind in DURATION_KEYS:
        data[DURATION_KEYS[kind]] = duration
    return data


def _delegate(
    r: Reader, item: Node, path: str, kind: str, duration: float | None, params: dict[str, Any]
) -> None:
    """Let ``twin.faults`` check the fault too, when it is installed: it defines what the runner injects."""
    data = to_fault_mapping(kind, duration, params)
    if data is None or importlib.util.find_spec("twin.faults") is None:
        return
    build = getattr(importlib.import_module("twin.faults"), "fault_from_mapping", None)
    if build is None:
        return
    try:
        build(data, path)
    except (ValueError, TypeError, KeyError) as exc:
        r.error(item, path, str(exc).removeprefix(f"{path}: "))
