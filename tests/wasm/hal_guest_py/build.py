"""Build Python guests with componentize-py, cached by the digest of their sources (tests call `build`)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
HAL_WIT = HERE.parents[2] / "proplets" / "runtime" / "hal" / "wit" / "hal.wit"
CACHE = Path(os.environ.get("PROPELLER_TEST_CACHE", Path.home() / ".cache" / "propeller-continuum"))


_CLI = "import sys; from componentize_py import script; sys.argv[0] = 'componentize-py'; sys.exit(script())"


def _hal_package() -> str:
    # componentize-py wants the package alone in deps/: our file also holds the `elastic-hal` world
    text = HAL_WIT.read_text()
    return text[: text.index("world elastic-hal")]


def build(here: Path = HERE, world: str = "hal-test") -> Path:
    """The component of the guest in ``here`` (``app.py``, ``wit/world.wit`` and any ``wit/deps``),
    world ``world``; a world importing ``elastic:hal`` gets our hal.wit in its deps."""
    sources = [here / "app.py", *sorted((here / "wit").rglob("*.wit"))]
    hal = "elastic:hal/" in (here / "wit" / "world.wit").read_text()
    digest = hashlib.sha256(
        b"".join(p.read_bytes() for p in sources) + (_hal_package().encode() if hal else b"")
    ).hexdigest()
    out = CACHE / "guests" / f"{here.name}-{digest[:16]}.wasm"
    if out.exists():
        return out
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shutil.copytree(here / "wit", work / "wit")
        if hal:
            (work / "wit" / "deps" / "hal").mkdir(parents=True)
            (work / "wit" / "deps" / "hal" / "hal.wit").write_text(_hal_package())
        shutil.copy(here / "app.py", work / "app.py")
        built = work / "guest.wasm"
        subprocess.run(
            [sys.executable, "-c", _CLI, "-d", "wit", "-w", world, "componentize", "app",
             "-o", str(built)],
            cwd=work, check=True, capture_output=True, timeout=600,
        )  # fmt: skip
        out.parent.mkdir(parents=True, exist_ok=True)
        # Parallel test workers may build the same guest: each copies beside the target, then renames
        # (atomic), so nobody reads a half-copied file.
        partial = out.with_name(f".{out.name}.{os.getpid()}")
        shutil.copyfile(built, partial)
        os.replace(partial, out)
    return out
