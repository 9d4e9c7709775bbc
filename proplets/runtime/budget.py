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

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"BudgetConfig.{name} must be a non-negative int, got {value!r}")

    def instance_cost(self, module_bytes: int, memory_pages: int) -> int:
        return (
            module_bytes
            + memory_pages * PAGE_BYTES
            + self.wasm_stack_bytes
            + self.app_heap_bytes
            + self.exec_env_bytes
            + self.thread_stack_bytes
        )


# upstream's examples/esp32s3-wasm-benchmark-zephyr (§10): 192 KiB malloc arena
# (CONFIG_COMMON_LIBC_MALLOC_ARENA_SIZE=196608), WASM_STACK_KB 4 used for stack and exec env,
# heap 0 (WASM_HEAP_KB is not passed), 4 KiB static thread stack per instance (BENCH_THREAD_STACK_SIZE),
# MAX_INSTANCES 24.
ESP32S3_ZEPHYR_BENCH = BudgetConfig(
    heap_bytes=196_608,
    wasm_stack_bytes=4 * KiB,
    app_heap_bytes=0,
    exec_env_bytes=4 * KiB,
    thread_stack_bytes=4 * KiB,
    max_instances=24,
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

    @property
    def used_bytes(self) -> int:
        return sum(self._instances.values())

    @property
    def free_bytes(self) -> int:
        return self.config.heap_bytes - self.used_bytes

    @property
    def instances(self) -> int:
        return len(self._instances)

    def admit(self, module_bytes: int, memory_pages: int) -> Admission | Refusal:
        if module_bytes < 0 or memory_pages < 0:
            raise ValueError(
                f"module_bytes and memory_pages must be >= 0, got {module_bytes}, {memory_pages}"
            )
        cost = self.config.instance_cost(module_bytes, memory_pages)
        free = self.free_bytes
        if len(self._instances) >= self.config.max_instances:
            return Refusal(f"instance limit reached ({self.config.max_instances} instances)", cost, free)
        if cost > free:
            return Refusal(
                f"out of device memory: instance needs {cost} bytes, {free} of {self.config.heap_bytes} free",
                cost,
                free,
            )
        instance_id = self._next_id
        self._next_id += 1
        self._instances[instance_id] = cost
        return Admission(instance_id, cost, free - cost)

    def release(self, admission: Admission | int) -> None:
        instance_id = admission.instance_id if isinstance(admission, Admission) else admission
        if self._instances.pop(instance_id, None) is None:
            raise KeyError(f"instance {instance_id} is not admitted")
