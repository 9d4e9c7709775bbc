"""What a run's HAL may reach: its storage root and quota, the network allow-list, the TEE report tree.

Plain data (no wasmtime) so `RunRequest` can carry it and the agent can build it from settings.
"""

from __future__ import annotations

import functools
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_QUOTA_BYTES = 64 * 1024 * 1024
# Linux configfs-tsm: TDX and SEV-SNP guests produce a report for 64 bytes of caller data here.
DEFAULT_TSM_ROOT = "/sys/kernel/config/tsm/report"


@functools.cache
def default_root() -> Path:
    """Upstream's `/tmp/proplet/hal-storage`, under this machine's temp dir (looked up once: every
    task asks)."""
    return Path(tempfile.gettempdir()) / "proplet" / "hal-storage"


@dataclass(frozen=True)
class HalOptions:
    """`storage_dir`: the task's storage root (already resolved and confined by the agent);
    `egress`: allow-list entries as for `--fetch-allow`; `tsm_root`: configfs-tsm report directory
    (tests point it at a fake tree); `quota_bytes`: most bytes the task may keep in storage."""

    storage_dir: str
    egress: tuple[str, ...] = ("public",)
    tsm_root: str = DEFAULT_TSM_ROOT
    quota_bytes: int = DEFAULT_QUOTA_BYTES
    tee: str = "none"  # what the proplet detected at start-up (hal/tee.py): tdx, sev, sgx or none


class StoragePathError(ValueError):
    pass


def task_storage_dir(root: Path | str, task_id: str, requested: str | None) -> str:
    """The task's `hal_storage_path` inside the proplet's HAL root (default: one directory per task).

    A task may name its directory (upstream lets it name any host path); here the name is always
    taken relative to the proplet's root, and a path leaving the root is refused. Strings, not
    ``Path`` objects, on the common path: this runs for every task.
    """
    rel = requested.strip().lstrip("/") if requested else _safe(task_id)
    if not rel:
        rel = _safe(task_id)
    base = _resolved(os.fspath(root))
    if "/" not in rel and rel not in (".", ".."):
        target = os.path.join(base, rel)
        if not os.path.islink(target):
            return target  # one plain name under a resolved root is its own real path, inside the root
    resolved = Path(base, rel).resolve()
    if resolved != Path(base) and Path(base) not in resolved.parents:
        raise StoragePathError(f"hal_storage_path {requested!r} leaves the proplet's HAL storage root")
    return str(resolved)


@functools.lru_cache(maxsize=16)
def _resolved(root: str) -> str:
    """The real path of a HAL root (resolved once per root: this runs for every task)."""
    return str(Path(root).resolve())


_PLAIN_NAME = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,119}")


def _safe(task_id: str) -> str:
    if _PLAIN_NAME.fullmatch(task_id):
        return task_id  # what the manager's ids look like: nothing to replace (this runs per task)
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in task_id)[:120].lstrip(".") or "task"
