"""The ``propeller`` commands that talk to a manager's REST API: their common options, output and errors.

Every such command takes ``--api-url`` (env ``PROPELLER_API_URL``), ``--api-token``
(env ``PROPELLER_API_TOKEN``), ``--json`` (print the API's JSON instead of a table) and ``--output FILE``
(write the JSON, or the metrics text, to FILE). Exit codes: 0 success, 1 the manager answered with an
error or could not be reached (the message says which, and why), 2 bad usage; ``task results`` and
``task create --wait`` add 3 (the task failed) and 4 (it did not finish).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXIT_API = 1
EXIT_USAGE = 2
EXIT_CODES = (
    "exit codes: 0 success; 1 the manager answered with an error or could not be reached; 2 bad usage; "
    "3 the task failed (task results, task create --wait); 4 the task did not finish in time"
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each option's default, unless the help says it already or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "default" in text or default is None or default is False or default in ("", [], argparse.SUPPRESS):
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return text + " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """The parser of ``propeller`` and all its subcommands (subparsers are made of this class too)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def api_args(p: argparse.ArgumentParser, *, output: bool = True) -> None:
    p.add_argument(
        "--api-url",
        default=os.environ.get("PROPELLER_API_URL", "http://127.0.0.1:7070"),
        help="the manager's REST API (env PROPELLER_API_URL; default: %(default)s)",
    )
    p.add_argument(
        "--api-token",
        default=os.environ.get("PROPELLER_API_TOKEN"),
        help="bearer token (env PROPELLER_API_TOKEN; default: none)",
    )
    p.add_argument("--json", action="store_true", help="print the API's JSON instead of a table")
    if output:
        p.add_argument(
            "--output",
            "-o",
            metavar="FILE",
            default=None,
            help="also write the API's JSON (metrics: its text) to FILE",
        )
    if not p.epilog:
        p.epilog = EXIT_CODES


def output_arg(p: argparse.ArgumentParser, text: str = "also write the results (JSON) to FILE") -> None:
    """``--output FILE`` of a command that writes a file; ``--json PATH`` (the old spelling) is refused
    with the new one named, so that --json only ever means "print JSON"."""
    p.add_argument("--output", "-o", metavar="FILE", default=None, help=text)
    p.add_argument("--json", metavar="PATH", default=None, type=_renamed_json, help=argparse.SUPPRESS)


def _renamed_json(value: str) -> str:
    raise argparse.ArgumentTypeError(f"--json {value}: write files with --output {value}")


def client(args: argparse.Namespace) -> Any:
    from orchestrator.client import ApiClient

    return ApiClient(args.api_url, token=args.api_token)


def unset_times(data: Any) -> Any:
    """Upstream's zero time (``0001-01-01T00:00:00Z``, the API's "not set") shown as null."""
    from orchestrator.views import ZERO_TIME

    if isinstance(data, dict):
        return {k: None if v == ZERO_TIME else unset_times(v) for k, v in data.items()}
    if isinstance(data, list):
        return [unset_times(v) for v in data]
    return data


def emit(args: argparse.Namespace, data: Any, table: Callable[[Any], str]) -> None:
    """``--json``: the JSON on stdout, else the table; ``--output FILE``: the JSON written to FILE too."""
    text = json.dumps(unset_times(data), indent=2)
    if getattr(args, "output", None):
        write_output(args.output, text + "\n")
    print(text if args.json else table(data))


def write_output(path: str, text: str) -> None:
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as err:
        raise ValueError(f"--output {path}: {err.strerror or err}") from None


Command = Callable[[Any, argparse.Namespace], int | None]


def run(name: str, command: Command) -> Callable[[argparse.Namespace], int]:
    """A command function with the API client, and errors as one line naming the command: 1 for the
    API's or the connection's, 2 for bad input."""
    from orchestrator.client import ApiError

    def main(args: argparse.Namespace) -> int:
        api = client(args)
        try:
            return command(api, args) or 0
        except ApiError as err:
            print(f"propeller {name}: {err}", file=sys.stderr)
            return EXIT_API
        except ValueError as err:
            print(f"propeller {name}: {err}", file=sys.stderr)
            return EXIT_USAGE
        finally:
            api.close()

    return main


# ---------------------------------------------------------------------- specs from files


