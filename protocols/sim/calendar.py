"""A shift calendar a simulated plant works to (``Machine.schedule``).

``ShiftSchedule(definition, timezone)`` takes the same definition the cloud's calendars
take (``{"shifts": [{"name", "start": "HH:MM", "end": "HH:MM", "days": [1..7],
"breaks": [["HH:MM", "HH:MM"], ...]}], "non_working_dates": ["YYYY-MM-DD"]}``, local
wall-clock times; a shift whose end is not after its start ends the next day and belongs
to the day it starts) and answers, for an epoch second, ``"work"``, ``"break"`` or
``"off"``. Deliberately small: no overlap checks (the cloud validates calendars).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

__all__ = ["ShiftSchedule"]


def _minutes(hhmm: str) -> int:
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


class ShiftSchedule:
    """What a plant does at a moment by its shift calendar (see the module docstring)."""

    def __init__(self, definition: dict[str, Any], timezone: str) -> None:
        self.definition = definition
        self.timezone = timezone
        self._tz = ZoneInfo(timezone)
        self._off_dates = {date.fromisoformat(d)
                           for d in definition.get("non_working_dates", [])}
        self._cache: tuple[int, int, str] | None = None   # [from, to) epoch s -> answer

    def __getstate__(self) -> dict[str, Any]:
        return {"definition": self.definition, "timezone": self.timezone}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["definition"], state["timezone"])  # type: ignore[misc]

    def __call__(self, epoch_s: float) -> str:
        c = self._cache
        if c is not None and c[0] <= epoch_s < c[1]:
            return c[2]
        now = datetime.fromtimestamp(epoch_s, UTC).astimezone(self._tz)
        minute = now.replace(second=0, microsecond=0)
        answer = self._at(now)
        start = int(minute.timestamp())
        self._cache = (start, start + 60, answer)
        return answer

    def _at(self, now: datetime) -> str:
        for day_back in (0, 1):
            day = now.date() - timedelta(days=day_back)
            if day in self._off_dates:
                continue
            midnight = datetime(day.year, day.month, day.day, tzinfo=self._tz)
            mins = (now - midnight).total_seconds() / 60.0
            for shift in self.definition.get("shifts", []):
                if day.isoweekday() not in shift.get("days", range(1, 8)):
                    continue
                s, e = _minutes(shift["start"]), _minutes(shift["end"])
                if e <= s:
                    e += 1440
                if not s <= mins < e:
                    continue
                for b0, b1 in shift.get("breaks", []):
                    bs, be = _minutes(b0), _minutes(b1)
                    if bs < s:
                        bs, be = bs + 1440, be + 1440
                    if be <= bs:
                        be += 1440
                    if bs <= mins < be:
                        return "break"
                return "work"
        return "off"
