"""Cloud settings over HTTP, one pair of routes per settings key (cloud/core/settings.py),
each described in the OpenAPI document by its key's model (anomalies, notifications, oee,
plant: the model lives with its domain; plant's in cloud/core/plant.py):

- ``GET /api/v1/settings`` (viewer): the keys there are
- ``GET /api/v1/settings/<key>`` (viewer): the settings in effect (defaults with the
  stored overrides merged in); the mail server's host and user only to admins (the SMTP
  password is no setting at all: cloud/notify/config.py)
- ``PUT /api/v1/settings/<key>`` (admin) {overrides}: merged over what is stored, one
  level deep, audited; an unknown field, a wrong type or a value out of bounds is refused
  with 422 ``invalid_setting`` naming it (``notifications.smtp.port``), and nothing is
  stored then. 404 for an unknown key.

The body is checked by the settings layer rather than by FastAPI so that a partial
override (``{"smtp": {"port": 587}}``) is merged before it is judged, and so that every
refusal names the setting the way the settings layer does.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

from fastapi import APIRouter, Body

from cloud import anomalies, notify, oee
from cloud.api.deps import Admin, Db, Viewer
from cloud.api.schemas import Out, documented_body
from cloud.core import plant, settings
from cloud.core.errors import NotFound

router = APIRouter(prefix="/api/v1/settings", tags=["settings"])
Override = Annotated[Any, Body()]
PUT_DOC: Final = ("Override these settings (merged over what is stored, one level deep); 422 "
                  "``invalid_setting`` names the first bad field, and nothing is stored then.")


class SettingsKeys(Out):
    keys: list[str]


@router.get("")
async def list_keys(_: Viewer) -> SettingsKeys:
    """The settings keys there are."""
    return SettingsKeys(keys=settings.keys())


@router.get("/anomalies", response_model=anomalies.AnomalySettings)
async def get_anomaly_settings(_: Viewer, session: Db) -> dict[str, Any]:
    """Thresholds and severity rules of the anomalies, in effect."""
    return await settings.get(session, anomalies.SETTINGS_KEY)


@router.put("/anomalies", response_model=anomalies.AnomalySettings, description=PUT_DOC,
            openapi_extra=documented_body(anomalies.AnomalySettings, partial=True))
async def put_anomaly_settings(actor: Admin, session: Db, value: Override) -> dict[str, Any]:
    return await settings.put(session, anomalies.SETTINGS_KEY, value, by=actor)


@router.get("/notifications", response_model=notify.NotificationSettings,
            response_model_by_alias=True)
async def get_notification_settings(actor: Viewer, session: Db) -> dict[str, Any]:
    """How anomaly notifications are delivered (SMTP, retries, languages), in effect. The
    mail server's ``host`` and ``user`` are admin-only: others read ``(hidden)``."""
    return notify.settings_for_reader(await settings.get(session, notify.SETTINGS_KEY),
                                      admin=actor.has_role("admin"))


@router.put("/notifications", response_model=notify.NotificationSettings,
            response_model_by_alias=True, description=PUT_DOC,
            openapi_extra=documented_body(notify.NotificationSettings, partial=True))
async def put_notification_settings(actor: Admin, session: Db,
                                    value: Override) -> dict[str, Any]:
    return await settings.put(session, notify.SETTINGS_KEY, value, by=actor)


@router.get("/plant", response_model=plant.PlantSettings)
async def get_plant_settings(_: Viewer, session: Db) -> dict[str, Any]:
    """The plant's own settings (its time zone; null: the server's default), in effect."""
    return await settings.get(session, plant.SETTINGS_KEY)


@router.put("/plant", response_model=plant.PlantSettings, description=PUT_DOC,
            openapi_extra=documented_body(plant.PlantSettings, partial=True))
async def put_plant_settings(actor: Admin, session: Db, value: Override) -> dict[str, Any]:
    return await settings.put(session, plant.SETTINGS_KEY, value, by=actor)


@router.get("/oee", response_model=oee.OeeSettings)
async def get_oee_settings(_: Viewer, session: Db) -> dict[str, Any]:
    """How stops count in OEE (micro-stops, state categories), in effect."""
    return await settings.get(session, oee.SETTINGS_KEY)


@router.put("/oee", response_model=oee.OeeSettings, description=PUT_DOC,
            openapi_extra=documented_body(oee.OeeSettings, partial=True))
async def put_oee_settings(actor: Admin, session: Db, value: Override) -> dict[str, Any]:
    return await settings.put(session, oee.SETTINGS_KEY, value, by=actor)


@router.api_route("/{key}", methods=["GET", "PUT"], include_in_schema=False)
async def unknown_settings(key: str, _: Viewer) -> None:
    raise NotFound(f"no settings named {key!r} (known: {', '.join(settings.keys())})")
