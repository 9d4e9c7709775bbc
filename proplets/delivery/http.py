"""HTTP(S) download of a wasm binary with httpx: size cap, content-type check, configurable CA."""

from __future__ import annotations

import os
import ssl

import httpx

from proplets.delivery.errors import DeliveryError, DeliverySource
from proplets.delivery.source import FetchLimits

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
    return httpx.AsyncClient(verify=verify, timeout=httpx.Timeout(limits.timeout_s), follow_redirects=True)


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
