"""Boards in scenarios: open the boards a scenario names, provision them to its broker, report their
console to the trace, and inject board faults (reset, power cycle, serial unplug).

The twin's scenario runner owns the clock and the trace; it hands in `on_console(device, t, data)`,
called from the boards' reader threads with `t` in seconds since `t0` (the runner's start, on the
`time.monotonic` axis) and `data` = {"line", "kind", and for events "event", "level", "fields"},
ready for `trace.emit(t, "console", device, **data)`.

A scenario names a board by `port`: a hardware-map name (`--hil-map`), a serial port path, an
`esp32sim://NAME` URL, or `virtual` for a fresh simulated board (optionally behind a `VirtualDevice`
from `device_factory`, e.g. the twin's esp32s3 model).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hil import esp32sim
from hil.board import BoardError, Provisioning, SerialBoard
from hil.console import ConsoleEvent, Item
from hil.rig import BoardSpec, resolve_port
from hil.vfirmware import VirtualDevice

OnConsole = Callable[[str, float, dict[str, Any]], None]
FAULTS = ("reset", "power_cycle", "unplug", "replug")


def console_data(item: Item) -> dict[str, Any]:
    if isinstance(item, ConsoleEvent):
        return {"line": item.raw, "kind": "event", "event": item.event, "level": item.level,
                "fields": dict(item.fields)}
    return {"line": item.text, "kind": item.kind}


def task_of(data: dict[str, Any]) -> str | None:
    """The task a console item names (``task_start id=...``, ``task_end id=...``, ``oom id=...``)."""
    fields = data.get("fields")
    raw = fields.get("id") if isinstance(fields, dict) else None
    if not isinstance(raw, str):
        return None
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        return None


def console_report(device: str, data: dict[str, Any], at: float) -> tuple[str, str | None, dict[str, Any]]:
    """A console item (``console_data``) as a timeline report (docs/timelines.md): ``("tasks", id,
    event)`` when it names a task, else ``("proplets", None, event)`` for the board's proplet."""
    fields: dict[str, Any] = {"device": device}
    if data.get("event"):
        fields["event"] = str(data["event"])
    event = {"kind": "console", "cause": str(data.get("line", ""))[:1024], "at": round(at, 6),
             "source": "console", "fields": fields}  # fmt: skip
    task_id = task_of(data)
    return ("tasks", task_id, event) if task_id is not None else ("proplets", None, event)


class ScenarioBoards:
    def __init__(self, run_dir: Path, *, hw_map: list[BoardSpec] | None = None,
                 on_console: OnConsole | None = None, t0: float | None = None,
                 device_factory: Callable[[str], VirtualDevice] | None = None,
                 lock_dir: Path | None = None) -> None:
        self.run_dir = run_dir
        self.hw_map = {spec.name: spec for spec in hw_map or []}
        self.on_console = on_console
        self.t0 = time.monotonic() if t0 is None else t0
        self.device_factory = device_factory
        self.lock_dir = lock_dir
        self.boards: dict[str, SerialBoard] = {}
        self._sims: dict[str, esp32sim.SimBoard] = {}
        self._created: list[str] = []

    def _report(self, device: str, item: Item) -> None:
        if self.on_console is not None:
            self.on_console(device, item.t - self.t0, console_data(item))

    def open(self, device: str, port: str) -> SerialBoard:
        if device in self.boards:
            raise BoardError(f"scenario board {device!r} is already open")
        kwargs: dict[str, Any] = {"on_item": self._report}
        if self.lock_dir is not None:
            kwargs["lock_dir"] = self.lock_dir
        spec = self.hw_map.get(port)
        if spec is not None:
            resolved = resolve_port(spec)
            kwargs.update(baud=spec.baud, flash_config=spec.flash_config(), power_cycle_cmd=spec.power_cycle)
        elif port == "virtual":
            sim_name = f"{device}-{uuid.uuid4().hex[:8]}"
            factory = self.device_factory
            sim = esp32sim.create_board(sim_name, factory(device) if factory is not None else None)
            self._created.append(sim_name)
            time.sleep(esp32sim.RC_DELAY_S * 2)  # let the power-on boot pass before the port opens
            sim.poll()
            resolved = f"esp32sim://{sim_name}"
        else:
            resolved = port
        if resolved.startswith("esp32sim://"):
            sim = esp32sim.get_board(resolved.removeprefix("esp32sim://"))
            self._sims[device] = sim
            kwargs["power_cycle_hook"] = sim.power_cycle
        board = SerialBoard(device, resolved, self.run_dir, **kwargs)
        self.boards[device] = board
        return board

    def provision_all(self, *, broker: str, domain: str, channel: str, api_key: str = "",
                      ssid: str = "propeller-lab", psk: str = "propeller", reset_first: bool = True,
                      proplet_ids: Mapping[str, str] | None = None) -> dict[str, ConsoleEvent]:
        """Reset each board (when asked), then provision it; proplet ids default to device names."""
        done: dict[str, ConsoleEvent] = {}
        for device, board in self.boards.items():
            if reset_first:
                board.reset()
            proplet_id = (proplet_ids or {}).get(device, device)
            done[device] = board.provision(Provisioning(ssid, psk, broker, proplet_id, api_key or "-",
                                                        domain, channel))
        return done

    def fault(self, device: str, kind: str) -> None:
        """reset | power_cycle | unplug | replug. Unplug needs a simulated board (a hub: power_cycle)."""
        if kind not in FAULTS:
            raise ValueError(f"bad board fault {kind!r}: expected one of {', '.join(FAULTS)}")
        board = self.boards.get(device)
        if board is None:
            raise BoardError(f"no scenario board named {device!r} (open: {', '.join(self.boards) or 'none'})")
        if kind == "reset":
            board.reset()
        elif kind == "power_cycle":
            board.power_cycle()
        else:
            sim = self._sims.get(device)
            if sim is None:
                raise BoardError(f"board {device!r}: {kind} is only possible on a simulated board; "
                                 "on real hardware use a power_cycle command (e.g. uhubctl)")
            if kind == "unplug":
                sim.unplug()
            else:
                sim.replug()

    def close(self) -> None:
        for board in self.boards.values():
            board.close()
        self.boards.clear()
        for name in self._created:
            esp32sim.remove_board(name)
        self._created.clear()
        self._sims.clear()
