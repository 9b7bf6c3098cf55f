"""A circuit breaker for devices (closed -> open -> half-open) so a dead device costs one
probe per backoff period instead of a timeout every poll. The backoff itself is the one
every retry loop uses (``buffer.backoff.Backoff``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from buffer.backoff import Backoff


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
