"""Hand-built traces for the scenario tests (the shape a runner records)."""

from __future__ import annotations

from pathlib import Path

from twin.scenario.spec import Scenario, load_scenario
from twin.scenario.trace import Trace

ROOT = Path(__file__).resolve().parents[2]
LWT = ROOT / "scenarios" / "lwt_reschedule.yaml"


def lwt() -> Scenario:
    return load_scenario(LWT)


def lwt_trace(dead_after: float = 2.5, lose: str | None = None) -> Trace:
    """lwt_reschedule as it should go: esp-1 loses power at t=3 mid-task, its task moves to esp-2."""
    tr = Trace("lwt_reschedule", 42, {"duration_s": 20.0})
    for i in (1, 2, 3):
        tr.emit(0.1, "device", f"esp-{i}", state="booting", proplet_id=f"p{i}", free_memory=200_000)
        tr.emit(0.3, "device", f"esp-{i}", state="online")
        tr.emit(0.5, "proplet", f"p{i}", alive=True)
    tr.emit(3.0, "fault", "esp-1", fault="power_loss", phase="start", params={})
    tr.emit(3.0, "device", "esp-1", state="dead")
    tr.emit(3.0 + dead_after, "proplet", "p1", alive=False, reason="lwt")
    for k in range(1, 7):
        name = f"fib-{k}"
        at = 1.0 + 0.5 * (k - 1)
        dev = (k - 1) % 3 + 1
        tr.emit(at, "task", name, state="pending", workload="fib")
        if dev == 1 and at + 0.1 < 3.0 <= at + 1.0:
            tr.emit(at + 0.1, "task", name, state="Running", proplet_id="p1", attempt=1)
            redo = 3.0 + dead_after
            tr.emit(redo, "task", name, state="Scheduled", attempt=1)
            tr.emit(redo + 0.1, "task", name, state="Running", proplet_id="p2", attempt=2)
            tr.emit(redo + 1.0, "task", name, state="Completed", proplet_id="p2", attempt=2)
            continue
        if dev == 1 and at >= 3.0:
            dev = 3
        tr.emit(at + 0.1, "task", name, state="Running", proplet_id=f"p{dev}", attempt=1)
        if name != lose:
            tr.emit(at + 1.0, "task", name, state="Completed", proplet_id=f"p{dev}", attempt=1)
    return tr
