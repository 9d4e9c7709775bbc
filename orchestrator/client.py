"""A small synchronous client of the manager's REST API, and the tables the CLI prints."""

from __future__ import annotations

from typing import Any

import httpx

STATE_NAMES = ["Pending", "Scheduled", "Running", "Completed", "Failed", "Skipped", "Interrupted"]


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status


class ApiClient:
    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = 10.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)
        self.base_url = base_url

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            response = self._http.request(method, path, json=body)
        except httpx.HTTPError as err:
            raise ApiError(0, f"cannot reach the manager at {self.base_url}: {err}") from None
        if response.status_code >= 400:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text
            raise ApiError(response.status_code, message)
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

    def get_task(self, task_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/tasks/{task_id}"))

    def task_receipt(self, task_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/tasks/{task_id}/receipt"))

    def list_tasks(self, offset: int = 0, limit: int = 100) -> dict[str, Any]:
        return dict(self._call("GET", f"/tasks?offset={offset}&limit={limit}"))

    def task_results(self, task_id: str, fmt: str = "") -> Any:
        query = f"?format={fmt}" if fmt else ""
        body = self._call("GET", f"/tasks/{task_id}/results{query}")
        return None if body is None else body.get("results")

    def task_results_raw(self, task_id: str) -> bytes:
        """The result as the module produced it: stdout's bytes, or the return value's text."""
        try:
            response = self._http.get(f"/tasks/{task_id}/results", params={"format": "raw"})
        except httpx.HTTPError as err:
            raise ApiError(0, f"cannot reach the manager at {self.base_url}: {err}") from None
        if response.status_code >= 400:
            raise ApiError(response.status_code, response.text)
        return response.content

    def task_logs(
        self, task_id: str, *, attempt: int | None = None, after: int = 0, live: bool = False
    ) -> dict[str, Any]:
        params = [f"after={after}"] + ([f"attempt={attempt}"] if attempt is not None else [])
        if live:
            params.append("live=1")
        return dict(self._call("GET", f"/tasks/{task_id}/logs?{'&'.join(params)}"))

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


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


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


def task_table(task: dict[str, Any]) -> str:
    return _table(["ID", "NAME", "STATE", "PROPLET", "RESULTS", "ERROR"], [_task_row(task)])


def tasks_table(page: dict[str, Any]) -> str:
    body = _table(
        ["ID", "NAME", "STATE", "PROPLET", "RESULTS", "ERROR"], [_task_row(t) for t in page["tasks"]]
    )
    return f"{body}\n({len(page['tasks'])} of {page['total']})"


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
    return _table(["ID", "NAME", "STATUS", "TASKS", "OS", "RUNTIME"], [_proplet_row(proplet)])


def proplets_table(page: dict[str, Any]) -> str:
    return _table(
        ["ID", "NAME", "STATUS", "TASKS", "OS", "RUNTIME"], [_proplet_row(p) for p in page["proplets"]]
    )
