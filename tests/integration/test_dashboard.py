"""The web dashboard in a real headless Chromium (playwright driving the system /usr/bin/chromium).

A real `propeller manager` process (embedded broker) and two `propeller proplet` processes (a host one
and an esp32s3-profile one). The browser may reach 127.0.0.1 only: every other request is aborted and
recorded, so the pages must work offline (vendored htmx, Swagger UI and ReDoc).

With PROPELLER_SCREENSHOTS=1 the test also writes a screenshot of each page into docs/screenshots/.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port, services_required
from tests.integration.conftest import ADD_B64

pytestmark = [pytest.mark.chromium, pytest.mark.slow]

CHROMIUM = os.environ.get("PROPELLER_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
ADD = ADD_B64
WAIT_MS = 60_000  # generous: the machine is shared


def _need_chromium() -> None:
    reason = ""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        reason = "playwright is not installed (pip install -e '.[dev]')"
    if not reason and not Path(CHROMIUM).exists():
        reason = f"Chromium is not installed at {CHROMIUM} (apt-get install -y chromium)"
    if reason:
        if services_required():
            pytest.fail(f"{reason}, and PROPELLER_REQUIRE_SERVICES=1 requires it")
        pytest.skip(reason)


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"process exited: {log.read_text()[-2000:]}"
        try:
            if httpx.get(url, timeout=0.5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not come up: {log.read_text()[-2000:]}")


class Fleet:
    """A manager process and proplet processes, each cleaned up by PID."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.domain = f"ui-{uuid.uuid4().hex[:8]}"
        self.mqtt_port = free_port()
        self.api_port = free_port()
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.reports = tmp / "reports"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = self.tmp / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "orchestrator.cli", *args], stdout=out, stderr=subprocess.STDOUT
            )
        self.procs[name] = proc
        return proc

    def start_manager(self) -> None:
        proc = self.spawn(
            "manager",
            "manager",
            "--broker",
            f"embedded://127.0.0.1:{self.mqtt_port}",
            "--db",
            str(self.tmp / "m.db"),
            "--api",
            f"127.0.0.1:{self.api_port}",
            "--domain",
            self.domain,
            "--heartbeat-interval",
            "0.5",
            "--liveness-timeout",
            "2",
            "--reports-dir",
            str(self.reports),
        )
        _wait_http(f"{self.url}/health", proc, self.tmp / "manager.log")

    def start_proplet(self, proplet_id: str, *extra: str) -> None:
        # The manager's embedded broker is closed: enroll the proplet through the API first.
        enrolled = httpx.post(f"{self.url}/proplets/enroll", json={"id": proplet_id}, timeout=10)
        assert enrolled.status_code == 201, enrolled.text
        identity = self.tmp / f"{proplet_id}.identity.json"
        identity.write_text(enrolled.text)
        self.spawn(
            proplet_id,
            "proplet",
            "--broker",
            f"mqtt://127.0.0.1:{self.mqtt_port}",
            "--identity",
            str(identity),
            "--domain",
            self.domain,
            "--heartbeat-interval",
            "0.5",
            "--metrics-interval",
            "0",
            "--cache-dir",
            "",
            *extra,
        )

    def alive(self, proplet_id: str) -> bool:
        r = httpx.get(f"{self.url}/proplets/{proplet_id}", timeout=5)
        return r.status_code == 200 and bool(r.json()["alive"])

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    _need_chromium()
    f = Fleet(tmp_path)
    f.reports.mkdir()
    (f.reports / "power_loss").mkdir()
    report = "<html><body><h1>power loss report</h1></body></html>"
    (f.reports / "power_loss" / "twin.html").write_text(report)
    try:
        f.start_manager()
        f.start_proplet("host-1")
        f.start_proplet("board-1", "--profile", "esp32s3")
        deadline = time.monotonic() + 30
        while not (f.alive("host-1") and f.alive("board-1")):
            assert time.monotonic() < deadline, "proplets did not join"
            time.sleep(0.1)
        yield f
    finally:
        f.stop()


@pytest.fixture
def browser_page(fleet: Fleet) -> Iterator[tuple[Any, list[str]]]:
    """A Chromium page that may only reach 127.0.0.1; the list collects every blocked URL."""
    from playwright.sync_api import sync_playwright

    blocked: list[str] = []

    def only_local(route: Any) -> None:
        url = route.request.url
        if url.startswith(("http://127.0.0.1:", "data:", "blob:")):
            route.continue_()
        else:
            blocked.append(url)
            route.abort()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1100, "height": 620})
            context.route("**/*", only_local)
            yield context.new_page(), blocked
        finally:
            browser.close()


def _shot(page: Any, name: str) -> None:
    if os.environ.get("PROPELLER_SCREENSHOTS") == "1":
        from PIL import Image  # Pillow comes with matplotlib

        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        page.screenshot(path=str(path))
        # 64 colours: a page is flat colours and text; keeps each file ~10-25 KB in the repository.
        Image.open(path).convert("RGB").quantize(colors=64).save(path, optimize=True)


