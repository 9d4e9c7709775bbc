"""A small OCI distribution-API registry for tests, on an ephemeral loopback port.

Implements what a pull needs, as real registries do it: ``GET /v2/``, ``GET|HEAD
/v2/<name>/manifests/<tag|digest>`` (Content-Type = the manifest's media type, Docker-Content-Digest),
``GET|HEAD /v2/<name>/blobs/<digest>`` (optionally via a 307 redirect to a storage URL, like S3-backed
registries), JSON error bodies (``MANIFEST_UNKNOWN``, ``BLOB_UNKNOWN``, ``NAME_UNKNOWN``,
``UNAUTHORIZED``), and either anonymous/credentialed bearer-token auth (401 with ``WWW-Authenticate:
Bearer realm=…,service=…,scope=…`` and a ``/token`` endpoint) or Basic auth.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
WASM_LAYER = "application/vnd.wasm.content.layer.v1+wasm"
WASM_CONFIG = "application/vnd.wasm.config.v0+json"
SERVICE = "test-registry"

_ROUTE = re.compile(r"^/v2/(?P<name>.+)/(?P<kind>manifests|blobs)/(?P<ref>[^/]+)$")


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class _State:
    blobs: dict[str, bytes] = field(default_factory=dict)
    # repository -> reference (tag or digest) -> (media type, body)
    manifests: dict[str, dict[str, tuple[str, bytes]]] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)  # token -> repository it grants pull on
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # method, path, Authorization


class OciRegistry:
    """Start with ``with OciRegistry(...) as reg:``; ``reg.host`` is ``127.0.0.1:<port>``.

    ``auth``: ``None`` (open), ``"token"`` (bearer tokens from ``/token``; with ``token_credentials``
    the token endpoint itself wants Basic credentials) or ``"basic"`` (needs ``basic_credentials``).
    """

    def __init__(
        self,
        *,
        auth: str | None = None,
        token_credentials: tuple[str, str] | None = None,
        basic_credentials: tuple[str, str] | None = None,
        redirect_blobs: bool = False,
    ) -> None:
        if auth not in (None, "token", "basic"):
            raise ValueError(f"auth must be None, 'token' or 'basic', got {auth!r}")
        if auth == "basic" and basic_credentials is None:
            raise ValueError("auth='basic' needs basic_credentials")
        self.auth = auth
        self.token_credentials = token_credentials
        self.basic_credentials = basic_credentials
        self.redirect_blobs = redirect_blobs
        self.state = _State()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = False  # server_close() joins handler threads
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.02,), name="oci-registry", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> OciRegistry:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # -- content ---------------------------------------------------------------------------------
    def put_blob(self, data: bytes, *, digest: str | None = None) -> str:
        """Store ``data``; a ``digest`` that is not its hash stores a corrupt blob (for mismatch tests)."""
        key = digest or digest_of(data)
        with self._lock:
            self.state.blobs[key] = data
        return key

    def put_manifest(self, repository: str, reference: str, manifest: dict[str, Any] | bytes) -> str:
        body = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
        media_type = json.loads(body).get("mediaType", OCI_MANIFEST)
        digest = digest_of(body)
        with self._lock:
            repo = self.state.manifests.setdefault(repository, {})
            repo[digest] = (media_type, body)
            repo[reference] = (media_type, body)
        return digest

    def push_wasm(
        self,
        repository: str,
        wasm: bytes,
        *,
        tag: str = "latest",
        layer_media_type: str = WASM_LAYER,
        extra_layers: list[tuple[str, bytes]] | None = None,
        layer_digest: str | None = None,
    ) -> str:
        """Push an artifact with one wasm layer (plus ``extra_layers``); returns the manifest digest."""
        config = b"{}"
        layers = [(layer_media_type, wasm, layer_digest)]
        layers += [(mt, data, None) for mt, data in extra_layers or []]
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": WASM_CONFIG, "digest": self.put_blob(config), "size": len(config)},
            "layers": [
                {"mediaType": mt, "digest": self.put_blob(data, digest=dg), "size": len(data)}
                for mt, data, dg in layers
            ],
        }
        return self.put_manifest(repository, tag, manifest)

    def requests(self) -> list[tuple[str, str, str]]:
        with self._lock:
            return list(self.state.requests)


def _make_handler(registry: OciRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep pytest output clean

        def do_HEAD(self) -> None:
            self._dispatch(head=True)

        def do_GET(self) -> None:
            self._dispatch(head=False)

        def _dispatch(self, *, head: bool) -> None:
            url = urlsplit(self.path)
            with registry._lock:
                registry.state.requests.append(
                    (self.command, url.path, self.headers.get("Authorization", ""))
                )
            if url.path == "/token":
                return self._token(parse_qs(url.query))
            if url.path.startswith("/_storage/"):
                return self._storage(url.path.removeprefix("/_storage/"), head)
            if url.path in ("/v2", "/v2/"):
                if self._authorized(""):
                    self._send(200, b"{}", "application/json", head=head)
                return None
            match = _ROUTE.match(url.path)
            if not match:
                return self._error(404, "NAME_UNKNOWN", f"no route {url.path}")
            name, kind, ref = match["name"], match["kind"], match["ref"]
            if not self._authorized(name):
                return None
            if kind == "manifests":
                return self._manifest(name, ref, head)
            return self._blob(name, ref, head)

        # -- auth ------------------------------------------------------------------------------
        def _authorized(self, name: str) -> bool:
            header = self.headers.get("Authorization", "")
            if registry.auth is None:
                return True
            if registry.auth == "basic":
                if header == _basic_header(registry.basic_credentials):
                    return True
                self._error(
                    401, "UNAUTHORIZED", "authentication required", challenge=f'Basic realm="{SERVICE}"'
                )
                return False
            token = header.removeprefix("Bearer ") if header.startswith("Bearer ") else ""
            with registry._lock:
                granted = registry.state.tokens.get(token)
            if granted is not None and (not name or granted == name):
                return True
            host = self.headers.get("Host", registry.host)
            challenge = f'Bearer realm="http://{host}/token",service="{SERVICE}"'
            if name:
                challenge += f',scope="repository:{name}:pull"'
            self._error(401, "UNAUTHORIZED", "authentication required", challenge=challenge)
            return False

        def _token(self, query: dict[str, list[str]]) -> None:
            if registry.token_credentials is not None and self.headers.get(
                "Authorization", ""
            ) != _basic_header(registry.token_credentials):
                return self._error(401, "UNAUTHORIZED", "bad credentials for the token endpoint")
            if query.get("service", [""])[0] != SERVICE:
                return self._error(400, "DENIED", "unknown service")
            scope = query.get("scope", [""])[0]
            parts = scope.split(":")
            if len(parts) != 3 or parts[0] != "repository" or "pull" not in parts[2].split(","):
                return self._error(400, "DENIED", f"bad scope {scope!r}")
            token = secrets.token_hex(16)
            with registry._lock:
                registry.state.tokens[token] = parts[1]
            body = json.dumps({"token": token, "access_token": token, "expires_in": 300}).encode()
            self._send(200, body, "application/json")
            return None

        # -- content ---------------------------------------------------------------------------
        def _manifest(self, name: str, ref: str, head: bool) -> None:
            with registry._lock:
                repo = registry.state.manifests.get(name)
                entry = None if repo is None else repo.get(ref)
            if repo is None:
                return self._error(404, "NAME_UNKNOWN", f"repository {name} not known")
            if entry is None:
                return self._error(404, "MANIFEST_UNKNOWN", f"manifest {ref} unknown")
            media_type, body = entry
            self._send(200, body, media_type, head=head, digest=digest_of(body))
            return None

        def _blob(self, name: str, digest: str, head: bool) -> None:
            with registry._lock:
                data = registry.state.blobs.get(digest)
            if data is None:
                return self._error(404, "BLOB_UNKNOWN", f"blob {digest} unknown")
            if registry.redirect_blobs:
                self.send_response(307)
                # Another origin (localhost vs 127.0.0.1), as a CDN is: clients must drop Authorization.
                self.send_header("Location", f"http://localhost:{registry.port}/_storage/{digest}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            self._send(200, data, "application/octet-stream", head=head, digest=digest)
            return None

        def _storage(self, digest: str, head: bool) -> None:
            # Storage backends (S3 and the like) do not accept the registry's Authorization header.
            if self.headers.get("Authorization"):
                return self._error(400, "DENIED", "storage does not take registry credentials")
            with registry._lock:
                data = registry.state.blobs.get(digest)
            if data is None:
                return self._error(404, "BLOB_UNKNOWN", f"blob {digest} unknown")
            self._send(200, data, "application/octet-stream", head=head)
            return None

        def _error(self, status: int, code: str, message: str, *, challenge: str = "") -> None:
            body = json.dumps({"errors": [{"code": code, "message": message}]}).encode()
            extra = {"WWW-Authenticate": challenge} if challenge else {}
            self._send(status, body, "application/json", extra=extra)

        def _send(
            self,
            status: int,
            body: bytes,
            content_type: str,
            *,
            head: bool = False,
            digest: str = "",
            extra: dict[str, str] | None = None,
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Docker-Distribution-API-Version", "registry/2.0")
            if digest:
                self.send_header("Docker-Content-Digest", digest)
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if not head:
                self.wfile.write(body)

    return Handler


def _basic_header(creds: tuple[str, str] | None) -> str:
    if creds is None:
        return "\0"  # matches no header
    return "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()


__all__ = ["OCI_INDEX", "OCI_MANIFEST", "WASM_LAYER", "OciRegistry", "digest_of"]
