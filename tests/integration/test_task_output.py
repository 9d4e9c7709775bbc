"""Task output end to end: manager, broker and Python proplet running modules built here from WAT.

A WASI command's stdout is its result (typed: JSON parses), its stderr and the runtime's notes are the
task's logs, served by ``GET /tasks/{id}/logs`` and ``propeller task logs`` (``--follow`` streams them
while the task runs); reactors are initialised before their export is called; a Go-shaped command
runs as a whole.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import wasmtime

from orchestrator import wire
from orchestrator.adapters.mqtt import MqttClient, parse_broker_url
from proplets.output import OUTPUT_CUT, task_output
from proplets.runtime import CancelToken, Limits, RunRequest
from proplets.runtime.wasmtime_runtime import WasmtimeRuntime
from tests.integration.conftest import Cluster, eventually
from tests.integration.test_cli import propeller

WASM_DIR = Path(__file__).resolve().parents[1] / "wasm"


def module(name: str) -> str:
    return base64.b64encode(wasmtime.wat2wasm((WASM_DIR / name).read_text())).decode()


async def logs(c: Cluster, task_id: str, **params: Any) -> dict[str, Any]:
    response = await c.api.get(f"/tasks/{task_id}/logs", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def stream(body: dict[str, Any], name: str) -> str:
    return "".join(row["data"] for row in body["logs"] if row["stream"] == name)


async def test_json_result_and_progress_logs_from_the_api_and_the_cli(cluster: Cluster) -> None:
    c = cluster
    await c.add_proplet("out-p1")
    task = await c.run_task(
        {"name": "fl-client", "file": module("json_progress.wat"), "env": {"ROUND_ID": "r1"}}
    )
    assert task["state"] == 3, task
    expected = {"round_id": "r1", "num_samples": 32, "metrics": {"loss": 0.25}}
    # the result is stdout, byte for byte: nothing of stderr is appended
    plain = (await c.api.get(f"/tasks/{task['id']}/results")).json()
    assert plain == {"results": json.dumps(expected, separators=(",", ":")) + "\n", "result_type": "json"}
    parsed = (await c.api.get(f"/tasks/{task['id']}/results", params={"format": "json"})).json()
    assert parsed["results"] == expected
    body = await logs(c, task["id"])
    assert body["done"] and body["attempt"] == 1 and all(row["final"] for row in body["logs"])
    assert stream(body, "stderr") == (
        "progress: loading model\nprogress: epoch 1/2 loss=0.50\nprogress: epoch 2/2 loss=0.25\n"
    )
    notes = stream(body, "runtime")
    assert "entry: _start (WASI command)" in notes and "from inline file" in notes and "exit code 0" in notes

    api = ["--api-url", f"http://127.0.0.1:{c.manager.api_port}"]
    code, out, err = await propeller("task", "results", task["id"], "--format", "json", *api)
    assert code == 0 and json.loads(out) == expected, err
    code, out, err = await propeller("task", "logs", task["id"], *api)
    assert code == 0, err
    assert "progress: epoch 2/2 loss=0.25" in out and "[runtime] entry: _start (WASI command)" in out
    assert "round_id" not in out  # the result is not in the logs


async def test_follow_streams_a_running_tasks_stderr_until_it_ends(embedded_cluster: Cluster) -> None:
    c = embedded_cluster
    await c.add_proplet("out-p2")
    created = await c.api.post("/tasks", json={"name": "ticker", "file": module("ticker.wat")})
    task_id = created.json()["id"]
    follower = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "orchestrator.cli", "task", "logs", task_id, "--follow", "--interval", "0.1",
        "--api-url", f"http://127.0.0.1:{c.manager.api_port}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert follower.stdout is not None
        assert (await c.api.post(f"/tasks/{task_id}/start")).status_code == 200
        lines = [await asyncio.wait_for(follower.stdout.readline(), 30) for _ in range(3)]
        assert lines == [b"tick\n"] * 3
        # those lines came while the task was still running: they were streamed, not read afterwards
        assert (await c.api.get(f"/tasks/{task_id}")).json()["state"] == 2
        assert (await c.api.post(f"/tasks/{task_id}/stop")).status_code == 200
        _, err = await asyncio.wait_for(follower.communicate(), 30)
        assert follower.returncode == 0, err
    finally:
        if follower.returncode is None:
            follower.kill()
            await follower.wait()
    live = await logs(c, task_id, live=1)
    assert live["done"] and len(live["logs"]) >= 3 and stream(live, "stderr").startswith("tick\ntick\ntick\n")
    assert [row["seq"] for row in live["logs"]] == list(range(len(live["logs"])))

    async def stopped_attempt_has_its_final_record() -> bool:
        return any(row["final"] for row in (await logs(c, task_id))["logs"])

    await eventually(stopped_attempt_has_its_final_record, 15, "the stopped attempt's final logs")
    final = await logs(c, task_id)
    assert stream(final, "stderr").startswith("tick\n") and "entry: _start" in stream(final, "runtime")


async def test_a_daemon_streams_its_stdout_while_it_runs_until_stopped(embedded_cluster: Cluster) -> None:
    c = embedded_cluster
    await c.add_proplet("out-d1")
    api = ["--api-url", f"http://127.0.0.1:{c.manager.api_port}"]
    spec = {"name": "daemon", "file": module("daemon_sleep.wat"), "daemon": True}
    task_id = (await c.api.post("/tasks", json=spec)).json()["id"]
    follower = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "orchestrator.cli", "task", "logs", task_id, "--follow", "--interval", "0.1",
        *api, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert follower.stdout is not None
        assert (await c.api.post(f"/tasks/{task_id}/start")).status_code == 200
        # it prints a line, then sleeps in a host call: the line is streamed while it sleeps
        assert await asyncio.wait_for(follower.stdout.readline(), 30) == b"first line\n"
        running = await logs(c, task_id)
        assert running["state"] == 2 and not running["done"]
        assert stream(running, "stdout").startswith("first line\n")
        code, _, err = await propeller("task", "stop", task_id, *api)
        assert code == 0, err
        stopped = await c.wait_terminal(task_id, timeout=30)
        assert stopped["state"] != 2 and "wall-time" not in stopped.get("error", "")
        _, err_bytes = await asyncio.wait_for(follower.communicate(), 30)
        assert follower.returncode == 0, err_bytes
    finally:
        if follower.returncode is None:
            follower.kill()
            await follower.wait()


async def test_reactor_and_command_shapes_run_the_way_their_toolchains_expect(
    embedded_cluster: Cluster,
) -> None:
    c = embedded_cluster
    await c.add_proplet("out-p3")

    async def run(wat: str, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
        task = await c.run_task({"name": name, "file": module(wat)})
        return task, await logs(c, task["id"])

    answer, answer_logs = await run("reactor.wat", "answer")  # _initialize, then the export's return value
    assert (answer["state"], answer["results"]) == (3, "42")
    assert stream(answer_logs, "stderr") == "init done\ncomputing the answer\n"
    assert "entry: _initialize, then 'answer' (reactor)" in stream(answer_logs, "runtime")

    report, _ = await run("reactor.wat", "report")  # an export that returns nothing: its stdout
    assert (report["state"], report["results"]) == (3, '{"shape":"reactor"}')

    go, go_logs = await run("go_command.wat", "run")  # Go traps if `run` is called before `_start`
    assert (go["state"], go["results"], go.get("error")) == (3, '{"from":"go main"}\n', None)
    assert "'run' is a //go:wasmexport of a Go command" in stream(go_logs, "runtime")

    failed, failed_logs = await run("wasi_exit.wat", "_start")
    assert (failed["state"], failed["error"]) == (4, "exited with code 3: boom")
    assert stream(failed_logs, "stderr") == "boom\n" and "exit code 3" in stream(failed_logs, "runtime")


async def test_binary_stdout_is_base64_with_a_flag_and_raw_bytes_on_request(
    embedded_cluster: Cluster,
) -> None:
    c = embedded_cluster
    await c.add_proplet("out-p4")
    task = await c.run_task({"name": "_start", "file": module("binary_out.wat")})
    body = (await c.api.get(f"/tasks/{task['id']}/results")).json()
    assert body == {"results": "/wD+AQ==", "result_type": "binary", "encoding": "base64"}
    raw = await c.api.get(f"/tasks/{task['id']}/results", params={"format": "raw"})
    assert raw.content == b"\xff\x00\xfe\x01" and raw.headers["content-type"] == "application/octet-stream"
    refused = await c.api.get(f"/tasks/{task['id']}/results", params={"format": "json"})
    assert refused.status_code == 409 and "binary, not JSON" in refused.json()["error"]
    bad = await c.api.get(f"/tasks/{task['id']}/results", params={"format": "xml"})
    assert bad.status_code == 400 and "format" in bad.json()["error"]
    bad_attempt = await c.api.get(f"/tasks/{task['id']}/logs", params={"attempt": "x"})
    assert bad_attempt.status_code == 400 and "attempt" in bad_attempt.json()["error"]

    async def no_logs_for_unknown_attempt() -> bool:
        return (await logs(c, task["id"], attempt=7))["logs"] == []

    await eventually(no_logs_for_unknown_attempt, 5, "an empty page for an attempt that never ran")


def test_runtime_streams_stderr_while_the_module_runs_and_cuts_a_flood_with_a_marker() -> None:
    wasm = base64.b64decode(module("ticker.wat"))
    cancel = CancelToken()
    pieces: list[bytes] = []

    def seen(stream: str, chunk: bytes) -> None:
        assert stream == "stderr"  # stdout is streamed only when asked (daemons)
        pieces.append(chunk)
        if b"".join(pieces).count(b"tick") >= 3:
            cancel.cancel()  # stopping from the callback proves the pieces came during the run

    with WasmtimeRuntime() as rt:
        ticked = rt.run(RunRequest("t", wasm, limits=Limits(timeout_s=60), on_output=seen), cancel)
        assert ticked.error == "stopped" and b"".join(pieces) == ticked.stderr
        flood = base64.b64decode(module("wasi_flood.wat"))
        out = rt.run(RunRequest("t", flood, limits=Limits(output_bytes=1000, timeout_s=30)))
    assert out.error == "output exceeded 1000 bytes"
    result = task_output(out, 1024)
    assert result.result_type == "text" and result.results.startswith("x" * 1000)
    assert result.results[1000:] == OUTPUT_CUT.format(shown=1000, total=out.stdout_total)
    assert "limit hit: output exceeded 1000 bytes" in result.logs[0].data


async def test_an_upstream_proplet_sending_only_a_result_keeps_working(embedded_cluster: Cluster) -> None:
    c = embedded_cluster
    topics = c.manager.engine.topics
    starts: asyncio.Queue[bytes] = asyncio.Queue()
    # Enrolled as upstream's provisioning does (client id + key as user name + password); it cannot sign.
    await c.manager.enroll("upstream", "rust-proplet", client_id="rust-proplet", key="rust-key")
    url = dataclasses.replace(parse_broker_url(c.broker_url), username="rust-proplet", password="rust-key")
    rust = MqttClient(url, "rust-proplet", on_message=lambda _t, payload: starts.put_nowait(payload))
    rust.subscribe(topics.start, 1)
    await rust.connect()
    try:
        alive = wire.Heartbeat("rust-proplet", "alive", "default")  # upstream's heartbeat: no task list
        rust.publish(topics.alive, wire.encode(alive), 1)
        await eventually(lambda: c.alive("rust-proplet"), 10, "the upstream proplet alive")
        created = await c.api.post("/tasks", json={"name": "run", "file": module("json_progress.wat"),
                                                   "proplet_id": "rust-proplet"})  # fmt: skip
        task_id = created.json()["id"]
        assert (await c.api.post(f"/tasks/{task_id}/start")).status_code == 200
        start = json.loads(await asyncio.wait_for(starts.get(), 10))
        assert start["id"] == task_id
        # what upstream's Rust proplet publishes: results text and error, nothing else of ours
        result = {"task_id": task_id, "proplet_id": "rust-proplet", "results": '{"a": 1}', "error": None}
        rust.publish(topics.results, json.dumps(result).encode(), 1)
        done = await c.wait_terminal(task_id)
    finally:
        await rust.disconnect()
    assert done["state"] == 3 and "result_type" not in done
    plain = (await c.api.get(f"/tasks/{task_id}/results")).json()
    assert plain == {"results": '{"a": 1}'}  # upstream's shape, exactly
    parsed = (await c.api.get(f"/tasks/{task_id}/results", params={"format": "json"})).json()
    assert parsed["results"] == {"a": 1}
    body = await logs(c, task_id)
    assert body["logs"] == [] and body["done"]


async def test_a_signed_command_result_verifies_and_keeps_its_type_and_logs(tmp_path: Path) -> None:
    from orchestrator.adapters.broker import EmbeddedBroker
    from tests.integration.test_attacks_results import TrustedCluster

    broker = EmbeddedBroker("127.0.0.1", 0)
    await broker.start()
    trusted = TrustedCluster(broker.url, tmp_path)
    await trusted.start()
    try:
        await trusted.add_proplet("signer")
        created = await trusted.api.post("/tasks", json={"name": "run", "file": module("json_progress.wat")})
        task_id = created.json()["id"]
        assert (await trusted.api.post(f"/tasks/{task_id}/start")).status_code == 200

        async def finished() -> bool:
            return int((await trusted.task(task_id))["state"]) >= 3

        await eventually(finished, 15, "the signed task to finish")
        task = await trusted.task(task_id)
        # the receipt signs the result that was sent: stdout alone, typed JSON
        assert task["state"] == 3 and task["verified"] is True and task["result_type"] == "json"
        body = (await trusted.api.get(f"/tasks/{task_id}/logs")).json()
        assert "progress: epoch 2/2" in "".join(r["data"] for r in body["logs"] if r["stream"] == "stderr")
    finally:
        await trusted.close()
        await broker.stop()
