"""The scenario's workload, submitted to the manager's REST API at its scheduled times.

Pure parts: ``load_module`` (the Wasm bytes of a workload item), ``task_spec`` (the ``POST /tasks``
body) and ``pick_device`` (where a targeted task is pinned). The manager has no kind filter for one
task, so a ``target`` that not every device satisfies is honoured by pinning the task (``proplet_id``)
to a matching device, chosen with the scenario's seeded rng among those the manager holds alive. When
every device of the fleet matches, the manager places the task itself (and can re-place it anywhere).

``Submitter`` does the I/O: it creates then starts each task, retrying while the manager is away (a
``manager_kill``) or the pinned device is not alive yet (409), and registers every accepted task with
the observer so the trace knows its name.
"""

from __future__ import annotations

import asyncio
import base64
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from twin.observer import ManagerObserver, TaskRef
from twin.scenario.spec import DeviceRef, Target, WorkloadItem

WASM_DIR = Path(__file__).resolve().parent / "wasm"
BUILTIN_FILES = {
    "add": Path(__file__).resolve().parents[1] / "proplets" / "wasm" / "add.wat",
    "fib": WASM_DIR / "fib.wat",
    "mem64k": WASM_DIR / "mem64k.wat",
}
LIMIT_KEYS = {"fuel": "fuel", "wall_time": "timeout_s", "memory": "memory_bytes", "output": "output_bytes"}


class WorkloadError(ValueError):
    """A workload item cannot be turned into a task; names the item and what is wrong."""


def load_module(module: str) -> bytes:
    """Wasm bytes of a built-in (add, fib, mem64k) or a .wat/.wasm path."""
    path = BUILTIN_FILES.get(module, Path(module))
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise WorkloadError(f"module {module!r}: cannot read {path}: {exc.strerror}") from None
    if path.suffix != ".wat":
        return data
    import wasmtime  # lazy: validating a scenario must not need it

    try:
        return bytes(wasmtime.wat2wasm(data.decode("utf-8")))
    except Exception as exc:
        raise WorkloadError(f"module {module!r}: {path} is not valid WAT: {exc}") from None


def task_spec(
    item: WorkloadItem, wasm: bytes, *, max_attempts: int, proplet_id: str | None = None
) -> dict[str, Any]:
    """The ``POST /tasks`` body for one task of ``item``."""
    spec: dict[str, Any] = {
        "name": item.function,
        "file": base64.b64encode(wasm).decode("ascii"),
        "inputs": list(item.inputs),
        "max_attempts": max_attempts,
    }
    if item.memory_bytes:
        spec["memory_bytes"] = int(item.memory_bytes)
    limits = {LIMIT_KEYS[k]: (float(v) if k == "wall_time" else int(v)) for k, v in item.limits.items()}
    if limits:
        spec["limits"] = limits
    if proplet_id:
        spec["proplet_id"] = proplet_id
    return spec


def matches(target: Target, device: DeviceRef) -> bool:
    if target.device is not None and device.name != target.device:
        return False
    if target.kind is not None and device.kind != target.kind:
        return False
    return all(t in device.tags for t in target.tags)


def pick_device(
    target: Target | None, fleet: Sequence[DeviceRef], alive: Callable[[str], bool], rng: random.Random
) -> str | None:
    """The device to pin a task to, or None to let the manager place it.

    None when there is no target or every device matches it; otherwise a seeded choice among the
    matching devices the manager holds alive (among all matching ones when none is alive: the start
    is then retried until that device is back)."""
    if target is None:
        return None
    candidates = [d for d in fleet if matches(target, d)]
    if not candidates:
        raise WorkloadError(f"no device of the fleet matches the target {target}")
    if len(candidates) == len(fleet) and target.device is None:
        return None
    live = [d for d in candidates if alive(d.name)]
    return rng.choice(live or candidates).name


def retryable(status: int, message: str, start: bool) -> bool:
    """Whether a failed create (``start`` False) or start of a task is worth trying again: a 409 (the
    pinned device is not alive yet), a 5xx (the manager is restarting), or a start the manager answers
    404 because it has not heard of the pinned proplet yet. A 400 will not change by waiting."""
    return status in (409, 500, 502, 503) or (status == 404 and start and "proplet" in message)


@dataclass
class Submission:
    item: WorkloadItem
    name: str
    at: float


def schedule(items: Sequence[WorkloadItem]) -> list[Submission]:
    """Every task of the workload, in submission order."""
    subs = [Submission(w, n, t) for w in items for n, t in zip(w.task_names(), w.submit_times(), strict=True)]
    return sorted(subs, key=lambda s: s.at)


@dataclass
class Submitter:
    api_url: str
    observer: ManagerObserver
    fleet: Sequence[DeviceRef]
    proplet_ids: Mapping[str, str]  # device name -> proplet id
    rng: random.Random
    max_attempts: int
    now: Callable[[], float]
    retry_s: float = 0.25
    give_up_s: float = 30.0
    errors: list[str] = field(default_factory=list)
    _modules: dict[str, bytes] = field(default_factory=dict)
    _client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> Submitter:
        self._client = httpx.AsyncClient(timeout=5.0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.aclose()

    def module(self, item: WorkloadItem) -> bytes:
        if item.module not in self._modules:
            self._modules[item.module] = load_module(item.module)
        return self._modules[item.module]

    async def submit(self, sub: Submission) -> str | None:
        """Create and start one task; its manager id, or None (the reason goes to ``errors``)."""
        assert self._client is not None, "use Submitter as an async context manager"
        item, wasm = sub.item, self.module(sub.item)
        device = pick_device(item.target, self.fleet, self.observer.alive, self.rng)
        spec = task_spec(item, wasm, max_attempts=self.max_attempts,
                         proplet_id=self.proplet_ids[device] if device else None)  # fmt: skip
        created = await self._call("POST", "/tasks", sub.name, json=spec)
        if created is None:
            return None
        task_id = str(created["id"])
        ref = TaskRef(sub.name, item.name, item.memory_bytes)
        self.observer.register(task_id, ref, self.now())
        if await self._call("POST", f"/tasks/{task_id}/start", sub.name) is None:
            return None
        return task_id

    async def _call(self, method: str, path: str, name: str, json: Any = None) -> dict[str, Any] | None:
        assert self._client is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.give_up_s
        last = ""
        while loop.time() < deadline:
            try:
                response = await self._client.request(method, self.api_url + path, json=json)
            except httpx.HTTPError as exc:  # the manager is restarting: try again
                last = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code < 300:
                    body = response.json() if response.content else {}
                    return body if isinstance(body, dict) else {}
                last = f"HTTP {response.status_code}: {response.text[:200]}"
                if not retryable(response.status_code, response.text, path.endswith("/start")):
                    break
            await asyncio.sleep(self.retry_s)
        self.errors.append(f"{name}: {method} {path} failed: {last}")
        return None


async def list_tasks(client: httpx.AsyncClient, api_url: str) -> list[dict[str, Any]]:
    """Every task the manager holds (``GET /tasks`` pages of 100)."""
    out: list[dict[str, Any]] = []
    offset = 0
    while True:
        response = await client.get(f"{api_url}/tasks", params={"offset": offset, "limit": 100})
        response.raise_for_status()
        page = response.json()
        tasks = page.get("tasks") or []
        out.extend(tasks)
        offset += len(tasks)
        if not tasks or offset >= int(page.get("total", 0)):
            return out
