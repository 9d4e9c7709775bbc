"""HTTP(S) delivery against a real threaded HTTP server on loopback (and real TLS with a test CA)."""

from __future__ import annotations

import contextlib
import hashlib
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import wasmtime

from proplets.delivery import DeliveryError, FetchLimits, WasmSource, fetch_wasm

WASM = bytes(wasmtime.wat2wasm('(module (func (export "main") (result i32) i32.const 42))'))
CAP = 64 * 1024


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    stop: threading.Event  # set by the server fixture

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _reply(self, status: int, body: bytes, ctype: str | None = "application/wasm") -> None:
        self.send_response(status)
        if ctype is not None:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        route = ROUTES.get(self.path)
        if route is None:
            self._reply(404, b"no such file", "text/plain")
            return
        # The client hangs up on oversize or slow bodies, as it should.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            route(self)


def _chunked_forever_over_cap(h: Handler) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "application/wasm")
    h.send_header("Transfer-Encoding", "chunked")
    h.send_header("Connection", "close")
    h.end_headers()
    piece = b"x" * 8192
    for _ in range(4 * CAP // len(piece)):
        h.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
    h.wfile.write(b"0\r\n\r\n")


def _declared_over_cap(h: Handler) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "application/wasm")
    h.send_header("Content-Length", str(CAP + 1))
    h.send_header("Connection", "close")
    h.end_headers()
    h.wfile.write(b"\0asm")  # the client must refuse on the header alone


def _trickle(h: Handler) -> None:
    # Each byte comes well within any per-read timeout; only an overall deadline stops this.
    h.send_response(200)
    h.send_header("Content-Type", "application/wasm")
    h.send_header("Content-Length", "1000")
    h.send_header("Connection", "close")
    h.end_headers()
    for _ in range(1000):
        if h.stop.wait(0.05):
            return
        h.wfile.write(b"x")
        h.wfile.flush()


def _slow_headers(h: Handler) -> None:
    if not h.stop.wait(10):
        h._reply(200, WASM)


def _redirect(h: Handler) -> None:
    h.send_response(302)
    h.send_header("Location", "/ok.wasm")
    h.send_header("Content-Length", "0")
    h.send_header("Connection", "close")
    h.end_headers()


ROUTES: dict[str, Callable[[Handler], None]] = {
    "/ok.wasm": lambda h: h._reply(200, WASM),
    "/octet.wasm": lambda h: h._reply(200, WASM, "application/octet-stream"),
    "/untyped.wasm": lambda h: h._reply(200, WASM, None),
    "/page.html": lambda h: h._reply(200, b"<html></html>", "text/html; charset=utf-8"),
    "/boom.wasm": lambda h: h._reply(500, b"internal error", "text/plain"),
    "/huge-declared.wasm": _declared_over_cap,
    "/huge-chunked.wasm": _chunked_forever_over_cap,
    "/trickle.wasm": _trickle,
    "/slow-headers.wasm": _slow_headers,
    "/moved.wasm": _redirect,
}


