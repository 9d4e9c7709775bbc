"""The manager's event loop choice (``propeller manager --loop``), its cProfile hook, and how a started
service settles its heap."""

from __future__ import annotations

import asyncio
import gc
import pstats
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.cli import GC_YOUNG_THRESHOLD, run_loop, serve_until_signal


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_auto_runs_on_uvloop_when_installed_and_asyncio_on_request() -> None:
    pytest.importorskip("uvloop")
    assert run_loop(_loop_module(), "auto").startswith("uvloop")
    assert run_loop(_loop_module(), "asyncio").startswith("asyncio")


def test_profile_env_writes_a_cprofile_of_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run.prof"
    monkeypatch.setenv("PROPELLER_PROFILE", str(out))
    run_loop(_loop_module(), "asyncio")
    stats = pstats.Stats(str(out))
    assert any(name == "_loop_module" for (_file, _line, name) in stats.stats)  # type: ignore[attr-defined]


@pytest.fixture
def gc_restored() -> Iterator[None]:
    """The test process's collector as it was (the serve loop under test freezes this process's heap)."""
    threshold = gc.get_threshold()
    gc.unfreeze()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_a_started_service_leaves_its_start_up_objects_out_of_collections(gc_restored: None) -> None:
    """Once ``start`` has returned, what it built is no longer rescanned by each full collection (the
    manager stalled 40-50 ms per collection under load) and young objects are collected less often;
    a service that is still starting is not settled."""
    seen: dict[str, Any] = {}
    done = asyncio.Event()

    async def start() -> None:
        seen["before"] = (gc.get_freeze_count(), gc.get_threshold()[0])
        app = {"routes": [object() for _ in range(1000)]}  # what a start-up builds and keeps
        seen["app"] = app
        asyncio.get_running_loop().call_soon(done.set)  # then "SIGTERM"

    async def stop() -> None:
        seen["serving"] = (gc.get_freeze_count(), gc.get_threshold()[0])
        seen["tracked"] = any(o is seen["app"] for o in gc.get_objects())

    asyncio.run(serve_until_signal(start, stop, done))
    assert seen["before"][0] == 0
    frozen, young = seen["serving"]
    assert frozen >= 1000 and young >= GC_YOUNG_THRESHOLD
    assert seen["tracked"] is False  # out of every generation the collector scans


def test_a_service_that_fails_to_start_does_not_settle(gc_restored: None) -> None:
    async def start() -> None:
        raise RuntimeError("the store is away")

    async def stop() -> None:
        pass

    with pytest.raises(RuntimeError, match="store is away"):
        asyncio.run(serve_until_signal(start, stop, asyncio.Event()))
    assert gc.get_freeze_count() == 0
