"""Group commit at the store: ``Store.write`` writes a flush window in one transaction, refuses only the
rows the backend cannot hold (naming them) and keeps the rest, writes only changed columns after the
first save; ``list_tasks`` pages and filters in SQL. Each test runs on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest
import sqlalchemy as sa

from orchestrator.adapters.store import _TASK_COLUMNS, MAX_JSON_DEPTH, Store, WriteBatch
from orchestrator.core.model import Job, Proplet, Task, TaskState


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"x": value}
    return value


BAD_TASKS = {
    "lone surrogate": lambda: Task(id="bad", name="bad \ud800 name"),
    "NUL": lambda: Task(id="bad", name="bad\x00name"),
    "deep metadata": lambda: Task(id="bad", name="deep", metadata=nested(900)),
    "NaN results": lambda: Task(id="bad", name="nan", results={"x": float("nan")}),
    "long proplet id": lambda: Task(id="bad", name="long", proplet_id="p" * 300),
    "huge priority": lambda: Task(id="bad", name="prio", priority=2**40),
}


@pytest.mark.parametrize("bad", sorted(BAD_TASKS))
async def test_a_refused_row_is_named_and_the_rest_of_the_batch_is_written(store: Store, bad: str) -> None:
    await store.save_task(Task(id="old", name="old"))
    batch = WriteBatch()
    batch.tasks["before"] = Task(id="before", name="before")
    batch.tasks["bad"] = BAD_TASKS[bad]()
    batch.tasks["old"] = Task(id="old", name="old", state=TaskState.RUNNING, proplet_id="p1")
    batch.proplets["p1"] = Proplet(id="p1", name="one")
    batch.jobs["j"] = Job(id="j", name="job")
    batch.task_metrics.append(
        {"task_id": "old", "proplet_id": "p1", "metrics": {"cpu": 1}, "aggregated": None, "timestamp": 5.0}
    )
    refused = await store.write(batch)
    assert set(refused.tasks) == {"bad"} and "'bad' field" in refused.tasks["bad"]
    assert not refused.proplets and not refused.jobs and not refused.metrics
    assert await store.get_task("bad") is None
    assert [t.id for t in await store.load_tasks()] == ["old", "before"]
    old = await store.get_task("old")
    assert old is not None and old.state is TaskState.RUNNING and old.proplet_id == "p1"
    assert [p.id for p in await store.load_proplets()] == ["p1"]
    assert [j.id for j in await store.load_jobs()] == ["j"]
    assert (await store.list_task_metrics("old"))[0] == 1


async def test_json_at_the_depth_bound_round_trips(store: Store) -> None:
    deep = Task(id="t", name="deep", metadata=nested(MAX_JSON_DEPTH - 1))
    assert not await store.write(WriteBatch(tasks={"t": deep}))
    assert await store.get_task("t") == deep


async def test_changed_columns_only_round_trip_through_many_updates(store: Store) -> None:
    """Random changes written as partial updates read back exactly, also by a fresh store (cold cache)."""
    rng = random.Random(7)
    tasks = {f"t{i}": Task(id=f"t{i}", name=f"n{i}", file=b"\x00asm" * i) for i in range(6)}
    for round_ in range(12):
        for task in rng.sample(list(tasks.values()), 3):
            task.state = rng.choice(list(TaskState))
            task.attempt = round_
            task.results = rng.choice([None, "7", {"k": [round_]}])
            task.metadata = {"r": round_} if rng.random() < 0.5 else task.metadata
            task.proplet_id = rng.choice(["", "p1", "p2"])
        snapshot = {k: dataclasses.replace(v) for k, v in tasks.items()}
        assert not await store.write(WriteBatch(tasks=snapshot))
    assert {t.id: t for t in await store.load_tasks()} == tasks


async def test_updates_write_only_the_changed_columns(store: Store) -> None:
    task = Task(id="t", name="n", file=b"\x00asm" * 1000, metadata={"big": "x" * 1000})
    await store.write(WriteBatch(tasks={"t": dataclasses.replace(task)}))
    statements: list[str] = []

    def capture(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    engine = store._writer or store._engine.sync_engine
    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        task.state, task.attempt = TaskState.RUNNING, 1
        await store.write(WriteBatch(tasks={"t": dataclasses.replace(task)}))
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)
    updates = [s for s in statements if s.lstrip().upper().startswith("UPDATE")]
    assert len(updates) == 1, statements
    assert "state" in updates[0] and "attempt" in updates[0]
    assert "metadata" not in updates[0] and "file" not in updates[0]
    assert await store.get_task("t") == task
    # A module of the same size but other bytes is a change too; the cache keeps no module bytes.
    task.file = b"\x01asm" * 1000
    await store.write(WriteBatch(tasks={"t": dataclasses.replace(task)}))
    assert await store.get_task("t") == task
    assert not any(isinstance(v, bytes) and len(v) > 64 for row in store._written.values() for v in row)


@pytest.mark.parametrize("bad", sorted(BAD_TASKS))
async def test_a_value_turning_unstorable_after_clean_writes_is_refused(store: Store, bad: str) -> None:
    """Values unchanged since a task's last write keep their check; a changed one is checked again."""
    clean = Task(id="bad", name="fine", state=TaskState.RUNNING)
    for _ in range(2):
        assert not await store.write(WriteBatch(tasks={"bad": dataclasses.replace(clean)}))
    broken = BAD_TASKS[bad]()
    changed = {f.name: getattr(broken, f.name) for f in dataclasses.fields(Task) if f.name != "state"}
    refused = await store.write(WriteBatch(tasks={"bad": dataclasses.replace(clean, **changed)}))
    assert "'bad' field" in refused.tasks["bad"]
    assert await store.get_task("bad") == clean


