"""The REST API against its own OpenAPI spec: schemathesis over every operation of a real manager.

A real ``propeller manager`` (SQLite store in a temp dir, the closed embedded broker) with one enrolled
proplet that has run a task, so the routes answer about real objects as well as unknown ids. Every
operation gets schemathesis's phases (explicit examples, coverage of boundaries and invalid values,
fuzzing; positive and negative inputs) with a bounded number of examples, and each answer must be no
server error, a status its description lists, with the content type and body schema it documents.
Then again against a manager with API tokens, with no token, a read token and an admin token.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import free_port
from tests.integration.conftest import ADD_B64
from tests.support.procs import Manager, Proplet, wait_for

pytestmark = pytest.mark.slow

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# Per operation and phase; the whole run stays well under a minute. Fixed seed: CI reruns the same
# cases; explore with API_SCHEMA_SEED=<n> API_SCHEMA_EXAMPLES=<n> (a failure prints its curl).
MAX_EXAMPLES = int(os.environ.get("API_SCHEMA_EXAMPLES", "12"))
SEED = int(os.environ.get("API_SCHEMA_SEED", "13"))
PROPLET = "schema-p1"
# Ids of real objects, substituted for generated path parameters in half the cases (the seed sets them).
KNOWN: dict[str, list[str]] = {"task_id": [], "proplet_id": [PROPLET], "job_id": []}


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Manager]:
    tmp = tmp_path_factory.mktemp("api-schema")
    domain = f"d-{uuid.uuid4().hex[:8]}"
    manager = Manager(tmp, f"embedded://127.0.0.1:{free_port()}", domain, "--heartbeat-interval", "0.5")
    proplet: Proplet | None = None
    manager.start()
    try:
        with httpx.Client(base_url=manager.url, timeout=10) as api:
            enrolled = api.post("/proplets/enroll", json={"id": PROPLET})
            assert enrolled.status_code == 201, enrolled.text
            identity = tmp / "identity.json"
            identity.write_text(json.dumps(enrolled.json()))
            broker = enrolled.json()["broker"]
            proplet = Proplet(tmp, broker, domain, PROPLET, "--identity", str(identity))
            proplet.start()
            wait_for(lambda: api.get(f"/proplets/{PROPLET}").status_code == 200, 30, "the proplet to join")
            KNOWN["task_id"].extend(_seed_tasks(api))
            job = api.post("/jobs", json={"name": "schema-job", "tasks": [{"name": "add", "file": ADD_B64}]})
            assert job.status_code == 201, job.text
            KNOWN["job_id"].append(job.json()["job_id"])
        yield manager
    finally:
        if proplet is not None:
            proplet.stop()
        manager.stop()


def _seed_tasks(api: httpx.Client) -> list[str]:
    """A finished task (results, logs, receipt, events) and a pending one."""
    done = api.post("/tasks", json={"name": "add", "file": ADD_B64, "inputs": [2, 40], "start": True})
    assert done.status_code == 201, done.text
    pending = api.post("/tasks", json={"name": "add", "file": ADD_B64, "metadata": {"team": "a"}})
    assert pending.status_code == 201, pending.text
    done_id = done.json()["id"]
    wait_for(lambda: api.get(f"/tasks/{done_id}").json()["state"] == 3, 30, "the seeded task to complete")
    assert api.get(f"/tasks/{done_id}/results").json()["results"] == "42"
    return [done_id, pending.json()["id"]]


def _spec() -> dict[str, Any]:
    """The spec the manager serves, built from the same code without starting one (schemathesis
    collects its tests at import time; ``test_the_served_spec_is_the_tested_one`` holds them equal)."""
    from orchestrator.adapters.http_api import create_app
    from orchestrator.service import ManagerService, ManagerSettings

    return create_app(ManagerService(ManagerSettings())).openapi()


SPEC = _spec()


def _schema(examples: int) -> Any:
    """The spec's schemathesis tests: ``examples`` per operation and phase, the fixed seed."""
    config = {"generation": {"max-examples": examples, "mode": "all"},
              "phases": {"stateful": {"enabled": False}}, "seed": SEED}  # fmt: skip
    return schemathesis.openapi.from_dict(SPEC, config=schemathesis.Config.from_dict(config))


