"""Timeline rows in the store: kept in order, bounded per subject, gone with their task or proplet."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.adapters import store as store_module
from orchestrator.adapters.store import Store, WriteBatch
from orchestrator.core.model import Proplet, Task


def event(subject: str, subject_id: str, at: float, kind: str, **fields: Any) -> dict[str, Any]:
    return {"subject": subject, "subject_id": subject_id, "at": at, "kind": kind, "cause": f"c{at:g}",
            "fields": fields}  # fmt: skip


async def test_events_are_read_back_in_order_per_subject(store: Store) -> None:
    batch = WriteBatch(tasks={"t1": Task(id="t1", name="a")}, proplets={"p1": Proplet(id="p1")})
    batch.events += [event("task", "t1", 1.0, "created"), event("proplet", "p1", 1.5, "joined"),
                     event("task", "t1", 2.0, "placed", proplet_id="p1", considered=["p1"])]  # fmt: skip
    assert not await store.write(batch)
    got = await store.list_events("task", "t1")
    assert [(e.at, e.kind, e.cause) for e in got] == [(1.0, "created", "c1"), (2.0, "placed", "c2")]
    assert got[1].fields == {"proplet_id": "p1", "considered": ["p1"]}
    assert [e.kind for e in await store.list_events("proplet", "p1")] == ["joined"]
    # Deleting the task or the proplet deletes its timeline.
    gone = WriteBatch()
    gone.delete_task("t1")
    gone.delete_proplet("p1")
    await store.write(gone)
    assert await store.list_events("task", "t1") == [] and await store.list_events("proplet", "p1") == []


async def test_a_subject_keeps_its_newest_events(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "TIMELINE_LIMIT", 5)
    monkeypatch.setattr(store_module, "_PRUNE_TIMELINE", store_module._prune_statement(5))
    for i in range(12):
        batch = WriteBatch()
        batch.events.append(event("proplet", "flappy", float(i), "back"))
        await store.write(batch)
    kept = await store.list_events("proplet", "flappy", limit=100)
    assert 5 <= len(kept) <= 10 and kept[-1].at == 11.0
    assert [e.at for e in kept] == sorted(e.at for e in kept)
