"""The one reconnect backoff: capped, jittered, exponential, reproducible for a seeded rng."""

from __future__ import annotations

import random

import pytest

from proplets.backoff import Backoff


def test_waits_grow_to_the_cap_within_their_jitter_band() -> None:
    b = Backoff(0.5, 4.0, random.Random(1))
    waits = [b.next() for _ in range(8)]
    bands = [(0.5, 0.5), (0.5, 1.0), (1.0, 2.0), (2.0, 4.0)] + [(2.0, 4.0)] * 4
    assert all(lo <= w <= hi for w, (lo, hi) in zip(waits, bands, strict=True)), waits
    b.reset()
    assert b.next() == 0.5 and b.attempt == 1


def test_same_seed_same_waits_and_bad_bounds_are_named() -> None:
    assert [Backoff(0.1, 3, random.Random(7)).delay(n) for n in range(5)] == \
        [Backoff(0.1, 3, random.Random(7)).delay(n) for n in range(5)]  # fmt: skip
    with pytest.raises(ValueError, match="0 < minimum <= maximum, got 2/1"):
        Backoff(2, 1)
    with pytest.raises(ValueError, match="got 0/1"):
        Backoff(0, 1)
