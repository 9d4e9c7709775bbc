"""The firmware's portable C core, built and run on the host (gcc, ASan + UBSan).

`make -C firmware/host test` compiles the core and its C unit tests out of tree and prints
"N passed, M failed"; `make fuzz` feeds seeded random and mutated payloads through the JSON parser,
base64, the Wasm scanner and the whole proplet state machine under the sanitizers.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

FIRMWARE_HOST = Path(__file__).resolve().parents[2] / "firmware" / "host"

pytestmark = pytest.mark.skipif(
    shutil.which("gcc") is None or shutil.which("make") is None,
    reason="gcc and make are needed to build the firmware core on the host",
)


def _make(build: Path, *targets: str, **variables: str) -> subprocess.CompletedProcess[str]:
    args = [
        "make",
        "-j2",
        "-C",
        str(FIRMWARE_HOST),
        f"BUILD={build}",
        *(f"{k}={v}" for k, v in variables.items()),
    ]
    return subprocess.run([*args, *targets], capture_output=True, text=True, timeout=300, check=False)


def test_c_unit_tests_pass(tmp_path: Path) -> None:
    proc = _make(tmp_path, "test")
    output = proc.stdout + proc.stderr
    summary = re.findall(r"^(\d+) passed, (\d+) failed$", proc.stdout, flags=re.MULTILINE)
    assert summary, f"no 'N passed, M failed' line in the output:\n{output}"
    passed, failed = (int(n) for n in summary[-1])
    assert failed == 0, output
    assert passed >= 30, f"only {passed} C tests ran:\n{output}"
    assert proc.returncode == 0, output
    assert (tmp_path / "unit_tests").is_file()  # built out of tree, where BUILD= said


def test_sanitizer_fuzz_run_finds_no_fault(tmp_path: Path) -> None:
    proc = _make(tmp_path, "fuzz", FUZZ_SEED="20240601", FUZZ_ITERS="30000")
    output = proc.stdout + proc.stderr
    assert "AddressSanitizer" not in output and "runtime error" not in output, output
    match = re.search(r"^fuzz: (\d+) iterations, seed (\d+), ok \(tasks started (\d+)", proc.stdout, re.M)
    assert match, f"fuzz run did not finish cleanly:\n{output}"
    assert int(match.group(1)) == 30000
    # the mutated payloads must reach task admission, not die in the parser
    assert int(match.group(3)) > 0, output
    assert proc.returncode == 0, output
