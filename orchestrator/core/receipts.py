"""Signed execution receipts: what ran where, verifiable by anyone with the proplet's public key. Sans-I/O.

A proplet with a signing key (Ed25519) attaches a ``Receipt`` to every result: the task id and
attempt, its own id, the sha256 of the module it ran, of the inputs it was given and of the result it
sends, and when it started and finished (optionally attestation evidence, for the TEE work). The
manager checks the receipt before it accepts the result (``check``); anyone holding the proplet's
public key can check it again offline (``propeller task verify``), without trusting the manager.

The signed bytes (docs/receipts.md, "Receipt encoding") are ``DOMAIN`` followed by the canonical JSON of
the receipt without its ``signature``: keys sorted, no whitespace, UTF-8, strings and integers only
(times are integer milliseconds), which is RFC 8785 (JCS) for these values, so a verifier in any
language can rebuild them. Digests are lower-case hex sha256:

- ``module_sha256``: of the Wasm bytes that ran (or that the task named, when none could be loaded);
- ``inputs_sha256``: of the canonical JSON array of the inputs as text (``input_text``);
- ``result_sha256``: of the canonical JSON object ``{"error": <text or null>, "results": <value>}``.

The lookup contract with the identity registry: ``KeyLookup(proplet_id) -> ProverKey | None``. Kind
``"proplet"`` (ours: must sign), ``"upstream"`` (Rust proplet or firmware: cannot sign, accepted as
unverified), ``None`` = not enrolled.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

RECEIPT_VERSION = 1
DOMAIN = b"propeller-receipt-v1\n"
KEY_BYTES = 32
SIGNATURE_BYTES = 64
MAX_EVIDENCE_CHARS = 16_384  # attestation evidence travels base64-encoded; bound what we accept
_HEX64 = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class ProverKey:
    """What the identity registry knows about a proplet: its public key and what kind of sender it is."""

    public_key: bytes | None
    kind: str  # "proplet" | "upstream" | "manager"


KeyLookup = Callable[[str], ProverKey | None]


class ReceiptError(ValueError):
    """A receipt that cannot be read (wrong shape, bad field); the message names the field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"receipt.{field}: {reason}" if field else f"receipt: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class Receipt:
    task_id: str
    attempt: int
    proplet_id: str
    module_sha256: str
    inputs_sha256: str
    result_sha256: str
    started_at_ms: int
    finished_at_ms: int
    evidence: str | None = None  # base64 attestation evidence bound to this receipt (TEE), if any
    invocation_id: str | None = None  # set when this is the answer to one invocation of a latent task
    signature: str = ""  # base64 Ed25519 signature of signed_bytes()

    def body(self) -> dict[str, Any]:
        """Every signed field, with the format version; not the signature."""
        return {
            "attempt": self.attempt,
            "evidence": self.evidence,
            "finished_at_ms": self.finished_at_ms,
            "inputs_sha256": self.inputs_sha256,
            "invocation_id": self.invocation_id,
            "module_sha256": self.module_sha256,
            "proplet_id": self.proplet_id,
            "result_sha256": self.result_sha256,
            "started_at_ms": self.started_at_ms,
            "task_id": self.task_id,
            "v": RECEIPT_VERSION,
        }

    def signed_bytes(self) -> bytes:
        return DOMAIN + canonical_json(self.body())

    def to_json(self) -> dict[str, Any]:
        return {**self.body(), "signature": self.signature}

    @classmethod
    def from_json(cls, data: object) -> Receipt:
        """Read a receipt from its JSON object; raises ReceiptError naming the bad field."""
        if not isinstance(data, Mapping):
            raise ReceiptError("", f"must be a JSON object, got {type(data).__name__}")
        version = data.get("v")
        if version != RECEIPT_VERSION:
            raise ReceiptError("v", f"unsupported receipt version {version!r} (this reads {RECEIPT_VERSION})")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__) - {"v"})
        if unknown:
            # Unknown keys would not be covered by the signature as we rebuild it: refuse, don't drop.
            raise ReceiptError(str(unknown[0])[:40], "is not a receipt field")
        evidence = data.get("evidence")
        if evidence is not None and (not isinstance(evidence, str) or len(evidence) > MAX_EVIDENCE_CHARS):
            raise ReceiptError("evidence", f"must be null or a string of at most {MAX_EVIDENCE_CHARS} chars")
        invocation_id = data.get("invocation_id")
        if invocation_id is not None:
            invocation_id = _text(data, "invocation_id")
        return cls(
            task_id=_text(data, "task_id"),
            attempt=_int(data, "attempt"),
            proplet_id=_text(data, "proplet_id"),
            module_sha256=_digest(data, "module_sha256", allow_empty=True),
            inputs_sha256=_digest(data, "inputs_sha256"),
            result_sha256=_digest(data, "result_sha256"),
            started_at_ms=_int(data, "started_at_ms"),
            finished_at_ms=_int(data, "finished_at_ms"),
            evidence=evidence,
            invocation_id=invocation_id,
            signature=_text(data, "signature"),
        )


def evidence_report_data(receipt: Receipt) -> bytes:
    """What TEE evidence in `receipt` must carry as report data: SHA-256 of the receipt's signed bytes
    with `evidence` null, so the evidence is bound to this task, module, inputs, result and times."""
    return hashlib.sha256(replace(receipt, evidence=None, signature="").signed_bytes()).digest()


