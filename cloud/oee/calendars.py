"""Shift calendars (班次日历): validating them, expanding them into planned production time,
and which calendar a machine works to.

A calendar is a name, an IANA ``timezone`` and a ``definition``::

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

A machine works to the calendar assigned to it (``machine_calendars``); with none, to the
calendar named ``default`` when there is one, else around the clock: one planned
interval per UTC day, shift name ``"24/7"``, day = the UTC date.

Errors: ``OeeError`` is the root of the errors of this module, cloud/oee.py and
cloud/maintenance.py; the API answers ``{error, detail, field?}`` with its ``status``::

    OeeError
    ├── NotFound        404 not_found
    ├── Invalid         422 invalid (+ field, e.g. ``shifts[1].breaks[0]``)
    └── Conflict        409 conflict
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

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

def _minutes(value: Any, field: str) -> int:
    if not isinstance(value, str) or not _HHMM.match(value):
        raise Invalid(f"{field}: expected a local time HH:MM (e.g. \"06:00\"), got {value!r}",
                      field)
    hh, mm = value.split(":")
    return int(hh) * 60 + int(mm)


def _shift_span(start: int, end: int) -> int:
    """Length in minutes of a shift from ``start`` to ``end`` (next day when not after)."""
    return end - start if end > start else end + 1440 - start


def validate(name: Any, timezone: Any, definition: Any) -> tuple[str, str, dict[str, Any]]:
    """Check a calendar; returns (name, timezone, normalized definition). Raises Invalid
    naming the field (``name``, ``timezone``, ``shifts[1].breaks[0]``, ...)."""
    if not isinstance(name, str) or not name.strip() or len(name.strip()) > 64:
        raise Invalid("name: expected 1..64 characters", "name")
    if not isinstance(timezone, str) or not timezone:
        raise Invalid("timezone: expected an IANA time zone such as \"Asia/Shanghai\"",
                      "timezone")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise Invalid(f"timezone: unknown time zone {timezone!r} (use an IANA name such as "
                      "\"Asia/Shanghai\" or \"Europe/Berlin\")", "timezone") from None
    if not isinstance(definition, Mapping):
        raise Invalid("definition: expected an object with shifts and non_working_dates",
                      "definition")
    unknown = set(definition) - {"shifts", "non_working_dates"}
    if unknown:
        key = sorted(unknown)[0]
        raise Invalid(f"{key}: no such key (known: non_working_dates, shifts)", key)
    shifts_in = definition.get("shifts")
    if not isinstance(shifts_in, list) or not shifts_in:
        raise Invalid("shifts: expected a non-empty list of shifts", "shifts")
    shifts: list[dict[str, Any]] = []
    names: set[str] = set()
    for i, s in enumerate(shifts_in):
        where = f"shifts[{i}]"
        if not isinstance(s, Mapping):
            raise Invalid(f"{where}: expected an object with name, start, end", where)
        extra = set(s) - {"name", "start", "end", "days", "breaks"}
        if extra:
            key = f"{where}.{sorted(extra)[0]}"
            raise Invalid(f"{key}: no such key (known: breaks, days, end, name, start)", key)
        sname = s.get("name")
        if not isinstance(sname, str) or not sname.strip() or len(sname) > 32:
            raise Invalid(f"{where}.name: expected 1..32 characters", f"{where}.name")
        if sname in names:
            raise Invalid(f"{where}.name: {sname!r} is the name of another shift",
                          f"{where}.name")
        names.add(sname)
        start = _minutes(s.get("start"), f"{where}.start")
        end = _minutes(s.get("end"), f"{where}.end")
        span = _shift_span(start, end)
        days = s.get("days", [1, 2, 3, 4, 5, 6, 7])
        if (not isinstance(days, list) or not days
                or any(isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= 7
                       for d in days)):
            raise Invalid(f"{where}.days: expected ISO weekdays 1 (Monday) .. 7 (Sunday), "
                          f"e.g. [1, 2, 3, 4, 5]; got {days!r}", f"{where}.days")
        breaks_in = s.get("breaks", [])
        if not isinstance(breaks_in, list):
            raise Invalid(f"{where}.breaks: expected a list of [\"HH:MM\", \"HH:MM\"]",
                          f"{where}.breaks")
        spans: list[tuple[int, int]] = []
        for j, b in enumerate(breaks_in):
            bw = f"{where}.breaks[{j}]"
            if not isinstance(b, list | tuple) or len(b) != 2:
                raise Invalid(f"{bw}: expected [\"HH:MM\", \"HH:MM\"]", bw)
            b0, b1 = _minutes(b[0], f"{bw}[0]"), _minutes(b[1], f"{bw}[1]")
            # offsets from the shift start, so a break after midnight of a night shift works
            o0 = (b0 - start) % 1440
            o1 = o0 + _shift_span(b0, b1)
            if b0 == b1 or o1 > span:
                raise Invalid(f"{bw}: break outside the shift ({b[0]}-{b[1]} is not within "
                              f"{s['start']}-{s['end']})", bw)
            for k, (p0, p1) in enumerate(spans):
                if o0 < p1 and p0 < o1:
                    raise Invalid(f"{bw}: overlaps {where}.breaks[{k}]", bw)
            spans.append((o0, o1))
        shifts.append({"name": sname, "start": s["start"], "end": s["end"],
                       "days": sorted(set(days)),
                       "breaks": [list(b) for _, b in sorted(zip(spans, breaks_in,
                                                                  strict=True))]})
        # no two shifts may cover the same minute of the week
        for d in shifts[-1]["days"]:
            w0 = (d - 1) * 1440 + start
            for k, other in enumerate(shifts[:-1]):
                os_, oe = _minutes(other["start"], ""), _minutes(other["end"], "")
                for od in other["days"]:
                    v0 = (od - 1) * 1440 + os_
                    if _week_overlap(w0, span, v0, _shift_span(os_, oe)):
                        raise Invalid(f"{where}: overlaps shifts[{k}] ({other['name']}) on "
                                      f"weekday {d}", where)
    dates_in = definition.get("non_working_dates", [])
    if not isinstance(dates_in, list):
        raise Invalid("non_working_dates: expected a list of ISO dates (\"2026-10-01\")",
                      "non_working_dates")
    dates: list[str] = []
    for i, d in enumerate(dates_in):
        try:
            dates.append(date.fromisoformat(d).isoformat() if isinstance(d, str) else "")
        except ValueError:
            dates.append("")
        if not dates[-1] or len(d) != 10:
            raise Invalid(f"non_working_dates[{i}]: expected an ISO date YYYY-MM-DD, got {d!r}",
                          f"non_working_dates[{i}]")
    return name.strip(), timezone, {"shifts": shifts, "non_working_dates": sorted(set(dates))}


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
            day = datetime.fromtimestamp(t / 1000, UTC).date().isoformat()
            out.append(Planned(lo, hi, AROUND_THE_CLOCK, day))
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
                s0 = _minutes(s["start"], "start")
                span = _shift_span(s0, _minutes(s["end"], "end"))
                cuts = [(0, 0)]
                for b in s["breaks"]:
                    b0 = _minutes(b[0], "break")
                    o0 = (b0 - s0) % 1440
                    cuts.append((o0, o0 + _shift_span(b0, _minutes(b[1], "break"))))
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

