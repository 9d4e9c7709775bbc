"""Fault definitions: building from mappings (as from YAML), clear errors, reproducible targeting."""

from __future__ import annotations

import random

import pytest

from twin.faults import (
    BrokerRestart,
    ClockSkew,
    DeviceRef,
    LinkFault,
    ManagerKill,
    OutOfMemory,
    PowerLoss,
    Reboot,
    Target,
    WifiDrop,
    fault_from_mapping,
    parse_duration,
)
from twin.links import LinkProfile

FLEET = [DeviceRef(f"esp-{i}", "esp32s3") for i in range(8)] + [DeviceRef(f"up-{i}", "upstream-firmware")
                                                                  for i in range(4)]  # fmt: skip


@pytest.mark.parametrize(
    ("mapping", "expected"),
    [
        ({"type": "power_loss"}, PowerLoss()),
        ({"type": "power_loss", "off_for": "2m", "at": 10}, PowerLoss(off_for=120.0, at=10.0)),
        ({"type": "wifi_drop", "duration": "90s", "target": {"device": "esp-1"}},
         WifiDrop(duration=90.0, target=Target(device="esp-1"))),
        ({"type": "link", "duration": 30, "profile": {"latency_s": "200ms", "loss": 0.1}},
         LinkFault(profile=LinkProfile(latency_s=0.2, loss=0.1), duration=30.0)),
        ({"type": "reboot", "only_if_running": True}, Reboot(only_if_running=True)),
        ({"type": "out_of_memory", "reserve_bytes": 65536, "duration": "1h"},
         OutOfMemory(reserve_bytes=65536, duration=3600.0)),
        ({"type": "broker_restart", "downtime": "500ms"}, BrokerRestart(downtime=0.5)),
        ({"type": "manager_kill", "restart_after": None}, ManagerKill(restart_after=None)),
        ({"type": "clock_skew", "offset": "-5m", "target": {"kind": "esp32s3", "fraction": 0.5}},
         ClockSkew(offset=-300.0, target=Target(kind="esp32s3", fraction=0.5))),
    ],
)  # fmt: skip
def test_faults_build_from_mappings(mapping: dict[str, object], expected: object) -> None:
    assert fault_from_mapping(mapping, "faults[0]") == expected


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"type": "meteor"}, "faults[2]: type must be one of"),
        ([1, 2], "faults[2]: a fault must be a mapping"),
        ({"type": "wifi_drop", "duraton": 5}, "faults[2]: unknown key 'duraton'"),
        ({"type": "wifi_drop", "duration": "soon"}, "faults[2]: duration must be a duration"),
        ({"type": "wifi_drop", "duration": -1}, "faults[2]: duration must be a finite duration >= 0"),
        ({"type": "broker_restart", "target": {"device": "x"}}, "target is not allowed for broker_restart"),
        ({"type": "reboot", "target": {"fraction": 2}}, "faults[2].target: target.fraction must be in"),
        ({"type": "reboot", "target": {"id": "x"}}, "faults[2].target: unknown key 'id'"),
        ({"type": "reboot", "target": "esp-1"}, "target must be a mapping"),
        ({"type": "out_of_memory", "reserve_bytes": "lots"}, "reserve_bytes must be a positive integer"),
        ({"type": "link", "profile": {"loss": 3}}, "faults[2]: profile: LinkProfile.loss"),
        ({"type": "link", "profile": {"delay": 3}}, "faults[2].profile: unknown key 'delay'"),
        ({"type": "reboot", "only_if_running": "yes"}, "only_if_running must be true or false"),
    ],
)
def test_bad_mappings_name_the_key_and_where(mapping: object, message: str) -> None:
    with pytest.raises(ValueError) as err:
        fault_from_mapping(mapping, "faults[2]")
    assert message in str(err.value)


def test_durations() -> None:
    assert parse_duration("250ms", "d", "w") == 0.25
    assert parse_duration("5min", "d", "w") == 300.0
    assert parse_duration(2, "d", "w") == 2.0
    assert parse_duration("-3s", "d", "w", allow_negative=True) == -3.0
    with pytest.raises(ValueError, match="w: d must be a duration"):
        parse_duration(True, "d", "w")


def test_target_by_device_and_kind() -> None:
    rng = random.Random(1)
    assert Target(device="esp-3").select(FLEET, rng) == ["esp-3"]
    assert Target(kind="upstream-firmware").select(FLEET, rng) == [f"up-{i}" for i in range(4)]
    assert Target().select(FLEET, rng) == [d.device_id for d in FLEET]
    assert Target(device="nope").select(FLEET, rng) == []


def test_fraction_is_seeded_and_applies_after_the_filters() -> None:
    pick = Target(kind="esp32s3", fraction=0.5)
    first = pick.select(FLEET, random.Random(42))
    assert first == pick.select(FLEET, random.Random(42))
    assert len(first) == 4 and all(d.startswith("esp-") for d in first)
    assert len(Target(fraction=0.01).select(FLEET, random.Random(0))) == 1  # at least one device
