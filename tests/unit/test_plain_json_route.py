"""Routes of the manager's API render their endpoint's JSON value directly (no ``jsonable_encoder``
pass), with the route's own status code; parameters, Responses and sync endpoints are as before."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse

from orchestrator.adapters import http_api


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
