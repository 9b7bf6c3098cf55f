"""The cloud's one clock, and the one way times are written in its answers.

Two kinds of time, kept apart by name and type throughout the cloud:

- *record time*: epoch milliseconds (``int``) from a gateway's clock, the wire's unit
  (``ts``, ``start_ts``, ``*_ms``); reports and attribution compare these integers;
- *cloud time*: timezone-aware UTC ``datetime`` for when a person or the cloud did
  something (``created``, ``*_at``, a work order's ``due``).

``iso`` writes a cloud time the one way every API answer does: RFC 3339 / ISO 8601 in UTC
with a ``Z`` offset, to the second (``2026-12-01T08:00:00Z``). Tests pin the time by
passing ``now`` to the functions that take it (jobs, reports); nothing here is patched.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Final

DAY_MS: Final = 86_400_000
HOUR_MS: Final = 3_600_000
ISO_FORMAT: Final = "%Y-%m-%dT%H:%M:%SZ"


def now() -> datetime:
    """The cloud's time now, aware UTC."""
    return datetime.now(UTC)


def now_ms() -> int:
    """The cloud's time now in epoch milliseconds (compare with record times through
    the gateway's clock skew)."""
    return time.time_ns() // 1_000_000


def from_ms(ms: int) -> datetime:
    """Epoch milliseconds as an aware UTC datetime."""
    return datetime.fromtimestamp(ms / 1000, UTC)


def to_ms(value: datetime) -> int:
    """An aware datetime as epoch milliseconds (naive ones are refused: ambiguous)."""
    if value.tzinfo is None:
        raise ValueError("naive datetime; the cloud keeps UTC only")
    return int(value.timestamp() * 1000)


def iso(value: datetime | None) -> str | None:
    """``value`` in the API's one format (``2026-12-01T08:00:00Z``), None stays None.
    A naive datetime is taken as UTC (SQLite hands back naive values in raw queries)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime(ISO_FORMAT)


def iso_ms(ms: int | None) -> str | None:
    """A record time in the API's one format."""
    return None if ms is None else iso(from_ms(ms))
