"""Wi-Fi drop: the TCP link goes half-open, so only the keep-alive / liveness timers can tell. The
manager marks the device dead during the drop and alive again once it reconnects."""

import pytest

from orchestrator.core.model import TaskState
from twin.harness import Timers, TwinCluster


@pytest.mark.twin(timers=Timers(heartbeat_interval=0.5, liveness_timeout=1.5, keepalive=2))
async def test_wifi_drop_dead_then_alive(twin_cluster: TwinCluster) -> None:
    c = twin_cluster
    [esp] = await c.add_devices(kind="esp32s3", count=1, prefix="esp-")

    await c.wifi_drop(esp, duration=3.0)

    # Liveness 1.5 s after the last heartbeat (0.5 s period), plus the manager's sweep.
    dead_after = await c.wait_dead(esp, within=2.5)
    assert dead_after > 0.5  # half-open: no Last Will, only the timers can tell
    back_after = await c.wait_alive(esp, within=3.0)  # measured from the end of the drop
    assert back_after < 3.0
    assert c.alive(esp)


async def test_short_drop_under_the_liveness_timeout_goes_unnoticed(twin_cluster: TwinCluster) -> None:
    c = twin_cluster
    [esp] = await c.add_devices(kind="host", count=1, prefix="edge-")

    await c.wifi_drop(esp, duration=0.3)

    with pytest.raises(AssertionError, match=r"edge-1 was not marked dead within 1\.2 s"):
        await c.wait_dead(esp, within=1.2)
    assert await c.wait_alive(esp, within=1.0) == 0.0


@pytest.mark.twin(timers=Timers(heartbeat_interval=0.5, liveness_timeout=30, keepalive=10))
async def test_a_partitioned_device_keeps_running_its_task(twin_cluster: TwinCluster) -> None:
    # A real board whose Wi-Fi drops keeps executing; only the result waits for the link. Timers are
    # long here so that nobody notices the short drop: the task must finish where it started.
    c = twin_cluster
    await c.add_devices(kind="esp32s3", count=1, prefix="esp-")
    task = await c.submit("fib", inputs=[27])  # ~2 s of simulated ESP32-S3 time
    device = await c.wait_running(task)

    await c.wifi_drop(device, duration=1.0)

    done = await c.wait_task(task, timeout=30)
    assert done["state"] == TaskState.COMPLETED and done["results"] == "196418"
    assert done["proplet_id"] == c.proplet_id(device)
    assert c.fleet is not None and c.fleet.devices[device].stats.tasks_run == 1  # not restarted
