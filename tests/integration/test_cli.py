"""The `propeller` CLI against a running manager: tables, JSON on request, non-zero exits on errors."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from tests.integration.conftest import Cluster

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


async def test_task_lifecycle_through_the_cli(embedded_cluster: Cluster) -> None:
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
    code, out, _ = await propeller("task", "get", task_id, *api)
    assert code == 0
    header, row = out.splitlines()[:2]
    assert header.split() == ["ID", "NAME", "STATE", "PROPLET", "RESULTS", "ERROR"]
    assert row.split()[:5] == [task_id, "add", "Completed", "cli-p1", "42"]
    code, out, _ = await propeller("task", "results", task_id, *api)
    assert code == 0 and json.loads(out) == "42"
    code, out, _ = await propeller("proplets", "list", *api)
    assert code == 0 and "cli-p1" in out and "alive" in out


async def test_cli_errors_exit_non_zero_and_say_why(embedded_cluster: Cluster) -> None:
    api = ["--api-url", f"http://127.0.0.1:{embedded_cluster.manager.api_port}"]
    code, _, err = await propeller("task", "get", "00000000-0000-4000-8000-000000000000", *api)
    assert code == 1 and "HTTP 404" in err and "not found" in err
    code, _, err = await propeller("task", "create", "add", "--file", "/no/such.wasm", *api)
    assert code == 2 and "no such file" in err
    code, _, err = await propeller("proplets", "show", "ghost", "--api-url", "http://127.0.0.1:9")
    assert code == 1 and "cannot reach the manager" in err


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
