"""Checks of the values a planner types (API, import, web forms): each raises Invalid naming
the field, never returns None for a bad value."""

from __future__ import annotations

from typing import Any

from cloud.core.errors import Invalid


def text(value: Any, what: str, *, max_len: int, required: bool = True) -> str | None:
    """``value`` stripped; None when empty and not ``required``."""
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise Invalid(f"{what} is required", what)
        return None
    cleaned = str(value).strip()
    if len(cleaned) > max_len:
        raise Invalid(f"{what} {cleaned[:20]!r}... is longer than {max_len} characters", what)
    return cleaned


def whole(value: Any, what: str, *, minimum: int = 0) -> int:
    """``value`` as an int of at least ``minimum`` (a float only when integral)."""
    try:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError
        number = int(value)
    except (TypeError, ValueError):
        raise Invalid(f"{what} {value!r} is not a whole number", what) from None
    if number < minimum:
        raise Invalid(f"{what} {number} is below {minimum}", what)
    return number

