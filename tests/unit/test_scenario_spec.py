"""The scenario language: every shipped file loads, and every mistake is reported with file:line: key."""

from __future__ import annotations

from pathlib import Path

import pytest

from twin.scenario.spec import Scenario, ScenarioError, load_scenario, load_scenario_text

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "scenarios").glob("*.yaml"))

GOOD = """\
name: t
seed: 3
duration: 10s
timers: {heartbeat_interval: 0.5, liveness_timeout: 1.5, keepalive: 2}
fleet:
  - {kind: esp32s3, count: 2, prefix: esp-, memory: 96KiB}
  - {kind: host, count: 1}
workload:
  - {name: w, module: add, inputs: [1, 2], count: 4, every: 250ms, target: {kind: esp32s3}}
faults:
  - {at: 2, kind: power_loss, target: esp-1, duration: 3}
expect:
  - dead_within: {device: esp-1, seconds: 2}
  - tasks_lost: 0
  - no_oom_while_room
"""


def errors(text: str) -> list[str]:
    with pytest.raises(ScenarioError) as info:
        load_scenario_text(text, "x.yaml")
    return [str(i) for i in info.value.issues]


def test_shipped_scenarios_load() -> None:
    names = {p.stem for p in SHIPPED}
    assert {
        "lwt_reschedule",
        "wifi_flap",
        "reconnect_storm",
        "memory_envelope",
        "flaky_fleet",
        "manager_kill",
        "upstream_vs_ours",
    } <= names
    for path in SHIPPED:
        s = load_scenario(path)
        # compressed protocol timers: seconds, not upstream's 10 s heartbeats
        assert s.timers.heartbeat_interval <= 1.0 and s.timers.liveness_timeout <= 5.0, path
        assert s.expect, path
    assert len(load_scenario(ROOT / "scenarios" / "reconnect_storm.yaml").devices()) >= 500


def test_good_file_becomes_typed_scenario() -> None:
    s = load_scenario_text(GOOD, "x.yaml")
    assert isinstance(s, Scenario)
    assert [d.name for d in s.devices()] == ["esp-1", "esp-2", "host-1"]
    assert s.fleet[0].memory_bytes == 96 * 1024
    w = s.workload[0]
    assert w.function == "add" and w.submit_times() == [0.0, 0.25, 0.5, 0.75]
    assert w.task_names() == ["w-1", "w-2", "w-3", "w-4"]
    assert s.faults[0].end == 5.0 and s.faults[0].target is not None
    assert [e.label.split("(")[0] for e in s.expect] == ["dead_within", "tasks_lost", "no_oom_while_room"]


def test_seed_override() -> None:
    assert load_scenario_text(GOOD, "x.yaml").seed == 3
    assert load_scenario_text(GOOD, "x.yaml", seed=99).seed == 99
    s = load_scenario(SHIPPED[0], seed=5)
    assert s.seed == 5 and s.rng("a").random() == s.with_seed(5).rng("a").random()


def test_unknown_key_names_line_and_suggests() -> None:
    text = GOOD.replace("{kind: host, count: 1}", "{kind: host, cuont: 1}")
    assert errors(text) == ["x.yaml:7: fleet[1].cuont: unknown key (did you mean 'count'?)"]


def test_speed_is_refused_with_what_to_do_instead() -> None:
    (msg,) = errors(GOOD.replace("duration: 10s", "duration: 10s\nspeed: 10"))
    assert msg.startswith("x.yaml:4: speed: is not a scenario key")
    assert "compress the timers" in msg and "--mode virtual" in msg


def test_bad_duration_names_line_and_value() -> None:
    text = GOOD.replace("keepalive: 2}", "keepalive: soon}")
    (msg,) = errors(text)
    assert msg.startswith("x.yaml:4: timers.keepalive: must be a positive number, got 'soon'")


