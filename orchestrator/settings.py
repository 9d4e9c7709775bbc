"""One settings source per command: argparse flags, ``PROPELLER_*`` variables and child argv from a dataclass.

A settings dataclass (``ManagerSettings``) is the only place a setting is defined. Each field gives a
flag ``--field-name`` (help and default shown in ``--help``; ``metadata={"help": ..., "cli": False}``
hides it), its default can be overridden by the environment variable ``PROPELLER_FIELD_NAME``, and
``to_argv`` turns an instance back into the flags a child process is started with (the scenario
runner), so no layer copies settings by hand.

Optional numbers (``float | None``) accept ``none`` (or ``0``) for None.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from orchestrator.core.validation import MAX_BODY_BYTES
from proplets.runtime.hal.options import DEFAULT_QUOTA_BYTES, DEFAULT_TSM_ROOT

T = TypeVar("T")
ENV_PREFIX = "PROPELLER_"
_NONE_WORDS = ("", "none", "null")
_TRUE_WORDS = ("1", "true", "yes", "on")
_FALSE_WORDS = ("0", "false", "no", "off", "")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _base_type(hint: Any) -> tuple[type, bool]:
    """(int|float|str|bool, optional) of a field's annotation."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return inner, True
    return hint, False


def _parser(kind: type, optional: bool, name: str) -> Any:
    def parse(text: str) -> Any:
        word = text.strip().lower()
        if kind is bool:
            if word in _TRUE_WORDS:
                return True
            if word in _FALSE_WORDS:
                return False
            raise argparse.ArgumentTypeError(f"{name}: expected true or false, got {text!r}")
        if optional and (word in _NONE_WORDS or (kind in (int, float) and word in ("0", "0.0"))):
            return None
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: expected {kind.__name__}, got {text!r}") from None

    parse.__name__ = kind.__name__  # argparse names the type in its error message
    return parse


def cli_fields(cls: type) -> list[tuple[dataclasses.Field[Any], type, bool]]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli", True):
            kind, optional = _base_type(hints[f.name])
            out.append((f, kind, optional))
    return out


def add_arguments(parser: argparse.ArgumentParser, cls: type, env: Mapping[str, str] | None = None) -> None:
    """A flag per field of ``cls``; a ``PROPELLER_*`` variable in ``env`` replaces the default.

    A malformed variable is an error naming it (raised here, so ``--help`` shows it too).
    """
    env = os.environ if env is None else env
    for f, kind, optional in cli_fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]
        parse = _parser(kind, optional, env_name(f.name))
        if env_name(f.name) in env:
            try:
                default = parse(env[env_name(f.name)])
            except argparse.ArgumentTypeError as err:
                raise ValueError(str(err)) from None
        help_text = f.metadata.get("help", "")
        shown = "none" if default is None else repr(default)
        suffix = f"env {env_name(f.name)}; default: {shown}"
        help_text = f"{help_text} ({suffix})" if help_text else f"({suffix})"
        if kind is bool:
            parser.add_argument(
                flag(f.name),
                dest=f.name,
                default=default,
                action=argparse.BooleanOptionalAction,
                help=help_text,
            )
        else:
            parser.add_argument(
                flag(f.name), dest=f.name, type=_parser(kind, optional, flag(f.name)), default=default,
                metavar=f.metadata.get("metavar", f.name.upper()), choices=f.metadata.get("choices"),
                help=help_text,
            )  # fmt: skip


