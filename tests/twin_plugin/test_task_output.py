"""The twin's simulated hosts report what the Python proplet reports: a WASI command's stdout as its
typed result and its stderr (and the runtime's notes) as logs, apart from the result."""

import json
from pathlib import Path

from orchestrator.core.model import TaskState
from twin.harness import TwinCluster

JSON_PROGRESS = str(Path(__file__).resolve().parents[1] / "wasm" / "json_progress.wat")


async def test_a_simulated_host_returns_json_results_and_progress_logs(twin_cluster: TwinCluster) -> None:
    c = twin_cluster
    await c.add_devices(kind="host", count=1, prefix="edge-")
    task = await c.submit(JSON_PROGRESS, function="fl-client")
    done = await c.wait_task(task, timeout=20)
    assert done["state"] == TaskState.COMPLETED, done
    assert json.loads(done["results"]) == {"round_id": "r1", "num_samples": 32, "metrics": {"loss": 0.25}}
    parsed = (await c.api.get(f"/tasks/{task}/results", params={"format": "json"})).json()
    assert parsed["results"]["metrics"] == {"loss": 0.25}
    body = (await c.api.get(f"/tasks/{task}/logs")).json()
    stderr = "".join(row["data"] for row in body["logs"] if row["stream"] == "stderr")
    assert stderr == "progress: loading model\nprogress: epoch 1/2 loss=0.50\nprogress: epoch 2/2 loss=0.25\n"
    runtime = "".join(row["data"] for row in body["logs"] if row["stream"] == "runtime")
    assert "entry: _start (WASI command)" in runtime
