"""Shift calendars: validation names the field; planned time is right across DST changes,
night shifts with breaks after midnight, non-working dates, and around the clock."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from cloud.core.errors import Invalid
from cloud.oee.calendars import Calendar, planned_intervals, validate

H = 3_600_000
BERLIN = ZoneInfo("Europe/Berlin")


def at(iso: str, tz: ZoneInfo = BERLIN) -> int:
    return int(datetime.fromisoformat(iso).replace(tzinfo=tz).timestamp() * 1000)


def cal(shifts: list[dict], dates: list[str] | None = None, tz: str = "Europe/Berlin"
        ) -> Calendar:
    name, zone, definition = validate("c", tz, {"shifts": shifts,
                                                "non_working_dates": dates or []})
    return Calendar(1, name, zone, definition)


def hours(c: Calendar | None, start: int, end: int) -> float:
    return sum(p.end - p.start for p in planned_intervals(c, start, end)) / H


@pytest.mark.parametrize(("definition", "field"), [
    ({"shifts": []}, "shifts"),
    ({"shifts": [{"name": "A", "start": "6:00", "end": "14:00"}]}, "shifts[0].start"),
    ({"shifts": [{"name": "A", "start": "06:00", "end": "24:00"}]}, "shifts[0].end"),
    ({"shifts": [{"name": "A", "start": "06:00", "end": "14:00", "days": [0]}]},
     "shifts[0].days"),
    ({"shifts": [{"name": "A", "start": "06:00", "end": "14:00"},
                 {"name": "B", "start": "14:00", "end": "22:00",
                  "breaks": [["18:00", "18:30"], ["10:00", "10:15"]]}]},
     "shifts[1].breaks[1]"),
    ({"shifts": [{"name": "A", "start": "06:00", "end": "14:00",
                  "breaks": [["10:00", "10:30"], ["10:15", "10:45"]]}]}, "shifts[0].breaks[1]"),
    ({"shifts": [{"name": "A", "start": "06:00", "end": "14:00"},
                 {"name": "A", "start": "14:00", "end": "22:00"}]}, "shifts[1].name"),
    ({"shifts": [{"name": "N", "start": "22:00", "end": "06:00"},
                 {"name": "E", "start": "05:00", "end": "13:00"}]}, "shifts[1]"),
    ({"shifts": [{"name": "A", "start": "06:00", "end": "14:00", "shift": 1}]},
     "shifts[0].shift"),
    ({"shifts": [{"name": "A", "start": "06:00", "end": "14:00"}],
      "non_working_dates": ["2026-13-01"]}, "non_working_dates[0]"),
    ({"shift": []}, "shift"),
    # a missing key is read as null, so its own rule names it
    ({}, "shifts"),
    ({"shifts": [{"name": "A", "end": "14:00"}]}, "shifts[0].start"),
    ({"shifts": ["A"]}, "shifts[0]"),
    ({"shifts": [{"name": "A", "start": "06:00", "end": "14:00", "breaks": "10:00"}]},
     "shifts[0].breaks"),
    ({"shifts": [{"name": "A", "start": "06:00", "end": "14:00", "breaks": [["10:00"]]}]},
     "shifts[0].breaks[0]"),
    ({"shifts": [{"name": "A", "start": "06:00", "end": "14:00",
                  "breaks": [["10:00", "25:00"]]}]}, "shifts[0].breaks[0][1]"),
    ({"shifts": [{"name": "A", "start": "06:00", "end": "14:00", "days": [True]}]},
     "shifts[0].days"),
    ({"shifts": [{"name": "", "start": "06:00", "end": "14:00"}]}, "shifts[0].name"),
    ({"shifts": [{"name": "A", "start": "06:00", "end": "14:00"}],
      "non_working_dates": "2026-10-01"}, "non_working_dates"),
    ([], "definition"),
])
def test_validation_names_the_field(definition, field):
    with pytest.raises(Invalid) as err:
        validate("c", "Europe/Berlin", definition)
    assert err.value.field == field, err.value.detail
    assert err.value.detail.startswith(field + ":")


def test_validation_of_name_and_timezone():
    shifts = {"shifts": [{"name": "A", "start": "06:00", "end": "14:00"}]}
    with pytest.raises(Invalid) as err:
        validate("c", "Mars/Olympus", shifts)
    assert err.value.field == "timezone"
    with pytest.raises(Invalid) as err:
        validate(" ", "UTC", shifts)
    assert err.value.field == "name"
    # a night shift's break after midnight is inside it; days default to every day
    _, _, d = validate("c", "UTC", {"shifts": [{"name": "N", "start": "22:00", "end": "06:00",
                                                "breaks": [["02:00", "02:30"]]}]})
    assert d["shifts"][0]["days"] == [1, 2, 3, 4, 5, 6, 7]
    # normalized: weekdays and dates once each and sorted, breaks in time order (a break
    # after midnight comes after one before it), the name stripped
    name, _, d = validate("  night  ", "UTC", {
        "shifts": [{"name": "N", "start": "22:00", "end": "06:00", "days": [5, 1, 5],
                    "breaks": [("02:00", "02:30"), ["23:00", "23:10"]]}],
        "non_working_dates": ["2026-10-02", "2026-10-01", "2026-10-02"]})
    assert (name, d) == ("night", {
        "shifts": [{"name": "N", "start": "22:00", "end": "06:00", "days": [1, 5],
                    "breaks": [["23:00", "23:10"], ["02:00", "02:30"]]}],
        "non_working_dates": ["2026-10-01", "2026-10-02"]})


def test_dst_and_night_shifts_in_berlin():
    night = cal([{"name": "N", "start": "22:00", "end": "06:00",
                  "breaks": [["03:00", "03:30"]]}])
    # Saturday 2025-03-29 22:00 CET -> Sunday 06:00 CEST is 7 h, minus the break: 6.5 h
    spring = planned_intervals(night, at("2025-03-29T12:00"), at("2025-03-30T12:00"))
    assert [(p.shift, p.day) for p in spring] == [("N", "2025-03-29")] * 2
    assert sum(p.end - p.start for p in spring) == 6.5 * H
    assert spring[0].end == at("2025-03-30T03:00")   # the break is at local 03:00 (CEST)
    # 2025-10-25 22:00 CEST -> 06:00 CET is 9 h: 8.5 h planned
    assert hours(night, at("2025-10-25T12:00"), at("2025-10-26T12:00")) == 8.5
    whole_day = cal([{"name": "D", "start": "00:00", "end": "00:00"}])
    assert hours(whole_day, at("2025-03-30T00:00"), at("2025-03-31T00:00")) == 23
    assert hours(whole_day, at("2025-10-26T00:00"), at("2025-10-27T00:00")) == 25
    assert hours(whole_day, at("2025-06-01T00:00"), at("2025-06-02T00:00")) == 24


def test_weekdays_non_working_dates_and_clipping():
    c = cal([{"name": "A", "start": "06:00", "end": "14:00", "days": [1, 2, 3, 4, 5],
              "breaks": [["10:00", "10:30"]]}], ["2025-10-01"])
    # Mon 2025-09-29 .. Sun 2025-10-05: Wednesday is a holiday, the weekend is off
    week = planned_intervals(c, at("2025-09-29T00:00"), at("2025-10-06T00:00"))
    assert sorted({p.day for p in week}) == ["2025-09-29", "2025-09-30", "2025-10-02",
                                             "2025-10-03"]
    assert sum(p.end - p.start for p in week) == 4 * 7.5 * H
    assert planned_intervals(c, at("2025-10-01T00:00"), at("2025-10-02T00:00")) == []
    # clipped to the window
    assert hours(c, at("2025-09-29T09:00"), at("2025-09-29T11:00")) == 1.5


def test_around_the_clock_without_a_calendar():
    start = at("2025-03-12T05:00", ZoneInfo("UTC"))
    got = planned_intervals(None, start, start + 30 * H)
    assert [(p.day, (p.end - p.start) / H, p.shift) for p in got] == [
        ("2025-03-12", 19, "24/7"), ("2025-03-13", 11, "24/7")]
