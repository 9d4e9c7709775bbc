"""``propeller task verify``: check an execution receipt with nothing but the proplet's public key.

Online (``propeller task verify ID``) it fetches ``GET /tasks/{id}/receipt`` and ``GET /tasks/{id}``
and checks the receipt against the task the manager reports. Offline (``--receipt FILE --public-key
KEY``) it trusts no manager at all: the signature is checked with the key given, and every digest the
user can supply (``--task FILE`` as the API returned it, ``--result FILE``, ``--module FILE``,
``--inputs``) is recomputed and compared. Exit 0: every check passed; 1: the receipt is rejected, with
the reason; 2: the arguments or files are unusable.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.core import receipts
from orchestrator.wire import CodecError
from orchestrator.wire.encode import input_as_number

EXIT_REJECTED = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """Arguments or files that cannot be used (exit 2)."""


@dataclass(frozen=True)
class Finding:
    check: str
    ok: bool
    detail: str


def verify(
    raw: Any,
    public_key: bytes,
    *,
    task_id: str | None = None,
    task: dict[str, Any] | None = None,
    proplet_id: str | None = None,
    result: tuple[Any, str | None] | None = None,
    module: bytes | None = None,
    inputs: list[Any] | None = None,
) -> list[Finding]:
    """Every check that the material given allows; the signature check always comes first."""
    try:
        receipt = receipts.Receipt.from_json(raw)
    except receipts.ReceiptError as err:
        return [Finding("format", False, str(err))]
    out = [
        Finding(
            "signature",
            receipts.signature_ok(receipt, public_key),
            f"Ed25519, key {receipts.encode_key(public_key)}, {len(receipt.signed_bytes())} canonical bytes",
        )
    ]
    if task is not None:
        task_id = task_id or str(task.get("id", ""))
        if not task.get("broadcast"):
            proplet_id = proplet_id or str(task.get("proplet_id", ""))
        if result is None:
            results = task.get("results")
            if task.get("broadcast") and isinstance(results, dict):
                entry = results.get(receipt.proplet_id) or {}
                result = (entry.get("results"), entry.get("error") or None)
            else:
                result = (results, str(task.get("error") or "") or None)
        if inputs is None:
            inputs = list(task.get("inputs") or [])
    if task_id is not None:
        out.append(_same("task_id", receipt.task_id, task_id))
    if proplet_id:
        out.append(_same("proplet_id", receipt.proplet_id, proplet_id))
    if result is not None:
        finding = _same("result_sha256", receipt.result_sha256, receipts.result_digest(*result))
        if not finding.ok and (result[1] or "").endswith("more characters)"):
            # The manager keeps at most 4096 characters of an error text (and NUL as \0).
            finding = Finding(finding.check, False, finding.detail + "; the stored error text was shortened")
        out.append(finding)
    if inputs is not None:
        out.append(_inputs_finding(receipt.inputs_sha256, inputs))
    if module is not None:
        out.append(_same("module_sha256", receipt.module_sha256, hashlib.sha256(module).hexdigest()))
    else:
        out.append(
            Finding("module_sha256", True, f"{receipt.module_sha256 or '-'} (not checked: --module FILE)")
        )
    if receipt.finished_at_ms < receipt.started_at_ms:
        out.append(Finding("times", False, "finished_at_ms is before started_at_ms"))
    return out


def _same(check: str, signed: str, recomputed: str) -> Finding:
    if signed == recomputed:
        return Finding(check, True, signed)
    return Finding(check, False, f"receipt says {signed!r}, the material given gives {recomputed!r}")


def _inputs_finding(signed: str, inputs: list[Any]) -> Finding:
    """Inputs as the user wrote them, or as the embedded profile sent them (numbers)."""
    candidates = [receipts.inputs_digest(inputs)]
    with contextlib.suppress(CodecError):
        candidates.append(receipts.inputs_digest([input_as_number(v, "inputs") for v in inputs]))
    if signed in candidates:
        return Finding("inputs_sha256", True, signed)
    return Finding(
        "inputs_sha256", False, f"receipt says {signed!r}, the inputs given give {candidates[0]!r}"
    )


# ---------------------------------------------------------------------- CLI


def add_verify_parser(tsub: Any, api_args: Any) -> None:
    tv = tsub.add_parser(
        "verify",
        help="check a task's execution receipt with only the proplet's public key",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    tv.add_argument("id", help="task id (the receipt must name it)")
    tv.add_argument("--receipt", help="receipt JSON file (or a saved GET /tasks/{id}/receipt): no API call")
    tv.add_argument("--public-key", help="signer's Ed25519 public key: base64, hex, or a file holding it")
    tv.add_argument("--task", help="task JSON file (GET /tasks/{id}): check the result and inputs")
    tv.add_argument("--result", help='file with the result as JSON (e.g. "42"); error taken as none')
    tv.add_argument("--module", help="the .wasm module that should have run")
    tv.add_argument("--inputs", nargs="*", default=None, help="the inputs the task was given")
    api_args(tv)
    tv.set_defaults(func=cmd_verify)


def cmd_verify(args: argparse.Namespace) -> int:
    try:
        findings = _run(args)
    except UsageError as err:
        print(f"propeller task verify: {err}", file=sys.stderr)
        return EXIT_USAGE
    bad = [f for f in findings if not f.ok]
    checks = [{"check": f.check, "ok": f.ok, "detail": f.detail} for f in findings]
    report = json.dumps({"task_id": args.id, "verified": not bad, "checks": checks}, indent=2)
    if getattr(args, "output", None):
        from orchestrator.cli_api import write_output

        try:
            write_output(args.output, report + "\n")
        except ValueError as err:
            print(f"propeller task verify: {err}", file=sys.stderr)
            return EXIT_USAGE
    if args.json:
        print(report)
    else:
        width = max(len(f.check) for f in findings)
        for f in findings:
            print(f"{f.check:<{width}}  {'ok' if f.ok else 'FAILED'}  {f.detail}")
    if bad:
        print(f"receipt REJECTED: {bad[0].check}: {bad[0].detail}", file=sys.stderr)
        return EXIT_REJECTED
    if not args.json:
        print(f"receipt verified for task {args.id}")
    return 0


def _run(args: argparse.Namespace) -> list[Finding]:
    from orchestrator.client import ApiClient, ApiError

    task = _json_file(args.task, "--task") if args.task else None
    if args.receipt:
        signed = _json_file(args.receipt, "--receipt")
    else:
        client = ApiClient(args.api_url, token=args.api_token)
        try:
            signed = client.task_receipt(args.id)
            task = task if task is not None else client.get_task(args.id)
        except ApiError as err:
            raise UsageError(str(err)) from None
        finally:
            client.close()
    entries = _entries(signed)
    findings: list[Finding] = []
    for raw, served_key in entries:
        key_text = args.public_key or served_key
        if not key_text:
            raise UsageError("no public key: pass --public-key (the manager knows none for this signer)")
        result = (_json_file(args.result, "--result"), None) if args.result else None
        findings += verify(
            raw,
            _key(key_text),
            task_id=args.id,
            task=task,
            result=result,
            module=_bytes_file(args.module, "--module") if args.module else None,
            inputs=args.inputs,
        )
    return findings


def _entries(signed: Any) -> list[tuple[Any, str | None]]:
    """(receipt, served public key) pairs from a receipt, a receipt response, or a broadcast response."""
    if not isinstance(signed, dict):
        raise UsageError("the receipt must be a JSON object")
    if "receipts" in signed and isinstance(signed["receipts"], dict):
        return [(e.get("receipt"), e.get("public_key")) for e in signed["receipts"].values()]
    if "receipt" in signed:
        return [(signed["receipt"], signed.get("public_key"))]
    return [(signed, None)]


def _key(text: str) -> bytes:
    path = Path(text)
    if len(text) < 200 and path.is_file():
        content = path.read_text().strip()
        try:  # an identity file or any JSON with "public_key"
            data = json.loads(content)
            content = data["public_key"] if isinstance(data, dict) else content
        except (ValueError, KeyError):
            pass
        text = str(content)
    try:
        return receipts.decode_key(text, "--public-key")
    except ValueError as err:
        raise UsageError(str(err)) from None


def _json_file(path: str, flag: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except OSError as err:
        raise UsageError(f"{flag} {path}: {err.strerror or err}") from None
    except ValueError as err:
        raise UsageError(f"{flag} {path}: not JSON: {err}") from None


def _bytes_file(path: str, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise UsageError(f"{flag} {path}: {err.strerror or err}") from None
