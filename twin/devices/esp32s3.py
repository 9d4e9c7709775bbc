"""ESP32-S3 (Zephyr + WAMR) device model: memory, CPU and connection timing (sans-I/O).

The twin's device process asks this model three questions: does one more Wasm instance fit
(`MemoryModel`), when does a running task finish given everything else on the cores (`CpuModel`), and
how long do boot, Wi-Fi association and MQTT connect take (`TimingModel`). Nothing here sleeps or
touches a socket; randomness comes from an injected `random.Random`.

Profiles (`PROFILES`, a scenario's `profile:` key, `load_profile`):

- ``esp32s3`` (`ESP32S3`, the default): the configuration of upstream's Zephyr benchmark, which backs
  the headline (reference §10). WAMR allocates everything from a 192 KiB malloc arena
  (`CONFIG_COMMON_LIBC_MALLOC_ARENA_SIZE=196608`); the module is loaded once and shared by every
  instance; each instance gets an exec env with a 4 KiB wasm stack (`create_exec_env(.., 4 KiB)`), heap 0
  (`WASM_HEAP_KB` is never passed), and a 4 KiB thread stack that is *static*
  (`K_THREAD_STACK_ARRAY_DEFINE`), so not taken from the arena. What no source states (inference): the
  runtime's own allocations (~10 KiB), the exec env and module instance structures (~1 KiB each), a
  loaded module costing twice its bytes (the malloc'd copy + WAMR's loaded form). So an instance costs
  6 KiB + its linear memory, and `simulate_ramp` reproduces both headline results:
  24 CPU-bound instances (the benchmark's MAX_INSTANCES) with ≈37 KiB of the arena still free, and
  memory-heavy modules (`(memory 1 1)`, 64 KiB each) stopping at 2, the third refused (§10's own
  inference: "about 2").
- ``esp32s3-esp-idf`` (`ESP32S3_ESP_IDF`): the removed ESP-IDF benchmark README's illustrative figures
  (§10, expectations, not measurements): ~412 KB free internal DRAM, ≈26 KB per instance (4 KB wasm
  stack + 8 KB app heap + 6 KB task stack + 8 KB overhead), its module per instance: "Peak: 15".
- ``esp32s3-psram`` (`ESP32S3_PSRAM`): the ESP-IDF figures with WAMR's heap on 8 MB PSRAM ("100+").
- a calibrated profile: `propeller hil calibrate LOGS --write FILE.yaml` fits the benchmark's real output
  and writes a profile file (`base:` + field overrides) that a scenario names as ``profile: FILE.yaml``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any

from orchestrator.wire import refusals
from proplets.runtime.budget import (
    ESP32S3_ZEPHYR_BENCH,
    WAMR_BASELINE_BYTES,
    WAMR_EXEC_ENV_BYTES,
    WAMR_INSTANCE_BYTES,
    ZEPHYR_BENCH_ARENA_BYTES,
    BudgetConfig,
    DeviceBudget,
    Refusal,
)

KiB = 1024
MiB = 1024 * KiB

# Wasm operations per call of each upstream benchmark workload (§10 table, `wat/*.wat`). Inference:
# loop iterations × the instructions in each loop body, counted from the WAT descriptions.
WORKLOAD_OPS: Mapping[str, int] = MappingProxyType({
    "cpu_stress": 10_000 * 12,  # FNV-1a-style hash loop, 10 000 iterations
    "mem_stress": 100 * 1024 * 2 * 6,  # 100 rounds of write-then-read over 1024 bytes
    "msg_stress": 1000 * 14,  # 1000 ring-buffer produces with drains
    "add": 50_000 * 6,  # sum of 0..49 999
    "mul": 20_000 * 6,  # 20 000 multiplications
    "fib": 500 * 30 * 8,  # 500 × 30-step iterative Fibonacci
    "checksum": 100 * 4096 * 2 * 6,  # 100 rounds of writing and XOR-reading 4096 bytes
    "popcount": 50_000 * 12,  # Kernighan popcount for 0..49 999 (≈ 1.5 inner steps each)
})  # fmt: skip
# Linear memory pages of each workload (§10: `(memory 1 1)` in mem_stress, msg_stress, checksum).
WORKLOAD_PAGES: Mapping[str, int] = MappingProxyType({
    "cpu_stress": 0, "mem_stress": 1, "msg_stress": 1, "add": 0, "mul": 0, "fib": 0, "checksum": 1,
    "popcount": 0,
})  # fmt: skip
WORKLOAD_MODULE_BYTES = 200  # a workload's module as wat2wasm makes it: ~100-300 bytes (inference)
DIVERSE = ("add", "mul", "fib", "checksum", "popcount")  # §10 experiment 6, in sets of five


_BENCH = ESP32S3_ZEPHYR_BENCH


@dataclass(frozen=True)
class Esp32S3Spec:
    """Every constant of the model, with its source. "(inference)" marks what no source states.
    The defaults are the Zephyr benchmark's configuration (the ``esp32s3`` profile, module doc)."""

    sram_bytes: int = 512 * KiB  # Espressif ESP32-S3 datasheet: 512 KB internal SRAM
    psram_bytes: int = 0  # datasheet: optional in-package PSRAM, 2 MB or 8 MB (N8R8 devkits: 8 MB)
    wamr_heap_in_psram: bool = False  # WAMR's allocator on PSRAM instead of internal DRAM (option)
    # The memory constants come from the proplet engine's budget (`proplets.runtime.budget`,
    # `ESP32S3_ZEPHYR_BENCH`, where each is sourced); they stay fields so a profile can override them.
    free_dram_bytes: int = ZEPHYR_BENCH_ARENA_BYTES  # §10: the benchmark's malloc arena (WAMR's heap)
    wamr_baseline_bytes: int = WAMR_BASELINE_BYTES  # WAMR runtime init + native symbol tables
    wasm_stack_bytes: int = _BENCH.wasm_stack_bytes  # §10: WASM_STACK_KB 4, the exec env's wasm stack
    exec_env_bytes: int = WAMR_EXEC_ENV_BYTES  # the WASMExecEnv structure and its bookkeeping
    instance_overhead_bytes: int = WAMR_INSTANCE_BYTES  # module instance: globals, tables, functions
    app_heap_bytes: int = _BENCH.app_heap_bytes  # §10: WASM_HEAP_KB is never passed: heap 0
    thread_stack_bytes: int = _BENCH.thread_stack_bytes  # §10: static thread stacks, not from the arena
    shared_module: bool = _BENCH.shared_module  # §10: MODE_SHARED_MODULE, one module for every instance
    module_load_factor: float = _BENCH.module_load_percent / 100  # a loaded module: its bytes × this
    spawn_transient_bytes: int = _BENCH.spawn_transient_bytes  # a temporary exec env while instantiating
    max_instances: int = _BENCH.max_instances  # §10: MAX_INSTANCES 24 in bench.c
    cpu_hz: int = 240_000_000  # datasheet: Xtensa LX7 up to 240 MHz
    cores: int = 2  # datasheet: dual-core
    interpreter_cycles_per_op: float = 10.0  # WAMR fast interpreter on Xtensa, cycles per Wasm op
    # (inference: WAMR reports fast-interp ≈ 5-15× slower than AOT, AOT ≈ 1 op/cycle)
    boot_s: float = 0.35  # ROM + 2nd-stage bootloader + Zephyr init to main() (inference)
    wifi_assoc_median_s: float = 1.5  # WPA2 association + 4-way handshake (inference)
    dhcp_wait_s: float = 5.0  # §9.1: upstream sleeps a fixed 5 s for DHCP after association
    wifi_retry_s: float = 3.0  # §9.1: retry 3 s after an association timeout
    mqtt_connect_median_s: float = 0.08  # TCP + CONNECT/CONNACK on a LAN (inference)
    mqtt_retry_s: float = 5.0  # §9.1: upstream retries MQTT connect every 5 s
    keepalive_s: int = 30  # §9.4: CONFIG_MQTT_KEEPALIVE=30
    heartbeat_s: float = 10.0  # §9.1: PROPLET_LIVELINESS_INTERVAL_MS = 10000

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            if isinstance(value, bool):
                continue
            if not isinstance(value, int | float) or value < 0 or math.isnan(value):
                raise ValueError(f"Esp32S3Spec.{name} must be a non-negative number, got {value!r}")
        if self.cores < 1 or self.cpu_hz <= 0:
            raise ValueError(f"Esp32S3Spec needs cores >= 1 and cpu_hz > 0, got {self.cores}, {self.cpu_hz}")
        if self.wamr_heap_in_psram and self.psram_bytes == 0:
            raise ValueError("Esp32S3Spec.wamr_heap_in_psram needs psram_bytes > 0")

    @property
    def heap_bytes(self) -> int:
        """Bytes WAMR may allocate from: free internal DRAM, or all of PSRAM when it hosts the heap."""
        return self.psram_bytes if self.wamr_heap_in_psram else self.free_dram_bytes

    def budget_config(self) -> BudgetConfig:
        """This profile as the proplet engine's budget (`proplets.runtime.budget`), which does every
        admission: the default profile gives exactly `ESP32S3_ZEPHYR_BENCH`."""
        return BudgetConfig(
            heap_bytes=max(0, self.heap_bytes - self.wamr_baseline_bytes),
            wasm_stack_bytes=self.wasm_stack_bytes,
            app_heap_bytes=self.app_heap_bytes,
            exec_env_bytes=self.exec_env_bytes + self.instance_overhead_bytes,
            thread_stack_bytes=self.thread_stack_bytes,
            max_instances=self.max_instances,
            spawn_transient_bytes=self.spawn_transient_bytes,
            shared_module=self.shared_module,
            module_load_percent=round(self.module_load_factor * 100),
        )

    def instance_cost(self, module_bytes: int, memory_pages: int) -> int:
        """Bytes one instance takes (a shared module's bytes are charged once, `module_cost`)."""
        return self.budget_config().instance_cost(module_bytes, memory_pages)

    def module_cost(self, module_bytes: int) -> int:
        """Bytes a shared module takes once loaded, while any instance of it lives (0 when not shared)."""
        return self.budget_config().module_cost(module_bytes)


