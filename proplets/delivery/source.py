"""What a task says about its binary, the limits of a fetch, and sha256 pinning (all pure)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from proplets.delivery.errors import DeliveryError, DeliverySource
from proplets.egress import EgressPolicy

DEFAULT_MAX_BYTES = 100 * 1024 * 1024  # upstream WASM_FETCH_MAX_BYTES
DEFAULT_TIMEOUT_S = 30.0  # upstream reqwest client timeout
DEFAULT_CHUNK_TIMEOUT_S = 60.0  # upstream wait_for_binary

_HEX64 = re.compile(r"[0-9a-f]{64}")


def parse_sha256(pin: str) -> str:
    """Normalise a sha256 pin to 64 lower-case hex digits; ``""`` means "not pinned".

    Accepts an optional ``sha256:`` prefix and either case. Raises ValueError naming the bad pin.
    """
    if pin == "":
        return ""
    text = pin.strip().lower()
    if text.startswith("sha256:"):
        text = text[len("sha256:") :]
    if not _HEX64.fullmatch(text):
        raise ValueError(
            f"invalid sha256 pin {pin!r}: expected 64 hex digits, optionally prefixed with 'sha256:'"
        )
    return text


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verify_sha256(data: bytes, expected_hex: str, *, source: DeliverySource, what: str) -> None:
    """Raise unless ``data`` hashes to ``expected_hex`` (already normalised; ``""`` skips the check)."""
    if not expected_hex:
        return
    got = sha256_hex(data)
    if got != expected_hex:
        raise DeliveryError(source, f"sha256 mismatch for {what}: expected {expected_hex}, got {got}")


def is_http_url(url: str) -> bool:
    return url.startswith(("http://", "https://"))


@dataclass(frozen=True)
class WasmSource:
    """Where a task's binary comes from, as in upstream's start message, plus our digest pin.

    ``file`` (raw bytes, already base64-decoded) wins over ``image_url``; an ``http(s)://`` URL is
    downloaded; anything else is an OCI reference.
    """

    file: bytes = b""
    image_url: str = ""
    sha256: str = ""

    @classmethod
    def from_wire(cls, file_b64: str = "", image_url: str = "", sha256: str = "") -> WasmSource:
        """Build from a start message's base64 ``file``; bad base64 is a DeliveryError (source inline)."""
        raw = b""
        if file_b64:
            try:
                raw = base64.b64decode(file_b64, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise DeliveryError("inline", f"inline wasm file is not valid base64: {exc}") from exc
        return cls(file=raw, image_url=image_url, sha256=sha256)


@dataclass(frozen=True)
class FetchLimits:
    """Limits and TLS/registry settings of a fetch.

    ``max_bytes`` caps every path; ``timeout_s`` bounds a whole HTTP or OCI download (connect, headers
    and body); ``chunk_timeout_s`` bounds an MQTT chunk request. ``ca_bundle`` is a PEM file *added*
    to the system roots (upstream PROPLET_HTTP_TLS_CA_CERT); ``insecure_skip_verify`` turns TLS
    verification off. ``insecure_registries`` lists OCI hosts (``host`` or ``host:port``) reached
    over plain http besides localhost; ``registry_credentials`` maps such a host to (user, password).
    ``egress`` is the fetch allow-list every HTTP(S) connection is checked against (proplets/egress.py;
    a proplet always has one); None = no check (the manager pulling a module a task of its own names).
    """

    max_bytes: int = DEFAULT_MAX_BYTES
    timeout_s: float = DEFAULT_TIMEOUT_S
    chunk_timeout_s: float = DEFAULT_CHUNK_TIMEOUT_S
    ca_bundle: str = ""
    insecure_skip_verify: bool = False
    insecure_registries: frozenset[str] = frozenset()
    registry_credentials: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    egress: EgressPolicy | None = None

    def __post_init__(self) -> None:
        if self.max_bytes <= 0:
            raise ValueError(f"FetchLimits.max_bytes must be positive, got {self.max_bytes}")
        if self.timeout_s <= 0:
            raise ValueError(f"FetchLimits.timeout_s must be positive, got {self.timeout_s}")
        if self.chunk_timeout_s <= 0:
            raise ValueError(f"FetchLimits.chunk_timeout_s must be positive, got {self.chunk_timeout_s}")
