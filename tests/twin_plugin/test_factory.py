"""Several clusters in one test, and the private mosquitto broker: link faults and reboots."""

import shutil
from pathlib import Path

import pytest

from twin.link_profile import LinkProfile
from twin.pytest_plugin import ClusterFactory

HAVE_MOSQUITTO = shutil.which("mosquitto") is not None or Path("/usr/sbin/mosquitto").exists()


@pytest.mark.skipif(not HAVE_MOSQUITTO, reason="mosquitto is not installed")
async def test_blackholed_link_on_mosquitto(twin_cluster_factory: ClusterFactory) -> None:
    c = await twin_cluster_factory(broker="mosquitto")  # a private one on an ephemeral port
    [esp] = await c.add_devices(kind="esp32s3", count=1, prefix="esp-")

    await c.link(esp, LinkProfile(blackhole=True), duration=3.0)

    assert await c.wait_dead(esp, within=4.0) > 0.5  # keep-alive, not a Last Will on a closed socket
    await c.wait_alive(esp, within=5.0)


async def test_two_clusters_are_independent(twin_cluster_factory: ClusterFactory) -> None:
    a = await twin_cluster_factory()
    b = await twin_cluster_factory(placement="least_loaded")
    [in_a] = await a.add_devices(kind="host", count=1, prefix="edge-")
    [in_b] = await b.add_devices(kind="host", count=1, prefix="edge-")

    await a.reboot(in_a)

    await a.wait_dead(in_a, within=2.0)
    await a.wait_alive(in_a, within=5.0)
    with pytest.raises(AssertionError, match="not marked dead"):
        await b.wait_dead(in_b, within=0.5)
    assert (await b.api.get("/proplets")).status_code == 200
