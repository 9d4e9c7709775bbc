"""``propeller scenario run|validate``: registered by orchestrator/cli.py when this module exists."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_scenario_subcommands(sub: argparse._SubParsersAction) -> None:
    sc = sub.add_parser("scenario", help="run or validate digital-twin scenarios (YAML)")
    ssub = sc.add_subparsers(dest="scenario_cmd", required=True)

    run = ssub.add_parser(
        "run",
        help="run scenarios and judge their expectations (exit 0 pass, 1 fail, 2 invalid, "
        "3 inconclusive: a live run whose host lagged behind its timers)",
    )
    run.add_argument("files", nargs="+", metavar="FILE", help="scenario YAML files")
    run.add_argument("--seed", type=int, default=None, help="override every file's seed")
    run.add_argument("--junit", metavar="PATH", default=None, help="write JUnit XML here")
    run.add_argument(
        "--report",
        metavar="PATH",
        default="scenario-reports",
        help="directory (or .html file, for one scenario) for the HTML report and the JSON trace "
        "(default: %(default)s)",
    )
    run.add_argument("--mode", default="live", choices=("live", "virtual"),
                     help="live: real broker and manager processes, wall-clock time; virtual: the same "
                     "cores on simpy's virtual clock over the broker model (default: %(default)s)")
    run.add_argument(
        "--replay",
        metavar="TRACE",
        default=None,
        help="replay a recorded trace instead of running (re-judges a past run)",
    )
    run.set_defaults(func=cmd_run)

    val = ssub.add_parser(
        "validate", help="check scenario files without running them (exit 0 valid, 2 invalid)"
    )
    val.add_argument("files", nargs="+", metavar="FILE", help="scenario YAML files")
    val.set_defaults(func=cmd_validate)
    __import__("twin.scale").scale.add_twin_subcommands(sub)  # `propeller twin scale`


def cmd_run(args: Any) -> int:
    from twin.scenario.pipeline import run_scenarios

    options: dict[str, Any] = {"trace": args.replay} if args.replay else {}
    mode = "replay" if args.replay else args.mode
    if not args.replay and args.report and not str(args.report).endswith(".html"):
        options["log_dir"] = args.report  # keep the manager's and broker's logs beside the report
    return run_scenarios(args.files, args.seed, args.junit, args.report, mode=mode, runner_options=options)


def cmd_validate(args: Any) -> int:
    from twin.scenario.spec import ScenarioError, load_scenario

    code = 0
    for path in args.files:
        try:
            s = load_scenario(path)
        except ScenarioError as exc:
            print(exc, file=sys.stderr)
            code = 2
            continue
        tasks = sum(w.count for w in s.workload)
        print(
            f"ok: {path}: {s.name} (seed {s.seed}, {s.duration_s:g} s, {len(s.devices())} devices, "
            f"{tasks} tasks, {len(s.faults)} faults, {len(s.expect)} expectations)"
        )
    return code
