"""`propeller hil discover|calibrate|flash|console`. Each command is a plain function returning an exit
code; errors print one line naming what was wrong and return 2 (usage/input) or 1 (the board)."""

from __future__ import annotations

import argparse
import os
import queue
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hil.board import BoardError, SerialBoard
from hil.calibrate import ARENA_BYTES, CalibrationError, calibrate_files
from hil.console import ConsoleEvent
from hil.flash import FlashConfig, FlashError, flash
from hil.rig import (
    BoardSpec,
    MapError,
    PortBusy,
    discover,
    dump_map,
    load_map,
    resolve_port,
    specs_from_ports,
)
from hil.scenario_boards import console_data, console_report
from orchestrator.core.observations import MAX_EVENTS
from twin.devices.profiles import write_profile


def _fail(message: str, code: int = 2) -> int:
    print(f"propeller hil: {message}", file=sys.stderr)
    return code


def cmd_discover(args: argparse.Namespace) -> int:
    ports = discover()
    if not ports:
        print("no ESP32-S3 boards found (looked for USB-Serial/JTAG 303a:1001, CP210x, CH340, CH9102, FTDI)")
    for port in ports:
        print(f"{port.device}\t{port.vid:04x}:{port.pid:04x}\t{port.kind}\t"
              f"serial={port.serial_number or '-'}\tlocation={port.location or '-'}")
    if args.write:
        path = Path(args.write)
        if path.exists() and not args.force:
            return _fail(f"{path} exists; pass --force to overwrite it")
        path.write_text(dump_map(specs_from_ports(ports, args.platform)))
        print(f"wrote {len(ports)} board(s) to {path}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    arena = getattr(args, "arena", None) or ARENA_BYTES
    try:
        result = calibrate_files((Path(p) for p in args.logs), arena_bytes=arena)
    except CalibrationError as exc:
        return _fail(str(exc))
    print(result.report())
    if getattr(args, "write", None):
        path = write_profile(Path(args.write), result.profile())
        print(f"profile: {path}")
    return 0


def _spec(args: argparse.Namespace) -> BoardSpec:
    if args.port:
        return BoardSpec(name=args.board or "board", platform="esp32s3_devkitc", serial=args.port)
    if not args.map or not args.board:
        raise MapError("give --port PORT, or --map FILE and --board NAME")
    for spec in load_map(Path(args.map)):
        if spec.name == args.board:
            return spec
    raise MapError(f"{args.map}: no board named {args.board!r}")


def cmd_flash(args: argparse.Namespace) -> int:
    try:
        spec = _spec(args)
        config = spec.flash_config()
        if args.runner or args.build_dir:
            config = FlashConfig(runner=args.runner or config.runner, baud=config.baud,
                                 write_flash=config.write_flash,
                                 build_dir=Path(args.build_dir) if args.build_dir else config.build_dir)
        if args.image and not Path(args.image).is_file():
            return _fail(f"flash image not found: {args.image}")
        port = resolve_port(spec)
        result = flash(config, port, Path(args.image) if args.image else None, Path(args.run_dir) / spec.name)
    except (MapError, ValueError) as exc:
        return _fail(str(exc))
    except (FlashError, PortBusy) as exc:
        return _fail(str(exc), 1)
    print(f"flashed {spec.name} on {port} in {result.duration_s:.1f}s; output: {result.log_path}")
    return 0


class ConsoleReporter:
    """``--report-to``: the board's console lines join the manager's timelines (docs/timelines.md):
    a line naming a task on that task, the others on ``proplet_id`` (the tasks running there then)."""

    def __init__(self, api_url: str, proplet_id: str, token: str | None, device: str) -> None:
        from orchestrator.client import ApiClient

        self.client = ApiClient(api_url, token=token)
        self.proplet_id, self.device = proplet_id, device
        self.pending: queue.SimpleQueue[tuple[str, str, dict[str, Any]]] = queue.SimpleQueue()
        self.sent = self.dropped = 0

    def on_item(self, item: Any) -> None:
        """From the serial reader's thread: queue the line (``flush`` sends it)."""
        data = console_data(item)
        if data.get("kind") in ("prompt", "echo"):
            return
        path, task_id, event = console_report(self.device, data, time.time())
        if task_id is not None:
            event["fields"]["proplet_id"] = self.proplet_id
        self.pending.put((path, task_id or self.proplet_id, event))

    def flush(self) -> None:
        from orchestrator.client import ApiError

        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        while not self.pending.empty():
            path, subject_id, event = self.pending.get()
            groups.setdefault((path, subject_id), []).append(event)
        for (path, subject_id), events in groups.items():
            for i in range(0, len(events), MAX_EVENTS):
                chunk = events[i : i + MAX_EVENTS]
                try:
                    self.client.report_events(path, subject_id, chunk)
                    self.sent += len(chunk)
                except ApiError as err:  # the manager away or refusing: the console goes on
                    self.dropped += len(chunk)
                    print(f"propeller hil: console lines not reported: {err}", file=sys.stderr)

    def close(self) -> None:
        self.flush()
        self.client.close()


def cmd_console(args: argparse.Namespace) -> int:
    reporter: ConsoleReporter | None = None
    if getattr(args, "report_to", None) and not getattr(args, "proplet_id", None):
        return _fail("--report-to needs --proplet-id (the proplet the board runs as)")

    def on_item(_name: str, item: Any) -> None:
        print(item.raw if isinstance(item, ConsoleEvent) else item.text, flush=True)
        if reporter is not None:
            reporter.on_item(item)

    try:
        spec = _spec(args)
        port = resolve_port(spec)
        if getattr(args, "report_to", None):
            reporter = ConsoleReporter(args.report_to, args.proplet_id, args.api_token, spec.name)
        board = SerialBoard(spec.name, port, Path(args.run_dir), baud=spec.baud, on_item=on_item)
    except (MapError, ValueError) as exc:
        return _fail(str(exc))
    except (BoardError, PortBusy) as exc:
        return _fail(str(exc), 1)
    try:
        if args.reset:
            board.reset()
        for command in args.send or []:
            board.command(command)
        deadline = time.monotonic() + args.seconds if args.seconds else None
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.1)
            if reporter is not None:
                reporter.flush()
    except KeyboardInterrupt:
        pass
    except BoardError as exc:
        return _fail(str(exc), 1)
    finally:
        board.close()
        if reporter is not None:
            reporter.close()
            sent, dropped = reporter.sent, reporter.dropped
            print(f"console lines reported: {sent}, not reported: {dropped}", file=sys.stderr)
        print(f"console log: {board.log_path}", file=sys.stderr)
    return 0


