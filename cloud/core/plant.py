"""The plant's own settings (settings key ``plant``): today its time zone.

Every page, export, chat message and form of the cloud shows and reads times in the
plant's time zone and says which; stored times stay UTC (cloud time) and epoch ms (record
time). The zone in effect is, first to last:

1. ``plant.timezone`` when an admin set it (``PUT /api/v1/settings/plant``, the account
   page's plant section);
2. ``$PLANTSYNC_TIMEZONE`` (the demo sets ``Asia/Shanghai``; an installer sets it in
   ``/etc/plantsync/cloud.env``);
3. the time zone of the ``default`` shift calendar;
4. UTC.

A name the running Python's tz database does not know is refused when set (422
``invalid_setting``) and, from the environment, logged once and skipped.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from functools import cache
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import structlog
from pydantic import Field, field_validator
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.core import settings
from cloud.core.models import shift_calendars

log = structlog.get_logger(__name__)

SETTINGS_KEY: Final = "plant"
TZ_ENV: Final = "PLANTSYNC_TIMEZONE"


class PlantSettings(settings.SettingsModel):
    """The plant's settings."""

    timezone: str | None = Field(
        None, description="IANA time zone of the plant (e.g. Asia/Shanghai); null: "
                          "$PLANTSYNC_TIMEZONE, else the default shift calendar's, else UTC",
        max_length=64)

    @field_validator("timezone")
    @classmethod
    def _known(cls, value: str | None) -> str | None:
        if value is not None and zone(value) is None:
            raise ValueError(f"unknown time zone {value!r} (an IANA name such as "
                             "Asia/Shanghai or Europe/Berlin)")
        return value


settings.register(SETTINGS_KEY, PlantSettings)


@cache
def zone(name: str) -> ZoneInfo | None:
    """The zone called ``name``, or None when the tz database has no such zone."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


@cache
def zone_names() -> tuple[str, ...]:
    """Every zone name the tz database knows, sorted (for pickers)."""
    return tuple(sorted(available_timezones()))


async def timezone(session: AsyncSession) -> ZoneInfo:
    """The plant's time zone in effect (see the module docstring for the order)."""
    stored = (await settings.get(session, SETTINGS_KEY)).get("timezone")
    if stored and (z := zone(stored)):
        return z
    env = os.environ.get(TZ_ENV)
    if env:
        if z := zone(env):
            return z
        _warn_env(env)
    name = (await session.execute(select(shift_calendars.c.timezone)
                                  .where(shift_calendars.c.name == "default"))).scalar()
    return (zone(name) if name else None) or ZoneInfo("UTC")


@cache
def _warn_env(value: str) -> None:
    log.warning("plant_timezone_env_unknown", value=value, env=TZ_ENV)


def utc_offset(tz: ZoneInfo, at: datetime | None = None) -> str:
    """``UTC+08:00`` for ``tz`` at ``at`` (now by default): what pages print beside the
    zone's name."""
    off = (at or datetime.now(UTC)).astimezone(tz).utcoffset()
    minutes = int(off.total_seconds() // 60) if off else 0
    sign = "+" if minutes >= 0 else "-"
    return f"UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
