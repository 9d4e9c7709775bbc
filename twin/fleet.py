"""The simulated fleet of a scenario and the device faults of its timeline.

``Fleet`` builds one ``SimDevice`` per device of the scenario (a ``LinkProxy`` in front of it when its
group names a link profile or a ``link`` or silent fault — power loss, brownout, reboot — may hit it:
the proxy is what keeps a vanished device's connection open and mute towards the broker), staggers their
power-on with the seeded rng, and injects device faults at their times. ``wifi_flap`` (repeated drops),
``brownout`` (a short power loss) and ``random`` (seeded picks over a window, ``random_faults``) are
composed here; fleet-wide faults (broker restart, manager kill) go to the runner's ``on_fleet_fault``.
Every fault leaves ``fault`` start/end events in the trace, per device.

Boards (``kind: board``) are fleet members the runner opens over their serial console: ``Fleet`` gives
each a proplet id and, unless it is real hardware, a twin esp32s3 ``SimDevice`` behind a
``BoardDevice`` (its network side, powered by the board's console, never by the fleet). Faults aimed
at a board go to the runner's ``on_board_fault`` as board actions (``BOARD_FAULTS``).
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from twin.board_device import BoardDevice
from twin.device import DeviceConfig, Shared, SimDevice, esp_spec, shutdown_all
from twin.devices.host import HOST
from twin.identities import Credentials
from twin.links import CLEAN, LinkProfile
from twin.scenario.faults_schema import BOARD_ONLY_FAULTS
from twin.scenario.spec import FaultSpec, FleetGroup, Scenario
from twin.transport import LinkControl

# Faults after which the device's connection vanishes without a packet (design §7).
SILENT_FAULTS = frozenset({"power_loss", "brownout", "reboot"})
BROWNOUT_S = 0.2  # a supply dip: the chip resets, power is back at once (README: default 0.2 s)
RECOVERY_S = 3.0  # after a random fault a device is left alone this long to boot and reconnect
# Scenario fault kind -> what is done to a board: a reboot is the reset line, a brownout a power cycle
# (the hardware map's command on a rig), a power loss pulls the USB cable (back after its duration).
# Scenario fault kind -> board action. The board kinds say it directly; the device kinds map onto the
# nearest thing a rig can do to a real board.
BOARD_FAULTS = {
    "reset": "reset",
    "power_cycle": "power_cycle",
    "unplug": "unplug",
    "reboot": "reset",
    "brownout": "power_cycle",
    "power_loss": "unplug",
}
OnBoardFault = Callable[[str, str, float | None], None]  # (board, action in BOARD_FAULTS' values, down)


@dataclass(frozen=True)
class BoardMember:
    """A board of the scenario: where it is plugged and the proplet id it is provisioned with."""

    name: str
    port: str
    proplet_id: str
    device: BoardDevice | None  # the twin device behind a virtual board; None for real hardware


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


NOT_ENROLLED_PASSWORD = "not-enrolled"  # what an ``enrolled: false`` device dials the closed broker with


def proplet_id(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


class Fleet:
    def __init__(self, scenario: Scenario, shared: Shared, broker_host: str, broker_port: int, domain: str,
                 on_fleet_fault: Callable[[FaultSpec], None], *, on_board_fault: OnBoardFault | None = None,
                 real_port: Callable[[str], bool] = lambda port: False,
                 boards_as_devices: bool = False,
                 credentials: Callable[[str, str], Credentials] | None = None,
                 before_power_on: Callable[[], Awaitable[None]] | None = None) -> None:  # fmt: skip
        self.scenario = scenario
        # A closed broker: each device is enrolled (kind, proplet id) -> credentials, and the batch is
        # committed by ``before_power_on`` (twin/identities.py). None: devices connect anonymously.
        self.credentials = credentials
        self.before_power_on = before_power_on
        self.shared = shared
        self.env = shared.env
        self.trace = shared.trace
        self.broker = (broker_host, broker_port)
        self.domain = domain
        self.on_fleet_fault = on_fleet_fault
        self.on_board_fault = on_board_fault
        self.real_port = real_port  # does this board port name real hardware (the runner's hardware map)
        self.devices: dict[str, SimDevice] = {}
        self.boards: dict[str, BoardMember] = {}
        self.links: dict[str, LinkControl] = {}  # a LinkProxy live, a ModelLink in virtual time
        self.link_profiles: dict[str, LinkProfile] = {}
        self.faults_injected = 0
        # Virtual time has no serial consoles: a virtual board is then its network side, a twin esp32s3
        # device, and board faults act on it directly (reset = reboot, power_cycle = brownout, unplug =
        # power loss for the duration). Real hardware cannot run in virtual time.
        self.boards_as_devices = boards_as_devices
        self.modelled_boards: set[str] = set()

    @property
    def proplet_names(self) -> dict[str, str]:
        names = {d.config.proplet_id: name for name, d in self.devices.items()}
        return names | {b.proplet_id: name for name, b in self.boards.items()}

    @property
    def proplet_ids(self) -> dict[str, str]:
        """Device name -> proplet id, boards included: what the workload pins tasks with."""
        return {name: pid for pid, name in self.proplet_names.items()}

    def _with_credentials(self, config: DeviceConfig, enrolled: bool = True) -> DeviceConfig:
        if self.credentials is None:
            return config
        if not enrolled:  # ``enrolled: false``: a user name and password the closed broker never saw
            return replace(config, username=config.proplet_id, password=NOT_ENROLLED_PASSWORD)
        creds = self.credentials(config.kind, config.proplet_id)
        return replace(config, username=creds.username, password=creds.password,
                       signing_key=creds.signing_key)  # fmt: skip

    def _add_board(self, index: int, group: FleetGroup, name: str, pid: str) -> None:
        port = group.port
        if self.credentials is not None:
            self.credentials("board", pid)  # provisioned with the run's board key (hil api_key)
        if port is None:
            raise ValueError(f"fleet[{index}]: board {name} needs a 'port'")
        if self.on_board_fault is None:
            raise ValueError(f"fleet[{index}]: board {name}: this runner cannot open boards")
        device = None
        if not self.real_port(port):
            s = self.scenario
            # Host and port are the provisioning's to give: the device stays off until then.
            config = DeviceConfig(name, "esp32s3", pid, self.domain, *self.broker, s.timers, esp_spec(group),
                                  group.tags)  # fmt: skip
            sim = SimDevice(config, self.shared, s.rng(f"device:{name}"))
            device = BoardDevice(sim, asyncio.get_running_loop())
        else:
            self.trace.emit(self.env.now, "device", name, proplet_id=pid, device_kind="board")
        if port != "virtual" and any(b.port == port for b in self.boards.values()):
            raise ValueError(f"fleet[{index}]: board {name}: port {port!r} is already taken by another board")
        self.boards[name] = BoardMember(name, port, pid, device)

    async def start(self) -> None:
        s = self.scenario
        ids = s.rng("proplet-ids")
        link_faulted = self._proxied_targets()
        for index, group in enumerate(s.fleet):
            for name in group.names():
                if group.kind == "board" and not self.boards_as_devices:
                    self._add_board(index, group, name, proplet_id(ids))
                    continue
                kind = group.kind
                if kind == "board":
                    if group.port is None or self.real_port(group.port):
                        raise ValueError(f"fleet[{index}]: board {name} on {group.port!r} is real hardware: "
                                         "it runs in wall-clock time only (use --mode live)")  # fmt: skip
                    kind = "esp32s3"
                    self.modelled_boards.add(name)
                host, port = self.broker
                if group.link is not None or name in link_faulted:
                    profile = group.link.to_profile() if group.link is not None else CLEAN
                    link, host, port = await self.shared.net.link(name, host, port, profile,
                                                                  s.rng(f"link:{name}"))  # fmt: skip
                    self.links[name], self.link_profiles[name] = link, profile
                spec = esp_spec(group) if kind != "host" else HOST
                config = DeviceConfig(name, kind, proplet_id(ids), self.domain, host, port, s.timers,
                                      spec, group.tags)  # fmt: skip
                config = self._with_credentials(config, group.enrolled)
                device = self.devices[name] = SimDevice(config, self.shared, s.rng(f"device:{name}"))
                if name in self.links:
                    device.cut = self.links[name].sever
                    link = self.links[name]
                    if hasattr(link, "on_change"):  # a ModelLink: a fault on it ends bulk heartbeats
                        link.on_change = device.leave_cohort
        self._check_board_faults()
        if self.before_power_on is not None:
            await self.before_power_on()
        stagger = min(2.0, 0.004 * len(self.devices))
        boot = s.rng("boot")
        for device in self.devices.values():
            device.power_on(boot.uniform(0.0, stagger))
        for fault in s.faults:
            self.env.process(self._at(fault))

    def _check_board_faults(self) -> None:
        boards = set(self.boards) | self.modelled_boards
        for spec in self.scenario.faults:
            if spec.kind in BOARD_ONLY_FAULTS:
                devices = sorted(set(self._targets(spec)) - boards)
                if devices:
                    raise ValueError(
                        f"faults (line {spec.line}): {spec.kind} is a board fault; "
                        f"{', '.join(devices[:5])} {'is not a board' if len(devices) == 1 else 'are not boards'}"  # noqa: E501
                    )
            if spec.kind in ("broker_restart", "manager_kill", "random") or spec.kind in BOARD_FAULTS:
                continue
            hit = sorted(set(self._targets(spec)) & boards)
            if hit:
                raise ValueError(
                    f"faults (line {spec.line}): a {spec.kind} fault cannot be injected into "
                    f"board {', '.join(hit)}; boards take {', '.join(BOARD_FAULTS)}"
                )

    def _proxied_targets(self) -> set[str]:
        """Devices a link fault or a silent fault (a vanishing device) may hit."""
        out: set[str] = set()
        for spec in self.scenario.faults:
            kinds = set(spec.params.get("kinds", ())) if spec.kind == "random" else {spec.kind}
            if kinds & ({"link"} | SILENT_FAULTS):
                out |= set(self._targets(spec))
        return out

    async def close(self) -> None:
        boards = [b.device.device for b in self.boards.values() if b.device is not None]
        shutdown_all(list(self.devices.values()) + boards)
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
            # Random picks stay among simulated devices: a board takes only its own faults.
            boards = set(self.boards) | self.modelled_boards
            population = [n for n in self._targets(spec) if n not in boards]
            picks = random_faults(spec, population, self.scenario.rng(f"random:{spec.line}"))
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
        duration = pick.down if pick.kind in ("power_loss", "wifi_drop", "out_of_memory", "clean_shutdown") \
            else None
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
        if name in self.boards:
            self._board_fault(name, kind, duration, params)
            return
        if name in self.modelled_boards and kind in BOARD_FAULTS:
            self._modelled_board_fault(name, kind, duration, params)
            return
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
        elif kind == "clean_shutdown":
            device.clean_shutdown(duration)
            self._end_after(name, kind, duration, shown)
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

    def _board_fault(self, name: str, kind: str, duration: float | None, params: dict[str, Any]) -> None:
        action = BOARD_FAULTS.get(kind)
        if action is None or self.on_board_fault is None:
            raise ValueError(f"fault kind {kind!r} cannot be injected into board {name} "
                             f"(boards take {', '.join(BOARD_FAULTS)})")  # fmt: skip
        self.faults_injected += 1
        shown = {**params, "board": action}
        if duration is not None:
            shown["duration"] = round(duration, 3)
        self._mark(name, kind, "start", shown)
        self.on_board_fault(name, action, duration)
        if action in ("unplug", "power_cycle") and duration:
            self._end_after(name, kind, duration, shown)
        else:
            self._mark(name, kind, "end", shown)

    def _modelled_board_fault(
        self, name: str, kind: str, duration: float | None, params: dict[str, Any]
    ) -> None:
        action = BOARD_FAULTS[kind]
        self.faults_injected += 1
        shown = {**params, "board": action}
        if duration is not None:
            shown["duration"] = round(duration, 3)
        self._mark(name, kind, "start", shown)
        device = self.devices[name]
        if action == "reset":
            device.power_loss(0.0, state="rebooting")
            self._mark(name, kind, "end", shown)
        else:
            off = duration if action == "unplug" else BROWNOUT_S
            device.power_loss(off)
            if off:
                self._end_after(name, kind, off, shown)
            else:
                self._mark(name, kind, "end", shown)

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
