"""Signed execution receipts: the format, signing and checking, the proplet signing its results and the
engine accepting only results whose sender and receipt hold up (pure cores, real Ed25519)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import itertools
import json
from dataclasses import replace
from typing import Any

import pytest

from orchestrator import wire
from orchestrator.core import receipts
from orchestrator.core.commands import LogEvent, MessageReceived, Publish
from orchestrator.core.engine import Engine, EngineConfig
from orchestrator.core.model import TaskState
from orchestrator.core.receipts import ProverKey, Receipt
from proplets.core import PropletConfig, PropletEngine
from proplets.core import Publish as PropletPublish

T = wire.Topics("d1", "c1")
WASM = b"\x00asm\x01\x00\x00\x00"
KEY = bytes(range(32))  # fixed so that the encoding below is a golden value
OTHER_KEY = bytes(range(1, 33))


def sample(**changes: Any) -> Receipt:
    base = Receipt(
        task_id="t-1",
        attempt=2,
        proplet_id="p-1",
        module_sha256=hashlib.sha256(WASM).hexdigest(),
        inputs_sha256=receipts.inputs_digest(["2", "40"]),
        result_sha256=receipts.result_digest("42", None),
        started_at_ms=1_700_000_000_000,
        finished_at_ms=1_700_000_000_250,
    )
    return replace(base, **changes)


# ---------------------------------------------------------------------- format


def test_signed_bytes_are_the_domain_and_sorted_compact_json_without_the_signature() -> None:
    signed = receipts.sign(sample(), KEY)
    text = signed.signed_bytes().decode()
    assert text.startswith("propeller-receipt-v1\n{")
    body = json.loads(text.split("\n", 1)[1])
    assert list(body) == sorted(body) and "signature" not in body and body["v"] == 1
    assert text.split("\n", 1)[1] == json.dumps(body, sort_keys=True, separators=(",", ":"))
    # Ed25519 is deterministic: the same receipt and key always give the same signature.
    assert receipts.sign(sample(), KEY).signature == signed.signature


def test_the_documented_test_vector() -> None:
    # docs/receipts.md publishes these bytes and this signature for third-party verifiers.
    signed = receipts.sign(sample(), KEY)
    assert receipts.encode_key(receipts.public_key_of(KEY)) == "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="
    assert (
        hashlib.sha256(signed.signed_bytes()).hexdigest()
        == hashlib.sha256(
            b"propeller-receipt-v1\n"
            b'{"attempt":2,"evidence":null,"finished_at_ms":1700000000250,'
            b'"inputs_sha256":"75edf077ce3c09795bfb3644f3609fb9286c410dde7868d08b18148ccc5e58ff",'
            b'"invocation_id":null,'
            b'"module_sha256":"93a44bbb96c751218e4c00d479e4c14358122a389acca16205b1e4d0dc5f9476",'
            b'"proplet_id":"p-1",'
            b'"result_sha256":"fb84daca2101ef2bd933d27f83858d0850939a4e50383d08c4d3b8af71461c53",'
            b'"started_at_ms":1700000000000,"task_id":"t-1","v":1}'
        ).hexdigest()
    )
    assert signed.signature == (
        "cLOOP3mqcm+Nt7DwSlBeQQmH1y2gHp7nHm/4AzaKNoEwj5Am7H14Q42aPk6fk+wbf/v1dbiLIC6LhGiy8+ADBA=="
    )


def test_every_field_but_the_signature_is_signed() -> None:
    from dataclasses import fields

    assert set(sample().body()) == {f.name for f in fields(Receipt)} - {"signature"} | {"v"}


def test_a_signed_receipt_verifies_with_the_public_key_only() -> None:
    signed = receipts.sign(sample(), KEY)
    public = receipts.public_key_of(KEY)
    assert receipts.signature_ok(Receipt.from_json(json.loads(json.dumps(signed.to_json()))), public)
    assert not receipts.signature_ok(signed, receipts.public_key_of(OTHER_KEY))


@pytest.mark.parametrize(
    "change",
    [
        {"task_id": "t-2"},
        {"attempt": 3},
        {"proplet_id": "p-2"},
        {"result_sha256": receipts.result_digest("43", None)},
        {"finished_at_ms": 1_700_000_000_251},
        {"evidence": "AAAA"},
    ],
)
def test_changing_any_signed_field_breaks_the_signature(change: dict[str, Any]) -> None:
    signed = receipts.sign(sample(), KEY)
    forged = replace(signed, **change)
    assert not receipts.signature_ok(forged, receipts.public_key_of(KEY))


def test_one_byte_of_the_result_changed_is_caught_by_the_result_digest() -> None:
    signed = receipts.sign(sample(), KEY)
    public = receipts.public_key_of(KEY)
    expected = receipts.Expected("t-1", "p-1", receipts.result_digest("42", None), attempt=2)
    assert receipts.check(signed, public, expected) is None
    tampered = replace(expected, result_sha256=receipts.result_digest("43", None))
    assert receipts.check(signed, public, tampered) == (
        f"result_sha256 is {signed.result_sha256!r}, expected {tampered.result_sha256!r}"
    )


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"v": 2}, "v"),
        ({"attempt": -1}, "attempt"),
        ({"attempt": True}, "attempt"),
        ({"task_id": 5}, "task_id"),
        ({"result_sha256": "XYZ"}, "result_sha256"),
        ({"extra": 1}, "extra"),
        ({"evidence": 7}, "evidence"),
    ],
)
def test_a_malformed_receipt_is_refused_naming_the_field(patch: dict[str, Any], field: str) -> None:
    data = {**receipts.sign(sample(), KEY).to_json(), **patch}
    with pytest.raises(receipts.ReceiptError) as info:
        Receipt.from_json(data)
    assert info.value.field == field and field in str(info.value)


def test_inputs_digest_is_the_same_for_the_text_and_the_numbers_the_embedded_profile_sends() -> None:
    assert receipts.inputs_digest(["2", "40", "3"]) == receipts.inputs_digest([2, 40, 3.0])
    assert receipts.inputs_digest(["2"]) != receipts.inputs_digest(["2", ""])


def test_keys_read_from_base64_or_hex_and_bad_ones_are_named() -> None:
    raw = receipts.public_key_of(KEY)
    assert receipts.decode_key(receipts.encode_key(raw)) == raw
    assert receipts.decode_key(raw.hex()) == raw
    with pytest.raises(ValueError, match="public key must be 32 raw bytes"):
        receipts.decode_key(base64.b64encode(b"short").decode(), "public key")


# ---------------------------------------------------------------------- proplet side


def proplet(key: bytes | None = KEY, pid: str = "p1", **kw: Any) -> PropletEngine:
    engine = PropletEngine(PropletConfig(proplet_id=pid, domain="d1", channel="c1", signing_key=key, **kw))
    engine.on_connected(0.0)
    engine.take_commands()
    return engine


def result_payload(engine: PropletEngine) -> bytes:
    (payload,) = [
        c.payload for c in engine.take_commands() if isinstance(c, PropletPublish) and c.topic == T.results
    ]
    return payload


def run_on(engine: PropletEngine, start: bytes, results: str = "42", wall: float = 1_700_000_010.0) -> bytes:
    engine.handle(T.start, start, 5.0)
    task_id = json.loads(start)["id"]
    engine.admit(task_id, base64.b64decode(json.loads(start)["file"]))
    engine.task_finished(task_id, results, None, 5.25, wall)
    return result_payload(engine)


def start_payload(task_id: str = "t-1", pid: str = "p1", attempt: int = 2) -> bytes:
    start = wire.StartTask(
        id=task_id, name="add", file=WASM, inputs=("2", "40"), proplet_id=pid, attempt=attempt
    )
    return wire.encode(start)


def test_a_proplet_with_a_key_signs_what_it_ran_for_whom() -> None:
    body = json.loads(run_on(proplet(), start_payload()))
    receipt = Receipt.from_json(body["receipt"])
    assert receipts.signature_ok(receipt, receipts.public_key_of(KEY))
    assert (receipt.task_id, receipt.attempt, receipt.proplet_id) == ("t-1", 2, "p1")
    assert receipt.module_sha256 == hashlib.sha256(WASM).hexdigest()
    assert receipt.inputs_sha256 == receipts.inputs_digest(["2", "40"])
    assert receipt.result_sha256 == receipts.result_digest("42", None)
    assert (receipt.started_at_ms, receipt.finished_at_ms) == (1_700_000_009_750, 1_700_000_010_000)


def test_a_proplet_without_a_key_sends_no_receipt() -> None:
    assert "receipt" not in json.loads(run_on(proplet(None), start_payload()))


def test_a_busy_refusal_is_signed_too() -> None:
    engine = proplet(max_instances=1)
    engine.handle(T.start, start_payload("t-1"), 1.0)
    engine.handle(T.start, start_payload("t-2"), 1.0)
    body = json.loads(result_payload(engine))
    assert body["task_id"] == "t-2" and body["error"].startswith("proplet busy")
    assert Receipt.from_json(body["receipt"]).result_sha256 == receipts.result_digest("", body["error"])


def test_the_embedded_profile_sends_a_receipt_within_its_1023_bytes() -> None:
    engine = proplet(profile=wire.Profile.EMBEDDED, namespace="embedded")
    start = wire.encode(wire.StartTask(id="t-1", name="add", file=WASM, inputs=("2", "40"), proplet_id="p1"),
                        wire.Profile.EMBEDDED)  # fmt: skip
    payload = run_on(engine, start, results="42")
    assert len(payload) <= wire.EMBEDDED_MAX_PAYLOAD_BYTES
    body = json.loads(payload)
    assert "proplet_id" not in body  # the firmware's shape; the receipt names the proplet
    assert Receipt.from_json(body["receipt"]).proplet_id == "p1"
    # A result too long for the buffer becomes an error that fits, signed as such.
    engine.handle(T.start, start, 6.0)
    engine.task_finished("t-1", "9" * 900, None, 6.5, 1.0)
    body = json.loads(result_payload(engine))
    assert body["error"].startswith("result could not be sent")
    assert Receipt.from_json(body["receipt"]).result_sha256 == receipts.result_digest("", body["error"])


def test_a_signing_key_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(ValueError, match="signing_key must be 32 raw bytes"):
        PropletConfig(proplet_id="p", signing_key=b"x" * 31)


# ---------------------------------------------------------------------- manager side


class Registry:
    """An identity registry as the engine sees it: proplet id -> ProverKey."""

    def __init__(self) -> None:
        self.keys: dict[str, ProverKey] = {}

    def enroll(self, pid: str, key: bytes | None, kind: str = "proplet") -> None:
        self.keys[pid] = ProverKey(receipts.public_key_of(key) if key else None, kind)

    def __call__(self, pid: str) -> ProverKey | None:
        return self.keys.get(pid)


def manager(keys: Registry | None) -> Engine:
    ids = (f"task-{i}" for i in itertools.count(1))
    return Engine(EngineConfig(domain="d1", channel="c1"), new_id=lambda: next(ids), keys=keys)


def deliver(engine: Engine, payload: bytes | dict[str, Any], now: float = 2.0) -> None:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    engine.handle(MessageReceived(T.results, raw), now, 1_700_000_000 + now)


def dispatch(
    engine: Engine, pids: tuple[str, ...] = ("p1",), inputs: list[Any] | None = None
) -> tuple[str, bytes]:
    for pid in pids:
        engine.handle(
            MessageReceived(T.alive, json.dumps({"proplet_id": pid, "status": "alive"}).encode()), 0, 0
        )
    spec = {"name": "add", "file": base64.b64encode(WASM).decode(), "inputs": inputs or ["2", "40"]}
    task = engine.create_task(spec, 1.0)
    engine.start_task(task.id, 1.0, 1.0)
    starts = [c.payload for c in engine.take_commands() if isinstance(c, Publish) and c.topic == T.start]
    return task.id, starts[-1]


def rejections(engine: Engine) -> list[dict[str, Any]]:
    return [
        c.fields for c in engine.take_commands() if isinstance(c, LogEvent) and c.name == "result_rejected"
    ]


def test_a_signed_result_from_the_enrolled_proplet_completes_the_task_verified() -> None:
    registry = Registry()
    registry.enroll("p1", KEY)
    engine = manager(registry)
    task_id, start = dispatch(engine)
    deliver(engine, run_on(proplet(KEY, "p1"), start))
    task = engine.tasks[task_id]
    assert task.state is TaskState.COMPLETED and task.results == "42" and task.verified
    assert task.receipt is not None and task.receipt["task_id"] == task_id


def test_forged_results_are_rejected_counted_and_the_real_one_still_completes() -> None:
    registry = Registry()
    registry.enroll("p1", KEY)
    engine = manager(registry)
    task_id, start = dispatch(engine)
    other_id, other_start = dispatch(engine)
    real = proplet(KEY, "p1")
    replayed = json.loads(run_on(real, other_start))["receipt"]  # genuine, but for another task
    forged_receipt = json.loads(run_on(proplet(OTHER_KEY, "p1"), start))["receipt"]
    attempts: list[tuple[dict[str, Any], str]] = [
        ({"task_id": task_id, "results": "FORGED"}, "missing_receipt"),
        ({"task_id": task_id, "proplet_id": "p9", "results": "FORGED"}, "wrong_proplet"),
        ({"task_id": task_id, "proplet_id": "p1", "results": "FORGED"}, "missing_receipt"),
        (
            {"task_id": task_id, "proplet_id": "p1", "results": "FORGED", "receipt": forged_receipt},
            "bad_receipt",
        ),
        ({"task_id": task_id, "proplet_id": "p1", "results": "42", "receipt": forged_receipt}, "bad_receipt"),
        ({"task_id": task_id, "proplet_id": "p1", "results": "42", "receipt": replayed}, "bad_receipt"),
        ({"task_id": task_id, "proplet_id": "p1", "results": "42", "receipt": {"v": 1}}, "bad_receipt"),
    ]
    engine.take_commands()
    for payload, reason in attempts:
        deliver(engine, payload)
        assert engine.tasks[task_id].state is TaskState.RUNNING, payload
        (logged,) = rejections(engine)
        assert logged["reason"] == reason and logged["task_id"] == task_id
    assert engine.results_rejected == {"missing_receipt": 2, "wrong_proplet": 1, "bad_receipt": 4}
    deliver(engine, run_on(real, start))
    task = engine.tasks[task_id]
    assert task.state is TaskState.COMPLETED and task.results == "42" and task.verified
    assert engine.tasks[other_id].state is TaskState.RUNNING  # its result was only used as a replay


def test_a_receipt_from_an_earlier_attempt_does_not_finish_the_current_one() -> None:
    registry = Registry()
    registry.enroll("p1", KEY)
    engine = manager(registry)
    task_id, start = dispatch(engine)
    old = json.loads(run_on(proplet(KEY, "p1"), start))
    task = engine.tasks[task_id]
    task.attempt = 2  # as if attempt 1 was lost and the task re-dispatched to p1
    deliver(engine, {**old, "attempt": None})
    assert task.state is TaskState.RUNNING
    assert rejections(engine)[0]["detail"] == "attempt is 1, expected 2"


def test_the_receipt_must_name_the_module_and_inputs_the_task_was_sent_with() -> None:
    registry = Registry()
    registry.enroll("p1", KEY)
    engine = manager(registry)
    task_id, start = dispatch(engine)
    body = json.loads(start)
    longer = WASM + b"\x00"
    swapped = wire.encode(wire.StartTask(id=task_id, name="add", file=longer, inputs=tuple(body["inputs"]),
                                         proplet_id="p1", attempt=1))  # fmt: skip
    deliver(engine, run_on(proplet(KEY, "p1"), swapped))
    assert rejections(engine)[0]["detail"].startswith("module_sha256 is")
    other_inputs = wire.encode(wire.StartTask(id=task_id, name="add", file=WASM, inputs=("2", "41"),
                                              proplet_id="p1", attempt=1))  # fmt: skip
    deliver(engine, run_on(proplet(KEY, "p1"), other_inputs))
    assert rejections(engine)[0]["detail"].startswith("inputs_sha256 is")
    assert engine.tasks[task_id].state is TaskState.RUNNING


def test_an_embedded_proplet_signs_firmware_shaped_results_that_verify() -> None:
    registry = Registry()
    registry.enroll("esp-1", KEY)
    engine = manager(registry)
    engine.handle(
        MessageReceived(T.create, json.dumps({"proplet_id": "esp-1", "namespace": "embedded",
                                              "metadata": {"wasm_runtime": "wamr"}}).encode()), 0, 0,
    )  # fmt: skip
    task_id, start = dispatch(engine, ("esp-1",), inputs=["2", "40.0"])
    # The embedded profile: numbers as inputs; the attempt too (the firmware matches stops against it).
    assert json.loads(start)["attempt"] == 1 and json.loads(start)["inputs"] == [2, 40.0]
    device = proplet(KEY, "esp-1", profile=wire.Profile.EMBEDDED, namespace="embedded")
    deliver(engine, run_on(device, start))
    task = engine.tasks[task_id]
    assert task.state is TaskState.COMPLETED and task.verified


def test_upstream_proplets_cannot_sign_and_are_accepted_unverified() -> None:
    registry = Registry()
    registry.enroll("rust-1", None, kind="upstream")
    engine = manager(registry)
    task_id, _ = dispatch(engine, ("rust-1",))
    deliver(engine, {"task_id": task_id, "proplet_id": "rust-1", "results": "42", "error": None})
    task = engine.tasks[task_id]
    assert task.state is TaskState.COMPLETED and not task.verified and task.receipt is None


def test_results_from_proplets_nobody_enrolled_are_rejected() -> None:
    engine = manager(Registry())
    task_id, _ = dispatch(engine, ("ghost-1",))
    deliver(engine, {"task_id": task_id, "proplet_id": "ghost-1", "results": "42"})
    assert engine.tasks[task_id].state is TaskState.RUNNING
    assert engine.results_rejected == {"unknown_proplet": 1}


def test_without_a_lookup_results_are_accepted_unverified_but_must_name_a_host_proplet() -> None:
    engine = manager(None)
    task_id, start = dispatch(engine)
    deliver(engine, {"task_id": task_id, "results": "FORGED"})
    assert engine.tasks[task_id].state is TaskState.RUNNING
    assert engine.results_rejected == {"missing_proplet_id": 1}
    deliver(engine, run_on(proplet(KEY, "p1"), start))
    task = engine.tasks[task_id]
    assert task.state is TaskState.COMPLETED and not task.verified and task.receipt is not None


def test_broadcast_results_are_verified_per_target() -> None:
    registry = Registry()
    registry.enroll("p1", KEY)
    registry.enroll("p2", OTHER_KEY)
    engine = manager(registry)
    for pid in ("p1", "p2"):
        engine.handle(
            MessageReceived(T.alive, json.dumps({"proplet_id": pid, "status": "alive"}).encode()), 0, 0
        )
    spec = {"name": "add", "file": base64.b64encode(WASM).decode(), "inputs": ["1"], "broadcast": True}
    task = engine.create_task(spec, 1.0)
    engine.start_task(task.id, 1.0, 1.0)
    (start,) = [c.payload for c in engine.take_commands() if isinstance(c, Publish) and c.topic == T.start]
    deliver(engine, {"task_id": task.id, "proplet_id": "p2", "results": "FORGED"})
    assert engine.results_rejected == {"missing_receipt": 1}
    deliver(engine, run_on(proplet(KEY, "p1"), start))
    deliver(engine, run_on(proplet(OTHER_KEY, "p2"), start))
    assert task.state is TaskState.COMPLETED and task.verified
    assert task.receipt is not None and set(task.receipt) == {"p1", "p2"}
    from orchestrator.views import receipt_view

    view = receipt_view(task, registry)
    assert view["receipts"]["p2"]["public_key"] == receipts.encode_key(receipts.public_key_of(OTHER_KEY))
    assert view["receipts"]["p1"]["receipt"]["proplet_id"] == "p1"


def test_the_receipt_view_gives_each_signer_its_enrolled_public_key_and_a_rerun_starts_unverified() -> None:
    from orchestrator.core.errors import NotFound
    from orchestrator.views import receipt_view

    registry = Registry()
    registry.enroll("p1", KEY)
    engine = manager(registry)
    task_id, start = dispatch(engine)
    task = engine.tasks[task_id]
    with pytest.raises(NotFound, match="has no receipt"):
        receipt_view(task, registry)
    deliver(engine, run_on(proplet(KEY, "p1"), start))
    view = receipt_view(task, registry)
    assert view["verified"] is True and view["public_key"] == receipts.encode_key(receipts.public_key_of(KEY))
    assert view["receipt"] == task.receipt
    assert receipt_view(task, None)["public_key"] is None  # no registry: the key is the verifier's business
    engine.start_task(task_id, 3.0, 3.0)  # run it again: the old receipt no longer describes its result
    assert task.receipt is None and task.verified is False


def test_answers_to_invocations_are_signed_naming_the_invocation_and_checked() -> None:
    from orchestrator.core.commands import InvocationFinished

    registry = Registry()
    registry.enroll("p1", KEY)
    engine = manager(registry)
    engine.handle(MessageReceived(T.alive, b'{"proplet_id":"p1","status":"alive"}'), 0, 0)
    spec = {"name": "add", "file": base64.b64encode(WASM).decode(), "inputs": ["1", "1"], "latent": True}
    task = engine.create_task(spec, 1.0)
    engine.start_task(task.id, 1.0, 1.0)
    (start,) = [c.payload for c in engine.take_commands() if isinstance(c, Publish) and c.topic == T.start]
    device = proplet(KEY, "p1")
    device.handle(T.start, start, 1.0)
    device.admit(task.id, WASM)
    device.deployed(task.id)
    device.take_commands()

    def invoke(inputs: list[str]) -> tuple[str, dict[str, Any]]:
        invocation = engine.invoke(task.id, inputs, {}, 2.0)
        (message,) = [
            c.payload for c in engine.take_commands() if isinstance(c, Publish) and c.topic == T.invoke
        ]
        device.handle(T.invoke, message, 2.0)
        device.take_commands()  # the driver would run it now
        device.invocation_finished(task.id, invocation, "5", None, 2.5, 10.0)
        (answer,) = [c.payload for c in device.take_commands() if isinstance(c, PropletPublish)]
        return invocation, json.loads(answer)

    def finished() -> list[InvocationFinished]:
        return [c for c in engine.take_commands() if isinstance(c, InvocationFinished)]

    first, answer = invoke(["2", "3"])
    assert answer["receipt"]["invocation_id"] == first
    forged = {**answer, "results": "FORGED"}
    engine.handle(MessageReceived(T.invoke_results, json.dumps(forged).encode()), 3.0, 3.0)
    assert finished() == [] and engine.results_rejected == {"bad_receipt": 1}
    engine.handle(MessageReceived(T.invoke_results, json.dumps(answer).encode()), 3.0, 3.0)
    (done,) = finished()
    assert (done.invocation_id, done.results, done.verified) == (first, "5", True)
    # The genuine answer to the first invocation does not answer the second one.
    second, _ = invoke(["2", "3"])
    replayed = {**answer, "invocation_id": second}
    engine.handle(MessageReceived(T.invoke_results, json.dumps(replayed).encode()), 4.0, 4.0)
    assert finished() == [] and engine.results_rejected == {"bad_receipt": 2}


def test_digests_are_computed_only_for_a_receipt_whose_signature_holds() -> None:
    def expensive() -> receipts.Expected:
        raise AssertionError("digests computed for a forged receipt")

    forged = receipts.sign(sample(), OTHER_KEY)
    why = receipts.check(forged, receipts.public_key_of(KEY), expensive)
    assert why == "signature does not verify with the proplet's public key"


def test_in_a_tee_the_receipt_carries_evidence_bound_to_its_hash() -> None:
    asked: list[bytes] = []

    def attest(report_data: bytes) -> bytes:
        asked.append(report_data)
        return b"QUOTE:" + report_data

    body = json.loads(run_on(proplet(attest=attest), start_payload()))
    receipt = Receipt.from_json(body["receipt"])
    assert receipts.signature_ok(receipt, receipts.public_key_of(KEY))  # evidence is under the signature
    assert receipt.evidence is not None
    bound = receipts.evidence_report_data(receipt)
    assert asked == [bound] and base64.b64decode(receipt.evidence) == b"QUOTE:" + bound
    # another result would have needed other evidence
    other = dataclasses.replace(receipt, result_sha256=receipts.result_digest("43", None))
    assert receipts.evidence_report_data(other) != bound


def test_failing_evidence_leaves_the_receipt_without_it() -> None:
    def attest(_report_data: bytes) -> bytes:
        raise OSError("tsm gone")

    engine = proplet(attest=attest)
    body = json.loads(run_on(engine, start_payload()))
    assert Receipt.from_json(body["receipt"]).evidence is None
    assert engine.counters["evidence_failed"] == 1
