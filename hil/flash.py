"""Flash a board with esptool or `west flash`, run as a subprocess so its whole output is kept.

esptool runs as an executable (`esptool`, else `python -m esptool`), never imported: the process
boundary is what tests replace with a fake on PATH, and it keeps esptool's own serial handling and
exit codes out of our process.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

RUNNERS = ("esptool", "west")
WRITE_FLASH_SPELLINGS = ("write_flash", "write-flash")  # esptool <5 / esptool 5
TAIL_LINES = 15


class FlashError(RuntimeError):
    pass


@dataclass(frozen=True)
class FlashConfig:
    runner: str = "esptool"
    chip: str = "esp32s3"
    baud: int = 460800
    address: str = "0x0"
    write_flash: str = "write_flash"
    before: str = "default_reset"
    after: str = "hard_reset"
    build_dir: Path | None = None
    esptool: Sequence[str] = field(default_factory=tuple)  # empty: find it
    west: Sequence[str] = ("west",)
    timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if self.runner not in RUNNERS:
            raise ValueError(f"bad flash runner {self.runner!r}: expected one of {', '.join(RUNNERS)}")
        if self.write_flash not in WRITE_FLASH_SPELLINGS:
            raise ValueError(f"bad write_flash spelling {self.write_flash!r}: expected one of "
                             f"{', '.join(WRITE_FLASH_SPELLINGS)}")
        if self.baud <= 0:
            raise ValueError(f"bad flash baud {self.baud!r}: must be a positive integer")


@dataclass(frozen=True)
class FlashResult:
    command: list[str]
    returncode: int
    output: str
    log_path: Path
    duration_s: float


def esptool_executable(config: FlashConfig) -> list[str]:
    if config.esptool:
        return list(config.esptool)
    found = shutil.which("esptool") or shutil.which("esptool.py")
    return [found] if found else [sys.executable, "-m", "esptool"]


def esptool_command(config: FlashConfig, port: str, image: Path) -> list[str]:
    return [*esptool_executable(config), "--chip", config.chip, "--port", port, "--baud",
            str(config.baud), "--before", config.before, "--after", config.after,
            config.write_flash, config.address, str(image)]


def west_command(config: FlashConfig, port: str) -> list[str]:
    if config.build_dir is None:
        raise FlashError("west flash needs a build directory (hardware map key build_dir)")
    return [*config.west, "flash", "--build-dir", str(config.build_dir), "--esp-device", port]


def build_command(config: FlashConfig, port: str, image: Path | None) -> list[str]:
    if config.runner == "west":
        return west_command(config, port)
    if image is None:
        raise FlashError("esptool needs an image file to write")
    if not image.is_file():
        raise FlashError(f"flash image not found: {image}")
    return esptool_command(config, port, image)


def flash(config: FlashConfig, port: str, image: Path | None, log_dir: Path) -> FlashResult:
    """Run the flasher; keep its output in log_dir. FlashError names the exit code and last lines."""
    command = build_command(config, port, image)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"flash-{len(list(log_dir.glob('flash-*.log'))) + 1}.log"
    started = time.monotonic()
    try:
        proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=config.timeout_s, check=False)
    except FileNotFoundError as exc:
        raise FlashError(f"{config.runner}: executable not found: {command[0]} ({exc})") from exc
    except subprocess.TimeoutExpired as exc:
        output = (exc.output or b"").decode("utf-8", "replace")
        log_path.write_text(f"$ {shlex.join(command)}\n{output}\n[timeout after {config.timeout_s}s]\n")
        raise FlashError(f"{config.runner} timed out after {config.timeout_s}s; output: {log_path}") from exc
    duration = time.monotonic() - started
    output = proc.stdout.decode("utf-8", "replace")
    log_path.write_text(f"$ {shlex.join(command)}\n{output}\n[exit {proc.returncode}]\n")
    if proc.returncode != 0:
        tail = "\n".join(output.rstrip().splitlines()[-TAIL_LINES:])
        raise FlashError(f"{config.runner} failed with exit code {proc.returncode}: "
                         f"{shlex.join(command)}\nlast output lines:\n{tail}\n(full output: {log_path})")
    return FlashResult(command, proc.returncode, output, log_path, duration)
