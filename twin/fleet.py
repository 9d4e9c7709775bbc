"""The simulated fleet of a scenario and the device faults of its timeline.

``Fleet`` builds one ``SimDevice`` per device of the scenario (a ``LinkProxy`` in front of it when its
group names a link profile or a ``link`` fault aims at it), staggers their power-on with the seeded rng,
and injects device faults at their times. ``wifi_flap`` (repeated drops), ``brownout`` (a short power
loss) and ``random`` (seeded picks over a window, ``random_faults``) are composed here; fleet-wide
faults (broker restart, manager kill) go to the runner's ``on_fleet_fault``. Every fault leaves
``fault`` start/end events in the trace, per device.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from twin.device import DeviceConfig, Shared, SimDevice, esp_spec, shutdown_all
from twin.devices.host import HOST
from twin.links import CLEAN, LinkProfile, LinkProxy
from twin.scenario.spec import FaultSpec, Scenario

BROWNOUT_S = 0.2  # a supply dip: the chip resets, power is back at once (README: default 0.2 s)
RECOVERY_S = 3.0  # after a random fault a device is left alone this long to boot and reconnect


@dataclass(frozen=True)
class Pick:
    """One fault drawn by a ``random`` fault: when, what, where, for how long."""

    at: float
    kind: str
    device: str
    down: float


def random_faults(spec: FaultSpec, population: Sequence[str], rng: random.Random) -> list[Pick]:
    """Poisson arrivals at ``rate`` per second over [at, at + duration); each picks a kind, a device
    not still recovering from an earlier pick, and a down time in [down_min, down_max]."""
    rate = float(spec.params["rate"])
    kinds = list(spec.params["kinds"])
    lo = float(spec.params.get("down_min", 0.5))
    hi = float(spec.params.get("down_max", max(lo, 4.0)))
    end = spec.at + (spec.duration or 0.0)
    busy: dict[str, float] = {}
    picks: list[Pick] = []
    t = spec.at
    while population and rate > 0:
        t += rng.expovariate(rate)
        if t >= end:
            break
        kind = rng.choice(kinds)
        down = rng.uniform(lo, hi)
        free = [d for d in population if busy.get(d, -1.0) <= t]
        if not free:
            continue
        device = rng.choice(free)
        busy[device] = t + down + RECOVERY_S
        picks.append(Pick(t, kind, device, down))
    return picks


def proplet_id(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


class Fleet:
    def __init__(self, scenario: Scenario, shared: Shared, broker_host: str, broker_port: int, domain: str,
                 on_fleet_fault: Callable[[FaultSpec], None]) -> None:  # fmt: skip
        self.scenario = scenario
        self.shared = shared
        self.env = shared.env
        self.trace = shared.trace
        self.broker = (broker_host, broker_port)
        self.domain = domain
        self.on_fleet_fault = on_fleet_fault
        self.devices: dict[str, SimDevice] = {}
        self.links: dict[str, LinkProxy] = {}
        self.link_profiles: dict[str, LinkProfile] = {}
        self.faults_injected = 0

    @property
    def proplet_names(self) -> dict[str, str]:
        return {d.config.proplet_id: name for name, d in self.devices.items()}

    async def start(self) -> None:
        s = self.scenario
        ids = s.rng("proplet-ids")
        link_faulted = self._link_fault_targets()
        for index, group in enumerate(s.fleet):
            if group.kind == "board":
                raise ValueError(
                    f"fleet[{index}]: kind 'board' (port {group.port!r}) is not supported by the live runner "
                    "yet; use esp32s3 devices, or run boards with the hil tools"
                )
            for name in group.names():
                host, port = self.broker
                if group.link is not None or name in link_faulted:
                    profile = group.link.to_profile() if group.link is not None else CLEAN
                    proxy = LinkProxy(host, port, profile, rng=s.rng(f"link:{name}"))
                    await proxy.start()
                    self.links[name], self.link_profiles[name] = proxy, profile
                    host, port = "127.0.0.1", proxy.port
                spec = esp_spec(group) if group.kind != "host" else HOST
                config = DeviceConfig(name, group.kind, proplet_id(ids), self.domain, host, port, s.timers,
                                      spec, group.tags)  # fmt: skip
                self.devices[name] = SimDevice(config, self.shared, s.rng(f"device:{name}"))
        stagger = min(2.0, 0.004 * len(self.devices))
        boot = s.rng("boot")
        for device in self.devices.values():
            device.power_on(boot.uniform(0.0, stagger))
        for fault in s.faults:
            self.env.process(self._at(fault))

    def _link_fault_targets(self) -> set[str]:
        s = self.scenario
        out: set[str] = set()
        for spec in s.faults:
            if spec.kind == "link" and spec.target is not None:
                out |= {d.name for d in spec.target.resolve(s.devices(), s.rng(f"fault:{spec.line}"))}
        return out

    async def close(self) -> None:
        shutdown_all(list(self.devices.values()))
        await asyncio.gather(*(link.close() for link in self.links.values()), return_exceptions=True)

    # ------------------------------------------------------------------ faults
    def _targets(self, spec: FaultSpec) -> list[str]:
        s = self.scenario
        if spec.target is None:
            return [d.name for d in s.devices()]
        return [d.name for d in spec.target.resolve(s.devices(), s.rng(f"fault:{spec.line}"))]

    def _at(self, spec: FaultSpec) -> Any:
        yield self.env.timeout(max(0.0, spec.at - self.env.now))
        if spec.kind in ("broker_restart", "manager_kill"):
            self.on_fleet_fault(spec)
        elif spec.kind == "random":
            picks = random_faults(spec, self._targets(spec), self.scenario.rng(f"random:{spec.line}"))
            self.trace.emit(self.env.now, "note", "fleet", text=f"random faults: {len(picks)} picks")
            for pick in picks:
                self.env.process(self._random(pick))
        elif spec.kind == "wifi_flap":
            for name in self._targets(spec):
                self.env.process(self._flap(name, spec))
        else:
            for name in self._targets(spec):
                self.inject(name, spec.kind, spec.duration, dict(spec.params))

    def _random(self, pick: Pick) -> Any:
        yield self.env.timeout(max(0.0, pick.at - self.env.now))
        duration = pick.down if pick.kind in ("power_loss", "wifi_drop", "out_of_memory") else None
        self.inject(pick.device, pick.kind, duration, {}, random=True)

    def _flap(self, name: str, spec: FaultSpec) -> Any:
        down, up, cycles = float(spec.params["down"]), float(spec.params["up"]), int(spec.params["cycles"])
        device = self.devices[name]
        self._mark(name, "wifi_flap", "start", spec.params)
        for i in range(cycles):
            device.wifi_drop(down)
            yield self.env.timeout(down + (up if i < cycles - 1 else 0.0))
        self._mark(name, "wifi_flap", "end", spec.params)

    def _mark(self, device: str, fault: str, phase: str, params: Any = None, **extra: Any) -> None:
        self.trace.emit(self.env.now, "fault", device, fault=fault, phase=phase, params=dict(params or {}),
                        **extra)  # fmt: skip

    def _end_after(self, device: str, fault: str, seconds: float | None, params: Any) -> None:
        if seconds is None:
            return
        self.env.timeout(seconds).callbacks.append(lambda _ev: self._mark(device, fault, "end", params))

    def inject(self, name: str, kind: str, duration: float | None, params: dict[str, Any],
               random: bool = False) -> None:  # fmt: skip
        """Apply one device fault now, with its trace events."""
        device = self.devices[name]
        self.faults_injected += 1
        shown = {**params, **({"duration": round(duration, 3)} if duration is not None else {})}
        extra = {"random": True} if random else {}
        if kind == "reboot" and params.get("only_if_running") and not device.jobs:
            self.env.process(self._reboot_when_running(name, shown))
            return
        self._mark(name, kind, "start", shown, **extra)
        if kind in ("power_loss", "brownout"):
            off = duration if kind == "power_loss" else (duration or BROWNOUT_S)
            device.power_loss(off)
            self._end_after(name, kind, off, shown)
        elif kind == "reboot":
            device.power_loss(0.0, state="rebooting")
            self._mark(name, kind, "end", shown)
        elif kind == "wifi_drop":
            device.wifi_drop(duration or 0.0)
            self._end_after(name, kind, duration or 0.0, shown)
        elif kind == "out_of_memory":
            reserve = params.get("reserve_bytes")
            taken = device.out_of_memory(int(reserve) if reserve else None, duration)
            self.trace.emit(self.env.now, "note", name, text=f"out_of_memory: {taken} bytes taken")
            self._end_after(name, kind, duration, shown)
        elif kind == "clock_skew":
            device.clock_offset = float(params.get("offset", 0.0))
            self._mark(name, kind, "end", shown)
        elif kind == "link":
            self._link(name, params, duration, shown)
        else:
            raise ValueError(f"fault kind {kind!r} cannot be injected into device {name}")

    def _link(self, name: str, params: dict[str, Any], duration: float | None, shown: Any) -> None:
        proxy = self.links.get(name)
        if proxy is None:
            raise ValueError(f"device {name} has no link proxy for a link fault")
        keys = {"latency": "latency_s", "jitter": "jitter_s", "loss": "loss", "blackhole": "blackhole",
                "bandwidth": "bandwidth_bps"}  # fmt: skip
        proxy.set_profile(
            replace(self.link_profiles[name], **{keys[k]: v for k, v in params.items() if k in keys})
        )
        if duration is not None:

            def restore(_ev: Any) -> None:
                proxy.set_profile(self.link_profiles[name])
                self._mark(name, "link", "end", shown)

            self.env.timeout(duration).callbacks.append(restore)

    def _reboot_when_running(self, name: str, shown: Any) -> Any:
        device = self.devices[name]
        while not device.jobs:
            yield self.env.timeout(0.05)
        self.inject(name, "reboot", None, {k: v for k, v in shown.items() if k != "only_if_running"})
