"""A link's fault profile: plain data, shared by the live TCP proxy and the fault definitions."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LinkProfile:
    latency_s: float = 0.0  # one way
    jitter_s: float = 0.0  # uniform in [-jitter, +jitter], clamped at zero delay
    loss: float = 0.0  # probability per chunk of a retransmission delay
    retransmit_s: float = 0.2  # the delay a "lost" chunk adds
    blackhole: bool = False
    bandwidth_bps: float | None = None  # None: unlimited

    def __post_init__(self) -> None:
        for name in ("latency_s", "jitter_s", "retransmit_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"LinkProfile.{name} must be a finite number >= 0, got {value!r}")
        if not isinstance(self.loss, int | float) or not 0 <= self.loss <= 1:
            raise ValueError(f"LinkProfile.loss must be a probability in [0, 1], got {self.loss!r}")
        if self.bandwidth_bps is not None and not (
            isinstance(self.bandwidth_bps, int | float) and self.bandwidth_bps > 0
        ):
            raise ValueError(f"LinkProfile.bandwidth_bps must be > 0 or None, got {self.bandwidth_bps!r}")


CLEAN = LinkProfile()
