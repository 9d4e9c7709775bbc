"""REST API with upstream Propeller's routes, status codes and JSON shapes (reference §6).

A thin adapter: it parses requests, calls the manager service and maps engine errors to
``{"error": "..."}`` bodies with 400/404/409 codes.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from orchestrator.core.errors import EngineError, NotFound, ValidationError
from orchestrator.views import proplet_view, task_view

if TYPE_CHECKING:
    from orchestrator.service import ManagerService

VERSION = "0.1.0"
MAX_BODY = 100 * 1024 * 1024
MAX_TASK_PAGE = 100


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _uuid(value: str, what: str) -> str:
    try:
        uuid.UUID(value)
    except ValueError:
        raise ValidationError(f"{what} must be a UUID, got {value!r}", what) from None
    return value


def _page(request: Request, *, max_limit: int | None = None) -> tuple[int, int]:
    def number(key: str, default: int) -> int:
        raw = request.query_params.get(key)
        if raw is None or raw == "":
            return default
        try:
            return int(raw)
        except ValueError:
            raise ValidationError(f"{key} must be an integer, got {raw!r}", key) from None

    offset, limit = number("offset", 0), number("limit", 100)
    if offset < 0:
        raise ValidationError("offset must be >= 0", "offset")
    if limit < 1 or (max_limit is not None and limit > max_limit):
        raise ValidationError(f"limit must be between 1 and {max_limit or 'infinity'}", "limit")
    return offset, limit


async def _json_body(request: Request, *, optional: bool = False) -> Any:
    body = await request.body()
    if optional and not body:
        return {}
    if len(body) > MAX_BODY:
        raise ValidationError(f"request body exceeds {MAX_BODY} bytes")
    if "application/json" not in request.headers.get("content-type", ""):
        raise ValidationError("Content-Type must be application/json")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValidationError(f"request body is not valid JSON: {err}") from None


def create_app(manager: ManagerService) -> FastAPI:
    app = FastAPI(title="Propeller manager", version=VERSION, description="WebAssembly orchestrator API")
    instance_id = str(uuid.uuid4())
    started = time.time()

    @app.exception_handler(EngineError)
    async def _engine_error(_: Request, err: EngineError) -> JSONResponse:
        return error(err.status, err.message)

    @app.middleware("http")
    async def _auth(request: Request, call_next: Any) -> Response:
        token = manager.settings.api_token
        if token and request.url.path not in ("/health", "/docs", "/openapi.json"):
            if request.headers.get("authorization", "") != f"Bearer {token}":
                return error(401, "missing or invalid bearer token")
        response: Response = await call_next(request)
        return response

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "pass",
            "version": VERSION,
            "commit": "",
            "description": "manager service",
            "build_time": "",
            "instance_id": instance_id,
            "uptime_s": round(time.time() - started, 3),
        }

    @app.post("/tasks", status_code=201)
    async def create_task(request: Request) -> JSONResponse:
        spec = await _json_body(request)
        task = await manager.create_task(spec)
        return JSONResponse(task_view(task), status_code=201, headers={"Location": f"/tasks/{task.id}"})

    @app.get("/tasks")
    async def list_tasks(request: Request) -> dict[str, Any]:
        offset, limit = _page(request, max_limit=MAX_TASK_PAGE)
        tasks = sorted(manager.engine.tasks.values(), key=lambda t: (t.created_at or 0, t.id))
        raw_filter = request.query_params.get("metadata")
        if raw_filter:
            try:
                wanted = json.loads(raw_filter)
            except json.JSONDecodeError:
                raise ValidationError("metadata must be a JSON object", "metadata") from None
            if not isinstance(wanted, dict):
                raise ValidationError("metadata must be a JSON object", "metadata")
            tasks = [t for t in tasks if all(t.metadata.get(k) == v for k, v in wanted.items())]
        page = tasks[offset : offset + limit]
        return {"offset": offset, "limit": limit, "total": len(tasks), "tasks": [task_view(t) for t in page]}

    @app.get("/tasks/{task_id}")
    async def get_task(task_id: str) -> dict[str, Any]:
        return task_view(manager.engine.get_task(_uuid(task_id, "task_id")))

    @app.delete("/tasks/{task_id}", status_code=204)
    async def delete_task(task_id: str) -> Response:
        await manager.delete_task(_uuid(task_id, "task_id"))
        return Response(status_code=204)

    @app.post("/tasks/{task_id}/start")
    async def start_task(task_id: str) -> dict[str, Any]:
        await manager.start_task(_uuid(task_id, "task_id"))
        return {"started": True}

    @app.post("/tasks/{task_id}/stop")
    async def stop_task(task_id: str) -> dict[str, Any]:
        await manager.stop_task(_uuid(task_id, "task_id"))
        return {"stopped": True}

    @app.get("/tasks/{task_id}/results")
    async def task_results(task_id: str) -> Response:
        task = manager.engine.get_task(_uuid(task_id, "task_id"))
        if task.results is None:
            return Response(status_code=200)
        return JSONResponse({"results": task.results})

    @app.get("/proplets")
    async def list_proplets(request: Request) -> dict[str, Any]:
        offset, limit = _page(request)
        status = request.query_params.get("status", "")
        if status not in ("", "active", "inactive"):
            raise ValidationError("status must be 'active' or 'inactive'", "status")
        proplets = sorted(manager.engine.proplets.values(), key=lambda p: p.id)
        views = [proplet_view(p, manager.proplet_alive(p)) for p in proplets]
        if status:
            views = [v for v in views if v["alive"] == (status == "active")]
        return {"offset": offset, "limit": limit, "total": len(views), "proplets": views[offset : offset + limit]}

    @app.get("/proplets/{proplet_id}")
    async def get_proplet(proplet_id: str) -> dict[str, Any]:
        proplet = manager.engine.get_proplet(proplet_id)
        return proplet_view(proplet, manager.proplet_alive(proplet))

    @app.delete("/proplets/{proplet_id}", status_code=204)
    async def delete_proplet(proplet_id: str) -> Response:
        await manager.delete_proplet(proplet_id)
        return Response(status_code=204)

    @app.get("/proplets/{proplet_id}/alive-history")
    async def alive_history(proplet_id: str, request: Request) -> dict[str, Any]:
        from orchestrator.views import rfc3339

        offset, limit = _page(request)
        proplet = manager.engine.get_proplet(proplet_id)
        history = [rfc3339(t) for t in reversed(proplet.alive_history)]
        return {"offset": offset, "limit": limit, "total": len(history), "history": history[offset : offset + limit]}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        from orchestrator.adapters.prometheus import render

        return PlainTextResponse(render(manager), media_type="text/plain; version=0.0.4")

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE"], include_in_schema=False)
    async def not_found(path: str) -> JSONResponse:
        raise NotFound(f"no route for /{path}")

    return app
