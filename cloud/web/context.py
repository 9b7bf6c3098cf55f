"""Who is looking, in which language and time zone, and the guards of every web route.

Sessions are the cloud's (cloud/auth/credentials.py): the ``plantsync_session`` cookie set by the
login form here or by ``POST /api/v1/login``.

CSRF: the session cookie is sent by the browser on its own, so every state-changing form
carries a per-session token, ``csrf_token`` (``cloud.auth.csrf_token_for``: derived
from the cookie's secret; the API takes the same token as ``X-CSRF-Token``,
cloud/api/deps.py). A POST whose token does not match is refused (403), and so is a POST
whose ``Origin`` (or, without one, ``Referer``) names another host. The cookie is SameSite=Lax
(cross-site POSTs carry no cookie in current browsers), so the token is the second of
three locks. The login form has no session yet: it relies on the Origin check.

Roles: every person reads every page; planners and admins see and use action buttons;
a viewer who posts an action anyway gets 403 (the service functions are the same ones
the REST API calls, with the same role rule).
"""

from __future__ import annotations

import hmac
import json
import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, unquote, urlencode
from zoneinfo import ZoneInfo

from babel.support import Translations
from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from sqlalchemy import select

from cloud.auth import (
    SESSION_COOKIE,
    Actor,
    AuthError,
    authenticate,
    csrf_token_for,
    foreign_origin,
)
from cloud.core import clock, plant
from cloud.core.fields import INT32_MAX
from cloud.core.models import users
from cloud.core.quantities import from_micro
from cloud.ingest import gateway_freshness
from cloud.web import i18n, labels
from cloud.web.exports import FORMATS
from cloud.web.i18n import LANG_COOKIE, pick_locale

TEMPLATES: Final = Path(__file__).resolve().parent / "templates"
FLASH_COOKIE: Final = "plantsync_flash"
REFRESH_ENV: Final = "PLANTSYNC_WEB_REFRESH_S"


class WebError(Exception):
    """A page or action that cannot be served: ``status`` and a translatable message."""

    def __init__(self, status: int, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.detail = status, message, detail


@dataclass(frozen=True, slots=True)
class WebUser:
    actor: Actor
    locale: str | None      # the user's stored choice (None: not chosen)
    csrf: str

    @property
    def can_act(self) -> bool:
        return self.actor.has_role("planner")

    @property
    def is_admin(self) -> bool:
        return self.actor.has_role("admin")


def signed_micro(value_u: int) -> str:
    """Micro-units as a signed exact decimal (``-2500000`` -> ``-2.5``)."""
    text = from_micro(abs(value_u)) or "0"
    return f"-{text}" if value_u < 0 else text


async def current_user(request: Request) -> WebUser | None:
    """The person behind the session cookie, or None (no cookie, ended session)."""
    secret = request.cookies.get(SESSION_COOKIE)
    if not secret:
        return None
    async with request.app.state.db.sessions() as session:
        try:
            actor = await authenticate(session, None, secret)
        except AuthError:
            return None
        locale = (await session.execute(select(users.c.locale)
                                        .where(users.c.id == actor.user_id))).scalar()
    return WebUser(actor, locale, csrf_token_for(secret))


def same_origin(request: Request) -> bool:
    """False when the browser says the form came from another host (Origin, else
    Referer); True when it says nothing (old clients, scripts)."""
    return not foreign_origin(request.headers.get("origin"), request.headers.get("referer"),
                              request.headers.get("host"))


async def require_form(request: Request, form: Any) -> WebUser:
    """The person posting ``form`` (any role): 303 to the login page without a session
    (raised as WebError 401), 403 for a bad CSRF token or a foreign Origin."""
    user = await current_user(request)
    if user is None:
        raise WebError(401, i18n.N_("Your session has ended; log in again."))
    if not same_origin(request):
        raise WebError(403, i18n.N_("This form was sent from another site; refused."))
    token = str(form.get("csrf_token") or "")
    if not hmac.compare_digest(token, user.csrf):
        raise WebError(403, i18n.N_("The form is out of date (security token); reload the "
                                    "page and try again."))
    return user


async def require_action(request: Request, form: Any) -> WebUser:
    """The planner (or admin) posting ``form``: as ``require_form``, and 403 for a
    viewer."""
    user = await require_form(request, form)
    if not user.can_act:
        raise WebError(403, i18n.N_("This needs the planner role; viewers can only read."))
    return user


# -- rendering ---------------------------------------------------------------------------

@cache
def environment(locale: str) -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]),
                      extensions=["jinja2.ext.i18n"], trim_blocks=True, lstrip_blocks=True)
    env.install_gettext_translations(i18n.translations(locale), newstyle=True)  # type: ignore[attr-defined]
    env.globals["labels"] = labels
    env.globals["from_micro"] = from_micro
    env.globals["signed"] = signed_micro
    return env


def refresh_s() -> int:
    try:
        return max(1, int(os.environ.get(REFRESH_ENV, "10")))
    except ValueError:
        return 10


