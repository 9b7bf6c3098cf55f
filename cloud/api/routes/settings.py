"""Cloud settings over HTTP, one pair of routes per settings key (cloud/core/settings.py),
each described in the OpenAPI document by its key's model:

- ``GET /api/v1/settings`` (viewer): the keys there are (anomalies, notifications, oee)
- ``GET /api/v1/settings/{key}`` (viewer): the settings in effect (defaults with the
  stored overrides merged in)
- ``PUT /api/v1/settings/{key}`` (admin) {overrides}: merged over what is stored, one
  level deep, audited; an unknown field, a wrong type or a value out of bounds is refused
  with 422 ``invalid_setting`` naming it (``notifications.smtp.port``), and nothing is
  stored then. 404 for an unknown key.

The body is checked by the settings layer rather than by FastAPI so that a partial
override (``{"smtp": {"port": 587}}``) is merged before it is judged, and so that every
refusal names the setting the way the settings layer does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Body

from cloud import anomalies, notify, oee  # noqa: F401  (they register their settings)
from cloud.api.deps import Admin, Db, Viewer
from cloud.api.schemas import Out
from cloud.core import settings
from cloud.core.errors import NotFound

router = APIRouter(prefix="/api/v1/settings", tags=["settings"])


class SettingsKeys(Out):
    keys: list[str]


@router.get("")
async def list_keys(_: Viewer) -> SettingsKeys:
    """The settings keys there are."""
    return SettingsKeys(keys=settings.keys())


def _routes(key: str, model: type[settings.SettingsModel]) -> None:
    # nested models point into the document's components, where the GET answer's model
    # puts them (a ``#/$defs/...`` reference would point at the document's root)
    schema = model.model_json_schema(by_alias=True,
                                     ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    for field in schema.get("properties", {}).values():   # every field is optional in a PUT
        field.pop("default", None)
    schema.pop("required", None)
    schema["title"] = f"{model.__name__}Override"

    async def get_settings(_: Viewer, session: Db) -> dict[str, Any]:
        return await settings.get(session, key)

    async def put_settings(actor: Admin, session: Db,
                           value: Annotated[Any, Body()]) -> dict[str, Any]:
        return await settings.put(session, key, value, by=actor)

    for verb, fn, doc in (("GET", get_settings, f"The {key} settings in effect."),
                          ("PUT", put_settings, f"Override {key} settings (merged over what "
                           "is stored, one level deep); 422 invalid_setting names the first "
                           "bad field, and nothing is stored then.")):
        handler: Callable[..., Awaitable[dict[str, Any]]] = fn
        router.add_api_route(
            f"/{key}", handler, methods=[verb], response_model=model, summary=doc,
            name=f"{verb.lower()}_{key}_settings",
            response_model_by_alias=True,
            openapi_extra=({"requestBody": {"required": True, "content": {
                "application/json": {"schema": schema}}}} if verb == "PUT" else None))


async def _unknown(key: str, _: Viewer) -> dict[str, Any]:
    raise NotFound(f"no settings named {key!r} (known: {', '.join(settings.keys())})")


# Every domain registers its settings model when it is imported (the imports above);
# then each key gets its routes, and any other key a 404.
for _key in settings.keys():
    _routes(_key, settings.model_of(_key))
router.add_api_route("/{key}", _unknown, methods=["GET", "PUT"], include_in_schema=False)
