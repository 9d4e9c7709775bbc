"""The ``propeller`` command: one CLI with subcommands for every job the project does."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from orchestrator.cli_api import (
    EXIT_CODES,
    Parser,
    add_job_parser,
    add_metrics_parser,
    add_proplet_extras,
    add_task_extras,
    add_workflow_parser,
    api_args,
    emit,
    key_values,
    page_args,
    summarise_module,
)

EXIT_USAGE = 2
EXIT_DEPOSED = 3  # --ha: this manager lost its lease to another (restart it; it comes back as a standby)


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO), format="%(asctime)s %(name)s %(message)s"
    )
    for noisy in ("amqtt", "transitions", "uvicorn", "httpx", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


# The cyclic collector's young-generation threshold once a service runs (CPython's default is 700).
GC_YOUNG_THRESHOLD = 10_000


def settle_heap() -> None:
    """Once a long-running service has started: exempt what start-up built (modules, the API app, the
    restored state) from the cyclic collector, and collect the young generation less often.

    Why: under load the manager's full collections rescanned ~170,000 start-up objects 8 times per
    6,000 tasks, 40-50 ms each: ~7 % of its CPU, and its p99 latency (docs/benchmarks.md, "Garbage
    collection"). Reference counting still frees every acyclic object at once; only a reference cycle
    among objects alive at start-up that is dropped later stays until exit. Young objects are examined
    after 10,000 net allocations instead of 700: a few MB of cyclic garbage at most waits longer.
    """
    gc.collect()
    gc.freeze()
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, GC_YOUNG_THRESHOLD), middle, old)


async def serve_until_signal(
    start: Callable[[], Any], stop: Callable[[], Any], done: asyncio.Event | None = None
) -> None:
    """Run ``start``, serve until SIGINT/SIGTERM (or ``done`` is set), then ``stop``; a signal during
    start also stops."""
    loop = asyncio.get_running_loop()
    done = done or asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, done.set)
    starting = asyncio.ensure_future(start())
    signalled = asyncio.ensure_future(done.wait())
    try:
        await asyncio.wait({starting, signalled}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            starting.result()  # a failed start raises here
            settle_heap()
            await signalled
        else:
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
    finally:
        signalled.cancel()
        await stop()


# ---------------------------------------------------------------------- manager


def run_loop(main: Any, loop: str = "auto") -> Any:
    """Run ``main`` on uvloop when it is installed (``auto``), or on the loop asked for.

    ``PROPELLER_PROFILE=FILE`` writes a cProfile (CPU time of the loop's thread) of the whole run to
    FILE (used by ``bench e2e --profile``).
    """
    runner: Callable[[Any], Any] = asyncio.run
    if loop != "asyncio":
        try:
            import uvloop

            runner = uvloop.run
        except ImportError:
            if loop == "uvloop":
                main.close()
                raise ValueError("--loop uvloop: uvloop is not installed") from None
    profile = os.environ.get("PROPELLER_PROFILE")
    if not profile:
        return runner(main)
    import cProfile
    import time

    profiler = cProfile.Profile(time.process_time)  # CPU, not wall: the machine may be busy
    try:
        return profiler.runcall(runner, main)
    finally:
        profiler.dump_stats(profile)


def cmd_manager(args: argparse.Namespace) -> int:
    from orchestrator.service import ManagerService
    from orchestrator.settings import ManagerSettings, from_args

    api = {"api_host": args.api[0], "api_port": args.api[1]} if args.api else {}
    settings = from_args(ManagerSettings, args, **api)
    if settings.identity:
        try:
            settings = _manager_identity(settings, settings.identity)
        except ValueError as err:
            print(f"propeller manager: {err}", file=sys.stderr)
            return EXIT_USAGE
    try:
        service = ManagerService(settings)
    except ValueError as err:  # --otel without the otel extra, ...
        print(f"propeller manager: {err}", file=sys.stderr)
        return EXIT_USAGE
    try:
        run_loop(serve_until_signal(service.start, service.stop, service.finished), args.loop)
    except (OSError, ValueError) as err:
        print(f"propeller manager: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # store, broker and MQTT errors: one clear line, not a traceback
        print(f"propeller manager: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    if service.deposed:
        print(f"propeller manager: lost the lease ({service.deposed}); exiting", file=sys.stderr)
        return EXIT_DEPOSED
    return 0


def _manager_identity(settings: Any, path: str) -> Any:
    """The manager's enrolled identity (kind manager) for an external broker: client id + credentials."""
    import dataclasses

    from orchestrator.adapters.broker_url import parse_broker_url
    from orchestrator.enrollment import load_identity

    ident = load_identity(path)
    if ident.kind != "manager":
        raise ValueError(f"identity file {path}: kind {ident.kind!r}, expected 'manager'")
    url = parse_broker_url(settings.broker)
    if url.scheme == "embedded":
        raise ValueError("--identity is for an external broker; the embedded broker makes its own")
    url = dataclasses.replace(url, username=ident.username, password=ident.password)
    broker = f"{url.scheme}://{_quote(ident.username)}:{_quote(ident.password)}@{url.hostport}"
    return dataclasses.replace(settings, broker=broker, client_id=ident.client_id, enrolled_only=True)


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


def cmd_proplet(args: argparse.Namespace) -> int:
    from orchestrator.settings import PropletSettings, from_args

    try:
        settings = agent_settings(from_args(PropletSettings, args))
    except ValueError as err:
        print(f"propeller proplet: {err}", file=sys.stderr)
        return EXIT_USAGE

    async def main() -> None:
        from proplets.agent import PropletAgent

        agent = PropletAgent(settings)
        await serve_until_signal(agent.start, agent.stop)

    try:
        run_loop(main())
    except Exception as err:
        from proplets.agent import AUTH_HINT

        hint = f" ({AUTH_HINT})" if "Not authorized" in str(err) else ""
        print(f"propeller proplet: {err}{hint}", file=sys.stderr)
        return 1
    return 0


def agent_settings(s: Any) -> Any:
    """The worker's ``AgentSettings`` from the command's ``PropletSettings`` (a ValueError names what
    was wrong: a bad --fetch-allow entry, identity file, profile...)."""
    from proplets.agent import AgentSettings, default_proplet_id, with_identity
    from proplets.egress import EgressPolicy

    broker = s.broker
    if broker is None and s.identity:
        with contextlib.suppress(ValueError):  # a bad file is reported below, naming the field
            from orchestrator.enrollment import load_identity

            broker = load_identity(s.identity).broker
    try:
        fetch_allow = EgressPolicy.parse(s.fetch_allow).entries
    except ValueError as err:
        raise ValueError(f"--fetch-allow: {err}") from None
    settings = AgentSettings(
        broker=broker or "mqtt://127.0.0.1:1883",
        proplet_id=s.id or default_proplet_id(),
        wait_for_broker=True,
        domain=s.domain,
        channel=s.channel,
        heartbeat_interval=s.heartbeat_interval,
        max_instances=s.max_instances,
        cache_dir=s.cache_dir or None,
        tags=[t for t in s.tags.split(",") if t],
        profile=s.profile,
        metrics_interval=s.metrics_interval,
        metrics_port=s.metrics_port,
        heap_bytes=s.heap_bytes,
        fetch_allow=fetch_allow,
        hal_root=s.hal_root or None,
        hal_quota_bytes=s.hal_quota_bytes,
        tsm_root=s.tsm_root,
        kbs_url=s.kbs_url,
        otel=s.otel,
        direct_start=s.direct_start,
    )
    return with_identity(settings, s.identity) if s.identity else settings


def cmd_broker(args: argparse.Namespace) -> int:
    if getattr(args, "broker_cmd", None) == "mosquitto-config":
        return cmd_mosquitto_config(args)
    from orchestrator.adapters.broker import BrokerStartError, EmbeddedBroker
    from orchestrator.core.identity import IdentityRegistry

    if not args.open and not args.db:
        print(
            "propeller broker: the broker is closed by default; give --db (the manager's database, "
            "whose enrolled identities it admits) or --open (anyone, debugging only)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    host, port = args.listen
    registry = IdentityRegistry()
    broker = EmbeddedBroker(
        host, port, keepalive_grace=args.keepalive_grace, allow_anonymous=args.open, identities=registry
    )
    store: Any = None
    loaded: tuple[Any, ...] = ()
    refresher: asyncio.Task[None] | None = None

    async def refresh() -> None:
        # Enrolments and revocations made through the manager reach this broker within --refresh s.
        version = loaded
        while True:
            await asyncio.sleep(args.refresh)
            try:
                now = await store.identities_version()
                if now == version:
                    continue
                version = now
                gone = registry.replace_all(await store.load_identities())
            except Exception as err:  # the database may be briefly locked or away: keep the last view
                logging.getLogger("propeller.broker").warning("cannot re-read identities: %s", err)
                continue
            for identity in gone:
                await broker.drop_client(identity.client_id)

    async def start() -> None:
        nonlocal store, refresher, loaded
        if args.db:
            from orchestrator.adapters.store import Store

            store = await Store.open(args.db)
            loaded = await store.identities_version()  # before the load: a change meanwhile is seen
            registry.replace_all(await store.load_identities())
            refresher = asyncio.create_task(refresh(), name="broker-identities")
        if args.open:
            logging.getLogger("propeller.broker").warning(
                "OPEN BROKER (--open): any client, anonymous included, may connect, read and publish anything"
            )
        await broker.start()
        print(
            f"propeller broker: listening on {broker.url} ({len(registry.active())} identities)", flush=True
        )

    async def stop() -> None:
        if refresher is not None:
            refresher.cancel()
        await broker.stop()
        if store is not None:
            await store.close()

    try:
        asyncio.run(serve_until_signal(start, stop))
    except BrokerStartError as err:
        print(f"propeller broker: {err}", file=sys.stderr)
        return 1
    except Exception as err:
        print(f"propeller broker: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0


def cmd_mosquitto_config(args: argparse.Namespace) -> int:
    from orchestrator.adapters.store import Store
    from orchestrator.enrollment import MOSQUITTO_CONF, mosquitto_files

    async def load() -> list[Any]:
        async with await Store.open(args.db) as store:
            return list(await store.load_identities())

    try:
        identities = asyncio.run(load())
    except Exception as err:
        print(f"propeller broker mosquitto-config: {err}", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    passwd, acl = mosquitto_files(identities)
    passwd_path, acl_path, conf_path = out / "passwd", out / "acl", out / "propeller.conf"
    for path, text in ((passwd_path, passwd), (acl_path, acl)):
        path.write_text(text, encoding="utf-8")
        path.chmod(0o600)
    conf_path.write_text(
        MOSQUITTO_CONF.format(passwd=passwd_path.resolve(), acl=acl_path.resolve()), encoding="utf-8"
    )
    active = sum(1 for i in identities if i.active)
    print(f"wrote {passwd_path}, {acl_path}, {conf_path} ({active} identities)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from orchestrator.demo import run_demo

    return asyncio.run(run_demo(proplets=args.proplets, keep_db=args.db))


# ---------------------------------------------------------------------- API client commands


def _client(args: argparse.Namespace) -> Any:
    from orchestrator.cli_api import client

    return client(args)


# Exit codes of `task results` / `task create --wait`: the task's own outcome, not the HTTP call's.
EXIT_TASK_FAILED = 3
EXIT_TASK_NOT_DONE = 4


def _wait_for_task(client: Any, task_id: str, timeout: float) -> dict[str, Any]:
    import time

    deadline = time.monotonic() + timeout
    while True:
        task: dict[str, Any] = client.get_task(task_id)
        if task.get("state") in (3, 4, 5, 6):  # Completed, Failed, Skipped, Interrupted
            return task
        if time.monotonic() >= deadline:
            print(f"task {task_id} did not finish within {timeout:g} s", file=sys.stderr)
            return task
        time.sleep(0.2)


def _outcome_code(task: dict[str, Any]) -> int:
    state = task.get("state")
    return 0 if state == 3 else EXIT_TASK_FAILED if state in (4, 5, 6) else EXIT_TASK_NOT_DONE


def cmd_task(args: argparse.Namespace) -> int:
    from orchestrator.client import ApiError, task_table, tasks_table

    client = _client(args)
    try:
        if args.task_cmd == "create":
            spec = _task_spec(args)
            created = client.create_task(spec)
            if args.start or args.wait is not None:
                client.start_task(created["id"])
            if args.wait is None:
                emit(args, created, task_table)
            else:
                done = _wait_for_task(client, created["id"], args.wait)
                emit(args, done, task_table)
                return _outcome_code(done)
        elif args.task_cmd == "start":
            client.start_task(args.id)
            emit(args, {"id": args.id, "started": True}, lambda _: f"started {args.id}")
        elif args.task_cmd == "stop":
            client.stop_task(args.id)
            emit(args, {"id": args.id, "stopped": True}, lambda _: f"stopped {args.id}")
        elif args.task_cmd == "get":
            task = client.get_task(args.id, with_module=args.with_module)
            emit(args, summarise_module(task, args.with_module), task_table)
        elif args.task_cmd == "list":
            filters = {"state": args.state, "proplet_id": args.proplet, "name": args.name,
                       "workflow_id": args.workflow, "job_id": args.job}  # fmt: skip
            emit(args, client.list_tasks(args.offset, args.limit, **filters), tasks_table)
        elif args.task_cmd == "results":
            if args.format == "raw":
                raw = client.task_results_raw(args.id)
                if args.output:
                    _write_bytes(args.output, raw)
                sys.stdout.buffer.write(raw)
                sys.stdout.flush()
            else:
                results = client.task_results(args.id, args.format or "")
                if args.output:
                    _write_bytes(args.output, (json.dumps(results, indent=2) + "\n").encode())
                indent = 2 if args.format == "json" or args.json else None
                print(json.dumps(results, indent=indent))
            task = client.get_task(args.id)
            if task.get("state") != 3:
                print(
                    f"task {args.id} is {_state_name(task)}: {task.get('error') or ''}".rstrip(": "),
                    file=sys.stderr,
                )
            return _outcome_code(task)
        elif args.task_cmd == "logs":
            return _task_logs(client, args)
        elif args.task_cmd == "delete":
            client.delete_task(args.id)
            emit(args, {"id": args.id, "deleted": True}, lambda _: f"deleted {args.id}")
    except ApiError as err:
        print(f"propeller task {args.task_cmd}: {err}", file=sys.stderr)
        return 1
    except ValueError as err:
        print(f"propeller task {args.task_cmd}: {err}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def _write_bytes(path: str, data: bytes) -> None:
    try:
        Path(path).write_bytes(data)
    except OSError as err:
        raise ValueError(f"--output {path}: {err.strerror or err}") from None


def _state_name(task: dict[str, Any]) -> str:
    from orchestrator.client import STATE_NAMES

    state = task.get("state")
    return STATE_NAMES[state] if isinstance(state, int) and 0 <= state < len(STATE_NAMES) else str(state)


def _task_logs(client: Any, args: argparse.Namespace) -> int:
    """``propeller task logs ID``: the attempt's logs; ``--follow`` streams them until the task ends."""
    import time

    from orchestrator.client import log_text

    def show(rows: list[dict[str, Any]]) -> None:
        sys.stdout.write(log_text(rows))
        sys.stdout.flush()

    if not args.follow:
        body = client.task_logs(args.id, attempt=args.attempt)
        emit(args, body, lambda b: log_text(b["logs"]).rstrip("\n"))
        return 0
    after, streamed = 0, set[tuple[int, str]]()  # (attempt, stream) shown live: stderr, a daemon's stdout
    while True:
        body = client.task_logs(args.id, attempt=args.attempt, after=after, live=True)
        if body["logs"]:
            if streamed and all(a != body["attempt"] for a, _ in streamed):  # the task was placed again
                sys.stdout.write(f"[propeller: attempt {body['attempt']}]\n")
            show(body["logs"])
            streamed.update((body["attempt"], r["stream"]) for r in body["logs"])
        after = body["next"]
        if body["done"]:
            break
        time.sleep(args.interval)
    # The record sent with the result: what was not streamed (runtime notes), or all of it.
    record = client.task_logs(args.id, attempt=body["attempt"])
    final = record["logs"]
    if args.output:
        from orchestrator.cli_api import write_output

        write_output(args.output, json.dumps(record, indent=2) + "\n")
    show([r for r in final if r["final"] and (body["attempt"], r["stream"]) not in streamed])
    return 0


def _task_spec(args: argparse.Namespace) -> dict[str, Any]:
    import base64

    if args.stray:
        raise ValueError(
            f"unexpected {' '.join(args.stray)!r}: give the task name once, and inputs as "
            "--inputs 2,40 or --inputs 2 --inputs 40 (--inputs takes one value now)"
        )
    spec: dict[str, Any] = {"name": args.name}
    if args.file:
        path = Path(args.file)
        if not path.is_file():
            raise ValueError(f"--file {path}: no such file")
        data = path.read_bytes()
        if path.suffix == ".wat":
            import wasmtime

            data = bytes(wasmtime.wat2wasm(data.decode()))
        spec["file"] = base64.b64encode(data).decode()
    if args.image_url:
        spec["image_url"] = args.image_url
    if args.inputs:
        spec["inputs"] = [v for item in args.inputs for v in item.split(",") if v != ""]
    if args.env:
        spec["env"] = key_values(args.env, "--env")
    if args.arg:
        spec["cli_args"] = list(args.arg)
    if args.daemon:
        spec["daemon"] = True
    if args.latent:
        spec["latent"] = True
    if args.limits:
        limits: dict[str, Any] = {}
        for key, value in key_values(args.limits, "--limits").items():
            try:
                limits[key] = json.loads(value)
            except ValueError:
                limits[key] = value
        spec["limits"] = limits
    if args.proplet:
        spec["proplet_id"] = args.proplet
    if args.priority is not None:
        spec["priority"] = args.priority
    return spec


def cmd_proplets(args: argparse.Namespace) -> int:
    from orchestrator.client import ApiError, proplet_table, proplets_table

    if args.proplets_cmd == "enroll":
        return cmd_enroll(args)
    client = _client(args)
    try:
        if args.proplets_cmd == "list":
            emit(args, client.list_proplets(), proplets_table)
        elif args.proplets_cmd == "revoke":
            emit(args, client.revoke_proplet(args.id), lambda _: f"revoked {args.id}")
        elif args.proplets_cmd == "identities":
            emit(args, client.list_identities(), _identities_table)
        else:
            emit(args, client.get_proplet(args.id), proplet_table)
    except ApiError as err:
        print(f"propeller proplets {args.proplets_cmd}: {err}", file=sys.stderr)
        return 1
    return 0


def _identities_table(page: Any) -> str:
    from orchestrator.client import _table

    rows = [[i["proplet_id"], i["kind"], i["client_id"], "yes" if i["revoked"] else ""]
            for i in page.get("identities", [])]  # fmt: skip
    return _table(["ID", "KIND", "CLIENT ID", "REVOKED"], rows)


def cmd_enroll(args: argparse.Namespace) -> int:
    """Enroll through the manager's API, or with --db straight into its database (no manager running)."""
    import time

    from orchestrator.client import ApiError
    from orchestrator.core.errors import EngineError
    from orchestrator.enrollment import enroll_into_store, write_identity

    kind = "manager" if args.manager else "upstream" if args.upstream else "proplet"
    if kind == "upstream" and not (args.client_id and args.key):
        print("propeller proplets enroll: --upstream needs --client-id and --key (its own)", file=sys.stderr)
        return EXIT_USAGE
    if kind == "manager" and not args.db:
        print("propeller proplets enroll: --manager needs --db (the manager's database)", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.db:
            enrollment = asyncio.run(
                enroll_into_store(
                    args.db, kind, args.id or None, wall=time.time(), client_id=args.client_id, key=args.key
                )
            )
            doc = enrollment.identity_file(args.broker or None)
        else:
            doc = _client(args).enroll_proplet(
                {
                    k: v
                    for k, v in (
                        ("id", args.id),
                        ("kind", kind),
                        ("client_id", args.client_id),
                        ("key", args.key),
                    )
                    if v
                }
            )
            if args.broker:
                doc["broker"] = args.broker
    except (ApiError, EngineError) as err:
        print(f"propeller proplets enroll: {err}", file=sys.stderr)
        return 1
    if args.out:
        path = write_identity(args.out, doc)
        print(f"enrolled {doc['proplet_id']} ({kind}); identity written to {path} (keep it secret)")
    else:
        print(json.dumps(doc, indent=2))
    return 0


# ---------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    description = "WebAssembly orchestrator for the continuum"
    parser = Parser(prog="propeller", description=description, epilog=EXIT_CODES)
    parser.add_argument(
        "--log-level", default=None, help="debug, info, warning (default: info; demo: warning)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def channel_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--domain", default="default", help="tenant/domain id in m/{domain}/c/{channel}")
        p.add_argument("--channel", default="default", help="channel id in m/{domain}/c/{channel}")

    from orchestrator.settings import ManagerSettings, PropletSettings, add_arguments

    m = sub.add_parser(
        "manager",
        help="run the orchestrator (REST API, scheduler, MQTT)",
    )
    add_arguments(m, ManagerSettings)
    m.add_argument("--api", type=_host_port, default=None, help="HOST:PORT of the REST API (sets both)")
    m.add_argument(
        "--loop",
        choices=["auto", "asyncio", "uvloop"],
        default="auto",
        help="event loop (auto: uvloop if installed)",
    )
    m.set_defaults(func=cmd_manager)

    p = sub.add_parser("proplet", help="run a Wasm worker")
    add_arguments(p, PropletSettings)
    p.set_defaults(func=cmd_proplet)

    b = sub.add_parser("broker", help="run the embedded MQTT broker on its own (amqtt, keep-alive fixed)")
    b.add_argument("--listen", type=_host_port, default=("127.0.0.1", 1883), help="HOST:PORT to listen on")
    b.add_argument(
        "--keepalive-grace", type=float, default=0.5, help="extra fraction of keep-alive tolerated"
    )
    b.add_argument("--db", default=None, help="the manager's database: admit its enrolled identities")
    b.add_argument("--refresh", type=float, default=1.0, help="seconds between re-reads of the identities")
    b.add_argument("--open", action="store_true", help="DEBUG ONLY: admit anyone, no topic rules")
    bsub = b.add_subparsers(dest="broker_cmd")
    bm = bsub.add_parser("mosquitto-config", help="write Mosquitto password and ACL files for the identities")
    bm.add_argument("--db", required=True, help="the manager's database (SQLite path or postgresql:// URL)")
    bm.add_argument("--out", required=True, help="directory for passwd, acl and propeller.conf")
    b.set_defaults(func=cmd_broker)

    d = sub.add_parser("demo", help="embedded broker + manager + proplets run a sample task")
    d.add_argument("--proplets", type=int, default=3, help="proplets started")
    d.add_argument("--db", default=None, help="keep the demo database at this path")
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("task", help="create, start, stop and inspect tasks")
    tsub = t.add_subparsers(dest="task_cmd", required=True)
    tc = tsub.add_parser("create", help="create a task (POST /tasks)")
    tc.add_argument("name", help="task name = the export to call")
    tc.add_argument("stray", nargs="*", help=argparse.SUPPRESS)  # old `--inputs 2 40`: a clear error
    tc.add_argument("--file", help=".wasm or .wat file sent inline")
    tc.add_argument("--image-url", help="http(s) URL or OCI reference of the module")
    tc.add_argument(
        "--inputs", action="append", default=[], metavar="A,B", help="inputs, comma-separated or repeated"
    )
    tc.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="KEY=VALUE for the module (repeatable)",
    )
    tc.add_argument("--arg", "--args", dest="arg", action="append", default=[], metavar="ARG",
                    help="an argv entry after the name (repeatable)")  # fmt: skip
    tc.add_argument("--limits", action="append", default=[], metavar="KEY=VALUE",
                    help="resource limit, e.g. timeout_s=30 (repeat)")  # fmt: skip
    tc.add_argument("--daemon", action="store_true", help="a long-running task (no result expected)")
    tc.add_argument("--latent", action="store_true",
                    help="a latent task: `task start` deploys it, `task invoke ID` runs it")  # fmt: skip
    tc.add_argument("--start", action="store_true", help="start the task once created")
    tc.add_argument("--wait", type=float, nargs="?", const=300.0, default=None, metavar="SECONDS",
                    help="start it and wait for its end (default 300 s); exit code: 0 Completed, "
                    f"{EXIT_TASK_FAILED} Failed/Interrupted/Skipped, "
                    f"{EXIT_TASK_NOT_DONE} not finished")  # fmt: skip
    tc.add_argument("--proplet", help="pin to this proplet id")
    tc.add_argument("--priority", type=int, help="higher runs first among queued tasks (default: 0)")
    api_args(tc)
    for name, text in (
        ("start", "start a task (POST /tasks/{id}/start)"),
        ("stop", "stop a running task (POST /tasks/{id}/stop)"),
        ("get", "one task: state, times, result, error, module size and sha256 (GET /tasks/{id})"),
        ("delete", "delete a task (DELETE /tasks/{id})"),
    ):
        tp = tsub.add_parser(name, help=text)
        tp.add_argument("id", help="task id")
        if name == "get":
            whole = "include the whole module (base64 'file'), not only its size and sha256"
            tp.add_argument("--with-module", action="store_true", help=whole)
        api_args(tp)
    tr = tsub.add_parser("results", help="the task's result (JSON-encoded; --format json parses it)")
    tr.add_argument("id", help="task id")
    tr.add_argument(
        "--format", choices=["json", "raw"], default=None,
        help="json: the result parsed as JSON; raw: the bytes the module wrote (stdout) or returned",
    )  # fmt: skip
    api_args(tr)
    tlog = tsub.add_parser("logs", help="the task's stderr and runtime notes, kept apart from its result")
    tlog.add_argument("id", help="task id")
    tlog.add_argument("--follow", "-f", action="store_true", help="stream the logs of a running task")
    tlog.add_argument("--attempt", type=int, default=None, help="which attempt (default: the latest)")
    tlog.add_argument("--interval", type=float, default=0.5, help="--follow: seconds between polls")
    api_args(tlog)
    tl = tsub.add_parser("list", help="the tasks, oldest first (GET /tasks)")
    tl.add_argument("--state", default=None, help="only tasks in this state (e.g. Failed, or its number)")
    tl.add_argument("--proplet", default=None, help="only tasks placed on this proplet")
    tl.add_argument("--name", default=None, help="only tasks of this name")
    tl.add_argument("--workflow", default=None, help="only tasks of this workflow id")
    tl.add_argument("--job", default=None, help="only tasks of this job id")
    page_args(tl)
    api_args(tl)
    t.set_defaults(func=cmd_task)
    from orchestrator.receipt_verify import add_verify_parser

    add_verify_parser(tsub, api_args)  # `task verify`: its own module, its own command function
    add_task_extras(tsub)  # `task invoke`, `task upload`, `task metrics`: orchestrator/cli_api.py

    pr = sub.add_parser("proplets", help="list and inspect proplets")
    psub = pr.add_subparsers(dest="proplets_cmd", required=True)
    api_args(psub.add_parser("list", help="the proplets the manager knows, alive or dead (GET /proplets)"))
    ps = psub.add_parser("show", help="one proplet (GET /proplets/{id})")
    ps.add_argument("id", help="proplet id")
    api_args(ps)
    pe = psub.add_parser("enroll", help="enroll a proplet identity (credentials + signing key)")
    pe.add_argument("--id", default="", help="proplet id (default: proplet-<random>; upstream: --client-id)")
    pe.add_argument("--upstream", action="store_true", help="an upstream Rust proplet / ESP32 firmware")
    pe.add_argument("--manager", action="store_true", help="the manager's identity for an external broker")
    pe.add_argument("--client-id", default=None, help="MQTT client id = user name (upstream: its entity id)")
    pe.add_argument("--key", default=None, help="password (upstream: its API key); default: random")
    pe.add_argument("--output", "-o", "--out", dest="out", metavar="FILE", default=None,
                    help="write the identity file here (0600); default: print it")  # fmt: skip
    pe.add_argument("--broker", default=None, help="broker URL to record in the identity file")
    pe.add_argument("--db", default=None, help="enroll straight into the manager's database (offline)")
    api_args(pe, output=False)
    pv = psub.add_parser("revoke", help="revoke an identity: disconnected and refused from now on")
    pv.add_argument("id", help="proplet id")
    api_args(pv)
    api_args(psub.add_parser("identities", help="list enrolled identities"))
    pr.set_defaults(func=cmd_proplets)
    from orchestrator.trace import add_trace_parsers

    add_trace_parsers(tsub, psub, api_args)  # `task trace`, `proplets trace`: orchestrator/trace.py
    add_proplet_extras(psub)  # `proplets alive`, `proplets metrics`
    add_job_parser(sub)
    add_workflow_parser(sub)
    add_metrics_parser(sub)

    _add_optional_subcommands(sub)
    return parser


def _add_optional_subcommands(sub: Any) -> None:
    """Subcommands owned by other packages register themselves here."""
    import importlib
    import importlib.util

    for module, function in (
        ("twin.cli", "add_scenario_subcommands"),
        ("hil.cli", "add_hil_subcommands"),
        ("orchestrator.bench", "add_bench_subcommands"),
    ):
        if importlib.util.find_spec(module) is not None:
            getattr(importlib.import_module(module), function)(sub)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
    except ValueError as err:  # a malformed PROPELLER_* variable: name it, no traceback
        print(f"propeller: {err}", file=sys.stderr)
        return EXIT_USAGE
    args, extra = parser.parse_known_args(argv)
    if extra:
        if getattr(args, "task_cmd", None) == "create":
            args.stray = [*args.stray, *extra]  # `create add --inputs 2 40`: _task_spec explains
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    _configure_logging(args.log_level or ("warning" if args.command == "demo" else "info"))
    try:
        result: int = args.func(args)
    except BrokenPipeError:  # `propeller task list | head`: the reader has all it wanted
        sys.stderr.close()
        return 0
    return result


if __name__ == "__main__":
    sys.exit(main())