ESP32S3 = Esp32S3Spec()
# The removed ESP-IDF benchmark README's figures (§10): 412 KB free DRAM, 4 KB wasm stack + 8 KB app
# heap + 6 KB task stack + 8 KB overhead (exec env + instance) per instance, a module per instance.
ESP32S3_ESP_IDF = Esp32S3Spec(
    free_dram_bytes=412 * KiB, wamr_baseline_bytes=8 * KiB, wasm_stack_bytes=4 * KiB, app_heap_bytes=8 * KiB,
    thread_stack_bytes=6 * KiB, exec_env_bytes=4 * KiB, instance_overhead_bytes=4 * KiB,
    shared_module=False, spawn_transient_bytes=0, max_instances=100,
)  # fmt: skip
# An N8R8 board with WAMR's heap on the 8 MB PSRAM (§10: "with 8 MB PSRAM, expect 100+ instances").
ESP32S3_PSRAM = replace(ESP32S3_ESP_IDF, psram_bytes=8 * MiB, wamr_heap_in_psram=True, max_instances=512)
PROFILES: Mapping[str, Esp32S3Spec] = MappingProxyType(
    {"esp32s3": ESP32S3, "esp32s3-esp-idf": ESP32S3_ESP_IDF, "esp32s3-psram": ESP32S3_PSRAM}
)