async def test_a_settled_task_keeps_no_values_in_the_store_cache(store: Store) -> None:
    """In-flight tasks' checked values are remembered between writes; a settled task's (its module
    included) are not, so the cache does not grow with history."""
    module = b"\x00asm" + bytes(100_000)
    for i in range(20):
        task = Task(id=f"t{i}", name="n", file=module, state=TaskState.RUNNING)
        await store.write(WriteBatch(tasks={task.id: dataclasses.replace(task)}))
        task.state, task.results = TaskState.COMPLETED, "2"
        await store.write(WriteBatch(tasks={task.id: dataclasses.replace(task)}))
        assert await store.get_task(task.id) == task
    assert store._last_checked == {}


async def test_delete_then_recreate_in_one_batch_keeps_the_new_row(store: Store) -> None:
    await store.save_task(Task(id="t", name="first"))
    batch = WriteBatch()
    batch.delete_task("t")
    batch.tasks["t"] = Task(id="t", name="second")
    await store.write(batch)
    again = WriteBatch(tasks={"u": Task(id="u", name="u")})
    again.tasks["t"] = Task(id="t", name="third")
    again.delete_task("t")  # a persist followed by a delete: the delete wins
    await store.write(again)
    assert [t.id for t in await store.load_tasks()] == ["u"]


async def test_list_tasks_pages_and_filters_in_the_store(store: Store) -> None:
    states = [TaskState.PENDING, TaskState.RUNNING, TaskState.COMPLETED, TaskState.FAILED]
    tasks = [
        Task(
            id=f"t{i:03d}",
            name="even" if i % 2 == 0 else "odd",
            state=states[i % 4],
            proplet_id=f"p{i % 3}",
            metadata={"team": "a" if i < 20 else "b", "n": i, "flag": i % 5 == 0},
        )
        for i in range(50)
    ]
    for chunk in range(0, 50, 7):  # several windows: the first-save order must survive them
        await store.write(WriteBatch(tasks={t.id: t for t in tasks[chunk : chunk + 7]}))
    page = await store.list_tasks(10, 5)
    assert page.total == 50 and [t.id for t in page.tasks] == [f"t{i:03d}" for i in range(10, 15)]
    running = await store.list_tasks(0, 100, state=int(TaskState.RUNNING))
    assert running.total == 13 and all(t.state is TaskState.RUNNING for t in running.tasks)
    mine = await store.list_tasks(2, 3, proplet_id="p1", name="odd")
    wanted = [t.id for t in tasks if t.proplet_id == "p1" and t.name == "odd"]
    assert mine.total == len(wanted) and [t.id for t in mine.tasks] == wanted[2:5]
    team = await store.list_tasks(0, 100, metadata={"team": "b", "flag": True})
    assert [t.id for t in team.tasks] == [
        t.id for t in tasks if t.metadata["team"] == "b" and t.metadata["flag"]
    ]
    number = await store.list_tasks(0, 100, metadata={"n": 7})
    assert [t.id for t in number.tasks] == ["t007"]
    assert (await store.list_tasks(0, 10, state=int(TaskState.SKIPPED))).total == 0


