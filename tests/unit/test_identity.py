"""The identity registry's decisions (sans-I/O): enrolment, revocation, authentication, topic rules."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from orchestrator.core.errors import Conflict, NotFound, ValidationError
from orchestrator.core.identity import (
    IdentityRegistry,
    hash_password,
    new_enrollment,
    public_key_of,
    verify_password,
)
from orchestrator.enrollment import enroll, mosquitto_files, parse_identity, write_identity

BASE = "m/dom/c/chan"


def _registry() -> tuple[IdentityRegistry, dict[str, str]]:
    reg = IdentityRegistry()
    passwords = {}
    for kind, pid in (("manager", "mgr"), ("proplet", "p1"), ("proplet", "p2"), ("upstream", "rust-1")):
        e = new_enrollment(kind=kind, proplet_id=pid, password=f"pw-{pid}", salt=b"0123456789ab",
                           signing_key=bytes(32) if kind == "proplet" else None, wall=1.0)  # fmt: skip
        reg.enroll(e.identity)
        passwords[pid] = e.password
    return reg, passwords


def test_password_hash_is_mosquittos_pbkdf2_format_and_verifies_in_constant_time() -> None:
    stored = hash_password("s3cret", base64.b64decode("N4fdzt2pPPBEUN0f"))
    # The line `mosquitto_passwd -b` printed for the same password and salt.
    assert stored == (
        "$7$101$N4fdzt2pPPBEUN0f$EoUncIfUhq0xMw/l9ZVg4V5D1n7ODYtZmgFeZ65sgo9en+R3hJkdZKbrn5FfgpoZ4ZcBvxzN2+SKQg7VzbUFqw=="
    )
    assert verify_password("s3cret", stored)
    assert not verify_password("s3cret!", stored)
    for broken in ("", "$6$x$y$z", "$7$abc$x$y", "$7$101$!!$!!", "plain"):
        assert not verify_password("s3cret", broken)


def test_authenticate_refuses_anonymous_unknown_wrong_password_and_foreign_client_ids() -> None:
    reg, pw = _registry()
    assert reg.authenticate("p1", "p1", pw["p1"]).identity is not None
    assert reg.authenticate("x", None, None).reason.startswith("anonymous")
    assert reg.authenticate("ghost-1", "ghost-1", "x").reason == "unknown user name"
    assert reg.authenticate("p1", "p1", "wrong").reason == "wrong password"
    takeover = reg.authenticate("mgr", "p1", pw["p1"])
    assert takeover.identity is None and "belongs to another identity" in takeover.reason
    assert "must connect with its client id" in reg.authenticate("other", "p1", pw["p1"]).reason


def test_revoked_identity_is_refused_and_can_be_enrolled_again() -> None:
    reg, pw = _registry()
    revoked = reg.revoke("p1", 5.0)
    assert revoked.revoked_at == 5.0 and reg.revoke("p1", 9.0).revoked_at == 5.0
    assert reg.authenticate("p1", "p1", pw["p1"]).reason == "identity revoked"
    assert reg.owner_of_client("p1") is None
    with pytest.raises(NotFound):
        reg.revoke("nobody", 1.0)
    again = enroll("proplet", "p1", wall=6.0)
    reg.enroll(again.identity)
    assert reg.authenticate("p1", "p1", again.password).ok


def test_enrol_conflicts_leave_the_registry_unchanged() -> None:
    reg, _ = _registry()
    before = reg.all()
    with pytest.raises(Conflict, match="already enrolled"):
        reg.enroll(enroll("proplet", "p1", wall=2.0).identity)
    with pytest.raises(Conflict, match="username 'mgr' belongs to identity 'mgr'"):
        reg.enroll(enroll("proplet", "p9", client_id="mgr", wall=2.0).identity)
    assert reg.all() == before
    assert enroll("proplet", "", wall=1.0).identity.proplet_id.startswith("proplet-")  # none given: random
    for bad in ("\x00", "x" * 129, "a/b", "#", "-lead"):
        with pytest.raises(ValidationError, match="proplet_id"):
            enroll("proplet", bad, wall=1.0)


def test_a_proplet_publishes_only_proplet_topics_and_only_as_itself() -> None:
    reg, _ = _registry()
    p1 = reg.get("p1")
    assert p1 is not None

    def verdict(suffix: str, body: object) -> str | None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        return reg.publish_verdict(p1, f"{BASE}/{suffix}", payload)

    assert verdict("control/proplet/alive", {"proplet_id": "p1", "status": "alive"}) is None
    forged_offline = {"proplet_id": "p2", "status": "offline"}
    assert "not the sender" in str(verdict("control/proplet/alive", forged_offline))
    assert "not the sender" in str(verdict("control/proplet/create", {"proplet_id": "ghost-1"}))
    assert "not the sender" in str(verdict("control/proplet/create", {"proplet_id": "\u0000"}))
    assert "not the sender" in str(verdict("control/proplet/create", {"namespace": "x"}))  # required
    assert "exceeds" in str(verdict("control/proplet/create", {"proplet_id": "g" * 5_000_000}))
    assert "not JSON" in str(verdict("control/proplet/metrics", b"\xff"))
    # Results may omit the id (firmware), but must not claim another one.
    assert verdict("control/proplet/results", {"task_id": "t", "results": "1"}) is None
    assert "not the sender" in str(verdict("control/proplet/results", {"task_id": "t", "proplet_id": "p2"}))
    assert verdict("registry/proplet", {"app_name": "x"}) is None
    for manager_topic in ("control/manager/start", "control/manager/stop", "registry/server", "other"):
        assert "may not publish" in str(verdict(manager_topic, {}))
    # The manager may publish anything.
    mgr = reg.get("mgr")
    assert mgr is not None and reg.publish_verdict(mgr, f"{BASE}/control/manager/start", b"{}") is None


def test_a_proplet_subscribes_only_to_manager_topics_without_wildcards() -> None:
    reg, _ = _registry()
    rust = reg.get("rust-1")
    assert rust is not None
    for ok in ("control/manager/start", "control/manager/stop", "control/manager/invoke", "registry/server"):
        assert reg.subscribe_verdict(rust, f"{BASE}/{ok}") is None
    bad_filters = ("#", f"{BASE}/#", f"{BASE}/control/proplet/results", f"{BASE}/control/manager/+")
    for bad in bad_filters:
        assert reg.subscribe_verdict(rust, bad) is not None
    # A channel literally named "c" does not confuse the suffix.
    assert reg.subscribe_verdict(rust, "m/d/c/c/control/manager/start") is None


def test_a_proplet_may_read_its_own_start_topic_and_no_other_proplets() -> None:
    reg, _ = _registry()
    p1 = reg.get("p1")
    assert p1 is not None
    assert reg.subscribe_verdict(p1, f"{BASE}/control/manager/start/p1") is None
    for bad in ("p2", "p1/x", "+", "#", "p"):
        assert reg.subscribe_verdict(p1, f"{BASE}/control/manager/start/{bad}") is not None, bad


def test_the_manager_drops_messages_claiming_unenrolled_or_revoked_ids() -> None:
    reg, _ = _registry()
    alive = f"{BASE}/control/proplet/alive"
    assert reg.sender_verdict(alive, b'{"proplet_id": "p1", "status": "alive"}') is None
    assert "not an enrolled proplet" in str(reg.sender_verdict(alive, b'{"proplet_id": "ghost-1"}'))
    assert "not an enrolled proplet" in str(reg.sender_verdict(alive, b'{"proplet_id": "mgr"}'))
    reg.revoke("p2", 1.0)
    assert "revoked" in str(reg.sender_verdict(alive, b'{"proplet_id": "p2"}'))
    # An id never seen may have been enrolled by another process since: worth one re-read.
    assert reg.claims_unknown(alive, b'{"proplet_id": "ghost-1"}')
    assert not reg.claims_unknown(alive, b'{"proplet_id": "p2"}')  # known (revoked)
    assert not reg.claims_unknown(alive, b'{"proplet_id": ["x"]}') and not reg.claims_unknown(alive, b"\xff")
    # Malformed input is the engine's to count, naming the field.
    assert reg.sender_verdict(alive, b'{"proplet_id": 5}') is None
    assert reg.sender_verdict(f"{BASE}/control/proplet/results", b'{"task_id": "t"}') is None


def test_receipt_key_lookup_knows_active_proplets_only() -> None:
    reg, _ = _registry()
    assert reg.prover("p1") == (public_key_of(bytes(32)), "proplet")
    assert reg.prover("rust-1") == (None, "upstream")
    assert reg.prover("mgr") is None and reg.prover("ghost-1") is None
    reg.revoke("p1", 2.0)
    assert reg.prover("p1") is None


def test_identity_file_round_trip_and_its_errors(tmp_path: Path) -> None:
    e = enroll("proplet", "p7", wall=1.0)
    path = write_identity(tmp_path / "id.json", e.identity_file("mqtt://h:1"))
    assert path.stat().st_mode & 0o777 == 0o600
    parsed = parse_identity(json.loads(path.read_text()))
    assert (parsed.proplet_id, parsed.username, parsed.password) == ("p7", "p7", e.password)
    assert parsed.signing_key == e.signing_key and parsed.broker == "mqtt://h:1"
    upstream = enroll("upstream", client_id="esp-01", key="their-api-key", wall=1.0).identity_file()
    assert "signing_key" not in upstream and upstream["username"] == upstream["client_id"] == "esp-01"
    doc = e.identity_file()
    with pytest.raises(ValueError, match="'kind' must be one of"):
        parse_identity({**doc, "kind": "admin"})
    with pytest.raises(ValueError, match="'public_key' is not the public half"):
        parse_identity({**doc, "public_key": base64.b64encode(bytes(32)).decode()})
    with pytest.raises(ValueError, match="field 'password' must be a non-empty string"):
        parse_identity({**doc, "password": ""})


def test_mosquitto_files_hold_one_hash_and_one_topic_block_per_active_identity() -> None:
    reg, _ = _registry()
    reg.revoke("p2", 1.0)
    passwd, acl = mosquitto_files(reg.all())
    users = [line.split(":", 1)[0] for line in passwd.splitlines()]
    assert users == ["mgr", "p1", "rust-1"]  # the revoked p2 is gone
    assert all(line.split(":", 1)[1].startswith("$7$101$") for line in passwd.splitlines())
    assert "user mgr\ntopic readwrite #" in acl
    assert "user p1\ntopic write m/+/c/+/control/proplet/create" in acl
    assert "topic read m/+/c/+/control/manager/start" in acl and "user p2" not in acl
    # Each proplet reads its own start topic, and only its own.
    assert acl.count("topic read m/+/c/+/control/manager/start/p1\n") == 1
    assert "control/manager/start/p2" not in acl and "start/mgr" not in acl
