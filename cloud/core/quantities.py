"""Exact material quantities: decimals in the API and imports, integer micro-units in the
database (a column named ``*_u`` holds value x 1,000,000; cloud/core/models.py says why)."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Final

from cloud.core.errors import Invalid
from cloud.core.fields import INT64_MAX

MICRO: Final = 1_000_000


def to_micro(value: str | int | float | Decimal, *, what: str = "quantity") -> int:
    """An exact decimal (``"2.5"``, ``2``, ``Decimal``) as integer micro-units. More than
    six decimals, negatives, NaN and infinities raise Invalid (``field`` = ``what``).
    Floats go through their shortest repr (``0.1`` -> 100000), so JSON numbers convert
    as written."""
    try:
        dec = Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value).strip())
    except InvalidOperation:
        raise Invalid(f"{what} {value!r} is not a number", what) from None
    if not dec.is_finite():
        raise Invalid(f"{what} {value!r} is not a finite number", what)
    if dec < 0:
        raise Invalid(f"{what} {value!r} is negative", what)
    micro = dec * MICRO
    if micro != micro.to_integral_value():
        raise Invalid(f"{what} {value!r} has more than 6 decimals", what)
    if micro > INT64_MAX:  # the *_u columns are BigInteger
        raise Invalid(f"{what} {value!r} is too large (at most {INT64_MAX // MICRO})", what)
    return int(micro)


def to_micro_signed(value: str | int | float, *, what: str = "quantity") -> int:
    """Like ``to_micro``, but a leading minus sign is allowed (adjustments)."""
    text = repr(value) if isinstance(value, float) else str(value).strip()
    return -to_micro(text[1:], what=what) if text.startswith("-") else to_micro(text, what=what)


def from_micro(value_u: int | None) -> str | None:
    """Micro-units as an exact decimal string (``2500000`` -> ``"2.5"``)."""
    if value_u is None:
        return None
    dec = (Decimal(value_u) / MICRO).normalize()
    return format(dec, "f")