def _serve(tls: ssl.SSLContext | None = None) -> Iterator[str]:
    stop = threading.Event()
    handler = type("BoundHandler", (Handler,), {"stop": stop})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = False  # joined in server_close(), so no handler thread outlives the test
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    scheme = "https" if tls else "http"
    try:
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}"
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def base_url() -> Iterator[str]:
    yield from _serve()


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 signed by it: (ca.pem, srv.pem, srv.key)."""
    d = tmp_path_factory.mktemp("tls")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=Delivery Test CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)  # fmt: skip
    _openssl("req", *ec, "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "ext.cnf").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\nauthorityKeyIdentifier=keyid\n"
    )
    _openssl("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "srv.pem", "-days", "2", "-extfile", "ext.cnf", cwd=d)  # fmt: skip
    return d / "ca.pem", d / "srv.pem", d / "srv.key"


@pytest.fixture
def https_url(test_ca: tuple[Path, Path, Path]) -> Iterator[str]:
    _, cert, key = test_ca
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    yield from _serve(ctx)


LIMITS = FetchLimits(max_bytes=CAP, timeout_s=5)


@pytest.mark.parametrize("path", ["/ok.wasm", "/octet.wasm", "/untyped.wasm", "/moved.wasm"])
async def test_download_returns_a_module_that_compiles(base_url: str, path: str) -> None:
    data = await fetch_wasm(WasmSource(image_url=base_url + path), limits=LIMITS)
    assert data == WASM
    wasmtime.Module(wasmtime.Engine(), data)


async def test_pinned_download_with_the_right_digest(base_url: str) -> None:
    pin = "sha256:" + hashlib.sha256(WASM).hexdigest()
    assert await fetch_wasm(WasmSource(image_url=base_url + "/ok.wasm", sha256=pin), limits=LIMITS) == WASM


async def test_bad_digest_is_refused_and_nothing_is_returned(base_url: str) -> None:
    url = base_url + "/ok.wasm"
    wrong = "cd" * 32
    with pytest.raises(DeliveryError) as info:
        await fetch_wasm(WasmSource(image_url=url, sha256=wrong), limits=LIMITS)
    got = hashlib.sha256(WASM).hexdigest()
    assert str(info.value) == f"sha256 mismatch for {url}: expected {wrong}, got {got}"
    assert info.value.source == "http"


@pytest.mark.parametrize(("path", "status"), [("/missing.wasm", 404), ("/boom.wasm", 500)])
async def test_http_errors_name_status_and_url(base_url: str, path: str, status: int) -> None:
    with pytest.raises(DeliveryError) as info:
        await fetch_wasm(WasmSource(image_url=base_url + path), limits=LIMITS)
    assert str(info.value) == f"HTTP {status} fetching wasm from {base_url}{path}"


async def test_wrong_content_type_is_refused(base_url: str) -> None:
    with pytest.raises(DeliveryError, match=r"content-type text/html; charset=utf-8 is not application/wasm"):
        await fetch_wasm(WasmSource(image_url=base_url + "/page.html"), limits=LIMITS)


async def test_content_length_over_the_cap_is_refused_up_front(base_url: str) -> None:
    url = base_url + "/huge-declared.wasm"
    with pytest.raises(DeliveryError, match=f"download of {url} exceeds size limit of {CAP} bytes"):
        await fetch_wasm(WasmSource(image_url=url), limits=LIMITS)


async def test_chunked_body_over_the_cap_is_cut_off_while_streaming(base_url: str) -> None:
    url = base_url + "/huge-chunked.wasm"
    with pytest.raises(DeliveryError, match=f"download of {url} exceeds size limit of {CAP} bytes$"):
        await fetch_wasm(WasmSource(image_url=url), limits=LIMITS)


@pytest.mark.parametrize("path", ["/slow-headers.wasm", "/trickle.wasm"])
async def test_slow_server_hits_the_overall_timeout(base_url: str, path: str) -> None:
    url = base_url + path
    with pytest.raises(DeliveryError, match=f"timed out after 0.5 s fetching wasm from {url}"):
        await fetch_wasm(WasmSource(image_url=url), limits=FetchLimits(timeout_s=0.5))


async def test_unreachable_server_is_a_clear_error() -> None:
    from tests.conftest import free_port

    url = f"http://127.0.0.1:{free_port()}/x.wasm"
    with pytest.raises(DeliveryError, match=f"cannot connect fetching wasm from {url}"):
        await fetch_wasm(WasmSource(image_url=url), limits=LIMITS)


async def test_https_with_the_configured_ca(https_url: str, test_ca: tuple[Path, Path, Path]) -> None:
    limits = FetchLimits(ca_bundle=str(test_ca[0]), timeout_s=5)
    assert await fetch_wasm(WasmSource(image_url=https_url + "/ok.wasm"), limits=limits) == WASM


async def test_https_without_the_ca_is_refused(https_url: str) -> None:
    with pytest.raises(DeliveryError, match="CERTIFICATE_VERIFY_FAILED"):
        await fetch_wasm(WasmSource(image_url=https_url + "/ok.wasm"), limits=LIMITS)


async def test_https_insecure_flag_skips_verification(https_url: str) -> None:
    limits = FetchLimits(insecure_skip_verify=True, timeout_s=5)
    assert await fetch_wasm(WasmSource(image_url=https_url + "/ok.wasm"), limits=limits) == WASM


async def test_missing_ca_bundle_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(DeliveryError, match=f"CA bundle {missing} does not exist"):
        await fetch_wasm(
            WasmSource(image_url="https://127.0.0.1:9/x.wasm"), limits=FetchLimits(ca_bundle=str(missing))
        )


# -- the fetch allow-list (proplets/egress.py) on real connections --------------------------------


def _allow(*entries: str) -> FetchLimits:
    from proplets.egress import EgressPolicy

    return FetchLimits(max_bytes=CAP, timeout_s=5, egress=EgressPolicy(entries))


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_the_default_allow_list_refuses_loopback_by_address_naming_the_rule(
    base_url: str, host: str
) -> None:
    url = base_url.replace("127.0.0.1", host) + "/ok.wasm"
    with pytest.raises(DeliveryError) as info:
        await fetch_wasm(WasmSource(image_url=url), limits=_allow("public"))
    port = _port(base_url)
    where = f"{host}:{port}" if host == "127.0.0.1" else f"{host}:{port} (127.0.0.1)"
    assert str(info.value) == (
        f"fetch refused: {where} is a private or loopback address: not in this proplet's fetch allow-list "
        "(public); allow it with --fetch-allow"
    )


@pytest.mark.parametrize("entry", ["127.0.0.1", "127.0.0.0/8", "localhost:{port}", "*.localhost,localhost"])
async def test_an_allowed_host_address_or_range_is_fetched(base_url: str, entry: str) -> None:
    entries = entry.format(port=_port(base_url)).split(",")
    url = base_url.replace("127.0.0.1", "localhost") + "/moved.wasm"  # the redirect is checked too
    assert await fetch_wasm(WasmSource(image_url=url), limits=_allow(*entries)) == WASM


async def test_a_host_allowed_on_one_port_is_refused_on_another(base_url: str) -> None:
    other = _port(base_url) + 1 if _port(base_url) < 65535 else _port(base_url) - 1
    with pytest.raises(DeliveryError, match="not in this proplet's fetch allow-list"):
        await fetch_wasm(
            WasmSource(image_url=f"http://localhost:{other}/ok.wasm"),
            limits=_allow(f"localhost:{_port(base_url)}"),
        )


@pytest.mark.parametrize("host", ["169.254.169.254", "[fe80::1]", "[::ffff:169.254.169.254]"])
async def test_metadata_and_link_local_addresses_are_refused_even_when_listed(host: str) -> None:
    with pytest.raises(
        DeliveryError, match=r"is link-local \(cloud metadata services live here\)|is link-local"
    ):
        await fetch_wasm(
            WasmSource(image_url=f"http://{host}/latest/meta-data/"),
            limits=_allow("public", "169.254.0.0/16"),
        )


async def test_https_through_the_allow_list_still_verifies_the_certificate(
    https_url: str, test_ca: tuple[Path, Path, Path]
) -> None:
    limits = FetchLimits(ca_bundle=str(test_ca[0]), timeout_s=5, egress=_allow("127.0.0.1").egress)
    assert await fetch_wasm(WasmSource(image_url=https_url + "/ok.wasm"), limits=limits) == WASM
    with pytest.raises(DeliveryError, match="CERTIFICATE_VERIFY_FAILED"):
        await fetch_wasm(WasmSource(image_url=https_url + "/ok.wasm"), limits=_allow("127.0.0.1"))
