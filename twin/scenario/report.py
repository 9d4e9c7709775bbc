"""The HTML report of a scenario run: one self-contained file (inline CSS, the plot as a base64 PNG).

The timeline has one lane per device (its own state as coloured spans, faults as red hatched spans with
a marker at their start, the manager's alive/dead view as a thin bar under the lane, and the detection
delay, fault → the manager's dead verdict, as a purple bracket over the lane) and, below, the number of
tasks in each state over time. Tables: the expectations, a fault → verdict table (detection delays), a
per-task table (attempts, where each ran, why it moved), and per-device figures. Fleets above
``LANE_LIMIT`` devices are drawn as counts per device kind instead, since 500 lanes are unreadable.
matplotlib is imported lazily, with Agg.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twin.scenario.result import ScenarioResult
from twin.scenario.trace import TASK_STATES, Trace

LANE_LIMIT = 50
DEVICE_COLOURS = {
    "booting": "#9ecae1", "online": "#31a354", "running": "#006d2c", "offline": "#fdae6b",
    "dead": "#de2d26", "rebooting": "#756bb1",
}  # fmt: skip
TASK_COLOURS = {
    "Pending": "#bdbdbd", "Scheduled": "#6baed6", "Running": "#fd8d3c", "Completed": "#31a354",
    "Failed": "#de2d26", "Skipped": "#969696", "Interrupted": "#756bb1",
}  # fmt: skip
FLEET_SUBJECTS = ("broker", "manager", "fleet")

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em;color:#222;max-width:1200px}
h1{margin-bottom:.2em} .meta{color:#555;margin-bottom:1em}
.verdict{display:inline-block;padding:.2em .8em;border-radius:4px;color:#fff;font-weight:bold}
.pass{background:#2e7d32} .fail{background:#c62828} .inconclusive{background:#ef6c00}
table{border-collapse:collapse;margin:1em 0;width:100%} th,td{border:1px solid #ccc;padding:4px 8px;
text-align:left;vertical-align:top;font-size:14px} th{background:#f0f0f0}
tr.ok td.v{color:#2e7d32;font-weight:bold} tr.bad td.v{color:#c62828;font-weight:bold}
img{max-width:100%;border:1px solid #ddd}
"""


def device_order(result: ScenarioResult) -> list[str]:
    names = [d.name for d in result.scenario.devices()]
    return names + [d for d in result.trace.devices() if d not in names]


def timeline_png(result: ScenarioResult) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    trace = result.trace
    devices = device_order(result)
    per_lane = len(devices) <= LANE_LIMIT
    top_h = max(2.5, 0.35 * len(devices)) if per_lane else 3.5
    fig, (ax, ax_tasks) = plt.subplots(
        2, 1, sharex=True, figsize=(12, top_h + 2.8), gridspec_kw={"height_ratios": [top_h, 2.5]}
    )
    try:
        end = max(trace.end, result.scenario.duration_s, 1e-3)
        if per_lane:
            _lanes(ax, trace, devices)
        else:
            _kind_counts(ax, trace, result.scenario.device_kinds())
        for w in trace.faults():
            if w.subject in FLEET_SUBJECTS:
                stop = w.end if w.end is not None else end
                for a in (ax, ax_tasks):
                    a.axvspan(w.start, max(stop, w.start + end / 400), color="#c62828", alpha=0.12, lw=0)
                ax.text(w.start, 1.0, f" {w.fault}", transform=ax.get_xaxis_transform(), va="bottom",
                        fontsize=8, color="#c62828")  # fmt: skip
        _task_counts(ax_tasks, trace)
        ax_tasks.set_xlim(0, end)
        ax_tasks.set_xlabel("scenario time (s)")
        handles = [Patch(color=c, label=s) for s, c in DEVICE_COLOURS.items()]
        handles.append(Patch(facecolor="none", edgecolor="#c62828", hatch="///", label="fault"))
        if per_lane:
            handles += [
                Patch(color="#1b5e20", label="manager: alive"),
                Patch(color="#000", label="manager: dead"),
                Patch(color="#6a1b9a", label="fault → verdict"),
            ]
            ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
        fig.suptitle(f"{result.scenario.name} (seed {result.scenario.seed})")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
        return buf.getvalue()
    finally:
        plt.close(fig)


