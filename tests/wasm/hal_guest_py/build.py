"""Build the guest with componentize-py, cached by the digest of its sources (tests call `build`)."""

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


def build() -> Path:
    sources = [HERE / "app.py", HERE / "wit" / "world.wit"]
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources) + _hal_package().encode()).hexdigest()
    out = CACHE / "guests" / f"hal_guest_py-{digest[:16]}.wasm"
    if out.exists():
        return out
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shutil.copytree(HERE / "wit", work / "wit")
        (work / "wit" / "deps" / "hal").mkdir(parents=True)
        (work / "wit" / "deps" / "hal" / "hal.wit").write_text(_hal_package())
        shutil.copy(HERE / "app.py", work / "app.py")
        built = work / "guest.wasm"
        subprocess.run(
            [sys.executable, "-c", _CLI, "-d", "wit", "-w", "hal-test", "componentize", "app",
             "-o", str(built)],
            cwd=work, check=True, capture_output=True, timeout=600,
        )  # fmt: skip
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(built, out)
    return out
