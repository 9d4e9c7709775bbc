"""A WAMR-like memory budget for embedded proplets (sans-I/O).

Used by the twin's esp32s3 device model and by the embedded profile of the Python proplet to decide,
before instantiating, whether one more Wasm instance fits the device heap. The cost model follows what
upstream's firmware allocates per instance (reference §9.2, §10):

    cost = module bytes (WAMR keeps a loaded copy per app slot)
         + declared minimum linear memory pages × 64 KiB (WAMR allocates the initial memory eagerly)
         + wasm operand/call stack          (`wasm_runtime_instantiate(.., stack, ..)`)
         + app heap                         (`wasm_runtime_instantiate(.., .., heap)`)
         + exec env stack                   (`wasm_runtime_create_exec_env(inst, size)`)
         + native thread stack              (when each instance runs on its own thread)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from proplets.runtime.wasmbin import PAGE_BYTES

KiB = 1024


@dataclass(frozen=True)
class BudgetConfig:
    """Heap and per-instance constants. Defaults are upstream embed-proplet's (reference §9.2/§9.4)."""

    heap_bytes: int = 64 * KiB  # CONFIG_HEAP_MEM_POOL_SIZE=65536 in embed-proplet/prj.conf (§9.4)
    wasm_stack_bytes: int = 16 * KiB  # wasm_runtime_instantiate(module, 16*1024, ..) in wasm_handler.c
    app_heap_bytes: int = 16 * KiB  # wasm_runtime_instantiate(.., .., 16*1024) in wasm_handler.c
    exec_env_bytes: int = 16 * KiB  # wasm_runtime_create_exec_env(inst, 16*1024) in wasm_handler.c
    thread_stack_bytes: int = 0  # embed-proplet runs wasm on the MQTT thread: no stack per instance
    max_instances: int = 10  # MAX_WASM_APPS 10 in wasm_handler.c
    # Free during instantiation only (a temporary exec env and its stack): must fit, is not kept.
    spawn_transient_bytes: int = 0
    # One loaded module shared by all its instances (charged once, module_load_percent of its bytes,
    # while any instance lives), instead of a copy per instance.
    shared_module: bool = False
    module_load_percent: int = 100

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            if name == "shared_module":
                if not isinstance(value, bool):
                    raise ValueError(f"BudgetConfig.shared_module must be a bool, got {value!r}")
            elif not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"BudgetConfig.{name} must be a non-negative int, got {value!r}")

    def module_cost(self, module_bytes: int) -> int:
        """Bytes a shared module takes once loaded, while any instance of it lives (0 when not shared)."""
        return math.ceil(module_bytes * self.module_load_percent / 100) if self.shared_module else 0

    def instance_cost(self, module_bytes: int, memory_pages: int) -> int:
        """Bytes one instance keeps (a shared module's bytes are charged once: ``module_cost``)."""
        return (
            (0 if self.shared_module else module_bytes)
            + memory_pages * PAGE_BYTES
            + self.wasm_stack_bytes
            + self.app_heap_bytes
            + self.exec_env_bytes
            + self.thread_stack_bytes
        )


