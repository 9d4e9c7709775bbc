"""REST API with upstream Propeller's routes, status codes and JSON shapes (reference §6).

A thin adapter: it parses requests, calls the manager service and maps engine errors to
``{"error": "..."}`` bodies with 400/404/409 codes.
"""

from __future__ import annotations

import base64
import functools
import hmac
import inspect
import json
import time
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.routing import request_response as starlette_request_response

from orchestrator.adapters import api_models as m
from orchestrator.adapters import dashboard
from orchestrator.adapters.api_models import described
from orchestrator.adapters.store import StoreError
from orchestrator.core.errors import Conflict, EngineError, NotFound, PayloadTooLarge, ValidationError
from orchestrator.core.model import Task, TaskState
from orchestrator.core.validation import (
    MAX_DEPTH,
    MAX_ID_CHARS,
    MAX_INT,
    MAX_METADATA_BYTES,
    MAX_NAME_CHARS,
    check_text,
    check_value,
)
from orchestrator.views import proplet_view, receipt_view, redacted_module, task_view

if TYPE_CHECKING:
    from orchestrator.service import ManagerService

VERSION = "0.1.0"
MAX_TASK_PAGE = 100
MAX_WORKFLOW_TASKS = 10_000  # GET /workflows/{id} returns at most this many of its tasks
MAX_BATCH = 1000  # tasks per POST /tasks/batch


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _uuid(value: str, what: str) -> str:
    try:
        uuid.UUID(value)
    except ValueError:
        raise ValidationError(f"{what} must be a UUID, got {value!r}", what) from None
    return value


def _query_int(request: Request, key: str, default: int) -> int:
    """An integer query parameter; a 64-bit bound (the store's) besides the caller's own."""
    raw = request.query_params.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationError(f"{key} must be an integer, got {raw[:64]!r}", key) from None
    if abs(value) > MAX_INT:
        raise ValidationError(f"{key} is outside the 64-bit integer range", key)
    return value


def _query_text(request: Request, key: str, max_chars: int) -> str:
    """A text query parameter every store can compare against: no NUL, no lone surrogate, bounded."""
    return check_text(request.query_params.get(key, ""), key, max_chars)


def _page(request: Request, *, max_limit: int | None = None) -> tuple[int, int]:
    offset, limit = _query_int(request, "offset", 0), _query_int(request, "limit", 100)
    if offset < 0:
        raise ValidationError("offset must be >= 0", "offset")
    if limit < 1 or (max_limit is not None and limit > max_limit):
        raise ValidationError(f"limit must be between 1 and {max_limit or 'infinity'}", "limit")
    return offset, limit


def _location(collection: str, item_id: str) -> str:
    """A created item's ``Location``: ids are user text, a header is Latin-1 (a UUID is unchanged)."""
    return f"/{collection}/{quote(item_id, safe='')}"


def _start_flag(body: Any) -> bool:
    """Pop the optional ``"start"`` flag of a create request (create and start in one call)."""
    start = body.pop("start", False) if isinstance(body, dict) else False
    if not isinstance(start, bool):
        raise ValidationError(f"start must be true or false, got {start!r}", "start")
    return start


def _state_filter(raw: str) -> int:
    """A task state given by number (upstream) or by name, case-insensitive."""
    if raw.isascii() and raw.isdigit() and int(raw) in TaskState._value2member_map_:
        return int(raw)
    try:
        return int(TaskState[raw.upper()])
    except KeyError:
        names = ", ".join(s.name.lower() for s in TaskState)
        raise ValidationError(
            f"state must be a state number or one of {names}, got {raw[:64]!r}", "state"
        ) from None


def _page_body(offset: int, limit: int, key: str, items: list[Any]) -> dict[str, Any]:
    """Upstream's page shape: ``{offset, limit, total, <key>: items[offset:offset+limit]}``."""
    return {"offset": offset, "limit": limit, "total": len(items), key: items[offset : offset + limit]}


async def _json_body(request: Request, *, optional: bool = False) -> Any:
    body = await request.body()  # bounded while it streams by _BodyLimit
    if optional and not body:
        return {}
    if "application/json" not in request.headers.get("content-type", ""):
        raise ValidationError("Content-Type must be application/json")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValidationError(f"request body is not valid JSON: {err}") from None
    except RecursionError:
        raise ValidationError(
            f"request body is nested too deeply (values may nest at most {MAX_DEPTH} levels)"
        ) from None


RESULT_FORMATS = frozenset({"", "json", "raw"})
LOG_PAGE = 1000  # log rows per answer; ``next`` pages on


def _int_param(request: Request, key: str, default: int, *, lo: int) -> int:
    value = _query_int(request, key, default)
    if value < lo:
        raise ValidationError(f"{key} must be >= {lo}, got {value}", key)
    return value


