"""Cloud settings over HTTP, one route for every feature's settings (cloud/settings.py):

- ``GET /api/v1/settings`` (viewer): the keys there are (anomalies, notifications, oee, ...)
- ``GET /api/v1/settings/{key}`` (viewer): defaults with the stored overrides merged in
- ``PUT /api/v1/settings/{key}`` (admin) {overrides}: merged over what is stored, audited;
  an unknown field or a wrong type is refused with 422 ``invalid_setting`` naming it, and
  nothing is stored then. 404 for an unknown key.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, FastAPI
from fastapi.responses import JSONResponse

from cloud import settings
from cloud.api_production import Db
from cloud.auth import Actor, require

router = APIRouter(prefix="/api/v1/settings", tags=["settings"])
Viewer = Annotated[Actor, Depends(require("viewer"))]
Admin = Annotated[Actor, Depends(require("admin"))]


def _unknown(key: str) -> JSONResponse:
    return JSONResponse({"error": "not_found", "detail": f"no settings named {key!r} "
                         f"(known: {', '.join(settings.keys())})"}, status_code=404)


@router.get("")
async def list_keys(_: Viewer) -> dict[str, Any]:
    return {"keys": settings.keys()}


@router.get("/{key}", response_model=None)
async def get_settings(key: str, _: Viewer, session: Db) -> dict[str, Any] | JSONResponse:
    """The settings in effect."""
    if key not in settings.keys():
        return _unknown(key)
    return await settings.get(session, key)


@router.put("/{key}", response_model=None)
async def put_settings(key: str, actor: Admin, session: Db,
                       value: Annotated[Any, Body()]) -> dict[str, Any] | JSONResponse:
    """Override settings (merged over what is stored, one level deep)."""
    if key not in settings.keys():
        return _unknown(key)
    try:
        return await settings.put(session, key, value, by=actor)
    except settings.SettingsError as exc:
        return JSONResponse({"error": "invalid_setting", "detail": exc.detail,
                             "field": exc.field}, status_code=422)


def install_settings_api(app: FastAPI) -> None:
    app.include_router(router)
