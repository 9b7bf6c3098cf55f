"""Parsing of HTTP headers with quality values (``Accept``, ``Accept-Language``), and the
one rule that picks the reader's language (zh-CN or en) from ``Accept-Language``."""

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


def language(accept_language: str | None) -> str:
    """The best of zh-CN and en for an ``Accept-Language`` header (q-values honoured; any
    ``zh`` but the traditional variants counts as zh-CN); en when neither is wanted."""
    best: tuple[float, int, str] | None = None
    for i, tag, q in weighted(accept_language):
        tag = tag.lower()
        if q <= 0 or not tag:
            continue
        if tag.startswith("zh") and not any(t in tag for t in ("-tw", "-hk", "-mo", "hant")):
            found = "zh-CN"
        elif tag.startswith("en"):
            found = "en"
        else:
            continue
        if best is None or (q, -i) > (best[0], best[1]):
            best = (q, -i, found)
    return best[2] if best else "en"
