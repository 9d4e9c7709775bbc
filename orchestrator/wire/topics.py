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
STOP = "control/manager/stop"
INVOKE = "control/manager/invoke"
DISCOVER = "control/manager/discover"  # our extension: please announce yourself again
REGISTRY_REQUEST = "registry/proplet"
REGISTRY_SERVER = "registry/server"


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
