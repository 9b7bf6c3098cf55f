"""The plant's settings page, ``/settings``: today the plant's time zone, which every
page, export and form uses (cloud/core/plant.py). Everyone signed in sees what is in
effect and where it comes from; an admin changes it with the form (guarded like every web
action: session, CSRF token, Origin) through the same ``settings.put`` as
``PUT /api/v1/settings/plant``, so the change is checked and audited alike.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from cloud.core import plant, settings
from cloud.core.errors import DomainError
from cloud.web.cache import page_cache
from cloud.web.context import WebError, open_page, redirect_with_flash, render, require_form
from cloud.web.i18n import N_

router = APIRouter(include_in_schema=False)


@router.get("/settings", response_class=HTMLResponse)
async def settings_page(request: Request) -> Response:
    page = await open_page(request)
    async with request.app.state.db.sessions() as session:
        stored = (await settings.get(session, plant.SETTINGS_KEY)).get("timezone")
    return render(page, "settings.html", stored=stored, zones=plant.zone_names(),
                  env=plant.TZ_ENV)


@router.post("/settings/plant")
async def set_plant(request: Request) -> Response:
    form = await request.form()
    user = await require_form(request, form)
    if not user.is_admin:
        raise WebError(403, N_("This needs the admin role."))
    value = str(form.get("timezone") or "").strip() or None
    try:
        async with request.app.state.db.sessions() as session, session.begin():
            await settings.put(session, plant.SETTINGS_KEY, {"timezone": value},
                               by=user.actor)
    except DomainError as exc:
        return redirect_with_flash("/settings", "error", N_("Not done:"), exc.detail)
    page_cache(request.app).clear()
    return redirect_with_flash("/settings", "ok", N_("Plant settings saved."))
