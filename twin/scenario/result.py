"""The outcome of one scenario run: its verdicts, its trace, and how long it took."""

from __future__ import annotations

from dataclasses import dataclass, field

from twin.scenario.expectations import Verdict
from twin.scenario.fidelity import Fidelity
from twin.scenario.spec import Scenario
from twin.scenario.trace import Trace


@dataclass
class ScenarioResult:
    scenario: Scenario
    trace: Trace
    verdicts: list[Verdict] = field(default_factory=list)
    wall_s: float = 0.0
    error: str | None = None  # the runner failed: no verdict can be trusted
    outputs: dict[str, str] = field(default_factory=dict)  # "trace" / "report" -> path written

    @property
    def passed(self) -> bool:
        return self.error is None and bool(self.verdicts) and all(v.passed for v in self.verdicts)

    @property
    def failures(self) -> list[Verdict]:
        return [v for v in self.verdicts if not v.passed]

    @property
    def fidelity(self) -> Fidelity | None:
        """The live run's lag against its budget (twin.scenario.fidelity); None if not measured."""
        meta = self.trace.meta.get("fidelity")
        return Fidelity.from_meta(meta) if isinstance(meta, dict) else None

    @property
    def inconclusive(self) -> str | None:
        """Why a failed verdict cannot be trusted: the host could not keep up with the scenario's
        timers (the figures); None when the verdict stands."""
        fidelity = self.fidelity
        if self.passed or self.error is not None or not self.verdicts or fidelity is None:
            return None
        return fidelity.reason

    @property
    def status(self) -> str:
        return "PASS" if self.passed else "INCONCLUSIVE" if self.inconclusive else "FAIL"

    def summary(self) -> str:
        """A few lines for a person: the verdict, then each failed expectation and why."""
        s = self.scenario
        head = f"{self.status} {s.name} (seed {s.seed}, {s.source}): "
        if self.error is not None:
            return head + f"the run failed: {self.error}"
        held = f"{len(self.verdicts) - len(self.failures)}/{len(self.verdicts)} expectations hold"
        if self.inconclusive:
            held = (f"{self.inconclusive}: this host could not keep up, so the failures below may be "
                    f"its, not the system's; {held}")  # fmt: skip
        lines = [head + held]
        lines += [f"  x {v.name}: {v.detail}" for v in self.failures]
        if self.trace_hash:
            lines.append(f"  trace_hash: {self.trace_hash}")
        return "\n".join(lines)

    @property
    def trace_hash(self) -> str:
        """The trace's digest (``Trace.digest``): equal for equal runs (virtual mode, same seed)."""
        return str(self.trace.meta.get("trace_hash", ""))
