"""MQTT topic names of one Propeller channel (reference §1)."""

from __future__ import annotations

from dataclasses import dataclass, field

CREATE = "control/proplet/create"
ALIVE = "control/proplet/alive"
RESULTS = "control/proplet/results"
LOGS = "control/proplet/logs"  # our extension: live task output
INVOKE_RESULTS = "control/proplet/invoke_results"
METRICS = "control/proplet/metrics"
TASK_METRICS = "control/proplet/task_metrics"
START = "control/manager/start"
# Our extension: ``control/manager/start/{proplet_id}``, the starts meant for one proplet alone. Upstream's
# start topic is read by every proplet of the channel (each start costs N deliveries and N decodes, and
# every proplet sees every task's inputs); a proplet that announces ``direct_start`` in its metadata
# subscribes to its own topic too, and the manager sends it its starts there. Upstream proplets
# subscribe to the exact start topic, so they never see these.
START_DIRECT = START + "/"
STOP = "control/manager/stop"
INVOKE = "control/manager/invoke"
DISCOVER = "control/manager/discover"  # our extension: please announce yourself again
REGISTRY_REQUEST = "registry/proplet"
REGISTRY_SERVER = "registry/server"


def direct_start_ok(proplet_id: object) -> bool:
    """Whether ``proplet_id`` can be the last level of a topic: non-empty, no ``/`` (another level),
    no wildcard and no NUL. Other ids keep upstream's shared start topic."""
    # Four ``in`` tests, not a generator over them: this runs for every dispatch.
    return (
        isinstance(proplet_id, str)
        and proplet_id != ""
        and "/" not in proplet_id
        and "+" not in proplet_id
        and "#" not in proplet_id
        and "\x00" not in proplet_id
    )


def _check_segment(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{name} must not be empty")
    for bad in ("+", "#", "\x00"):
        if bad in value:
            raise ValueError(f"{name} {value!r} must not contain {bad!r} (MQTT wildcard or NUL)")
    return value


@dataclass(frozen=True)
class Topics:
    """Topics under ``m/{domain}/c/{channel}``.

    Upstream substitutes the IDs verbatim, so a ``/`` inside an ID is allowed (a Rust test checks that
    ``tenant/1`` yields ``m/tenant/1/c/...``); wildcards and NUL would make the topic invalid in MQTT.
    """

    domain: str
    channel: str

    def __post_init__(self) -> None:
        _check_segment("domain", self.domain)
        _check_segment("channel", self.channel)
        # Built once (not an init field): a device or the manager names a topic for every message it handles.
        object.__setattr__(self, "_prefix", f"m/{self.domain}/c/{self.channel}/")

    _prefix: str = field(init=False, repr=False, compare=False)  # set in __post_init__

    @property
    def base(self) -> str:
        return self._prefix[:-1]

    def topic(self, suffix: str) -> str:
        return self._prefix + suffix

    # proplet -> manager
    @property
    def create(self) -> str:
        return self.topic(CREATE)

    @property
    def alive(self) -> str:
        return self.topic(ALIVE)

    @property
    def results(self) -> str:
        return self.topic(RESULTS)

    @property
    def logs(self) -> str:
        return self.topic(LOGS)

    @property
    def invoke_results(self) -> str:
        return self.topic(INVOKE_RESULTS)

    @property
    def metrics(self) -> str:
        return self.topic(METRICS)

    @property
    def task_metrics(self) -> str:
        return self.topic(TASK_METRICS)

    # manager -> proplet
    @property
    def start(self) -> str:
        return self.topic(START)

    def start_for(self, proplet_id: str) -> str:
        """The start topic of one proplet (our extension; see ``START_DIRECT``)."""
        if not direct_start_ok(proplet_id):
            raise ValueError(f"proplet id {str(proplet_id)[:80]!r} cannot name a topic level")
        return self._prefix + START_DIRECT + proplet_id

    def is_start(self, topic: str) -> bool:
        """Whether ``topic`` carries starts: the shared start topic or one proplet's own."""
        start = self._prefix + START
        return topic == start or topic.startswith(start + "/")

    @property
    def every_start(self) -> str:
        """A filter for every start of the channel: the shared topic and each proplet's own (what an
        observer of the fleet, not a proplet, subscribes to; ``a/#`` matches ``a`` too)."""
        return self._prefix + START + "/#"

    @property
    def stop(self) -> str:
        return self.topic(STOP)

    @property
    def invoke(self) -> str:
        return self.topic(INVOKE)

    @property
    def discover(self) -> str:
        return self.topic(DISCOVER)

    # binary delivery (proplet -> proxy, proxy -> proplets)
    @property
    def registry_request(self) -> str:
        return self.topic(REGISTRY_REQUEST)

    @property
    def registry_server(self) -> str:
        return self.topic(REGISTRY_SERVER)

    @property
    def all(self) -> str:
        return self.topic("#")

    @property
    def proplet_subscriptions(self) -> list[str]:
        """What a Rust-compatible proplet subscribes to (the firmware skips ``invoke``)."""
        return [self.start, self.stop, self.invoke, self.registry_server]

    @property
    def manager_subscriptions(self) -> list[str]:
        """The proplet-to-manager topics, plus registry requests (our manager also serves binaries)."""
        return [
            self.create,
            self.alive,
            self.results,
            self.logs,
            self.invoke_results,
            self.metrics,
            self.task_metrics,
            self.registry_request,
        ]

    def suffix(self, topic: str) -> str | None:
        """The part of ``topic`` after ``m/{domain}/c/{channel}/``, or None if it is outside the channel."""
        prefix = self._prefix
        if not isinstance(topic, str) or not topic.startswith(prefix):
            return None
        return topic[len(prefix) :]
