"""Retry timing, the one way for every retry loop of the gateway and the cloud: capped
exponential backoff with jitter.

The n-th delay (n from 0) is drawn from [0, ceiling(n)] with ceiling(n) =
min(cap, base * 2^n) ("full jitter": retries of many gateways after one outage spread
out instead of arriving together), except the first, which is drawn from the upper half
so a first retry is never immediate. ``jitter="equal"`` draws every delay from the upper
half [ceiling/2, ceiling]: for schedules that must not retry almost at once even late
(a notification channel that is down).

- ``Backoff``: the stateful form, for a loop (``next_delay()`` after a failure,
  ``reset()`` after a success): the gateway's uplink and pollers, the cloud's MQTT
  consumer.
- ``delay_for(attempt, ...)``: the stateless form, for a schedule kept in a database
  (the cloud's notification outbox stores the attempt count, not a Backoff).

Lives in ``buffer/`` because it is shared by the gateway and the cloud, and ``buffer/`` is
the one package both may import (STYLE.md). Written here rather than taken from a
library (tenacity, backoff): both wrap a call in a decorator, which fits neither the
persisted outbox schedule nor loops that reset on success and report their next wait.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal

Jitter = Literal["full", "equal"]


def ceiling(attempt: int, base: float, cap: float) -> float:
    """The upper bound of the ``attempt``-th delay (from 0): min(cap, base * 2^attempt)."""
    return float(min(cap, base * 2.0 ** min(max(attempt, 0), 30)))


def delay_for(attempt: int, base: float, cap: float, *, jitter: Jitter = "full",
              rng: random.Random | None = None) -> float:
    """The delay before retry ``attempt`` (0 = the first retry), see the module docstring."""
    top = ceiling(attempt, base, cap)
    draw = rng or random
    if jitter == "equal" or attempt == 0:
        return draw.uniform(top / 2, top)
    return draw.uniform(0, top)


@dataclass
class Backoff:
    """A retry loop's backoff: ``next_delay()`` after each failure, ``reset()`` after a
    success."""

    base: float = 0.5
    cap: float = 60.0
    attempts: int = 0
    jitter: Jitter = "full"
    rng: random.Random = field(default_factory=random.Random)

    @property
    def ceiling(self) -> float:
        """The upper bound of the next delay."""
        return ceiling(self.attempts, self.base, self.cap)

    def next_delay(self) -> float:
        delay = delay_for(self.attempts, self.base, self.cap, jitter=self.jitter, rng=self.rng)
        self.attempts += 1
        return delay

    def reset(self) -> None:
        self.attempts = 0
