"""Identities of the fleet and the broker's decisions about them (sans-I/O).

Every client of a closed broker is an enrolled **identity**: a proplet (ours, with an Ed25519 signing
key), an upstream proplet (Rust proplet or ESP32 firmware: its own client id and key, no signing key)
or the manager. An identity has one client id, one user name and a password of which only a hash is
kept. The registry decides, for the broker adapters:

- ``authenticate(client_id, username, password)``: anonymous, unknown, revoked, wrong password and a
  client id that belongs to another identity (a session takeover) are refused;
- ``publish_verdict(identity, topic, payload)``: a proplet publishes only proplet-to-manager topics
  (and registry requests), and only as itself: the ``proplet_id`` in the payload of ``create``,
  ``alive``, ``metrics`` (required) and of ``results``, ``invoke_results``, ``task_metrics`` (when
  present: the firmware's results carry none) must be its own id; only the manager publishes manager
  topics;
- ``subscribe_verdict(identity, topic_filter)``: a proplet subscribes only to the manager-to-proplet
  topics and ``registry/server`` (no wildcards: ``#`` would read every task's inputs and env).

Password hashes use Mosquitto's ``$7$`` format (PBKDF2-HMAC-SHA512, base64 salt and hash), so the one
stored hash serves our embedded broker and the generated Mosquitto password file alike. Passwords we
generate are 256-bit random tokens, for which Mosquitto's 101 iterations are plenty (a slow hash
protects guessable passwords; these are not): a login costs ~0.1 ms, not argon2's ~90 ms, which
matters for fleets of simulated devices.

Randomness (passwords, salts, keys) is passed in by the caller (``orchestrator/enrollment.py``); this
module derives and checks, it never draws.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from orchestrator.core.errors import Conflict, NotFound, ValidationError
from orchestrator.wire import topics as t

Kind = Literal["proplet", "upstream", "manager"]
KINDS: tuple[Kind, ...] = ("proplet", "upstream", "manager")

PBKDF2_ITERATIONS = 101  # Mosquitto 2.0's default for `$7$`
SALT_BYTES = 12
ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
MAX_PASSWORD = 256
# create/alive/metrics bodies are small; anything bigger is refused without parsing (a 5 MB id).
MAX_ANNOUNCE_BYTES = 64 * 1024

# proplet -> manager topics, and whether their payload must name the sender ("required") or may
# omit it ("optional": the firmware's results and the FL variant carry no proplet_id).
_PROPLET_PUBLISH: dict[str, str] = {
    t.CREATE: "required",
    t.ALIVE: "required",
    t.METRICS: "required",
    t.RESULTS: "optional",
    t.INVOKE_RESULTS: "optional",
    t.TASK_METRICS: "optional",
    # Live task output pieces (our extension) may be up to 64 KiB, so not under MAX_ANNOUNCE_BYTES;
    # ours always name the sender, and a piece naming another proplet is refused like any other.
    t.LOGS: "optional",
    t.REGISTRY_REQUEST: "none",
}
_PROPLET_SUBSCRIBE = frozenset({t.START, t.STOP, t.INVOKE, t.DISCOVER, t.REGISTRY_SERVER})
PROPLET_WRITE: tuple[str, ...] = tuple(_PROPLET_PUBLISH)  # channel suffixes a proplet may publish on
PROPLET_READ: tuple[str, ...] = tuple(sorted(_PROPLET_SUBSCRIBE))  # ... and may subscribe to
_BASE_RE = re.compile(r"m/.+/c/.+")


def direct_start_suffix(identity: Identity) -> str:
    """The one start topic of its own a proplet may read besides the shared ones (topics.START_DIRECT)."""
    return t.START_DIRECT + identity.proplet_id


def _suffix(topic: str, known: Iterable[str]) -> str | None:
    """The known channel suffix ``topic`` ends with (after a well-formed ``m/{d}/c/{c}`` base)."""
    for suffix in known:
        if topic.endswith("/" + suffix) and _BASE_RE.fullmatch(topic[: -len(suffix) - 1]):
            return suffix
    return None


def check_id(value: object, field: str) -> str:
    """A proplet id / client id / user name: 1..128 of [A-Za-z0-9._:@-], not starting with a symbol."""
    if not isinstance(value, str) or not ID_RE.fullmatch(value):
        raise ValidationError(
            f"{field} must be 1..128 characters of A-Z a-z 0-9 . _ : @ - (starting with a letter or "
            f"digit), got {str(value)[:80]!r}",
            field,
        )
    return value


def hash_password(password: str, salt: bytes, iterations: int = PBKDF2_ITERATIONS) -> str:
    """Mosquitto's `$7$` hash: `$7$ITER$b64(salt)$b64(pbkdf2_sha512(password, salt, ITER))`."""
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check of ``password`` against a `$7$` hash; False for any malformed hash."""
    try:
        _, seven, iters, salt, digest = stored.split("$")
        if seven != "7":
            return False
        iterations = int(iters)
        if not 1 <= iterations <= 1_000_000:
            return False
        expected = base64.b64decode(digest, validate=True)
        given = hashlib.pbkdf2_hmac(
            "sha512", password.encode(), base64.b64decode(salt, validate=True), iterations
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(expected, given)


def public_key_of(signing_key: bytes) -> bytes:
    """The raw 32-byte Ed25519 public key of a raw 32-byte private key."""
    if len(signing_key) != 32:
        raise ValidationError(f"an Ed25519 signing key is 32 bytes, got {len(signing_key)}", "signing_key")
    return (
        Ed25519PrivateKey.from_private_bytes(signing_key)
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw)
    )


@dataclass(frozen=True)
class Identity:
    """One enrolled client of the broker. Only the hash of the password is kept."""

    proplet_id: str
    client_id: str
    username: str
    password_hash: str
    kind: Kind
    public_key: bytes | None = None
    created_at: float = 0.0
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def view(self) -> dict[str, Any]:
        """What the API lists: no secret, not even the hash."""
        return {
            "proplet_id": self.proplet_id,
            "client_id": self.client_id,
            "username": self.username,
            "kind": self.kind,
            "public_key": base64.b64encode(self.public_key).decode() if self.public_key else None,
            "created_at": self.created_at,
            "revoked": self.revoked_at is not None,
            "revoked_at": self.revoked_at,
        }


@dataclass(frozen=True)
class Enrollment:
    """A fresh identity and the secrets shown once to the operator (the identity file)."""

    identity: Identity
    password: str
    signing_key: bytes | None

    def identity_file(self, broker: str | None = None) -> dict[str, Any]:
        """The identity-file JSON (`propeller proplets enroll --out`, `propeller proplet --identity`)."""
        doc: dict[str, Any] = {
            "proplet_id": self.identity.proplet_id,
            "client_id": self.identity.client_id,
            "username": self.identity.username,
            "password": self.password,
            "kind": self.identity.kind,
        }
        if self.signing_key is not None and self.identity.public_key is not None:
            doc["signing_key"] = base64.b64encode(self.signing_key).decode()
            doc["public_key"] = base64.b64encode(self.identity.public_key).decode()
        if broker:
            doc["broker"] = broker
        return doc


def new_enrollment(
    *,
    kind: str,
    proplet_id: str,
    password: str,
    salt: bytes,
    signing_key: bytes | None,
    wall: float,
    client_id: str | None = None,
) -> Enrollment:
    """Build an identity from caller-drawn secrets. Upstream: user name = client id = proplet id,
    password = its key (as upstream provisions); ours: the same, plus an Ed25519 key."""
    if kind not in KINDS:
        raise ValidationError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}", "kind")
    check_id(proplet_id, "proplet_id")
    client = check_id(client_id or proplet_id, "client_id")
    if not isinstance(password, str) or not 0 < len(password) <= MAX_PASSWORD:
        raise ValidationError(f"password (key) must be 1..{MAX_PASSWORD} characters", "key")
    if kind == "upstream":
        signing_key = None  # upstream proplets cannot sign; their results are shown unverified
    elif signing_key is None and kind == "proplet":
        raise ValidationError("a proplet identity needs a signing key", "signing_key")
    public = public_key_of(signing_key) if signing_key is not None else None
    identity = Identity(
        proplet_id=proplet_id,
        client_id=client,
        username=client,
        password_hash=hash_password(password, salt),
        kind=kind,  # checked against KINDS above
        public_key=public,
        created_at=wall,
    )
    return Enrollment(identity, password, signing_key)


WILL_REFUSED = "last will refused"


@dataclass(frozen=True)
class AuthVerdict:
    identity: Identity | None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.identity is not None


class IdentityRegistry:
    """Enrolled identities, indexed by proplet id, user name and client id (active ones only)."""

    def __init__(self, identities: Iterable[Identity] = ()) -> None:
        self._all: dict[str, Identity] = {}
        self._by_user: dict[str, str] = {}
        self._by_client: dict[str, str] = {}
        for identity in identities:
            self._put(identity)

    # ---------------------------------------------------------------- membership

    def __len__(self) -> int:
        return len(self._all)

    def __contains__(self, proplet_id: object) -> bool:
        return proplet_id in self._all

    def get(self, proplet_id: str) -> Identity | None:
        return self._all.get(proplet_id)

    def all(self) -> list[Identity]:
        return sorted(self._all.values(), key=lambda i: (i.kind, i.proplet_id))

    def active(self) -> list[Identity]:
        return [i for i in self.all() if i.active]

    def owner_of_client(self, client_id: str) -> Identity | None:
        pid = self._by_client.get(client_id)
        return None if pid is None else self._all[pid]

    def enroll(self, identity: Identity) -> Identity:
        """Add an identity; a revoked one of the same proplet id is replaced. Conflict if the id, user
        name or client id is held by another active identity (nothing changes then)."""
        current = self._all.get(identity.proplet_id)
        if current is not None and current.active:
            raise Conflict(f"proplet {identity.proplet_id!r} is already enrolled; revoke it first", "id")
        for index, key, field in (
            (self._by_user, identity.username, "username"),
            (self._by_client, identity.client_id, "client_id"),
        ):
            holder = index.get(key)
            if holder is not None and holder != identity.proplet_id:
                raise Conflict(f"{field} {key!r} belongs to identity {holder!r}", field)
        if current is not None:
            self._drop(current)
        self._put(identity)
        return identity

    def revoke(self, proplet_id: str, wall: float) -> Identity:
        """Mark revoked (kept, so a listing shows it); revoking twice keeps the first time."""
        current = self._all.get(proplet_id)
        if current is None:
            raise NotFound(f"no enrolled identity {proplet_id!r}", "id")
        if not current.active:
            return current
        revoked = replace(current, revoked_at=wall)
        self._drop(current)
        self._put(revoked)
        return revoked

    def replace_all(self, identities: Iterable[Identity]) -> list[Identity]:
        """Swap in a fresh view (the standalone broker re-reading the manager's database); returns the
        identities that were active before and are not any more (their sessions must be dropped)."""
        before = {i.proplet_id: i for i in self._all.values() if i.active}
        self._all.clear()
        self._by_user.clear()
        self._by_client.clear()
        for identity in identities:
            self._put(identity)
        gone = []
        for pid, old in before.items():
            new = self._all.get(pid)
            if new is None or not new.active or new.password_hash != old.password_hash:
                gone.append(old)
        return gone

    def _put(self, identity: Identity) -> None:
        self._all[identity.proplet_id] = identity
        if identity.active:
            self._by_user[identity.username] = identity.proplet_id
            self._by_client[identity.client_id] = identity.proplet_id

    def _drop(self, identity: Identity) -> None:
        self._all.pop(identity.proplet_id, None)
        if self._by_user.get(identity.username) == identity.proplet_id:
            del self._by_user[identity.username]
        if self._by_client.get(identity.client_id) == identity.proplet_id:
            del self._by_client[identity.client_id]

    # ---------------------------------------------------------------- broker decisions

    def authenticate(self, client_id: str, username: str | None, password: str | None) -> AuthVerdict:
        if not username:
            return AuthVerdict(None, "anonymous clients are refused (no user name)")
        pid = self._by_user.get(username)
        if pid is None:
            revoked = any(i.username == username for i in self._all.values())
            return AuthVerdict(None, "identity revoked" if revoked else "unknown user name")
        identity = self._all[pid]
        if not verify_password(password or "", identity.password_hash):
            return AuthVerdict(None, "wrong password")
        if client_id != identity.client_id:
            owner = self._by_client.get(client_id)
            if owner is not None:
                return AuthVerdict(None, f"client id {client_id!r} belongs to another identity")
            return AuthVerdict(
                None, f"identity {pid!r} must connect with its client id {identity.client_id!r}"
            )
        return AuthVerdict(identity)

    def connect_verdict(
        self, client_id: str, username: str | None, password: str | None,
        will_topic: str | None = None, will_payload: bytes = b"",
    ) -> AuthVerdict:  # fmt: skip
        """A closed broker's decision on a CONNECT: the credentials (``authenticate``), then the Last
        Will, which must be a message the identity may publish. Any broker (the embedded one, the
        twin's broker model) decides through this."""
        verdict = self.authenticate(client_id, username, password)
        if verdict.identity is not None and will_topic is not None:
            reason = self.publish_verdict(verdict.identity, will_topic, will_payload)
            if reason is not None:
                return AuthVerdict(None, f"{WILL_REFUSED}: {reason}")
        return verdict

    def publish_verdict(self, identity: Identity, topic: str, payload: bytes) -> str | None:
        """None if ``identity`` may publish ``payload`` on ``topic``, else the reason it may not."""
        if identity.kind == "manager":
            return None
        suffix = _suffix(topic, _PROPLET_PUBLISH)
        rule = _PROPLET_PUBLISH.get(suffix) if suffix else None
        if rule is None:
            return f"a {identity.kind} may not publish on {topic[:120]!r}"
        if rule == "none":
            return None
        if rule == "required" and len(payload) > MAX_ANNOUNCE_BYTES:
            return f"{suffix} payload of {len(payload)} bytes exceeds {MAX_ANNOUNCE_BYTES}"
        try:
            body = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            return f"{suffix} payload is not JSON"
        if not isinstance(body, dict):
            return f"{suffix} payload is not a JSON object"
        claimed = body.get("proplet_id")
        if claimed is None and rule == "optional":
            return None
        if claimed != identity.proplet_id:
            return f"{suffix} names proplet {str(claimed)[:80]!r}, not the sender {identity.proplet_id!r}"
        return None

    def sender_verdict(self, topic: str, payload: bytes) -> str | None:
        """The manager's own check, for any broker: None if the proplet a proplet-to-manager message
        claims to come from is an enrolled, active proplet identity, else why the message is dropped.

        On a broker that binds payloads to identities (ours) this only repeats what the broker did; on
        one that cannot (Mosquitto) it keeps unknown and revoked ids (``ghost-1``, ``\\u0000``, a
        5 MB id) out of the registry and the scheduler. Messages that carry no id where the wire allows
        that (firmware results) pass: receipts and the task's assignment decide about those.
        """
        suffix = _suffix(topic, _PROPLET_PUBLISH)
        rule = _PROPLET_PUBLISH.get(suffix) if suffix else None
        if rule is None or rule == "none":
            return None
        if rule == "required" and len(payload) > MAX_ANNOUNCE_BYTES:
            return f"{suffix} payload of {len(payload)} bytes exceeds {MAX_ANNOUNCE_BYTES}"
        try:
            body = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            return None  # malformed: the engine counts and drops it with the field named
        claimed = body.get("proplet_id") if isinstance(body, dict) else None
        if not isinstance(claimed, str):
            return None  # missing or not a string: the engine counts it as malformed, naming the field
        identity = self._all.get(claimed)
        if identity is None or identity.kind == "manager":
            return f"{suffix} from {str(claimed)[:80]!r}, which is not an enrolled proplet"
        if not identity.active:
            return f"{suffix} from {claimed!r}, whose identity is revoked"
        return None

    def claims_unknown(self, topic: str, payload: bytes) -> bool:
        """Whether a message ``sender_verdict`` refused names an id this registry has never seen (it may
        have been enrolled since, by another process: worth re-reading the store before dropping it)."""
        try:
            body = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            return False
        claimed = body.get("proplet_id") if isinstance(body, dict) else None
        if not isinstance(claimed, str) or claimed in self._all:
            return False
        return _suffix(topic, _PROPLET_PUBLISH) is not None

    def subscribe_verdict(self, identity: Identity, topic_filter: str) -> str | None:
        """None if ``identity`` may subscribe to ``topic_filter``, else the reason it may not."""
        if identity.kind == "manager":
            return None
        wildcard = "+" in topic_filter or "#" in topic_filter
        if not wildcard and _suffix(topic_filter, (*_PROPLET_SUBSCRIBE, direct_start_suffix(identity))):
            return None
        return f"a {identity.kind} may not subscribe to {topic_filter[:120]!r}"

    # ---------------------------------------------------------------- receipts

    def prover(self, proplet_id: str) -> tuple[bytes | None, str] | None:
        """(public key, kind) of an active proplet identity; None for unknown or revoked ids.

        The fields of `orchestrator.core.receipts.ProverKey`; `ManagerService.prover_key` wraps it.
        """
        identity = self._all.get(proplet_id)
        if identity is None or not identity.active or identity.kind == "manager":
            return None
        return identity.public_key, identity.kind