def spec_from_mapping(data: Mapping[str, Any], where: str) -> Esp32S3Spec:
    """A profile from ``{"base": "esp32s3", <Esp32S3Spec field>: value, ...}`` (a calibrated profile
    file's content); ValueError naming ``where`` and the key on any mistake."""
    base_name = data.get("base", "esp32s3")
    if base_name not in PROFILES:
        raise ValueError(f"{where}: base must be one of {', '.join(PROFILES)}, got {base_name!r}")
    known = {f.name: f for f in fields(Esp32S3Spec)}
    changes: dict[str, Any] = {}
    for key, value in data.items():
        if key in ("base", "name", "source", "fit"):  # descriptive keys a calibration writes
            continue
        if key not in known:
            raise ValueError(f"{where}: unknown key {key!r} (an Esp32S3Spec field, or base)")
        changes[key] = value
    try:
        return replace(PROFILES[base_name], **changes)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class Ramp:
    """What the benchmark's ramp would print: the peak, the arena free at the peak, why it stopped."""

    peak: int
    free_bytes: int
    stop: str  # "max_instances" | "SPAWN_FAIL"
    free_by_instances: tuple[int, ...]  # free bytes after 1, 2, ... instances


def simulate_ramp(spec: Esp32S3Spec, module_bytes: int, memory_pages: int,
                  cycle: Sequence[tuple[str, int, int]] = ()) -> Ramp:  # fmt: skip
    """The Zephyr benchmark's ramp on this model: add instances of one module until one is refused
    (SPAWN_FAIL) or MAX_INSTANCES run. ``cycle`` (key, module bytes, pages) instead adds its modules in
    turn, as the diverse experiment's sets of five do."""
    model = MemoryModel(spec)
    frees: list[int] = []
    modules = list(cycle) or [("bench", module_bytes, memory_pages)]
    while True:
        key, size, pages = modules[len(frees) % len(modules)]
        got = model.admit(size, pages, module_key=key)
        if isinstance(got, str):
            stop = "max_instances" if model.instances >= spec.max_instances else "SPAWN_FAIL"
            return Ramp(len(frees), model.free_bytes, stop, tuple(frees))
        frees.append(model.free_bytes)


