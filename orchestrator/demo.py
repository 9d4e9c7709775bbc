"""``propeller demo``: embedded broker + manager + proplets, one real Wasm task through the REST API."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import tempfile
import time
from importlib import resources
from pathlib import Path

import httpx
import wasmtime

from orchestrator.core import receipts
from orchestrator.service import ManagerService, ManagerSettings
from proplets.agent import AgentSettings, PropletAgent, with_identity

STATE_NAMES = ["Pending", "Scheduled", "Running", "Completed", "Failed", "Skipped", "Interrupted"]


def sample_module() -> bytes:
    wat = resources.files("proplets").joinpath("wasm/add.wat").read_text()
    return bytes(wasmtime.wat2wasm(wat))


async def _wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.005)
    raise TimeoutError(f"demo: timed out after {timeout:g} s waiting for {what}")


async def run_demo(proplets: int = 3, keep_db: str | None = None) -> int:
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="propeller-demo-") as tmp:
        db = keep_db or str(Path(tmp) / "manager.db")
        settings = ManagerSettings(
            broker="embedded://127.0.0.1:0",
            db=db,
            api_port=0,
            heartbeat_interval=1.0,
        )
        # The embedded broker is closed: the demo enrolls its proplets (below); each signs its results
        # with its enrolled key, which the manager checks every receipt against.
        manager = ManagerService(settings)
        await manager.start()
        agents: list[PropletAgent] = []
        try:
            print(f"manager: broker {manager.broker_url}, API http://127.0.0.1:{manager.api_port}, db {db}")
            for i in range(proplets):
                # The embedded broker is closed: each demo proplet is enrolled (a kept database may
                # hold last run's identity, which is revoked and replaced).
                pid = f"demo-proplet-{i + 1}"
                if manager.identities.get(pid) is not None:
                    await manager.revoke(pid)
                enrollment = await manager.enroll("proplet", pid)
                proplet_settings = AgentSettings(
                    broker=manager.broker_url,
                    proplet_id=pid,
                    heartbeat_interval=1.0,
                    cache_dir=str(Path(tmp) / "cache"),
                )
                agent = PropletAgent(with_identity(proplet_settings, enrollment.identity_file()))
                await agent.start()
                agents.append(agent)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{manager.api_port}", timeout=10) as api:

                async def all_alive() -> bool:
                    page = (await api.get("/proplets")).json()
                    return sum(1 for p in page["proplets"] if p["alive"]) >= proplets

                await _wait_for(all_alive, 20, f"{proplets} proplets to be alive")
                print(f"proplets alive: {', '.join(a.settings.proplet_id for a in agents)}")
                spec = {"name": "add", "file": base64.b64encode(sample_module()).decode(), "inputs": [2, 40]}
                created = await api.post("/tasks", json=spec)
                created.raise_for_status()
                task_id = created.json()["id"]
                submitted = time.monotonic()
                (await api.post(f"/tasks/{task_id}/start")).raise_for_status()
                task: dict[str, object] = {}

                async def finished() -> bool:
                    nonlocal task
                    task = (await api.get(f"/tasks/{task_id}")).json()
                    state = task["state"]
                    return isinstance(state, int) and state >= 3

                await _wait_for(finished, 20, f"task {task_id} to finish")
                latency = time.monotonic() - submitted
                signed = (await api.get(f"/tasks/{task_id}/receipt")).json()
            state = STATE_NAMES[int(task["state"])]  # type: ignore[call-overload]
            print(
                f"task {task_id} (add 2 40): {state} on {task.get('proplet_id')}, "
                f"result {task.get('results')!r}" + (f", error {task['error']}" if task.get("error") else "")
            )
            print(receipt_line(task, signed))
            print(
                f"submit-to-result latency {latency * 1000:.1f} ms; "
                f"demo wall time {time.monotonic() - t0:.2f} s"
            )
            return 0 if state == "Completed" and task.get("verified") else 1
        finally:
            for agent in agents:
                with contextlib.suppress(Exception):
                    await agent.stop()
            await manager.stop()


def receipt_line(task: dict[str, object], signed: dict[str, object]) -> str:
    """Check the receipt again here, as a third party would, with only the signer's public key."""
    raw, key = signed.get("receipt"), signed.get("public_key")
    if not isinstance(raw, dict) or not isinstance(key, str):
        return f"receipt: none ({signed.get('error', 'not signed')})"
    receipt = receipts.Receipt.from_json(raw)
    expected = receipts.Expected(
        task_id=str(task["id"]),
        proplet_id=str(task.get("proplet_id", "")),
        result_sha256=receipts.result_digest(task.get("results"), str(task.get("error") or "") or None),
        inputs_sha256=receipts.inputs_digest([str(v) for v in task.get("inputs", [])]),  # type: ignore[attr-defined]
        module_sha256=hashlib.sha256(sample_module()).hexdigest(),
    )
    why = receipts.check(receipt, receipts.decode_key(key), expected)
    verdict = (
        "verified" if why is None and task.get("verified") else f"NOT verified: {why or 'manager says no'}"
    )
    return (
        f"receipt {verdict}: signed by {receipt.proplet_id} (Ed25519 {key[:12]}...), module sha256 "
        f"{receipt.module_sha256[:12]}..., result sha256 {receipt.result_sha256[:12]}..."
    )
