"""The dashboard's HTTP side on the real API (uvicorn, real HTTP): token via cookie for read-only pages,
the reports directory confined to itself, offline docs, and WAT refused with a hint."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from orchestrator.service import ManagerService, ManagerSettings

READ, ADMIN = "r-" + uuid.uuid4().hex, "a-" + uuid.uuid4().hex


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    reports = tmp_path / "reports"
    (reports / "s1").mkdir(parents=True)
    (reports / "s1" / "run.html").write_text("<h1>scenario s1</h1>")
    (tmp_path / "secret.html").write_text("outside the reports directory")
    manager = ManagerService(
        ManagerSettings(
            broker="embedded://127.0.0.1:0", db=str(tmp_path / "m.db"), api_port=0,
            domain=f"d-{uuid.uuid4().hex[:8]}", api_token_read=READ, api_token_admin=ADMIN,
            reports_dir=str(reports),
        )
    )  # fmt: skip
    await manager.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{manager.api_port}", timeout=10) as c:
            yield c
    finally:
        await manager.stop()


async def test_a_token_given_once_in_the_url_opens_the_read_only_pages(api: httpx.AsyncClient) -> None:
    assert (await api.get("/ui/fleet")).status_code == 401
    assert (await api.get("/ui/?token=wrong", follow_redirects=True)).status_code == 401
    first = await api.get(f"/ui/?token={READ}")
    assert first.status_code == 303 and first.headers["location"] == "/ui/fleet"
    assert "httponly" in first.headers["set-cookie"].lower()
    for page in ("/ui/fleet", "/ui/tasks?state=failed", "/ui/reports"):
        r = await api.get(page)  # the client keeps the cookie, as a browser does
        assert r.status_code == 200, (page, r.text)
        assert "<nav>" in r.text
    # The cookie authorizes dashboard GETs only: neither the JSON API nor any change of state.
    assert (await api.get("/tasks")).status_code == 401
    assert (await api.post("/tasks", json={"name": "x"})).status_code == 401
    assert (await api.get("/tasks", headers={"Authorization": f"Bearer {READ}"})).status_code == 200


async def test_reports_are_listed_and_served_only_from_their_directory(api: httpx.AsyncClient) -> None:
    auth = {"Authorization": f"Bearer {READ}"}
    listing = await api.get("/ui/reports", headers=auth)
    assert 'href="/ui/reports/s1/run.html"' in listing.text
    report = await api.get("/ui/reports/s1/run.html", headers=auth)
    assert report.status_code == 200 and "scenario s1" in report.text
    for escape in ("/ui/reports/..%2Fsecret.html", "/ui/reports/s1/..%2F..%2Fsecret.html"):
        r = await api.get(escape, headers=auth)
        assert r.status_code == 404 and "outside" not in r.text, escape


async def test_api_docs_use_only_local_assets_and_need_no_token(api: httpx.AsyncClient) -> None:
    for page, asset in (("/docs", "/static/swagger-ui-bundle.js"), ("/redoc", "/static/redoc.standalone.js")):
        r = await api.get(page)
        assert r.status_code == 200 and asset in r.text
        assert "cdn" not in r.text and "googleapis" not in r.text
        assert (await api.get(asset)).status_code == 200
    assert (await api.get("/static/htmx.min.js")).text.startswith("/* htmx")


async def test_a_wat_file_is_refused_with_a_hint(api: httpx.AsyncClient) -> None:
    wat = base64.b64encode(b'  (module (func (export "f")))').decode()
    admin = {"Authorization": f"Bearer {ADMIN}"}
    r = await api.post("/tasks", json={"name": "f", "file": wat}, headers=admin)
    assert r.status_code == 400
    assert "WebAssembly text (WAT)" in r.json()["error"] and "binary wasm" in r.json()["error"]


async def test_the_task_list_shows_the_newest_tasks_first(api: httpx.AsyncClient) -> None:
    admin = {"Authorization": f"Bearer {ADMIN}"}
    specs = [{"name": f"n{i:02d}", "file": "AGFzbQEAAAA="} for i in range(55)]
    created = await api.post("/tasks/batch", json={"tasks": specs}, headers=admin)
    assert created.status_code == 201, created.text
    ids = [item["task"]["id"] for item in created.json()["results"]]
    page = (await api.get("/ui/tasks", headers={"Authorization": f"Bearer {READ}"})).text
    assert "55 task(s), newest 50 shown" in page
    assert page.index(f'id="task-{ids[54]}"') < page.index(f'id="task-{ids[5]}"')
    assert f'id="task-{ids[4]}"' not in page  # the five oldest are past the page
    filtered = (await api.get("/ui/tasks?name=n07", headers={"Authorization": f"Bearer {READ}"})).text
    assert f'id="task-{ids[7]}"' in filtered and f'id="task-{ids[8]}"' not in filtered


async def test_unknown_proplets_and_tasks_are_named_in_a_404(api: httpx.AsyncClient) -> None:
    read = {"Authorization": f"Bearer {READ}"}
    r = await api.get("/ui/proplets/<nope>", headers=read)
    assert r.status_code == 404 and "proplet &lt;nope&gt; not found" in r.text
    missing = str(uuid.uuid4())
    r = await api.get(f"/ui/tasks/{missing}", headers=read)
    assert r.status_code == 404 and missing in r.text
