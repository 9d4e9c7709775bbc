"""The scenario language: frozen dataclasses and a loader whose every error names file, line and key.

A scenario names a seed, compressed protocol timers, a fleet, a workload, a fault timeline and the
expectations that make its verdict. ``scenarios/README.md`` documents the YAML; this module is its
single definition. Loading is pure (no broker, no clock), so ``propeller scenario validate`` and the
runner see exactly the same object.
"""

from __future__ import annotations

import fnmatch
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from yaml.nodes import Node, ScalarNode, SequenceNode

from twin.devices.esp32s3 import Esp32S3Spec
from twin.devices.profiles import load_profile
from twin.scenario.faults_schema import FAULT_KINDS, read_fault, to_fault_mapping
from twin.scenario.yamlread import Issue, Reader, ScenarioError, compose

if TYPE_CHECKING:
    from twin.scenario.expectations import Expectation

__all__ = [
    "BUILTIN_MODULES",
    "DEVICE_KINDS",
    "FaultSpec",
    "FleetGroup",
    "Issue",
    "LinkSpec",
    "ManagerSpec",
    "Scenario",
    "ScenarioError",
    "Selector",
    "Target",
    "Timers",
    "WorkloadItem",
    "load_scenario",
    "load_scenario_text",
]

DEVICE_KINDS = ("esp32s3", "host", "upstream-firmware", "board")
BROKERS = ("embedded", "mosquitto")
PLACEMENTS = ("round_robin", "least_loaded", "memory_aware")
# Built-in Wasm modules the runner provides; anything else is a path to a .wat/.wasm file.
BUILTIN_MODULES = {"add": "add", "fib": "fib", "mem64k": "run"}
LINK_PROFILES: dict[str, dict[str, float]] = {
    "ideal": {},
    "lan": {"latency": 0.001},
    "wifi": {"latency": 0.01, "jitter": 0.005, "loss": 0.005},
    "wifi-poor": {"latency": 0.05, "jitter": 0.03, "loss": 0.05},
    "lte": {"latency": 0.05, "jitter": 0.02, "loss": 0.01},
}


# ---------------------------------------------------------------------------------------------- model
@dataclass(frozen=True)
class Timers:
    """Protocol timers in seconds; scenarios compress them so a run takes seconds, not minutes."""

    heartbeat_interval: float = 0.5
    liveness_timeout: float = 1.5
    keepalive: float = 2.0
    reconnect_min: float = 0.1
    reconnect_max: float = 2.0
    metrics_interval: float | None = None


@dataclass(frozen=True)
class ManagerSpec:
    """The scenario's ``manager:``: every key is a ``ManagerSettings`` field (orchestrator/settings.py),
    except those the runner sets itself (``RUNNER_OWNED``), plus ``store``. The virtual manager models
    placement, max_attempts and queue_timeout; the others (``settings``) reach the live manager only."""

    placement: str = "round_robin"
    max_attempts: int = 3
    queue_timeout: float | None = None
    store: str = "sqlite"
    settings: tuple[tuple[str, Any], ...] = ()  # (field, value) of the other ManagerSettings fields


# ManagerSettings fields a scenario may not set: the runner gives its manager these (its broker,
# database, API port, domain, identity on the closed broker; heartbeat and liveness come from timers:).
RUNNER_OWNED = frozenset({
    "broker", "db", "api_host", "api_port", "domain", "channel", "client_id", "identity", "broker_open",
    "heartbeat_interval", "liveness_timeout", "api_token", "api_token_read", "api_token_admin", "ha",
    "lease_ttl", "mqtt_ca", "mqtt_cert", "mqtt_key", "mqtt_insecure", "reports_dir",
})  # fmt: skip
VIRTUAL_MANAGER_KEYS = ("placement", "max_attempts", "queue_timeout")


def manager_keys() -> list[str]:
    """The keys of a scenario's ``manager:``, derived from ManagerSettings."""
    from orchestrator.settings import ManagerSettings, cli_fields

    return ["store", *(f.name for f, _, _ in cli_fields(ManagerSettings) if f.name not in RUNNER_OWNED)]


