"""``propeller manager --queue-timeout 5`` (a real process) fails a task no proplet can take."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

import httpx
import wasmtime

from orchestrator.core.model import TaskState
from tests.conftest import free_port
from tests.support.procs import Manager, wait_for

WASM = base64.b64encode(wasmtime.wat2wasm('(module (func (export "main")))')).decode()


def test_queue_timeout_flag_fails_an_unplaceable_task(tmp_path: Path) -> None:
    domain = f"qt-{uuid.uuid4().hex[:8]}"
    broker = f"embedded://127.0.0.1:{free_port()}"
    manager = Manager(tmp_path, broker, domain, "--queue-timeout", "5", "--max-attempts", "2")
    manager.start()
    try:
        created = httpx.post(f"{manager.url}/tasks", json={"name": "main", "file": WASM}, timeout=10)
        assert created.status_code in (200, 201), created.text
        task = created.json()
        assert task["max_attempts"] == 2  # --max-attempts reaches tasks that set none
        httpx.post(f"{manager.url}/tasks/{task['id']}/start", timeout=10).raise_for_status()
        states: list[dict[str, object]] = []

        def failed() -> bool:
            states.append(httpx.get(f"{manager.url}/tasks/{task['id']}", timeout=5).json())
            return states[-1]["state"] == TaskState.FAILED

        wait_for(failed, 60, "the task to fail by its queue timeout", interval=0.5)
        assert "not dispatched within 5 s" in str(states[-1]["error"]), states[-1]
        # Its timeline says why it waited and why it failed.
        events = httpx.get(f"{manager.url}/tasks/{task['id']}/events", timeout=5).json()["events"]
        assert [e["kind"] for e in events] == ["created", "queued", "waiting", "failed"], events
        assert events[2]["cause"] == "no alive proplet"
        assert events[3]["cause"] == "not dispatched within 5 s: no alive proplet"
    finally:
        manager.stop()
