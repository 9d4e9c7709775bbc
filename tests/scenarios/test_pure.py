"""Pure parts of the live runner: device state, upstream quirks, fault draws, targets, the log observer."""

from __future__ import annotations

import itertools
import random

import pytest

from twin.device import device_state, esp_spec, firmware_flags
from twin.fleet import random_faults
from twin.observer import ManagerObserver, TaskRef, parse_line
from twin.scenario.spec import DeviceRef, FaultSpec, FleetGroup, Target, WorkloadItem
from twin.scenario.trace import Trace
from twin.workload import WorkloadError, load_module, pick_device, schedule, task_spec


# ---------------------------------------------------------------------------------------------- device
@pytest.mark.parametrize(
    ("powered", "booted", "connected", "link_up", "running", "state"),
    [
        (False, True, True, True, 2, "dead"),
        (True, False, False, True, 0, "booting"),
        (True, True, False, True, 0, "offline"),
        (True, True, True, False, 1, "offline"),  # Wi-Fi down: the engine still believes it is connected
        (True, True, True, True, 0, "online"),
        (True, True, True, True, 3, "running"),
    ],
)
def test_device_state(
    powered: bool, booted: bool, connected: bool, link_up: bool, running: int, state: str
) -> None:
    assert device_state(powered, booted, connected, link_up, running) == state


def test_upstream_firmware_flags() -> None:
    assert firmware_flags("upstream-firmware").no_reconnect and not firmware_flags("esp32s3").no_reconnect


def test_esp_spec_takes_the_groups_memory_and_psram() -> None:
    small = esp_spec(FleetGroup("esp32s3", memory_bytes=96 * 1024))
    big = esp_spec(FleetGroup("esp32s3", memory_bytes=320 * 1024, psram_bytes=2 * 2**20))
    assert small.heap_bytes == 96 * 1024
    assert big.heap_bytes == 2 * 2**20 and big.wamr_heap_in_psram
    mem64k = len(load_module("mem64k"))
    # One 64 KiB instance fits the small device, a second does not; the big one takes many.
    assert (
        small.instance_cost(mem64k, 1)
        <= small.budget_config().heap_bytes
        < 2 * small.instance_cost(mem64k, 1)
    )
    assert big.budget_config().heap_bytes // big.instance_cost(mem64k, 1) >= 20


# ---------------------------------------------------------------------------------------------- faults
def _random(rate: float = 2.0, duration: float = 10.0) -> FaultSpec:
    params = {"rate": rate, "kinds": ["power_loss", "wifi_drop"], "down_min": 0.5, "down_max": 1.0}
    return FaultSpec(at=5.0, kind="random", duration=duration, params=params)


def test_random_faults_are_seeded_and_inside_their_window() -> None:
    population = [f"esp-{i}" for i in range(1, 7)]
    picks = random_faults(_random(), population, random.Random("7:random"))
    again = random_faults(_random(), population, random.Random("7:random"))
    assert picks == again and picks
    assert all(5.0 <= p.at < 15.0 and 0.5 <= p.down <= 1.0 and p.device in population for p in picks)
    assert {p.kind for p in picks} <= {"power_loss", "wifi_drop"}


def test_random_faults_leave_a_device_alone_while_it_recovers() -> None:
    picks = random_faults(_random(rate=50.0), ["only"], random.Random(1))
    for a, b in itertools.pairwise(picks):
        assert b.at >= a.at + a.down + 3.0  # RECOVERY_S


# ---------------------------------------------------------------------------------------------- workload
FLEET = [DeviceRef("esp-1", "esp32s3", 0), DeviceRef("esp-2", "esp32s3", 0), DeviceRef("gw-1", "host", 1)]


def test_pick_device_pins_only_when_the_target_excludes_devices() -> None:
    rng = random.Random(3)
    assert pick_device(None, FLEET, lambda _d: True, rng) is None
    assert pick_device(Target(kind="esp32s3"), FLEET[:2], lambda _d: True, rng) is None  # all match
    assert pick_device(Target(kind="host"), FLEET, lambda _d: True, rng) == "gw-1"
    # Alive devices first: esp-2 is the only one the manager holds alive.
    assert {pick_device(Target(kind="esp32s3"), FLEET, lambda d: d == "esp-2", rng) for _ in range(10)} == {
        "esp-2"
    }
    assert pick_device(Target(device="esp-1"), FLEET[:2], lambda _d: False, rng) == "esp-1"
    with pytest.raises(WorkloadError, match="no device of the fleet matches"):
        pick_device(Target(kind="upstream-firmware"), FLEET, lambda _d: True, rng)


