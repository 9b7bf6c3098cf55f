"""Checks of the values a planner types (API, import, web forms): each raises Invalid naming
the field, never returns None for a bad value.

The integer ranges of the database's columns are written here once (``INT32_*`` for
``Integer``, ``INT64_*`` for ``BigInteger``, ``EPOCH_MS_MAX`` for record times a
``datetime`` can still show): PostgreSQL refuses 2^31 in an ``Integer`` column and SQLite
2^63 in any, and both answered 500. ``whole`` bounds by them, and the annotated
types ``Int32``, ``NonNegInt32``, ``Int64``, ``NonNegInt64`` and ``EpochMsIn`` bound every
integer the API and the web's forms read by them (cloud/api/schemas.py re-exports them).

``code`` is ``text`` for identifiers that end up in a URL path (a work order's number, a
product's or material's code): a ``/`` in one made it unreachable (``/work-orders/A/B``
is another path), and control characters cannot be typed back.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Final

from annotated_types import Interval

from cloud.core.errors import Invalid

INT32_MIN: Final = -(2**31)
INT32_MAX: Final = 2**31 - 1
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
#: 9999-12-31T23:59:59.999Z: the last epoch ms a Python datetime can hold.
EPOCH_MS_MAX: Final = 253_402_300_799_999
#: An ``Integer`` column's value (ids, versions, steps, days, offsets).
Int32 = Annotated[int, Interval(ge=INT32_MIN, le=INT32_MAX)]
NonNegInt32 = Annotated[int, Interval(ge=0, le=INT32_MAX)]
#: A ``BigInteger`` column's value (quantities, seqs).
Int64 = Annotated[int, Interval(ge=INT64_MIN, le=INT64_MAX)]
NonNegInt64 = Annotated[int, Interval(ge=0, le=INT64_MAX)]
#: A record time, epoch ms, 1970..9999 (a ``datetime`` must be able to show it).
EpochMsIn = Annotated[int, Interval(ge=0, le=EPOCH_MS_MAX)]
#: Characters a code or number may not contain: ``/`` (a path separator in the API's
#: URLs) and control characters (C0, DEL, C1).
_NOT_IN_CODE: Final = re.compile(r"[/\x00-\x1f\x7f-\x9f]")


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


def code(value: Any, what: str, *, max_len: int) -> str:
    """A required identifier used in URL paths: ``text`` without ``/`` or control
    characters."""
    cleaned = text(value, what, max_len=max_len) or ""
    bad = _NOT_IN_CODE.search(cleaned)
    if bad is not None:
        shown = "'/'" if bad.group() == "/" else f"control character U+{ord(bad.group()):04X}"
        raise Invalid(f"{what} {cleaned!r} contains {shown}: codes and numbers may not "
                      "contain '/' or control characters", what)
    return cleaned


def whole(value: Any, what: str, *, minimum: int = 0, maximum: int = INT32_MAX) -> int:
    """``value`` as an int from ``minimum`` to ``maximum`` (a float only when integral).
    ``maximum`` defaults to what an ``Integer`` column holds; pass ``INT64_MAX`` for a
    ``BigInteger`` one."""
    try:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError
        number = int(value)
    except (TypeError, ValueError):
        raise Invalid(f"{what} {value!r} is not a whole number", what) from None
    if number < minimum:
        raise Invalid(f"{what} {number} is below {minimum}", what)
    if number > maximum:
        raise Invalid(f"{what} {number} is above {maximum}", what)
    return number