def from_args(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """An instance of ``cls`` from the parsed flags (fields without a flag keep their default)."""
    values = {f.name: getattr(args, f.name) for f, _, _ in cli_fields(cls) if hasattr(args, f.name)}
    values.update(overrides)
    return cls(**values)


def to_argv(settings: Any, *, only_changed: bool = True) -> list[str]:
    """The flags that rebuild ``settings`` through ``add_arguments`` + ``from_args`` (child processes)."""
    argv: list[str] = []
    for f, kind, _ in cli_fields(type(settings)):
        value = getattr(settings, f.name)
        if only_changed and f.default is not dataclasses.MISSING and value == f.default:
            continue
        if kind is bool:
            argv.append(flag(f.name) if value else "--no-" + f.name.replace("_", "-"))
        else:
            argv += [flag(f.name), "none" if value is None else f"{value}"]
    return argv


def _opt(default: Any, help: str, **meta: Any) -> Any:
    """A settings field with its ``--help`` text (see orchestrator.settings)."""
    return dataclasses.field(default=default, metadata={"help": help, **meta})


@dataclass
class ManagerSettings:
    """Every manager setting, defined once: flags, PROPELLER_* variables and the scenario runner's
    argv are derived from these fields (orchestrator/settings.py)."""

    broker: str = _opt(
        "embedded://127.0.0.1:1883",
        "embedded://HOST:PORT (start a broker) or mqtt[s]://[user:pass@]HOST:PORT",
    )
    db: str = _opt(".propeller/manager.db", "SQLite file path or postgresql:// URL")
    api_host: str = _opt("127.0.0.1", "host of the REST API (or --api HOST:PORT)")
    api_port: int = _opt(7070, "port of the REST API (or --api HOST:PORT)")
    domain: str = _opt("default", "tenant/domain id in m/{domain}/c/{channel}")
    channel: str = _opt("default", "channel id in m/{domain}/c/{channel}")
    heartbeat_interval: float = _opt(10.0, "seconds between proplet heartbeats expected")
    liveness_timeout: float | None = _opt(
        None, "seconds of silence before a proplet is dead (none: 3x heartbeat)"
    )
    max_attempts: int = _opt(3, "attempts of a task that sets no max_attempts")
    queue_timeout: float | None = _opt(None, "fail a task waiting longer than this for a proplet (seconds)")
    # Attempt deadline: limits.timeout_s + attempt_grace, or attempt_timeout for tasks without one.
    attempt_grace: float = _opt(
        30.0, "seconds added to a task's limits.timeout_s before an attempt is given up"
    )
    attempt_timeout: float | None = _opt(
        3600.0, "deadline of an attempt whose task sets no limits.timeout_s (seconds; 0/none = none)"
    )
    # Terminal tasks kept in the engine's memory; older ones are read from the store.
    terminal_cache: int = _opt(10_000, "settled tasks kept in memory (older ones are read from the store)")
    placement: str = _opt(
        "round-robin", "placement policy", choices=["round-robin", "least-loaded", "memory-aware"]
    )
    client_id: str = _opt("", "MQTT client id (default: propeller-manager-DOMAIN-CHANNEL)")
    mqtt_keepalive: float = _opt(30.0, "MQTT keepalive (seconds)")
    api_token: str = _opt("", "admin bearer token (as --api-token-admin)")
    api_token_read: str = _opt("", "comma-separated tokens that may only read (GET)")
    api_token_admin: str = _opt("", "comma-separated tokens that may do everything")
    metrics_public: bool = _opt(False, "serve /metrics without a token even when tokens are set")
    serve_api: bool = _opt(True, "serve the REST API", cli=False)
    api_max_body: int = _opt(
        MAX_BODY_BYTES, "largest request body in bytes; larger ones get 413 while they stream (docs/api.md)"
    )
    # Standby managers (docs/ha.md): several managers on one PostgreSQL and one external broker; the
    # holder of the lease leads, the others wait. lease_ttl bounds the takeover after a leader dies.
    ha: bool = _opt(False, "standby mode: managers on one PostgreSQL and external broker, one leads")
    lease_ttl: float = _opt(5.0, "--ha: seconds a leader's lease lasts (the takeover bound after it dies)")
    # TLS to an external broker (mqtts://): CA bundle, client certificate and key, or skip verification.
    mqtt_ca: str | None = _opt(None, "CA bundle for mqtts://")
    mqtt_cert: str | None = _opt(None, "client certificate for mutual TLS")
    mqtt_key: str | None = _opt(None, "client key for mutual TLS")
    mqtt_insecure: bool = _opt(False, "do not verify the broker's certificate")
    timeline: bool = _opt(True, "record each task's and proplet's timeline (GET /tasks/{id}/events)")
    otel: bool = _opt(
        False,
        "OpenTelemetry spans: dispatch, execute on the proplet, result (the otel extra; exporter: "
        "OTEL_TRACES_EXPORTER=otlp|console|none)",
    )
    timeline_observations: int = _opt(
        100, "console lines and faults reported from outside (POST /tasks/{id}/events) kept per task"
    )
    reports_dir: str = _opt("", "directory of scenario HTML reports listed by the dashboard (/ui/reports)")
    # Trust (docs/trust.md): the embedded broker is closed unless broker_open.
    broker_open: bool = _opt(
        False, "DEBUG ONLY: the embedded broker admits anonymous and unknown clients, with no topic rules"
    )
    identity: str | None = _opt(
        None, "external broker: the manager's identity file (propeller proplets enroll --manager --db)"
    )
    # Drop proplet messages that claim an id that is not an enrolled, active proplet. On by itself with
    # the closed embedded broker; --identity (an external broker) turns it on too.
    enrolled_only: bool = _opt(False, "drop messages from ids that are not enrolled proplets", cli=False)


def _default_cache_dir() -> str:
    from pathlib import Path

    return str(Path.home() / ".cache" / "propeller" / "wasm")


@dataclass
class PropletSettings:
    """Every setting of ``propeller proplet``, defined once: its flags and ``PROPELLER_*`` variables are
    derived from these fields (``proplets.agent.AgentSettings`` is built from them in the CLI)."""

    broker: str | None = _opt(None, "mqtt[s]://HOST:PORT (none: the identity file's, else 127.0.0.1:1883)")
    id: str = _opt("", "proplet id (empty: the identity file's, else proplet-HOST-PID)")
    identity: str | None = _opt(None, "identity file from `propeller proplets enroll --out` (sets --id)")
    domain: str = _opt("default", "tenant/domain id in m/{domain}/c/{channel}")
    channel: str = _opt("default", "channel id in m/{domain}/c/{channel}")
    heartbeat_interval: float = _opt(10.0, "seconds between heartbeats")
    max_instances: int = _opt(16, "tasks run at once")
    cache_dir: str = dataclasses.field(
        default_factory=_default_cache_dir,
        metadata={"help": "directory of compiled modules, keyed by sha256 ('' disables)"},
    )
    tags: str = _opt("", "comma-separated tags (placement: requires.tags)")
    profile: str = _opt("host", "esp32s3: act like the firmware", choices=["host", "esp32s3"])
    metrics_interval: float = _opt(10.0, "seconds between metrics; 0 = off")
    metrics_port: int | None = _opt(None, "Prometheus /metrics port (upstream 9092; none = off)")
    heap_bytes: int | None = _opt(None, "embedded profile: WAMR heap size override (bytes)")
    fetch_allow: str = _opt(
        "public",
        "where HTTP(S) modules may come from: comma-separated 'public', HOST[:PORT], IP or CIDR "
        "(public: public addresses only; link-local and metadata never)",
    )
    # The ELASTIC HAL's host side and TEE paths (docs/hal.md).
    hal_root: str = _opt(
        "", "directory of tasks' HAL storage (hal_storage_path is inside it; empty: <tmp>/proplet/...)"
    )
    hal_quota_bytes: int = _opt(DEFAULT_QUOTA_BYTES, "most bytes one task's HAL storage may hold")
    tsm_root: str = _opt(DEFAULT_TSM_ROOT, "configfs-tsm report directory for HAL attestation (TDX/SEV-SNP)")
    kbs_url: str = dataclasses.field(
        default_factory=lambda: os.environ.get("PROPLET_KBS_URI", ""),
        metadata={"help": "key broker for encrypted tasks (also env PROPLET_KBS_URI; see docs/hal.md)"},
    )
    otel: bool = _opt(
        False,
        "OpenTelemetry execute spans, children of the manager's dispatch span (the otel extra; "
        "exporter: OTEL_TRACES_EXPORTER=otlp|console|none)",
    )
    direct_start: bool = _opt(
        True,
        "also read starts on this proplet's own topic (control/manager/start/{id}) and say so when it "
        "announces itself: one delivery per start instead of one per proplet of the channel "
        "(--no-direct-start: upstream's shared start topic only)",
    )
