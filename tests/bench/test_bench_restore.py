"""Restore cost with a long stored history: the store filled (bulk SQL) with many finished tasks and a
few queued ones, then what a starting manager loads (``propeller bench restore`` has the full table,
PostgreSQL and RSS included).

Run with ``pytest tests/bench/test_bench_restore.py --benchmark-enable`` to compare the sizes side by
side; under the default ``--benchmark-disable`` each body runs once, as a plain test.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from orchestrator.adapters.store import Store
from orchestrator.bench_restore import fill


@pytest.mark.parametrize("stored", [1_000, 50_000])
def test_restore_with_history(benchmark: pytest.FixtureRequest, tmp_path: Path, stored: int) -> None:
    db = str(tmp_path / "m.db")
    asyncio.run(fill(db, None, stored, 10))

    async def restore() -> list[str]:
        store = await Store.open(db)
        try:
            return [t.id for t in await store.load_live_tasks()]
        finally:
            await store.close()

    live = benchmark(lambda: asyncio.run(restore()))  # type: ignore[operator]
    # Only the queued tasks come back, in first-save order; the history stays in the store.
    assert live == [f"queued-{i}" for i in range(1, 11)]
