"""Backoff timing and the per-device breaker, with a seeded rng and explicit times (no
sleeping): ceilings double up to the cap, every delay lies in [0, ceiling], reset starts
over, and the breaker goes closed -> open -> half_open -> closed / -> open again, never
opening for less than the device's poll period."""

from __future__ import annotations

import random

from buffer.backoff import Backoff, delay_for
from edge.backoff import Breaker


def test_ceiling_doubles_up_to_the_cap_and_delays_stay_under_it() -> None:
    b = Backoff(base=0.5, cap=10.0, rng=random.Random(7))
    ceilings, delays = [], []
    for _ in range(12):
        ceilings.append(b.ceiling)
        delays.append(b.next_delay())
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 8.0] + [10.0] * 7
    assert all(0.0 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert delays[0] >= ceilings[0] / 2       # the first retry is never immediate


def test_reset_starts_over() -> None:
    b = Backoff(base=1.0, cap=60.0, rng=random.Random(1))
    for _ in range(5):
        b.next_delay()
    assert b.ceiling == 32.0
    b.reset()
    assert b.attempts == 0 and b.ceiling == 1.0
    assert 0.5 <= b.next_delay() <= 1.0


def test_same_seed_same_delays() -> None:
    a = Backoff(rng=random.Random(3))
    b = Backoff(rng=random.Random(3))
    assert [a.next_delay() for _ in range(6)] == [b.next_delay() for _ in range(6)]


def test_breaker_closed_open_half_open_closed() -> None:
    br = Breaker(threshold=3, backoff=Backoff(base=0.5, cap=60.0, rng=random.Random(5)),
                 min_open_s=1.0)
    now = 100.0
    for i in range(2):
        assert br.allow(now)
        br.failure(now)
        assert br.state == "closed", f"open after {i + 1} failures"
    assert br.allow(now)
    br.failure(now)
    assert br.state == "open"
    # Base 0.5 s with jitter would allow a delay under the 1 s poll period: the floor holds.
    assert br.open_until >= now + 1.0
    assert not br.allow(now + 0.99)
    assert br.state == "open"
    assert br.allow(br.open_until)
    assert br.state == "half_open"
    br.success()
    assert (br.state, br.failures, br.backoff.attempts) == ("closed", 0, 0)


def test_half_open_failure_opens_again_for_longer_ceilings() -> None:
    br = Breaker(threshold=1, backoff=Backoff(base=2.0, cap=60.0, rng=random.Random(9)),
                 min_open_s=2.0)
    now = 0.0
    br.failure(now)
    assert br.state == "open"
    first_ceiling_next = br.backoff.ceiling
    now = br.open_until
    assert br.allow(now) and br.state == "half_open"
    br.failure(now)            # the probe failed
    assert br.state == "open"
    assert now + 2.0 <= br.open_until <= now + first_ceiling_next
    assert br.backoff.ceiling == 8.0   # the next open may last longer still


def test_open_delay_never_below_min_open_whatever_the_draw() -> None:
    for seed in range(50):
        br = Breaker(threshold=1, backoff=Backoff(base=0.5, cap=60.0, rng=random.Random(seed)),
                     min_open_s=1.0)
        for k in range(6):
            now = 10.0 * k
            br.allow(now + 1e9 if br.state == "open" else now)
            br.failure(now)
            assert br.open_until - now >= 1.0


def test_delay_for_is_the_stateless_form_full_or_equal_jitter() -> None:
    """The outbox's schedule (stateless, by attempt count) and a loop's Backoff draw from
    the same bounds: attempt 0 from the upper half, later ones from [0, ceiling] (full) or
    [ceiling/2, ceiling] (equal), the ceiling doubling to the cap."""
    rng = random.Random(3)
    for attempt, ceiling in [(0, 10), (1, 20), (2, 40), (5, 300), (40, 300)]:
        for _ in range(50):
            full = delay_for(attempt, 10, 300, rng=rng)
            equal = delay_for(attempt, 10, 300, jitter="equal", rng=rng)
            assert 0 <= full <= ceiling and ceiling / 2 <= equal <= ceiling
            if attempt == 0:
                assert full >= ceiling / 2
    b = Backoff(base=10, cap=300, jitter="equal", rng=random.Random(3))
    for _ in range(10):
        ceiling = b.ceiling
        assert ceiling / 2 <= b.next_delay() <= ceiling
