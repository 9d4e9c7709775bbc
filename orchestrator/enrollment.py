"""Enrollment at the edge: draw the secrets (``secrets``/``os.urandom``), read and write identity files.

The decisions live in `orchestrator.core.identity`; this module only supplies randomness and files.

Identity file (JSON, written 0600 by ``propeller proplets enroll --out``, read by ``propeller proplet
--identity``): ``{"proplet_id", "client_id", "username", "password", "kind": "proplet"|"upstream"|
"manager", "signing_key": base64 raw 32-byte Ed25519 private key, "public_key": base64 raw 32 bytes,
"broker"?}``; an upstream identity has no keys.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.core.identity import (
    KINDS,
    PROPLET_READ,
    PROPLET_WRITE,
    Enrollment,
    Identity,
    check_id,
    direct_start_suffix,
    new_enrollment,
    public_key_of,
)

SALT_BYTES = 12


def enroll(
    kind: str = "proplet",
    proplet_id: str | None = None,
    *,
    wall: float,
    client_id: str | None = None,
    key: str | None = None,
) -> Enrollment:
    """A fresh identity: a random id (``proplet-<hex>``) unless given, a 256-bit password unless ``key``
    (an upstream proplet's own API key) is given, and an Ed25519 key for our proplets."""
    pid = proplet_id or client_id or f"proplet-{secrets.token_hex(6)}"
    return new_enrollment(
        kind=kind,
        proplet_id=pid,
        client_id=client_id,
        password=key if key is not None else secrets.token_urlsafe(32),
        salt=os.urandom(SALT_BYTES),
        signing_key=os.urandom(32) if kind != "upstream" else None,
        wall=wall,
    )


@dataclass(frozen=True)
class IdentityFile:
    """A parsed identity file: what a proplet needs to connect and sign."""

    proplet_id: str
    client_id: str
    username: str
    password: str
    kind: str
    signing_key: bytes | None = None
    public_key: bytes | None = None
    broker: str | None = None


def parse_identity(doc: Any, where: str = "identity") -> IdentityFile:
    """Validate an identity-file document; ValueError naming the field that is wrong."""
    if not isinstance(doc, dict):
        raise ValueError(f"{where}: expected a JSON object")

    def text(name: str, required: bool = True) -> str | None:
        value = doc.get(name)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value:
            raise ValueError(f"{where}: field {name!r} must be a non-empty string")
        return value

    def key(name: str) -> bytes | None:
        value = text(name, required=False)
        if value is None:
            return None
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"{where}: field {name!r} is not base64") from None
        if len(raw) != 32:
            raise ValueError(f"{where}: field {name!r} must decode to 32 bytes, got {len(raw)}")
        return raw

    kind = text("kind")
    if kind not in KINDS:
        raise ValueError(f"{where}: field 'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
    ident = IdentityFile(
        proplet_id=str(text("proplet_id")),
        client_id=str(text("client_id")),
        username=str(text("username")),
        password=str(text("password")),
        kind=str(kind),
        signing_key=key("signing_key"),
        public_key=key("public_key"),
        broker=text("broker", required=False),
    )
    try:
        check_id(ident.proplet_id, "proplet_id")
        check_id(ident.client_id, "client_id")
    except Exception as err:
        raise ValueError(f"{where}: {err}") from None
    if kind == "proplet" and ident.signing_key is None:
        raise ValueError(f"{where}: a proplet identity needs 'signing_key'")
    if ident.signing_key and ident.public_key and public_key_of(ident.signing_key) != ident.public_key:
        raise ValueError(f"{where}: 'public_key' is not the public half of 'signing_key'")
    return ident


def load_identity(path: str | Path) -> IdentityFile:
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except OSError as err:
        raise ValueError(f"identity file {p}: {err.strerror or err}") from None
    except ValueError as err:
        raise ValueError(f"identity file {p}: not JSON ({err})") from None
    return parse_identity(doc, f"identity file {p}")


def write_identity(path: str | Path, doc: dict[str, Any]) -> Path:
    """Write an identity file readable by its owner only (it holds a password and a private key)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    os.chmod(p, 0o600)
    return p


async def enroll_into_store(
    db: str, kind: str = "proplet", proplet_id: str | None = None, *, wall: float,
    client_id: str | None = None, key: str | None = None,
) -> Enrollment:  # fmt: skip
    """Enroll straight into a manager's database (no manager running): the manager's own identity for
    an external broker, and set-ups (twin, HIL, CI) that provision before anything starts."""
    from orchestrator.adapters.store import Store
    from orchestrator.core.identity import IdentityRegistry

    enrollment = enroll(kind, proplet_id, wall=wall, client_id=client_id, key=key)
    async with await Store.open(db) as store:
        registry = IdentityRegistry(await store.load_identities())
        registry.enroll(enrollment.identity)  # Conflict if the id, user or client id is taken
        await store.save_identity(enrollment.identity)
    return enrollment


def mosquitto_files(identities: list[Identity]) -> tuple[str, str]:
    """(password file, ACL file) for Mosquitto 2: one `$7$` line and one topic block per active identity.

    Mosquitto binds topics to users but cannot read payloads: an enrolled proplet could still claim
    another proplet's id inside a message (docs/trust.md, residual risks); receipts cover results.
    """
    passwd, acl = [], ["# generated by `propeller broker mosquitto-config`; do not edit", ""]
    for identity in identities:
        if not identity.active:
            continue
        passwd.append(f"{identity.username}:{identity.password_hash}")
        acl.append(f"user {identity.username}")
        if identity.kind == "manager":
            acl.append("topic readwrite #")
        else:
            for suffix in PROPLET_WRITE:
                acl.append(f"topic write m/+/c/+/{suffix}")
            for suffix in PROPLET_READ:
                acl.append(f"topic read m/+/c/+/{suffix}")
            acl.append(f"topic read m/+/c/+/{direct_start_suffix(identity)}")
        acl.append("")
    return "\n".join(passwd) + "\n", "\n".join(acl)


# What we recommend for any Mosquitto that carries propeller traffic. With Nagle on (Mosquitto's default)
# a start or result could wait ~40 ms for a delayed TCP ACK (docs/benchmarks.md, "Where a task's latency
# went"); Redis, Celery's usual broker, sends with TCP_NODELAY by default.
MOSQUITTO_TUNING = "set_tcp_nodelay true\n"

MOSQUITTO_CONF = "# generated by `propeller broker mosquitto-config`: include it from your mosquitto.conf\n"
MOSQUITTO_CONF += MOSQUITTO_TUNING
MOSQUITTO_CONF += """allow_anonymous false
# A client id is its user name: one identity cannot take over another's session.
use_username_as_clientid true
password_file {passwd}
acl_file {acl}
"""