def load_spec(path: str) -> Any:
    """A JSON or YAML document (``-``: stdin); errors name the file."""
    import yaml

    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ValueError(f"--spec {path}: {err.strerror or err}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"--spec {path}: not JSON or YAML: {err}") from None


def module_b64(path: Path, where: str) -> str:
    """A .wasm file (or a .wat compiled here) as base64, for a task's ``file``."""
    if not path.is_file():
        raise ValueError(f"{where} {path}: no such file")
    data = path.read_bytes()
    if path.suffix == ".wat":
        import wasmtime

        data = bytes(wasmtime.wat2wasm(data.decode()))
    return base64.b64encode(data).decode()


def group_tasks(doc: Any, path: str, base: Path) -> list[dict[str, Any]]:
    """The ``tasks`` of a job or workflow document; a task's ``module: FILE`` (relative to the
    document) is read into its ``file``."""
    tasks = doc.get("tasks") if isinstance(doc, dict) else doc
    if not isinstance(tasks, list) or not tasks or not all(isinstance(t, dict) for t in tasks):
        raise ValueError(f"--spec {path}: expected a list of task objects (or an object with 'tasks')")
    out = []
    for i, task in enumerate(tasks):
        task = dict(task)
        module = task.pop("module", None)
        if module is not None:
            task["file"] = module_b64(base / str(module), f"--spec {path}: tasks[{i}].module")
        out.append(task)
    return out


def _spec_base(path: str) -> Path:
    return Path.cwd() if path == "-" else Path(path).resolve().parent


# ---------------------------------------------------------------------- jobs


def _job_create(api: Any, args: argparse.Namespace) -> int:
    from orchestrator.client import created_table

    doc = load_spec(args.spec)
    body: dict[str, Any] = {"tasks": group_tasks(doc, args.spec, _spec_base(args.spec))}
    name = args.name or (doc.get("name") if isinstance(doc, dict) else None) or ""
    mode = args.mode or (doc.get("execution_mode") if isinstance(doc, dict) else None) or ""
    body.update({"name": name, "execution_mode": mode})
    created = api.create_job(body)
    if args.start:
        api.start_job(created["job_id"])
    emit(args, created, created_table)
    return 0


def _job_list(api: Any, args: argparse.Namespace) -> int:
    from orchestrator.client import jobs_table

    emit(args, api.list_jobs(args.offset, args.limit, args.status or ""), jobs_table)
    return 0


def _job_get(api: Any, args: argparse.Namespace) -> int:
    from orchestrator.client import job_table

    emit(args, api.get_job(args.id), job_table)
    return 0


def _job_start(api: Any, args: argparse.Namespace) -> int:
    emit(args, api.start_job(args.id), lambda _: f"started job {args.id}")
    return 0


def _job_stop(api: Any, args: argparse.Namespace) -> int:
    emit(args, api.stop_job(args.id), lambda _: f"stopped job {args.id}")
    return 0


SPEC_HELP = (
    "JSON or YAML file ('-': stdin): a list of task specs, or an object with 'tasks' (and, for a job, "
    "'name' and 'execution_mode'); a task's 'module: FILE' (.wasm/.wat, relative to the file) is sent inline"
)


def add_job_parser(sub: Any) -> None:
    j = sub.add_parser("job", help="create, start, stop and inspect jobs (tasks run as a group)")
    jsub = j.add_subparsers(dest="job_cmd", required=True, metavar="COMMAND")
    jc = jsub.add_parser("create", help="create a job from a spec file (POST /jobs)")
    jc.add_argument("--spec", required=True, metavar="FILE", help=SPEC_HELP)
    jc.add_argument("--name", default="", help="the job's name (default: the spec's 'name')")
    jc.add_argument(
        "--mode",
        choices=["parallel", "sequential", "configurable"],
        default=None,
        help="execution mode (default: the spec's 'execution_mode', else parallel)",
    )
    jc.add_argument("--start", action="store_true", help="start the job once created")
    api_args(jc)
    jc.set_defaults(func=run("job create", _job_create))
    jl = jsub.add_parser("list", help="the jobs, newest first (GET /jobs)")
    jl.add_argument(
        "--status",
        choices=["pending", "running", "completed", "failed"],
        default=None,
        help="only jobs in this state",
    )
    page_args(jl)
    api_args(jl)
    jl.set_defaults(func=run("job list", _job_list))
    id_command(jsub, "get", "a job's summary and its tasks (GET /jobs/{id})", "job", _job_get, prog="job")
    id_command(jsub, "start", "start a job's tasks (POST /jobs/{id}/start)", "job", _job_start, prog="job")
    id_command(
        jsub, "stop", "stop a job's running tasks (POST /jobs/{id}/stop)", "job", _job_stop, prog="job"
    )


def id_command(sub: Any, name: str, text: str, noun: str, command: Command, *, paged: bool = False,
               prog: str = "") -> argparse.ArgumentParser:  # fmt: skip
    """A subcommand ``NAME ID`` of the API (``noun``: what the id names), paged if asked."""
    p: argparse.ArgumentParser = sub.add_parser(name, help=text)
    p.add_argument("id", help=f"{noun} id")
    if paged:
        page_args(p)
    api_args(p)
    p.set_defaults(func=run(f"{prog} {name}".strip(), command))
    return p


def page_args(p: argparse.ArgumentParser, limit: int = 100) -> None:
    p.add_argument("--offset", type=int, default=0, help="skip this many")
    p.add_argument("--limit", type=int, default=limit, help="show at most this many")


# ---------------------------------------------------------------------- workflows


def _workflow_create(api: Any, args: argparse.Namespace) -> int:
    from orchestrator.client import created_table

    doc = load_spec(args.spec)
    created = api.create_workflow({"tasks": group_tasks(doc, args.spec, _spec_base(args.spec))})
    tasks = created.get("tasks", [])
    workflow_id = tasks[0].get("workflow_id", "") if tasks else ""
    emit(args, created, lambda c: created_table({"workflow_id": workflow_id, **c}))
    if args.start:
        # Only the roots: the manager starts each other task when its dependencies are done. Starting
        # it here would run it before them (or find it already running: 409).
        for task in tasks:
            if not task.get("depends_on"):
                api.start_task(task["id"])
    return 0


def _workflow_list(api: Any, args: argparse.Namespace) -> int:
    from orchestrator.client import workflows_table

    emit(args, api.list_workflows(args.offset, args.limit), workflows_table)
    return 0


def _workflow_get(api: Any, args: argparse.Namespace) -> int:
    from orchestrator.client import workflow_table

    emit(args, api.get_workflow(args.id), workflow_table)
    return 0


def add_workflow_parser(sub: Any) -> None:
    w = sub.add_parser("workflow", help="create and inspect workflows (tasks with dependencies)")
    wsub = w.add_subparsers(dest="workflow_cmd", required=True, metavar="COMMAND")
    wc = wsub.add_parser("create", help="create a workflow from a spec file (POST /workflows)")
    wc.add_argument("--spec", required=True, metavar="FILE", help=SPEC_HELP)
    wc.add_argument(
        "--start", action="store_true", help="start its tasks once created (each waits for its depends_on)"
    )
    api_args(wc)
    wc.set_defaults(func=run("workflow create", _workflow_create))
    wl = wsub.add_parser("list", help="the workflows, newest first (GET /workflows)")
    page_args(wl)
    api_args(wl)
    wl.set_defaults(func=run("workflow list", _workflow_list))
    text = "a workflow's state and its tasks (GET /workflows/{id})"
    id_command(wsub, "get", text, "workflow", _workflow_get, prog="workflow")


# ---------------------------------------------------------------------- metrics


def filter_metrics(text: str, patterns: list[str]) -> str:
    """The exposition's lines of the metric families whose name contains one of ``patterns``."""
    if not patterns:
        return text
    kept = []
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            name = line.split()[2]
        elif line.startswith("#") or not line.strip():
            continue
        else:
            name = line.split("{", 1)[0].split(" ", 1)[0]
        if any(p in name for p in patterns):
            kept.append(line)
    return "\n".join(kept) + ("\n" if kept else "")


def metrics_samples(text: str) -> list[dict[str, Any]]:
    """The exposition as JSON: one object per sample (name, labels, value)."""
    from prometheus_client.parser import text_string_to_metric_families

    return [
        {"name": s.name, "labels": dict(s.labels), "value": s.value}
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def _metrics(api: Any, args: argparse.Namespace) -> int:
    text = filter_metrics(api.metrics_text(), args.filter)
    if args.filter and not text:
        raise ValueError(f"no metric name contains {' or '.join(map(repr, args.filter))}")
    if args.output:
        write_output(args.output, text)
    if args.json:
        print(json.dumps(metrics_samples(text), indent=2))
    else:
        sys.stdout.write(text)
    return 0


def add_metrics_parser(sub: Any) -> None:
    m = sub.add_parser("metrics", help="the manager's Prometheus metrics (GET /metrics)")
    m.add_argument(
        "filter",
        nargs="*",
        metavar="NAME",
        help="only the metric families whose name contains NAME (e.g. tasks, proplets)",
    )
    api_args(m)
    m.set_defaults(func=run("metrics", _metrics))


# ---------------------------------------------------------------------- task and proplet extras


def _task_invoke(api: Any, args: argparse.Namespace) -> int:
    from orchestrator.client import invoke_table

    body: dict[str, Any] = {}
    if args.inputs:
        body["inputs"] = [v for item in args.inputs for v in item.split(",") if v != ""]
    if args.env:
        body["env"] = key_values(args.env, "--env")
    outcome = api.invoke_task(args.id, body)
    emit(args, outcome, invoke_table)
    return 0 if outcome.get("invoked") else EXIT_API


def _task_upload(api: Any, args: argparse.Namespace) -> int:
    from orchestrator.client import task_table

    path = Path(args.file)
    data = base64.b64decode(module_b64(path, "FILE"))
    emit(args, summarise_module(api.upload_module(args.id, path.with_suffix(".wasm").name, data)), task_table)
    return 0


def _task_metrics(api: Any, args: argparse.Namespace) -> int:
    from orchestrator.client import metrics_table

    emit(args, api.task_metrics(args.id, args.offset, args.limit), metrics_table)
    return 0


def summarise_module(task: dict[str, Any], with_module: bool = False) -> dict[str, Any]:
    """A task without upstream's redacted ``file`` string (its ``module`` says size and sha256)."""
    if not with_module and "module" in task:
        return {k: v for k, v in task.items() if k != "file"}
    return task


def key_values(items: list[str], flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def add_task_extras(tsub: Any) -> None:
    ti = tsub.add_parser(
        "invoke",
        help="run a latent task once, now, and wait for its result "
        "(POST /tasks/{id}/invoke); exit 1 when the run failed",
    )
    ti.add_argument("id", help="task id (a task created with latent: true)")
    ti.add_argument(
        "--inputs",
        action="append",
        default=[],
        metavar="A,B",
        help="inputs of this run, comma-separated or repeated (default: the task's)",
    )
    ti.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment of this run (repeatable; default: the task's)",
    )
    api_args(ti)
    ti.set_defaults(func=run("task invoke", _task_invoke))
    tu = tsub.add_parser("upload", help="replace a task's module (PUT /tasks/{id}/upload)")
    tu.add_argument("id", help="task id")
    tu.add_argument("file", help=".wasm file (a .wat is compiled first)")
    api_args(tu)
    tu.set_defaults(func=run("task upload", _task_upload))
    text = "the task's resource samples (GET /tasks/{id}/metrics)"
    id_command(tsub, "metrics", text, "task", _task_metrics, paged=True, prog="task")


def _proplet_alive(api: Any, args: argparse.Namespace) -> int:
    from orchestrator.client import history_table

    emit(args, api.alive_history(args.id, args.offset, args.limit), history_table)
    return 0


def _proplet_metrics(api: Any, args: argparse.Namespace) -> int:
    from orchestrator.client import metrics_table

    emit(args, api.proplet_metrics(args.id, args.offset, args.limit), metrics_table)
    return 0


def add_proplet_extras(psub: Any) -> None:
    text = "when the proplet was heard from, newest first (GET /proplets/{id}/alive-history)"
    id_command(psub, "alive", text, "proplet", _proplet_alive, paged=True, prog="proplets")
    text = "the proplet's CPU and memory samples (GET /proplets/{id}/metrics)"
    id_command(psub, "metrics", text, "proplet", _proplet_metrics, paged=True, prog="proplets")
