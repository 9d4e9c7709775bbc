"""In virtual time too, a twin fault joins the moved task's timeline, in the order a live run shows.

The virtual manager runs the same engine in-process; the twin's feed (twin/timeline_feed.py) hands it
the faults it injects at their simulated instant, through the same parsing and ``Engine.observations``
as ``POST /proplets/{id}/events`` in a live run (tests/twin_plugin/test_timeline.py, docs/timelines.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.timelines import moved_by_power_loss, steps
from twin.virtual import VirtualRunner
from twin.vmanager import WALL_EPOCH

SCENARIO = Path(__file__).resolve().parents[2] / "scenarios" / "lwt_reschedule.yaml"  # power_loss on esp-1


def _moved(scenario_runner: Any) -> tuple[Any, dict[str, list[dict[str, Any]]]]:
    runner = VirtualRunner()
    result = scenario_runner.run(SCENARIO, runner=runner)
    scenario_runner.assert_passed(result)
    store = runner.manager.store
    timelines = {tid: store.events("task", tid)["events"] for tid in sorted(store.tasks)}
    return result, {tid: evs for tid, evs in timelines.items() if any(e["kind"] == "fault" for e in evs)}


def test_a_power_loss_is_in_the_moved_tasks_timeline_in_the_live_order(scenario_runner: Any) -> None:
    result, moved = _moved(scenario_runner)
    assert moved, "no task's timeline has the power loss"
    for task_id, timeline in moved.items():
        found = steps(timeline)
        victim, other = found[0][1], found[-1][1]
        assert victim != other, timeline
        assert found == moved_by_power_loss(victim, other), (task_id, timeline)
        fault = next(e for e in timeline if e["kind"] == "fault")
        assert fault["fields"]["device"] == "esp-1" and fault["fields"]["source"] == "twin"
        assert fault["fields"]["attempt"] == 1
        # Stamped with the simulated instant of the fault (the scenario's at: 3 s).
        assert fault["at_unix"] == WALL_EPOCH + 3.0, timeline
    assert result.trace.meta["timeline_feed"]["sent"] >= 1
    assert result.trace.meta["timeline_feed"]["dropped"] == 0


def test_the_same_seed_gives_the_same_trace_and_timelines(scenario_runner: Any) -> None:
    first, first_moved = _moved(scenario_runner)
    again, again_moved = _moved(scenario_runner)
    assert again.trace_hash == first.trace_hash
    assert again_moved == first_moved
