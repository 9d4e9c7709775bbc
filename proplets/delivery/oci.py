"""OCI distribution-API pull of a wasm layer: manifest, blob, bearer-token or basic auth."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from typing import Any

import httpx

from proplets.delivery.errors import DeliveryError
from proplets.delivery.http import describe_transport_error, read_capped
from proplets.delivery.ociref import (
    DOCKER_MANIFEST_LIST,
    LOCAL_HOSTS,
    MANIFEST_ACCEPT,
    OCI_INDEX,
    OciRef,
    choose_platform_manifest,
    choose_wasm_layer,
    parse_oci_ref,
)
from proplets.delivery.source import FetchLimits, sha256_hex

MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # the distribution spec's recommended manifest limit
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


def registry_base_url(ref: OciRef, limits: FetchLimits) -> str:
    plain = ref.hostname in LOCAL_HOSTS or bool({ref.registry, ref.hostname} & limits.insecure_registries)
    return f"{'http' if plain else 'https'}://{ref.registry}"


class _RegistrySession:
    """One pull against one registry: remembers the Authorization header it earned."""

    def __init__(self, client: httpx.AsyncClient, ref: OciRef, limits: FetchLimits) -> None:
        self._client = client
        self._ref = ref
        self._limits = limits
        self._auth: str | None = None
        creds = limits.registry_credentials.get(ref.registry) or limits.registry_credentials.get(ref.hostname)
        self._creds = creds

    async def open(self, url: str, accept: str | None = None) -> httpx.Response:
        """GET ``url`` streamed, answering one 401 challenge; the caller closes the response."""
        response = await self._send(url, accept)
        if response.status_code == 401:
            challenge = response.headers.get("www-authenticate", "")
            await response.aclose()
            await self._answer_challenge(challenge)
            response = await self._send(url, accept)
            if response.status_code == 401:
                await response.aclose()
                raise DeliveryError(
                    "oci", f"registry {self._ref.registry} refused our credentials for {self._ref}"
                )
        return response

    async def _send(self, url: str, accept: str | None) -> httpx.Response:
        headers = {}
        if accept:
            headers["Accept"] = accept
        if self._auth:
            headers["Authorization"] = self._auth
        return await self._client.send(self._client.build_request("GET", url, headers=headers), stream=True)

    async def _answer_challenge(self, challenge: str) -> None:
        scheme, _, params_text = challenge.strip().partition(" ")
        params = dict(_CHALLENGE_PARAM.findall(params_text))
        if scheme.lower() == "basic":
            if self._creds is None:
                raise DeliveryError(
                    "oci",
                    f"registry {self._ref.registry} requires credentials (Basic challenge) for {self._ref}",
                )
            self._auth = _basic(*self._creds)
            return
        if scheme.lower() != "bearer" or "realm" not in params:
            raise DeliveryError(
                "oci",
                f"registry {self._ref.registry} sent an unusable auth challenge {challenge!r} "
                f"for {self._ref}",
            )
        realm = params["realm"]
        query = {key: params[key] for key in ("service", "scope") if key in params}
        query.setdefault("scope", f"repository:{self._ref.repository}:pull")
        headers = {"Authorization": _basic(*self._creds)} if self._creds else {}
        response = await self._client.get(realm, params=query, headers=headers)
        if response.status_code != 200:
            raise DeliveryError(
                "oci", f"token request to {realm} failed with HTTP {response.status_code} for {self._ref}"
            )
        try:
            body = response.json()
            token = body.get("token") or body.get("access_token")
        except (json.JSONDecodeError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise DeliveryError("oci", f"token response from {realm} has no token for {self._ref}")
        self._auth = f"Bearer {token}"


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def _get_manifest(session: _RegistrySession, base: str, ref: OciRef, reference: str) -> dict[str, Any]:
    url = f"{base}/v2/{ref.repository}/manifests/{reference}"
    response = await session.open(url, accept=MANIFEST_ACCEPT)
    try:
        if response.status_code == 404:
            raise DeliveryError(
                "oci", f"manifest {reference} not found in {ref.registry}/{ref.repository} (HTTP 404)"
            )
        if response.status_code >= 400:
            raise DeliveryError("oci", f"HTTP {response.status_code} fetching manifest of {ref}")
        body = await read_capped(response, limit=MAX_MANIFEST_BYTES, source="oci", what=f"manifest of {ref}")
        header_digest = response.headers.get("docker-content-digest", "")
    finally:
        await response.aclose()
    got = "sha256:" + sha256_hex(body)
    if reference.startswith("sha256:") and got != reference:
        raise DeliveryError("oci", f"sha256 mismatch for manifest of {ref}: expected {reference}, got {got}")
    if header_digest.startswith("sha256:") and header_digest != got:
        raise DeliveryError(
            "oci", f"manifest of {ref} does not match its Docker-Content-Digest {header_digest} (got {got})"
        )
    try:
        manifest = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DeliveryError("oci", f"manifest of {ref} is not JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise DeliveryError("oci", f"manifest of {ref} is not a JSON object")
    return manifest


async def _resolve_layer(session: _RegistrySession, base: str, ref: OciRef) -> Mapping[str, Any]:
    manifest = await _get_manifest(session, base, ref, ref.reference)
    if manifest.get("mediaType") in (OCI_INDEX, DOCKER_MANIFEST_LIST) or "manifests" in manifest:
        try:
            entry = choose_platform_manifest(manifest)
        except ValueError as exc:
            raise DeliveryError("oci", f"image index of {ref}: {exc}") from exc
        digest = entry.get("digest")
        if not isinstance(digest, str) or not digest.startswith("sha256:"):
            raise DeliveryError("oci", f"image index of {ref} names no sha256 manifest digest")
        manifest = await _get_manifest(session, base, ref, digest)
    layers = manifest.get("layers")
    try:
        return choose_wasm_layer(layers if isinstance(layers, list) else [])
    except ValueError as exc:
        raise DeliveryError("oci", f"manifest of {ref}: {exc}") from exc


async def pull_oci(image_ref: str, limits: FetchLimits, client: httpx.AsyncClient) -> bytes:
    """Pull the wasm layer of ``image_ref``; the layer's own digest is always verified."""
    try:
        ref = parse_oci_ref(image_ref)
    except ValueError as exc:
        raise DeliveryError("oci", str(exc)) from exc
    base = registry_base_url(ref, limits)
    session = _RegistrySession(client, ref, limits)
    try:
        layer = await _resolve_layer(session, base, ref)
        digest, size = str(layer["digest"]), int(layer["size"])
        if not digest.startswith("sha256:"):
            raise DeliveryError("oci", f"layer {digest} of {ref} is not sha256-addressed; refusing it")
        if size > limits.max_bytes:
            raise DeliveryError(
                "oci",
                f"layer {digest} of {ref} is {size} bytes, exceeds size limit of {limits.max_bytes} bytes",
            )
        response = await session.open(f"{base}/v2/{ref.repository}/blobs/{digest}")
        try:
            if response.status_code == 404:
                raise DeliveryError("oci", f"blob {digest} of {ref} not found (HTTP 404)")
            if response.status_code >= 400:
                raise DeliveryError("oci", f"HTTP {response.status_code} fetching blob {digest} of {ref}")
            blob = await read_capped(
                response, limit=limits.max_bytes, source="oci", what=f"layer {digest} of {ref}"
            )
        finally:
            await response.aclose()
    except httpx.HTTPError as exc:
        raise DeliveryError("oci", describe_transport_error(exc, f"{ref} from {base}")) from exc
    got = "sha256:" + sha256_hex(blob)
    if got != digest:
        raise DeliveryError("oci", f"sha256 mismatch for layer of {ref}: expected {digest}, got {got}")
    return blob
