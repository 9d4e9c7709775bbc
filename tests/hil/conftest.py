"""HIL fixtures for these tests.

`pytest_plugins` is refused by pytest outside the top-level conftest, so until tests/conftest.py lists
"hil.plugin" the fixtures are imported here; the plugin's command-line options (--hil-map, ...) then
exist only once it is registered there, and fall back to their defaults (virtual boards) until then.
"""

from pathlib import Path

import pytest

from hil.plugin import board, boards, hil_backends, hil_map

__all__ = ["board", "boards", "hil_backends", "hil_map"]


@pytest.fixture(autouse=True)
def _private_lock_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Port locks of these tests stay out of the user's ~/.cache, where real rig runs keep theirs.
    monkeypatch.setenv("PROPELLER_LOCK_DIR", str(tmp_path / "port-locks"))
