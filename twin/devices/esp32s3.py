"""ESP32-S3 (Zephyr + WAMR) device model: memory, CPU and connection timing (sans-I/O).

The twin's device process asks this model three questions: does one more Wasm instance fit
(`MemoryModel`), when does a running task finish given everything else on the cores (`CpuModel`), and
how long do boot, Wi-Fi association and MQTT connect take (`TimingModel`). Nothing here sleeps or
touches a socket; randomness comes from an injected `random.Random`.

Calibration (tests/unit/test_twin_esp32s3.py pins it). The heap WAMR allocates from is the
~412 KB of free internal DRAM that upstream's ESP-IDF benchmark README expects at start (reference §10).
Per-instance cost follows upstream's ≈26 KB estimate (4 KB wasm stack + 8 KB app heap + 6 KB task stack
+ 8 KB overhead) with the Zephyr benchmark's actual settings (§10: no app heap passed, 4 KiB thread
stacks, 4 KiB exec env): 4 KiB stack + 4 KiB exec env + 4 KiB thread stack + 4 KiB instance overhead
= 16 KiB + module bytes + linear memory. With the 8 KiB runtime baseline that gives:

- CPU-bound modules (no linear memory, ~100-byte module): 24 instances (the benchmark's MAX_INSTANCES)
  use ≈386 KiB and leave ≈18 KiB free;
- memory-heavy modules (`(memory 1 1)`, 64 KiB each): 5 instances fit, the 6th is refused;
- with 8 MB PSRAM as the WAMR heap: ≈100 memory-heavy instances, matching the README's "100+".
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from proplets.runtime.budget import Admission, BudgetConfig, DeviceBudget, Refusal

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


@dataclass(frozen=True)
class Esp32S3Spec:
    """Every constant of the model, with its source. "(inference)" marks what no source states."""

    sram_bytes: int = 512 * KiB  # Espressif ESP32-S3 datasheet: 512 KB internal SRAM
    psram_bytes: int = 0  # datasheet: optional in-package PSRAM, 2 MB or 8 MB (N8R8 devkits: 8 MB)
    wamr_heap_in_psram: bool = False  # WAMR's allocator on PSRAM instead of internal DRAM (option)
    free_dram_bytes: int = 412 * KiB  # §10: ESP-IDF benchmark README, "~412 KB free internal DRAM"
    wamr_baseline_bytes: int = 8 * KiB  # WAMR runtime init + native symbol tables (inference)
    wasm_stack_bytes: int = 4 * KiB  # §10: WASM_STACK_KB 4 in the Zephyr benchmark's main.c
    exec_env_bytes: int = 4 * KiB  # §10: create_exec_env(.., wasm_stack) with the same 4 KiB
    instance_overhead_bytes: int = 4 * KiB  # module instance, globals, tables: half of §10's "8 KB
    # overhead", whose other half is the exec env above (inference)
    app_heap_bytes: int = 0  # §10: WASM_HEAP_KB 8 is set but never passed; heap 0 is used
    thread_stack_bytes: int = 4 * KiB  # §10: BENCH_THREAD_STACK_SIZE 4*1024, one per instance
    max_instances: int = 24  # §10: MAX_INSTANCES 24 in bench.c
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
        """The same numbers as `proplets.runtime.budget`'s config, so there is one cost formula."""
        return BudgetConfig(
            heap_bytes=max(0, self.heap_bytes - self.wamr_baseline_bytes),
            wasm_stack_bytes=self.wasm_stack_bytes,
            app_heap_bytes=self.app_heap_bytes,
            exec_env_bytes=self.exec_env_bytes + self.instance_overhead_bytes,
            thread_stack_bytes=self.thread_stack_bytes,
            max_instances=self.max_instances,
        )

    def instance_cost(self, module_bytes: int, memory_pages: int) -> int:
        return self.budget_config().instance_cost(module_bytes, memory_pages)


ESP32S3 = Esp32S3Spec()
# An N8R8 board with WAMR's heap on the 8 MB PSRAM (§10: "with 8 MB PSRAM, expect 100+ instances").
ESP32S3_PSRAM = Esp32S3Spec(psram_bytes=8 * MiB, wamr_heap_in_psram=True, max_instances=512)


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
    """Admits and releases Wasm instances against the device heap. Delegates the arithmetic to
    `proplets.runtime.budget.DeviceBudget`, so the twin and the embedded Python proplet agree."""

    def __init__(self, spec: Esp32S3Spec = ESP32S3) -> None:
        self.spec = spec
        self._budget = DeviceBudget(spec.budget_config())
        self._reserved = 0  # bytes taken by an injected out-of-memory fault (a leak)

    @property
    def total_bytes(self) -> int:
        return self.spec.heap_bytes

    @property
    def free_bytes(self) -> int:
        return self._budget.free_bytes - self._reserved

    @property
    def used_bytes(self) -> int:
        return self.total_bytes - self.free_bytes

    @property
    def instances(self) -> int:
        return self._budget.instances

    def admit(self, module_bytes: int, memory_pages: int) -> Instance | str:
        """An `Instance`, or the refusal reason ("out of memory: need N bytes, free M bytes")."""
        cost = self.spec.instance_cost(module_bytes, memory_pages)
        if cost > self.free_bytes:
            return f"out of memory: need {cost} bytes, free {max(0, self.free_bytes)} bytes"
        result = self._budget.admit(module_bytes, memory_pages)
        if isinstance(result, Refusal):
            if "instance limit" in result.reason:
                return f"too many instances: {self.spec.max_instances} already running"
            return f"out of memory: need {result.cost_bytes} bytes, free {result.free_bytes} bytes"
        assert isinstance(result, Admission)
        return Instance(result.instance_id, result.cost_bytes)

    def release(self, instance: Instance) -> None:
        self._budget.release(instance.instance_id)

    def reserve(self, nbytes: int | None = None) -> int:
        """Take `nbytes` (default: all that is free) away from instances, as a leak would; returns
        the bytes taken. `unreserve()` gives them back."""
        take = self.free_bytes if nbytes is None else min(nbytes, self.free_bytes)
        if take < 0:
            raise ValueError(f"reserve needs a non-negative byte count, got {nbytes}")
        self._reserved += take
        return take

    def unreserve(self) -> None:
        self._reserved = 0

    def capacity(self, module_bytes: int, memory_pages: int) -> int:
        """How many more instances of this module would fit now (for reports and calibration)."""
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
