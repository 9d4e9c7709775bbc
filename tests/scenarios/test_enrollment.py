"""A device the run does not enroll (``enrolled: false``) is refused by the closed broker, in both modes.

Virtual and live sessions both run on a closed broker: the session enrolls the manager and every device
(live: in the run's database; virtual: in memory, seeded). A group marked ``enrolled: false`` dials with
credentials nobody enrolled: it is refused at CONNECT, the manager never lists it, and the work it
might have taken runs on the enrolled devices.
"""

from __future__ import annotations

import pytest

from twin.scenario import get_runner

UNENROLLED = """\
name: unenrolled_device
description: a device the run does not enroll is refused by the closed broker; its work goes elsewhere.
seed: 7
duration: 12s
timers: {heartbeat_interval: 0.5, liveness_timeout: 2, keepalive: 2}
fleet:
  - {kind: esp32s3, count: 2, prefix: esp-}
  - {kind: esp32s3, count: 1, prefix: rogue-, enrolled: ENROLLED}
workload:
  - {name: fib, module: fib, inputs: [20], count: 6, every: 0.5, at: 2, target: {kind: esp32s3}}
expect:
  - refused_at_connect: {device: rogue-1}
  - completed_ratio: {min: 1.0}
  - tasks_lost: 0
"""


def test_unenrolled_device_is_refused_in_virtual_time(scenario_runner) -> None:
    result = scenario_runner.run(UNENROLLED.replace("ENROLLED", "false"), runner=get_runner("virtual"))
    scenario_runner.assert_passed(result)
    rogue = {str(e.data["proplet_id"]) for e in result.trace.of("device")
             if e.subject == "rogue-1" and "proplet_id" in e.data}  # fmt: skip
    assert len(rogue) == 1
    refusals = result.trace.meta["virtual"]["refusals"]
    assert refusals and {cid for _t, cid, _why in refusals} == rogue
    assert all(why == "connect refused: unknown user name" for _t, _cid, why in refusals)
    ran_on = {result.trace.task_device(e) for t in result.trace.tasks().values() for e in t.runs}
    assert ran_on == {"esp-1", "esp-2"}


def test_an_enrolled_device_fails_refused_at_connect(scenario_runner) -> None:
    result = scenario_runner.run(UNENROLLED.replace("ENROLLED", "true"), runner=get_runner("virtual"))
    assert not result.passed
    failed = [v for v in result.verdicts if not v.passed]
    assert [v.name for v in failed] == ["refused_at_connect(devices=rogue-1)"]
    assert "rogue-1 was never refused at CONNECT" in failed[0].detail
    assert "the manager listed rogue-1" in failed[0].detail


@pytest.mark.timeout(300)
def test_unenrolled_device_is_refused_live(scenario_runner) -> None:
    result = scenario_runner.run(UNENROLLED.replace("ENROLLED", "false"))
    scenario_runner.assert_passed(result)
    ran_on = {result.trace.task_device(e) for t in result.trace.tasks().values() for e in t.runs}
    assert ran_on == {"esp-1", "esp-2"}
