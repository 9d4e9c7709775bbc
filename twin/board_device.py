"""A twin esp32s3 device as the network side of a virtual board (``hil.vfirmware.VirtualDevice``).

The board's console runs on its serial transport's thread (the ``SerialBoard`` reader polling an
``esp32sim://`` port, or a ``PtyBoard`` thread); the ``SimDevice`` lives on the asyncio loop and the
simpy clock. The two meet here and nowhere else:

- console → device (``provision``, ``reboot``, ``halt``): handed to the loop with
  ``loop.call_soon_threadsafe`` and run inside the simulation by ``clock.inject``;
- device → console (wifi_up, mqtt_connected, heartbeat, task_start, ...): queued under a lock by the
  device's listener and printed by the console at its next ``tick``, as the firmware's log would;
- ``status()``: a snapshot the loop refreshes with every device event.

As on the firmware, the device stays off until the board has been provisioned over the console; a
reboot (reset, power cycle, replug) is a power cycle of the device: fresh engine, new MQTT session.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from hil.vfirmware import Emit
from twin.device import SimDevice

HEAP_EVERY_S = 10.0  # the firmware's periodic heap line (CONSOLE.md)


def parse_broker(value: str) -> tuple[str, int]:
    """``HOST:PORT`` as typed in ``prop provision``; a clear error naming the value otherwise."""
    host, _, port = value.rpartition(":")
    if not host or "/" in host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"broker must be HOST:PORT, got {value!r}")
    return host, int(port)


class BoardDevice:
    """``VirtualDevice`` over ``device``; ``loop`` is the loop that drives the device's simulation."""

    def __init__(self, device: SimDevice, loop: asyncio.AbstractEventLoop) -> None:
        self.device = device
        self.loop = loop
        self.provisioned: dict[str, str] | None = None
        self._lock = threading.Lock()
        self._pending: list[tuple[str, dict[str, object], str]] = []
        self._emit: Emit = lambda event, fields, level: None
        self._halted = True
        self._snapshot: dict[str, object] = {"state": "idle", "wifi": "down", "mqtt": "disconnected",
                                             "tasks": 0, "heap_free": 0}  # fmt: skip
        self._next_heap: float | None = None
        self._heap_total = 0
        self._wifi = False  # loop side: between wifi_up and wifi_down / power off
        device.listener = self._on_device  # called on the loop

    @property
    def name(self) -> str:
        return self.device.name

    # ------------------------------------------------------------------ console side (board thread)
    def attach(self, emit: Emit) -> None:
        self._emit = emit

    def halt(self) -> None:
        with self._lock:
            self._pending.clear()  # what the chip had not printed yet is lost with it
            self._halted = True
        self._to_loop(self._power_off)

    def reboot(self, reset: str, now: float) -> None:
        with self._lock:
            self._pending.clear()
            self._halted = False
            self._next_heap = now + HEAP_EVERY_S
            config = self.provisioned
        if config is not None:
            # Stored credentials: the firmware announces them at boot and joins again.
            self._emit("provisioned", _announced(config), "inf")
            self._to_loop(self._power_cycle)

    def provision(self, config: Mapping[str, str], now: float) -> None:
        host, port = parse_broker(config["broker"])
        stored = dict(config)
        with self._lock:
            self.provisioned = stored
        self._emit("provisioned", _announced(stored), "inf")
        self._to_loop(self._apply, stored, host, port)

    def status(self, now: float) -> dict[str, object]:
        with self._lock:
            return dict(self._snapshot)

    def tick(self, now: float) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
            heap = self._next_heap is not None and now >= self._next_heap
            if heap:
                self._next_heap = now + HEAP_EVERY_S
            snapshot = dict(self._snapshot)
        for event, fields, level in pending:
            self._emit(event, fields, level)
        if heap and self._heap_total:
            free = int(str(snapshot["heap_free"]))
            used = self._heap_total - free
            self._emit("heap", {"free": free, "used": used, "max_used": used}, "inf")

    # ------------------------------------------------------------------ device side (the loop)
    def _to_loop(self, fn: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the run is over and its loop closed: nothing to do
            self.loop.call_soon_threadsafe(self.device.shared.clock.inject, fn, *args)

    def _apply(self, config: dict[str, str], host: str, port: int) -> None:
        d = self.device
        old = d.config.proplet_id
        # Like the firmware: user name = proplet id, password = the provisioned api_key (none if empty).
        d.config = replace(d.config, host=host, port=port, domain=config["domain"],
                           channel=config["channel"], proplet_id=config["proplet_id"],
                           username=config["proplet_id"], password=config.get("api_key") or None)  # fmt: skip
        if d.config.proplet_id != old:
            d.trace.emit(d.now, "device", d.name, proplet_id=d.config.proplet_id)
        self._power_cycle()

    def _power_cycle(self) -> None:
        self._wifi = False
        # Always through power_loss: it ends the previous life (its boot process included) for good.
        self.device.power_loss(None)
        if not self._halted:
            self.device.power_on(0.0)
        self._refresh()

    def _power_off(self) -> None:
        if self.device.powered:
            self.device.power_loss(None)
        self._wifi = False
        self._refresh()

    def _on_device(self, event: str, fields: dict[str, object]) -> None:
        level = "wrn" if event in ("wifi_down", "mqtt_disconnected") else "err" if event == "oom" else "inf"
        if event == "task_end" and fields.get("ok") == 0:
            level = "wrn"
        if event in ("wifi_up", "wifi_down"):
            self._wifi = event == "wifi_up"
        self._refresh()
        with self._lock:
            if not self._halted:
                self._pending.append((event, fields, level))

    def _refresh(self) -> None:
        d = self.device
        connected = d.engine is not None and d.engine.connected and d.mqtt is not None
        snapshot: dict[str, object] = {
            "state": "running" if d.jobs else "idle",
            "wifi": "up" if self._wifi and d.powered else "down",
            "mqtt": "connected" if connected and not d.wifi_down else "disconnected",
            "tasks": len(d.jobs),
            "heap_free": max(0, d.memory.free_bytes) if d.memory is not None else 0,
        }
        with self._lock:
            if d.memory is not None:
                self._heap_total = d.memory.total_bytes
            self._snapshot = snapshot


def _announced(config: Mapping[str, str]) -> dict[str, object]:
    return {k: config[k] for k in ("proplet_id", "broker", "domain", "channel")}


__all__ = ["BoardDevice", "parse_broker"]
