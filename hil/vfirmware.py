"""The far end of a virtual board: our firmware's console (firmware/CONSOLE.md) in Python.

`FirmwareConsole` is the shell and the log output; what the board does on the network is delegated to
a `VirtualDevice` (the twin's esp32s3 model implements it; `StandInDevice` here is a timer-driven
stand-in without MQTT). Both are sans-I/O: they take `now` and the console queues the bytes it would
put on the wire. The transports (a pty in virtual_board.py, the esp32sim:// port in esp32sim.py)
move those bytes and supply the clock.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from hil.console import PROMPT, FieldSyntaxError, format_event, format_status, parse_fields

Emit = Callable[[str, Mapping[str, object], str], None]  # (event, fields, level)

PROVISION_KEYS = ("ssid", "psk", "broker", "proplet_id", "api_key", "domain", "channel")
RESET_REASONS = ("power_on", "sw", "wdt", "brownout", "ext")


class VirtualDevice(Protocol):
    """The network side of a virtual board. It reports what happens through the attached `emit`."""

    def attach(self, emit: Emit) -> None: ...
    def halt(self) -> None: ...  # the chip stops (EN low, power off): the network side goes silent
    def reboot(self, reset: str, now: float) -> None: ...
    def provision(self, config: Mapping[str, str], now: float) -> None: ...
    def status(self, now: float) -> dict[str, object]: ...
    def tick(self, now: float) -> None: ...


def validate_provisioning(args: Mapping[str, str]) -> str | None:
    """The shell's error reason for bad `prop provision` arguments, or None when they are fine."""
    for key in args:
        if key not in PROVISION_KEYS:
            return f"unknown key: {key}"
    for key in PROVISION_KEYS:
        if not args.get(key):
            return f"missing key: {key}"
    host, _, port = args["broker"].rpartition(":")
    if not host or "/" in host or not port.isdigit() or not 0 < int(port) < 65536:
        return f"bad value: broker={args['broker']}"
    return None


@dataclass
class StandInTimings:
    wifi_s: float = 0.05
    mqtt_s: float = 0.10
    heartbeat_s: float = 1.0
    heap_s: float = 10.0


class StandInDevice:
    """Emits the lines of a healthy, provisioned board on a timer; no MQTT, no tasks."""

    def __init__(self, timings: StandInTimings | None = None, heap_total: int = 196_608,
                 heap_used: int = 41_200) -> None:
        self.timings = timings or StandInTimings()
        self.heap_total = heap_total
        self.heap_used = heap_used
        self.config: dict[str, str] = {}
        self._emit: Emit = lambda event, fields, level: None
        self._wifi = self._mqtt = False
        self._wifi_at: float | None = None
        self._mqtt_at: float | None = None
        self._next_heartbeat = self._next_heap = float("inf")
        self._seq = 0

    def attach(self, emit: Emit) -> None:
        self._emit = emit

    def halt(self) -> None:
        self._wifi = self._mqtt = False
        self._wifi_at = self._mqtt_at = None
        self._next_heartbeat = self._next_heap = float("inf")

    def reboot(self, reset: str, now: float) -> None:
        self._wifi = self._mqtt = False
        self._seq = 0
        self._next_heap = now + self.timings.heap_s
        self._next_heartbeat = float("inf")
        if self.config:
            self._start(now)
        else:
            self._wifi_at = self._mqtt_at = None

    def provision(self, config: Mapping[str, str], now: float) -> None:
        self.config = dict(config)
        self._wifi = self._mqtt = False
        self._start(now)

    def _start(self, now: float) -> None:
        c = self.config
        self._emit("provisioned", {"proplet_id": c["proplet_id"], "broker": c["broker"],
                                   "domain": c["domain"], "channel": c["channel"]}, "inf")
        self._wifi_at = now + self.timings.wifi_s
        self._mqtt_at = now + self.timings.mqtt_s

    def drop_wifi(self, now: float, reason: str = "beacon_timeout") -> None:
        """A fault for tests: the link goes down and comes back after the usual delays."""
        if self._mqtt:
            self._emit("mqtt_disconnected", {"reason": "wifi_down"}, "wrn")
        self._wifi = self._mqtt = False
        self._emit("wifi_down", {"reason": reason}, "wrn")
        self._next_heartbeat = float("inf")
        if self.config:
            self._wifi_at = now + self.timings.wifi_s
            self._mqtt_at = now + self.timings.mqtt_s

    def status(self, now: float) -> dict[str, object]:
        return {"state": "idle", "wifi": "up" if self._wifi else "down",
                "mqtt": "connected" if self._mqtt else "disconnected", "tasks": 0,
                "heap_free": self.heap_total - self.heap_used}

    def tick(self, now: float) -> None:
        if self._wifi_at is not None and now >= self._wifi_at:
            self._wifi_at, self._wifi = None, True
            self._emit("wifi_up", {"ip": "192.168.4.23", "rssi": -55}, "inf")
        if self._wifi and self._mqtt_at is not None and now >= self._mqtt_at:
            self._mqtt_at, self._mqtt = None, True
            self._emit("mqtt_connected", {"broker": self.config["broker"]}, "inf")
            self._emit("discovery_sent", {"proplet_id": self.config["proplet_id"]}, "inf")
            self._next_heartbeat = now + self.timings.heartbeat_s
        if now >= self._next_heartbeat:
            self._seq += 1
            self._emit("heartbeat", {"seq": self._seq}, "inf")
            self._next_heartbeat = now + self.timings.heartbeat_s
        if now >= self._next_heap:
            self._emit("heap", {"free": self.heap_total - self.heap_used, "used": self.heap_used,
                                "max_used": self.heap_used}, "inf")
            self._next_heap = now + self.timings.heap_s


