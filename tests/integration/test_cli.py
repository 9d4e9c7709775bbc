"""The `propeller` CLI against a running manager: tables, JSON on request, non-zero exits on errors."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import json
import os
import sys
from pathlib import Path

import wasmtime

from tests.integration.conftest import Cluster, eventually

ADD_WAT = Path(__file__).resolve().parents[2] / "proplets" / "wasm" / "add.wat"


async def propeller(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "orchestrator.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env} if env else None,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_task_lifecycle_through_the_cli(embedded_cluster: Cluster, tmp_path: Path) -> None:
    c = embedded_cluster
    await c.add_proplet("cli-p1")
    api = ["--api-url", f"http://127.0.0.1:{c.manager.api_port}"]
    code, out, err = await propeller(
        "task", "create", "add", "--file", str(ADD_WAT), "--inputs", "2,40", "--json", *api
    )
    assert code == 0, err
    task_id = json.loads(out)["id"]
    code, out, err = await propeller("task", "start", task_id, *api)
    assert code == 0 and task_id in out, err
    await c.wait_terminal(task_id)
    code, out, _ = await propeller("task", "get", task_id, *api, env={"COLUMNS": "120"})
    assert code == 0
    fields = {line.split(None, 1)[0]: line.split(None, 1)[1] for line in out.splitlines()}
    assert (fields["id"], fields["state"], fields["proplet"], fields["results"]) == (
        task_id, "Completed", "cli-p1", "42",
    )  # fmt: skip
    module = wasmtime.wat2wasm(ADD_WAT.read_text())
    assert fields["module"] == f"{len(module)} bytes, sha256 {hashlib.sha256(module).hexdigest()}"
    code, out, _ = await propeller("task", "list", *api)
    header, row = out.splitlines()[:2]
    assert header.split() == ["ID", "NAME", "STATE", "PROPLET", "RESULTS", "ERROR"]
    assert row.split()[:5] == [task_id, "add", "Completed", "cli-p1", "42"]
    # --json: no base64 module unless asked; its size and sha256 instead.
    code, out, _ = await propeller("task", "get", task_id, "--json", *api)
    shown = json.loads(out)
    assert "file" not in shown and shown["module"]["sha256"] == hashlib.sha256(module).hexdigest()
    code, out, _ = await propeller("task", "get", task_id, "--json", "--with-module", *api)
    assert base64.b64decode(json.loads(out)["file"]) == module
    code, out, _ = await propeller("task", "results", task_id, "--output", str(tmp_path / "r.json"), *api)
    assert code == 0 and json.loads(out) == "42" and json.loads((tmp_path / "r.json").read_text()) == "42"
    code, out, _ = await propeller("proplets", "list", *api)
    assert code == 0 and "cli-p1" in out and "alive" in out


async def test_cli_errors_exit_non_zero_and_say_why(embedded_cluster: Cluster) -> None:
    api = ["--api-url", f"http://127.0.0.1:{embedded_cluster.manager.api_port}"]
    code, _, err = await propeller("task", "get", "00000000-0000-4000-8000-000000000000", *api)
    assert code == 1 and "HTTP 404" in err and "not found" in err
    code, _, err = await propeller("task", "create", "add", "--file", "/no/such.wasm", *api)
    assert code == 2 and "no such file" in err
    code, _, err = await propeller("proplets", "show", "ghost", "--api-url", "http://127.0.0.1:9")
    assert code == 1 and "cannot reach the manager at http://127.0.0.1:9" in err
    assert "Connection refused" in err and "PROPELLER_API_URL" in err
    # The error body's message, naming the field, not a bare status.
    bad = ("--limits", "timeout_s=-1")
    code, _, err = await propeller("task", "create", "add", "--file", str(ADD_WAT), *bad, *api)
    assert code == 1 and "HTTP 400" in err and "timeout_s" in err, err


async def test_create_wait_exit_codes_env_url_and_the_old_inputs_form(embedded_cluster: Cluster) -> None:
    c = embedded_cluster
    await c.add_proplet("cli-w1")
    env = {"PROPELLER_API_URL": f"http://127.0.0.1:{c.manager.api_port}"}  # no --api-url
    code, out, err = await propeller(
        "task", "create", "add", "--file", str(ADD_WAT), "--inputs", "2", "--inputs", "40",
        "--env", "MODE=test", "--limits", "timeout_s=30", "--wait", "60", "--json", env=env,
    )  # fmt: skip
    assert code == 0, err
    done = json.loads(out)
    assert (done["state"], done["results"], done["env"]) == (3, "42", {"MODE": "test"})
    assert "0001-01-01" not in out and done["next_run"] is None  # unset times are null, not year 1
    # A task that fails: `task create --wait` and `task results` say so in their exit code.
    code, out, err = await propeller(
        "task", "create", "nope", "--file", str(ADD_WAT), "--wait", "60", "--json", env=env
    )
    assert code == 3, (out, err)
    failed = json.loads(out)
    assert failed["state"] == 4 and failed["error"]
    code, _, err = await propeller("task", "results", failed["id"], env=env)
    assert code == 3 and "Failed" in err
    # The old `--inputs 2 40` form no longer swallows the name: it is refused, saying how to write it.
    code, _, err = await propeller("task", "create", "add", "--inputs", "2", "40", env=env)
    assert code == 2 and "--inputs 2,40" in err
    code, _, err = await propeller("task", "create", "--inputs", "2", "40", "add", env=env)
    assert code == 2 and "--inputs 2,40" in err


async def test_jobs_and_workflows_through_the_cli(embedded_cluster: Cluster, tmp_path: Path) -> None:
    c = embedded_cluster
    await c.add_proplet("cli-j1")
    env = {"PROPELLER_API_URL": f"http://127.0.0.1:{c.manager.api_port}"}
    spec = tmp_path / "job.yaml"
    spec.write_text(
        f"name: adds\nexecution_mode: sequential\ntasks:\n"
        f"  - {{name: add, module: {ADD_WAT}, inputs: [1, 2]}}\n"
        f"  - {{name: add, module: {ADD_WAT}, inputs: [3, 4]}}\n"
    )
    code, out, err = await propeller("job", "create", "--spec", str(spec), "--start", "--json", env=env)
    assert code == 0, err
    created = json.loads(out)
    job_id = created["job_id"]
    for task in created["tasks"]:
        await c.wait_terminal(task["id"])
    code, out, err = await propeller("job", "get", job_id, "--output", str(tmp_path / "job.json"), env=env)
    assert code == 0, err
    saved = json.loads((tmp_path / "job.json").read_text())
    assert (saved["state"], [t["results"] for t in saved["tasks"]]) == ("completed", ["3", "7"])
    assert out.splitlines()[0].split()[:6] == ["JOB", "ID", "NAME", "STATE", "MODE", "TASKS"]
    assert out.splitlines()[1].split()[:5] == [job_id, "adds", "completed", "sequential", "2"]
    code, out, _ = await propeller("job", "list", "--status", "completed", env=env)
    assert code == 0 and job_id in out
    code, out, _ = await propeller("job", "stop", job_id, env=env)
    assert code == 0 and f"stopped job {job_id}" in out
    code, _, err = await propeller("job", "get", "no-such-job", env=env)
    assert code == 1 and "HTTP 404" in err
    # A workflow: the second task waits for the first.
    first = "11111111-1111-4111-8111-111111111111"
    flow = tmp_path / "flow.json"
    flow.write_text(json.dumps([
        {"id": first, "name": "add", "module": ADD_WAT.name, "inputs": [5, 6]},
        {"name": "add", "module": ADD_WAT.name, "inputs": [7, 8], "depends_on": [first]},
    ]))  # fmt: skip
    # Module paths are relative to the spec file: add.wat is not beside it yet.
    code, out, err = await propeller("workflow", "create", "--spec", str(flow), "--start", "--json", env=env)
    assert code == 2 and f"tasks[0].module {tmp_path / ADD_WAT.name}: no such file" in err, (out, err)
    (tmp_path / ADD_WAT.name).write_bytes(ADD_WAT.read_bytes())
    code, out, err = await propeller("workflow", "create", "--spec", str(flow), "--start", "--json", env=env)
    assert code == 0, err
    tasks = json.loads(out)["tasks"]
    workflow_id = tasks[0]["workflow_id"]
    for task in tasks:
        await c.wait_terminal(task["id"])
    code, out, err = await propeller("workflow", "get", workflow_id, "--json", env=env)
    got = json.loads(out)
    assert (got["state"], sorted(t["results"] for t in got["tasks"])) == ("completed", ["11", "15"]), err
    parent, child = sorted(got["tasks"], key=lambda t: t["id"] != first)
    started = dt.datetime.fromisoformat(child["start_time"])
    assert started >= dt.datetime.fromisoformat(parent["finish_time"])  # --start started only the root
    code, out, _ = await propeller("workflow", "list", env=env)
    assert code == 0 and workflow_id in out and "completed" in out
    code, out, _ = await propeller("task", "list", "--workflow", workflow_id, "--json", env=env)
    assert {t["id"] for t in json.loads(out)["tasks"]} == {t["id"] for t in tasks}


async def test_invoke_upload_metrics_alive_and_events(embedded_cluster: Cluster, tmp_path: Path) -> None:
    c = embedded_cluster
    await c.add_proplet("cli-i1")
    env = {"PROPELLER_API_URL": f"http://127.0.0.1:{c.manager.api_port}", "COLUMNS": "80"}
    code, out, err = await propeller(
        "task", "create", "add", "--latent", "--start", "--file", str(ADD_WAT), "--json", env=env
    )
    assert code == 0, err
    latent = json.loads(out)["id"]

    async def deployed() -> bool:
        return (await c.api.get(f"/tasks/{latent}")).json()["state"] == 2  # Running: deployed

    await eventually(deployed, 15, "the latent task deployed")
    code, out, err = await propeller("task", "invoke", latent, "--inputs", "5,6", "--json", env=env)
    assert code == 0 and json.loads(out)["results"] == "11", (out, err)
    code, out, err = await propeller("task", "invoke", latent, "--inputs", "5", env=env)
    assert code == 1 and "expects 2 argument" in out, (out, err)
    # Upload replaces a task's module: the task then runs the new one.
    code, out, err = await propeller("task", "create", "main", "--image-url", "https://example.invalid/m.wasm",
                                     "--json", env=env)  # fmt: skip
    assert code == 0, err
    task_id = json.loads(out)["id"]
    code, out, err = await propeller("task", "upload", task_id, str(ADD_WAT), "--json", env=env)
    assert code == 0, err
    module = wasmtime.wat2wasm(ADD_WAT.read_text())
    assert json.loads(out)["module"] == {"size": len(module), "sha256": hashlib.sha256(module).hexdigest()}
    # A failed task with a long error: each table row stays on one line of the terminal.
    await c.run_task({"name": "nope" * 20, "file": base64.b64encode(module).decode()})
    code, out, _ = await propeller("task", "list", env=env)
    assert code == 0 and all(len(line) <= 80 for line in out.splitlines()), out
    assert "0001-01-01" not in out
    # Metrics: the Prometheus text, filtered, also written to a file.
    saved = tmp_path / "m.txt"
    code, out, err = await propeller("metrics", "propeller_tasks", "--output", str(saved), env=env)
    assert code == 0, err
    assert 'propeller_tasks{state="completed"}' in out and "proplets" not in out
    assert saved.read_text() == out
    code, out, _ = await propeller("metrics", "propeller_tasks", "--json", env=env)
    assert {s["labels"].get("state") for s in json.loads(out) if s["name"] == "propeller_tasks"} >= {"failed"}
    code, _, err = await propeller("metrics", "no_such_metric", env=env)
    assert code == 2 and "no metric name contains 'no_such_metric'" in err
    # A proplet's alive history and its timeline.
    code, out, err = await propeller("proplets", "alive", "cli-i1", "--json", env=env)
    assert code == 0 and json.loads(out)["history"], err
    code, out, err = await propeller("proplets", "events", "cli-i1", env=env)
    assert code == 0 and "joined" in out, err
