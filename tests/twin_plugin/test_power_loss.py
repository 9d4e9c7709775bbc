"""Power loss, watchdog reset and clean shutdown as the broker sees them (design §7, the fault table in
scenarios/README.md).

A board that loses power sends nothing: the broker learns of it only when the keep-alive expires
(1.5 × keepalive after the last packet) and then fires the Last Will. The liveness timeout is set far
above that here, so the will, not the manager's own timer, is what marks the device dead."""

import shutil
from pathlib import Path

import pytest

from orchestrator.core.model import TaskState
from twin.harness import Timers, TwinCluster
from twin.pytest_plugin import ClusterFactory
from twin.scenario.expectations import DeadWithin, TasksLost

HAVE_MOSQUITTO = shutil.which("mosquitto") is not None or Path("/usr/sbin/mosquitto").exists()
NEEDS_MOSQUITTO = pytest.mark.skipif(not HAVE_MOSQUITTO, reason="mosquitto is not installed")
BROKERS = ["embedded", pytest.param("mosquitto", marks=NEEDS_MOSQUITTO)]

KEEPALIVE = 2.0
HEARTBEAT = 0.5
WILL_ONLY = Timers(heartbeat_interval=HEARTBEAT, liveness_timeout=30, keepalive=KEEPALIVE)


def dead_reason(c: TwinCluster, device: str) -> str:
    return next(str(e.data["reason"]) for e in c.trace.of("proplet")
                if c.trace.device_of(e.subject) == device and not e.data["alive"])  # fmt: skip


@pytest.mark.parametrize("broker", BROKERS)
async def test_power_loss_is_seen_at_keepalive_expiry_and_the_task_moves(
    twin_cluster_factory: ClusterFactory, broker: str
) -> None:
    c = await twin_cluster_factory(broker=broker, timers=WILL_ONLY)  # a private Mosquitto, or embedded
    await c.add_devices(kind="esp32s3", count=2, prefix="esp-")
    task = await c.submit("fib", inputs=[27])  # runs ~1 s of simulated ESP32-S3 time
    victim = await c.wait_running(task)

    await c.power_loss(victim)  # stays off: the task can only finish elsewhere

    delay = await c.wait_dead(victim, within=10.0)
    # Not at once: the last packet left at most one heartbeat before the cut, and the broker waits
    # 1.5 x keepalive after it (a load-delayed heartbeat can only make the silence start sooner, hence
    # the margin). A clean close would have been seen in milliseconds.
    assert delay >= 1.5 * KEEPALIVE - HEARTBEAT - 1.0, f"dead after {delay:.2f} s: sooner than keep-alive"
    assert dead_reason(c, victim) == "last will: offline"  # the broker's will, not the liveness timer
    done = await c.wait_task(task, timeout=30)
    assert done["state"] == TaskState.COMPLETED
    assert done["results"] == "196418"  # fib(27), computed by wasmtime
    assert c.proplet_id(victim) != done["proplet_id"]
    # The same verdicts a scenario file would use, on the cluster's trace.
    c.check(DeadWithin(seconds=10.0, not_before=1.0), TasksLost(max=0))


@pytest.mark.parametrize("broker", BROKERS)
async def test_watchdog_reset_fires_the_old_will_at_the_takeover(
    twin_cluster_factory: ClusterFactory, broker: str
) -> None:
    timers = Timers(heartbeat_interval=HEARTBEAT, liveness_timeout=30, keepalive=10)
    c = await twin_cluster_factory(broker=broker, timers=timers)
    [esp] = await c.add_devices(kind="esp32s3", count=1, prefix="esp-")

    await c.reboot(esp)

    # Keep-alive expiry would take 15 s and liveness 30 s: only the reconnect's takeover can tell.
    delay = await c.wait_dead(esp, within=12.0)
    assert dead_reason(c, esp) == "last will: offline"
    back = await c.wait_alive(esp, within=12.0)
    assert c.alive(esp), f"dead after the reboot ({delay:.2f} s), alive {back:.2f} s later, then dead again"


@pytest.mark.twin(timers=Timers(heartbeat_interval=HEARTBEAT, liveness_timeout=30, keepalive=10))
async def test_clean_shutdown_announces_offline_without_a_will(twin_cluster: TwinCluster) -> None:
    c = twin_cluster
    [host] = await c.add_devices(kind="host", count=1, prefix="gw-")

    await c.clean_shutdown(host)

    # Keep-alive expiry would take 15 s and liveness 30 s: only its own offline message can tell.
    await c.wait_dead(host, within=12.0)
    assert dead_reason(c, host) == "left: clean shutdown"  # its own offline, marked leaving
