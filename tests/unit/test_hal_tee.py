"""TEE detection signals (upstream's order: TDX, SEV, SGX) and HAL storage paths, on fake roots."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from proplets.runtime.hal import options, tee
from proplets.runtime.hal.options import StoragePathError, task_storage_dir


@pytest.mark.parametrize(
    ("device", "kind"),
    [
        ("dev/tdx_guest", "tdx"),
        ("dev/tdx-guest", "tdx"),
        ("dev/sev-guest", "sev"),
        ("dev/sgx_enclave", "sgx"),
    ],
)
def test_a_device_node_decides(tmp_path: Path, device: str, kind: str) -> None:
    (tmp_path / device).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / device).touch()
    info = tee.detect(str(tmp_path))
    assert info.present and info.kind == kind and info.evidence == "/" + device


def test_tdx_wins_over_sev_and_cpu_flags_count(tmp_path: Path) -> None:
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "sev-guest").touch()
    (tmp_path / "dev" / "tdx_guest").touch()
    assert tee.detect(str(tmp_path)).kind == "tdx"
    flags = tmp_path / "flagged"
    (flags / "proc").mkdir(parents=True)
    (flags / "proc" / "cpuinfo").write_text("processor : 0\nflags : fpu sse sev_snp\n")
    assert tee.detect(str(flags)).kind == "sev"


def test_no_signal_is_no_tee(tmp_path: Path) -> None:
    info = tee.detect(str(tmp_path))
    assert not info.present and info.kind == "none"


def test_storage_paths_stay_under_the_root(tmp_path: Path) -> None:
    assert task_storage_dir(tmp_path, "t-1", None) == str((tmp_path / "t-1").resolve())
    assert task_storage_dir(tmp_path, "t-1", "/shared/x") == str((tmp_path / "shared" / "x").resolve())
    with pytest.raises(StoragePathError, match="leaves the proplet's HAL storage root"):
        task_storage_dir(tmp_path, "t-1", "a/../../etc")


def test_a_task_named_like_a_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "t-1").symlink_to(outside)  # a plain task id: the fast path must still see the link
    with pytest.raises(StoragePathError, match="leaves the proplet's HAL storage root"):
        task_storage_dir(root, "t-1", None)
    assert task_storage_dir(root, "t-2", None) == str(root.resolve() / "t-2")


@example(".hidden")
@example("..")
@example("-x")
@example("a" * 120)
@example("a" * 121)
@example("tâche-1")
@given(st.text(max_size=200) | st.from_regex(r"[A-Za-z0-9_.\-]{1,130}", fullmatch=True))
def test_a_task_id_becomes_the_same_directory_name_as_before_the_fast_path(task_id: str) -> None:
    slow = "".join(c if c.isalnum() or c in "-_." else "_" for c in task_id)[:120].lstrip(".") or "task"
    assert options._safe(task_id) == slow


def test_tsm_report_without_the_interface_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(tee.AttestationError, match="no TEE platform available"):
        tee.tsm_report(b"x", str(tmp_path / "missing"))
