"""ESP32-S3 device model: the calibration envelope, OOM refusals, processor sharing, timing draws."""

from __future__ import annotations

import random

import pytest

from proplets.runtime.budget import DeviceBudget
from twin.devices import DEVICE_KINDS, device_kind
from twin.devices.esp32s3 import (
    ESP32S3,
    ESP32S3_ESP_IDF,
    ESP32S3_PSRAM,
    PROFILES,
    UPSTREAM_FAILURES,
    CpuModel,
    Esp32S3Spec,
    Instance,
    MemoryModel,
    TimingModel,
    execution_seconds,
    simulate_ramp,
    spec_from_mapping,
)

CPU_MODULE = 120  # bytes of a cpu_stress-like module with no linear memory
MEM_MODULE = 200  # bytes of a `(memory 1 1)` module


def fill(model: MemoryModel, module: int, pages: int) -> tuple[int, str]:
    admitted = 0
    while True:
        result = model.admit(module, pages)
        if isinstance(result, str):
            return admitted, result
        admitted += 1
        assert admitted < 10_000


def test_24_cpu_bound_instances_fit_with_memory_still_free() -> None:
    # The Zephyr benchmark's headline: its ramp stops at MAX_INSTANCES, not for want of memory.
    model = MemoryModel(ESP32S3)
    assert model.total_bytes == 196_608  # the benchmark's malloc arena
    for _ in range(24):
        assert isinstance(model.admit(CPU_MODULE, 0, module_key="cpu_stress"), Instance)
    assert model.free_bytes > 32 * 1024  # documented: ≈37 KiB of the arena left
    refusal = model.admit(CPU_MODULE, 0, module_key="cpu_stress")
    assert refusal == "proplet busy: 24/24 instances running"  # the benchmark's MAX_INSTANCES
    ramp = simulate_ramp(ESP32S3, CPU_MODULE, 0)
    assert (ramp.peak, ramp.stop) == (24, "max_instances") and ramp.free_bytes == model.free_bytes


def test_memory_heavy_modules_hit_the_limit_after_a_handful() -> None:
    model = MemoryModel(ESP32S3)
    admitted, reason = fill(model, MEM_MODULE, 1)
    assert admitted == 2  # §10: "about 2 instances" against the 192 KiB arena
    cost = ESP32S3.instance_cost(MEM_MODULE, 1)
    assert reason == f"out of memory: need {cost} bytes, free {model.free_bytes} bytes"
    assert model.free_bytes < cost
    assert simulate_ramp(ESP32S3, MEM_MODULE, 1).stop == "SPAWN_FAIL"


def test_a_shared_module_is_charged_once_and_freed_with_its_last_instance() -> None:
    model = MemoryModel(ESP32S3)
    free = model.free_bytes
    first = model.admit(1000, 0, module_key="m")
    second = model.admit(1000, 0, module_key="m")
    assert isinstance(first, Instance) and isinstance(second, Instance)
    assert first.cost_bytes == ESP32S3.instance_cost(1000, 0) + 2000  # module loaded: its bytes × 2
    assert second.cost_bytes == ESP32S3.instance_cost(1000, 0) == 6 * 1024
    model.release(first)
    model.release(second)
    assert model.free_bytes == free


def test_the_esp_idf_profile_keeps_the_readme_figures() -> None:
    s = PROFILES["esp32s3-esp-idf"]
    assert s is ESP32S3_ESP_IDF and s.heap_bytes == 412 * 1024
    assert s.instance_cost(0, 0) == 26 * 1024  # 4 KB stack + 8 KB heap + 6 KB task stack + 8 KB overhead
    assert simulate_ramp(s, CPU_MODULE, 0).peak == 15  # "Peak: 15 concurrent WASM instances"


def test_psram_reproduces_the_readme_expectation_of_100_plus_instances() -> None:
    admitted, reason = fill(MemoryModel(ESP32S3_PSRAM), CPU_MODULE, 0)
    assert admitted >= 100
    assert reason.startswith("out of memory: need")


def test_a_profile_file_overrides_a_named_base() -> None:
    spec = spec_from_mapping({"base": "esp32s3", "instance_overhead_bytes": 2048, "fit": {}}, "p.yaml")
    assert spec.instance_overhead_bytes == 2048 and spec.free_dram_bytes == ESP32S3.free_dram_bytes
    with pytest.raises(ValueError, match=r"p\.yaml: unknown key 'heap'"):
        spec_from_mapping({"heap": 1}, "p.yaml")
    with pytest.raises(ValueError, match=r"p\.yaml: base must be one of esp32s3, esp32s3-esp-idf"):
        spec_from_mapping({"base": "esp8266"}, "p.yaml")
    with pytest.raises(ValueError, match=r"p\.yaml: Esp32S3Spec\.cores"):
        spec_from_mapping({"cores": -1}, "p.yaml")


def test_instance_cost_is_the_documented_sum() -> None:
    s = ESP32S3_ESP_IDF  # a module per instance: its bytes are part of each instance's cost
    assert s.instance_cost(1000, 2) == (1000 + 2 * 65536 + s.wasm_stack_bytes + s.exec_env_bytes
                                        + s.instance_overhead_bytes + s.thread_stack_bytes + s.app_heap_bytes)


