"""Guests written in Python and built here with componentize-py, submitted through the REST API as
HTTP images, on a Python proplet: a HAL guest (upstream's hal-test world) gets the expected answers,
and a guest using WASI p2 sockets cannot reach the network.

Needs componentize-py (in the `dev` extra); the build and the compiled artifact are cached
(~/.cache/propeller-continuum or $PROPELLER_TEST_CACHE), the first run compiles an 18 MB component.
"""

from __future__ import annotations

import hashlib
import socket
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

NET_GUEST = Path(__file__).resolve().parents[1] / "wasm" / "net_guest_py"


@pytest.fixture(scope="module")
def guest() -> Path:
    return build()


@pytest.fixture(scope="module")
def net_guest() -> Path:
    return build(NET_GUEST, "net-test")


@pytest.fixture
def served(guest: Path, net_guest: Path) -> Iterator[str]:
    """The guests' directory over HTTP: the URL of the HAL guest (the net guest sits beside it)."""

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


async def test_a_guest_using_wasi_sockets_cannot_reach_the_network(
    tmp_path: Path, served: str, net_guest: Path
) -> None:
    # 127.0.0.1 is allowed for delivery; WASI p2 sockets are not tied to that list and stay denied
    c, _ = await _hal_cluster(tmp_path, fetch_allow=("127.0.0.1",), cache_dir=str(CACHE / "artifacts"))
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        port = listener.getsockname()[1]
        url = served.rsplit("/", 1)[0] + "/" + net_guest.name
        task = await c.run_task({"name": "connect-to", "image_url": url, "inputs": [str(port)]}, timeout=600)
        assert task["state"] == 3, task
        assert task["results"].startswith('"refused: PermissionError'), task["results"]
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):  # the connect was over before the task ended: none came
            listener.accept()
    finally:
        listener.close()
        await close_cluster(c)
