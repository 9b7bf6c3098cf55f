"""Cloud-wide settings stored as JSON per key in ``cloud_settings``, over defaults in code.

Each feature registers its defaults once (``register("anomalies", {...}, check=...)``);
``get`` returns the defaults with the stored overrides merged in (one level deep: a stored
``{"offline_after_s": 60}`` changes that one threshold and keeps the rest), and ``put``
validates keys and types against the defaults (a typo is refused, not silently ignored),
then runs the feature's own ``check`` (which may also normalize the value), stores and
audits. ``GET/PUT /api/v1/settings/{key}`` (cloud/api_settings.py) is the one route.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.core import clock
from cloud.core.audit import audit
from cloud.core.errors import Invalid
from cloud.core.models import cloud_settings

_DEFAULTS: dict[str, dict[str, Any]] = {}
_CHECKS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {}


class SettingsError(Invalid):
    """A setting that does not exist or has the wrong type (422 ``invalid_setting``);
    ``field`` names it."""

    code = "invalid_setting"

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(detail, field)


def register(key: str, defaults: dict[str, Any], *,
             check: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
    """Defaults of ``key``; ``check(value) -> value`` validates (raising SettingsError
    naming the field) and may normalize an override after the type checks passed."""
    _DEFAULTS[key] = copy.deepcopy(defaults)
    if check is not None:
        _CHECKS[key] = check


def keys() -> list[str]:
    return sorted(_DEFAULTS)


def defaults(key: str) -> dict[str, Any]:
    return copy.deepcopy(_DEFAULTS[key])


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(out.get(k), dict) and isinstance(v, dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


async def get(session: AsyncSession, key: str) -> dict[str, Any]:
    """The defaults of ``key`` with what is stored merged in."""
    stored = (await session.execute(select(cloud_settings.c.value)
                                    .where(cloud_settings.c.key == key))).scalar_one_or_none()
    return _merge(_DEFAULTS.get(key, {}), stored or {})


def _check(key: str, base: dict[str, Any], value: dict[str, Any], path: str) -> None:
    for k, v in value.items():
        where = f"{path}.{k}"
        if k not in base:
            known = ", ".join(sorted(base)) or "none"
            raise SettingsError(where, f"{where}: no such setting (known: {known})")
        want = base[k]
        if isinstance(want, dict):
            if not isinstance(v, dict):
                raise SettingsError(where, f"{where}: expected an object")
            if want:   # an empty default dict is an open map (e.g. per-code overrides)
                _check(key, want, v, where)
        elif isinstance(want, bool) or want is None:
            continue
        elif isinstance(want, int | float):
            if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
                raise SettingsError(where, f"{where}: expected a number >= 0, got {v!r}")
        elif isinstance(want, str) and not isinstance(v, str):
            raise SettingsError(where, f"{where}: expected a string, got {v!r}")


async def put(session: AsyncSession, key: str, value: dict[str, Any], *,
              by: Any) -> dict[str, Any]:
    """Store overrides for ``key`` (merged over what is stored) and audit them (``by``: an
    Actor or a name); returns the effective settings. Raises SettingsError naming the
    first bad field; nothing is stored then."""
    if key not in _DEFAULTS:
        raise SettingsError(key, f"no settings named {key!r} (known: {', '.join(sorted(_DEFAULTS))})")
    if not isinstance(value, dict):
        raise SettingsError(key, f"{key}: expected an object")
    if key in _CHECKS:     # normalizes first (e.g. one number for a per-severity map)
        value = _CHECKS[key](dict(value))
    _check(key, _DEFAULTS[key], value, key)
    current = (await session.execute(select(cloud_settings.c.value)
                                     .where(cloud_settings.c.key == key))).scalar_one_or_none()
    merged = _merge(current or {}, value)
    now = clock.now()
    name = str(getattr(by, "name", by))
    if current is None:
        await session.execute(cloud_settings.insert().values(key=key, value=merged, updated=now,
                                                             updated_by=name))
    else:
        await session.execute(cloud_settings.update().where(cloud_settings.c.key == key)
                              .values(value=merged, updated=now, updated_by=name))
    await audit(session, by, "settings.put", "settings", key, value)
    return _merge(_DEFAULTS[key], merged)
