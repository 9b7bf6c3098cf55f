"""Retry timing for devices: capped exponential backoff with full jitter, and a
circuit breaker (closed -> open -> half-open) so a dead device costs one probe per
backoff period instead of a timeout every poll."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Full-jitter exponential backoff: the n-th delay (n from 0) is uniform in
    [0, ceiling(n)] with ceiling(n) = min(cap, base * 2^n); the first delay is drawn from
    the upper half, so a first retry is never immediate."""

    base: float = 0.5
    cap: float = 60.0
    attempts: int = 0
    rng: random.Random = field(default_factory=random.Random)

    @property
    def ceiling(self) -> float:
        """The upper bound of the next delay."""
        return float(min(self.cap, self.base * 2.0 ** min(self.attempts, 30)))

    def next_delay(self) -> float:
        ceiling = self.ceiling
        self.attempts += 1
        return self.rng.uniform(ceiling / 2, ceiling) if self.attempts == 1 else self.rng.uniform(0, ceiling)

    def reset(self) -> None:
        self.attempts = 0


@dataclass
class Breaker:
    """Per-device circuit breaker.

    closed: poll every period. After ``threshold`` consecutive failures it opens: no polls
    until ``open_until``, then one half-open probe; success closes it, failure opens it
    again with a longer delay. An open period lasts at least ``min_open_s`` (the device's
    poll period): a shorter one would not skip a single poll, so opening would change
    nothing.
    """

    threshold: int = 3
    backoff: Backoff = field(default_factory=Backoff)
    min_open_s: float = 0.0
    state: str = "closed"
    failures: int = 0
    open_until: float = 0.0

    def allow(self, now: float) -> bool:
        """May we poll now? Moves open -> half_open when the delay has passed."""
        if self.state == "open":
            if now < self.open_until:
                return False
            self.state = "half_open"
        return True

    def success(self) -> None:
        self.state = "closed"
        self.failures = 0
        self.backoff.reset()

    def failure(self, now: float) -> None:
        self.failures += 1
        if self.state == "half_open" or self.failures >= self.threshold:
            self.state = "open"
            self.open_until = now + max(self.min_open_s, self.backoff.next_delay())
