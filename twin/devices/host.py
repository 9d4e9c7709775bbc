"""Linux host proplet model (constants only for now): a gateway-class machine running the Python proplet
on wasmtime. Used by the fleet for the "host" device kind; the device process comes later."""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024


@dataclass(frozen=True)
class HostSpec:
    """Constants of a small edge host (a Raspberry Pi 4-class board). All are inferences: the
    reference describes no host proplet hardware, only the Rust proplet's behaviour (§8)."""

    memory_bytes: int = 2048 * MiB  # RAM announced in discovery (inference: 2 GB Pi 4)
    wasm_memory_budget_bytes: int = 1024 * MiB  # what the proplet lets instances use (inference)
    cores: int = 4  # Cortex-A72 quad core (inference)
    cpu_hz: int = 1_500_000_000  # 1.5 GHz (inference)
    cycles_per_op: float = 1.5  # wasmtime (Cranelift JIT): close to native (inference)
    boot_s: float = 20.0  # Linux boot to the proplet's first CONNECT (inference)
    mqtt_connect_median_s: float = 0.02  # wired LAN (inference)
    heartbeat_s: float = 10.0  # reference §1 table: Rust proplet PROPLET_LIVELINESS_INTERVAL default 10 s
    max_instances: int = 64  # inference: bounded by memory long before this

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"HostSpec.{name} must be a positive number, got {value!r}")

    def execution_seconds(self, fuel: int) -> float:
        if fuel < 0:
            raise ValueError(f"fuel must be >= 0, got {fuel}")
        return fuel * self.cycles_per_op / self.cpu_hz


HOST = HostSpec()
