"""Who may finish a task: the sender and receipt checks on a result, before the engine accepts it. Sans-I/O.

``judge(task, msg, proplet, keys)`` says whether a result for a *running* task of the current attempt
may be accepted, and whether it is verified:

- it names another proplet than the one running the attempt: rejected (``wrong_proplet``);
- no ``proplet_id`` (the upstream firmware's shape): only a proplet that may send that shape can have
  sent it: with a key lookup, the attempt's proplet must be enrolled (``unknown_proplet``); without
  one, the attempt must run on an embedded proplet (``missing_proplet_id``);
- with a key lookup (``KeyLookup``, the identity registry), the attempt's proplet must be enrolled
  (``unknown_proplet``); kind ``proplet`` must send a receipt (``missing_receipt``) that verifies with
  its key and names this task, attempt, proplet, module, inputs and result (``bad_receipt``): then
  ``verified``; kind ``upstream`` cannot sign and is accepted unverified; any other kind may not send
  results (``not_a_proplet``);
- without a lookup (unit tests of the engine, an open debug broker) results are accepted unverified.

The digests the receipt must carry are computed from what the manager sent: the task's module (its
``file``, or its pinned ``sha256``; an unpinned ``image_url`` is not checked), its inputs in the form
the proplet received them (the embedded profile sends numbers), and the result as received.
``judge_invocation`` applies the same rules to the answer of one invocation of a latent task, whose
receipt must also name the invocation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from orchestrator import wire
from orchestrator.core import receipts
from orchestrator.core.model import Proplet, Task
from orchestrator.wire.encode import input_as_number


@dataclass(frozen=True)
class Judgement:
    accepted: bool
    verified: bool = False
    reason: str = ""  # a short code for counters: wrong_proplet, missing_receipt, bad_receipt, ...
    detail: str = ""  # what exactly was wrong, for the log
    receipt: dict[str, Any] | None = None  # the receipt to keep with the task (verified or not)


def judge(
    task: Task,
    msg: wire.TaskResult,
    proplet: Proplet | None,
    keys: receipts.KeyLookup | None,
    *,
    sender_of_record: str | None = None,
) -> Judgement:
    """``sender_of_record``: the proplet this result must come from (default: the task's proplet)."""
    owner = sender_of_record if sender_of_record is not None else task.proplet_id
    digests = _Digests(task, proplet, msg.results, msg.error, task.inputs)
    return _judge(owner, msg.proplet_id, msg.receipt, proplet, keys, lambda: digests.expected(owner))


def judge_invocation(
    task: Task,
    msg: wire.InvokeResult,
    proplet: Proplet | None,
    keys: receipts.KeyLookup | None,
    inputs: Sequence[object],
) -> Judgement:
    """The same rules for the answer to one invocation of a latent task (``inputs``: the invocation's,
    or the task's when it gave none); its receipt must name the invocation."""
    digests = _Digests(task, proplet, msg.results, msg.error, list(inputs) or task.inputs)
    owner = task.proplet_id

    def expectation() -> receipts.Expected:
        return replace(digests.expected(owner), invocation_id=msg.invocation_id)

    return _judge(owner, msg.proplet_id or None, msg.receipt, proplet, keys, expectation)


def _judge(
    owner: str,
    sender: str | None,
    receipt_json: Mapping[str, Any] | None,
    proplet: Proplet | None,
    keys: receipts.KeyLookup | None,
    expectation: Callable[[], receipts.Expected],
) -> Judgement:
    raw = dict(receipt_json) if receipt_json is not None else None
    if sender is not None and sender != owner:
        return _reject("wrong_proplet", f"sent as {sender!r:.80}, the attempt runs on {owner!r}")
    if keys is None:
        if sender is None and not (proplet is not None and proplet.is_embedded):
            return _reject(
                "missing_proplet_id",
                f"no proplet_id, and {owner!r} is not an embedded proplet that may omit it",
            )
        return Judgement(True, False, receipt=raw)
    prover = keys(owner)
    if prover is None:
        return _reject("unknown_proplet", f"{owner!r} is not enrolled")
    if prover.kind == "upstream":
        return Judgement(True, False, receipt=raw)
    if prover.kind != "proplet" or prover.public_key is None:
        return _reject("not_a_proplet", f"{owner!r} is enrolled as {prover.kind!r}, which does not run tasks")
    if raw is None:
        return _reject("missing_receipt", f"{owner!r} signs its results but this one has no receipt")
    try:
        receipt = receipts.Receipt.from_json(raw)
    except receipts.ReceiptError as err:
        return _reject("bad_receipt", str(err))
    why = receipts.check(receipt, prover.public_key, expectation)
    if why is not None:
        return _reject("bad_receipt", why)
    return Judgement(True, True, receipt=receipt.to_json())


@dataclass(frozen=True)
class _Digests:
    """What the receipt must say, computed from what the manager sent (only when a receipt is checked)."""

    task: Task
    proplet: Proplet | None
    results: Any
    error: str | None
    inputs: Sequence[object]

    def expected(self, owner: str) -> receipts.Expected:
        task = self.task
        embedded = self.proplet is not None and self.proplet.is_embedded
        if task.file:
            module: str | None = hashlib.sha256(task.file).hexdigest()
        else:
            module = task.sha256 or None  # an unpinned image_url: whatever the proplet fetched
        return receipts.Expected(
            task_id=task.id,
            proplet_id=owner,
            result_sha256=receipts.result_digest(self.results, self.error),
            # Every profile sends the attempt in the start (the embedded one since the firmware
            # matches stops against it), so the proplet signed the attempt it ran.
            attempt=task.attempt,
            module_sha256=module,
            inputs_sha256=inputs_digest(self.inputs, embedded),
        )


def inputs_digest(inputs: Sequence[object], embedded: bool) -> str | None:
    """The digest of the inputs as the proplet received them (None if they cannot be sent that way)."""
    values: list[object] = list(inputs)
    if embedded:
        try:
            values = [input_as_number(v, f"inputs[{i}]") for i, v in enumerate(values)]
        except wire.CodecError:
            return None
    return receipts.inputs_digest(values)


def _reject(reason: str, detail: str) -> Judgement:
    return Judgement(False, False, reason, detail)
