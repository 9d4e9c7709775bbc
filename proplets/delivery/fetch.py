"""``fetch_wasm``: pick the delivery path of a task's binary and pin its sha256."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import httpx

from proplets.delivery.chunks import ChunkFetcher
from proplets.delivery.errors import DeliveryError, DeliverySource
from proplets.delivery.http import fetch_http, make_client
from proplets.delivery.oci import pull_oci
from proplets.delivery.source import FetchLimits, WasmSource, is_http_url, parse_sha256, verify_sha256


def delivery_path(source: WasmSource, *, has_chunk_fetcher: bool) -> DeliverySource:
    """Upstream §7 order: inline file, http(s) URL, then registry (MQTT chunks if offered, else OCI)."""
    if source.file:
        return "inline"
    if is_http_url(source.image_url):
        return "http"
    return "mqtt" if has_chunk_fetcher else "oci"


async def fetch_wasm(
    source: WasmSource,
    *,
    limits: FetchLimits | None = None,
    http_client: httpx.AsyncClient | None = None,
    chunk_fetcher: ChunkFetcher | None = None,
) -> bytes:
    """Return the binary of ``source``, verified against its sha256 pin; raise DeliveryError otherwise.

    Nothing is returned on a digest mismatch, so nothing executes. With a ``chunk_fetcher`` a non-HTTP
    ``image_url`` goes through the MQTT registry protocol (upstream behaviour: the manager or proxy
    resolves it); without one it is pulled directly over the OCI distribution API. A given
    ``http_client`` is used as configured (its TLS settings win over ``limits``) and is not closed.
    """
    limits = limits or FetchLimits()
    path = delivery_path(source, has_chunk_fetcher=chunk_fetcher is not None)
    what = "inline wasm file" if path == "inline" else source.image_url
    try:
        pin = parse_sha256(source.sha256)
    except ValueError as exc:
        raise DeliveryError(path, f"{exc} (for {what})") from exc
    if path == "inline":
        data = source.file
    elif not source.image_url:
        raise DeliveryError("inline", "no wasm binary or image URL provided")
    elif path == "mqtt":
        assert chunk_fetcher is not None
        data = await _with_timeout(
            chunk_fetcher.request(source.image_url), limits.chunk_timeout_s, path, what
        )
    else:
        data = await _download(source.image_url, path, limits, http_client)
    if len(data) > limits.max_bytes:
        raise DeliveryError(
            path, f"wasm from {what} is {len(data)} bytes, exceeds size limit of {limits.max_bytes} bytes"
        )
    verify_sha256(data, pin, source=path, what=what)
    return data


async def _download(
    url: str, path: DeliverySource, limits: FetchLimits, http_client: httpx.AsyncClient | None
) -> bytes:
    client = http_client or make_client(limits)
    try:
        if path == "http":
            return await _with_timeout(fetch_http(url, limits, client), limits.timeout_s, path, url)
        return await _with_timeout(pull_oci(url, limits, client), limits.timeout_s, path, url)
    finally:
        if http_client is None:
            await client.aclose()


async def _with_timeout(work: Awaitable[bytes], timeout_s: float, path: DeliverySource, what: str) -> bytes:
    try:
        async with asyncio.timeout(timeout_s):
            return await work
    except TimeoutError:
        raise DeliveryError(path, f"timed out after {timeout_s:g} s fetching wasm from {what}") from None
