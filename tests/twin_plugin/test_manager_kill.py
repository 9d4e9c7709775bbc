"""kill -9 of the manager while tasks run: it restarts from its store (SQLite) and the tasks complete."""

from orchestrator.core.model import TaskState
from twin.harness import TwinCluster


async def test_tasks_complete_after_manager_kill(twin_cluster: TwinCluster) -> None:
    c = twin_cluster
    await c.add_devices(kind="esp32s3", count=2, prefix="esp-")
    await c.add_devices(kind="host", count=1, prefix="host-")
    before = [await c.submit("add", inputs=[4, 5]) for _ in range(2)]
    await c.wait_tasks(before, timeout=10)
    # ~4 s on a simulated ESP32-S3 each: still running when the new manager is up.
    running = [await c.submit("fib", inputs=[60], target=esp) for esp in ("esp-1", "esp-2")]
    for task in running:
        await c.wait_running(task)

    await c.kill_manager(restart_after=0.5)  # returns once the new manager's API answers

    after = [await c.submit("add", inputs=[1, 2]) for _ in range(2)]
    views = await c.wait_tasks(before + running + after, timeout=15)
    assert [TaskState(v["state"]) for v in views] == [TaskState.COMPLETED] * 6
    assert [v["results"] for v in views[2:4]] == ["1820529360"] * 2  # fib(60) mod 2**32
    for device in c.devices:
        assert c.alive(device)


async def test_a_result_finished_while_the_manager_is_down_is_not_lost(twin_cluster: TwinCluster) -> None:
    c = twin_cluster
    await c.add_devices(kind="esp32s3", count=1, prefix="esp-")
    # ~2.1 s on the simulated ESP32-S3: it finishes while the manager is dead (3 s, then ~2 s to come
    # back), so its result can only arrive through the broker's session for the manager.
    task = await c.submit("fib", inputs=[27], target="esp-1")
    await c.wait_running(task)
    await c.kill_manager(restart_after=3.0)
    (view,) = await c.wait_tasks([task], timeout=10)
    # Normally the broker's session hands the manager the queued result (attempt 1); failing that, the
    # device's heartbeat no longer lists the task and the manager runs it again (attempt 2).
    assert TaskState(view["state"]) is TaskState.COMPLETED and view["attempt"] in (1, 2)
    assert view["results"] == "196418"  # fib(27)