schema = _schema(MAX_EXAMPLES)


def _real_ids(ids_of: dict[str, list[str]]) -> Any:
    def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any]) -> Any:
        """Half the cases address a real task, proplet or job instead of a generated id."""
        known = {key: ids_of[key] for key in path_parameters or {} if ids_of.get(key)}
        if not known:
            return st.just(path_parameters)
        real = st.fixed_dictionaries({key: st.sampled_from(ids) for key, ids in known.items()})
        return st.one_of(st.just(path_parameters), real.map(lambda ids: {**path_parameters, **ids}))

    return flatmap_path_parameters


schema.hook(_real_ids(KNOWN))


# The parametrize gives each operation's test its own id: without it schemathesis (4.32, pytest 9)
# gives all of them one, and pytest-xdist, which schedules by id, ran only one operation.
@pytest.mark.parametrize("who", ["open"])
@schema.parametrize()
def test_every_operation_answers_as_documented(case: Any, who: str, manager: Manager) -> None:
    case.call_and_validate(base_url=manager.url, checks=CHECKS)


# ------------------------------------------------------------------ with API tokens
# The same spec against a manager started with a read and an admin token, as a client with no token
# (401 everywhere but the open routes), a read token (403 on every route that changes state) and an
# admin token: the 401 and 403 answers must be documented too. Fewer examples per operation (the
# checks at the door do not depend on the body): the three runs stay around half a minute.
READ, ADMIN = "r-" + uuid.uuid4().hex, "a-" + uuid.uuid4().hex
TOKENS = {"none": None, "read": READ, "admin": ADMIN}
AUTH_EXAMPLES = int(os.environ.get("API_SCHEMA_AUTH_EXAMPLES", "3"))
AUTH_KNOWN: dict[str, list[str]] = {"task_id": [], "proplet_id": [], "job_id": []}
auth_schema = _schema(AUTH_EXAMPLES)
auth_schema.hook(_real_ids(AUTH_KNOWN))


@pytest.fixture(scope="module")
def tokens_manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Manager]:
    """A manager with tokens, with a pending task, a job and an enrolled proplet (never started)."""
    tmp = tmp_path_factory.mktemp("api-schema-tokens")
    broker = f"embedded://127.0.0.1:{free_port()}"
    manager = Manager(
        tmp, broker, f"d-{uuid.uuid4().hex[:8]}", "--api-token-read", READ, "--api-token-admin", ADMIN
    )
    manager.start()
    try:
        admin = {"Authorization": f"Bearer {ADMIN}"}
        with httpx.Client(base_url=manager.url, timeout=10, headers=admin) as api:
            task = api.post("/tasks", json={"name": "add", "file": ADD_B64, "inputs": [2, 40]})
            assert task.status_code == 201, task.text
            AUTH_KNOWN["task_id"].append(task.json()["id"])
            job = api.post("/jobs", json={"name": "schema-job", "tasks": [{"name": "add", "file": ADD_B64}]})
            assert job.status_code == 201, job.text
            AUTH_KNOWN["job_id"].append(job.json()["job_id"])
        yield manager
    finally:
        manager.stop()


@pytest.mark.parametrize("who", TOKENS)
@auth_schema.parametrize()
def test_every_operation_answers_as_documented_with_tokens(
    case: Any, who: str, tokens_manager: Manager
) -> None:
    token = TOKENS[who]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    case.call_and_validate(base_url=tokens_manager.url, headers=headers, checks=CHECKS)


def test_a_manager_with_tokens_serves_the_tested_spec_openly(tokens_manager: Manager) -> None:
    assert httpx.get(f"{tokens_manager.url}/openapi.json").json() == json.loads(json.dumps(SPEC))
    assert httpx.get(f"{tokens_manager.url}/tasks").status_code == 401


def test_the_served_spec_is_the_tested_one(manager: Manager) -> None:
    assert httpx.get(f"{manager.url}/openapi.json").json() == json.loads(json.dumps(SPEC))


