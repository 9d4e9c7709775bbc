"""Outgoing HTTP for components (wasi:http), through the REST API on a Python proplet.

The guest (tests/wasm/http_guest_py, built here with componentize-py) fetches a URL with
`wasi:http/outgoing-handler.handle`. The proplet's allow-list (`--fetch-allow`) decides: an allowed
address is fetched, a refused one gets `error-code.HTTP-request-denied` with no connection made, and a
request never outlives the task's wall-time limit.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_hal import _hal_cluster, close_cluster

pytest.importorskip("componentize_py", reason="componentize-py (dev extra) builds this guest")
pytestmark = pytest.mark.slow

from tests.wasm.hal_guest_py.build import CACHE, build  # noqa: E402

HTTP_GUEST = Path(__file__).resolve().parents[1] / "wasm" / "http_guest_py"


@pytest.fixture(scope="module")
def http_guest() -> Path:
    return build(HTTP_GUEST, "http-test")


def _serve(handler: type[BaseHTTPRequestHandler], host: str = "127.0.0.1") -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer((host, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def guest_url(http_guest: Path) -> Iterator[str]:
    class Files(SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(http_guest.parent), **kwargs)

        def log_message(self, *_args: Any) -> None:
            pass

    for server in _serve(Files):
        yield f"http://127.0.0.1:{server.server_address[1]}/{http_guest.name}"


@pytest.fixture
def hello() -> Iterator[tuple[str, list[str]]]:
    """A server answering "hello PATH"; the list holds the paths it was asked for."""
    seen: list[str] = []

    class Hello(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            body = f"hello {self.path}".encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: Any) -> None:
            pass

    for server in _serve(Hello):
        yield f"127.0.0.1:{server.server_address[1]}", seen


def _fetch(guest_url: str, url: str, **extra: Any) -> dict[str, Any]:
    return {"name": "fetch", "image_url": guest_url, "inputs": [f'"{url}"'], **extra}


async def test_an_allowed_request_is_sent_and_answered(
    tmp_path: Path, guest_url: str, hello: tuple[str, list[str]]
) -> None:
    authority, seen = hello
    c, _ = await _hal_cluster(tmp_path, fetch_allow=("127.0.0.1",), cache_dir=str(CACHE / "artifacts"))
    try:
        task = await c.run_task(_fetch(guest_url, f"http://{authority}/greeting?x=1"), timeout=600)
        assert task["state"] == 3, (task.get("error"), task.get("results"))
        assert task["results"] == '"200 hello /greeting?x=1"'
        assert seen == ["/greeting?x=1"]
    finally:
        await close_cluster(c)


@pytest.mark.parametrize(
    "target",
    [
        "169.254.169.254",  # cloud metadata: refused whatever the list says
        "127.0.0.2:{port}",  # loopback, but not the 127.0.0.1 the list allows
    ],
)
async def test_a_request_the_allow_list_refuses_is_denied_without_connecting(
    tmp_path: Path, guest_url: str, target: str
) -> None:
    listener = socket.create_server(("127.0.0.2", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    c, _ = await _hal_cluster(tmp_path, fetch_allow=("127.0.0.1",), cache_dir=str(CACHE / "artifacts"))
    try:
        task = await c.run_task(_fetch(guest_url, f"http://{target.format(port=port)}/secret"), timeout=600)
        assert task["state"] == 3, task
        assert task["results"] == '"refused: ErrorCode_HttpRequestDenied"', task["results"]
        with pytest.raises(BlockingIOError):  # the task is over and no connection came
            listener.accept()
    finally:
        listener.close()
        await close_cluster(c)


async def test_a_request_that_hangs_ends_with_the_task_wall_time_limit(
    tmp_path: Path, guest_url: str
) -> None:
    # the kernel completes the connection (backlog) and nothing ever answers: without a cap the request
    # would wait for wasmtime's default timeouts (minutes), and a stop cannot interrupt a host call
    silent = socket.create_server(("127.0.0.1", 0))
    port = silent.getsockname()[1]
    c, _ = await _hal_cluster(tmp_path, fetch_allow=("127.0.0.1",), cache_dir=str(CACHE / "artifacts"))
    try:
        spec = _fetch(guest_url, f"http://127.0.0.1:{port}/never", limits={"timeout_s": 3})
        task = await c.run_task(spec, timeout=120)
        assert task["state"] in (3, 4), task
        outcome = f"{task.get('results')} {task.get('error')}"
        assert "Timeout" in outcome or "wall" in outcome, task
    finally:
        silent.close()
        await close_cluster(c)


async def test_a_host_that_does_not_resolve_gets_a_dns_error_naming_the_lookup(
    tmp_path: Path, guest_url: str
) -> None:
    # .invalid never resolves (RFC 6761): allowed by name, it still has no address to check or use
    allow = ("127.0.0.1", "nowhere.invalid")
    c, _ = await _hal_cluster(tmp_path, fetch_allow=allow, cache_dir=str(CACHE / "artifacts"))
    try:
        task = await c.run_task(_fetch(guest_url, "http://nowhere.invalid/x"), timeout=600)
        assert task["state"] == 3, task
        assert task["results"] == '"refused: ErrorCode_DnsError"', task["results"]
        logs = (await c.api.get(f"/tasks/{task['id']}/logs")).json()["logs"]
        assert any("nowhere.invalid does not resolve (" in row["data"] for row in logs), logs
    finally:
        await close_cluster(c)
