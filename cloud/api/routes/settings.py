"""Cloud settings over HTTP, one route for every feature's settings (cloud/settings.py):

- ``GET /api/v1/settings`` (viewer): the keys there are (anomalies, notifications, oee, ...)
- ``GET /api/v1/settings/{key}`` (viewer): defaults with the stored overrides merged in
- ``PUT /api/v1/settings/{key}`` (admin) {overrides}: merged over what is stored, audited;
  an unknown field or a wrong type is refused with 422 ``invalid_setting`` naming it, and
  nothing is stored then. 404 for an unknown key.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body

from cloud.api.deps import Admin, Db, Viewer
from cloud.core import settings
from cloud.core.errors import NotFound

router = APIRouter(prefix="/api/v1/settings", tags=["settings"])


def _known(key: str) -> None:
    if key not in settings.keys():
        raise NotFound(f"no settings named {key!r} (known: {', '.join(settings.keys())})")


@router.get("")
async def list_keys(_: Viewer) -> dict[str, Any]:
    return {"keys": settings.keys()}


@router.get("/{key}")
async def get_settings(key: str, _: Viewer, session: Db) -> dict[str, Any]:
    """The settings in effect."""
    _known(key)
    return await settings.get(session, key)


@router.put("/{key}")
async def put_settings(key: str, actor: Admin, session: Db,
                       value: Annotated[Any, Body()]) -> dict[str, Any]:
    """Override settings (merged over what is stored, one level deep); 422
    ``invalid_setting`` names the first bad field, and nothing is stored then."""
    _known(key)
    return await settings.put(session, key, value, by=actor)

