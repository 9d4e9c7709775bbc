"""Routes of the manager's API render their endpoint's JSON value directly (no ``jsonable_encoder``
pass), with the route's own status code; parameters, Responses and sync endpoints are as before; an
endpoint that takes only the request answers as it did through FastAPI's request handler."""

from __future__ import annotations

import json
from typing import Any

import fastapi.routing
import httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel

from orchestrator.adapters import http_api
from orchestrator.core.errors import EngineError, ValidationError


def _app() -> FastAPI:
    app = FastAPI()
    app.router.route_class = http_api._PlainJsonRoute

    @app.post("/things/{thing_id}", status_code=201, response_model=None)
    async def create(thing_id: str, request: Request) -> dict[str, Any]:
        return {"id": thing_id, "q": request.query_params.get("q"), "nested": {"list": [1, 2.5, None]}}

    @app.get("/text", response_model=None)
    async def text() -> PlainTextResponse:
        return PlainTextResponse("plain", status_code=202)

    @app.get("/sync", response_model=None)
    def sync() -> dict[str, Any]:
        return {"sync": True}

    @app.get("/nan", response_model=None)
    async def nan() -> dict[str, Any]:
        return {"value": float("nan")}

    return app


async def test_a_json_value_is_rendered_with_the_route_status_and_parameters() -> None:
    transport = httpx.ASGITransport(app=_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        response = await client.post("/things/a%20b", params={"q": "x"})
        text = await client.get("/text")
        sync = await client.get("/sync")
        nan = await client.get("/nan")
    assert response.status_code == 201
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"id": "a b", "q": "x", "nested": {"list": [1, 2.5, None]}}
    assert (text.status_code, text.text) == (202, "plain")
    assert sync.json() == {"sync": True}
    assert nan.status_code == 500  # JSON cannot hold NaN: refused, not sent as text


def test_every_api_route_with_a_json_body_takes_the_direct_path() -> None:
    from orchestrator.service import ManagerService, ManagerSettings

    app = http_api.create_app(ManagerService(ManagerSettings(db=":memory:", api_port=0)))
    routes = [r for r in app.routes if isinstance(r, http_api.APIRoute)]
    assert routes and all(isinstance(r, http_api._PlainJsonRoute) for r in routes)
    wrapped = [r for r in routes if getattr(r.endpoint, "__wrapped__", None) is not None]
    assert {r.path for r in wrapped} >= {"/tasks", "/workflows/{workflow_id}", "/proplets"}


def _request_only_app(route_class: type[APIRoute]) -> FastAPI:
    """Endpoints that take the request and nothing else, on ``route_class``; errors as the manager's."""
    app = FastAPI()
    app.router.route_class = route_class

    @app.exception_handler(EngineError)
    async def engine_error(_: Request, err: EngineError) -> JSONResponse:
        return JSONResponse({"error": err.message, "field": err.field}, status_code=err.status)

    @app.post("/things", status_code=201, response_model=None)
    async def create(request: Request) -> dict[str, Any]:
        body = json.loads(await request.body())
        if "name" not in body:
            raise ValidationError("name is required", "name")
        return {"name": body["name"], "q": request.query_params.get("q"), "ua": request.headers["x-who"]}

    @app.get("/things", response_model=None)
    async def listing(request: Request) -> dict[str, Any]:
        if request.query_params.get("limit") == "x":
            raise HTTPException(400, "limit must be a number")
        return {"things": [], "limit": request.query_params.get("limit")}

    return app


async def test_an_endpoint_taking_only_the_request_answers_as_through_fastapis_handler(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Served by Starlette's request handler (no dependency solving), a request-only endpoint gives
    what FastAPI's handler gave: body, query and headers read, status codes, exception handlers, HEAD,
    405, and the same OpenAPI."""
    solved = 0
    solve = fastapi.routing.solve_dependencies

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal solved
        solved += 1
        return await solve(*args, **kwargs)

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", counted)
    calls = [
        ("POST", "/things?q=1", b'{"name": "a"}'),
        ("POST", "/things", b"{}"),  # EngineError -> the handler's 400 naming the field
        ("GET", "/things?limit=5", b""),
        ("GET", "/things?limit=x", b""),  # HTTPException -> 400
        ("HEAD", "/things", b""),
        ("DELETE", "/things", b""),  # 405 with Allow
    ]
    answers, solves = [], []
    for route_class in (APIRoute, http_api._PlainJsonRoute):
        solved = 0
        app = _request_only_app(route_class)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            got = []
            for method, url, body in calls:
                r = await client.request(method, url, content=body, headers={"x-who": "me"})
                got.append((r.status_code, r.headers.get("allow"), r.content))
        answers.append((got, app.openapi()))
        solves.append(solved)
    assert answers[0] == answers[1]
    assert [status for status, _, _ in answers[1][0]] == [201, 400, 200, 400, 405, 405]
    assert json.loads(answers[1][0][1][2]) == {"error": "name is required", "field": "name"}
    assert solves[0] >= 4 and solves[1] == 0  # FastAPI's handler solved each call; the lean one none


async def test_a_request_only_endpoint_with_a_response_model_keeps_fastapis_handler() -> None:
    """FastAPI turns such an endpoint's value into its model's JSON; Starlette's handler could not."""

    class Thing(BaseModel):
        name: str

    app = FastAPI()
    app.router.route_class = http_api._PlainJsonRoute

    @app.get("/thing", response_model=Thing)
    async def thing(request: Request) -> Any:
        return {"name": request.query_params["name"], "dropped": True}

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        response = await client.get("/thing", params={"name": "a"})
    assert (response.status_code, response.json()) == (200, {"name": "a"})


async def test_a_request_only_endpoint_with_a_dependency_keeps_fastapis_handler() -> None:
    """A route (or router) dependency must still run: such a route is not handed to Starlette."""

    async def deny() -> None:
        raise HTTPException(403, "no")

    app = FastAPI()
    app.router.route_class = http_api._PlainJsonRoute

    @app.get("/guarded", response_model=None, dependencies=[Depends(deny)])
    async def guarded(request: Request) -> dict[str, Any]:
        return {"reached": True}

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        response = await client.get("/guarded")
    assert response.status_code == 403
