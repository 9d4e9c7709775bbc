"""A virtual board whose network side is a twin esp32s3 device (``twin.board_device.BoardDevice``).

Real parts throughout: a pty board (``PtyBoard``, its console thread) opened by ``SerialBoard`` like a
USB-serial port, provisioned over the console to an embedded amqtt broker that an in-process manager
uses; the twin device runs its task on wasmtime. The device comes up only once provisioned, as
the firmware does, and a reset over the console is a power cycle the manager sees.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import random
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import simpy

from hil.board import Provisioning, SerialBoard, ShellError
from hil.virtual_board import PtyBoard
from orchestrator.adapters.aio import cancel_and_wait
from proplets.runtime import WasmtimeRuntime
from tests.integration.conftest import Cluster, close_cluster, eventually, make_cluster
from twin.board_device import BoardDevice, parse_broker
from twin.clock import AsyncSimClock
from twin.device import DeviceConfig, Shared, SimDevice
from twin.scenario.spec import Timers
from twin.scenario.trace import Trace
from twin.workload import load_module

pytestmark = pytest.mark.timeout(300)


@dataclass
class Rig:
    cluster: Cluster
    pty: PtyBoard
    board: SerialBoard
    device: BoardDevice
    proplet_id: str
    api_key: str

    def provisioning(self) -> Provisioning:
        s = self.cluster.manager.settings
        where = urllib.parse.urlsplit(self.cluster.broker_url)  # the firmware takes HOST:PORT, no scheme
        return Provisioning("lab", "secret", where.netloc, self.proplet_id, self.api_key, s.domain, s.channel)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    cluster = await make_cluster("embedded://127.0.0.1:0", tmp_path)
    env = simpy.Environment()
    clock = AsyncSimClock(env, 1.0)
    executor = ThreadPoolExecutor(max_workers=1)
    runtime = WasmtimeRuntime()
    shared = Shared(env, clock, Trace("board"), runtime, executor)
    proplet_id = str(uuid.uuid4())
    # The rig enrolls its board like an upstream device: its own client id and key (the closed broker
    # refuses anything else).
    api_key = uuid.uuid4().hex
    await cluster.manager.enroll("upstream", proplet_id, client_id=proplet_id, key=api_key)
    # Nowhere to dial yet: the console's provisioning tells it (port 9 would refuse).
    config = DeviceConfig("board-1", "esp32s3", proplet_id, "unset", "127.0.0.1", 9, Timers())
    device = BoardDevice(SimDevice(config, shared, random.Random(1)), asyncio.get_running_loop())
    driver = asyncio.get_running_loop().create_task(clock.run(120.0))
    pty = PtyBoard("board-1", device)
    board = await asyncio.to_thread(SerialBoard, "board-1", pty.port, tmp_path, lock_dir=tmp_path / "locks")
    try:
        yield Rig(cluster, pty, board, device, proplet_id, api_key)
    finally:
        await asyncio.to_thread(board.close)
        pty.close()
        device.device.shutdown()
        await cancel_and_wait([driver, *shared.jobs], "board rig teardown")  # bounded, names a stuck one
        executor.shutdown(wait=True)
        runtime.close()
        await close_cluster(cluster)


async def test_provisioned_over_the_console_it_joins_and_runs_a_task(rig: Rig) -> None:
    assert not rig.device.device.powered  # unprovisioned firmware stays off the network
    status = await asyncio.to_thread(rig.board.status)
    assert (status["wifi"], status["mqtt"]) == ("down", "disconnected")

    event = await asyncio.to_thread(rig.board.provision, rig.provisioning())
    assert event.fields["proplet_id"] == rig.proplet_id
    await asyncio.to_thread(rig.board.expect_event, "mqtt_connected", 10.0)
    await asyncio.to_thread(rig.board.expect_event, "discovery_sent", 5.0, proplet_id=rig.proplet_id)
    await eventually(lambda: rig.cluster.alive(rig.proplet_id), 10, "the board alive in the manager")
    status = await asyncio.to_thread(rig.board.status)
    assert (status["wifi"], status["mqtt"], status["tasks"]) == ("up", "connected", "0")

    wasm = base64.b64encode(load_module("fib")).decode()
    spec = {"name": "fib", "file": wasm, "inputs": [10], "proplet_id": rig.proplet_id}
    task = await rig.cluster.run_task(spec)
    assert (task["state"], task["results"]) == (3, "55"), task
    end = await asyncio.to_thread(rig.board.expect_event, "task_end", 5.0, ok="1")
    assert end.fields["result"] == "55" and end.fields["id"] == task["id"]
    events = [e.event for e in rig.board.events()]
    assert events.index("task_start") < events.index("task_end") < events.index("heap")
    assert "heartbeat" in events


async def test_a_console_reset_is_a_power_cycle_the_manager_sees(rig: Rig) -> None:
    await asyncio.to_thread(rig.board.provision, rig.provisioning())
    await eventually(lambda: rig.cluster.alive(rig.proplet_id), 10, "the board alive")
    boots = rig.device.device.stats.boots

    boot = await asyncio.to_thread(rig.board.reset)  # a pty has no RTS: `kernel reboot cold`
    assert boot.fields["reset"] == "sw"
    # Stored credentials: announced at boot, and the board joins again with a fresh engine.
    await asyncio.to_thread(rig.board.expect_event, "provisioned", 2.0, proplet_id=rig.proplet_id)
    await eventually(lambda: rig.cluster.alive(rig.proplet_id, expected=False), 5, "the board marked dead")
    await asyncio.to_thread(rig.board.expect_event, "mqtt_connected", 10.0)
    await eventually(lambda: rig.cluster.alive(rig.proplet_id), 10, "the board alive again")
    assert rig.device.device.stats.boots == boots + 1


async def test_a_broker_url_instead_of_host_port_is_refused_by_the_shell(rig: Rig) -> None:
    bad = dataclasses.replace(rig.provisioning(), broker="mqtt://127.0.0.1:1883")
    with pytest.raises(ShellError, match=r"bad value: broker=mqtt://127\.0\.0\.1:1883"):
        await asyncio.to_thread(rig.board.provision, bad)
    assert rig.device.provisioned is None and not rig.device.device.powered


def test_a_bad_broker_is_named() -> None:
    assert parse_broker("10.0.0.2:1883") == ("10.0.0.2", 1883)
    with pytest.raises(ValueError, match="broker must be HOST:PORT, got 'nowhere'"):
        parse_broker("nowhere")