async def test_metadata_filters_never_fail_on_values_of_another_type(store: Store) -> None:
    values = [True, "abc", 1.5, 7, "true", None, {"x": 1}]
    tasks = {f"t{i}": Task(id=f"t{i}", name="n", metadata={"v": v}) for i, v in enumerate(values)}
    await store.write(WriteBatch(tasks=tasks))
    for wanted, ids in ((True, ["t0"]), (1.5, ["t2"]), (7, ["t3"]), ("abc", ["t1"]), ("true", ["t4"])):
        page = await store.list_tasks(0, 10, metadata={"v": wanted})
        assert [t.id for t in page.tasks] == ids, wanted


async def test_deleting_an_id_the_store_cannot_hold_is_a_no_op(store: Store) -> None:
    batch = WriteBatch(tasks={"t": Task(id="t", name="kept")})
    batch.delete_task("bad\x00id")
    batch.delete_proplet("bad\x00id")
    batch.delete_proplet("p" * 300)
    assert not await store.write(batch)
    assert [t.id for t in await store.load_tasks()] == ["t"]


@pytest.mark.postgres
async def test_a_row_the_database_refuses_past_the_checks_is_isolated(pg_store: Store) -> None:
    """The checks are the first line; if PostgreSQL still refuses a row, the batch is re-run with one
    savepoint per row, and only that row is refused."""
    await pg_store.save_task(Task(id="old", name="old"))
    checks = zip(_TASK_COLUMNS, pg_store._task_checks, strict=True)
    pg_store._task_checks = [(lambda v, _o: v) if n == "name" else c for n, c in checks]  # NUL goes through
    batch = WriteBatch()
    batch.tasks["a"] = Task(id="a", name="a")
    batch.tasks["bad"] = Task(id="bad", name="x\x00y")
    batch.tasks["old"] = Task(id="old", name="old", attempt=2)
    batch.delete_task("gone")
    refused = await pg_store.write(batch)
    assert set(refused.tasks) == {"bad"} and "NUL" in refused.tasks["bad"]
    assert {t.id: t.attempt for t in await pg_store.load_tasks()} == {"old": 2, "a": 0}


async def test_a_page_carries_module_ends_that_give_the_same_redacted_view(store: Store) -> None:
    """Listing does not read whole modules; the view built from their ends is the one the whole
    module gives, for every length around the redaction threshold and the 3-byte alignment."""
    from orchestrator.views import redacted_module, task_view

    rng = random.Random(3)
    sizes = [0, 1, 8, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 100, 101, 102, 100_003]
    tasks = {f"t{n}": Task(id=f"t{n}", name="m", file=rng.randbytes(n)) for n in sizes}
    await store.write(WriteBatch(tasks=tasks))
    page = await store.list_tasks(0, 100)
    assert all(t.file == b"" for t in page.tasks)
    for n in sizes:
        whole = task_view(tasks[f"t{n}"]).get("file", "")
        ends = page.modules.get(f"t{n}")
        assert (redacted_module(ends.size, ends.head, ends.tail) if ends else "") == whole, n
        assert ends is None or len(ends.head) + len(ends.tail) <= 9 + 15
