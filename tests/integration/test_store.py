"""The store on real SQLite (WAL file) and real PostgreSQL: fidelity, upserts, ordering, concurrency,
metrics paging, and clear errors."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest

from orchestrator.adapters.store import JobRecord, Store, StoreError
from orchestrator.core.model import Proplet, PropletMetadata, Task, TaskState
from tests.conftest import free_port


def full_task(i: int = 0) -> Task:
    """A task with every field away from its default, with the awkward values a user can produce."""
    return Task(
        id=f"tâsk-{i}-🚀",
        name="名前 ☃ \"quoted\" 'single'",
        kind="federated",
        state=TaskState.INTERRUPTED,
        image_url="oci://registry.example/wasm/add:1.2",
        file=b"\x00asm\x01\x00\x00\x00" + bytes(range(256)) + b"\x00" * 17,
        cli_args=["--invoke", "main", "ü"],
        inputs=["1", "2.5", "-3"],
        env={"KEY": "v=1;x", "ÜNI": "☃", "EMPTY": ""},
        daemon=True,
        latent=True,
        encrypted=True,
        proplet_id="proplet-7",
        depends_on=["t0", "t1"],
        run_if="success",
        workflow_id="wf-1",
        job_id="job-1",
        results={
            "out": [1, 2.5, 1e-300, 1.7976931348623157e308, "x\u0000y", True, None],
            "nested": {"a": [{"b": {"c": "深い"}}]},
            "big": 2**62,
        },
        result_type="json",
        error="boom ✗\nsecond line",
        priority=99,
        broadcast=True,
        metadata={"owner": {"team": "edge", "tags": ["a", "b"]}, "ratio": 0.1, "n": -4},
        schedule="*/5 * * * *",
        timezone="Europe/Paris",
        is_recurring=True,
        next_run=1_700_000_123.123456789,
        sha256="ab" * 32,
        memory_bytes=5 * 2**30,
        limits={"fuel": 1e9, "timeout_s": 2.5, "memory_bytes": 65536.0},
        attempt=2,
        max_attempts=7,
        uncounted_attempts=2,
        targets=["proplet-1", "proplet-2"],
        start_time=1.5,
        finish_time=2.25,
        created_at=1_700_000_000.123456,
        updated_at=1_700_000_001.654321,
        receipt={"proplet-1": {"v": 1, "task_id": "t", "evidence": None, "signature": "c2ln"}},
        verified=True,
        monitoring_profile={"enabled": True, "interval": 5, "history_size": 10, "collect_cpu": True},
        kbs_resource_path="default/key/1",
        hal_storage_path="shared/models",
    )


def full_proplet(i: int = 0) -> Proplet:
    return Proplet(
        id=f"proplet-{i}",
        name="edge ☃",
        namespace="embedded",
        metadata=PropletMetadata(
            description="ESP32-S3 on the bench",
            tags=["esp32", "lab"],
            location="rack 2",
            ip="10.0.0.7",
            environment="test",
            os="zephyr",
            hostname="esp-7",
            cpu_arch="xtensa",
            total_memory_bytes=512 * 1024,
            proplet_version="0.3.0",
            wasm_runtime="wamr",
            free_memory_bytes=200_000,
            max_instances=2,
            tee=True,
            tee_type="sev",
            hal="elastic:hal@0.1.0",
            direct_start=True,
        ),
        alive=True,
        last_seen=123.456,
        alive_history=[1_700_000_000.5, 1_700_000_010.25],
        task_count=3,
    )


def test_full_fixtures_set_every_field() -> None:
    # Guards the fidelity tests below: a field added to the model must get a non-default value here.
    objects: list[Any] = [full_task(), full_proplet(), full_proplet().metadata]
    for obj in objects:
        blank = type(obj)(id="x", name="x") if not isinstance(obj, PropletMetadata) else PropletMetadata()
        for f in dataclasses.fields(obj):
            if f.name in ("id", "name") and not isinstance(obj, PropletMetadata):
                continue
            assert getattr(obj, f.name) != getattr(blank, f.name), f"{type(obj).__name__}.{f.name} at default"


async def test_task_round_trips_every_field(store: Store) -> None:
    task = full_task()
    await store.save_task(task)
    assert await store.get_task(task.id) == task
    assert await store.load_tasks() == [task]


async def test_default_task_round_trips(store: Store) -> None:
    task = Task(id="t", name="plain")
    await store.save_task(task)
    assert await store.get_task("t") == task


async def test_save_task_replaces_the_whole_row(store: Store) -> None:
    await store.save_task(full_task())
    smaller = Task(id=full_task().id, name="renamed", state=TaskState.COMPLETED, results=[1])
    await store.save_task(smaller)
    assert await store.load_tasks() == [smaller]


async def test_load_tasks_keeps_first_save_order(store: Store) -> None:
    ids = ["m", "b", "z", "a"]
    for task_id in ids:
        await store.save_task(Task(id=task_id, name=task_id, created_at=5.0))
    await store.save_task(Task(id="b", name="b", state=TaskState.RUNNING, created_at=5.0))
    assert [t.id for t in await store.load_tasks()] == ids


async def test_get_and_delete_task(store: Store) -> None:
    assert await store.get_task("missing") is None
    await store.save_tasks([Task(id="a", name="a"), Task(id="b", name="b")])
    await store.add_task_metrics("a", "p", {"cpu_percent": 1.0}, None, 10.0)
    await store.delete_task("a")
    await store.delete_task("never-existed")
    assert [t.id for t in await store.load_tasks()] == ["b"]
    assert await store.list_task_metrics("a") == (0, [])


async def test_save_tasks_is_all_or_nothing(store: Store) -> None:
    original = Task(id="keep", name="original")
    await store.save_task(original)
    bad = Task(id="bad", name="bad", results={"not json": {1, 2}})
    with pytest.raises(StoreError, match=r"'bad' field 'results' is not JSON-encodable"):
        await store.save_tasks([Task(id="keep", name="changed"), Task(id="new", name="new"), bad])
    assert await store.load_tasks() == [original]


async def test_nan_is_refused_with_the_field_named(store: Store) -> None:
    with pytest.raises(StoreError, match=r"'t' field 'metadata'.*Out of range float"):
        await store.save_task(Task(id="t", name="t", metadata={"x": math.nan}))
    assert await store.get_task("t") is None


async def test_concurrent_saves_lose_no_update(store: Store) -> None:
    async def worker(i: int) -> None:
        for attempt in range(4):
            await store.save_task(Task(id=f"t{i:02d}", name="w", attempt=attempt, results={"i": i}))

    await asyncio.gather(*(worker(i) for i in range(50)))
    tasks = await store.load_tasks()
    assert len(tasks) == 50
    assert all(t.attempt == 3 and t.results == {"i": int(t.id[1:])} for t in tasks)


async def test_proplet_round_trip_and_rediscovery(store: Store) -> None:
    proplet = full_proplet()
    await store.save_proplet(proplet)
    assert await store.load_proplets() == [proplet]

    rediscovered = dataclasses.replace(
        proplet, metadata=PropletMetadata(wasm_runtime="wasmtime", tags=["moved"]), alive=False
    )
    await store.save_proplet(rediscovered)
    assert await store.load_proplets() == [rediscovered]

    await store.add_proplet_metrics(proplet.id, "embedded", {"percent": 1.0}, {"rss_bytes": 5}, 1.0)
    await store.delete_proplet(proplet.id)
    assert await store.load_proplets() == []
    assert await store.list_proplet_metrics(proplet.id) == (0, [])


async def test_jobs(store: Store) -> None:
    later = JobRecord(id="j2", name="second", execution_mode="parallel", created_at=2.0, updated_at=3.0)
    first = JobRecord(id="j1", name="first ☃", execution_mode="sequential", created_at=1.0, updated_at=1.0)
    await store.save_job(later)
    await store.save_job(first)
    assert await store.load_jobs() == [first, later]
    updated = dataclasses.replace(first, execution_mode="configurable", updated_at=9.0)
    await store.save_job(updated)
    await store.delete_job("j2")
    assert await store.load_jobs() == [updated]


async def test_workflows_listed_newest_first_with_their_states(store: Store) -> None:
    def task(i: int, workflow: str, state: TaskState) -> Task:
        return Task(id=f"t{i}", name="add", workflow_id=workflow, state=state, created_at=float(i))

    await store.save_tasks([
        task(1, "w-old", TaskState.COMPLETED), task(2, "w-old", TaskState.FAILED),
        task(3, "", TaskState.PENDING), task(4, "w-new", TaskState.RUNNING),
    ])  # fmt: skip
    total, rows = await store.list_workflows()
    assert total == 2 and [w.workflow_id for w in rows] == ["w-new", "w-old"]
    assert rows[1].states == {int(TaskState.COMPLETED): 1, int(TaskState.FAILED): 1}
    assert rows[1].created_at == 1.0
    total, rows = await store.list_workflows(offset=1, limit=1)
    assert total == 2 and [w.workflow_id for w in rows] == ["w-old"]
    page = await store.list_tasks(workflow_id="w-old")
    assert [t.id for t in page.tasks] == ["t1", "t2"]


async def test_task_metrics_paging_newest_first(store: Store) -> None:
    for n in range(5):
        aggregated = {"avg_cpu_usage": n / 2} if n % 2 else None
        await store.add_task_metrics("t", "p", {"cpu_percent": float(n)}, aggregated, 100.0 + n)
    await store.add_task_metrics("other", "p", {}, None, 500.0)

    total, page = await store.list_task_metrics("t", offset=1, limit=2)
    assert total == 5
    assert [(r.timestamp, r.metrics, r.aggregated) for r in page] == [
        (103.0, {"cpu_percent": 3.0}, {"avg_cpu_usage": 1.5}),
        (102.0, {"cpu_percent": 2.0}, None),
    ]
    assert all(r.task_id == "t" and r.proplet_id == "p" for r in page)
    with pytest.raises(ValueError, match="offset and limit must be >= 0"):
        await store.list_task_metrics("t", offset=-1)


async def test_task_logs_by_attempt_live_pieces_kept_final_record_replaced_on_request(store: Store) -> None:
    await store.add_task_logs("t", 1, "p", [("stderr", "a\n")], final=False, timestamp=1.0, seq=0)
    await store.add_task_logs("t", 1, "p", [("stderr", "b ☃\n")], final=False, timestamp=2.0, seq=1)
    await store.add_task_logs("t", 1, "p", [("runtime", "old")], final=True, timestamp=3.0)
    final = [("runtime", "x"), ("stderr", "a\nb ☃\n")]
    await store.add_task_logs("t", 1, "p", final, final=True, timestamp=4.0, replace=True)
    await store.add_task_logs("t", 2, "p", [("stderr", "second attempt")], final=False, timestamp=5.0, seq=0)
    rows = await store.list_task_logs("t", 1)
    assert [(r.final, r.seq, r.stream, r.data) for r in rows] == [
        (False, 0, "stderr", "a\n"), (False, 1, "stderr", "b ☃\n"),
        (True, None, "runtime", "x"), (True, None, "stderr", "a\nb ☃\n"),
    ]  # fmt: skip
    later = await store.list_task_logs("t", 1, after=rows[1].id)
    assert [r.data for r in later] == ["x", "a\nb ☃\n"]
    assert [r.data for r in await store.list_task_logs("t", 2)] == ["second attempt"]
    await store.delete_task("t")
    assert await store.list_task_logs("t", 1) == []


async def test_prune_metrics(store: Store) -> None:
    for ts in (10.0, 20.0, 30.0):
        await store.add_task_metrics("t", "p", {"cpu_percent": ts}, None, ts)
        await store.add_proplet_metrics("p", "ns", {"percent": ts}, {"rss_bytes": 1}, ts)
    assert await store.prune_metrics(older_than=25.0) == 4
    assert [r.timestamp for r in (await store.list_task_metrics("t"))[1]] == [30.0]
    total, rows = await store.list_proplet_metrics("p")
    assert total == 1
    assert rows[0].cpu_metrics == {"percent": 30.0} and rows[0].namespace == "ns"


async def test_state_survives_reopen(sqlite_path: Path) -> None:
    async with await Store.open(f"sqlite:///{sqlite_path}") as first:
        await first.save_tasks([full_task(1), full_task(2)])
        await first.save_proplet(full_proplet())
    async with await Store.open(str(sqlite_path)) as second:
        assert await second.load_tasks() == [full_task(1), full_task(2)]
        assert await second.load_proplets() == [full_proplet()]
        # New tasks still sort after the reloaded ones.
        await second.save_task(Task(id="0-new", name="n"))
        assert [t.id for t in await second.load_tasks()][-1] == "0-new"


async def test_closed_store_says_so(sqlite_path: Path) -> None:
    store = await Store.open(str(sqlite_path))
    await store.close()
    with pytest.raises(StoreError, match="store is closed"):
        await store.load_tasks()


# -- errors on open -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "empty store URL"),
        ("mysql://user@host/db", "unsupported scheme 'mysql'"),
        ("sqlite://", "in-memory SQLite is not supported"),
        ("sqlite:///:memory:", "in-memory SQLite is not supported"),
        ("sqlite+pysqlite:///x.db", "SQLite driver 'pysqlite' is not supported"),
        ("postgresql+asyncpg://u@h/db", "PostgreSQL driver 'asyncpg' is not supported"),
        ("postgresql://u@localhost", "names no database"),
    ],
)
async def test_bad_urls_are_named(url: str, message: str) -> None:
    with pytest.raises(StoreError, match=message) as info:
        await Store.open(url)
    assert info.value.url


async def test_unreachable_postgres_names_url_not_password() -> None:
    port = free_port()
    with pytest.raises(StoreError) as info:
        await Store.open(f"postgresql://admin:hunter2@127.0.0.1:{port}/propeller")
    text = str(info.value)
    assert f"postgresql+psycopg://admin:***@127.0.0.1:{port}/propeller" in text
    assert "hunter2" not in text
    assert "cannot open the database" in text and "refused" in text.lower()


async def test_sqlite_directory_that_cannot_exist(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot create the directory of the SQLite file"):
        await Store.open(str(blocker / "sub" / "x.db"))


async def test_schema_option_is_postgres_only(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="only supported on PostgreSQL"):
        await Store.open(str(tmp_path / "x.db"), schema="t_x")


@pytest.mark.postgres
async def test_bad_schema_name_is_refused(postgres_url: str) -> None:
    with pytest.raises(StoreError, match="schema name 'x; drop table'"):
        await Store.open(postgres_url, schema="x; drop table")


async def test_load_live_tasks_leaves_the_finished_history_in_the_store(store: Store) -> None:
    done, failed = TaskState.COMPLETED, TaskState.FAILED
    tasks = [
        Task(id="old-1", name="x", state=done),
        Task(id="queued", name="x", state=TaskState.SCHEDULED),
        Task(id="old-2", name="x", state=failed),
        Task(id="running", name="x", state=TaskState.RUNNING, proplet_id="p"),
        Task(id="created", name="x", state=TaskState.PENDING),
        Task(id="cron", name="x", state=done, schedule="* * * * *", next_run=1e9),
        Task(id="job-member", name="x", state=done, job_id="j"),
        # A workflow still running keeps its finished parents (their results feed the rest) ...
        Task(id="wf-parent", name="x", state=done, workflow_id="w-live"),
        Task(id="wf-child", name="x", state=TaskState.PENDING, workflow_id="w-live", depends_on=["wf-x"]),
        # ... a finished one keeps nothing.
        Task(id="wf-done-1", name="x", state=done, workflow_id="w-done"),
        Task(id="wf-done-2", name="x", state=TaskState.SKIPPED, workflow_id="w-done"),
        Task(id="stopped", name="x", state=TaskState.INTERRUPTED),
    ]
    await store.save_tasks(tasks)
    live = await store.load_live_tasks()
    assert [t.id for t in live] == [
        "queued", "running", "created", "cron", "job-member", "wf-parent", "wf-child",
    ]  # fmt: skip
    assert live[0] == tasks[1]  # whole rows
    assert len(await store.load_tasks()) == len(tasks)  # the history is all still there
