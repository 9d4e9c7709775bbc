"""Every ``propeller proplet`` setting is defined once (PropletSettings) and survives each entry point."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import pytest

from orchestrator.cli import agent_settings, build_parser
from orchestrator.settings import PropletSettings, add_arguments, env_name, from_args, to_argv

# A value different from the default for every field, so a dropped field shows as the default.
CHANGED: dict[str, Any] = {
    "broker": "mqtts://broker.example:8883",
    "id": "edge-9",
    "identity": None,  # its effect (credentials) is tested apart: the file must exist
    "domain": "d1",
    "channel": "c1",
    "heartbeat_interval": 2.5,
    "max_instances": 3,
    "cache_dir": "/var/cache/wasm",
    "tags": "gpu,eu",
    "profile": "esp32s3",
    "metrics_interval": 0.0,
    "metrics_port": 9092,
    "heap_bytes": 65536,
    "fetch_allow": "public,10.0.0.0/8",
    "hal_root": "/srv/hal",
    "hal_quota_bytes": 1024,
    "tsm_root": "/tmp/tsm",
    "kbs_url": "https://kbs.example",
    "otel": True,
    "direct_start": False,
}
SET = {k: v for k, v in CHANGED.items() if v is not None}


def test_every_field_is_changed_by_this_test() -> None:
    assert {f.name for f in dataclasses.fields(PropletSettings)} == set(CHANGED)
    for name, value in SET.items():
        assert getattr(PropletSettings(), name) != value, name


def parse_proplet(argv: list[str]) -> PropletSettings:
    return from_args(PropletSettings, build_parser().parse_args(["proplet", *argv]))


def test_every_field_survives_the_command_line_and_reaches_the_worker() -> None:
    want = PropletSettings(**SET)
    got = parse_proplet(to_argv(want, only_changed=False))
    assert got == want
    agent = agent_settings(got)
    assert (agent.broker, agent.proplet_id, agent.domain, agent.channel) == ("mqtts://broker.example:8883",
                                                                          "edge-9", "d1", "c1")  # fmt: skip
    assert (agent.heartbeat_interval, agent.max_instances, agent.cache_dir) == (2.5, 3, "/var/cache/wasm")
    assert (agent.tags, agent.profile, agent.metrics_interval, agent.metrics_port) == (
        ["gpu", "eu"], "esp32s3", 0.0, 9092,
    )  # fmt: skip
    assert agent.heap_bytes == 65536 and agent.fetch_allow == ("public", "10.0.0.0/8")
    assert (agent.hal_root, agent.hal_quota_bytes, agent.tsm_root, agent.kbs_url) == (
        "/srv/hal", 1024, "/tmp/tsm", "https://kbs.example",
    )  # fmt: skip
    assert agent.direct_start is False


def test_every_field_survives_the_environment() -> None:
    env = {env_name(name): str(value) for name, value in SET.items()}
    parser = argparse.ArgumentParser()
    add_arguments(parser, PropletSettings, env)
    assert from_args(PropletSettings, parser.parse_args([])) == PropletSettings(**SET)


def test_defaults_in_help_and_bad_values_named(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["proplet", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "env PROPELLER_MAX_INSTANCES; default: 16" in out and "env PROPELLER_FETCH_ALLOW" in out
    with pytest.raises(ValueError, match=r"--fetch-allow: .*'http://x' is not HOST"):
        agent_settings(parse_proplet(["--fetch-allow", "http://x"]))
    with pytest.raises(SystemExit):
        parse_proplet(["--profile", "esp8266"])  # choices enforced
