"""Power loss mid-task: the manager marks the device dead at once (the broker fires its Last Will) and
re-dispatches the task, which completes on another device."""

from orchestrator.core.model import TaskState
from twin.harness import TwinCluster
from twin.scenario.expectations import DeadWithin, TasksLost


async def test_power_loss_mid_task_is_redispatched(twin_cluster: TwinCluster) -> None:
    c = twin_cluster
    await c.add_devices(kind="esp32s3", count=2, prefix="esp-")
    task = await c.submit("fib", inputs=[27])  # runs ~1 s of simulated ESP32-S3 time
    victim = await c.wait_running(task)

    await c.power_loss(victim)  # stays off: the task can only finish elsewhere

    assert await c.wait_dead(victim, within=2.0) < 2.0
    done = await c.wait_task(task, timeout=20)
    assert done["state"] == TaskState.COMPLETED
    assert done["results"] == "196418"  # fib(27), computed by wasmtime
    assert c.proplet_id(victim) != done["proplet_id"]
    # The same verdicts a scenario file would use, on the cluster's trace.
    c.check(DeadWithin(seconds=2.0), TasksLost(max=0))
