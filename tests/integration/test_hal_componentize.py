"""A HAL guest written in Python and built here with componentize-py (upstream's hal-test world),
submitted through the REST API as an HTTP image, runs on a Python proplet with the expected answers.

Needs componentize-py (in the `dev` extra); the build and the compiled artifact are cached
(~/.cache/propeller-continuum or $PROPELLER_TEST_CACHE), the first run compiles an 18 MB component.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any

import pytest

from tests.integration.test_hal import _hal_cluster, close_cluster

pytest.importorskip("componentize_py", reason="componentize-py (dev extra) builds this guest")
pytestmark = pytest.mark.slow

from tests.wasm.hal_guest_py.build import CACHE, build  # noqa: E402


@pytest.fixture(scope="module")
def guest() -> Path:
    return build()


@pytest.fixture
def served(guest: Path) -> Iterator[str]:
    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(guest.parent), **kwargs)

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{guest.name}"
    server.shutdown()
    server.server_close()
    thread.join(5)


async def test_a_componentize_py_guest_calls_the_hal(tmp_path: Path, served: str, guest: Path) -> None:
    c, _ = await _hal_cluster(tmp_path, fetch_allow=("127.0.0.1",), cache_dir=str(CACHE / "artifacts"))
    try:
        task = await c.run_task({"name": "run-hal-test", "image_url": served}, timeout=600)
        assert task["state"] == 3, task
        platform, digest, seconds, noise, back, escape = task["results"].strip('"').split("|")
        assert platform == "host" and digest == hashlib.sha256(b"abc").hexdigest()
        assert int(seconds) > 1_700_000_000 and noise == "8" and back == "hello from python"
        assert escape.startswith("refused: invalid container name '../escape'")
        stored = tmp_path / "hal" / task["id"] / "py-box" / "greeting"
        assert stored.read_bytes() == b"hello from python"
    finally:
        await close_cluster(c)
