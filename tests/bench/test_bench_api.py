"""The API's listing reads through a real manager over HTTP: a page of 100 tasks (``GET /tasks``) and a
workflow of 2,000 tasks (``GET /workflows/{id}``, which answers with all of them). Each request holds
the manager's event loop while its body is built, so these are figures of how long dispatch and
liveness wait behind a dashboard or a CLI listing.

Run the figures with ``pytest tests/bench/test_bench_api.py --benchmark-enable``; under the default
``--benchmark-disable`` each body runs once, as a plain test of what the pages hold.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.bench import add_module_b64
from tests.integration.conftest import Cluster, close_cluster, make_cluster

WORKFLOW_TASKS = 2_000


@pytest.fixture
def loop_and_cluster(tmp_path: Path) -> Iterator[tuple[asyncio.AbstractEventLoop, Cluster]]:
    loop = asyncio.new_event_loop()
    c = loop.run_until_complete(make_cluster("embedded://127.0.0.1:0", tmp_path))
    try:
        yield loop, c
    finally:
        loop.run_until_complete(close_cluster(c))
        loop.close()


def test_bench_list_a_page_of_100_tasks(benchmark: Any, loop_and_cluster: Any) -> None:
    loop, c = loop_and_cluster
    module = add_module_b64()
    specs = [{"name": "add", "file": module, "inputs": [i, 1], "metadata": {"n": i}} for i in range(100)]
    created = loop.run_until_complete(c.api.post("/tasks/batch", json={"tasks": specs}))
    assert created.status_code == 201, created.text

    def page() -> dict[str, Any]:
        response = loop.run_until_complete(c.api.get("/tasks", params={"limit": 100}))
        assert response.status_code == 200, response.text
        return dict(response.json())

    body = benchmark(page)
    assert body["total"] == 100 and len(body["tasks"]) == 100
    assert sorted(t["metadata"]["n"] for t in body["tasks"]) == list(range(100))
    assert all(t["state"] == 0 and t["state_name"] == "Pending" for t in body["tasks"])


def test_bench_read_a_workflow_of_2000_tasks(benchmark: Any, loop_and_cluster: Any) -> None:
    loop, c = loop_and_cluster
    module = add_module_b64()
    tasks = [{"name": "add", "file": module, "inputs": [i, 1]} for i in range(WORKFLOW_TASKS)]
    created = loop.run_until_complete(c.api.post("/workflows", json={"tasks": tasks}))
    assert created.status_code == 201, created.text
    ids = {t["id"] for t in created.json()["tasks"]}
    workflow_id = created.json()["tasks"][0]["workflow_id"]

    def read() -> dict[str, Any]:
        response = loop.run_until_complete(c.api.get(f"/workflows/{workflow_id}"))
        assert response.status_code == 200, response.text
        return dict(response.json())

    body = benchmark(read)
    assert len(body["tasks"]) == WORKFLOW_TASKS
    assert {t["id"] for t in body["tasks"]} == ids
