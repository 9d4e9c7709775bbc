"""Every manager setting is defined once (ManagerSettings) and survives each entry point unchanged."""

from __future__ import annotations

import argparse
import base64
import dataclasses
import shlex
from pathlib import Path
from typing import Any

import pytest

from orchestrator.cli import build_parser
from orchestrator.core.engine import Engine, EngineConfig
from orchestrator.settings import ManagerSettings, add_arguments, env_name, from_args, to_argv
from twin.services import Manager, ManagerOptions

# A value different from the default for every field, so a dropped field shows as the default.
CHANGED: dict[str, Any] = {
    "broker": "mqtts://user:pw@broker.example:8883",
    "db": "postgresql://x@db/test",
    "api_host": "0.0.0.0",
    "api_port": 8088,
    "domain": "d1",
    "channel": "c1",
    "heartbeat_interval": 2.5,
    "liveness_timeout": 9.0,
    "max_attempts": 7,
    "queue_timeout": 5.0,
    "attempt_grace": 4.0,
    "attempt_timeout": None,
    "terminal_cache": 99,
    "placement": "memory-aware",
    "client_id": "mgr-7",
    "mqtt_keepalive": 12.0,
    "api_token": "adm",
    "api_token_read": "r1,r2",
    "api_token_admin": "a1",
    "metrics_public": True,
    "mqtt_ca": "/ca.pem",
    "mqtt_cert": "/c.pem",
    "mqtt_key": "/k.pem",
    "mqtt_insecure": True,
    "timeline": False,
    "timeline_observations": 7,
    "otel": True,
    "reports_dir": "/srv/reports",
    "broker_open": True,
    "identity": "/etc/propeller/manager.json",
    "api_max_body": 1 << 20,
    "ha": True,
    "lease_ttl": 2.0,
}


def test_every_field_is_changed_by_this_test() -> None:
    cli = {f.name for f in dataclasses.fields(ManagerSettings) if f.metadata.get("cli", True)}
    assert cli == set(CHANGED), "a new ManagerSettings field needs a value in CHANGED"
    for name, value in CHANGED.items():
        assert getattr(ManagerSettings(), name) != value, name


def parse_manager(argv: list[str]) -> ManagerSettings:
    args = build_parser().parse_args(["manager", *argv])
    api = {"api_host": args.api[0], "api_port": args.api[1]} if args.api else {}
    return from_args(ManagerSettings, args, **api)


def test_every_field_survives_the_command_line() -> None:
    want = ManagerSettings(**CHANGED)
    assert parse_manager(to_argv(want)) == want


def test_defaults_are_the_dataclass_defaults_and_shown_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_manager([]) == ManagerSettings()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["manager", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--queue-timeout" in out and "env PROPELLER_QUEUE_TIMEOUT; default: none" in out
    assert "env PROPELLER_MAX_ATTEMPTS; default: 3" in out


def test_every_field_survives_the_environment() -> None:
    env = {}
    for name, value in CHANGED.items():
        env[env_name(name)] = "none" if value is None else str(value)
    parser = argparse.ArgumentParser()
    add_arguments(parser, ManagerSettings, env)
    assert from_args(ManagerSettings, parser.parse_args([])) == ManagerSettings(**CHANGED)


def test_a_flag_wins_over_the_environment_and_a_bad_variable_is_named() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser, ManagerSettings, {"PROPELLER_QUEUE_TIMEOUT": "7"})
    assert parser.parse_args(["--queue-timeout", "3"]).queue_timeout == 3.0
    with pytest.raises(ValueError, match="PROPELLER_MAX_ATTEMPTS"):
        add_arguments(argparse.ArgumentParser(), ManagerSettings, {"PROPELLER_MAX_ATTEMPTS": "many"})


def test_the_scenario_runners_manager_options_reach_the_child_argv(tmp_path: Path) -> None:
    opts = ManagerOptions(
        domain="scn", heartbeat_interval=0.5, liveness_timeout=1.5, placement="least_loaded",
        max_attempts=4, queue_timeout=15.0, db=str(tmp_path / "m.db"),
    )  # fmt: skip
    manager = Manager("mqtt://127.0.0.1:1", opts, tmp_path)
    argv = manager.process.argv
    got = parse_manager(list(argv)[argv.index("manager") + 1 :])
    assert (got.queue_timeout, got.max_attempts, got.placement) == (15.0, 4, "least-loaded"), shlex.join(argv)
    assert (got.domain, got.heartbeat_interval, got.liveness_timeout) == ("scn", 0.5, 1.5)
    assert (got.db, got.api_port) == (str(tmp_path / "m.db"), manager.api_port)


