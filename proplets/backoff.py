"""Reconnect backoff (sans-I/O): one policy for every driver that retries a broker.

Capped exponential with jitter: the n-th retry (from 0) waits a uniform draw from
[max(minimum, c / 2), c] where c = min(maximum, minimum × 2ⁿ). The jitter spreads a fleet that lost its
broker at the same instant; the cap bounds how long a device stays away once the broker is back. The
random draws come from an injected `random.Random`, so the twin's devices stay reproducible for a seed.
Used by the MQTT client (`orchestrator.adapters.mqtt`), the proplet agent's first connection and the
twin's devices (`twin.device`).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    minimum: float
    maximum: float
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def __post_init__(self) -> None:
        finite = math.isfinite(self.minimum) and math.isfinite(self.maximum)
        if not (finite and 0 < self.minimum <= self.maximum):
            raise ValueError(f"backoff needs 0 < minimum <= maximum, got {self.minimum}/{self.maximum}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry ``attempt`` (0-based); draws from the rng."""
        ceiling = min(self.maximum, self.minimum * 2.0 ** min(max(attempt, 0), 30))
        return self.rng.uniform(max(self.minimum, ceiling / 2), ceiling)

    def next(self) -> float:
        """The wait before the next retry, counting it."""
        wait = self.delay(self.attempt)
        self.attempt += 1
        return wait

    def reset(self) -> None:
        """Connected: the next loss starts again from ``minimum``."""
        self.attempt = 0
