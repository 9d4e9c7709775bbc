"""TEE detection (the signals upstream's `tee_detection.rs` checks) and configfs-tsm evidence.

Detection order as upstream: TDX, then SEV, then SGX. Paths are injectable so tests can build a fake
tree; nothing here fabricates evidence: without a report interface the answer is an error.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

REPORT_DATA_BYTES = 64

_DEVICES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("tdx", ("/dev/tdx_guest", "/dev/tdx-guest", "/sys/firmware/tdx_guest")),
    ("sev", ("/dev/sev-guest", "/dev/sev")),
    ("sgx", ("/dev/sgx_enclave", "/dev/sgx/enclave", "/dev/isgx")),
)
_CPUINFO_FLAGS = (("tdx", "tdx_guest"), ("sev", "sev_snp"), ("sgx", "sgx"))


@dataclass(frozen=True)
class TeeInfo:
    kind: str  # "tdx" | "sev" | "sgx" | "none"
    evidence: str  # the signal that decided, for discovery metadata and logs

    @property
    def present(self) -> bool:
        return self.kind != "none"


def detect(root: str = "/") -> TeeInfo:
    """`root` prefixes every path checked (tests use a temp dir)."""
    base = Path(root)
    for kind, paths in _DEVICES:
        for p in paths:
            if (base / p.lstrip("/")).exists():
                return TeeInfo(kind, p)
    try:
        flags = set()
        for line in (base / "proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                flags.update(line.split(":", 1)[1].split())
                break
    except OSError:
        flags = set()
    for kind, flag in _CPUINFO_FLAGS:
        if flag in flags:
            return TeeInfo(kind, f"cpuinfo flag {flag}")
    return TeeInfo("none", "no TDX, SEV or SGX device or CPU flag")


class AttestationError(Exception):
    pass


def tsm_report(report_data: bytes, tsm_root: str) -> bytes:
    """Evidence from the Linux configfs-tsm report interface, bound to `report_data` (<= 64 bytes).

    Protocol (Documentation/ABI/testing/configfs-tsm): mkdir a report entry, write the report data to
    `inblob`, read the evidence from `outblob`, rmdir the entry.
    """
    if len(report_data) > REPORT_DATA_BYTES:
        raise AttestationError(f"report data is {len(report_data)} bytes; at most {REPORT_DATA_BYTES}")
    root = Path(tsm_root)
    if not root.is_dir():
        raise AttestationError("no TEE platform available (no configfs-tsm report interface)")
    entry = root / f"propeller-{uuid.uuid4().hex}"
    try:
        entry.mkdir()
    except OSError as err:
        raise AttestationError(f"configfs-tsm refused a report entry: {err.strerror}") from None
    try:
        (entry / "inblob").write_bytes(report_data.ljust(REPORT_DATA_BYTES, b"\0"))
        evidence = _read_outblob(entry / "outblob")
    except OSError as err:
        raise AttestationError(f"configfs-tsm report failed: {err.strerror or err}") from None
    finally:
        _remove_entry(entry)
    if not evidence:
        raise AttestationError("configfs-tsm returned empty evidence")
    return evidence


def _read_outblob(path: Path, wait_s: float = 5.0) -> bytes:
    # configfs has `outblob` the moment the entry exists; a provider that generates it asynchronously
    # (a test's fake tree, a user-space shim) gets a short grace period instead of a spurious failure
    deadline = time.monotonic() + wait_s
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return path.read_bytes()


def _remove_entry(entry: Path) -> None:
    # configfs removes the attributes with the directory; a plain tree (tests) needs them removed first
    for child in entry.iterdir() if entry.is_dir() else ():
        with contextlib.suppress(OSError):
            if child.is_file():
                child.unlink()
    with contextlib.suppress(OSError):
        os.rmdir(entry)