WASM = base64.b64encode(b"\0asm\x01\0\0\0").decode()


def test_the_managers_max_attempts_applies_to_tasks_that_set_none() -> None:
    engine = Engine(EngineConfig(max_attempts=6))
    assert engine.create_task({"name": "t", "file": WASM}, 0.0).max_attempts == 6
    assert engine.create_task({"name": "t", "file": WASM, "max_attempts": 2}, 0.0).max_attempts == 2
    _, tasks = engine.create_job("j", [{"name": "a", "file": WASM}], "parallel", 0.0)
    assert tasks[0].max_attempts == 6


def test_compatible_forms_keep_working() -> None:
    got = parse_manager(["--api", "0.0.0.0:9000", "--attempt-timeout", "0", "--mqtt-insecure"])
    assert (got.api_host, got.api_port, got.attempt_timeout, got.mqtt_insecure) == (
        "0.0.0.0",
        9000,
        None,
        True,
    )
    with pytest.raises(SystemExit):
        parse_manager(["--placement", "random"])  # choices still enforced


def scenario_manager(manager_yaml: str, tmp_path: Path) -> ManagerSettings:
    """The settings of the manager a live scenario with this ``manager:`` starts (its child argv)."""
    from twin.scenario.spec import load_scenario_text

    fleet = "fleet: [{kind: host, count: 1}]\nexpect: [{tasks_lost: {max: 0}}]\n"
    text = f"name: s\nduration: 1s\n{manager_yaml}\n{fleet}"
    m = load_scenario_text(text).manager
    opts = ManagerOptions("scn", 0.5, 1.5, m.placement, m.max_attempts, m.queue_timeout, settings=m.settings)
    argv = Manager("mqtt://127.0.0.1:1", opts, tmp_path).process.argv
    return parse_manager(list(argv)[argv.index("manager") + 1 :])


def test_every_scenario_manager_key_is_a_setting_and_reaches_the_manager(tmp_path: Path) -> None:
    from twin.scenario.spec import RUNNER_OWNED, manager_keys

    keys = [k for k in manager_keys() if k != "store"]
    cli = {f.name for f in dataclasses.fields(ManagerSettings) if f.metadata.get("cli", True)}
    assert set(keys) == cli - RUNNER_OWNED  # a new setting is a scenario key unless the runner owns it
    yaml_values = {k: CHANGED[k] for k in keys}
    yaml_values["placement"] = CHANGED["placement"].replace("-", "_")  # scenarios spell it round_robin
    body = ", ".join(f"{k}: {'null' if v is None else str(v).lower() if isinstance(v, bool) else v}"
                     for k, v in yaml_values.items())  # fmt: skip
    got = scenario_manager(f"manager: {{{body}}}", tmp_path)
    for key in keys:
        assert getattr(got, key) == CHANGED[key], key


def test_a_scenario_files_queue_timeout_reaches_the_manager(tmp_path: Path) -> None:
    from twin.scenario.spec import load_scenario

    root = Path(__file__).resolve().parents[2]
    m = load_scenario(root / "scenarios" / "memory_envelope.yaml").manager
    opts = ManagerOptions("scn", 0.5, 1.5, m.placement, m.max_attempts, m.queue_timeout, settings=m.settings)
    argv = Manager("mqtt://127.0.0.1:1", opts, tmp_path).process.argv
    got = parse_manager(list(argv)[argv.index("manager") + 1 :])
    assert (got.queue_timeout, got.max_attempts, got.placement) == (15.0, 2, "memory-aware")


def test_a_runner_owned_or_unknown_manager_key_is_refused_by_name(tmp_path: Path) -> None:
    from twin.scenario.yamlread import ScenarioError

    with pytest.raises(ScenarioError, match=r"manager.api_port.*unknown key"):
        scenario_manager("manager: {api_port: 9000}", tmp_path)
    with pytest.raises(ScenarioError, match=r"manager.attempt_grace.*must be a positive number"):
        scenario_manager("manager: {attempt_grace: soon}", tmp_path)
