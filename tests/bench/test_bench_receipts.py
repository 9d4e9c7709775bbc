"""The cost of trust per task: the proplet signing a receipt, the manager checking it, and the whole
result path with and without a receipt, side by side (pure cores, real Ed25519).

Run with `pytest tests/bench/test_bench_receipts.py --benchmark-enable`; disabled, each runs once as a test.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from orchestrator import wire
from orchestrator.core import receipts
from orchestrator.core.commands import MessageReceived, Publish
from orchestrator.core.engine import Engine, EngineConfig
from orchestrator.core.model import TaskState
from proplets.core import PropletConfig, PropletEngine
from proplets.core import Publish as PropletPublish

T = wire.Topics("b", "c")
KEY = receipts.generate_key()
WASM = b"\x00asm\x01\x00\x00\x00"  # the smallest module: what is measured is the trust overhead


def _receipt() -> receipts.Receipt:
    return receipts.Receipt(
        "00000000-0000-4000-8000-000000000001", 1, "p1", receipts.sha256_hex(WASM),
        receipts.inputs_digest(["2", "40"]), receipts.result_digest("42", None),
        1_700_000_000_000, 1_700_000_000_010,
    )  # fmt: skip


def test_bench_sign_a_receipt(benchmark: Any) -> None:
    signer = receipts.Signer(KEY)
    signed = benchmark(signer.sign, _receipt())
    assert receipts.signature_ok(signed, signer.public_key)


def test_bench_verify_a_receipt(benchmark: Any) -> None:
    signed = receipts.sign(_receipt(), KEY)
    public = receipts.public_key_of(KEY)
    assert benchmark(receipts.signature_ok, signed, public)


class _Loop:
    """One dispatch + result round trip through both pure cores (no broker): the per-task path."""

    def __init__(self, signing: bool) -> None:
        key = KEY if signing else None
        lookup = {"p1": receipts.ProverKey(receipts.public_key_of(KEY), "proplet")}.get if signing else None
        self.manager = Engine(EngineConfig(domain="b", channel="c"), keys=lookup)
        self.proplet = PropletEngine(PropletConfig(proplet_id="p1", domain="b", channel="c", signing_key=key))
        self.proplet.on_connected(0.0)
        self.proplet.take_commands()
        self.manager.handle(MessageReceived(T.alive, b'{"proplet_id":"p1","status":"alive"}'), 0.0, 0.0)
        self.file = base64.b64encode(WASM).decode()

    def one_task(self) -> None:
        task = self.manager.create_task({"name": "add", "file": self.file, "inputs": ["2", "40"]}, 1.0)
        self.manager.start_task(task.id, 1.0, 1.0)
        (start,) = [c for c in self.manager.take_commands() if isinstance(c, Publish) and c.topic == T.start]
        self.proplet.handle(T.start, start.payload, 1.0)
        self.proplet.admit(task.id, WASM)
        self.proplet.task_finished(task.id, "42", None, 1.01, 1.01)
        (result,) = [
            c for c in self.proplet.take_commands() if isinstance(c, PropletPublish) and c.topic == T.results
        ]
        self.manager.handle(MessageReceived(T.results, result.payload), 1.02, 1.02)
        self.manager.take_commands()
        assert task.state is TaskState.COMPLETED and task.verified is bool(self.manager.keys)
        self.manager.delete_task(task.id)
        self.manager.take_commands()


@pytest.mark.parametrize("signing", [False, True], ids=["unsigned", "signed"])
def test_bench_result_path_per_task(benchmark: Any, signing: bool) -> None:
    loop = _Loop(signing)
    benchmark(loop.one_task)


def test_signed_result_payload_size() -> None:
    """Not a speed figure: how many bytes a receipt adds to a result (docs/receipts.md quotes it)."""
    for profile in (wire.Profile.RUST, wire.Profile.EMBEDDED):
        engine = PropletEngine(PropletConfig(proplet_id="esp32-0001", signing_key=KEY, profile=profile))
        engine.on_connected(0.0)
        engine.take_commands()
        start = wire.StartTask(id="00000000-0000-4000-8000-000000000001", name="add", file=WASM,
                               inputs=("2", "40"), proplet_id="esp32-0001")  # fmt: skip
        engine.handle(engine.topics.start, wire.encode(start, profile), 0.0)
        engine.task_finished(start.id, "42", None, 0.1, 1.1)
        (payload,) = [c.payload for c in engine.take_commands() if isinstance(c, PropletPublish)]
        receipt = json.dumps(json.loads(payload)["receipt"], separators=(",", ":"))
        assert len(payload) <= wire.EMBEDDED_MAX_PAYLOAD_BYTES
        print(f"{profile.value}: result payload {len(payload)} bytes, of which receipt {len(receipt) + 11}")