def test_every_route_is_documented(manager: Manager) -> None:
    """Each operation lists its request body (when it takes one), its success body and its errors."""
    spec = httpx.get(f"{manager.url}/openapi.json").json()
    takes_body = {("post", "/tasks"), ("put", "/tasks/{task_id}"), ("post", "/tasks/batch"),
                  ("post", "/workflows"), ("post", "/jobs"), ("post", "/proplets/enroll"),
                  ("post", "/tasks/{task_id}/invoke"), ("put", "/tasks/{task_id}/upload"),
                  ("post", "/tasks/{task_id}/events"), ("post", "/proplets/{proplet_id}/events")}  # fmt: skip
    operations = [(m, p, op) for p, item in spec["paths"].items() for m, op in item.items()]
    assert len(operations) >= 33
    for method, path, op in operations:
        codes = set(op["responses"])
        assert codes & {"200", "201", "204"}, (method, path)
        assert {"400", "503"} <= codes and "422" not in codes, (method, path, codes)
        assert ("requestBody" in op) == ((method, path) in takes_body), (method, path)
        for code, response in op["responses"].items():
            if code != "204":
                assert response.get("content"), (method, path, code)
    assert spec["paths"]["/tasks"]["get"]["parameters"], "GET /tasks documents its filters"
    task = spec["components"]["schemas"]["TaskView"]
    assert {"state", "state_name"} <= set(task["required"])


DEEP = '{"a":' * 2000 + "1" + "}" * 2000  # deeper than the JSON parser recurses
HOSTILE_QUERIES = [
    # (route, query parameters, the key the 400 must name)
    ("/tasks", {"metadata": DEEP}, "metadata"),
    ("/tasks", {"metadata": '{"a":' * 40 + "1" + "}" * 40}, "metadata"),
    ("/tasks", {"metadata": '{"a": "x\\u0000"}'}, "metadata.a"),
    ("/tasks", {"metadata": '{"a": "\\ud800"}'}, "metadata.a"),
    ("/tasks", {"metadata": '{"a": 1e999}'}, "metadata.a"),
    ("/tasks", {"metadata": '{"a": NaN}'}, "metadata.a"),
    ("/tasks", {"metadata": '{"a": 99999999999999999999999}'}, "metadata.a"),
    ("/tasks", {"metadata": "{not json"}, "metadata"),
    ("/tasks", {"name": "x\x00"}, "name"),
    ("/tasks", {"proplet_id": "p" * 300}, "proplet_id"),
    ("/tasks", {"offset": str(10**30)}, "offset"),
    ("/tasks", {"offset": "9" * 5000}, "offset"),
    ("/tasks", {"state": "\u00b2"}, "state"),
    ("/tasks", {"limit": "\u0663"}, ""),  # Arabic-Indic 3: int() reads it; within bounds, so 200
    (f"/proplets/{PROPLET}/metrics", {"offset": str(1 << 64)}, "offset"),
    ("/tasks/{task}/logs", {"after": str(1 << 64)}, "after"),
    ("/tasks/{task}/metrics", {"limit": str(1 << 64)}, "limit"),
]


@pytest.mark.parametrize(("route", "query", "field"), HOSTILE_QUERIES)
def test_hostile_query_parameters_get_400_naming_the_key(
    manager: Manager, route: str, query: dict[str, str], field: str
) -> None:
    task = httpx.post(f"{manager.url}/tasks", json={"name": "add", "file": ADD_B64}).json()["id"]
    r = httpx.get(manager.url + route.replace("{task}", task), params=query, timeout=10)
    if not field:
        assert r.status_code == 200, r.text
        return
    assert r.status_code == 400, (query, r.text[:200])
    assert r.json()["field"] == field and field in r.json()["error"], r.json()


def test_a_created_task_with_a_non_latin1_id_gets_an_encoded_location(manager: Manager) -> None:
    r = httpx.post(f"{manager.url}/tasks", json={"name": "add", "id": "任务-1"})
    assert r.status_code == 201 and r.json()["id"] == "任务-1"
    assert r.headers["location"] == "/tasks/%E4%BB%BB%E5%8A%A1-1"


def test_docs_pages_load_the_spec_from_local_assets(manager: Manager) -> None:
    for page in ("/docs", "/redoc"):
        r = httpx.get(f"{manager.url}{page}")
        assert r.status_code == 200 and "/openapi.json" in r.text, page
        assert "cdn." not in r.text and "unpkg" not in r.text, page