def test_task_spec_maps_the_scenario_limits_to_the_api() -> None:
    limits = {"fuel": 1000, "wall_time": 5.0, "memory": 65536}
    item = WorkloadItem("fib", "fib", "fib", inputs=(27,), limits=limits,
                        memory_bytes=65536)  # fmt: skip
    spec = task_spec(item, b"\0asm\1\0\0\0", max_attempts=4, proplet_id="p-1")
    assert spec["name"] == "fib" and spec["inputs"] == [27] and spec["proplet_id"] == "p-1"
    assert spec["limits"] == {"fuel": 1000, "timeout_s": 5.0, "memory_bytes": 65536}
    assert spec["memory_bytes"] == 65536 and spec["max_attempts"] == 4


def test_schedule_orders_every_task_of_every_item() -> None:
    a = WorkloadItem("a", "add", "add", at=1.0, count=3, every=1.0)
    b = WorkloadItem("b", "add", "add", at=1.5, count=2, rate=2.0)
    assert [(s.name, s.at) for s in schedule([a, b])] == [
        ("a-1", 1.0), ("b-1", 1.5), ("a-2", 2.0), ("b-2", 2.0), ("a-3", 3.0)]  # fmt: skip


def test_load_module_names_a_bad_path(tmp_path) -> None:
    bad = tmp_path / "broken.wat"
    bad.write_text("(module (func", encoding="utf-8")
    with pytest.raises(WorkloadError, match=r"broken\.wat is not valid WAT"):
        load_module(str(bad))
    assert load_module("add")[:4] == b"\0asm"


# ---------------------------------------------------------------------------------------------- observer
def test_parse_line_reads_the_managers_json_after_time_and_logger() -> None:
    event = '{"event": "proplet_dead", "proplet_id": "p", "reason": "x"}'
    line = f"2026-01-01 12:00:00,123 propeller.manager {event}"
    assert parse_line(line) == {"event": "proplet_dead", "proplet_id": "p", "reason": "x"}
    assert parse_line("Traceback (most recent call last):") is None
    assert parse_line("2026 x {not json") is None


def test_observer_keeps_log_events_of_a_task_until_it_is_registered() -> None:
    trace = Trace("t")
    clock = iter([1.0, 1.1, 1.2, 2.0])
    obs = ManagerObserver(trace, now=lambda: next(clock), proplet_names={"p-1": "esp-1"})
    obs.on_line('x propeller.manager {"event": "proplet_alive", "proplet_id": "p-1"}')
    obs.on_line(
        'x propeller.manager {"event": "task_dispatched", "task_id": "T", "proplet_id": "p-1", "attempt": 1}'
    )
    obs.register("T", TaskRef("fib-1", "fib"), 1.15)
    obs.on_line(
        'x propeller.manager {"event": "task_finished", "task_id": "T", "state": "Completed", '
        '"proplet_id": "p-1"}'
    )
    history = trace.tasks()["fib-1"]
    assert [e.data["state"] for e in history.events] == ["Pending", "Running", "Completed"]
    assert history.runs[0].data["device"] == "esp-1" and obs.alive("esp-1")
    # The API says Failed with an error the log did not carry: reconcile makes it the final word.
    changed = obs.reconcile(
        [{"id": "T", "state": 4, "error": "out of memory: need 1 bytes", "proplet_id": "p-1"}], 9.0
    )
    assert changed == 1 and trace.tasks()["fib-1"].final_state == "Failed"
    assert obs.reconcile([{"id": "T", "state": 4, "error": "out of memory: need 1 bytes"}], 9.5) == 0
    obs.closed = True
    obs.on_line('x propeller.manager {"event": "proplet_dead", "proplet_id": "p-1", "reason": "teardown"}')
    assert obs.alive("esp-1")