def _text(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise ReceiptError(key, f"must be a string, got {type(value).__name__}")
    if len(value) > 4096:
        raise ReceiptError(key, "is longer than 4096 characters")
    return value


def _int(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key)
    # Below 2**53: exact in every JSON reader, so the canonical form is JCS's too.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**53:
        raise ReceiptError(key, f"must be an integer in 0..2**53-1, got {value!r:.40}")
    return value


def _digest(data: Mapping[str, Any], key: str, *, allow_empty: bool = False) -> str:
    value = _text(data, key)
    if allow_empty and value == "":
        return value
    if len(value) != 64 or not set(value) <= _HEX64:
        raise ReceiptError(key, "must be 64 lower-case hexadecimal digits")
    return value


# ---------------------------------------------------------------------- digests


def canonical_json(value: Any) -> bytes:
    """Keys sorted, no whitespace, UTF-8, no NaN: one byte string per value."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def input_text(value: object) -> str:
    """An input as text, whatever the wire carried: the embedded profile sends numbers, Rust strings.

    Integers are their decimal text, integral floats below 2**53 integer text (as the wire codec sends
    them), other floats their shortest repr. Strings are kept as they are.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) < 2.0**53:
            return str(int(value))
        return repr(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def inputs_digest(inputs: Sequence[object]) -> str:
    return sha256_hex(canonical_json([input_text(v) for v in inputs]))


def result_digest(results: Any, error: str | None) -> str:
    return sha256_hex(canonical_json({"error": error or None, "results": results}))


# ---------------------------------------------------------------------- keys and signatures


def generate_key() -> bytes:
    """A new raw 32-byte Ed25519 private key (from the OS's randomness, through cryptography)."""
    return Ed25519PrivateKey.generate().private_bytes_raw()


def public_key_of(private_key: bytes) -> bytes:
    return _private(private_key).public_key().public_bytes_raw()


def _private(private_key: bytes) -> Ed25519PrivateKey:
    if len(private_key) != KEY_BYTES:
        raise ValueError(f"an Ed25519 private key is {KEY_BYTES} raw bytes, got {len(private_key)}")
    return Ed25519PrivateKey.from_private_bytes(private_key)


class Signer:
    """Signs receipts with one private key (the key object is built once, not per receipt)."""

    def __init__(self, private_key: bytes) -> None:
        self._key = _private(private_key)
        self.public_key = self._key.public_key().public_bytes_raw()

    def sign(self, receipt: Receipt) -> Receipt:
        signature = self._key.sign(receipt.signed_bytes())
        return replace(receipt, signature=base64.b64encode(signature).decode("ascii"))


def sign(receipt: Receipt, private_key: bytes) -> Receipt:
    return Signer(private_key).sign(receipt)


def signature_ok(receipt: Receipt, public_key: bytes) -> bool:
    """True when ``receipt.signature`` is an Ed25519 signature of its signed bytes by ``public_key``."""
    if len(public_key) != KEY_BYTES:
        return False
    try:
        signature = base64.b64decode(receipt.signature, validate=True)
    except (binascii.Error, ValueError):
        return False
    if len(signature) != SIGNATURE_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, receipt.signed_bytes())
    except InvalidSignature:
        return False
    return True


def decode_key(text: str, what: str = "key") -> bytes:
    """A raw 32-byte key from base64 (standard or URL-safe) or 64 hex digits; ValueError naming ``what``."""
    text = text.strip()
    if len(text) == 2 * KEY_BYTES and all(c in "0123456789abcdefABCDEF" for c in text):
        return bytes.fromhex(text)
    try:
        raw = base64.b64decode(
            text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4), validate=True
        )
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is neither base64 nor hex") from None
    if len(raw) != KEY_BYTES:
        raise ValueError(f"{what} must be {KEY_BYTES} raw bytes, got {len(raw)}")
    return raw


def encode_key(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


# ---------------------------------------------------------------------- checking


@dataclass(frozen=True)
class Expected:
    """What a receipt must say for the result it comes with. ``None`` = not checked (not known)."""

    task_id: str
    proplet_id: str
    result_sha256: str
    attempt: int | None = None
    module_sha256: str | None = None
    inputs_sha256: str | None = None
    invocation_id: str | None = None  # always compared: a task's receipt (null) never answers an invocation


def check(receipt: Receipt, public_key: bytes, expected: Expected | Callable[[], Expected]) -> str | None:
    """None when the receipt is good for ``expected``; otherwise why not, naming the first bad field.

    The signature is checked first; ``expected`` may be a function, called only for a receipt whose
    signature holds, so a flood of forged receipts costs one signature check each, not the digests.
    """
    if not signature_ok(receipt, public_key):
        return "signature does not verify with the proplet's public key"
    if callable(expected):
        expected = expected()
    pairs: tuple[tuple[str, object, object], ...] = (
        ("task_id", receipt.task_id, expected.task_id),
        ("proplet_id", receipt.proplet_id, expected.proplet_id),
        ("attempt", receipt.attempt, expected.attempt),
        ("module_sha256", receipt.module_sha256, expected.module_sha256),
        ("inputs_sha256", receipt.inputs_sha256, expected.inputs_sha256),
        ("result_sha256", receipt.result_sha256, expected.result_sha256),
    )
    for name, got, want in pairs:
        if want is not None and got != want:
            return f"{name} is {_short(got)}, expected {_short(want)}"
    if receipt.invocation_id != expected.invocation_id:
        return f"invocation_id is {_short(receipt.invocation_id)}, expected {_short(expected.invocation_id)}"
    if receipt.finished_at_ms < receipt.started_at_ms:
        return "finished_at_ms is before started_at_ms"
    return None


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
