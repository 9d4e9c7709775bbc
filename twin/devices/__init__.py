"""Device models of the twin. `DEVICE_KINDS` maps a scenario's device kind to its model and flags."""

from __future__ import annotations

from dataclasses import dataclass

from twin.devices.esp32s3 import (
    ESP32S3,
    ESP32S3_PSRAM,
    OUR_FIRMWARE,
    UPSTREAM_FAILURES,
    CpuModel,
    Esp32S3Spec,
    FirmwareFlags,
    MemoryModel,
    TimingModel,
)
from twin.devices.host import HOST, HostSpec


@dataclass(frozen=True)
class DeviceKind:
    name: str
    spec: Esp32S3Spec | HostSpec
    flags: FirmwareFlags


DEVICE_KINDS: dict[str, DeviceKind] = {
    "esp32s3": DeviceKind("esp32s3", ESP32S3, OUR_FIRMWARE),
    "esp32s3-psram": DeviceKind("esp32s3-psram", ESP32S3_PSRAM, OUR_FIRMWARE),
    "upstream-firmware": DeviceKind("upstream-firmware", ESP32S3, UPSTREAM_FAILURES),
    "host": DeviceKind("host", HOST, OUR_FIRMWARE),
}


def device_kind(name: str) -> DeviceKind:
    try:
        return DEVICE_KINDS[name]
    except KeyError:
        raise ValueError(f"unknown device kind {name!r}; known: {', '.join(sorted(DEVICE_KINDS))}") from None


__all__ = [
    "DEVICE_KINDS", "ESP32S3", "ESP32S3_PSRAM", "HOST", "OUR_FIRMWARE", "UPSTREAM_FAILURES", "CpuModel",
    "DeviceKind", "Esp32S3Spec", "FirmwareFlags", "HostSpec", "MemoryModel", "TimingModel", "device_kind",
]  # fmt: skip
