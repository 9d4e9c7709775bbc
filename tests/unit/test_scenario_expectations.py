"""Every expectation, on hand-built traces: it passes on a good run and explains a bad one."""

from __future__ import annotations

from dataclasses import replace

from tests.unit.scenario_helpers import lwt, lwt_trace
from twin.scenario.expectations import (
    AliveWithin,
    AllTerminalWithin,
    CompletedRatio,
    DeadWithin,
    FailedMax,
    MaxRedispatches,
    NoOomWhileRoom,
    RanOnlyOn,
    TasksLost,
    evaluate_all,
)
from twin.scenario.spec import Selector, load_scenario_text
from twin.scenario.trace import Trace

S = lwt()


def test_the_shipped_lwt_expectations_pass_on_a_good_run() -> None:
    verdicts = evaluate_all(lwt_trace(), S)
    assert [v.passed for v in verdicts] == [True] * 5, verdicts


def test_dead_within() -> None:
    exp = DeadWithin(2.0, Selector(devices=("esp-1",)))
    assert exp.evaluate(lwt_trace(dead_after=1.6), S).passed
    v = exp.evaluate(lwt_trace(dead_after=4.82), S)
    assert not v.passed
    assert v.detail == "esp-1 was marked dead 4.82 s after power_loss at t=3.00 s; bound 2 s"
    never = lwt_trace()
    never.events = [e for e in never.events if not (e.kind == "proplet" and e.data["alive"] is False)]
    assert exp.evaluate(never, S).detail == "esp-1 was never marked dead after power_loss at t=3.00 s"
    untouched = DeadWithin(2.0, Selector(devices=("esp-2",))).evaluate(lwt_trace(), S)
    assert not untouched.passed and "nothing to check" in untouched.detail


def test_alive_within() -> None:
    exp = AliveWithin(2.0, Selector(devices=("esp-1",)))
    tr = lwt_trace(dead_after=1.5)
    tr.emit(8.0, "fault", "esp-1", fault="power_loss", phase="end")
    assert exp.evaluate(tr, S).detail == "esp-1 never came back alive after power_loss ended at t=8.00 s"
    late = lwt_trace(dead_after=1.5)
    late.emit(8.0, "fault", "esp-1", fault="power_loss", phase="end")
    late.emit(11.1, "proplet", "p1", alive=True)
    v = exp.evaluate(late, S)
    assert v.detail == "esp-1 was back alive 3.10 s after power_loss ended at t=8.00 s; bound 2 s"
    ok = lwt_trace(dead_after=1.5)
    ok.emit(8.0, "fault", "esp-1", fault="power_loss", phase="end")
    ok.emit(9.2, "proplet", "p1", alive=True)
    v = exp.evaluate(ok, S)
    assert v.passed and "after 1.20 s" in v.detail


def test_all_terminal_within_and_tasks_lost() -> None:
    good = lwt_trace()
    assert AllTerminalWithin(12).evaluate(good, S).passed
    assert TasksLost(0).evaluate(good, S).passed
    bad = lwt_trace(lose="fib-3")
    v = AllTerminalWithin(12).evaluate(bad, S)
    assert v.detail == (
        "1 of 6 tasks were not terminal 12 s after the last submission (t=3.50 s): "
        "fib-3 (Running on esp-3 at the end)"
    )
    assert (
        TasksLost(0).evaluate(bad, S).detail
        == "1 of 6 tasks lost (max 0): fib-3 (Running on esp-3 at the end)"
    )
    assert TasksLost(1).evaluate(bad, S).passed
    slow = AllTerminalWithin(1.5).evaluate(good, S)
    assert not slow.passed and "fib-4 (Completed at t=6.50 s)" in slow.detail
    missing = lwt_trace()
    missing.events = [e for e in missing.events if e.subject != "fib-6"]
    assert "fib-6 (never submitted)" in TasksLost(0).evaluate(missing, S).detail


def test_completed_ratio_and_failed_max() -> None:
    tr = lwt_trace(lose="fib-5")
    tr.emit(9.0, "task", "fib-5", state="Failed", proplet_id="p2", error="trap: unreachable")
    v = CompletedRatio(0.95).evaluate(tr, S)
    assert v.detail == (
        "completed 5 of 6 tasks (83.3%); minimum 95.0%; not completed: "
        "fib-5 (Failed on esp-2: trap: unreachable)"
    )
    assert CompletedRatio(0.8).evaluate(tr, S).passed
    assert FailedMax(0).evaluate(tr, S).detail == "1 tasks failed (max 0): fib-5 on esp-2: trap: unreachable"
    assert FailedMax(1).evaluate(tr, S).passed


def test_ran_only_on() -> None:
    s = load_scenario_text(
        "duration: 10\nfleet: [{kind: esp32s3, prefix: esp-, count: 3}, {kind: host, count: 1}]\n"
        "workload: [{name: fib, module: fib, count: 6}]\nexpect: [tasks_lost]\n",
        "k.yaml",
    )
    tr = lwt_trace()
    assert RanOnlyOn("esp32s3").evaluate(tr, s).passed
    tr.emit(12.0, "task", "fib-1", state="Running", device="host-1", attempt=2)
    v = RanOnlyOn("esp32s3", "fib").evaluate(tr, s)
    assert v.detail == "1 of 8 runs off esp32s3: fib-1 ran on host-1 (kind host) at t=12.00 s"
    assert "nothing to check" in RanOnlyOn("esp32s3", "other").evaluate(tr, s).detail


def test_no_oom_while_room() -> None:
    s = replace(S, workload=(replace(S.workload[0], memory_bytes=65536),))
    tr = lwt_trace(lose="fib-5")
    tr.emit(4.0, "device", "esp-3", free_memory=30_000)
    tr.emit(
        6.0, "task", "fib-5", state="Failed", proplet_id="p2", error="Out of memory: instance needs 64 KiB"
    )
    v = NoOomWhileRoom().evaluate(tr, s)
    # esp-1 has room but is dead by then; esp-3 is alive but short: this OOM was unavoidable.
    assert v.passed, v.detail
    tr.emit(5.0, "device", "esp-3", free_memory=150_000)
    v = NoOomWhileRoom().evaluate(tr, s)
    assert v.detail == (
        "fib-5 failed out of memory on esp-2 at t=6.00 s while esp-3 had 150000 bytes free (task needs 65536)"
    )
    assert "memory need" in NoOomWhileRoom().evaluate(tr, S).detail


def test_max_redispatches() -> None:
    tr = lwt_trace()
    assert MaxRedispatches(1).evaluate(tr, S).passed
    v = MaxRedispatches(0).evaluate(tr, S)
    assert v.detail == "1 tasks redispatched more than 0 times: fib-4 dispatched 2 times"


def test_a_crashing_expectation_fails_alone() -> None:
    class Broken:
        label = "broken()"

        def evaluate(self, trace: Trace, scenario: object) -> object:
            raise KeyError("state")

    s = replace(S, expect=(Broken(), TasksLost(0)))  # type: ignore[arg-type]
    first, second = evaluate_all(lwt_trace(), s)
    assert not first.passed and first.detail == "could not evaluate: KeyError: 'state'"
    assert second.passed