def result_response(task: Task, fmt: str) -> Response:
    """``GET /tasks/{id}/results``: upstream's ``{"results"}`` (plus its type), parsed JSON, or raw bytes."""
    kind = task.result_type
    if fmt == "json":
        if not isinstance(task.results, str):  # FL envelopes, broadcast maps: JSON values already
            return JSONResponse({"results": task.results, "result_type": "json"})
        if kind == "binary":
            raise Conflict(f"the result of task {task.id} is binary, not JSON (use format=raw)", "format")
        try:
            value = json.loads(task.results)
        except ValueError:
            raise Conflict(
                f"the result of task {task.id} is {kind or 'text'}, not JSON (use format=raw)", "format"
            ) from None
        return JSONResponse({"results": value, "result_type": "json"})
    if fmt == "raw":
        if kind == "binary" and isinstance(task.results, str):
            try:
                data = base64.b64decode(task.results, validate=True)
            except ValueError:  # binascii.Error: the proplet called it base64 and it was not
                raise Conflict(f"the binary result of task {task.id} is not valid base64", "format") from None
            return Response(data, media_type="application/octet-stream")
        if isinstance(task.results, str):
            media = "application/json" if kind == "json" else "text/plain; charset=utf-8"
            return Response(task.results.encode("utf-8"), media_type=media)
        return JSONResponse(task.results)
    body: dict[str, Any] = {"results": task.results}
    if kind:
        body["result_type"] = kind
    if kind == "binary":
        body["encoding"] = "base64"
    return JSONResponse(body)


def logs_body(task: Task, attempt: int, after: int, rows: list[Any], *, more: bool = False) -> dict[str, Any]:
    """``GET /tasks/{id}/logs``: the attempt's final record if it has one, else its live pieces so far
    (``live=1``: the live pieces only, for followers paging with ``after``). ``done``: the attempt is
    over and nothing is left past this page."""
    done = (task.state.is_terminal or attempt < task.attempt) and not more
    return {
        "task_id": task.id,
        "attempt": attempt,
        "state": int(task.state),
        "done": done,
        "next": max((r.id for r in rows), default=after),
        "logs": [
            {"id": r.id, "stream": r.stream, "data": r.data, "proplet_id": r.proplet_id, "seq": r.seq,
             "final": r.final, "timestamp": r.timestamp}
            for r in rows
        ],
    }  # fmt: skip


def job_summary(manager: ManagerService, job_id: str) -> dict[str, Any]:
    from orchestrator.core.workflow import job_state
    from orchestrator.views import rfc3339

    job = manager.engine.jobs[job_id]
    tasks = manager.engine.job_tasks(job_id)
    starts = [t.start_time for t in tasks if t.start_time]
    finishes = [t.finish_time for t in tasks if t.finish_time]
    return {
        "job_id": job.id,
        "name": job.name,
        "execution_mode": job.execution_mode,
        "state": job_state(tasks),
        "tasks": len(tasks),
        "start_time": rfc3339(min(starts) if starts else None),
        "finish_time": rfc3339(max(finishes) if finishes else None),
        "created_at": rfc3339(job.created_at),
    }


class _PlainJsonRoute(APIRoute):
    """A route whose endpoint's JSON value (a dict or list built by ``orchestrator.views``) is rendered
    as it is, with the route's status code.

    FastAPI first passes a returned value through ``jsonable_encoder``, which visits every value in
    Python to convert types our views never produce: 6.5 ms for a page of 100 tasks against 0.7 ms
    for rendering it (docs/benchmarks.md), so at that rate ~0.65 s of the event loop for the largest
    workflow read (``MAX_WORKFLOW_TASKS``). Only routes documented with ``response_model=None`` (every
    route of ours: see ``described``) and written as coroutines are changed; a ``Response`` an
    endpoint returns passes through, and a value JSON cannot hold is still a 500, as before (the
    renderer refuses it).

    A coroutine endpoint that takes the request and nothing else (``POST /tasks``, ``POST
    /tasks/batch``, the listings: they read their own body and query) has nothing for FastAPI's
    request handler to solve, so Starlette's serves it: the same request, the same exception handlers
    (EngineError, HTTPException, StoreError), without solving an empty dependency set, two exit stacks
    and FastAPI's per-operation telemetry. That was ~30 µs of the ~95 µs the framework added to each
    ``POST /tasks`` (docs/benchmarks.md, session 12). The route's matching and its OpenAPI entry
    are FastAPI's as before.
    """

    def __init__(self, path: str, endpoint: Any, **kwargs: Any) -> None:
        rendered = kwargs.get("response_model", ...) is None and inspect.iscoroutinefunction(endpoint)
        if rendered:
            endpoint = _rendered(endpoint, kwargs.get("status_code") or 200)
        super().__init__(path, endpoint, **kwargs)
        if rendered and _takes_only_the_request(self):  # it returns a Response (Starlette's needs one)
            self.app = starlette_request_response(self.endpoint)


def _takes_only_the_request(route: APIRoute) -> bool:
    """One parameter, the request, and no dependencies (the route's or its router's)."""
    d = route.dependant
    return (
        d.request_param_name is not None
        and len(inspect.signature(route.endpoint).parameters) == 1
        and not d.dependencies
    )