@dataclass(frozen=True)
class LinkSpec:
    """A device's network link; field meanings follow ``twin.links.LinkProfile``."""

    profile: str = "ideal"
    latency: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0
    bandwidth_bps: float | None = None

    def to_profile(self) -> Any:
        from twin.link_profile import LinkProfile

        return LinkProfile(
            latency_s=self.latency, jitter_s=self.jitter, loss=self.loss, bandwidth_bps=self.bandwidth_bps
        )


@dataclass(frozen=True)
class FleetGroup:
    kind: str
    count: int = 1
    prefix: str = ""
    link: LinkSpec | None = None
    tags: tuple[str, ...] = ()
    memory_bytes: int | None = None  # SRAM (esp32s3) or RAM (host) available to Wasm
    psram_bytes: int | None = None
    cpu_mhz: float | None = None
    max_instances: int | None = None
    port: str | None = None  # board: serial port (or rig name)
    profile: Esp32S3Spec | None = None  # esp32s3: a named or calibrated model (twin/devices/esp32s3.py)
    # False: the run does not enroll these devices; they dial the closed broker with credentials it
    # does not know, are refused at CONNECT and never reach the manager (``refused_at_connect``).
    enrolled: bool = True

    def names(self) -> list[str]:
        """Device names of this group: ``prefix`` + 1-based index (``esp-1``, ``esp-2``...)."""
        return [f"{self.prefix}{i}" for i in range(1, self.count + 1)]


@dataclass(frozen=True)
class DeviceRef:
    name: str
    kind: str
    group: int
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Selector:
    """Which devices: by name (``devices``, glob patterns allowed), ``kind`` and ``tags``, then
    optionally ``count`` of them picked ``first`` or ``random`` (seeded)."""

    devices: tuple[str, ...] = ()
    kind: str | None = None
    tags: tuple[str, ...] = ()
    count: int | None = None
    pick: str = "first"

    def matches(self, device: DeviceRef) -> bool:
        if self.devices and not any(fnmatch.fnmatchcase(device.name, p) for p in self.devices):
            return False
        if self.kind is not None and device.kind != self.kind:
            return False
        return all(t in device.tags for t in self.tags)

    def resolve(self, devices: Sequence[DeviceRef], rng: random.Random | None = None) -> list[DeviceRef]:
        chosen = [d for d in devices if self.matches(d)]
        if self.count is None or self.count >= len(chosen):
            return chosen
        if self.pick == "random":
            return (rng or random.Random(0)).sample(chosen, self.count)
        return chosen[: self.count]

    def describe(self) -> str:
        parts = [",".join(self.devices)] if self.devices else []
        parts += [f"kind={self.kind}"] if self.kind else []
        parts += [f"tags={','.join(self.tags)}"] if self.tags else []
        parts += [f"{self.pick} {self.count}"] if self.count is not None else []
        return " ".join(parts) or "all devices"


@dataclass(frozen=True)
class Target:
    """Where tasks may run (the manager's placement constraint)."""

    kind: str | None = None
    device: str | None = None
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class WorkloadItem:
    name: str
    module: str  # a BUILTIN_MODULES key, or an absolute path to a .wat/.wasm file
    function: str
    at: float = 0.0
    count: int = 1
    every: float | None = None  # seconds between submissions; None with rate None = all at once
    rate: float | None = None  # submissions per second
    inputs: tuple[Any, ...] = ()
    target: Target | None = None
    limits: Mapping[str, float] = field(default_factory=dict)
    memory_bytes: int | None = None

    def submit_times(self) -> list[float]:
        """Scenario times at which this item's tasks are submitted."""
        step = self.every if self.every is not None else (1.0 / self.rate if self.rate else 0.0)
        return [self.at + i * step for i in range(self.count)]

    def task_names(self) -> list[str]:
        return [f"{self.name}-{i}" for i in range(1, self.count + 1)]


