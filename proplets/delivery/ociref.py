"""OCI reference parsing and layer choice (pure)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_ACCEPT = ", ".join((OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_MANIFEST_LIST))
WASM_LAYER_TYPES = (
    "application/vnd.wasm.content.layer.v1+wasm",
    "application/vnd.module.wasm.content.layer.v1+wasm",  # wasm-to-oci
    "application/wasm",
)
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPO = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_HOST = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\])(?::[0-9]{1,5})?")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_FORMAT = "host[:port]/repository[:tag|@sha256:<64 hex>]"


@dataclass(frozen=True)
class OciRef:
    registry: str  # host[:port]
    repository: str
    tag: str = "latest"
    digest: str = ""  # "sha256:<hex>" when pinned by digest

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/``: the digest when present, else the tag."""
        return self.digest or self.tag

    @property
    def hostname(self) -> str:
        host = self.registry
        if host.startswith("["):
            return host[: host.index("]") + 1]
        return host.rsplit(":", 1)[0] if ":" in host else host

    def __str__(self) -> str:
        suffix = f"@{self.digest}" if self.digest else f":{self.tag}"
        return f"{self.registry}/{self.repository}{suffix}"


def parse_oci_ref(ref: str) -> OciRef:
    """Parse ``host[:port]/repo/name[:tag|@sha256:…]`` (optional ``oci://``); tag defaults to latest.

    Raises ValueError naming the reference and what is wrong.
    """
    text = ref.strip()
    text = text.removeprefix("oci://")
    if "/" not in text:
        raise ValueError(f"OCI reference {ref!r} has no registry host; expected {_FORMAT}")
    host, rest = text.split("/", 1)
    if not _HOST.fullmatch(host) or not ("." in host or ":" in host or host in LOCAL_HOSTS):
        raise ValueError(f"OCI reference {ref!r} does not start with a registry host; expected {_FORMAT}")
    digest = ""
    tag = "latest"
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST.fullmatch(digest):
            raise ValueError(f"OCI reference {ref!r} has a bad digest {digest!r}; expected sha256:<64 hex>")
    last = rest.rsplit("/", 1)[-1]
    if ":" in last:
        rest, tag = rest.rsplit(":", 1)
        if not _TAG.fullmatch(tag):
            raise ValueError(f"OCI reference {ref!r} has a bad tag {tag!r}")
    if not _REPO.fullmatch(rest):
        raise ValueError(
            f"OCI reference {ref!r} has a bad repository {rest!r} (lower-case letters, digits, . _ - /)"
        )
    return OciRef(registry=host, repository=rest, tag=tag, digest=digest)


def choose_platform_manifest(index: Mapping[str, Any]) -> Mapping[str, Any]:
    """From an image index, the wasm/wasi platform entry, else the first one."""
    entries = index.get("manifests")
    if not isinstance(entries, list) or not entries:
        raise ValueError("image index has no manifests")
    for entry in entries:
        platform = entry.get("platform") if isinstance(entry, dict) else None
        if isinstance(platform, dict) and (
            platform.get("architecture") == "wasm" or str(platform.get("os", "")).startswith("wasi")
        ):
            return entry
    first = entries[0]
    if not isinstance(first, dict):
        raise ValueError("image index entry is not an object")
    return first


def choose_wasm_layer(layers: Sequence[Any]) -> Mapping[str, Any]:
    """The first layer with a wasm media type, else the largest (as upstream's proxy does)."""
    valid = [
        layer
        for layer in layers
        if isinstance(layer, dict)
        and isinstance(layer.get("digest"), str)
        and isinstance(layer.get("size"), int)
    ]
    if not valid:
        raise ValueError("manifest has no layers with a digest and size")
    for layer in valid:
        if layer.get("mediaType") in WASM_LAYER_TYPES:
            return layer
    return max(valid, key=lambda layer: int(layer["size"]))
