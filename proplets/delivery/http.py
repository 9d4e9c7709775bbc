"""HTTP(S) download of a wasm binary with httpx: size cap, content-type check, configurable CA."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

from proplets.delivery.errors import DeliveryError, DeliverySource, FetchRefused
from proplets.delivery.source import FetchLimits
from proplets.egress import EgressPolicy

ACCEPTED_CONTENT_TYPES = ("application/wasm", "application/octet-stream")


def make_client(limits: FetchLimits) -> httpx.AsyncClient:
    """A client honouring the CA bundle / insecure flag and the timeout of ``limits``."""
    verify: ssl.SSLContext | bool
    if limits.insecure_skip_verify:
        verify = False
    else:
        verify = ssl.create_default_context()
        if limits.ca_bundle:
            if not os.path.isfile(limits.ca_bundle):
                raise DeliveryError("http", f"CA bundle {limits.ca_bundle} does not exist or is not a file")
            try:
                # Added to the system roots, as upstream's reqwest add_root_certificate does.
                verify.load_verify_locations(cafile=limits.ca_bundle)
            except ssl.SSLError as exc:
                raise DeliveryError("http", f"CA bundle {limits.ca_bundle} is not valid PEM: {exc}") from exc
    timeout = httpx.Timeout(limits.timeout_s)
    if limits.egress is None:
        return httpx.AsyncClient(verify=verify, timeout=timeout, follow_redirects=True)
    transport = httpx.AsyncHTTPTransport(verify=verify)
    # Every connection (redirects included) resolves, asks the allow-list, and connects to the very
    # address it asked about; TLS still checks the certificate against the URL's host name. httpx has
    # no public hook for the network backend, so it is set on the transport's connection pool.
    transport._pool._network_backend = CheckedBackend(limits.egress)
    # No HTTP(S)_PROXY from the environment: the allow-list must see the real destination.
    return httpx.AsyncClient(transport=transport, timeout=timeout, follow_redirects=True, trust_env=False)


class CheckedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, connecting only to addresses the egress policy allows."""

    def __init__(self, policy: EgressPolicy, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self.policy = policy
        self.inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        for address in addresses:  # one refused address refuses the name: it may be rebinding
            verdict = self.policy.check(host, port, address)
            if not verdict.allowed:
                raise FetchRefused("http", f"fetch refused: {verdict.rule}")
        last: Exception | None = None
        for address in addresses:
            try:
                return await self.inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        raise last or httpcore.ConnectError(f"no address for {host}")

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise FetchRefused("http", f"fetch refused: unix socket {path} is not a network destination")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


async def read_capped(response: httpx.Response, *, limit: int, source: DeliverySource, what: str) -> bytes:
    """Read a streamed body, refusing it up front by Content-Length and again while counting."""
    declared = response.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise DeliveryError(
            source,
            f"download of {what} exceeds size limit of {limit} bytes (Content-Length {declared.strip()})",
        )
    parts: list[bytes] = []
    size = 0
    async for piece in response.aiter_bytes():
        size += len(piece)
        if size > limit:
            raise DeliveryError(source, f"download of {what} exceeds size limit of {limit} bytes")
        parts.append(piece)
    return b"".join(parts)


def check_content_type(response: httpx.Response, url: str) -> None:
    ctype = response.headers.get("content-type", "").strip()
    if ctype and not any(ok in ctype.lower() for ok in ACCEPTED_CONTENT_TYPES):
        raise DeliveryError(
            "http", f"content-type {ctype} is not application/wasm or application/octet-stream ({url})"
        )


def describe_transport_error(exc: httpx.HTTPError, what: str) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out fetching {what}: {type(exc).__name__}"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect fetching {what}: {exc}"
    return f"{type(exc).__name__} fetching {what}: {exc}"


async def fetch_http(url: str, limits: FetchLimits, client: httpx.AsyncClient) -> bytes:
    """GET ``url`` streamed; 4xx/5xx, a foreign content type or an oversize body are DeliveryErrors."""
    try:
        async with client.stream("GET", url) as response:
            if response.status_code >= 400:
                raise DeliveryError("http", f"HTTP {response.status_code} fetching wasm from {url}")
            check_content_type(response, url)
            return await read_capped(response, limit=limits.max_bytes, source="http", what=url)
    except httpx.HTTPError as exc:
        raise DeliveryError("http", describe_transport_error(exc, f"wasm from {url}")) from exc
