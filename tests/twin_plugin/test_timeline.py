"""A twin fault joins the task's timeline: ``propeller task trace`` shows the power loss that moved it.

The twin reports every fault it injects to the manager (twin/timeline_feed.py, ``POST
/proplets/{id}/events``); the manager adds it to the timeline of the task running on that device, so
one timeline says what happened, in order: placed on X, power_loss on X, X declared dead (the
broker's will), requeued, placed elsewhere, completed there.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

from orchestrator.core.model import TaskState
from tests.support.timelines import moved_by_power_loss, steps
from twin.harness import Timers
from twin.pytest_plugin import ClusterFactory

WILL_ONLY = Timers(heartbeat_interval=0.5, liveness_timeout=30, keepalive=2.0)


async def events(c: Any, task_id: str) -> list[dict[str, Any]]:
    response = await c.api.get(f"/tasks/{task_id}/events")
    response.raise_for_status()
    return list(response.json()["events"])


async def test_a_power_loss_is_in_the_moved_tasks_timeline_in_order(
    twin_cluster_factory: ClusterFactory,
) -> None:
    c = await twin_cluster_factory(timers=WILL_ONLY)
    await c.add_devices(kind="esp32s3", count=2, prefix="esp-")
    task = await c.submit("fib", inputs=[27])
    victim = await c.wait_running(task)
    victim_id = c.proplet_id(victim)
    for _ in range(100):  # its heartbeat reports it running there (a positive sentinel, not a sleep)
        if any(e["kind"] == "running" for e in await events(c, task)):
            break
        await asyncio.sleep(0.05)

    await c.power_loss(victim)

    done = await c.wait_task(task, timeout=30)
    assert done["state"] == TaskState.COMPLETED and done["proplet_id"] != victim_id
    other = done["proplet_id"]
    timeline = await events(c, task)
    for _ in range(50):  # the twin reports within ~0.1 s; the task took seconds more: a sentinel only
        if any(e["kind"] == "fault" for e in timeline):
            break
        await asyncio.sleep(0.1)
        timeline = await events(c, task)
    assert steps(timeline) == moved_by_power_loss(victim_id, other), timeline
    hit = next(e for e in timeline if e["kind"] == "fault")
    assert hit["fields"]["device"] == victim and hit["fields"]["source"] == "twin"
    assert hit["fields"]["attempt"] == 1
    # The terminal view a user reads: one timeline, without opening a log.
    out = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "task", "trace", task, "--api-url", str(c.api.base_url)],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    print(out)
    lines = out.splitlines()
    order = [f"on {victim_id} (round-robin", f"power_loss on {victim} [twin]",
             f"proplet died      {victim_id}: last will: offline", "requeued",
             f"on {other} (round-robin", f"Completed on {other} (attempt 2"]  # fmt: skip
    found = [next((i for i, line in enumerate(lines) if fragment in line), -1) for fragment in order]
    assert -1 not in found and found == sorted(found), out
    # The proplet's own timeline has the fault too, before its death.
    response = await c.api.get(f"/proplets/{victim_id}/events")
    kinds = [e["kind"] for e in response.json()["events"]]
    assert kinds.index("fault") < kinds.index("died"), kinds
