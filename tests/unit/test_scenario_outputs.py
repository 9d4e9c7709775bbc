"""Trace files, the HTML report, JUnit XML and the progress bar."""

from __future__ import annotations

import base64
import io
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.unit.scenario_helpers import lwt, lwt_trace
from twin.scenario.expectations import evaluate_all
from twin.scenario.junit import junit_xml
from twin.scenario.progress import Progress
from twin.scenario.report import render_html
from twin.scenario.result import ScenarioResult
from twin.scenario.spec import load_scenario
from twin.scenario.trace import Trace, TraceEvent

ROOT = Path(__file__).resolve().parents[2]


def result(dead_after: float = 2.5) -> ScenarioResult:
    s, tr = lwt(), lwt_trace(dead_after)
    return ScenarioResult(s, tr, evaluate_all(tr, s), wall_s=1.25)


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_trace_round_trips_with_header(tmp_path: Path, suffix: str) -> None:
    tr = lwt_trace()
    back = Trace.read(tr.write(tmp_path / f"t{suffix}"))
    assert (back.scenario, back.seed, back.meta["duration_s"]) == ("lwt_reschedule", 42, 20.0)
    assert back.events == tr.events
    assert back.device_of("p2") == "esp-2"
    if suffix == ".jsonl":
        assert (tmp_path / "t.jsonl").read_text().splitlines()[0].startswith('{"trace": 1')


def test_trace_rejects_bad_events_and_files(tmp_path: Path) -> None:
    tr = Trace()
    with pytest.raises(ValueError, match="kind must be one of"):
        tr.emit(0, "devcie", "x")
    with pytest.raises(ValueError, match=r"device state must be one of .* got 'zombie'"):
        tr.emit(0, "device", "x", state="zombie")
    with pytest.raises(ValueError, match="task state must be one of"):
        tr.emit(0, "task", "t", state="Done")
    with pytest.raises(ValueError, match="boolean 'alive'"):
        tr.emit(0, "proplet", "p", alive="yes")
    (tmp_path / "x.json").write_text('{"a": 1}\n')
    with pytest.raises(ValueError, match=r"x\.json: not a scenario trace"):
        Trace.read(tmp_path / "x.json")


def test_trace_views() -> None:
    tr = lwt_trace()
    tr.append(TraceEvent(0.2, "note", "x", {"text": "late report is sorted in"}))
    assert [e.t for e in tr.events] == sorted(e.t for e in tr.events)
    spans = tr.device_timeline("esp-1")
    assert [(s.state, s.start, s.end) for s in spans] == [
        ("booting", 0.1, 0.3),
        ("online", 0.3, 3.0),
        ("dead", 3.0, 20.0),
    ]
    assert [s.state for s in tr.manager_view("esp-1")] == ["alive", "dead"]
    finals = {n: t.final_state for n, t in tr.tasks().items()}
    assert set(finals.values()) == {"Completed"} and len(finals) == 6
    (w,) = tr.faults()
    assert (w.subject, w.fault, w.start, w.end) == ("esp-1", "power_loss", 3.0, None)
    assert tr.free_memory_at("esp-2", 5.0) == 200_000 and tr.free_memory_at("esp-2", 0.0) is None


def png_of(page: str) -> bytes:
    m = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert m is not None
    return base64.b64decode(m.group(1))


def test_html_report_has_verdict_table_and_plot() -> None:
    bad = result(dead_after=5.0)
    page = render_html(bad)
    assert "<title>lwt_reschedule: FAIL</title>" in page
    assert '<table id="expectations">' in page
    assert "esp-1 was marked dead 5.00 s after power_loss at t=3.00 s; bound 4.5 s" in page
    assert page.count('<tr class="ok">') == 4 and page.count('<tr class="bad">') == 1
    png = png_of(page)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert "<h2>Devices</h2>" in page and "<td>esp-3</td>" in page
    assert "<script" not in page and "http" not in page.split("<body>", 1)[1]  # self-contained


def test_html_report_aggregates_large_fleets() -> None:
    s = load_scenario(ROOT / "scenarios" / "reconnect_storm.yaml")
    tr = Trace(s.name, s.seed, {"duration_s": s.duration_s})
    for i, d in enumerate(s.devices()):
        tr.emit(0.01 * i, "device", d.name, state="online")
        tr.emit(0.01 * i + 0.5, "proplet", d.name, alive=True)
    tr.emit(10, "fault", "broker", fault="broker_restart", phase="start")
    tr.emit(13, "fault", "broker", fault="broker_restart", phase="end")
    page = render_html(ScenarioResult(s, tr, evaluate_all(tr, s)))
    assert "<h2>Fleet</h2>" in page and "<td>500</td>" in page and "<h2>Devices</h2>" not in page
    assert png_of(page)[:4] == b"\x89PNG"


def test_junit_xml_has_one_case_per_expectation() -> None:
    good, bad = result(2.5), result(5.0)
    crashed = ScenarioResult(lwt(), Trace(), [], error="OSError: broker port in use")
    root = ET.fromstring(junit_xml([good, bad, crashed]))
    assert root.tag == "testsuites" and root.get("tests") == "11" and root.get("failures") == "1"
    assert root.get("errors") == "1"
    suites = root.findall("testsuite")
    assert [s.get("failures") for s in suites] == ["0", "1", "0"]
    (failure,) = suites[1].iter("failure")
    assert failure.get("message", "").startswith("esp-1 was marked dead 5.00 s after power_loss")
    names = [c.get("name") for c in suites[0].findall("testcase")]
    assert names[0] == "dead_within(seconds=4.5, devices=esp-1, not_before=2)"
    assert suites[0].find("properties/property[@name='seed']").get("value") == "42"  # type: ignore[union-attr]
    assert suites[2].find("testcase/error").get("message") == "OSError: broker port in use"  # type: ignore[union-attr]


def test_progress_on_non_tty_prints_every_ten_percent() -> None:
    out = io.StringIO()
    with Progress("run", out, tty=False) as bar:
        for i in range(101):
            bar(i / 100)
        bar(0.5)  # going backwards is ignored
    assert out.getvalue().splitlines() == [f"run: {p}%" for p in range(0, 101, 10)]


def test_progress_on_tty_redraws_in_place() -> None:
    out = io.StringIO()
    bar = Progress("run", out, tty=True, width=10)
    bar(0.5)
    bar.close()
    assert out.getvalue() == "\rrun [#####-----]  50%\rrun [##########] 100%\n"


def test_html_report_has_a_task_table_and_the_detection_delay() -> None:
    page = render_html(result(dead_after=2.5))
    # Detection: the power loss at t=3 and the manager's verdict 2.5 s later, with its reason.
    assert "<h2 id=\"detection\">Detection: fault → manager verdict</h2>" in page
    assert "<td>esp-1</td><td>power_loss</td><td>3.00</td><td>5.50</td><td>2.50 s</td><td>lwt</td>" in page
    # Tasks: the one that moved comes first, with both attempts, where they ran and why it moved.
    tasks = page.split('<h2 id="tasks">', 1)[1].split("</table>", 1)[0]
    cell = r"<td>([^<]*)</td>"
    rows = re.findall(rf"<tr><td>(fib-\d)</td>{cell * 4}", tasks)
    assert rows[0][1:] == ("2", "esp-1 → esp-2", "esp-1 marked dead (lwt)", "Completed")
    assert {r[0] for r in rows} == {f"fib-{k}" for k in range(1, 7)}
    assert all(r[1] == "1" and r[3] == "—" for r in rows[1:])
