"""``propeller task trace ID`` and ``propeller proplets trace ID``: a timeline read in the terminal.

Each line is one event the manager recorded (``GET /tasks/{id}/events``), with its time relative to
the first one and its cause, e.g.::

    task 5f0c… "add": 7 events from 2026-12-01T15:40:02.120Z
       +0.000s  created
       +0.004s  queued            started
       +0.006s  placed            on proplet-a (round-robin, 2 candidates)
       +0.006s  start published   attempt 1 to proplet-a
       +3.512s  proplet died      proplet-a: no heartbeat for 1.5 s
       +3.512s  requeued          attempt 1 on proplet-a: proplet proplet-a died (no heartbeat for 1.5 s)
       +3.515s  placed            on proplet-b (round-robin, 1 candidate)
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

LABELS = {
    "start_published": "start published",
    "proplet_died": "proplet died",
    "receipt_rejected": "receipt rejected",
    "observations_capped": "capped",
}


def _describe(event: dict[str, Any]) -> str:
    """The human sentence of one event: what, where, why."""
    kind, cause, f = event.get("kind", ""), event.get("cause", ""), event.get("fields") or {}
    proplet = f.get("proplet_id") or ""
    if kind == "placed":
        n = f.get("candidates", 0)
        return f"on {proplet} ({cause}, {n} candidate{'s' if n != 1 else ''})"
    if kind == "start_published":
        return f"attempt {f.get('attempt')} to {proplet}"
    if kind == "proplet_died":
        return f"{proplet}: {cause}"
    if kind == "requeued":
        return f"attempt {f.get('attempt')} on {proplet}: {cause}"
    if kind == "refused":
        return f"by {proplet} ({f.get('refusal')}): {cause}"
    if kind == "result":
        state = f.get("state", "")
        where = f" on {proplet}" if proplet else ""
        detail = f": {cause}" if cause and cause != state else ""
        verified = ", receipt verified" if f.get("verified") else ""
        return f"{state}{where} (attempt {f.get('attempt')}{verified}){detail}"
    if kind == "broadcast":
        return f"to {f.get('targets')} proplets"
    if kind in ("fault", "console", "note"):  # reported from outside (POST .../events)
        where = f.get("device") or proplet
        source = f" [{f['source']}]" if f.get("source") else ""
        if kind == "fault":
            return f"{cause} on {where}{source}" if where else f"{cause}{source}"
        return f"{where}: {cause}" if where else f"{cause}{source}"
    return cause


def format_trace(subject: str, subject_id: str, events: list[dict[str, Any]], title: str = "") -> str:
    if not events:
        return f"{subject} {subject_id}{title}: no events recorded"
    first = float(events[0].get("at_unix", 0.0))
    lines = [f"{subject} {subject_id}{title}: {len(events)} events from {events[0].get('at', '')}"]
    for event in events:
        rel = float(event.get("at_unix", first)) - first
        label = LABELS.get(event.get("kind", ""), event.get("kind", ""))
        lines.append(f"  {rel:+9.3f}s  {label:<17} {_describe(event)}".rstrip())
    return "\n".join(lines)


def add_trace_parsers(tsub: Any, psub: Any, api_args: Any) -> None:
    text = "the task's timeline: what happened to it, in order, and why (GET /tasks/{id}/events)"
    tt = tsub.add_parser("trace", aliases=["events"], help=text)
    tt.add_argument("id", help="task id")
    api_args(tt)
    tt.set_defaults(func=cmd_trace, subject="task")
    pt = psub.add_parser("trace", aliases=["events"], help="the proplet's timeline: joins, deaths with their "
                         "cause, returns (GET /proplets/{id}/events)")  # fmt: skip
    pt.add_argument("id", help="proplet id")
    api_args(pt)
    pt.set_defaults(func=cmd_trace, subject="proplet")


def cmd_trace(args: argparse.Namespace) -> int:
    from orchestrator.client import ApiClient, ApiError

    client = ApiClient(args.api_url, token=args.api_token)
    path = "tasks" if args.subject == "task" else "proplets"
    try:
        body = client.events(path, args.id)
        title = ""
        if args.subject == "task":
            task = client.get_task(args.id)
            title = f" {json.dumps(task.get('name', ''))}"
    except ApiError as err:
        print(f"propeller {args.subject} trace: {err}", file=sys.stderr)
        return 1
    finally:
        client.close()
    from orchestrator.cli_api import emit

    try:
        emit(args, body, lambda b: format_trace(args.subject, args.id, b.get("events", []), title))
    except ValueError as err:
        print(f"propeller {args.subject} trace: {err}", file=sys.stderr)
        return 2
    return 0