@dataclass(frozen=True)
class FaultSpec:
    at: float
    kind: str
    target: Selector | None = None  # None for fleet-wide faults (broker_restart, manager_kill)
    duration: float | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    line: int = 0

    @property
    def end(self) -> float | None:
        return None if self.duration is None else self.at + self.duration

    def to_fault(self, device: str | None = None) -> Any:
        """This fault as a ``twin.faults.Fault`` (aimed at ``device`` when given), for the runner to
        inject; ValueError for the kinds the runner composes itself (wifi_flap, brownout, random)."""
        from twin.faults import fault_from_mapping  # lazy: pulls in twin.links and asyncio

        data = to_fault_mapping(self.kind, self.duration, dict(self.params))
        if data is None:
            raise ValueError(f"{self.kind} is composed by the runner, not a twin.faults fault")
        data["at"] = self.at
        if device is not None:
            data["target"] = {"device": device}
        return fault_from_mapping(data, f"faults (line {self.line})")


@dataclass(frozen=True)
class Scenario:
    name: str
    seed: int
    duration_s: float
    fleet: tuple[FleetGroup, ...]
    expect: tuple[Expectation, ...]
    description: str = ""
    broker: str = "embedded"
    manager: ManagerSpec = ManagerSpec()
    timers: Timers = Timers()
    workload: tuple[WorkloadItem, ...] = ()
    faults: tuple[FaultSpec, ...] = ()
    source: str = "<string>"

    def with_seed(self, seed: int | None) -> Scenario:
        return self if seed is None else replace(self, seed=seed)

    def devices(self) -> list[DeviceRef]:
        return [DeviceRef(name, g.kind, i, g.tags) for i, g in enumerate(self.fleet) for name in g.names()]

    def unenrolled(self) -> list[str]:
        """Devices of groups with ``enrolled: false``: the run gives them credentials nobody enrolled."""
        return [name for g in self.fleet if not g.enrolled for name in g.names()]

    def device_kinds(self) -> dict[str, str]:
        return {d.name: d.kind for d in self.devices()}

    def rng(self, stream: str = "") -> random.Random:
        """A seeded generator; separate streams keep one random choice from shifting another."""
        return random.Random(f"{self.seed}:{stream}")


# ---------------------------------------------------------------------------------------------- loader
TOP_KEYS = (
    "name", "description", "seed", "duration", "speed", "broker", "manager", "timers", "fleet",
    "workload", "faults", "expect",
)  # fmt: skip


