"""Is a live run faithful? The host's scheduling lag against the protocol timers in play (sans-I/O).

A live run shares the host with whatever else runs there. When the event loop or the simpy driver runs
late, simulated devices heartbeat late, answer pings late and report results late, and the manager
rightly declares them dead: the verdict then describes the host, not the system. The runner measures
both lags (``twin.clock.LoopLagProbe``, ``AsyncSimClock.lag_stats``) and this module judges them.

Budget: a late message turns into a false verdict once the lag eats the slack of the tightest timer:
a heartbeat may be late by ``liveness_timeout − heartbeat_interval`` before the manager buries the
device, a keep-alive ping by ``0.5 × keepalive`` before the broker does, and every periodic message
should keep its period. The smallest of ``heartbeat_interval``, ``liveness_timeout −
heartbeat_interval`` and ``0.5 × keepalive`` is the slack; ``BUDGET_FRACTION`` of it (30 %) is the
budget the 99th percentile lag must stay within.

What it decides: a run whose lag exceeds the budget is *unfaithful*. If every expectation held anyway,
the result stands (lag only makes devices look slower and deader than they are, it cannot make a broken
system pass a liveness bound); if one failed, the verdict is ``inconclusive`` with the figure
("loop lag p99 410 ms > budget 150 ms"), not a failure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from twin.scenario.spec import Timers

BUDGET_FRACTION = 0.3


def timer_slack(timers: Timers) -> float:
    """Seconds a message may be late before a protocol timer misjudges it (see the module doc)."""
    slacks = [timers.heartbeat_interval, timers.liveness_timeout - timers.heartbeat_interval,
              0.5 * timers.keepalive]  # fmt: skip
    positive = [s for s in slacks if s > 0]
    return min(positive) if positive else timers.heartbeat_interval


def lag_budget(timers: Timers, fraction: float = BUDGET_FRACTION) -> float:
    """The p99 scheduling lag (seconds) a live run of these timers tolerates."""
    return fraction * timer_slack(timers)


@dataclass(frozen=True)
class Fidelity:
    budget_s: float
    loop_p99_s: float
    sim_p99_s: float
    loop_max_s: float = 0.0
    samples: int = 0

    @property
    def faithful(self) -> bool:
        return self.loop_p99_s <= self.budget_s and self.sim_p99_s <= self.budget_s

    @property
    def reason(self) -> str | None:
        """Why the run cannot be trusted, with the figures; None when it can."""
        budget = _ms(self.budget_s)
        over = [f"{what} lag p99 {_ms(value)} ms > budget {budget} ms"
                for what, value in (("loop", self.loop_p99_s), ("simulation", self.sim_p99_s))
                if value > self.budget_s]  # fmt: skip
        return "; ".join(over) or None

    def to_meta(self) -> dict[str, Any]:
        return {"budget_ms": _ms(self.budget_s), "loop_lag_p99_ms": _ms(self.loop_p99_s),
                "loop_lag_max_ms": _ms(self.loop_max_s), "sim_lag_p99_ms": _ms(self.sim_p99_s),
                "samples": self.samples, "faithful": self.faithful, "reason": self.reason}  # fmt: skip

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Fidelity | None:
        """The fidelity a trace recorded (``trace.meta["fidelity"]``); None when it recorded none."""
        try:
            return cls(float(meta["budget_ms"]) / 1e3, float(meta["loop_lag_p99_ms"]) / 1e3,
                       float(meta["sim_lag_p99_ms"]) / 1e3, float(meta.get("loop_lag_max_ms", 0)) / 1e3,
                       int(meta.get("samples", 0)))  # fmt: skip
        except (KeyError, TypeError, ValueError):
            return None


def _ms(seconds: float) -> int | float:
    """Milliseconds as a person reads them: whole from 10 ms up, one decimal below."""
    ms = seconds * 1e3
    return round(ms) if ms >= 10 else round(ms, 1)
