"""The outcome of one scenario run: its verdicts, its trace, and how long it took."""

from __future__ import annotations

from dataclasses import dataclass, field

from twin.scenario.expectations import Verdict
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

    def summary(self) -> str:
        """A few lines for a person: the verdict, then each failed expectation and why."""
        s = self.scenario
        head = f"{'PASS' if self.passed else 'FAIL'} {s.name} (seed {s.seed}, {s.source}): "
        if self.error is not None:
            return head + f"the run failed: {self.error}"
        lines = [head + f"{len(self.verdicts) - len(self.failures)}/{len(self.verdicts)} expectations hold"]
        lines += [f"  x {v.name}: {v.detail}" for v in self.failures]
        if self.trace_hash:
            lines.append(f"  trace_hash: {self.trace_hash}")
        return "\n".join(lines)

    @property
    def trace_hash(self) -> str:
        """The trace's digest (``Trace.digest``): equal for equal runs (virtual mode, same seed)."""
        return str(self.trace.meta.get("trace_hash", ""))