@dataclass(frozen=True)
class Detection:
    """A device fault and the manager's first verdict on it: how long the manager took to know."""

    device: str
    fault: str
    start: float
    verdict_at: float | None  # None: never marked dead
    reason: str

    @property
    def delay(self) -> float | None:
        return None if self.verdict_at is None else self.verdict_at - self.start


def detections(trace: Trace) -> list[Detection]:
    """Fault → manager verdict (the first ``dead`` after the fault starts, before the next fault on the
    same device) for every device fault, in time order."""
    out: list[Detection] = []
    windows = [w for w in trace.faults() if w.subject not in FLEET_SUBJECTS]
    deaths: dict[str, list[tuple[float, str]]] = {}
    for e in trace.of("proplet"):
        if not e.data.get("alive"):
            deaths.setdefault(trace.device_of(e.subject), []).append((e.t, str(e.data.get("reason") or "")))
    for i, w in enumerate(windows):
        later = [x.start for x in windows[i + 1:] if x.subject == w.subject and x.start > w.start]
        horizon = min(later, default=float("inf"))
        hit = next(((t, r) for t, r in deaths.get(w.subject, []) if w.start <= t < horizon), None)
        out.append(Detection(w.subject, w.fault, w.start, hit[0] if hit else None, hit[1] if hit else ""))
    return out


def _lanes(ax: Any, trace: Trace, devices: Sequence[str]) -> None:
    index = {d: i for i, d in enumerate(devices)}
    for d, y in index.items():
        spans = trace.device_timeline(d)
        for state in DEVICE_COLOURS:
            bars = [(s.start, s.end - s.start) for s in spans if s.state == state]
            if bars:
                ax.broken_barh(bars, (y - 0.3, 0.5), color=DEVICE_COLOURS[state])
        for span in trace.manager_view(d):
            colour = "#1b5e20" if span.state == "alive" else "#000000"
            ax.broken_barh([(span.start, span.end - span.start)], (y + 0.25, 0.1), color=colour)
    for w in trace.faults():
        if w.subject in index:
            y = index[w.subject]
            stop = w.end if w.end is not None else trace.end
            ax.broken_barh([(w.start, max(stop - w.start, 1e-3))], (y - 0.4, 0.8), facecolor="none",
                           edgecolor="#c62828", hatch="///", lw=0.8)  # fmt: skip
            ax.plot([w.start], [y - 0.42], marker="^", color="#c62828", ms=6)
    # Detection delay: from the fault to the manager's verdict, just above the lane.
    for det in detections(trace):
        if det.device in index and det.verdict_at is not None:
            lane = index[det.device] - 0.5
            ax.annotate("", xy=(det.verdict_at, lane), xytext=(det.start, lane),
                        arrowprops={"arrowstyle": "|-|", "color": "#6a1b9a", "lw": 1.2,
                                    "shrinkA": 0, "shrinkB": 0})  # fmt: skip
            ax.text(det.verdict_at, lane, f" {det.verdict_at - det.start:.1f} s to verdict", va="center",
                    fontsize=7, color="#6a1b9a", bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5})
    ax.set_yticks(range(len(devices)), labels=list(devices), fontsize=8)
    ax.set_ylim(len(devices) - 0.4, -0.75)
    ax.set_ylabel("devices")


def _kind_counts(ax: Any, trace: Trace, kinds: dict[str, str]) -> None:
    """Large fleets: per kind, how many devices are up (own state) and held alive by the manager."""
    up_states = {"online", "running"}
    for kind in sorted(set(kinds.values())):
        members = {d for d, k in kinds.items() if k == kind}
        for label, kinds_of, style in (
            ("up", "device", "-"),
            ("alive (manager)", "proplet", "--"),
        ):
            state: dict[str, bool] = {}
            xs, ys = [0.0], [0]
            for e in trace.events:
                subject = trace.device_of(e.subject)
                if e.kind != kinds_of or subject not in members:
                    continue
                if kinds_of == "device":
                    if "state" not in e.data:
                        continue
                    state[subject] = e.data["state"] in up_states
                else:
                    state[subject] = bool(e.data["alive"])
                xs.append(e.t)
                ys.append(sum(state.values()))
            xs.append(trace.end)
            ys.append(ys[-1])
            ax.step(xs, ys, where="post", ls=style, label=f"{kind} {label} (of {len(members)})")
    starts = [w.start for w in trace.faults() if w.subject not in FLEET_SUBJECTS]
    if starts:
        ax.plot(starts, [0] * len(starts), "|", color="#c62828", ms=12, label="device fault")
    ax.set_ylabel("devices")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)


