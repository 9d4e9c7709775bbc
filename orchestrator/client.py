"""A small synchronous client of the manager's REST API, and the tables the CLI prints."""

from __future__ import annotations

import json
from typing import Any

import httpx

STATE_NAMES = ["Pending", "Scheduled", "Running", "Completed", "Failed", "Skipped", "Interrupted"]


URL_ENV = "PROPELLER_API_URL"


class ApiError(Exception):
    """A call that failed: ``status`` is the HTTP status (0: the manager was not reached)."""

    def __init__(self, status: int, message: str, body: Any = None) -> None:
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status
        self.body = body


def error_message(response: httpx.Response) -> str:
    """The error body's message (``{"error": ..., "field": ...}``), else its text, else the reason."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip() or response.reason_phrase
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        field = body.get("field")
        return f"{body['error']} (field {field})" if field and field not in body["error"] else body["error"]
    if isinstance(body, dict) and "detail" in body:  # FastAPI's own validation errors
        return json.dumps(body["detail"])
    return response.text.strip()


class ApiClient:
    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = 10.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)
        self.base_url = base_url

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The response of one call; a transport failure or an HTTP error is an ``ApiError`` that says
        why (the error body's message, or the URL that could not be reached and how to change it)."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError as err:
            raise ApiError(
                0,
                f"cannot reach the manager at {self.base_url} ({err}); is it running? "
                f"Give its URL with --api-url or {URL_ENV}",
            ) from None
        except httpx.TimeoutException:
            message = f"the manager at {self.base_url} did not answer {method} {path} in time"
            raise ApiError(0, message) from None
        except httpx.HTTPError as err:
            raise ApiError(0, f"cannot reach the manager at {self.base_url}: {err}") from None
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = None
            raise ApiError(response.status_code, error_message(response), body)
        return response

    def _call(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        query = {k: v for k, v in params.items() if v not in (None, "")}
        response = self._send(method, path, json=body, params=query or None)
        if not response.content:
            return None
        return response.json()

    def enroll_proplet(self, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self._call("POST", "/proplets/enroll", body))

    def revoke_proplet(self, proplet_id: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/proplets/{proplet_id}/revoke"))

    def list_identities(self) -> dict[str, Any]:
        return dict(self._call("GET", "/proplets/identities"))

    def create_task(self, spec: dict[str, Any]) -> dict[str, Any]:
        return dict(self._call("POST", "/tasks", spec))

    def start_task(self, task_id: str) -> None:
        self._call("POST", f"/tasks/{task_id}/start")

    def stop_task(self, task_id: str) -> None:
        self._call("POST", f"/tasks/{task_id}/stop")

    def delete_task(self, task_id: str) -> None:
        self._call("DELETE", f"/tasks/{task_id}")

    def get_task(self, task_id: str, *, with_module: bool = False) -> dict[str, Any]:
        """The task; ``with_module``: the whole module in ``file`` (base64), not upstream's redaction."""
        return dict(self._call("GET", f"/tasks/{task_id}", module=1 if with_module else None))

    def task_receipt(self, task_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/tasks/{task_id}/receipt"))

    def list_tasks(self, offset: int = 0, limit: int = 100, **filters: Any) -> dict[str, Any]:
        return dict(self._call("GET", "/tasks", offset=offset, limit=limit, **filters))

    def invoke_task(self, task_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /tasks/{id}/invoke`` of a latent task; a failed run (502/504) is returned, not raised."""
        response = self._http_json("POST", f"/tasks/{task_id}/invoke", body, ok=(502, 504))
        return dict(response)

    def upload_module(self, task_id: str, filename: str, data: bytes) -> dict[str, Any]:
        files = {"file": (filename, data, "application/wasm")}
        return dict(self._send("PUT", f"/tasks/{task_id}/upload", files=files).json())

    def task_metrics(self, task_id: str, offset: int = 0, limit: int = 100) -> dict[str, Any]:
        return dict(self._call("GET", f"/tasks/{task_id}/metrics", offset=offset, limit=limit))

    def create_job(self, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self._call("POST", "/jobs", body))

    def list_jobs(self, offset: int = 0, limit: int = 100, status: str = "") -> dict[str, Any]:
        return dict(self._call("GET", "/jobs", offset=offset, limit=limit, status=status))

    def get_job(self, job_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/jobs/{job_id}"))

    def start_job(self, job_id: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/jobs/{job_id}/start"))

    def stop_job(self, job_id: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/jobs/{job_id}/stop"))

    def create_workflow(self, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self._call("POST", "/workflows", body))

    def list_workflows(self, offset: int = 0, limit: int = 100) -> dict[str, Any]:
        return dict(self._call("GET", "/workflows", offset=offset, limit=limit))

    def get_workflow(self, workflow_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/workflows/{workflow_id}"))

    def metrics_text(self) -> str:
        """The manager's Prometheus exposition (``GET /metrics``)."""
        return self._send("GET", "/metrics").text

    def alive_history(self, proplet_id: str, offset: int = 0, limit: int = 100) -> dict[str, Any]:
        return dict(self._call("GET", f"/proplets/{proplet_id}/alive-history", offset=offset, limit=limit))

    def proplet_metrics(self, proplet_id: str, offset: int = 0, limit: int = 100) -> dict[str, Any]:
        return dict(self._call("GET", f"/proplets/{proplet_id}/metrics", offset=offset, limit=limit))

    def _http_json(self, method: str, path: str, body: Any, ok: tuple[int, ...]) -> Any:
        try:
            return self._call(method, path, body)
        except ApiError as err:
            if err.status in ok and err.body is not None:
                return err.body
            raise

    def task_results(self, task_id: str, fmt: str = "") -> Any:
        body = self._call("GET", f"/tasks/{task_id}/results", format=fmt)
        return None if body is None else body.get("results")

    def task_results_raw(self, task_id: str) -> bytes:
        """The result as the module produced it: stdout's bytes, or the return value's text."""
        return self._send("GET", f"/tasks/{task_id}/results", params={"format": "raw"}).content

    def task_logs(
        self, task_id: str, *, attempt: int | None = None, after: int = 0, live: bool = False
    ) -> dict[str, Any]:
        live_flag = 1 if live else None
        return dict(self._call("GET", f"/tasks/{task_id}/logs", after=after, attempt=attempt, live=live_flag))

    def list_proplets(self) -> dict[str, Any]:
        return dict(self._call("GET", "/proplets"))

    def get_proplet(self, proplet_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/proplets/{proplet_id}"))

    def events(self, subject: str, subject_id: str) -> dict[str, Any]:
        """The timeline of a task or a proplet (``subject``: "tasks" or "proplets")."""
        return dict(self._call("GET", f"/{subject}/{subject_id}/events"))

    def report_events(self, subject: str, subject_id: str, events: list[dict[str, Any]]) -> dict[str, Any]:
        """Events seen from outside (console lines, faults) join the timelines (admin token)."""
        return dict(self._call("POST", f"/{subject}/{subject_id}/events", {"events": events}))


def log_text(rows: list[dict[str, Any]]) -> str:
    """Log rows as a terminal shows them: output as written, runtime notes marked ``[runtime]``."""
    out = []
    for row in rows:
        data = str(row.get("data", ""))
        if row.get("stream") == "runtime":
            data = "".join(f"[runtime] {line}\n" for line in data.splitlines())
        out.append(data)
    return "".join(out)


def terminal_width() -> int:
    """The terminal's width (``COLUMNS`` wins; 100 when stdout is not a terminal)."""
    import os
    import shutil

    if os.environ.get("COLUMNS", "").isdigit():
        return int(os.environ["COLUMNS"])
    return shutil.get_terminal_size((100, 24)).columns


def render(renderable: Any, width: int | None = None) -> str:
    """A Rich renderable as plain text of at most ``width`` columns (the terminal's by default)."""
    import io

    from rich.console import Console

    buffer = io.StringIO()
    console = Console(
        file=buffer,
        width=width or terminal_width(),
        color_system=None,
        highlight=False,
        emoji=False,
        markup=False,
        soft_wrap=False,
    )
    console.print(renderable)
    return "\n".join(line.rstrip() for line in buffer.getvalue().rstrip("\n").splitlines())


# Columns that identify a row are never cut (a truncated id cannot be copied back), nor are short
# ones (a state, a count); the others are cut with an ellipsis so that each row stays on one line.
_WHOLE = {"ID", "JOB ID", "WORKFLOW ID", "TASK ID", "PROPLET ID"}
_SHORT = 12


def cell(value: Any, today: str | None = None) -> str:
    """A table cell: unset as ``-``; an RFC 3339 time (UTC) as ``HH:MM:SS`` today, else
    ``YYYY-MM-DD HH:MM``."""
    import datetime as dt

    text = unset(value)
    if len(text) >= 20 and text[4] == "-" and text[10] == "T" and text.endswith("Z"):
        today = today or dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
        return text[11:19] if text[:10] == today else f"{text[:10]} {text[11:16]}"
    return text


def _table(headers: list[str], rows: list[list[str]], width: int | None = None) -> str:
    """Rows under headers, one line each, within ``width``: the other columns share what the ids and
    short columns leave, the longest cut first (with an ellipsis)."""
    from rich.table import Table

    width = width or terminal_width()
    cells = [[cell(c) for c in row] for row in rows]
    natural = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    fixed = [h in _WHOLE or n <= _SHORT for h, n in zip(headers, natural, strict=True)]
    gaps = 2 * (len(headers) - 1)
    room = width - gaps - sum(n for n, f in zip(natural, fixed, strict=True) if f)
    flexible = sorted((n, i) for i, (n, f) in enumerate(zip(natural, fixed, strict=True)) if not f)
    sizes = dict(enumerate(natural))
    for k, (n, i) in enumerate(flexible):  # water-filling: short ones keep their width
        share = max(room // (len(flexible) - k), min(len(headers[i]), _SHORT))
        sizes[i] = min(n, share)
        room -= sizes[i]
    table = Table(box=None, padding=(0, 2, 0, 0), pad_edge=False, header_style="")
    for i, h in enumerate(headers):
        table.add_column(h, no_wrap=True, overflow="ellipsis", min_width=sizes[i], max_width=sizes[i])
    for row in cells:
        table.add_row(*row)
    return render(table, max(width, sum(sizes.values()) + gaps))


def details(pairs: list[tuple[str, Any]], width: int | None = None) -> str:
    """One object as ``KEY  value`` lines; long values wrap within the terminal."""
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE, show_header=False, show_edge=False, pad_edge=False)
    table.add_column("key", no_wrap=True, style="")
    table.add_column("value", overflow="fold")
    for key, value in pairs:
        text = value if isinstance(value, str) else json.dumps(value)
        table.add_row(key, unset(text))
    return render(table, width)


def unset(text: Any) -> str:
    """An unset value (empty, None, upstream's zero time) as ``-``."""
    from orchestrator.views import ZERO_TIME

    return "-" if text in (None, "", "null", ZERO_TIME) else str(text)


def _state(task: dict[str, Any]) -> str:
    if isinstance(task.get("state_name"), str):
        return str(task["state_name"])
    state = task.get("state", 0)  # an upstream manager sends only the number
    return STATE_NAMES[state] if isinstance(state, int) and 0 <= state < len(STATE_NAMES) else str(state)


def _task_row(t: dict[str, Any]) -> list[str]:
    return [
        t["id"],
        t["name"],
        _state(t),
        t.get("proplet_id", ""),
        str(t.get("results", "")).strip().replace("\n", "\\n"),  # one line per task, even for stdout
        t.get("error", ""),
    ]


TASK_HEADERS = ["ID", "NAME", "STATE", "PROPLET", "RESULTS", "ERROR"]


def task_table(task: dict[str, Any]) -> str:
    """One task, a line per field (times not set shown as ``-``; the module as its size and sha256)."""
    module = task.get("module") or {}
    pairs: list[tuple[str, Any]] = [
        ("id", task["id"]),
        ("name", task["name"]),
        ("state", _state(task)),
        ("proplet", task.get("proplet_id")),
        ("attempt", _attempt_text(task)),
        ("results", task.get("results")),
        ("error", task.get("error")),
        ("created", task.get("created_at")),
        ("started", task.get("start_time")),
        ("finished", task.get("finish_time")),
        ("next run", task.get("next_run")),
        ("module", f"{module['size']} bytes, sha256 {module['sha256']}" if module else None),
        ("image url", task.get("image_url")),
        ("inputs", task.get("inputs")),
        ("env", task.get("env")),
        ("args", task.get("cli_args")),
        ("limits", task.get("limits")),
        ("job", task.get("job_id")),
        ("workflow", task.get("workflow_id")),
        ("depends on", task.get("depends_on")),
        ("verified", "yes" if task.get("verified") else None),
    ]
    always = ("id", "name", "state", "created", "started", "finished")
    return details([(k, v) for k, v in pairs if k in always or (unset(v) != "-" and v not in ([], {}))])


def tasks_table(page: dict[str, Any]) -> str:
    body = _table(TASK_HEADERS, [_task_row(t) for t in page["tasks"]])
    return f"{body}\n({len(page['tasks'])} of {page['total']})"


def job_row(j: dict[str, Any]) -> list[str]:
    return [
        j["job_id"],
        j.get("name", ""),
        j.get("state", ""),
        j.get("execution_mode", ""),
        str(j.get("tasks", "")),
        j.get("created_at", ""),
        j.get("start_time", ""),
        j.get("finish_time", ""),
    ]


JOB_HEADERS = ["JOB ID", "NAME", "STATE", "MODE", "TASKS", "CREATED", "STARTED", "FINISHED"]


def jobs_table(page: dict[str, Any]) -> str:
    jobs = page["jobs"]
    return f"{_table(JOB_HEADERS, [job_row(j) for j in jobs])}\n({len(jobs)} of {page['total']})"


def job_table(job: dict[str, Any]) -> str:
    """A job: its summary, then its tasks."""
    tasks = job.get("tasks")
    count = len(tasks) if isinstance(tasks, list) else tasks
    summary = _table(JOB_HEADERS, [job_row({**job, "tasks": count})])
    if not isinstance(tasks, list):
        return summary
    return f"{summary}\n\n{_table(TASK_HEADERS, [_task_row(t) for t in tasks])}"


def created_table(body: dict[str, Any]) -> str:
    """``POST /jobs`` and ``POST /workflows``: the group's id and its tasks."""
    head = next((f"{k.replace('_', ' ')} {body[k]}" for k in ("job_id", "workflow_id") if body.get(k)), "")
    rows = _table(TASK_HEADERS, [_task_row(t) for t in body.get("tasks", [])])
    return f"{head}\n{rows}" if head else rows


WORKFLOW_HEADERS = ["WORKFLOW ID", "STATE", "TASKS", "CREATED"]


def workflows_table(page: dict[str, Any]) -> str:
    rows = [
        [w["workflow_id"], w.get("state", ""), str(w.get("tasks", "")), w.get("created_at", "")]
        for w in page["workflows"]
    ]
    return f"{_table(WORKFLOW_HEADERS, rows)}\n({len(page['workflows'])} of {page['total']})"


def workflow_table(workflow: dict[str, Any]) -> str:
    tasks = workflow.get("tasks", [])
    head = _table(
        WORKFLOW_HEADERS,
        [
            [
                workflow["workflow_id"],
                workflow.get("state", ""),
                str(len(tasks)),
                workflow.get("created_at", ""),
            ]
        ],
    )
    return f"{head}\n\n{_table(TASK_HEADERS, [_task_row(t) for t in tasks])}"


def invoke_table(body: dict[str, Any]) -> str:
    pairs: list[tuple[str, Any]] = [
        ("invoked", "yes" if body.get("invoked") else "no"),
        ("results", body.get("results")),
        ("error", body.get("error")),
        ("verified", "yes" if body.get("verified") else None),
    ]
    return details(pairs)


def history_table(page: dict[str, Any]) -> str:
    rows = [[at] for at in page.get("history", [])]
    return f"{_table(['ALIVE AT'], rows)}\n({len(rows)} of {page.get('total', len(rows))}, newest first)"


def _proplet_row(p: dict[str, Any]) -> list[str]:
    md = p.get("metadata", {})
    return [
        p["id"],
        p.get("name", ""),
        "alive" if p.get("alive") else "dead",
        str(p.get("task_count", 0)),
        md.get("os", ""),
        md.get("wasm_runtime", ""),
    ]


def proplet_table(proplet: dict[str, Any]) -> str:
    md = proplet.get("metadata") or {}
    pairs: list[tuple[str, Any]] = [
        ("id", proplet["id"]),
        ("name", proplet.get("name")),
        ("status", "alive" if proplet.get("alive") else "dead"),
        ("tasks", proplet.get("task_count", 0)),
        ("os", md.get("os")),
        ("runtime", md.get("wasm_runtime")),
        ("last alive", proplet.get("last_alive_at")),
        ("namespace", proplet.get("namespace")),
    ]
    return details(pairs)


def proplets_table(page: dict[str, Any]) -> str:
    return _table(
        ["ID", "NAME", "STATUS", "TASKS", "OS", "RUNTIME"], [_proplet_row(p) for p in page["proplets"]]
    )


def metrics_table(page: dict[str, Any]) -> str:
    """Metric samples of a task or a proplet: time, then each value on one line."""
    rows = []
    for m in page.get("metrics", []):
        values = {k: v for k, v in m.items() if k not in ("timestamp", "task_id", "proplet_id", "namespace")}
        rows.append([m.get("timestamp", ""), json.dumps(values, separators=(",", ":"))])
    return f"{_table(['AT', 'METRICS'], rows)}\n({len(rows)} of {page.get('total', len(rows))})"


def _attempt_text(task: dict[str, Any]) -> str:
    """``2 of 3``, or ``2 of 3 (start #4)`` when refused or lost starts were not counted."""
    number = task.get("attempt", 0)
    counted = task.get("attempts_counted", number)
    text = f"{counted} of {task.get('max_attempts', '-')}"
    return text if counted == number else f"{text} (start #{number})"