@dataclass(frozen=True)
class FirmwareFlags:
    """Behaviours of the firmware that the device process switches on (reference §9.1, §9.3)."""

    no_reconnect: bool = False  # §9.3: after MQTT_EVT_DISCONNECT there is no reconnect path
    blocking_execution: bool = False  # §9.1: Wasm runs inside the MQTT callback: no pings, no alive
    no_target_filter: bool = False  # starts every task it hears, whatever proplet_id it names
    rejects_stop: bool = False  # a stop cannot interrupt a synchronous run


OUR_FIRMWARE = FirmwareFlags()
UPSTREAM_FAILURES = FirmwareFlags(
    no_reconnect=True, blocking_execution=True, no_target_filter=True, rejects_stop=True
)


@dataclass(frozen=True)
class Instance:
    instance_id: int
    cost_bytes: int


class MemoryModel:
    """Admits and releases Wasm instances against the device heap: the proplet engine's
    `proplets.runtime.budget.DeviceBudget` with this spec's `budget_config()` (for the default profile,
    exactly `ESP32S3_ZEPHYR_BENCH`), so the twin and the embedded proplet admit the same instances.
    Refusals are worded as `orchestrator.wire.refusals` (the manager re-places a refused task without
    spending an attempt)."""

    def __init__(self, spec: Esp32S3Spec = ESP32S3) -> None:
        self.spec = spec
        self._budget = DeviceBudget(spec.budget_config())

    @property
    def total_bytes(self) -> int:
        return self.spec.heap_bytes

    @property
    def free_bytes(self) -> int:
        return self._budget.free_bytes

    @property
    def used_bytes(self) -> int:
        return self.total_bytes - self.free_bytes

    @property
    def instances(self) -> int:
        return self._budget.instances

    def admit(self, module_bytes: int, memory_pages: int, module_key: str | None = None) -> Instance | str:
        """An `Instance`, or the refusal reason: "out of memory: need N bytes, free M bytes", or
        "proplet busy: N/M instances running". With a shared module (the profile's `shared_module`),
        `module_key` names the module: its bytes are charged when its first instance is admitted and
        given back with its last."""
        result = self._budget.admit(module_bytes, memory_pages, module_key)
        if isinstance(result, Refusal):
            if "instance limit" in result.reason:
                return refusals.busy_error(self.instances, self.spec.max_instances)
            return refusals.out_of_memory_error(result.cost_bytes, result.free_bytes)
        return Instance(result.instance_id, result.cost_bytes)

    def release(self, instance: Instance) -> None:
        self._budget.release(instance.instance_id)

    def reserve(self, nbytes: int | None = None) -> int:
        """Take `nbytes` (default: all that is free) away from instances, as a leak would; returns
        the bytes taken. `unreserve()` gives them back."""
        take = self.free_bytes if nbytes is None else min(nbytes, self.free_bytes)
        if take < 0:
            raise ValueError(f"reserve needs a non-negative byte count, got {nbytes}")
        self._budget.reserved_bytes += take
        return take

    def unreserve(self) -> None:
        self._budget.reserved_bytes = 0

    def capacity(self, module_bytes: int, memory_pages: int) -> int:
        """How many more instances of this module would fit now, its module already loaded (for
        reports and calibration)."""
        cost = self.spec.instance_cost(module_bytes, memory_pages)
        by_memory = self.free_bytes // cost if cost else self.spec.max_instances
        return max(0, min(by_memory, self.spec.max_instances - self.instances))