def _task_counts(ax: Any, trace: Trace) -> None:
    series = trace.task_counts()
    if not series:
        ax.text(0.5, 0.5, "no tasks", transform=ax.transAxes, ha="center", color="#777")
    else:
        xs = [0.0] + [t for t, _ in series] + [trace.end]
        for state in TASK_STATES:
            ys = [0] + [c[state] for _, c in series]
            if any(ys):
                ax.step(xs, [*ys, ys[-1]], where="post", color=TASK_COLOURS[state], label=state)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    ax.set_ylabel("tasks")


# ---------------------------------------------------------------------------------------------- html
def _device_rows(result: ScenarioResult) -> list[list[str]]:
    trace = result.trace
    kinds = result.scenario.device_kinds()
    faults = Counter(w.subject for w in trace.faults())
    runs: Counter[str] = Counter()
    for task in trace.tasks().values():
        for e in task.runs:
            runs[trace.task_device(e)] += 1
    rows = []
    for d in device_order(result):
        spans = trace.device_timeline(d)
        time_in: dict[str, float] = {}
        for s in spans:
            time_in[s.state] = time_in.get(s.state, 0.0) + s.end - s.start
        dead_marks = sum(1 for s in trace.manager_view(d) if s.state == "dead")
        shares = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(time_in.items(), key=lambda kv: -kv[1]))
        free = trace.free_memory_at(d, trace.end)
        rows.append([d, kinds.get(d, "?"), shares or "—", str(faults[d]), str(dead_marks), str(runs[d]),
                     "—" if free is None else str(free)])  # fmt: skip
    return rows


TASK_ROWS = 200  # a big run's table lists the tasks that moved or failed first


def _task_rows(trace: Trace) -> list[list[str]]:
    """Per task: attempts, where each ran, why it moved (the error the manager gave, or the verdict on
    the device it left), and how it ended. Tasks that moved or failed first."""
    deaths: dict[str, list[tuple[float, str]]] = {}
    for e in trace.of("proplet"):
        if not e.data.get("alive"):
            deaths.setdefault(trace.device_of(e.subject), []).append((e.t, str(e.data.get("reason") or "")))
    rows: list[tuple[int, list[str]]] = []
    for name, task in trace.tasks().items():
        runs = task.runs
        where = [trace.task_device(e) or "?" for e in runs]
        why: list[str] = []
        for prev, nxt in itertools.pairwise(runs):
            device = trace.task_device(prev)
            errors = [str(e.data["error"]) for e in task.events
                      if prev.t <= e.t <= nxt.t and e.data.get("error")]  # fmt: skip
            died = [r for t, r in deaths.get(device, []) if prev.t <= t <= nxt.t]
            if died:
                why.append(f"{device} marked dead ({died[0]})" if died[0] else f"{device} marked dead")
            elif errors:
                why.append(f"{device}: {errors[-1]}")
            else:
                why.append(f"left {device}")
        attempts = max([int(e.data.get("attempt") or 0) for e in task.events] + [len(runs)])
        end = task.final_state + (f": {task.error}" if task.error and task.final_state != "Completed" else "")
        moved = len(set(where)) > 1 or task.final_state != "Completed"
        rows.append((0 if moved else 1, [name, str(attempts), " → ".join(where) or "—", "; ".join(why) or "—",
                                         end]))  # fmt: skip
    rows.sort(key=lambda r: r[0])
    return [r for _, r in rows]


def _detection_rows(trace: Trace) -> list[list[str]]:
    return [[d.device, d.fault, f"{d.start:.2f}",
             "never" if d.verdict_at is None else f"{d.verdict_at:.2f}",
             "—" if d.delay is None else f"{d.delay:.2f} s", d.reason or "—"]
            for d in detections(trace)]  # fmt: skip


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


CONSOLE_ROWS = 400  # a long run's boards print thousands of lines; the console logs hold them all
QUIET_EVENTS = frozenset({"heartbeat"})  # counted per board, not listed


