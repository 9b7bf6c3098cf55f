"""Cloud-wide settings: one pydantic model per key, stored as JSON overrides in
``cloud_settings`` over the model's defaults.

Each feature registers its model once (``register("anomalies", AnomalySettings)``): the
model names every setting, its type, its bounds and its default, and documents it in the
OpenAPI schema (``GET/PUT /api/v1/settings/<key>``, cloud/api/routes/settings.py).

- ``get`` returns the settings in effect: the defaults with the stored overrides merged
  in, one level deep (a stored ``{"scrap_rate": {"threshold": 0.2}}`` changes that one
  value and keeps the other ``scrap_rate`` settings), as JSON-ready values.
- ``put`` merges the given overrides over what is stored (one level deep again), checks
  the result against the model (an unknown key, a wrong type or a value out of bounds is
  refused with ``SettingsError`` naming the first bad field, e.g.
  ``notifications.smtp.port``, and nothing is stored), stores the overrides as the model
  normalized them (e.g. one number for every severity) and audits the change.

A value stored by an older version that the model no longer accepts is logged and left
out (the default applies) rather than breaking every reader of the key.
"""

from __future__ import annotations

import copy
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.core import clock
from cloud.core.audit import Named, actor_name, audit
from cloud.core.errors import Invalid
from cloud.core.models import cloud_settings

log = structlog.get_logger(__name__)

_MODELS: dict[str, type[SettingsModel]] = {}


class SettingsModel(BaseModel):
    """Base of every settings model: unknown keys are refused; every field has a
    default (a key nobody changed is its model's defaults)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SettingsError(Invalid):
    """A setting that does not exist or has the wrong type (422 ``invalid_setting``);
    ``field`` names it (``<key>.<path>``)."""

    code = "invalid_setting"

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(detail, field)


def register(key: str, model: type[SettingsModel]) -> None:
    """Make ``model`` the settings of ``key`` (once per key, at import)."""
    _MODELS[key] = model


def keys() -> list[str]:
    return sorted(_MODELS)


def model_of(key: str) -> type[SettingsModel]:
    """The model of ``key``; SettingsError for an unknown key."""
    try:
        return _MODELS[key]
    except KeyError:
        raise SettingsError(key, f"no settings named {key!r} (known: {', '.join(keys())})"
                            ) from None


def defaults(key: str) -> dict[str, Any]:
    return _dump(model_of(key)())


async def get(session: AsyncSession, key: str) -> dict[str, Any]:
    """The settings of ``key`` in effect (defaults with what is stored merged in)."""
    model = model_of(key)
    stored = await _stored(session, key) or {}
    try:
        return _dump(model.model_validate(_merge(defaults(key), stored)))
    except ValidationError as exc:
        log.error("settings_invalid_stored", key=key, error=_first(key, exc)[1])
        good = {k: v for k, v in stored.items() if _valid_alone(model, key, k, v)}
        return _dump(model.model_validate(_merge(defaults(key), good)))


async def put(session: AsyncSession, key: str, value: Any, *, by: Named | str
              ) -> dict[str, Any]:
    """Store overrides for ``key`` (merged over what is stored) and audit them; returns
    the settings in effect. Raises SettingsError naming the first bad field; nothing is
    stored then."""
    model = model_of(key)
    if not isinstance(value, dict):
        raise SettingsError(key, f"{key}: expected an object of settings, got {value!r}")
    current = await _stored(session, key)
    overrides = _merge(current or {}, value)
    try:
        effective = model.model_validate(_merge(defaults(key), overrides))
    except ValidationError as exc:
        raise SettingsError(*_first(key, exc)) from None
    normalized = _dump(effective)
    stored = {k: (_pick(normalized[k], overrides[k]) if isinstance(overrides[k], dict)
                  and isinstance(normalized.get(k), dict) else normalized.get(k))
              for k in overrides}
    now, name = clock.now(), actor_name(by)
    if current is None:
        await session.execute(cloud_settings.insert().values(
            key=key, value=stored, updated=now, updated_by=name))
    else:
        await session.execute(cloud_settings.update().where(cloud_settings.c.key == key)
                              .values(value=stored, updated=now, updated_by=name))
    await audit(session, by, "settings.put", "settings", key, value)
    return normalized


async def _stored(session: AsyncSession, key: str) -> dict[str, Any] | None:
    row = (await session.execute(select(cloud_settings.c.value)
                                 .where(cloud_settings.c.key == key))).scalar_one_or_none()
    return row if isinstance(row, dict) else None


def _dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json", by_alias=True)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on ``base``, one level deep (nested objects merge key by key)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(out.get(k), dict) and isinstance(v, dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = copy.deepcopy(v)
    return out


def _pick(normalized: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """Of a nested object, keep only the keys that were overridden (as normalized; a key
    the model dropped, e.g. a null that removes an open-map entry, stays null)."""
    return {k: normalized.get(k) for k in given}


def _first(key: str, exc: ValidationError) -> tuple[str, str]:
    """(field, message) of a validation error's first problem, field as ``key.a.b``."""
    err = exc.errors()[0]
    field = ".".join([key, *(str(p) for p in err.get("loc", ()))])
    if err.get("type") == "extra_forbidden":
        return field, f"{field}: no such setting"
    return field, f"{field}: {err.get('msg', 'invalid')}, got {err.get('input')!r}"


def _valid_alone(model: type[SettingsModel], key: str, name: str, value: Any) -> bool:
    try:
        model.model_validate(_merge(defaults(key), {name: value}))
    except ValidationError:
        return False
    return True
