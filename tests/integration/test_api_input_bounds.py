"""Ghost tasks and huge bodies: input that cannot be stored gets a 4xx naming the field and leaves
nothing behind, on SQLite and PostgreSQL; a body over the bound gets 413 before it is read whole."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fixtures.store import PgSchema
from tests.integration.conftest import Cluster, close_cluster, make_cluster

pytestmark = pytest.mark.slow

LIMIT = 1 << 20  # the test manager's --api-max-body
JSON = {"content-type": "application/json"}


def pg_url(schema: PgSchema) -> str:
    """The manager takes a URL; the per-test schema goes on libpq's search_path."""
    schema.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema.name}"')
    return f"{schema.url}?options=-csearch_path%3D{schema.name}"


@pytest.fixture(params=["sqlite", pytest.param("pg", marks=pytest.mark.postgres)])
async def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Cluster]:
    db = str(tmp_path / "m.db")
    if request.param == "pg":
        db = pg_url(request.getfixturevalue("pg_schema"))
    c = await make_cluster("embedded://127.0.0.1:0", tmp_path, db=db, api_max_body=LIMIT)
    try:
        yield c
    finally:
        await close_cluster(c)


def deep(depth: int) -> str:
    return '{"a":' * (depth - 1) + "{}" + "}" * (depth - 1)


GHOSTS = [
    # (raw JSON body of POST /tasks, the field the error must name)
    ('{"id":"%s","name":"lone \\ud800 surrogate"}', "name"),
    ('{"id":"%s","name":"nul \\u0000 char"}', "name"),
    ('{"id":"%s","name":"deep","metadata":' + deep(900) + "}", "metadata"),
    ('{"id":"%s","name":"deeper than the parser","metadata":' + deep(100_000) + "}", ""),
    ('{"id":"%s","name":"t","env":{"K":"\\u0000"}}', "env.K"),
    ('{"id":"%s","name":"t","inputs":[1,"\\udfff"]}', "inputs[1]"),
    ('{"id":"%s","name":"t","limits":{"timeout_s":Infinity}}', "limits.timeout_s"),
]


async def test_ghost_task_inputs_get_400_and_leave_nothing_behind(cluster: Cluster) -> None:
    api = cluster.api
    for i, (body, field) in enumerate(GHOSTS):
        task_id = f"00000000-0000-4000-8000-{i:012d}"
        r = await api.post("/tasks", content=body % task_id, headers={"content-type": "application/json"})
        assert r.status_code == 400, (field, r.text[:300])
        assert r.json().get("field", "") == field and field in r.json()["error"], r.json()
        assert (await api.get(f"/tasks/{task_id}")).status_code == 404
    # The same inputs through the other entry points: job name, workflow member, update.
    job = await api.post("/jobs", json={"name": "job \x00", "tasks": [{"name": "a"}]})
    assert job.status_code == 400 and job.json()["field"] == "name"
    flow = await api.post(
        "/workflows", content=json.dumps({"tasks": [{"name": "a"}, {"name": "b\ud800"}]}), headers=JSON
    )
    assert flow.status_code == 400 and flow.json()["field"] == "tasks[1].name"
    created = await api.post("/tasks", json={"name": "good"})
    assert created.status_code == 201
    assert created.json()["state"] == 0 and created.json()["state_name"] == "Pending"
    update = await api.put(f"/tasks/{created.json()['id']}", json={"metadata": json.loads(deep(50))})
    assert update.status_code == 400 and update.json()["field"].startswith("metadata")
    listed = await api.get("/tasks")
    assert listed.status_code == 200
    assert [t["name"] for t in listed.json()["tasks"]] == ["good"] and listed.json()["total"] == 1
    # Nothing reached the store either: a manager restarted on it sees the one good task.
    assert [t.name for t in await cluster.manager.store.load_tasks()] == ["good"]  # type: ignore[union-attr]


async def _raw_request(
    port: int, head: bytes, chunks: int, chunk: bytes, chunked: bool, first: bytes = b""
) -> tuple[bytes, int]:
    """Send ``head`` then up to ``chunks`` body chunks, stopping as soon as the server answers.

    Returns the response and how many body bytes were written before it came.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    response = asyncio.ensure_future(reader.read(65536))
    sent = 0
    try:
        writer.write(head + (b"%x\r\n%s\r\n" % (len(first), first) if first else b""))
        await writer.drain()
        for _ in range(chunks):
            if response.done():
                break
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            await writer.drain()
            sent += len(chunk)
            await asyncio.sleep(0)
        else:
            if chunked:
                writer.write(b"0\r\n\r\n")
        data = await asyncio.wait_for(response, 30)
    except (ConnectionError, OSError):
        data = await asyncio.wait_for(response, 30)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return data, sent


async def test_declared_body_over_the_limit_gets_413_before_it_is_sent(cluster: Cluster) -> None:
    head = (
        b"POST /tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000000000000\r\n\r\n"
    )
    data, _ = await _raw_request(cluster.manager.api_port, head, 0, b"", chunked=False)
    assert data.startswith(b"HTTP/1.1 413"), data[:200]
    assert b"larger than 1048576 bytes" in data
    assert (await cluster.api.get("/tasks")).status_code == 200


@pytest.mark.parametrize("path", ["/tasks", "/tasks/00000000-0000-4000-8000-000000000001/upload"])
async def test_streamed_body_over_the_limit_gets_413_while_it_streams(cluster: Cluster, path: str) -> None:
    kind = "application/json" if path == "/tasks" else "multipart/form-data; boundary=b"
    method = b"POST" if path == "/tasks" else b"PUT"
    head = b"%s %s HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\nTransfer-Encoding: chunked\r\n\r\n" % (
        method,
        path.encode(),
        kind.encode(),
    )
    if path != "/tasks":
        created = await cluster.api.post("/tasks", json={"id": path.split("/")[2], "name": "up"})
        assert created.status_code == 201
    chunk = b" " * 65536
    total_chunks = 64 * LIMIT // len(chunk)  # 64x the limit, if the server kept reading
    first = b""
    if path != "/tasks":  # a well-formed multipart part whose file is endless
        first = b'--b\r\nContent-Disposition: form-data; name="file"; filename="m.wasm"\r\n\r\n\0asm'
    data, sent = await _raw_request(cluster.manager.api_port, head, total_chunks, chunk, True, first)
    assert data.startswith(b"HTTP/1.1 413"), data[:300]
    # It answered while we were still sending: far less than the whole body went out.
    assert sent < total_chunks * len(chunk) // 2, sent
    assert (await cluster.api.get("/tasks")).status_code == 200