@dataclass(slots=True)
class Page:
    """Everything a template needs besides its own data."""

    request: Request
    user: WebUser | None
    locale: str
    tz: ZoneInfo
    now_ms: int = field(default_factory=lambda: clock.now_ms())
    provisional: list[dict[str, Any]] = field(default_factory=list)
    flash: dict[str, Any] | None = None

    @property
    def t(self) -> Translations:
        return i18n.translations(self.locale)

    def tr(self, message: str) -> str:
        """``message`` (a msgid held in a variable) in this page's language."""
        return str(self.t.gettext(message))

    def _(self, message: str, **params: Any) -> str:
        text = self.t.gettext(message)
        return text % params if params else text

    def reason(self, reason: str | None) -> str:
        """A stop's reason: a person's words as given, a machine state by its translated
        name, "no reason given" for none."""
        if reason is None:
            return self._("No reason given")
        if reason in labels.MACHINE_STATE:
            return self.tr(labels.MACHINE_STATE[reason])
        return reason

    def ts(self, ts_ms: int | None, seconds: bool = False) -> str:
        return i18n.fmt_ts(ts_ms, self.tz, seconds=seconds)

    def dt(self, value: Any) -> str:
        return i18n.fmt_dt(value, self.tz)

    @property
    def zone(self) -> str:
        """The plant's zone as pages print it: ``Asia/Shanghai (UTC+08:00)``."""
        return f"{self.tz.key} ({plant.utc_offset(self.tz)})"

    def dur(self, ms: float | None) -> str:
        return i18n.fmt_duration(ms, self.t)

    def url(self, path: str | None = None, **changes: Any) -> str:
        """This page's URL (or ``path``) with query parameters changed (None drops one)."""
        params = dict(self.request.query_params)
        for k, v in changes.items():
            if v is None or v == "":
                params.pop(k, None)
            else:
                params[k] = str(v)
        base = path or self.request.url.path
        return f"{base}?{urlencode(params)}" if params else base

    def export_url(self, fmt: str, table: str | None = None) -> str:
        return self.url(export=fmt, table=table, offset=None, before=None)

    @property
    def here(self) -> str:
        q = self.request.url.query
        return self.request.url.path + (f"?{q}" if q else "")


def render(page: Page, template: str, status_code: int = 200, **data: Any) -> HTMLResponse:
    env = environment(page.locale)
    html = env.get_template(template).render(page=page, user=page.user, **data)
    resp = HTMLResponse(html, status_code=status_code)
    if page.flash is not None:
        resp.delete_cookie(FLASH_COOKIE, path="/")
    return resp


def render_fragment(page: Page, template: str, **data: Any) -> Markup:
    return Markup(environment(page.locale).get_template(template).render(
        page=page, user=page.user, **data))


# -- flash messages (one message carried across the redirect after a POST) --------------

def redirect_with_flash(to: str, kind: str, message: str, detail: str | None = None,
                        **params: Any) -> Response:
    resp = RedirectResponse(safe_next(to), status_code=303)
    payload = json.dumps({"kind": kind, "message": message, "detail": detail,
                          "params": params}, ensure_ascii=False)
    resp.set_cookie(FLASH_COOKIE, quote(payload), httponly=True, samesite="lax", path="/",
                    max_age=60)
    return resp


def read_flash(request: Request) -> dict[str, Any] | None:
    raw = request.cookies.get(FLASH_COOKIE)
    if not raw:
        return None
    try:
        doc = json.loads(unquote(raw))
    except ValueError:
        return None
    return doc if isinstance(doc, dict) and "message" in doc else None


def safe_next(target: str | None, default: str = "/") -> str:
    """Only a path on this site (no scheme, no host, no ``//``) may be redirected to."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    return target


# -- opening a page ----------------------------------------------------------------------

PAGE_SIZES: Final = (25, 50, 100, 200)


class LoginRequired(Exception):
    """A page needs a logged-in user: answered with a redirect to ``/login?next=...``."""

    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url


async def open_page(request: Request, *, login: bool = True) -> Page:
    """The page context of a request; raises LoginRequired without a session."""
    user = await current_user(request)
    if user is None and login:
        raise LoginRequired(request.url.path + (f"?{request.url.query}" if request.url.query
                                                else ""))
    locale = pick_locale(user.locale if user else None, request.cookies.get(LANG_COOKIE),
                         request.headers.get("accept-language"))
    async with request.app.state.db.sessions() as session:
        tz = await plant.timezone(session)
        page = Page(request, user, locale, tz, flash=read_flash(request))
        if user is not None:
            page.provisional = [g for g in await gateway_freshness(session, page.now_ms)
                                if g["provisional"]]
    return page


def int_param(request: Request, name: str, default: int, lo: int = 0,
              hi: int = INT32_MAX) -> int:
    """A whole-number query parameter clamped to [lo, hi]; ``default`` when absent or bad.
    ``hi`` defaults to what an ``Integer`` column holds (ids, offsets): beyond it
    PostgreSQL refused the query (a 500)."""
    try:
        return max(lo, min(hi, int(request.query_params.get(name, default))))
    except ValueError:
        return default


def limit_param(request: Request, default: int = 50) -> int:
    """The page size asked for, at most the largest offered."""
    return int_param(request, "limit", default, 1, max(PAGE_SIZES))


def export_format(request: Request) -> str | None:
    """``?export=csv|xlsx``, or None; WebError 400 for another format."""
    fmt = request.query_params.get("export")
    if fmt is None:
        return None
    if fmt not in FORMATS:
        raise WebError(400, i18n.N_("Unknown export format; use csv or xlsx."))
    return fmt

