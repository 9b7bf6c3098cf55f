"""Shift calendars (班次日历): validating them, expanding them into planned production time,
and which calendar a machine works to.

A calendar is a name, an IANA ``timezone`` and a ``definition`` (the input model
``CalendarIn``, with ``CalendarDefinition`` and ``Shift``)::

    {"shifts": [{"name": "A", "start": "06:00", "end": "14:00", "days": [1, 2, 3, 4, 5],
                 "breaks": [["10:00", "10:15"]]}],
     "non_working_dates": ["2026-10-01"]}

- Times are local wall-clock ``HH:MM`` in the calendar's timezone (zoneinfo, so DST is
  right: a night shift over the spring-forward night is an hour shorter). A shift whose
  ``end`` is not after its ``start`` ends on the next day and belongs to the day it
  starts (its *shift day*); ``start == end`` is a 24-hour shift.
- ``days``: ISO weekdays (1 = Monday .. 7 = Sunday) of the shift day; default every day.
- ``breaks``: local ``[start, end]`` pairs inside the shift (a break after midnight of a
  night shift is on the next day's clock); they are not planned time.
- ``non_working_dates``: shift days on which no shift runs (holidays).
- Shifts of one calendar must not overlap (planned time would count twice).

``validate`` checks a calendar against the models and stores it normalized (weekdays and
dates sorted once each, breaks in time order). The domain checks the body itself, not
the HTTP layer, so every refusal is ``Invalid`` (422 ``invalid``) with ``field`` naming
the input relative to the definition (``shifts[1].breaks[0]``; ``name``, ``timezone``,
``definition`` at the top) and a detail that starts with that field.

A machine works to the calendar assigned to it (``machine_calendars``); with none, to the
calendar named ``default`` when there is one, else around the clock: one planned
interval per UTC day, shift name ``"24/7"``, day = the UTC date.

Errors (cloud/core/errors.py): ``NotFound`` (calendar, machine), ``Invalid`` (a calendar
refused, see above), ``Conflict`` (a name taken; deleting a calendar machines use).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any, ClassVar, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.auth import Actor
from cloud.core import clock
from cloud.core.audit import audit
from cloud.core.errors import Conflict, Invalid, NotFound
from cloud.core.models import machine_calendars, machines, shift_calendars

DEFAULT_CALENDAR = "default"
AROUND_THE_CLOCK = "24/7"
_DAY_MS = 86_400_000
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


class Planned(NamedTuple):
    """One stretch of planned production time: [start, end) epoch ms, the shift's name and
    its shift day (ISO date in the calendar's timezone)."""

    start: int
    end: int
    shift: str
    day: str


@dataclass(frozen=True, slots=True)
class Calendar:
    """A validated calendar, ready to expand (``None`` stands for around the clock)."""

    id: int | None
    name: str
    timezone: str
    definition: dict[str, Any]


# -- validation ---------------------------------------------------------------------------
#
# The input models check every rule; each refusal is a ``PydanticCustomError`` whose
# message is the part after "<field>: ", with ``at`` naming the input below the
# validator's own place when the rule is about a part of it (a shift's name, the second
# break). ``_refused`` turns the first one into ``Invalid`` with the field written as
# people read it (``shifts[1].breaks[0]``, relative to the definition).

def _refuse(message: str, *at: int | str) -> PydanticCustomError:
    return PydanticCustomError("calendar", "{message}", {"message": message, "at": at})


def _minutes(value: str) -> int:
    """Minutes after midnight of a checked ``HH:MM``."""
    hh, mm = value.split(":")
    return int(hh) * 60 + int(mm)


def _shift_span(start: int, end: int) -> int:
    """Length in minutes of a shift from ``start`` to ``end`` (next day when not after)."""
    return end - start if end > start else end + 1440 - start


def _local_time(value: Any) -> str:
    if not isinstance(value, str) or not _HHMM.fullmatch(value):
        raise _refuse(f"expected a local time HH:MM (e.g. \"06:00\"), got {value!r}")
    return value


def _break(value: Any) -> Any:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise _refuse("expected [\"HH:MM\", \"HH:MM\"]")
    return value


def _list(expected: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if not isinstance(value, list):
            raise _refuse(f"expected {expected}")
        return value
    return check


def _list_of_shifts(value: Any) -> Any:
    if not isinstance(value, list) or not value:
        raise _refuse("expected a non-empty list of shifts")
    return value


def _weekdays(value: Any) -> list[int]:
    if (not isinstance(value, list) or not value
            or any(isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= 7
                   for d in value)):
        raise _refuse(f"expected ISO weekdays 1 (Monday) .. 7 (Sunday), e.g. "
                      f"[1, 2, 3, 4, 5]; got {value!r}")
    return sorted(set(value))


def _iso_date(value: Any) -> date:
    try:
        if isinstance(value, str) and len(value) == 10:
            return date.fromisoformat(value)
    except ValueError:
        pass
    raise _refuse(f"expected an ISO date YYYY-MM-DD, got {value!r}")


def _text(longest: int, *, strip: bool) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if (not isinstance(value, str) or not value.strip()
                or len(value.strip() if strip else value) > longest):
            raise _refuse(f"expected 1..{longest} characters")
        return value.strip() if strip else value
    return check


def _timezone(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _refuse("expected an IANA time zone such as \"Asia/Shanghai\"")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise _refuse(f"unknown time zone {value!r} (use an IANA name such as "
                      "\"Asia/Shanghai\" or \"Europe/Berlin\")") from None
    return value


# (constraints before the validator, so that the JSON schema shows them)
LocalTime = Annotated[str, Field(pattern=_HHMM.pattern, examples=["06:00"],
                                 description="local wall-clock time in the calendar's "
                                 "timezone"),
                      BeforeValidator(_local_time)]
#: A break: local ``[start, end]`` inside its shift (after midnight of a night shift:
#: the next day's clock).
Break = Annotated[tuple[LocalTime, LocalTime], BeforeValidator(_break)]


class _Object(BaseModel):
    """An input object: anything else, or a key the model does not name, is refused
    before its fields are looked at; a required key that is missing is read as null, so
    its field's own rule says what it expects."""

    model_config = ConfigDict(extra="forbid")
    shape: ClassVar[str]

    @model_validator(mode="before")
    @classmethod
    def _an_object(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            raise _refuse(f"expected {cls.shape}")
        unknown = set(data) - set(cls.model_fields)
        if unknown:
            raise _refuse(f"no such key (known: {', '.join(sorted(cls.model_fields))})",
                          sorted(unknown)[0])
        return {**dict.fromkeys(n for n, f in cls.model_fields.items() if f.is_required()),
                **data}


class Shift(_Object):
    """One shift of a calendar: its local start and end (an end not after the start is
    on the next day; equal: 24 hours), the ISO weekdays of its shift day and its
    breaks."""

    shape: ClassVar[str] = "an object with name, start, end"

    name: Annotated[str, BeforeValidator(_text(32, strip=False)),
                    Field(min_length=1, max_length=32)]
    start: LocalTime
    end: LocalTime
    days: Annotated[list[Annotated[int, Field(ge=1, le=7)]], BeforeValidator(_weekdays),
                    Field(min_length=1, description="ISO weekdays of the shift day "
                          "(1 = Monday .. 7 = Sunday); default every day",
                          default_factory=lambda: [1, 2, 3, 4, 5, 6, 7])]
    breaks: Annotated[list[Break],
                      BeforeValidator(_list("a list of [\"HH:MM\", \"HH:MM\"]")),
                      Field(default_factory=list, description="not planned time")]


class CalendarDefinition(_Object):
    """The shifts of a calendar and its non-working dates. Shifts must not overlap in
    the week (planned time would count twice); a break lies inside its shift and
    overlaps no other break of it. Normalized: weekdays and dates sorted once each,
    breaks in time order."""

    shape: ClassVar[str] = "an object with shifts and non_working_dates"

    shifts: Annotated[list[Shift], BeforeValidator(_list_of_shifts), Field(min_length=1)]
    non_working_dates: Annotated[
        list[Annotated[date, BeforeValidator(_iso_date)]],
        BeforeValidator(_list("a list of ISO dates (\"2026-10-01\")")),
        Field(default_factory=list,
              description="shift days on which no shift runs (holidays)")]

    @field_validator("shifts")
    @classmethod
    def _fit_together(cls, shifts: list[Shift]) -> list[Shift]:
        out: list[Shift] = []
        for i, s in enumerate(shifts):
            if any(o.name == s.name for o in out):
                raise _refuse(f"{s.name!r} is the name of another shift", i, "name")
            start = _minutes(s.start)
            span = _shift_span(start, _minutes(s.end))
            spans: list[tuple[int, int]] = []
            for j, (b0, b1) in enumerate(s.breaks):
                # offsets from the shift start, so a break after midnight of a night
                # shift works
                o0 = (_minutes(b0) - start) % 1440
                o1 = o0 + _shift_span(_minutes(b0), _minutes(b1))
                if b0 == b1 or o1 > span:
                    raise _refuse(f"break outside the shift ({b0}-{b1} is not within "
                                  f"{s.start}-{s.end})", i, "breaks", j)
                for k, (p0, p1) in enumerate(spans):
                    if o0 < p1 and p0 < o1:
                        raise _refuse(f"overlaps shifts[{i}].breaks[{k}]", i, "breaks", j)
                spans.append((o0, o1))
            s = s.model_copy(update={"breaks": [b for _, b in sorted(zip(spans, s.breaks,
                                                                          strict=True))]})
            # no two shifts may cover the same minute of the week
            for d in s.days:
                w0 = (d - 1) * 1440 + start
                for k, other in enumerate(out):
                    o_start = _minutes(other.start)
                    o_span = _shift_span(o_start, _minutes(other.end))
                    for od in other.days:
                        if _week_overlap(w0, span, (od - 1) * 1440 + o_start, o_span):
                            raise _refuse(f"overlaps shifts[{k}] ({other.name}) on "
                                          f"weekday {d}", i)
            out.append(s)
        return out

    @field_validator("non_working_dates")
    @classmethod
    def _once_each(cls, dates: list[date]) -> list[date]:
        return sorted(set(dates))


class CalendarIn(BaseModel):
    """A calendar as it is created or replaced (``POST``/``PUT /api/v1/calendars``).
    Other top-level keys are ignored."""

    name: Annotated[str, BeforeValidator(_text(64, strip=True)),
                    Field(min_length=1, max_length=64)]
    timezone: Annotated[str, BeforeValidator(_timezone),
                        Field(examples=["Asia/Shanghai"], description="IANA time zone")]
    definition: CalendarDefinition


def _refused(err: ValidationError) -> Invalid:
    """The first refusal of ``err`` as ``Invalid`` naming its field the way people read
    it: ``shifts[1].breaks[0]``, relative to the definition (``name``, ``timezone`` and
    ``definition`` itself are top-level)."""
    first = err.errors(include_url=False)[0]
    ctx = first.get("ctx") or {}
    loc = [*first["loc"], *ctx.get("at", ())]
    if loc[:1] == ["definition"] and len(loc) > 1:
        loc = loc[1:]
    field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    message = ctx["message"] if "message" in ctx else first["msg"]
    return Invalid(f"{field or 'calendar'}: {message}", field or None)


def validate(name: Any, timezone: Any, definition: Any) -> tuple[str, str, dict[str, Any]]:
    """Check a calendar against ``CalendarIn``; returns (name, timezone, normalized
    definition as JSON). Raises Invalid naming the field (``name``, ``timezone``,
    ``shifts[1].breaks[0]``, ...)."""
    try:
        cal = CalendarIn.model_validate({"name": name, "timezone": timezone,
                                         "definition": definition})
    except ValidationError as err:
        raise _refused(err) from None
    return cal.name, cal.timezone, cal.definition.model_dump(mode="json")


def _week_overlap(a0: int, alen: int, b0: int, blen: int) -> bool:
    week = 7 * 1440
    for shift in (-week, 0, week):
        if a0 < b0 + shift + blen and b0 + shift < a0 + alen:
            return True
    return False


# -- expansion ----------------------------------------------------------------------------

def _local_ms(day: date, minutes: int, tz: ZoneInfo) -> int:
    """Epoch ms of local wall time ``day`` + ``minutes`` (may be >= 1440: next day). A time
    that does not exist (spring forward) is read with the offset before the change, an
    ambiguous one (fall back) as its first occurrence (zoneinfo, fold=0)."""
    d = day + timedelta(days=minutes // 1440)
    m = minutes % 1440
    local = datetime.combine(d, time(m // 60, m % 60), tzinfo=tz)
    return int(local.timestamp() * 1000)


def planned_intervals(calendar: Calendar | None, start_ms: int, end_ms: int) -> list[Planned]:
    """Planned production time within [start_ms, end_ms), breaks removed, in time order:
    ``Planned(start, end, shift, day)``. ``calendar`` None: around the clock (one interval
    per UTC day, shift ``"24/7"``)."""
    out: list[Planned] = []
    if end_ms <= start_ms:
        return out
    if calendar is None:
        t = start_ms - start_ms % _DAY_MS
        while t < end_ms:
            lo, hi = max(t, start_ms), min(t + _DAY_MS, end_ms)
            utc_day = datetime.fromtimestamp(t / 1000, UTC).date().isoformat()
            out.append(Planned(lo, hi, AROUND_THE_CLOCK, utc_day))
            t += _DAY_MS
        return out
    tz = ZoneInfo(calendar.timezone)
    definition = calendar.definition
    closed = set(definition.get("non_working_dates", []))
    first = datetime.fromtimestamp(start_ms / 1000, tz).date() - timedelta(days=1)
    last = datetime.fromtimestamp(end_ms / 1000, tz).date()
    day = first
    while day <= last:
        iso = day.isoformat()
        if iso not in closed:
            for s in definition["shifts"]:
                if day.isoweekday() not in s["days"]:
                    continue
                s0 = _minutes(s["start"])
                span = _shift_span(s0, _minutes(s["end"]))
                cuts = [(0, 0)]
                for b in s["breaks"]:
                    b0 = _minutes(b[0])
                    o0 = (b0 - s0) % 1440
                    cuts.append((o0, o0 + _shift_span(b0, _minutes(b[1]))))
                cuts.sort()
                cuts.append((span, span))
                for (_, gap_start), (gap_end, _) in itertools.pairwise(cuts):
                    if gap_end <= gap_start:
                        continue
                    lo = max(_local_ms(day, s0 + gap_start, tz), start_ms)
                    hi = min(_local_ms(day, s0 + gap_end, tz), end_ms)
                    if hi > lo:
                        out.append(Planned(lo, hi, s["name"], iso))
        day += timedelta(days=1)
    out.sort()
    return out


def day_of(calendar: Calendar | None, ts: int) -> str:
    """The calendar date of ``ts`` in the calendar's timezone (UTC around the clock)."""
    tz = ZoneInfo(calendar.timezone) if calendar is not None else UTC
    return datetime.fromtimestamp(ts / 1000, tz).date().isoformat()


# -- storage ------------------------------------------------------------------------------

def _doc(row: Any) -> dict[str, Any]:
    return {"id": row.id, "name": row.name, "timezone": row.timezone,
            "definition": row.definition}


async def list_calendars(session: AsyncSession) -> list[dict[str, Any]]:
    """Every calendar with the machines assigned to it (``machine_ids``)."""
    rows = (await session.execute(select(shift_calendars).order_by(shift_calendars.c.name)))
    assigned: dict[int, list[int]] = {}
    for m, c in (await session.execute(select(machine_calendars.c.machine_id,
                                              machine_calendars.c.calendar_id)
                                       .order_by(machine_calendars.c.machine_id))).all():
        assigned.setdefault(c, []).append(m)
    return [{**_doc(r), "machine_ids": assigned.get(r.id, [])} for r in rows.all()]


async def get_calendar(session: AsyncSession, calendar_id: int) -> dict[str, Any]:
    row = (await session.execute(select(shift_calendars)
                                 .where(shift_calendars.c.id == calendar_id))).first()
    if row is None:
        raise NotFound(f"calendar {calendar_id} unknown")
    ids = (await session.execute(select(machine_calendars.c.machine_id)
                                 .where(machine_calendars.c.calendar_id == calendar_id)
                                 .order_by(machine_calendars.c.machine_id))).scalars().all()
    return {**_doc(row), "machine_ids": list(ids)}


async def _name_taken(session: AsyncSession, name: str, other_than: int | None) -> bool:
    stmt = select(shift_calendars.c.id).where(shift_calendars.c.name == name)
    if other_than is not None:
        stmt = stmt.where(shift_calendars.c.id != other_than)
    return (await session.execute(stmt)).first() is not None


async def create_calendar(session: AsyncSession, actor: Actor | str, *, name: Any,
                          timezone: Any, definition: Any) -> dict[str, Any]:
    """A new calendar (validated; Invalid names the field, Conflict when the name is
    taken). Audited ``calendar.create``."""
    name, timezone, definition = validate(name, timezone, definition)
    if await _name_taken(session, name, None):
        raise Conflict(f"a calendar named {name!r} exists", "name")
    now = clock.now()
    new_id = (await session.execute(insert(shift_calendars).values(
        name=name, timezone=timezone, definition=definition, created=now, updated=now)
        .returning(shift_calendars.c.id))).scalar_one()
    await audit(session, actor, "calendar.create", "calendar", new_id,
                {"name": name, "timezone": timezone, "definition": definition})
    return await get_calendar(session, new_id)


async def update_calendar(session: AsyncSession, actor: Actor | str, calendar_id: int, *,
                          name: Any, timezone: Any, definition: Any) -> dict[str, Any]:
    """Replace a calendar's name, timezone and definition. Reports computed afterwards
    use the new definition for every period (calendars are not versioned). Audited."""
    await get_calendar(session, calendar_id)
    name, timezone, definition = validate(name, timezone, definition)
    if await _name_taken(session, name, calendar_id):
        raise Conflict(f"a calendar named {name!r} exists", "name")
    await session.execute(update(shift_calendars).where(shift_calendars.c.id == calendar_id)
                          .values(name=name, timezone=timezone, definition=definition,
                                  updated=clock.now()))
    await audit(session, actor, "calendar.update", "calendar", calendar_id,
                {"name": name, "timezone": timezone, "definition": definition})
    return await get_calendar(session, calendar_id)


async def delete_calendar(session: AsyncSession, actor: Actor | str, calendar_id: int) -> None:
    """Delete a calendar no machine is assigned to (Conflict names the machines)."""
    doc = await get_calendar(session, calendar_id)
    if doc["machine_ids"]:
        raise Conflict(f"calendar {doc['name']!r} is assigned to machines "
                       f"{doc['machine_ids']}; assign them another calendar first")
    await session.execute(delete(shift_calendars).where(shift_calendars.c.id == calendar_id))
    await audit(session, actor, "calendar.delete", "calendar", calendar_id,
                {"name": doc["name"]})


async def assign_calendar(session: AsyncSession, actor: Actor | str, machine_id: int,
                          calendar_id: int | None) -> dict[str, Any]:
    """Make ``machine_id`` work to ``calendar_id`` (None: back to the default). Audited
    ``machine.calendar``. Returns {machine_id, calendar_id, effective}."""
    if (await session.execute(select(machines.c.id).where(machines.c.id == machine_id))
            ).first() is None:
        raise NotFound(f"machine {machine_id} unknown")
    if calendar_id is not None:
        await get_calendar(session, calendar_id)
    await session.execute(delete(machine_calendars)
                          .where(machine_calendars.c.machine_id == machine_id))
    if calendar_id is not None:
        await session.execute(insert(machine_calendars).values(machine_id=machine_id,
                                                               calendar_id=calendar_id))
    await audit(session, actor, "machine.calendar", "machine", machine_id,
                {"calendar_id": calendar_id})
    effective = (await calendars_for(session, [machine_id]))[machine_id]
    return {"machine_id": machine_id, "calendar_id": calendar_id,
            "effective": effective.name if effective else AROUND_THE_CLOCK}


async def calendars_for(session: AsyncSession,
                        machine_ids: list[int]) -> dict[int, Calendar | None]:
    """The calendar each machine works to: its own, else ``default``, else None (24/7)."""
    rows = {r.id: r for r in (await session.execute(select(shift_calendars))).all()}
    by_name = {r.name: r for r in rows.values()}
    fallback = by_name.get(DEFAULT_CALENDAR)
    own = dict((await session.execute(
        select(machine_calendars.c.machine_id, machine_calendars.c.calendar_id)
        .where(machine_calendars.c.machine_id.in_(machine_ids)))).tuples().all()) \
        if machine_ids else {}
    out: dict[int, Calendar | None] = {}
    for m in machine_ids:
        row = rows.get(own[m]) if m in own else fallback
        out[m] = (Calendar(row.id, row.name, row.timezone, row.definition)
                  if row is not None else None)
    return out

