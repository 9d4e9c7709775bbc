"""`propeller proplet --profile esp32s3` as a real subprocess against a real in-process manager: the
manager sees a constrained device, a numeric task comes back as comma-joined i32s, and tasks that do
not fit the device (over its memory budget, or over its 1023-byte messages) fail with a clear error."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import wasmtime

from orchestrator.service import ManagerService, ManagerSettings

PAIR = base64.b64encode(
    wasmtime.wat2wasm("""
(module
  (func (export "main") (param i32 i32) (result i32 i32)
    local.get 0 local.get 1 i32.add
    local.get 0 local.get 1 i32.mul))
""")
).decode()
# One 64 KiB page plus the 48 KiB WAMR stacks/heap per instance does not fit the 64 KiB device heap.
HUNGRY = base64.b64encode(
    wasmtime.wat2wasm('(module (memory 1) (func (export "main") (result i32) i32.const 7))')
).decode()


class Setup:
    def __init__(self, manager: ManagerService, api: httpx.AsyncClient) -> None:
        self.manager, self.api = manager, api

    async def wait(self, what: str, check: Any, timeout: float = 20) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = await check()
            if value:
                return value
            await asyncio.sleep(0.1)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    async def run(self, spec: dict[str, Any]) -> dict[str, Any]:
        created = await self.api.post("/tasks", json=spec)
        assert created.status_code == 201, created.text
        task_id = created.json()["id"]
        assert (await self.api.post(f"/tasks/{task_id}/start")).status_code == 200

        async def finished() -> dict[str, Any] | None:
            task: dict[str, Any] = (await self.api.get(f"/tasks/{task_id}")).json()
            return task if int(task["state"]) >= 3 else None

        result: dict[str, Any] = await self.wait(f"task {task_id}", finished)
        return result


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    settings = ManagerSettings(
        broker="embedded://127.0.0.1:0",
        db=str(tmp_path / "m.db"),
        api_port=0,
        heartbeat_interval=0.5,
        domain=f"d-{uuid.uuid4().hex[:8]}",
        channel="c1",
        mqtt_keepalive=5,
    )
    manager = ManagerService(settings)
    await manager.start()
    api = httpx.AsyncClient(base_url=f"http://127.0.0.1:{manager.api_port}", timeout=10)
    try:
        yield Setup(manager, api)
    finally:
        await api.aclose()
        await manager.stop()


async def test_esp32s3_proplet_process_runs_numeric_tasks_and_refuses_what_does_not_fit(
    setup: Setup, tmp_path: Path
) -> None:
    s = setup.manager.settings
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    # The manager's broker is closed: the operator enrolls the device first, then starts it with that.
    identity = tmp_path / "dev1.json"
    enroll = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "orchestrator.cli", "proplets", "enroll", "--id", "dev1",
        "--out", str(identity), "--api-url", f"http://127.0.0.1:{setup.manager.api_port}", env=env,
    )  # fmt: skip
    assert await enroll.wait() == 0 and identity.stat().st_mode & 0o777 == 0o600
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "orchestrator.cli", "proplet", "--profile", "esp32s3",
        "--identity", str(identity),
        "--broker", setup.manager.broker_url, "--domain", s.domain, "--channel", s.channel,
        "--heartbeat-interval", "0.5", "--metrics-interval", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    try:

        async def alive() -> dict[str, Any] | None:
            r = await setup.api.get("/proplets/dev1")
            return r.json() if r.status_code == 200 and r.json()["alive"] else None

        proplet = await setup.wait("dev1 alive", alive)
        md = proplet["metadata"]
        assert (md["os"], md["wasm_runtime"], md["cpu_arch"]) == ("zephyr", "wamr", "xtensa")
        assert md["total_memory_bytes"] == 65536 and md["max_instances"] == 10

        ok = await setup.run({"name": "compute", "file": PAIR, "inputs": ["6", "7"], "proplet_id": "dev1"})
        assert (ok["state"], ok["results"], ok.get("error") or "") == (3, "13,42", "")

        hungry = await setup.run({"name": "main", "file": HUNGRY, "proplet_id": "dev1", "max_attempts": 1})
        assert hungry["state"] == 4
        assert hungry["error"].startswith("out of memory: need ") and "free 65536 bytes" in hungry["error"]

        big = await setup.run(
            {"name": "main", "file": PAIR, "inputs": [1, 2], "env": {"PAD": "x" * 1500}, "proplet_id": "dev1"}
        )
        assert big["state"] == 4 and "exceeds the firmware's 1023-byte buffer" in big["error"]

        # Memory was released: the device still runs what fits.
        again = await setup.run({"name": "compute", "file": PAIR, "inputs": [-2, 5], "proplet_id": "dev1"})
        assert again["results"] == "3,-10"
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        _out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()[-2000:]