class FirmwareConsole:
    """Shell + logger of one virtual board. Feed it typed bytes; take the bytes it prints."""

    def __init__(self, device: VirtualDevice, *, board: str = "esp32s3_devkitc",
                 version: str = "0.1.0") -> None:
        self.device = device
        self.board = board
        self.version = version
        self.running = False
        self.boots = 0
        self._out = bytearray()
        self._line = bytearray()
        self._boot_at = 0.0
        self._now = 0.0
        self._prompt_shown = False
        self._after_cr = False
        device.attach(self._log)

    def boot(self, reset: str, now: float) -> None:
        if reset not in RESET_REASONS:
            raise ValueError(f"bad reset reason {reset!r}: expected one of {', '.join(RESET_REASONS)}")
        self.running, self.boots = True, self.boots + 1
        self._boot_at = self._now = now
        self._line.clear()
        self._prompt_shown = False
        self._log("boot", {"version": self.version, "reset": reset, "board": self.board}, "inf")
        self.device.reboot(reset, now)
        self._prompt()

    def halt(self) -> None:
        """The chip is held in reset or sits in the ROM: the firmware neither prints nor listens."""
        self.running = False
        self._line.clear()
        self.device.halt()

    def print_raw(self, text: str) -> None:
        self._out += text.encode()

    def take_output(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def tick(self, now: float) -> None:
        if self.running:
            self._now = now
            self.device.tick(now)

    def receive(self, data: bytes, now: float) -> None:
        if not self.running:
            return
        self._now = now
        for byte in data:
            after_cr, self._after_cr = self._after_cr, byte == 0x0D
            if byte in (0x0D, 0x0A):
                if byte == 0x0A and after_cr:
                    continue  # the \n of a \r\n pair
                command = self._line.decode("utf-8", "replace").strip()
                self._line.clear()
                self._out += b"\r\n"
                self._prompt_shown = False
                self._execute(command, now)
                if self.running and not self._prompt_shown:
                    self._prompt()
            elif byte in (0x08, 0x7F):
                if self._line:
                    self._line = self._line[:-1]
                    self._out += b"\x08 \x08"
            elif byte >= 0x20:
                self._line.append(byte)
                self._out.append(byte)

    def _prompt(self) -> None:
        self._out += f"{PROMPT} ".encode() + bytes(self._line)
        self._prompt_shown = True

    def _log(self, event: str, fields: Mapping[str, object], level: str) -> None:
        if not self.running:
            return
        line = format_event(event, fields, uptime_s=self._now - self._boot_at, level=level)
        # Zephyr's shell erases its prompt line, prints the log line, then redraws prompt and input.
        if self._prompt_shown:
            self._out += b"\r\x1b[K"
        self._out += line.encode() + b"\r\n"
        if self._prompt_shown:
            self._prompt()

    def _say(self, text: str) -> None:
        self._out += text.encode() + b"\r\n"

    def _execute(self, command: str, now: float) -> None:
        if not command:
            return
        words = command.split()
        if words[:2] == ["prop", "provision"]:
            self._provision(command.split(None, 2)[2] if len(words) > 2 else "", now)
        elif words == ["prop", "status"]:
            fields = dict(self.device.status(now))
            fields["uptime_ms"] = int((now - self._boot_at) * 1000)
            self._say(format_status(fields))
            self._say("OK")
        elif words[:2] == ["kernel", "reboot"]:
            if words[2:] not in (["cold"], ["warm"]):
                self._say("ERROR usage: kernel reboot cold|warm")
                return
            self.boot("sw", now)
        else:
            self._say(f"{words[0]}: command not found")

    def _provision(self, args_text: str, now: float) -> None:
        try:
            args = parse_fields(args_text)
        except FieldSyntaxError as exc:
            self._say(f"ERROR bad arguments: {exc}")
            return
        reason = validate_provisioning(args)
        if reason is not None:
            self._say(f"ERROR {reason}")
            return
        self.device.provision(args, now)
        self._say("OK")