def _console_section(trace: Trace) -> str:
    """The boards' own view (their console event lines), beside the manager's in the tables above."""
    lines = [e for e in trace if e.kind == "console" and e.data.get("kind") == "event"]
    if not lines:
        return ""
    counts = Counter((e.subject, str(e.data.get("event"))) for e in lines)
    boards = sorted({e.subject for e in lines})
    names = sorted({name for _, name in counts})
    summary = _table(["board", *names], [[b, *(str(counts[(b, n)]) for n in names)] for b in boards])
    shown = [e for e in lines if e.data.get("event") not in QUIET_EVENTS]
    rows = [[f"{e.t:.3f}", e.subject, str(e.data.get("event")), str(e.data.get("line", ""))]
            for e in shown[:CONSOLE_ROWS]]  # fmt: skip
    more = f"<p>{len(shown) - CONSOLE_ROWS} more lines in the trace.</p>" if len(shown) > CONSOLE_ROWS else ""
    return (f'<h2 id="console">Board consoles</h2>{summary}'
            f'<table id="console-events"><tr><th>t (s)</th><th>board</th><th>event</th><th>line</th></tr>'
            + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
            + f"</table>{more}")  # fmt: skip


def render_html(result: ScenarioResult) -> str:
    s = result.scenario
    esc = html.escape
    verdict = result.status
    rows = "".join(
        f'<tr class="{"ok" if v.passed else "bad"}"><td>{esc(v.name)}</td>'
        f'<td class="v">{"pass" if v.passed else "FAIL"}</td><td>{esc(v.detail)}</td></tr>'
        for v in result.verdicts
    )
    error = f'<p class="fail verdict">run failed: {esc(result.error)}</p>' if result.error else ""
    fidelity = result.fidelity
    if fidelity is not None:
        lag = (f"host lag p99: loop {fidelity.loop_p99_s * 1e3:.1f} ms, "
               f"simulation {fidelity.sim_p99_s * 1e3:.1f} ms (budget {fidelity.budget_s * 1e3:.0f} ms)")
        error += (f'<p class="fidelity">{esc(lag)}'
                  + (f" — <b>inconclusive</b>: {esc(result.inconclusive)}" if result.inconclusive else "")
                  + "</p>")  # fmt: skip
    png = base64.b64encode(timeline_png(result)).decode("ascii")
    devices = device_order(result)
    if len(devices) <= LANE_LIMIT:
        head = ["device", "kind", "time by state", "faults", "marked dead", "task runs", "free memory (end)"]
        per_device = "<h2>Devices</h2>" + _table(head, _device_rows(result))
    else:
        counts = Counter(s.device_kinds().values())
        per_device = "<h2>Fleet</h2>" + _table(
            ["kind", "devices"], [[k, str(n)] for k, n in sorted(counts.items())]
        )
    tasks = result.trace.tasks()
    finals = Counter(t.final_state for t in tasks.values())
    task_rows = [[state, str(finals[state])] for state in TASK_STATES if finals[state]]
    per_task = _task_rows(result.trace)
    more = (f"<p>{len(per_task) - TASK_ROWS} more tasks (completed where they were placed) in the trace.</p>"
            if len(per_task) > TASK_ROWS else "")  # fmt: skip
    head = ["task", "attempts", "ran on", "why it moved", "end"]
    task_table = '<h2 id="tasks">Tasks</h2>' + _table(head, per_task[:TASK_ROWS]) + more
    detected = _detection_rows(result.trace)
    head = ["device", "fault", "at (s)", "verdict at (s)", "delay", "manager's reason"]
    detection = ('<h2 id="detection">Detection: fault → manager verdict</h2>' + _table(head, detected)
                 if detected else "")  # fmt: skip
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(s.name)}: {verdict}</title>
<style>{CSS}</style></head><body>
<h1>{esc(s.name)} <span class="verdict {verdict.lower()}">{verdict}</span></h1>
<div class="meta">{esc(s.description)}<br>source {esc(s.source)} · seed {s.seed} · duration {s.duration_s:g} s
 · broker {esc(s.broker)} · {len(devices)} devices · {len(tasks)} tasks
 · wall time {result.wall_s:.1f} s</div>
{error}
<h2>Expectations</h2>
<table id="expectations"><tr><th>expectation</th><th>verdict</th><th>detail</th></tr>{rows}</table>
<h2>Timeline</h2>
<img alt="timeline of devices, faults and tasks" src="data:image/png;base64,{png}">
<h2>Tasks by final state</h2>
{_table(["state", "tasks"], task_rows)}
{detection}
{task_table}
{per_device}
{_console_section(result.trace)}
</body></html>
"""


def write_report(result: ScenarioResult, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(render_html(result), encoding="utf-8")
    return p
