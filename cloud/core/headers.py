"""Parsing of HTTP headers with quality values (``Accept``, ``Accept-Language``)."""

from __future__ import annotations

from collections.abc import Iterator


def weighted(header: str | None) -> Iterator[tuple[int, str, float]]:
    """(position, value, q) for each comma-separated entry of ``header``, in order; ``q``
    is 1.0 when absent and 0.0 when malformed (an entry that cannot say it is wanted)."""
    for i, part in enumerate((header or "").split(",")):
        value, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for p in params:
            if p.startswith("q="):
                try:
                    q = float(p[2:])
                except ValueError:
                    q = 0.0
        yield i, value, q
