"""The rig: hardware map (YAML, like Zephyr Twister's), USB discovery, and per-port locks.

Map format, a list of boards:

    - name: s3-a                 # required, unique; scenarios and tests name boards by it
      platform: esp32s3_devkitc  # required
      serial: /dev/ttyACM0       # port path or URL; or find the port by `id` / `location`
      id: "F4:12:FA:00:11:22"    # USB serial number
      location: "1-1.2"          # USB location (hub path)
      runner: esptool            # esptool | west
      baud: 115200               # console baud
      flash_baud: 460800
      write_flash: write_flash   # write_flash (esptool < 5) | write-flash (esptool 5)
      build_dir: build           # for west
      power_cycle: "uhubctl -l 1-1 -p 2 -a cycle"
      fixtures: [wifi_ap]
      connected: true
      product: "USB JTAG/serial debug unit"
      vid_pid: "303a:1001"
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hil.flash import RUNNERS, WRITE_FLASH_SPELLINGS, FlashConfig

# USB VID:PID of ESP32-S3 consoles: the chip's own USB-Serial/JTAG and the common bridges on DevKits.
KNOWN_USB = {
    (0x303A, 0x1001): "ESP32-S3 USB-Serial/JTAG",
    (0x10C4, 0xEA60): "CP210x",
    (0x1A86, 0x7523): "CH340",
    (0x1A86, 0x55D4): "CH9102",
    (0x0403, 0x6001): "FTDI FT232R",
    (0x0403, 0x6010): "FTDI FT2232",
    (0x0403, 0x6015): "FTDI FT231X",
}
def default_lock_dir() -> Path:
    """$PROPELLER_LOCK_DIR, else ~/.cache/propeller/locks: shared by every run of this user."""
    return Path(os.environ.get("PROPELLER_LOCK_DIR") or Path.home() / ".cache" / "propeller" / "locks")


class MapError(ValueError):
    """A bad hardware map; the message names the file, line and key."""


class PortBusy(RuntimeError):
    pass


@dataclass(frozen=True)
class BoardSpec:
    name: str
    platform: str
    serial: str | None = None
    id: str | None = None
    location: str | None = None
    runner: str = "esptool"
    baud: int = 115200
    flash_baud: int = 460800
    write_flash: str = "write_flash"
    build_dir: str | None = None
    power_cycle: str | None = None
    fixtures: tuple[str, ...] = ()
    connected: bool = True
    product: str | None = None
    vid_pid: str | None = None

    def flash_config(self) -> FlashConfig:
        return FlashConfig(runner=self.runner, baud=self.flash_baud, write_flash=self.write_flash,
                           build_dir=Path(self.build_dir) if self.build_dir else None)


_STR_KEYS = {"name", "platform", "serial", "id", "location", "build_dir", "power_cycle", "product",
             "vid_pid", "runner", "write_flash"}
_INT_KEYS = {"baud", "flash_baud"}
_CHOICES = {"runner": RUNNERS, "write_flash": WRITE_FLASH_SPELLINGS}


def _where(path: str, node: yaml.Node) -> str:
    return f"{path}:{node.start_mark.line + 1}"


def _scalar(path: str, key: str, node: yaml.Node) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        raise MapError(f"{_where(path, node)}: key {key!r} must be a single value")
    value = yaml.safe_load(yaml.serialize(node))
    if key in _INT_KEYS:
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise MapError(f"{_where(path, node)}: key {key!r} must be a positive integer, got {value!r}")
    elif key == "connected":
        if not isinstance(value, bool):
            raise MapError(f"{_where(path, node)}: key 'connected' must be true or false, got {value!r}")
    else:
        if value is None or isinstance(value, bool | list | dict):
            raise MapError(f"{_where(path, node)}: key {key!r} must be a string, got {value!r}")
        value = str(value)
        if key in _CHOICES and value not in _CHOICES[key]:
            raise MapError(f"{_where(path, node)}: key {key!r} must be one of "
                           f"{', '.join(_CHOICES[key])}, got {value!r}")
        if key == "vid_pid" and not re.fullmatch(r"[0-9a-fA-F]{4}:[0-9a-fA-F]{4}", value):
            raise MapError(f"{_where(path, node)}: key 'vid_pid' must look like 303a:1001, got {value!r}")
    return value


def _board(path: str, node: yaml.Node) -> BoardSpec:
    if not isinstance(node, yaml.MappingNode):
        raise MapError(f"{_where(path, node)}: each board must be a mapping of key: value")
    values: dict[str, Any] = {}
    for key_node, value_node in node.value:
        key = str(key_node.value)
        if key in values:
            raise MapError(f"{_where(path, key_node)}: duplicate key {key!r}")
        if key == "fixtures":
            if not isinstance(value_node, yaml.SequenceNode):
                raise MapError(f"{_where(path, value_node)}: key 'fixtures' must be a list of strings")
            values[key] = tuple(str(_scalar(path, "fixtures", item)) for item in value_node.value)
        elif key in _STR_KEYS | _INT_KEYS | {"connected"}:
            values[key] = _scalar(path, key, value_node)
        else:
            known = ", ".join(sorted(_STR_KEYS | _INT_KEYS | {"connected", "fixtures"}))
            raise MapError(f"{_where(path, key_node)}: unknown key {key!r} (known: {known})")
    for required in ("name", "platform"):
        if required not in values:
            raise MapError(f"{_where(path, node)}: board is missing required key {required!r}")
    if values.get("runner") == "west" and "build_dir" not in values:
        raise MapError(f"{_where(path, node)}: board {values['name']!r} uses runner west but has no "
                       "key 'build_dir'")
    return BoardSpec(**values)


def parse_map(text: str, path: str = "<map>") -> list[BoardSpec]:
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise MapError(f"{path}: not valid YAML: {exc}") from exc
    if root is None:
        return []
    if not isinstance(root, yaml.SequenceNode):
        raise MapError(f"{_where(path, root)}: a hardware map is a list of boards")
    boards: list[BoardSpec] = []
    seen: dict[str, int] = {}
    for item in root.value:
        spec = _board(path, item)
        if spec.name in seen:
            raise MapError(f"{_where(path, item)}: duplicate board name {spec.name!r} "
                           f"(first at line {seen[spec.name]})")
        seen[spec.name] = item.start_mark.line + 1
        boards.append(spec)
    return boards


def load_map(path: Path) -> list[BoardSpec]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise MapError(f"{path}: cannot read hardware map: {exc}") from exc
    return parse_map(text, str(path))


def dump_map(boards: Iterable[BoardSpec]) -> str:
    defaults = BoardSpec(name="", platform="")
    rows = []
    for b in boards:
        row: dict[str, Any] = {"name": b.name, "platform": b.platform}
        for key in ("serial", "id", "location", "product", "vid_pid", "runner", "baud", "flash_baud",
                    "write_flash", "build_dir", "power_cycle", "connected"):
            value = getattr(b, key)
            if value is not None and value != getattr(defaults, key):
                row[key] = value
        if b.fixtures:
            row["fixtures"] = list(b.fixtures)
        rows.append(row)
    return yaml.safe_dump(rows, sort_keys=False)


# -- discovery ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FoundPort:
    device: str
    vid: int
    pid: int
    serial_number: str | None
    location: str | None
    product: str | None

    @property
    def kind(self) -> str:
        return KNOWN_USB[(self.vid, self.pid)]


def _comports() -> list[Any]:
    from serial.tools import list_ports

    return list(list_ports.comports())


def discover(comports: Callable[[], Sequence[Any]] | None = None) -> list[FoundPort]:
    """Attached ports whose USB VID:PID is an ESP32-S3 console or a usual DevKit bridge."""
    found = []
    for port in (comports or _comports)():
        vid, pid = getattr(port, "vid", None), getattr(port, "pid", None)
        if vid is None or pid is None or (vid, pid) not in KNOWN_USB:
            continue
        found.append(FoundPort(port.device, vid, pid, getattr(port, "serial_number", None),
                               getattr(port, "location", None), getattr(port, "product", None)))
    return sorted(found, key=lambda p: p.device)


def specs_from_ports(ports: Iterable[FoundPort], platform: str = "esp32s3_devkitc") -> list[BoardSpec]:
    return [BoardSpec(name=f"board{i}", platform=platform, serial=p.device, id=p.serial_number,
                      location=p.location, product=p.product or p.kind,
                      vid_pid=f"{p.vid:04x}:{p.pid:04x}")
            for i, p in enumerate(ports, 1)]


def resolve_port(spec: BoardSpec, comports: Callable[[], Sequence[Any]] | None = None) -> str:
    """The port of a mapped board: by serial number or USB location first (ttyACM numbers move)."""
    if spec.id or spec.location:
        for port in discover(comports):
            by_id = spec.id is not None and port.serial_number == spec.id
            if by_id or (spec.location is not None and port.location == spec.location):
                return port.device
        if not spec.serial:
            raise PortBusy(f"board {spec.name!r}: no attached port with id={spec.id!r} "
                           f"location={spec.location!r}")
    if not spec.serial:
        raise MapError(f"board {spec.name!r} has none of serial, id, location")
    return spec.serial


# -- locks ----------------------------------------------------------------------------------------
@dataclass
class PortLock:
    """An exclusive flock per port, so two runs never share a board. Released by release() or exit."""

    port: str
    lock_dir: Path = field(default_factory=default_lock_dir)
    _fd: int | None = None

    @property
    def path(self) -> Path:
        return self.lock_dir / (re.sub(r"[^A-Za-z0-9_.-]+", "_", self.port).strip("_") + ".lock")

    def acquire(self) -> PortLock:
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise PortBusy(f"port {self.port} is in use by another run (pid {holder}; "
                           f"lock {self.path})") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
            self._fd = None

    def __enter__(self) -> PortLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