def test_all_errors_are_collected_in_line_order() -> None:
    text = (
        GOOD.replace("seed: 3", "seed: three")
        .replace("kind: esp32s3, count: 2", "kind: esp32, count: 0")
        .replace("target: esp-1", "target: esp-9")
        .replace("tasks_lost: 0", "tasks_lots: 0")
    )
    got = errors(text)
    assert got[0] == "x.yaml:2: seed: must be an integer, got 'three'"
    assert got[1].startswith(
        "x.yaml:6: fleet[0].kind: must be one of esp32s3, host, upstream-firmware, board"
    )
    assert "did you mean 'esp32s3'" in got[1]
    assert got[2] == "x.yaml:6: fleet[0].count: must be >= 1, got 0"
    # esp-9 is not checked against a fleet whose first group is broken: that would only add noise.
    assert got[3:] == ["x.yaml:14: expect[1].tasks_lots: unknown expectation (did you mean 'tasks_lost'?)"]
    got = errors(GOOD.replace("target: esp-1", "target: esp-9"))
    assert got == [
        "x.yaml:11: faults[0].target: selects no device of the fleet (esp-9); fleet has esp-1, esp-2, "
        "host-1; kinds esp32s3, host"
    ]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "liveness_timeout: 1.5",
            "liveness_timeout: 0.5",
            "x.yaml:4: timers.liveness_timeout: must be greater than heartbeat_interval (0.5 s), got 0.5",
        ),
        (
            "every: 250ms",
            "every: 250ms, rate: 3",
            "x.yaml:9: workload[0].rate: give either 'every' or 'rate', not both",
        ),
        (
            "module: add",
            "module: nope",
            "x.yaml:9: workload[0].module: must be one of add, fib, mem64k or a path",
        ),
        (
            "duration: 3}",
            "duration: 3, params: {volts: 2}}",
            "x.yaml:11: faults[0].params.volts: unknown key",
        ),
        (
            "{at: 2, kind: power_loss, target: esp-1, duration: 3}",
            "{at: 2, kind: wifi_drop, target: esp-1}",
            "x.yaml:11: faults[0]: a wifi_drop fault needs a 'duration'",
        ),
        (
            "{at: 2, kind: power_loss, target: esp-1, duration: 3}",
            "{at: 2, kind: broker_restart, target: esp-1}",
            "x.yaml:11: faults[0].target: a broker_restart fault affects the whole run and takes no target",
        ),
        (
            "{at: 2, kind: power_loss, target: esp-1, duration: 3}",
            "{at: 12, kind: power_loss, target: esp-1}",
            "x.yaml:11: faults[0].at: is at or after the end of the scenario (10 s)",
        ),
        (
            "seconds: 2}",
            "seconds: -1}",
            "x.yaml:13: expect[0].dead_within.seconds: must be a positive number",
        ),
        (
            "tasks_lost: 0",
            "completed_ratio: 1.5",
            "x.yaml:14: expect[1].completed_ratio.min: must be <= 1, got 1.5",
        ),
        (
            "tasks_lost: 0",
            "ran_only_on: {kind: board}",
            "x.yaml:14: expect[1].ran_only_on.kind: no device of kind 'board' in the fleet",
        ),
        ("tasks_lost: 0", "tasks_lost: {max: 0, min: 1}", "x.yaml:14: expect[1].tasks_lost.min: unknown key"),
        ("memory: 96KiB", "memory: lots", "x.yaml:6: fleet[0].memory: must be a positive size in bytes"),
        ("memory: 96KiB", "enrolled: maybe", "x.yaml:6: fleet[0].enrolled: must be true or false"),
    ],
)
def test_bad_values_name_file_line_and_key(old: str, new: str, expected: str) -> None:
    text = GOOD.replace(old, new)
    assert text != GOOD
    got = errors(text)
    assert any(g.startswith(expected) for g in got), got


def test_missing_required_and_yaml_syntax() -> None:
    assert errors("name: x\n") == [
        "x.yaml:1: (top level): missing required key 'duration'",
        "x.yaml:1: (top level): missing required key 'fleet'",
        "x.yaml:1: (top level): missing required key 'expect'",
    ]
    (msg,) = errors("name: x\nfleet: [\n")
    assert msg.startswith("x.yaml:3: YAML syntax error")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"missing\.yaml:1: cannot read scenario file"):
        load_scenario(tmp_path / "missing.yaml")


def test_fault_converts_to_twin_faults_object() -> None:
    s = load_scenario_text(GOOD, "x.yaml")
    fault = s.faults[0].to_fault("esp-1")
    assert type(fault).__name__ == "PowerLoss"
    assert fault.off_for == 3.0 and fault.at == 2.0 and fault.target.device == "esp-1"


def test_enrolled_false_marks_a_group_unenrolled() -> None:
    s = load_scenario_text(GOOD.replace("{kind: host, count: 1}", "{kind: host, count: 2, enrolled: false}"),
                           "x.yaml")  # fmt: skip
    assert [g.enrolled for g in s.fleet] == [True, False]
    assert s.unenrolled() == ["host-1", "host-2"]
    board = "{kind: board, port: virtual, enrolled: false}"
    got = errors(GOOD.replace("{kind: host, count: 1}", board))
    assert any("fleet[1].enrolled: boards are always enrolled" in g for g in got), got
