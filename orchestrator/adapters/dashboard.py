"""The web dashboard (``/ui/``) and the offline API docs (``/docs``, ``/redoc``), served by the manager.

Server-rendered Jinja2 pages; htmx (vendored in ``static/``, no CDN) refreshes their tables in place.
Every page is read-only (GET), so the API's ``read`` token scope suffices. Browsers cannot send a
bearer header on a plain link, so ``/ui/?token=T`` stores the token in an HttpOnly cookie once; the
API's auth middleware accepts that cookie (see :func:`browser_token`) for GETs under ``/ui/`` only,
so a cookie can never authorize a state change.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from orchestrator.core.errors import NotFound
from orchestrator.core.model import Proplet, Task, TaskState
from orchestrator.views import rfc3339

if TYPE_CHECKING:
    from orchestrator.service import ManagerService

HERE = Path(__file__).parent
STATIC_PREFIX = "/static/"
TOKEN_COOKIE = "propeller_token"
TASK_PAGE = 50
SETTLE_S = 5.0  # seconds a finished task's page keeps refreshing (its last timeline events)


def browser_token(scope: dict[str, Any]) -> bytes | None:
    """The dashboard's token for a GET under ``/ui/`` (read-only pages), else None.

    From the ``?token=`` query (the link a user opens once; ``/ui/`` then sets the cookie) or the cookie.
    """
    if scope.get("method") not in ("GET", "HEAD") or not str(scope.get("path", "")).startswith("/ui"):
        return None
    given = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
    if given and given[0]:
        return given[0].encode()
    for name, value in scope.get("headers") or []:
        if name == b"cookie":
            for part in value.split(b";"):
                key, _, token = part.strip().partition(b"=")
                if key == TOKEN_COOKIE.encode() and token:
                    return token
    return None


def open_path(path: str) -> bool:
    """Paths served without a token: the vendored front-end libraries and the docs pages."""
    return path.startswith(STATIC_PREFIX) or path in ("/docs", "/redoc")


@dataclass
class FleetRow:
    id: str
    name: str
    kind: str
    alive: bool
    memory: str
    running: list[str]
    last_seen: str


def _bytes(n: int) -> str:
    if not n:
        return "-"
    if n < 1024:
        return f"{n} B"
    size = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024 or unit == "GiB":
            break
    return f"{size:.1f} {unit}"


def _kind(p: Proplet) -> str:
    md = p.metadata
    if p.is_embedded:
        return f"embedded ({md.wasm_runtime or 'wamr'})"
    return f"host ({md.wasm_runtime})" if md.wasm_runtime else "host"


def fleet(manager: ManagerService) -> list[FleetRow]:
    running: dict[str, list[str]] = {}
    for task in manager.engine.tasks.live.values():
        if task.state == TaskState.RUNNING and task.proplet_id:
            running.setdefault(task.proplet_id, []).append(task.id)
    rows = []
    for p in sorted(manager.engine.proplets.values(), key=lambda p: p.id):
        md = p.metadata
        memory = _bytes(md.total_memory_bytes)
        if md.free_memory_bytes:
            memory = f"{_bytes(md.free_memory_bytes)} free of {memory}"
        last = p.alive_history[-1] if p.alive_history else None
        rows.append(
            FleetRow(
                id=p.id,
                name=p.name,
                kind=_kind(p),
                alive=manager.proplet_alive(p),
                memory=memory,
                running=sorted(running.get(p.id, [])),
                last_seen=f"{rfc3339(last)} ({time.time() - last:.0f} s ago)" if last else "never",
            )
        )
    return rows


def history(task: Task) -> list[tuple[str, str]]:
    """The task's state history as far as its own fields tell it (when no timeline was recorded)."""
    out = [(rfc3339(task.created_at), "created")]
    if task.start_time:
        where = f" on {task.proplet_id}" if task.proplet_id else ""
        attempt = f"attempt {task.attempts_counted}/{task.max_attempts}"
        out.append((rfc3339(task.start_time), f"started{where} ({attempt})"))
    if task.finish_time:
        out.append((rfc3339(task.finish_time), task.state.label.lower()))
    elif not task.start_time:
        out.append((rfc3339(task.updated_at), task.state.label.lower()))
    return out


@dataclass
class EventRow:
    at: str
    offset: str  # seconds since the first event
    label: str
    detail: str


async def timeline(manager: ManagerService, subject: str, subject_id: str) -> list[EventRow]:
    """The recorded timeline (GET /tasks|proplets/{id}/events), worded as ``propeller ... trace`` does."""
    from orchestrator.trace import LABELS, _describe  # one wording for the terminal and the page

    assert manager.store is not None
    records = await manager.store.list_events(subject, subject_id)
    first = records[0].at if records else 0.0
    return [
        EventRow(
            at=rfc3339(r.at),
            offset=f"{r.at - first:+.3f} s",
            label=LABELS.get(r.kind, r.kind),
            detail=_describe({"kind": r.kind, "cause": r.cause, "fields": r.fields}),
        )
        for r in records
    ]


def reports(directory: str) -> list[tuple[str, str]]:
    """(relative path, modified time) of the HTML reports under ``directory``, newest first."""
    if not directory:
        return []
    root = Path(directory)
    found = [(p, p.stat().st_mtime) for p in root.rglob("*.html") if p.is_file()]
    found.sort(key=lambda pm: pm[1], reverse=True)
    return [(str(p.relative_to(root)), rfc3339(m)) for p, m in found]


