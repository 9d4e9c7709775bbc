"""ESP32-S3 profiles by name or from a file (what ``propeller hil calibrate --write`` produces).

A profile file is YAML: ``base:`` a named profile (default ``esp32s3``) and any ``Esp32S3Spec`` field
to override, plus descriptive keys the calibration adds (``name``, ``source``, ``fit``)::

    base: esp32s3
    name: calibrated from bench.log
    free_dram_bytes: 196608
    wamr_baseline_bytes: 11059
    instance_overhead_bytes: 1220
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from twin.devices.esp32s3 import PROFILES, Esp32S3Spec, spec_from_mapping


def load_profile(name: str, base_dir: Path | None = None) -> Esp32S3Spec:
    """A named profile (``PROFILES``) or a profile file (a path ending in .yaml/.yml/.json, relative
    to ``base_dir``); ValueError naming what is wrong."""
    if name in PROFILES:
        return PROFILES[name]
    if not name.endswith((".yaml", ".yml", ".json")):
        raise ValueError(f"unknown profile {name!r}: one of {', '.join(PROFILES)}, or a profile file "
                         "(.yaml) written by `propeller hil calibrate --write`")  # fmt: skip
    path = Path(name)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"profile {name}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"profile {name}: not YAML: {exc}") from None
    if not isinstance(data, Mapping):
        raise ValueError(f"profile {name}: must be a mapping of Esp32S3Spec fields")
    return spec_from_mapping(data, f"profile {name}")


def write_profile(path: Path, data: Mapping[str, Any]) -> Path:
    """Write a profile file; it is checked by loading it back (a profile that cannot load is a bug)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dict(data), sort_keys=False), encoding="utf-8")
    load_profile(str(path.resolve()))
    return path
