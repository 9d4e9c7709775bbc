"""Bearer tokens with scopes on the real API (uvicorn, real HTTP): read tokens may GET, only admin tokens
change state, unknown or missing tokens get 401, and /metrics is closed unless made public."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.adapters.http_api import _BearerAuth
from orchestrator.cli import build_parser
from orchestrator.service import ManagerService, ManagerSettings

READ, ADMIN, LEGACY = "r-" + uuid.uuid4().hex, "a-" + uuid.uuid4().hex, "l-" + uuid.uuid4().hex


async def _manager(tmp_path: Path, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    manager = ManagerService(
        ManagerSettings(
            broker="embedded://127.0.0.1:0", db=str(tmp_path / "m.db"), api_port=0,
            domain=f"d-{uuid.uuid4().hex[:8]}", **settings,
        )
    )  # fmt: skip
    await manager.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{manager.api_port}", timeout=10) as api:
            yield api
    finally:
        await manager.stop()


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async for client in _manager(tmp_path, api_token=LEGACY, api_token_read=READ, api_token_admin=ADMIN):
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


SPEC = {"name": "add", "file": "AGFzbQEAAAA=", "inputs": ["1", "2"]}


async def test_a_read_token_reads_everything_and_changes_nothing(api: httpx.AsyncClient) -> None:
    task = (await api.post("/tasks", json=SPEC, headers=bearer(ADMIN))).json()
    assert (await api.get("/tasks", headers=bearer(READ))).json()["total"] == 1
    assert (await api.get(f"/tasks/{task['id']}", headers=bearer(READ))).json()["verified"] is False
    receipt = await api.get(f"/tasks/{task['id']}/receipt", headers=bearer(READ))
    assert receipt.status_code == 404 and "has no receipt" in receipt.json()["error"]
    assert (await api.get("/proplets", headers=bearer(READ))).status_code == 200
    for method, path in [
        ("POST", "/tasks"),
        ("POST", f"/tasks/{task['id']}/start"),
        ("PUT", f"/tasks/{task['id']}"),
        ("DELETE", f"/tasks/{task['id']}"),
        ("POST", "/jobs"),
        ("POST", f"/tasks/{task['id']}/events"),
    ]:
        refused = await api.request(method, path, json=SPEC, headers=bearer(READ))
        assert refused.status_code == 403, (method, path)
        assert refused.json()["error"] == f"{method} {path} needs an admin token; this token has read scope"
    assert (await api.get(f"/tasks/{task['id']}", headers=bearer(ADMIN))).json()["name"] == "add"  # unchanged


async def test_admin_and_the_legacy_api_token_may_change_state(api: httpx.AsyncClient) -> None:
    for token in (ADMIN, LEGACY):
        created = await api.post("/tasks", json=SPEC, headers=bearer(token))
        assert created.status_code == 201
        deleted = await api.delete(f"/tasks/{created.json()['id']}", headers=bearer(token))
        assert deleted.status_code == 204


@pytest.mark.parametrize(
    "header",
    [
        "",
        "Bearer",
        f"Basic {ADMIN}",
        f"Bearer {ADMIN[:-1]}",
        f"Bearer {ADMIN}x",
        f"bearer {ADMIN}",
    ],
    # named, not shown: the tokens are random, and parallel workers must collect the same test ids
    ids=["no-header", "scheme-only", "basic-scheme", "token-cut-short", "token-too-long", "lowercase-scheme"],
)
async def test_missing_or_wrong_tokens_are_401_and_health_stays_open(
    api: httpx.AsyncClient, header: str
) -> None:
    response = await api.get("/tasks", headers={"Authorization": header} if header else {})
    assert response.status_code == 401
    assert response.json() == {"error": "missing or invalid bearer token"}
    assert response.headers["www-authenticate"] == "Bearer"
    assert (await api.get("/health")).json()["status"] == "pass"


async def test_metrics_need_a_token_unless_made_public(api: httpx.AsyncClient, tmp_path: Path) -> None:
    assert (await api.get("/metrics")).status_code == 401
    assert "propeller_tasks" in (await api.get("/metrics", headers=bearer(READ))).text
    async for public in _manager(tmp_path / "public", api_token_admin=ADMIN, metrics_public=True):
        assert "propeller_tasks" in (await public.get("/metrics")).text
        assert (await public.get("/tasks")).status_code == 401


def test_a_token_given_for_both_scopes_is_admin_and_only_exact_tokens_match() -> None:
    auth = _BearerAuth(None, {"x": "admin", "y": "read"})
    assert auth.scope_of(b"Bearer x") == "admin" and auth.scope_of(b"Bearer y") == "read"
    assert auth.scope_of(b"Bearer xy") is None and auth.scope_of(b"x") is None


def test_cli_flags_and_environment_set_the_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROPELLER_API_TOKEN_READ", "r1,r2")
    monkeypatch.setenv("PROPELLER_METRICS_PUBLIC", "1")
    args = build_parser().parse_args(["manager", "--api-token-admin", "a1", "--api-token", "legacy"])
    assert (args.api_token_read, args.api_token_admin, args.api_token, args.metrics_public) == (
        "r1,r2",
        "a1",
        "legacy",
        True,
    )