def _board_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--map", help="hardware map YAML")
    p.add_argument("--board", help="board name in the map")
    p.add_argument("--port", help="serial port or URL instead of a mapped board")
    p.add_argument("--run-dir", default=str(Path(tempfile.gettempdir()) / "propeller-hil"),
                   help="where console and flash logs are kept")


def add_hil_subcommands(subparsers: Any) -> None:
    hil = subparsers.add_parser("hil", help="hardware in the loop: ESP32-S3 boards on serial ports")
    sub = hil.add_subparsers(dest="hil_command", required=True)
    d = sub.add_parser("discover", help="list attached ESP32-S3 boards and write a hardware map")
    d.add_argument("--write", metavar="MAP", help="write a hardware map YAML")
    d.add_argument("--force", action="store_true", help="overwrite an existing map")
    d.add_argument("--platform", default="esp32s3_devkitc", help="board platform the ports are checked for")
    d.set_defaults(func=cmd_discover)
    c = sub.add_parser("calibrate", help="fit the twin's esp32s3 profile from the Zephyr benchmark's output")
    c.add_argument("logs", nargs="+", metavar="LOG", help="board console logs to calibrate from")
    c.add_argument("--arena", type=int, metavar="BYTES",
                   help=f"the benchmark's malloc arena (default {ARENA_BYTES}, its prj.conf)")
    c.add_argument("--write", metavar="FILE.yaml",
                   help="write the fitted profile for scenarios (a fleet group's profile: FILE.yaml)")
    c.set_defaults(func=cmd_calibrate)
    f = sub.add_parser("flash", help="flash a board with esptool or west")
    _board_args(f)
    f.add_argument("--image", help="firmware image (esptool runner)")
    f.add_argument("--runner", choices=("esptool", "west"), help="flashing tool (default: the first found)")
    f.add_argument("--build-dir", help="Zephyr build directory (west runner)")
    f.set_defaults(func=cmd_flash)
    o = sub.add_parser("console", help="watch a board's console (and send shell commands)")
    _board_args(o)
    o.add_argument("--reset", action="store_true", help="reset the board first")
    o.add_argument("--send", action="append", metavar="CMD", help="shell command to run (repeatable)")
    o.add_argument("--seconds", type=float, default=0.0, help="stop after this long (0: until Ctrl-C)")
    o.add_argument("--report-to", metavar="API_URL",
                   help="report the console lines to this manager: they join the timelines of the tasks "
                   "the board runs (docs/timelines.md; needs --proplet-id, and an admin --api-token if "
                   "the manager has tokens)")
    o.add_argument("--proplet-id", help="the proplet id the board runs as (with --report-to)")
    o.add_argument("--api-token", default=os.environ.get("PROPELLER_API_TOKEN"),
                   help="admin bearer token for --report-to (env PROPELLER_API_TOKEN)")  # fmt: skip
    o.set_defaults(func=cmd_console)