def test_dashboard_follows_a_task_and_a_proplet_death(
    fleet: Fleet, browser_page: tuple[Any, list[str]]
) -> None:
    from playwright.sync_api import expect

    page, blocked = browser_page

    # Fleet: both kinds of proplet, alive.
    page.goto(f"{fleet.url}/ui/")
    expect(page).to_have_url(f"{fleet.url}/ui/fleet")
    expect(page.locator("#proplet-host-1")).to_have_attribute("data-state", "alive", timeout=WAIT_MS)
    board = page.locator("#proplet-board-1")
    expect(board).to_have_attribute("data-state", "alive", timeout=WAIT_MS)
    expect(board).to_contain_text("embedded")
    expect(page.locator("#proplet-host-1")).to_contain_text("host")

    # A task submitted through the API, followed on its page to its result (the page refreshes itself).
    created = httpx.post(
        f"{fleet.url}/tasks",
        json={"name": "add", "file": ADD, "inputs": [2, 40], "proplet_id": "host-1", "start": True},
        timeout=10,
    )
    assert created.status_code == 201, created.text
    task_id = created.json()["id"]
    page.goto(f"{fleet.url}/ui/tasks/{task_id}")
    expect(page.locator("#task-state")).to_have_text("Completed", timeout=WAIT_MS)
    expect(page.locator("#task-results")).to_contain_text("42")
    # Its timeline, worded as `propeller task trace` words it.
    expect(page.locator("#events")).to_contain_text("created")
    expect(page.locator("#events")).to_contain_text("on host-1")
    expect(page.locator("#events")).to_contain_text("start published")
    expect(page.locator("#events")).to_contain_text("Completed on host-1", timeout=WAIT_MS)
    # Enrolled proplets sign receipts; the manager verified this one.
    expect(page.locator("#task-receipt")).to_contain_text("verified")
    expect(page.locator("#task-receipt")).not_to_contain_text("NOT")
    expect(page.locator(f'#task-receipt a[href="/tasks/{task_id}/receipt"]')).to_be_visible()
    _shot(page, "task")

    # The proplet it ran on, one click away, lists it.
    page.get_by_role("link", name="host-1").click()
    expect(page).to_have_url(f"{fleet.url}/ui/proplets/host-1")
    expect(page.locator("#proplet-state")).to_have_text("alive")
    expect(page.locator(f"#task-{task_id}")).to_contain_text("Completed")
    _shot(page, "proplet")

    # The task list, filtered by state and proplet, links to it.
    page.goto(f"{fleet.url}/ui/tasks?state=completed&proplet_id=host-1")
    expect(page.locator(f"#task-{task_id}")).to_contain_text("Completed")
    page.goto(f"{fleet.url}/ui/tasks?state=failed")
    expect(page.locator("#tasks tbody tr")).to_have_count(0)
    page.goto(f"{fleet.url}/ui/tasks")
    page.locator(f"#task-{task_id} a").click()
    expect(page).to_have_url(f"{fleet.url}/ui/tasks/{task_id}")
    page.goto(f"{fleet.url}/ui/tasks?name=add")
    _shot(page, "tasks")

    # A proplet dies (kill -9): the open fleet page shows it dead once the liveness timeout passes.
    page.goto(f"{fleet.url}/ui/fleet")
    expect(board).to_have_attribute("data-state", "alive", timeout=WAIT_MS)
    fleet.procs["board-1"].kill()
    fleet.procs["board-1"].wait()
    expect(board).to_have_attribute("data-state", "dead", timeout=WAIT_MS)
    expect(page.locator("#proplet-host-1")).to_have_attribute("data-state", "alive")
    expect(page.locator(".summary")).to_contain_text("dead")
    _shot(page, "fleet")
    page.get_by_role("link", name="board-1").click()
    expect(page.locator("#proplet-state")).to_have_text("dead")
    expect(page.locator("#events")).to_contain_text("died", timeout=WAIT_MS)

    # Scenario reports from --reports-dir, opened from the list.
    page.goto(f"{fleet.url}/ui/reports")
    link = page.get_by_role("link", name="power_loss/twin.html")
    expect(link).to_be_visible()
    _shot(page, "reports")
    link.click()
    expect(page.locator("h1")).to_have_text("power loss report")

    assert blocked == [], f"the dashboard asked for non-local resources: {blocked}"


def test_api_docs_render_offline(fleet: Fleet, browser_page: tuple[Any, list[str]]) -> None:
    from playwright.sync_api import expect

    page, blocked = browser_page
    page.goto(f"{fleet.url}/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text(
        "Propeller manager", timeout=WAIT_MS
    )
    expect(page.locator(".opblock-summary-path").first).to_be_visible()
    _shot(page, "docs")
    page.goto(f"{fleet.url}/redoc")
    expect(page.locator("redoc h1").first).to_contain_text("Propeller manager", timeout=WAIT_MS)
    _shot(page, "redoc")
    assert blocked == [], f"the docs asked for non-local resources: {blocked}"