def execution_seconds(spec: Esp32S3Spec, *, fuel: int | None = None, workload: str | None = None) -> float:
    """CPU seconds on one core for a run of `fuel` Wasm operations or of a named §10 workload."""
    if (fuel is None) == (workload is None):
        raise ValueError("give exactly one of fuel= or workload=")
    if workload is not None:
        if workload not in WORKLOAD_OPS:
            raise ValueError(f"unknown workload {workload!r}; known: {', '.join(sorted(WORKLOAD_OPS))}")
        fuel = WORKLOAD_OPS[workload]
    assert fuel is not None
    if fuel < 0:
        raise ValueError(f"fuel must be >= 0, got {fuel}")
    return fuel * spec.interpreter_cycles_per_op / spec.cpu_hz


@dataclass
class _Job:
    remaining: float  # CPU seconds still to run at a full core


@dataclass
class CpuModel:
    """Processor sharing over the cores: n jobs on c cores each progress at min(1, c/n) of a core.
    Call `advance(now)` before any change; `next_completion()` says when to call it next."""

    spec: Esp32S3Spec = ESP32S3
    _jobs: dict[str, _Job] = field(default_factory=dict)
    _now: float = 0.0

    @property
    def running(self) -> int:
        return len(self._jobs)

    def rate(self) -> float:
        """Fraction of a core each running job gets."""
        return min(1.0, self.spec.cores / len(self._jobs)) if self._jobs else 1.0

    def advance(self, now: float) -> list[str]:
        """Move to `now`; return the jobs that finished by then, in finishing order."""
        if now < self._now:
            raise ValueError(f"time went backwards: {now} < {self._now}")
        done: list[str] = []
        while self._jobs and now > self._now:
            rate = self.rate()
            first = min(self._jobs.values(), key=lambda j: j.remaining).remaining
            step = min(now - self._now, first / rate)
            for job in self._jobs.values():
                job.remaining -= step * rate
            self._now += step
            finished = [k for k, j in self._jobs.items() if j.remaining <= 1e-12]
            for key in finished:
                del self._jobs[key]
            done += finished
        self._now = now
        return done

    def start(self, job_id: str, cpu_seconds: float, now: float) -> list[str]:
        """Add a job (advancing to `now` first); returns jobs that finished on the way."""
        if job_id in self._jobs:
            raise ValueError(f"job {job_id!r} is already running")
        if cpu_seconds < 0:
            raise ValueError(f"cpu_seconds must be >= 0, got {cpu_seconds}")
        done = self.advance(now)
        self._jobs[job_id] = _Job(cpu_seconds)
        return done

    def cancel(self, job_id: str, now: float) -> list[str]:
        done = self.advance(now)
        self._jobs.pop(job_id, None)
        return done

    def clear(self) -> None:
        """Drop every job (reboot, power loss)."""
        self._jobs.clear()

    def next_completion(self) -> float | None:
        if not self._jobs:
            return None
        return self._now + min(j.remaining for j in self._jobs.values()) / self.rate()


class TimingModel:
    """Connection-phase delays, drawn from an injected rng (log-normal around the spec's medians)."""

    def __init__(self, spec: Esp32S3Spec, rng: random.Random, *, spread: float = 0.3) -> None:
        if spread < 0:
            raise ValueError(f"spread must be >= 0, got {spread}")
        self.spec, self.rng, self.spread = spec, rng, spread

    def _around(self, median: float) -> float:
        return median * math.exp(self.rng.gauss(0.0, self.spread)) if median > 0 else 0.0

    def boot(self) -> float:
        return self._around(self.spec.boot_s)

    def wifi_association(self, upstream_dhcp_wait: bool = True) -> float:
        wait = self.spec.dhcp_wait_s if upstream_dhcp_wait else 0.0
        return self._around(self.spec.wifi_assoc_median_s) + wait

    def mqtt_connect(self) -> float:
        return self._around(self.spec.mqtt_connect_median_s)
