"""The manager's event loop choice (``propeller manager --loop``) and its cProfile hook."""

from __future__ import annotations

import asyncio
import pstats
from pathlib import Path

import pytest

from orchestrator.cli import run_loop


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