# upstream's examples/esp32s3-wasm-benchmark-zephyr (§10), the one set of constants the twin's esp32s3
# profile (twin/devices/esp32s3.py) and the embedded proplet both admit with: a 192 KiB malloc arena
# (CONFIG_COMMON_LIBC_MALLOC_ARENA_SIZE=196608) less WAMR's runtime and native tables (~10 KiB,
# inference); per instance the 4 KiB wasm stack (WASM_STACK_KB 4), the exec env structure (~1 KiB) and
# the module instance (~1 KiB; inference); heap 0 (WASM_HEAP_KB is not passed); thread stacks static
# (K_THREAD_STACK_ARRAY_DEFINE: not from the arena); MODE_SHARED_MODULE (the module loaded once: its
# bytes and WAMR's loaded form, ~2x, inference); a temporary 4 KiB exec env during instantiation
# (the log's heap - min shows it); MAX_INSTANCES 24.
ZEPHYR_BENCH_ARENA_BYTES = 196_608
WAMR_BASELINE_BYTES = 10 * KiB
WAMR_EXEC_ENV_BYTES = 1 * KiB  # the WASMExecEnv structure and its bookkeeping
WAMR_INSTANCE_BYTES = 1 * KiB  # module instance: globals, tables, function instances
ESP32S3_ZEPHYR_BENCH = BudgetConfig(
    heap_bytes=ZEPHYR_BENCH_ARENA_BYTES - WAMR_BASELINE_BYTES,
    wasm_stack_bytes=4 * KiB,
    app_heap_bytes=0,
    exec_env_bytes=WAMR_EXEC_ENV_BYTES + WAMR_INSTANCE_BYTES,
    thread_stack_bytes=0,
    max_instances=24,
    spawn_transient_bytes=4 * KiB + 512,
    shared_module=True,
    module_load_percent=200,
)
# The removed ESP-IDF benchmark README's illustrative figures (§10, expectations, not measurements):
# ~412 KB free internal DRAM, 4 KB wasm stack + 8 KB heap + 6 KB task stack + 8 KB overhead per instance.
ESP32S3_IDF_SRAM = BudgetConfig(
    heap_bytes=412 * KiB,
    wasm_stack_bytes=4 * KiB,
    app_heap_bytes=8 * KiB,
    exec_env_bytes=8 * KiB,
    thread_stack_bytes=6 * KiB,
    max_instances=100,
)
EMBED_PROPLET = BudgetConfig()


@dataclass(frozen=True)
class Admission:
    instance_id: int
    cost_bytes: int
    free_bytes_after: int


@dataclass(frozen=True)
class Refusal:
    reason: str
    cost_bytes: int
    free_bytes: int


@dataclass
class DeviceBudget:
    """Tracks admitted instances against the heap. Pure bookkeeping: no allocation happens here."""

    config: BudgetConfig = field(default_factory=BudgetConfig)
    _instances: dict[int, int] = field(default_factory=dict)
    _next_id: int = 1
    reserved_bytes: int = 0  # taken away from instances (an injected leak: reserve/unreserve)
    # shared modules loaded now: key -> [instances using it, bytes]; instance id -> its module key
    _modules: dict[str, list[int]] = field(default_factory=dict)
    _module_of: dict[int, str] = field(default_factory=dict)

    @property
    def used_bytes(self) -> int:
        if not self._instances and not self._modules:
            return 0  # idle (most devices of a fleet, most of the time): read after every message
        return sum(self._instances.values()) + sum(b for _, b in self._modules.values())

    @property
    def free_bytes(self) -> int:
        return self.config.heap_bytes - self.used_bytes - self.reserved_bytes

    @property
    def instances(self) -> int:
        return len(self._instances)

    def admit(
        self, module_bytes: int, memory_pages: int, module_key: str | None = None
    ) -> Admission | Refusal:
        """Admit one more instance, or say why not. ``module_key`` names the module (a shared module's
        bytes are charged with its first instance and given back with its last)."""
        if module_bytes < 0 or memory_pages < 0:
            raise ValueError(
                f"module_bytes and memory_pages must be >= 0, got {module_bytes}, {memory_pages}"
            )
        cfg = self.config
        key = module_key if module_key is not None else f"<{module_bytes} bytes>"
        load = cfg.module_cost(module_bytes) if key not in self._modules else 0
        cost = cfg.instance_cost(module_bytes, memory_pages)
        free = self.free_bytes
        if len(self._instances) >= cfg.max_instances:
            return Refusal(f"instance limit reached ({cfg.max_instances} instances)", cost + load, free)
        if cost + load + cfg.spawn_transient_bytes > free:
            return Refusal(
                f"out of device memory: instance needs {cost + load} bytes, {free} of {cfg.heap_bytes} free",
                cost + load,
                free,
            )
        instance_id = self._next_id
        self._next_id += 1
        self._instances[instance_id] = cost
        if cfg.shared_module:
            entry = self._modules.setdefault(key, [0, load])
            entry[0] += 1
            self._module_of[instance_id] = key
        return Admission(instance_id, cost + load, free - cost - load)

    def release(self, admission: Admission | int) -> None:
        instance_id = admission.instance_id if isinstance(admission, Admission) else admission
        if self._instances.pop(instance_id, None) is None:
            raise KeyError(f"instance {instance_id} is not admitted")
        key = self._module_of.pop(instance_id, None)
        if key is not None:
            entry = self._modules[key]
            entry[0] -= 1
            if entry[0] == 0:
                del self._modules[key]