def _rendered(endpoint: Any, status_code: int) -> Any:
    @functools.wraps(endpoint)  # FastAPI reads the parameters through __wrapped__
    async def rendered(*args: Any, **kwargs: Any) -> Any:
        value = await endpoint(*args, **kwargs)
        return value if isinstance(value, Response) else JSONResponse(value, status_code=status_code)

    return rendered


class _BodyLimit:
    """Pure ASGI middleware: a request body over ``max_bytes`` gets 413 as soon as that is known.

    A declared Content-Length over the bound is refused before one byte of the body is read; a body
    that streams (chunked, or a lying Content-Length) is counted chunk by chunk as the endpoint reads
    it, and reading stops at the first chunk past the bound. So an oversized upload neither fills
    memory nor holds the event loop (before, the whole body was read and then measured).
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope.get("headers") or () if k == b"content-length"), None)
        if declared is not None:
            if not declared.strip().isdigit():
                await error(400, "Content-Length must be a number of bytes")(scope, receive, send)
                return
            if int(declared) > self.max_bytes:
                await error(413, self._message())(scope, receive, send)
                return
        received = 0

        async def counted() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Raised inside the endpoint's read; the engine-error handler answers 413.
                    raise PayloadTooLarge(self._message())
            return message

        await self.app(scope, counted, send)

    def _message(self) -> str:
        return f"request body is larger than {self.max_bytes} bytes"


class _LeaderOnly:
    """Pure ASGI middleware: only the leading manager serves the API (``--ha``, docs/ha.md).

    A standby, or a leader still restoring, answers 503 with ``Retry-After`` and who leads; its
    engine holds nothing yet, so it can neither answer reads nor take writes. Health, docs and metrics
    stay open so a load balancer or operator can see its role.
    """

    OPEN_PATHS = frozenset({"/health", "/docs", "/openapi.json", "/metrics"})

    def __init__(self, app: Any, manager: ManagerService) -> None:
        self.app = app
        self.manager = manager

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        manager = self.manager
        path = scope.get("path", "")
        if (
            scope["type"] == "http"
            and not manager.serving
            and path not in self.OPEN_PATHS
            and not dashboard.open_path(path)  # /redoc and the docs' vendored assets, like /docs
        ):
            body: dict[str, Any] = {"error": f"this manager is not the leader (role {manager.role})"}
            if manager.lease is not None:
                body |= {**manager.lease.status(), "role": manager.role}
            retry = str(max(1, round(manager.settings.lease_ttl)))
            await JSONResponse(body, status_code=503, headers={"Retry-After": retry})(scope, receive, send)
            return
        await self.app(scope, receive, send)


class _BearerAuth:
    """Pure ASGI middleware (Starlette's BaseHTTPMiddleware costs ~1 ms a request): bearer tokens.

    Two scopes: a ``read`` token may GET (and HEAD) anything; an ``admin`` token may do everything,
    and nothing that changes state is allowed without one. Tokens are compared in constant time
    (``hmac.compare_digest``, against every configured token). ``/health`` and the API docs are open;
    ``/metrics`` too when ``metrics_public``. The dashboard's pages also take the token from its cookie
    (``dashboard.browser_token``: GETs under ``/ui/`` only).
    """

    OPEN_PATHS = frozenset({"/health", "/docs", "/openapi.json"})
    READ_METHODS = frozenset({"GET", "HEAD"})

    def __init__(self, app: Any, tokens: dict[str, str], metrics_public: bool = False) -> None:
        self.app = app
        # (token bytes, scope); a token given for both scopes is admin.
        self.tokens = sorted(((t.encode(), scope) for t, scope in tokens.items()), key=lambda ts: ts[1])
        self.open_paths = self.OPEN_PATHS | ({"/metrics"} if metrics_public else set())

    def scope_of(self, header: bytes) -> str | None:
        if not header.startswith(b"Bearer "):
            return None
        given = header[len(b"Bearer ") :]
        found = None
        for token, scope in self.tokens:  # every token compared: the time does not say which matched
            if hmac.compare_digest(given, token) and found != "admin":
                found = scope
        return found

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] not in self.open_paths
            and not dashboard.open_path(scope["path"])
        ):
            headers = dict(scope.get("headers") or [])
            browser = dashboard.browser_token(scope)  # ?token= or cookie, dashboard GETs only
            header = headers.get(b"authorization") or (b"Bearer " + browser if browser else b"")
            granted = self.scope_of(header)
            if granted is None:
                response = JSONResponse(
                    {"error": "missing or invalid bearer token"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
            if granted != "admin" and scope["method"] not in self.READ_METHODS:
                message = f"{scope['method']} {scope['path']} needs an admin token; this token has read scope"
                await error(403, message)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def api_tokens(settings: Any) -> dict[str, str]:
    """Token -> scope from the settings: ``api_token`` (the old single token) is admin."""
    tokens = {t: "read" for t in settings.api_token_read.split(",") if t}
    tokens.update({t: "admin" for t in (settings.api_token, *settings.api_token_admin.split(",")) if t})
    return tokens


def _fastapi_telemetry(otel: bool) -> dict[str, Any]:
    """FastAPI's own OpenTelemetry (newer FastAPI versions): HTTP server spans with --otel (which
    installs the tracer provider), never its metrics or logs (we install no provider for them). Left
    on, it checked the global providers on every request: ~10 µs."""
    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    return {"telemetry": {"tracing": otel, "metrics": False, "logs": False}}


def create_app(manager: ManagerService) -> FastAPI:
    app = FastAPI(
        title="Propeller manager",
        version=VERSION,
        description="WebAssembly orchestrator API",
        docs_url=None,  # served offline by the dashboard module (vendored Swagger UI and ReDoc)
        redoc_url=None,
        **_fastapi_telemetry(manager.settings.otel),
    )
    app.router.route_class = _PlainJsonRoute
    instance_id = str(uuid.uuid4())
    started = time.time()

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = m.finish_openapi(FastAPI.openapi(app))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(EngineError)
    async def _engine_error(_: Request, err: EngineError) -> JSONResponse:
        body: dict[str, Any] = {"error": err.message}
        if err.field:
            body["field"] = err.field
        return JSONResponse(body, status_code=err.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
        # Starlette's own refusals (405, a malformed form) in the API's error shape, not {"detail"}.
        return JSONResponse({"error": str(err.detail)}, status_code=err.status_code, headers=err.headers)

    @app.exception_handler(StoreError)
    async def _store_error(_: Request, err: StoreError) -> JSONResponse:
        return error(503, str(err))  # a read the database could not answer (it names the cause)

    # The last added runs first: authentication, then the standby gate, then the body bound.
    app.add_middleware(_BodyLimit, max_bytes=manager.settings.api_max_body)
    if manager.settings.ha:
        app.add_middleware(_LeaderOnly, manager=manager)
    tokens = api_tokens(manager.settings)
    if tokens:
        app.add_middleware(_BearerAuth, tokens=tokens, metrics_public=manager.settings.metrics_public)

    @app.get(
        "/health",
        **described(m.Health, bodies={503: m.Health}, open_route=True, summary="200 pass, 503 fail"),
    )
    async def health() -> JSONResponse:
        # "fail" (503) while the manager's own broker session is down: it can neither dispatch nor hear.
        # A standby (--ha) has no broker session until it leads; that is its healthy state.
        link_up = manager.broker_link_up or not manager.serving
        lease = manager.lease.status() if manager.lease is not None else {}
        body = {
            **lease,
            "role": manager.role,  # leader | standby | starting | deposed (docs/ha.md)
            "status": "pass" if link_up else "fail",
            "checks": {"broker_link": "pass" if manager.broker_link_up else "fail"},
            "version": VERSION,
            "commit": "",
            "description": "manager service",
            "build_time": "",
            "instance_id": instance_id,
            "uptime_s": round(time.time() - started, 3),
        }
        return JSONResponse(body, status_code=200 if link_up else 503)

    @app.post("/tasks", **described(m.TaskView, status=201, errors=(404, 409), body=m.TaskSpec))
    async def create_task(request: Request) -> JSONResponse:
        spec = await _json_body(request)
        start = _start_flag(spec)
        task = await manager.create_task(spec, start=start)
        return JSONResponse(
            task_view(task), status_code=201, headers={"Location": _location("tasks", task.id)}
        )

    @app.post(
        "/tasks/batch",
        **described(
            m.BatchResult, status=201, bodies={207: m.BatchResult, 400: m.BATCH_400}, body=m.TaskBatch
        ),
    )
    async def create_tasks(request: Request) -> JSONResponse:
        body = await _json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("tasks"), list):
            raise ValidationError("body must be a JSON object with a 'tasks' list", "tasks")
        specs = body["tasks"]
        if not 1 <= len(specs) <= MAX_BATCH:
            raise ValidationError(f"tasks must hold 1 to {MAX_BATCH} tasks, got {len(specs)}", "tasks")
        start = _start_flag(body)
        results = await manager.create_tasks(specs, start=start)
        items: list[dict[str, Any]] = []
        for i, r in enumerate(results):
            if isinstance(r, EngineError):
                item: dict[str, Any] = {"index": i, "status": r.status, "error": r.message}
                if r.field:
                    item["field"] = r.field
                items.append(item)
            else:
                items.append({"index": i, "status": 201, "task": task_view(r)})
        failed = sum(1 for r in results if isinstance(r, EngineError))
        status = 201 if not failed else 207 if failed < len(results) else 400
        return JSONResponse(
            {"created": len(results) - failed, "failed": failed, "started": start, "results": items},
            status_code=status,
        )

    @app.get("/tasks", **described(m.TaskPage, query=m.TaskQuery))
    async def list_tasks(request: Request) -> dict[str, Any]:
        offset, limit = _page(request, max_limit=MAX_TASK_PAGE)
        query = request.query_params
        filters: dict[str, Any] = {}
        if query.get("state"):
            filters["state"] = _state_filter(query["state"])
        for key, bound in (
            ("proplet_id", MAX_ID_CHARS), ("name", MAX_NAME_CHARS), ("workflow_id", MAX_ID_CHARS),
            ("job_id", MAX_ID_CHARS),
        ):  # fmt: skip
            if _query_text(request, key, bound):
                filters[key] = query[key]
        raw_filter = _query_text(request, "metadata", MAX_METADATA_BYTES)
        if raw_filter:
            try:
                wanted = json.loads(raw_filter)
            except (json.JSONDecodeError, RecursionError):
                raise ValidationError("metadata must be a JSON object", "metadata") from None
            if not isinstance(wanted, dict) or not all(
                isinstance(v, str | int | float | bool) for v in wanted.values()
            ):
                raise ValidationError(
                    "metadata must be a JSON object of strings, numbers or booleans", "metadata"
                )
            check_value(wanted, "metadata")  # what a stored task's metadata may hold, no more
            filters["metadata"] = wanted
        assert manager.store is not None
        page = await manager.store.list_tasks(offset, limit, **filters)
        views = []
        for task in page.tasks:
            view = task_view(task)
            ends = page.modules.get(task.id)
            if ends is not None:  # the page holds the module's ends, not the module
                view["file"] = redacted_module(ends.size, ends.head, ends.tail)
            views.append(view)
        return {"offset": offset, "limit": limit, "total": page.total, "tasks": views}

    @app.get("/tasks/{task_id}", **described(m.TaskView, errors=(404,), query=m.TaskGetQuery))
    async def get_task(task_id: str, request: Request) -> dict[str, Any]:
        """The task. Our extension: with ``?module=1`` its whole module (base64) in ``file`` instead
        of upstream's redaction (``module`` always says its size and sha256)."""
        task = await manager.find_task(_uuid(task_id, "task_id"))
        view = task_view(task)
        if task.file and request.query_params.get("module", "") in ("1", "true"):
            view["file"] = base64.b64encode(task.file).decode()
        return view

    @app.put("/tasks/{task_id}", **described(m.TaskView, errors=(404, 409), body=m.TaskUpdate))
    async def update_task(task_id: str, request: Request) -> dict[str, Any]:
        spec = await _json_body(request)
        return task_view(await manager.update_task(_uuid(task_id, "task_id"), spec))

    @app.put("/tasks/{task_id}/upload", **described(m.TaskView, errors=(404, 409), multipart=m.Upload))
    async def upload_module(task_id: str, request: Request) -> dict[str, Any]:
        _uuid(task_id, "task_id")
        if "multipart/form-data" not in request.headers.get("content-type", ""):
            raise ValidationError("upload must be multipart/form-data with a 'file' field")
        try:
            form = await request.form()
        except StarletteHTTPException as err:  # Starlette's multipart parser: a malformed form
            raise ValidationError(f"upload is not valid multipart/form-data: {err.detail}", "file") from None
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise ValidationError("multipart field 'file' is missing", "file")
        if not (upload.filename or "").endswith(".wasm"):
            raise ValidationError(f"file name {upload.filename!r} must end in .wasm", "file")
        data = await upload.read()
        if not data.startswith(b"\x00asm"):
            raise ValidationError("file is not a wasm module (it does not start with \\0asm)", "file")
        spec = {"file": base64.b64encode(data).decode()}
        return task_view(await manager.update_task(task_id, spec))

    @app.delete("/tasks/{task_id}", **described(status=204, errors=(403, 404, 409)))
    async def delete_task(task_id: str) -> Response:
        await manager.delete_task(_uuid(task_id, "task_id"))
        return Response(status_code=204)

    @app.post("/tasks/{task_id}/start", **described(m.Started, errors=(403, 404, 409)))
    async def start_task(task_id: str) -> dict[str, Any]:
        await manager.start_task(_uuid(task_id, "task_id"))
        return {"started": True}

    @app.post("/tasks/{task_id}/stop", **described(m.Stopped, errors=(403, 404, 409)))
    async def stop_task(task_id: str) -> dict[str, Any]:
        await manager.stop_task(_uuid(task_id, "task_id"))
        return {"stopped": True}

    @app.post(
        "/tasks/{task_id}/invoke",
        **described(
            m.Invoked,
            bodies={502: m.Invoked, 504: m.Invoked},
            errors=(404, 409),
            body=m.InvokeRequest,
            body_optional=True,
        ),
    )
    async def invoke_task(task_id: str, request: Request) -> JSONResponse:
        body = await _json_body(request, optional=True)
        if not isinstance(body, dict):
            raise ValidationError("body must be a JSON object with optional 'inputs' and 'env'")
        outcome = await manager.invoke(_uuid(task_id, "task_id"), body.get("inputs"), body.get("env"))
        if outcome.error:
            return JSONResponse(
                {"invoked": False, "error": outcome.error, "results": outcome.results},
                status_code=502 if "timed out" not in outcome.error else 504,
            )
        return JSONResponse({"invoked": True, "results": outcome.results, "verified": outcome.verified})

    @app.get(
        "/tasks/{task_id}/results",
        **described(errors=(404, 409), query=m.ResultsQuery, media=m.RESULTS_MEDIA),
    )
    async def task_results(task_id: str, request: Request) -> Response:
        task = await manager.find_task(_uuid(task_id, "task_id"))
        fmt = request.query_params.get("format", "")
        if fmt not in RESULT_FORMATS:
            raise ValidationError(f"format must be 'json' or 'raw', got {fmt!r}", "format")
        if task.results is None:
            return Response(status_code=200)
        return result_response(task, fmt)

    @app.get("/tasks/{task_id}/logs", **described(m.Logs, errors=(404,), query=m.LogsQuery))
    async def task_logs(task_id: str, request: Request) -> dict[str, Any]:
        task = await manager.find_task(_uuid(task_id, "task_id"))
        attempt = _int_param(request, "attempt", task.attempt, lo=0)
        after = _int_param(request, "after", 0, lo=0)
        live = request.query_params.get("live", "") in ("1", "true")
        assert manager.store is not None
        store, page = manager.store, LOG_PAGE + 1
        rows = []
        if not live:
            rows = await store.list_task_logs(task.id, attempt, after=after, limit=page, final=True)
        if not rows:  # no final record (yet): the live pieces
            rows = await store.list_task_logs(task.id, attempt, after=after, limit=page, final=False)
        return logs_body(task, attempt, after, rows[:LOG_PAGE], more=len(rows) > LOG_PAGE)

    @app.get("/tasks/{task_id}/receipt", **described(m.Receipt, errors=(404,)))
    async def task_receipt(task_id: str) -> dict[str, Any]:
        task = await manager.find_task(_uuid(task_id, "task_id"))
        return receipt_view(task, manager.engine.keys)

    @app.get("/proplets", **described(m.PropletPage, query=m.StatusQuery))
    async def list_proplets(request: Request) -> dict[str, Any]:
        offset, limit = _page(request)
        status = request.query_params.get("status", "")
        if status not in ("", "active", "inactive"):
            raise ValidationError("status must be 'active' or 'inactive'", "status")
        proplets = sorted(manager.engine.proplets.values(), key=lambda p: p.id)
        views = [proplet_view(p, manager.proplet_alive(p)) for p in proplets]
        if status:
            views = [v for v in views if v["alive"] == (status == "active")]
        return _page_body(offset, limit, "proplets", views)

    @app.post(
        "/proplets/enroll",
        **described(m.IdentityFile, status=201, errors=(409,), body=m.EnrollRequest, body_optional=True),
    )
    async def enroll_proplet(request: Request) -> JSONResponse:
        body = await _json_body(request, optional=True) or {}
        if not isinstance(body, dict):
            raise ValidationError("body must be a JSON object: {id?, kind?, client_id?, key?}")
        unknown = set(body) - {"id", "kind", "client_id", "key"}
        if unknown:
            raise ValidationError(f"unknown field {sorted(unknown)[0]!r}", sorted(unknown)[0])
        for name in ("id", "kind", "client_id", "key"):
            if body.get(name) is not None and not isinstance(body[name], str):
                raise ValidationError(f"{name} must be a string", name)
        kind = body.get("kind") or "proplet"
        if kind == "upstream" and not (body.get("client_id") or body.get("id")):
            raise ValidationError("an upstream proplet is enrolled with its own client_id", "client_id")
        enrollment = await manager.enroll(kind, body.get("id"), body.get("client_id"), body.get("key"))
        doc = enrollment.identity_file(manager.broker_url or None)
        return JSONResponse(doc, status_code=201, headers={"Cache-Control": "no-store"})

    @app.get("/proplets/identities", **described(m.IdentityPage, query=m.PageQuery))
    async def list_identities(request: Request) -> dict[str, Any]:
        offset, limit = _page(request)
        views = [i.view() for i in manager.identities.all() if i.kind != "manager"]
        return _page_body(offset, limit, "identities", views)

    @app.post("/proplets/{proplet_id}/revoke", **described(m.IdentityView, errors=(403, 404, 409)))
    async def revoke_proplet(proplet_id: str) -> dict[str, Any]:
        return (await manager.revoke(proplet_id)).view()

    @app.delete("/proplets/{proplet_id}/identity", **described(status=204, errors=(403, 404, 409)))
    async def revoke_proplet_identity(proplet_id: str) -> Response:
        await manager.revoke(proplet_id)
        return Response(status_code=204)

    @app.get("/proplets/{proplet_id}", **described(m.PropletView, errors=(404,)))
    async def get_proplet(proplet_id: str) -> dict[str, Any]:
        proplet = manager.engine.get_proplet(proplet_id)
        return proplet_view(proplet, manager.proplet_alive(proplet))

    @app.delete("/proplets/{proplet_id}", **described(status=204, errors=(403, 404, 409)))
    async def delete_proplet(proplet_id: str) -> Response:
        await manager.delete_proplet(proplet_id)
        return Response(status_code=204)

    @app.get(
        "/proplets/{proplet_id}/alive-history", **described(m.AliveHistory, errors=(404,), query=m.PageQuery)
    )
    async def alive_history(proplet_id: str, request: Request) -> dict[str, Any]:
        from orchestrator.views import rfc3339

        offset, limit = _page(request)
        proplet = manager.engine.get_proplet(proplet_id)
        history = [rfc3339(t) for t in reversed(proplet.alive_history)]
        return _page_body(offset, limit, "history", history)

    @app.post(
        "/workflows", **described(m.WorkflowCreated, status=201, errors=(404, 409), body=m.WorkflowRequest)
    )
    async def create_workflow(request: Request) -> JSONResponse:
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise ValidationError("body must be a JSON object with a 'tasks' list")
        tasks = await manager.create_workflow(body.get("tasks"))
        return JSONResponse({"tasks": [task_view(t) for t in tasks]}, status_code=201)

    @app.get("/workflows", **described(m.WorkflowPage, query=m.PageQuery))
    async def list_workflows(request: Request) -> dict[str, Any]:
        """The workflows (tasks created together by ``POST /workflows``), newest first."""
        from orchestrator.core.workflow import group_state
        from orchestrator.views import rfc3339

        offset, limit = _page(request)
        assert manager.store is not None
        total, rows = await manager.store.list_workflows(offset, limit)
        views = [
            {
                "workflow_id": w.workflow_id,
                "state": group_state([TaskState(s) for s in w.states]),
                "tasks": sum(w.states.values()),
                "created_at": rfc3339(w.created_at),
            }
            for w in rows
        ]
        return {"offset": offset, "limit": limit, "total": total, "workflows": views}

    @app.get("/workflows/{workflow_id}", **described(m.WorkflowDetail, errors=(404,)))
    async def get_workflow(workflow_id: str) -> dict[str, Any]:
        from orchestrator.core.workflow import job_state
        from orchestrator.views import rfc3339

        check_text(workflow_id, "workflow_id", MAX_ID_CHARS)  # a store compares it: no NUL, no surrogate
        assert manager.store is not None
        page = await manager.store.list_tasks(0, MAX_WORKFLOW_TASKS, workflow_id=workflow_id)
        if not page.tasks:
            raise NotFound(f"workflow {workflow_id} not found")
        views = []
        for task in page.tasks:
            view = task_view(task)
            ends = page.modules.get(task.id)
            if ends is not None:
                view["file"] = redacted_module(ends.size, ends.head, ends.tail)
            views.append(view)
        created = min((t.created_at for t in page.tasks if t.created_at), default=None)
        return {"workflow_id": workflow_id, "state": job_state(page.tasks), "created_at": rfc3339(created),
                "tasks": views}  # fmt: skip

    @app.post("/jobs", **described(m.JobCreated, status=201, errors=(404, 409), body=m.JobRequest))
    async def create_job(request: Request) -> JSONResponse:
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise ValidationError("body must be a JSON object with 'name' and 'tasks'")
        name = body.get("name", "")
        if not isinstance(name, str):
            raise ValidationError("name must be a string", "name")
        mode = body.get("execution_mode") or ""
        if not isinstance(mode, str):
            raise ValidationError("execution_mode must be a string", "execution_mode")
        job, tasks = await manager.create_job(name, body.get("tasks"), mode)
        return JSONResponse(
            {"job_id": job.id, "tasks": [task_view(t) for t in tasks]},
            status_code=201,
            headers={"Location": _location("jobs", job.id)},
        )

    @app.get("/jobs", **described(m.JobPage, query=m.JobQuery))
    async def list_jobs(request: Request) -> dict[str, Any]:
        offset, limit = _page(request)
        status = request.query_params.get("status", "")
        if status not in ("", "pending", "running", "completed", "failed"):
            raise ValidationError("status must be pending, running, completed or failed", "status")
        summaries = [job_summary(manager, job_id) for job_id in manager.engine.jobs]
        summaries.sort(key=lambda j: (j["created_at"], j["job_id"]), reverse=True)
        if status:
            summaries = [j for j in summaries if j["state"] == status]
        return _page_body(offset, limit, "jobs", summaries)

    @app.get("/jobs/{job_id}", **described(m.JobDetail, errors=(404,)))
    async def get_job(job_id: str) -> dict[str, Any]:
        tasks = manager.engine.job_tasks(job_id)
        return {**job_summary(manager, job_id), "tasks": [task_view(t) for t in tasks]}

    @app.post("/jobs/{job_id}/start", **described(m.JobAction, errors=(403, 404, 409)))
    async def start_job(job_id: str) -> dict[str, Any]:
        await manager.start_job(job_id)
        return {"message": "job started", "job_id": job_id}

    @app.post("/jobs/{job_id}/stop", **described(m.JobAction, errors=(403, 404, 409)))
    async def stop_job(job_id: str) -> dict[str, Any]:
        await manager.stop_job(job_id)
        return {"message": "job stopped", "job_id": job_id}

    @app.get(
        "/proplets/{proplet_id}/metrics", **described(m.PropletMetricsPage, errors=(404,), query=m.PageQuery)
    )
    async def proplet_metrics(proplet_id: str, request: Request) -> dict[str, Any]:
        from orchestrator.views import rfc3339

        offset, limit = _page(request)
        manager.engine.get_proplet(proplet_id)
        assert manager.store is not None
        total, rows = await manager.store.list_proplet_metrics(proplet_id, offset, limit)
        return {
            "offset": offset,
            "limit": limit,
            "total": total,
            "metrics": [
                {
                    "proplet_id": r.proplet_id,
                    "namespace": r.namespace,
                    "timestamp": rfc3339(r.timestamp),
                    "cpu_metrics": r.cpu_metrics,
                    "memory_metrics": r.memory_metrics,
                }
                for r in rows
            ],
        }

    @app.get("/tasks/{task_id}/metrics", **described(m.TaskMetricsPage, errors=(404,), query=m.PageQuery))
    async def task_metrics(task_id: str, request: Request) -> dict[str, Any]:
        from orchestrator.views import rfc3339

        offset, limit = _page(request)
        await manager.find_task(_uuid(task_id, "task_id"))
        assert manager.store is not None
        total, rows = await manager.store.list_task_metrics(task_id, offset, limit)
        return {
            "offset": offset,
            "limit": limit,
            "total": total,
            "metrics": [
                {
                    "task_id": r.task_id,
                    "proplet_id": r.proplet_id,
                    "metrics": r.metrics,
                    "aggregated": r.aggregated,
                    "timestamp": rfc3339(r.timestamp),
                }
                for r in rows
            ],
        }

    def _events_body(subject: str, subject_id: str, rows: list[Any]) -> dict[str, Any]:
        from orchestrator.views import events_view

        return events_view(subject, subject_id, [(r.at, r.kind, r.cause, r.fields) for r in rows])

    @app.get("/tasks/{task_id}/events", **described(m.TaskEvents, errors=(404,)))
    async def task_events(task_id: str) -> dict[str, Any]:
        """The task's timeline, oldest first: created, queued, waiting (why), placed, start published,
        refused, proplet died, requeued, stopped, result, failed, receipt rejected."""
        await manager.find_task(_uuid(task_id, "task_id"))
        assert manager.store is not None
        return _events_body("task", task_id, await manager.store.list_events("task", task_id))

    @app.get("/proplets/{proplet_id}/events", **described(m.PropletEvents, errors=(404,)))
    async def proplet_events(proplet_id: str) -> dict[str, Any]:
        """The proplet's timeline, oldest first: joined, died (cause), back."""
        manager.engine.get_proplet(proplet_id)
        assert manager.store is not None
        return _events_body("proplet", proplet_id, await manager.store.list_events("proplet", proplet_id))

    @app.post(
        "/tasks/{task_id}/events",
        **described(m.EventsRecorded, status=201, errors=(403, 404, 409), body=m.EventReport),
    )
    async def report_task_events(task_id: str, request: Request) -> dict[str, Any]:
        """Events seen from outside join the task's timeline (admin): ``{"events": [{"kind":
        "fault"|"console"|"note", "cause", "at"?, "source"?, "fields"?}]}`` (docs/api.md)."""
        body = await _json_body(request)
        return await manager.report_events("task", _uuid(task_id, "task_id"), body)

    @app.post(
        "/proplets/{proplet_id}/events",
        **described(m.EventsRecorded, status=201, errors=(403, 404, 409), body=m.EventReport),
    )
    async def report_proplet_events(proplet_id: str, request: Request) -> dict[str, Any]:
        """Events seen on a proplet's device (a twin fault, a board's console line) join its timeline
        and the timeline of every task whose attempt was there at the event's time (admin)."""
        body = await _json_body(request)
        return await manager.report_events("proplet", proplet_id, body)

    @app.get(
        "/metrics",
        **described(
            media={"text/plain": {"schema": {"type": "string"}}},
            open_route=True,
            summary="Prometheus exposition",
        ),
    )
    async def metrics() -> PlainTextResponse:
        from orchestrator.adapters.prometheus import render

        return PlainTextResponse(render(manager), media_type="text/plain; version=0.0.4")

    dashboard.mount(app, manager)  # /ui/, /static/, /docs, /redoc

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE"], include_in_schema=False)
    async def not_found(path: str, request: Request) -> JSONResponse:
        allowed = sorted(
            {method for route in app.router.routes if isinstance(route, APIRoute) and route.methods
             and route.matches(request.scope)[0] == Match.PARTIAL for method in route.methods}
        )  # fmt: skip
        if allowed:  # a known path, another method
            raise HTTPException(405, f"{request.method} /{path} is not allowed; use {', '.join(allowed)}",
                                headers={"Allow": ", ".join(allowed)})  # fmt: skip
        raise NotFound(f"no route for /{path}")

    return app