def _states() -> list[str]:
    return [s.name.lower() for s in TaskState]


def mount(app: FastAPI, manager: ManagerService) -> None:
    """Add the dashboard, the vendored static files and the offline ``/docs`` and ``/redoc``."""
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals["rfc3339"] = rfc3339
    app.mount(STATIC_PREFIX.rstrip("/"), StaticFiles(directory=HERE / "static"), name="static")
    router = APIRouter(prefix="/ui", include_in_schema=False)
    reports_dir = getattr(manager.settings, "reports_dir", "") or ""

    def page(request: Request, template: str, **context: Any) -> HTMLResponse:
        partial = request.headers.get("HX-Request") == "true"  # htmx refresh: the table only
        return templates.TemplateResponse(request, template, {"partial": partial, **context})

    @app.get("/docs", include_in_schema=False)
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{STATIC_PREFIX}swagger-ui-bundle.js",
            swagger_css_url=f"{STATIC_PREFIX}swagger-ui.css",
            swagger_favicon_url=f"{STATIC_PREFIX}favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{STATIC_PREFIX}redoc.standalone.js",
            redoc_favicon_url=f"{STATIC_PREFIX}favicon.png",
            with_google_fonts=False,
        )

    @router.get("/")
    async def home(request: Request) -> Response:
        response = RedirectResponse("/ui/fleet", status_code=303)
        token = request.query_params.get("token")
        if token:  # once: later pages authenticate with the cookie
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict", path="/ui")
        return response

    @router.get("/fleet")
    async def fleet_page(request: Request) -> HTMLResponse:
        rows = fleet(manager)
        summary: dict[tuple[str, str], int] = {}
        for r in rows:
            key = (r.kind, "alive" if r.alive else "dead")
            summary[key] = summary.get(key, 0) + 1
        return page(request, "fleet.html", rows=rows, summary=sorted(summary.items()))

    @router.get("/proplets/{proplet_id}")
    async def proplet_page(proplet_id: str, request: Request) -> HTMLResponse:
        proplet = manager.engine.proplets.get(proplet_id)
        if proplet is None:
            return HTMLResponse(f"<p>proplet {html.escape(proplet_id)} not found</p>", status_code=404)
        row = next(r for r in fleet(manager) if r.id == proplet_id)
        assert manager.store is not None
        found = await manager.store.list_tasks(0, TASK_PAGE, proplet_id=proplet_id)
        if found.total > TASK_PAGE:
            found = await manager.store.list_tasks(found.total - TASK_PAGE, TASK_PAGE, proplet_id=proplet_id)
        events = await timeline(manager, "proplet", proplet_id)
        return page(
            request,
            "proplet.html",
            p=row,
            metadata={  # memory is shown above, readable
                k: v for k, v in proplet.metadata.to_json().items() if not k.endswith("memory_bytes")
            },
            heartbeats=[rfc3339(t) for t in reversed(proplet.alive_history)],
            tasks=found.tasks[::-1],
            total=found.total,
            events=events,
        )

    @router.get("/tasks")
    async def tasks_page(request: Request) -> HTMLResponse:
        query = request.query_params
        filters: dict[str, Any] = {}
        state = query.get("state", "")
        if state in _states():
            filters["state"] = int(TaskState[state.upper()])
        for key in ("proplet_id", "name"):
            if query.get(key):
                filters[key] = query[key]
        assert manager.store is not None
        found = await manager.store.list_tasks(0, TASK_PAGE, **filters)  # in first-save order
        if found.total > TASK_PAGE:  # the newest page is the last one
            found = await manager.store.list_tasks(found.total - TASK_PAGE, TASK_PAGE, **filters)
        return page(
            request,
            "tasks.html",
            tasks=found.tasks[::-1],  # newest first
            total=found.total,
            states=_states(),
            state=state,
            proplet_id=query.get("proplet_id", ""),
            name=query.get("name", ""),
            query=str(request.url.query),
        )

    @router.get("/tasks/{task_id}")
    async def task_page(task_id: str, request: Request) -> HTMLResponse:
        try:
            task = await manager.find_task(task_id)
        except NotFound as err:
            return HTMLResponse(f"<p>{html.escape(err.message)}</p>", status_code=404)
        # The recorded timeline; with recording off (--no-timeline), the history the task's fields tell.
        events = await timeline(manager, "task", task.id)
        # Keep refreshing a few seconds past the end: the result's timeline event is written just after.
        done_at = task.finish_time or task.updated_at or 0.0
        live = not task.state.is_terminal or time.time() - done_at < SETTLE_S
        return page(request, "task.html", task=task, history=history(task), events=events, live=live)

    @router.get("/reports")
    async def reports_page(request: Request) -> HTMLResponse:
        return page(request, "reports.html", reports=reports(reports_dir), directory=reports_dir)

    @router.get("/reports/{name:path}")
    async def report_file(name: str) -> Response:
        if not reports_dir:
            raise NotFound("no reports directory is configured (propeller manager --reports-dir DIR)")
        root = Path(reports_dir).resolve()
        path = (root / name).resolve()
        if not path.is_relative_to(root) or path.suffix != ".html" or not path.is_file():
            raise NotFound(f"no report {name!r} in {reports_dir}")
        return FileResponse(path, media_type="text/html")

    app.include_router(router)