def load_scenario(path: str | Path, *, seed: int | None = None) -> Scenario:
    """Load and validate a scenario file; ``seed`` overrides the file's seed."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError([Issue(str(path), 1, "", f"cannot read scenario file: {exc.strerror}")]) from None
    return load_scenario_text(text, str(path), seed=seed, base_dir=p.parent)


def load_scenario_text(
    text: str, source: str = "<string>", *, seed: int | None = None, base_dir: Path | None = None
) -> Scenario:
    root = compose(text, source)
    r = Reader(source)
    if root is None:
        raise ScenarioError([Issue(source, 1, "", "empty scenario file")])
    scenario = _scenario(r, root, source, base_dir or Path.cwd())
    if r.issues or scenario is None:
        raise ScenarioError(sorted(r.issues, key=lambda i: i.line))
    return scenario.with_seed(seed)


def _scenario(r: Reader, root: Node, source: str, base: Path) -> Scenario | None:
    top = r.mapping(root, "", TOP_KEYS, required=("duration", "fleet", "expect"))
    if top is None:
        return None
    name = r.string(top["name"], "name") if "name" in top else Path(source).stem
    desc = r.string(top["description"], "description") if "description" in top else ""
    seed = r.integer(top["seed"], "seed") if "seed" in top else 0
    duration = r.duration(top["duration"], "duration") if "duration" in top else None
    if "speed" in top:
        r.error(top["speed"], "speed", "is not a scenario key: live mode runs in wall-clock time against the "
                "real manager (compress the timers instead), and --mode virtual runs as fast as the host can")
    broker = r.string(top["broker"], "broker", BROKERS) if "broker" in top else "embedded"
    manager = _manager(r, top["manager"]) if "manager" in top else ManagerSpec()
    timers = _timers(r, top["timers"]) if "timers" in top else Timers()
    fleet = _fleet(r, top["fleet"], base) if "fleet" in top else ()
    devices = [DeviceRef(n, g.kind, i, g.tags) for i, g in enumerate(fleet) for n in g.names()]
    _unique_names(r, top.get("fleet"), devices)
    # A broken fleet group would make every later reference to its devices look wrong: skip those checks.
    fleet_items = top["fleet"].value if isinstance(top.get("fleet"), SequenceNode) else []
    ctx = _Context(devices if len(fleet) == len(fleet_items) else [], duration or 0.0)
    workload = _workload(r, top["workload"], ctx, base) if "workload" in top else ()
    ctx.workloads = [w.name for w in workload]
    faults = _faults(r, top["faults"], ctx) if "faults" in top else ()
    expect = _expect(r, top["expect"], ctx) if "expect" in top else ()
    if None in (name, desc, seed, duration, broker):
        return None
    assert name is not None and desc is not None and seed is not None
    assert duration is not None and broker is not None
    return Scenario(
        name=name, description=desc, seed=seed, duration_s=duration, broker=broker,
        manager=manager, timers=timers, fleet=fleet, workload=workload, faults=faults, expect=expect,
        source=source,
    )  # fmt: skip


@dataclass
class _Context:
    """What later sections are checked against: the fleet's devices and the run's length."""

    devices: list[DeviceRef]
    duration: float
    workloads: list[str] = field(default_factory=list)

    @property
    def kinds(self) -> list[str]:
        return sorted({d.kind for d in self.devices})


def _manager(r: Reader, node: Node) -> ManagerSpec:
    from orchestrator.settings import ManagerSettings, cli_fields

    m = r.mapping(node, "manager", manager_keys())
    if m is None:
        return ManagerSpec()
    store = r.string(m["store"], "manager.store", ("sqlite", "postgres")) if "store" in m else None
    values: dict[str, Any] = {}
    for f, kind, optional in cli_fields(ManagerSettings):
        if f.name not in m:
            continue
        value_node, path = m[f.name], f"manager.{f.name}"
        if optional and r.plain(value_node) is None:
            values[f.name] = None
        elif f.name == "placement":  # scenarios spell the policies with underscores (round_robin)
            values[f.name] = r.string(value_node, path, PLACEMENTS)
        elif kind is bool:
            values[f.name] = r.boolean(value_node, path)
        elif kind is int:
            values[f.name] = r.integer(value_node, path, minimum=1 if f.name == "max_attempts" else 0)
        elif kind is float:
            values[f.name] = r.duration(value_node, path)
        else:
            values[f.name] = r.string(value_node, path, f.metadata.get("choices"))
    named = {k: values.pop(k) for k in VIRTUAL_MANAGER_KEYS if values.get(k) is not None}
    return ManagerSpec(**named, store=store or "sqlite", settings=tuple(sorted(values.items())))


def _timers(r: Reader, node: Node) -> Timers:
    names = list(Timers.__dataclass_fields__)
    m = r.mapping(node, "timers", names)
    if m is None:
        return Timers()
    values = {k: r.duration(v, f"timers.{k}") for k, v in m.items()}
    timers = Timers(**{k: v for k, v in values.items() if v is not None})
    if timers.liveness_timeout <= timers.heartbeat_interval:
        # Upstream sets them equal, and healthy proplets flap between alive and dead.
        r.error(
            m.get("liveness_timeout", node), "timers.liveness_timeout",
            f"must be greater than heartbeat_interval ({timers.heartbeat_interval:g} s), "
            f"got {timers.liveness_timeout:g}",
        )  # fmt: skip
    if timers.reconnect_max < timers.reconnect_min:
        r.error(m.get("reconnect_max", node), "timers.reconnect_max", "must be >= reconnect_min")
    return timers


FLEET_KEYS = (
    "kind", "count", "prefix", "link", "tags", "memory", "psram", "cpu_mhz", "max_instances", "port",
    "profile", "enrolled",
)  # fmt: skip
EMBEDDED_KINDS = ("esp32s3", "upstream-firmware", "board")


def _profile(r: Reader, node: Node, path: str, base: Path) -> Esp32S3Spec | None:
    """A profile name (``esp32s3``, ``esp32s3-esp-idf``, ...) or a profile file that ``propeller hil
    calibrate --write`` made (relative to the scenario file)."""
    name = r.string(node, path)
    if name is None:
        return None
    try:
        return load_profile(name, base)
    except ValueError as exc:
        r.error(node, path, str(exc))
        return None


def _fleet(r: Reader, node: Node, base: Path = Path(".")) -> tuple[FleetGroup, ...]:
    items = r.sequence(node, "fleet")
    if items is None:
        return ()
    if not items:
        r.error(node, "fleet", "must list at least one device group")
    groups: list[FleetGroup] = []
    for i, item in enumerate(items):
        path = f"fleet[{i}]"
        m = r.mapping(item, path, FLEET_KEYS, required=("kind",))
        if m is None:
            continue
        kind = r.string(m["kind"], f"{path}.kind", DEVICE_KINDS) if "kind" in m else None
        count = r.integer(m["count"], f"{path}.count", minimum=1) if "count" in m else 1
        prefix = r.string(m["prefix"], f"{path}.prefix") if "prefix" in m else f"{kind}-"
        link = _link(r, m["link"], f"{path}.link") if "link" in m else None
        tags = r.strings(m["tags"], f"{path}.tags") if "tags" in m else ()
        memory = r.size(m["memory"], f"{path}.memory") if "memory" in m else None
        psram = r.size(m["psram"], f"{path}.psram") if "psram" in m else None
        cpu = r.number(m["cpu_mhz"], f"{path}.cpu_mhz", positive=True) if "cpu_mhz" in m else None
        inst = (
            r.integer(m["max_instances"], f"{path}.max_instances", minimum=1)
            if "max_instances" in m
            else None
        )
        port = r.string(m["port"], f"{path}.port") if "port" in m else None
        profile = _profile(r, m["profile"], f"{path}.profile", base) if "profile" in m else None
        if profile is not None and kind not in EMBEDDED_KINDS:
            r.error(m["profile"], f"{path}.profile", f"a {kind} device takes no esp32s3 profile")
        enrolled = r.boolean(m["enrolled"], f"{path}.enrolled") if "enrolled" in m else True
        if enrolled is False and kind == "board":
            r.error(m["enrolled"], f"{path}.enrolled", "boards are always enrolled (the run provisions them)")
        if kind == "board" and port is None and "kind" in m:
            r.error(item, path, "a board needs 'port' (its serial port or rig name)")
        if kind is None or count is None or prefix is None or tags is None:
            continue
        groups.append(FleetGroup(kind, count, prefix, link, tags, memory, psram, cpu, inst, port, profile,
                                 enrolled is not False))
    return tuple(groups)


def _unique_names(r: Reader, node: Node | None, devices: list[DeviceRef]) -> None:
    seen: set[str] = set()
    for d in devices:
        if d.name in seen:
            r.error(node, "fleet", f"device name {d.name!r} is used twice; give the groups distinct prefixes")
            return
        seen.add(d.name)


def _link(r: Reader, node: Node, path: str) -> LinkSpec | None:
    if isinstance(node, ScalarNode):
        profile = r.string(node, path, LINK_PROFILES)
        return None if profile is None else _profile_link(profile, {})
    m = r.mapping(node, path, ("profile", "latency", "jitter", "loss", "bandwidth"))
    if m is None:
        return None
    profile = r.string(m["profile"], f"{path}.profile", LINK_PROFILES) if "profile" in m else "ideal"
    over: dict[str, float] = {}
    for key in ("latency", "jitter"):
        if key in m and (v := r.duration(m[key], f"{path}.{key}", positive=False)) is not None:
            over[key] = v
    if "loss" in m and (v := r.number(m["loss"], f"{path}.loss", minimum=0, maximum=1)) is not None:
        over["loss"] = v
    if "bandwidth" in m and (v := r.number(m["bandwidth"], f"{path}.bandwidth", positive=True)) is not None:
        over["bandwidth_bps"] = v
    return None if profile is None else _profile_link(profile, over)


def _profile_link(profile: str, over: dict[str, float]) -> LinkSpec:
    values: dict[str, Any] = {**LINK_PROFILES[profile], **over}
    return LinkSpec(profile=profile, **values)


# ---------------------------------------------------------------------------------------------- selectors
def read_selector(r: Reader, node: Node, path: str, ctx: _Context) -> Selector | None:
    """A device name or glob (``esp-*``), a list of them, or a mapping of devices/kind/tags/count/pick."""
    if isinstance(node, ScalarNode | SequenceNode):
        listed = r.strings(node, path)
        sel = None if listed is None else Selector(devices=listed)
    else:
        m = r.mapping(node, path, ("device", "devices", "kind", "tags", "count", "pick"))
        if m is None:
            return None
        names: tuple[str, ...] | None = ()
        if "device" in m and "devices" in m:
            r.error(m["devices"], f"{path}.devices", "give either 'device' or 'devices', not both")
        for key in ("device", "devices"):
            if key in m:
                names = r.strings(m[key], f"{path}.{key}")
        kind = r.string(m["kind"], f"{path}.kind", DEVICE_KINDS) if "kind" in m else None
        tags = r.strings(m["tags"], f"{path}.tags") if "tags" in m else ()
        count = r.integer(m["count"], f"{path}.count", minimum=1) if "count" in m else None
        pick = r.string(m["pick"], f"{path}.pick", ("first", "random")) if "pick" in m else "first"
        if names is None or tags is None or pick is None or ("kind" in m and kind is None):
            return None
        sel = Selector(names, kind, tags, count, pick)
    if sel is not None and ctx.devices and not any(sel.matches(d) for d in ctx.devices):
        r.error(
            node, path, f"selects no device of the fleet ({sel.describe()}); fleet has {_fleet_summary(ctx)}"
        )
    return sel


def _fleet_summary(ctx: _Context) -> str:
    names = [d.name for d in ctx.devices]
    shown = ", ".join(names[:6]) + (f", … ({len(names)} devices)" if len(names) > 6 else "")
    return f"{shown}; kinds {', '.join(ctx.kinds)}"


def _target(r: Reader, node: Node, path: str, ctx: _Context) -> Target | None:
    m = r.mapping(node, path, ("kind", "device", "tags"))
    if m is None:
        return None
    kind = r.string(m["kind"], f"{path}.kind", DEVICE_KINDS) if "kind" in m else None
    device = r.string(m["device"], f"{path}.device") if "device" in m else None
    tags = r.strings(m["tags"], f"{path}.tags") if "tags" in m else ()
    if kind is not None and ctx.devices and kind not in ctx.kinds:
        r.error(
            m["kind"],
            f"{path}.kind",
            f"no device of kind {kind!r} in the fleet (kinds: {', '.join(ctx.kinds)})",
        )
    if device is not None and ctx.devices and device not in {d.name for d in ctx.devices}:
        r.error(m["device"], f"{path}.device", f"no device named {device!r} in the fleet")
    return Target(kind, device, tags or ())


# ---------------------------------------------------------------------------------------------- workload
WORKLOAD_KEYS = (
    "name", "at", "count", "every", "rate", "module", "function", "inputs", "target", "limits", "memory",
)  # fmt: skip
LIMIT_KEYS = ("fuel", "wall_time", "memory", "output")


def _workload(r: Reader, node: Node, ctx: _Context, base: Path) -> tuple[WorkloadItem, ...]:
    items = r.sequence(node, "workload")
    out: list[WorkloadItem] = []
    names: set[str] = set()
    for i, item in enumerate(items or []):
        path = f"workload[{i}]"
        m = r.mapping(item, path, WORKLOAD_KEYS, required=("module",))
        if m is None:
            continue
        name = r.string(m["name"], f"{path}.name") if "name" in m else f"w{i + 1}"
        if name in names:
            r.error(m.get("name", item), f"{path}.name", f"duplicate workload name {name!r}")
        names.add(name or "")
        at = r.duration(m["at"], f"{path}.at", positive=False) if "at" in m else 0.0
        count = r.integer(m["count"], f"{path}.count", minimum=1) if "count" in m else 1
        every = r.duration(m["every"], f"{path}.every") if "every" in m else None
        rate = r.number(m["rate"], f"{path}.rate", positive=True) if "rate" in m else None
        if "every" in m and "rate" in m:
            r.error(m["rate"], f"{path}.rate", "give either 'every' or 'rate', not both")
        module = _module(r, m["module"], f"{path}.module", base) if "module" in m else None
        default_fn = BUILTIN_MODULES.get(module or "")
        function = r.string(m["function"], f"{path}.function") if "function" in m else default_fn
        if function is None and module is not None and "function" not in m:
            r.error(item, path, "missing required key 'function' (needed for a module given by path)")
        inputs: Any = r.plain(m["inputs"]) if "inputs" in m else []
        if not isinstance(inputs, list):
            r.error(m["inputs"], f"{path}.inputs", f"must be a list, got {inputs!r}")
            inputs = []
        target = _target(r, m["target"], f"{path}.target", ctx) if "target" in m else None
        limits = _limits(r, m["limits"], f"{path}.limits") if "limits" in m else {}
        memory = r.size(m["memory"], f"{path}.memory") if "memory" in m else None
        if at is not None and ctx.duration and at >= ctx.duration:
            r.error(m["at"], f"{path}.at", f"is at or after the end of the scenario ({ctx.duration:g} s)")
        if None in (name, at, count, module, function):
            continue
        assert name is not None and at is not None and count is not None
        assert module is not None and function is not None
        out.append(
            WorkloadItem(
                name, module, function, at, count, every, rate, tuple(inputs), target, limits, memory
            )
        )
    return tuple(out)


def _module(r: Reader, node: Node, path: str, base: Path) -> str | None:
    value = r.string(node, path)
    if value is None or value in BUILTIN_MODULES:
        return value
    if not value.endswith((".wat", ".wasm")):
        r.error(
            node,
            path,
            f"must be one of {', '.join(BUILTIN_MODULES)} or a path to a .wat/.wasm file, got {value!r}",
        )
        return None
    full = (base / value).resolve()
    if not full.is_file():
        r.error(node, path, f"module file not found: {full}")
        return None
    return str(full)


def _limits(r: Reader, node: Node, path: str) -> dict[str, float]:
    m = r.mapping(node, path, LIMIT_KEYS)
    out: dict[str, float] = {}
    for key, value in (m or {}).items():
        got: float | None
        if key == "wall_time":
            got = r.duration(value, f"{path}.{key}")
        elif key == "fuel":
            got = r.integer(value, f"{path}.{key}", minimum=1)
        else:
            got = r.size(value, f"{path}.{key}")
        if got is not None:
            out[key] = got
    return out


# ---------------------------------------------------------------------------------------------- faults
def _faults(r: Reader, node: Node, ctx: _Context) -> tuple[FaultSpec, ...]:
    items = r.sequence(node, "faults")
    out: list[FaultSpec] = []
    for i, item in enumerate(items or []):
        path = f"faults[{i}]"
        m = r.mapping(item, path, ("at", "kind", "target", "duration", "params"), required=("at", "kind"))
        if m is None:
            continue
        at = r.duration(m["at"], f"{path}.at", positive=False) if "at" in m else None
        kind = r.string(m["kind"], f"{path}.kind", FAULT_KINDS) if "kind" in m else None
        duration = r.duration(m["duration"], f"{path}.duration") if "duration" in m else None
        target = read_selector(r, m["target"], f"{path}.target", ctx) if "target" in m else None
        if at is not None and ctx.duration and at >= ctx.duration:
            r.error(m["at"], f"{path}.at", f"is at or after the end of the scenario ({ctx.duration:g} s)")
        if kind is None or at is None:
            continue
        params = read_fault(r, item, path, kind, "target" in m, duration, m.get("params"))
        out.append(FaultSpec(at, kind, target, duration, params, item.start_mark.line + 1))
    return tuple(sorted(out, key=lambda f: f.at))


# ---------------------------------------------------------------------------------------------- expect
def _expect(r: Reader, node: Node, ctx: _Context) -> tuple[Expectation, ...]:
    from twin.scenario.expectations import read_expectation  # the registry lives with the classes

    items = r.sequence(node, "expect")
    if items is None:
        return ()
    if not items:
        r.error(node, "expect", "must list at least one expectation (a scenario without one cannot fail)")
    out = [read_expectation(r, item, f"expect[{i}]", ctx) for i, item in enumerate(items)]
    return tuple(e for e in out if e is not None)
