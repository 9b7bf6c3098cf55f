"""The user's own page, ``/account`` (linked from the header's user name): name, role and
language, and their API tokens for scripts (name, created, last used, revoked), with a
form to create one and a button to revoke each. Every role may use it.

A new token is shown once, in the answer to the form that created it (not through a
redirect: the secret goes into no cookie, URL or log), with a hint to copy it now; only
its SHA-256 is stored. Both forms are guarded like every web action (session, CSRF
token, Origin: cloud/web/context.py) and call the same functions as
``/api/v1/me/tokens`` (cloud/auth/users.py), so they are audited alike.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import select

from cloud.auth import UserError, create_api_token_in, revoke_api_token_in
from cloud.core.models import ApiToken, User
from cloud.web.context import (
    Page,
    WebError,
    open_page,
    redirect_with_flash,
    render,
    require_form,
)
from cloud.web.i18n import N_

router = APIRouter(include_in_schema=False)
NO_STORE = {"Cache-Control": "no-store"}


async def _account(request: Request, page: Page, status_code: int = 200,
                   **extra: Any) -> HTMLResponse:
    assert page.user is not None
    async with request.app.state.db.sessions() as session:
        me = (await session.execute(select(User).where(User.id == page.user.actor.user_id))
              ).scalar_one()
        tokens = (await session.execute(select(ApiToken).where(
            ApiToken.user_id == me.id).order_by(ApiToken.id.desc()))).scalars().all()
    resp = render(page, "account.html", status_code=status_code, me=me, tokens=tokens,
                  **{"new_token": None, "token_name": "", **extra})
    resp.headers.update(NO_STORE)
    return resp


@router.get("/account", response_class=HTMLResponse)
async def account_page(request: Request) -> Response:
    return await _account(request, await open_page(request))


@router.post("/account/tokens")
async def create_token(request: Request) -> Response:
    """Create an API token and show it, this once, on the page itself."""
    form = await request.form()
    user = await require_form(request, form)
    name = str(form.get("name") or "").strip() or None
    page = await open_page(request)
    try:
        async with request.app.state.db.sessions() as session, session.begin():
            token_id, token = await create_api_token_in(session, user.actor.name, name,
                                                        actor=user.actor)
    except UserError as exc:
        page.flash = {"kind": "error", "message": N_("Not done:"), "detail": str(exc),
                      "params": {}}
        return await _account(request, page, status_code=422, token_name=name or "")
    return await _account(request, page, status_code=201,
                          new_token={"id": token_id, "name": name, "token": token})


@router.post("/account/tokens/{token_id}/revoke")
async def revoke_token(token_id: int, request: Request) -> Response:
    form = await request.form()
    user = await require_form(request, form)
    assert user.actor.user_id is not None
    async with request.app.state.db.sessions() as session, session.begin():
        when = await revoke_api_token_in(session, user.actor.user_id, token_id,
                                         actor=user.actor)
    if when is None:
        raise WebError(404, N_("You have no such API token."), str(token_id))
    return redirect_with_flash("/account", "ok", N_("API token revoked."))
