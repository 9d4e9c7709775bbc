"""The sans-I/O cores import no I/O library, directly or through the project modules they import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "asyncio", "simpy", "paho", "serial", "sqlalchemy", "time", "socket", "threading", "wasmtime",
    "httpx", "amqtt", "fastapi", "uvicorn", "subprocess", "selectors", "aiosqlite", "psycopg",
    "opentelemetry",  # spans are made by the adapters (orchestrator/adapters/otel.py)
}  # fmt: skip
SANS_IO = [
    "orchestrator/wire",
    "orchestrator/core",
    "proplets/core.py",
    "proplets/backoff.py",
    "proplets/output.py",
    "proplets/runtime/budget.py",
    "orchestrator/chunk_server.py",
    "twin/devices/esp32s3.py",
    "hil/console.py",
    "hil/vfirmware.py",
    "twin/faults.py",
    "twin/link_profile.py",
    "proplets/profile.py",
    "proplets/egress.py",
]


def _files(entry: str) -> list[Path]:
    path = ROOT / entry
    if path.is_dir():
        return sorted(path.rglob("*.py"))
    return [path] if path.exists() else []


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _project_module_file(module: str) -> Path | None:
    parts = module.split(".")
    if parts[0] not in {"orchestrator", "proplets", "twin", "hil"}:
        return None
    base = ROOT.joinpath(*parts)
    if (base / "__init__.py").exists():
        return base / "__init__.py"
    candidate = base.with_suffix(".py")
    return candidate if candidate.exists() else None


@pytest.mark.parametrize("entry", SANS_IO)
def test_sans_io_module_imports_no_io_library(entry: str) -> None:
    files = _files(entry)
    if not files:
        pytest.skip(f"{entry} does not exist yet")
    seen: set[Path] = set()
    todo = list(files)
    offenders: list[str] = []
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for line, module in _imports(path):
            if module.split(".")[0] in FORBIDDEN:
                offenders.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
            target = _project_module_file(module)
            if target is not None:
                todo.append(target)
    assert not offenders, "sans-I/O core reaches an I/O library:\n" + "\n".join(offenders)


def test_the_checker_catches_an_offender(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom asyncio import sleep\n")
    assert any(m.split(".")[0] in FORBIDDEN for _, m in _imports(bad))