def test_the_model_and_the_proplet_budget_agree() -> None:
    budget = DeviceBudget(ESP32S3_ESP_IDF.budget_config())
    model = MemoryModel(ESP32S3_ESP_IDF)
    for _ in range(3):
        b = budget.admit(MEM_MODULE, 1)
        m = model.admit(MEM_MODULE, 1)
        assert isinstance(m, Instance)
        assert b.cost_bytes == m.cost_bytes
    assert budget.free_bytes == model.free_bytes


def test_release_gives_memory_back_and_unknown_release_fails() -> None:
    model = MemoryModel(ESP32S3)
    free = model.free_bytes
    inst = model.admit(MEM_MODULE, 1)
    assert isinstance(inst, Instance)
    assert model.free_bytes == free - inst.cost_bytes
    model.release(inst)
    assert model.free_bytes == free
    with pytest.raises(KeyError):
        model.release(inst)


def test_reserve_simulates_a_leak_until_unreserved() -> None:
    model = MemoryModel(ESP32S3)
    model.reserve()
    assert model.free_bytes == 0
    assert str(model.admit(CPU_MODULE, 0)).startswith("out of memory: need")
    model.unreserve()
    assert isinstance(model.admit(CPU_MODULE, 0), Instance)


def test_capacity_matches_what_admission_allows() -> None:
    model = MemoryModel(ESP32S3_ESP_IDF)
    assert model.capacity(MEM_MODULE, 1) == fill(MemoryModel(ESP32S3_ESP_IDF), MEM_MODULE, 1)[0] == 4
    assert MemoryModel(ESP32S3).capacity(CPU_MODULE, 0) == 24


def test_bad_spec_values_are_named() -> None:
    with pytest.raises(ValueError, match=r"Esp32S3Spec\.cores"):
        Esp32S3Spec(cores=-1)
    with pytest.raises(ValueError, match="wamr_heap_in_psram"):
        Esp32S3Spec(wamr_heap_in_psram=True)


def test_execution_time_from_fuel_and_named_workloads() -> None:
    assert execution_seconds(ESP32S3, fuel=24_000_000) == pytest.approx(1.0)  # 10 cycles/op at 240 MHz
    assert 0.001 < execution_seconds(ESP32S3, workload="cpu_stress") < 0.05
    with pytest.raises(ValueError, match="unknown workload 'nope'"):
        execution_seconds(ESP32S3, workload="nope")
    with pytest.raises(ValueError, match="exactly one"):
        execution_seconds(ESP32S3)


def test_two_jobs_on_two_cores_run_at_full_speed() -> None:
    cpu = CpuModel(ESP32S3)
    cpu.start("a", 1.0, 0.0)
    cpu.start("b", 2.0, 0.0)
    assert cpu.next_completion() == pytest.approx(1.0)
    assert cpu.advance(1.0) == ["a"]
    assert cpu.advance(2.0) == ["b"]


def test_four_jobs_share_two_cores() -> None:
    cpu = CpuModel(ESP32S3)
    for i in range(4):
        cpu.start(f"j{i}", 1.0, 0.0)
    assert cpu.rate() == 0.5
    assert cpu.next_completion() == pytest.approx(2.0)  # each gets half a core
    assert sorted(cpu.advance(2.0)) == ["j0", "j1", "j2", "j3"]


def test_a_late_job_slows_the_others_down() -> None:
    cpu = CpuModel(ESP32S3)
    cpu.start("a", 1.0, 0.0)
    cpu.start("b", 1.0, 0.0)
    cpu.start("c", 1.0, 0.5)  # from 0.5 three jobs share 2 cores: rate 2/3
    # a and b have 0.5 left at rate 2/3 -> 0.75 s more
    assert cpu.next_completion() == pytest.approx(1.25)
    assert sorted(cpu.advance(1.25)) == ["a", "b"]
    # c ran 0.5 of work by 1.25, alone afterwards at full speed
    assert cpu.next_completion() == pytest.approx(1.75)


def test_cpu_model_rejects_time_going_backwards() -> None:
    cpu = CpuModel(ESP32S3)
    cpu.advance(5.0)
    with pytest.raises(ValueError, match="backwards"):
        cpu.advance(4.0)


def test_timing_draws_are_reproducible_and_include_upstreams_dhcp_wait() -> None:
    a = TimingModel(ESP32S3, random.Random(7))
    b = TimingModel(ESP32S3, random.Random(7))
    draws_a = [a.boot(), a.wifi_association(), a.mqtt_connect()]
    assert draws_a == [b.boot(), b.wifi_association(), b.mqtt_connect()]
    assert all(d > 0 for d in draws_a)
    assert draws_a[1] > ESP32S3.dhcp_wait_s
    assert TimingModel(ESP32S3, random.Random(1), spread=0).boot() == ESP32S3.boot_s


def test_upstream_firmware_kind_switches_the_failures_on() -> None:
    kind = device_kind("upstream-firmware")
    assert kind.flags == UPSTREAM_FAILURES
    assert kind.flags.no_reconnect and kind.flags.blocking_execution
    assert not DEVICE_KINDS["esp32s3"].flags.no_reconnect
    with pytest.raises(ValueError, match="unknown device kind 'nope'"):
        device_kind("nope")
