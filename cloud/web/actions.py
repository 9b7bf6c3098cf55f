"""The forms (POST): log in and out, language, and the planner's actions. Each action
calls the same service function as the REST API, in one transaction, then redirects
back (303) with a message. Guards: cloud/web/context.py (session, CSRF token, Origin,
planner role)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from cloud import anomalies, oee
from cloud import production as prod
from cloud.auth import (
    SESSION_ABSOLUTE,
    SESSION_COOKIE,
    Actor,
    AuthError,
    login,
    logout,
    set_locale_in,
)
from cloud.core.errors import DomainError, Invalid
from cloud.core.fields import EPOCH_MS_MAX, INT32_MAX, INT32_MIN, Int32, whole
from cloud.production import dispatch
from cloud.web.cache import page_cache
from cloud.web.context import (
    WebError,
    current_user,
    open_page,
    redirect_with_flash,
    render,
    require_action,
    safe_next,
    same_origin,
)
from cloud.web.i18n import LANG_COOKIE, LOCALES, N_

router = APIRouter(include_in_schema=False)
# What a form may be refused with: shown as a flash message, nothing changed.
SERVICE_ERRORS = (DomainError,)


@router.post("/login")
async def post_login(request: Request) -> Response:
    form = await request.form()
    name, password = str(form.get("name") or ""), str(form.get("password") or "")
    target = safe_next(str(form.get("next") or "/"))
    page = await open_page(request, login=False)
    if not same_origin(request):
        return render(page, "login.html", status_code=403, next=target, name=name,
                      error=N_("This form was sent from another site; refused."))
    address = request.client.host if request.client else "unknown"
    try:
        result = await login(request.app.state.db, name[:64], password[:1024], address)
    except AuthError as exc:
        message = (N_("Too many failed logins; wait a few minutes.") if exc.status == 429
                   else N_("User disabled; ask an admin.") if exc.reason == "user_disabled"
                   else N_("Wrong user name or password."))
        return render(page, "login.html", status_code=exc.status, next=target, name=name,
                      error=message)
    resp = RedirectResponse(target, status_code=303)
    resp.set_cookie(SESSION_COOKIE, result.session_secret, httponly=True, samesite="lax",
                    secure=request.url.scheme == "https", path="/",
                    max_age=int(SESSION_ABSOLUTE.total_seconds()))
    return resp


@router.post("/logout")
async def post_logout(request: Request) -> Response:
    form = await request.form()
    user = await current_user(request)
    if user is not None and (form.get("csrf_token") != user.csrf or not same_origin(request)):
        raise WebError(403, N_("The form is out of date (security token); reload the page "
                               "and try again."))
    secret = request.cookies.get(SESSION_COOKIE)
    if secret:
        async with request.app.state.db.sessions() as session:
            await logout(session, secret)
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax")
    return resp


@router.post("/locale")
async def post_locale(request: Request) -> Response:
    """Switch the language: remembered for the user (users.locale) and in a cookie (the
    login page, before anyone is known)."""
    form = await request.form()
    locale = str(form.get("locale") or "")
    if locale not in LOCALES:
        raise WebError(400, N_("Unknown language."), locale)
    user = await current_user(request)
    if user is not None:
        if form.get("csrf_token") != user.csrf or not same_origin(request):
            raise WebError(403, N_("The form is out of date (security token); reload the "
                                   "page and try again."))
        async with request.app.state.db.sessions() as session, session.begin():
            assert user.actor.user_id is not None
            await set_locale_in(session, user.actor.user_id, locale)
    resp = RedirectResponse(safe_next(str(form.get("next") or "/")), status_code=303)
    resp.set_cookie(LANG_COOKIE, locale, max_age=365 * 86400, samesite="lax", path="/")
    return resp


# -- planner actions -------------------------------------------------------------------------

Act = Callable[[AsyncSession, Actor, Any], Awaitable[Any]]


async def _act(request: Request, back: str, done: str, fn: Act, **params: Any) -> Response:
    form = await request.form()
    user = await require_action(request, form)
    target = safe_next(str(form.get("next") or back))
    try:
        async with request.app.state.db.sessions() as session, session.begin():
            await fn(session, user.actor, form)
    except SERVICE_ERRORS as exc:
        return redirect_with_flash(target, "error", N_("Not done:"), str(exc))
    page_cache(request.app).clear()
    return redirect_with_flash(target, "ok", done, **params)


def _form_int(form: Any, name: str) -> int:
    """A whole number from the form, bounded by its column: a record time (``*_ts``) by
    EPOCH_MS_MAX, an id by INT32_MAX (beyond, PostgreSQL refused the query: a 500).
    Invalid otherwise, shown as a flash message."""
    raw = str(form.get(name) or "").strip()
    if not raw:
        raise Invalid(f"{name} must be a whole number", name)
    top = EPOCH_MS_MAX if name.endswith("_ts") else INT32_MAX
    return whole(raw, name, minimum=0 if name.endswith("_ts") else INT32_MIN, maximum=top)


def _opt_int(form: Any, name: str) -> int | None:
    raw = str(form.get(name) or "").strip()
    return None if not raw else _form_int(form, name)


ORDER_ACTIONS = {
    "release": (prod.release_work_order, N_("Work order %(number)s released.")),
    "complete": (prod.complete_work_order, N_("Work order %(number)s completed.")),
    "close": (prod.close_work_order, N_("Work order %(number)s closed.")),
    "cancel": (prod.cancel_work_order, N_("Work order %(number)s cancelled.")),
}


@router.post("/work-orders/{number}/{action}")
async def order_action(number: str, action: str, request: Request) -> Response:
    if action not in ORDER_ACTIONS and action != "dispatch":
        raise WebError(404, N_("No such action."), action)
    back = f"/work-orders/{number}"
    if action == "dispatch":
        async def start(session: AsyncSession, actor: Actor, form: Any) -> None:
            await dispatch.start(session, actor, _form_int(form, "machine_id"),
                                 _form_int(form, "wo_operation_id"))
        return await _act(request, back, N_("Dispatched."), start)
    fn, done = ORDER_ACTIONS[action]

    async def run(session: AsyncSession, actor: Actor, _form: Any) -> None:
        await fn(session, actor, number)
    return await _act(request, back, done, run, number=number)


@router.post("/work-orders/{number}/operations/{step}/{action}")
async def operation_action(number: str, step: Int32, action: str, request: Request) -> Response:
    fns = {"hold": prod.stop_operation, "resume": prod.resume_operation,
           "complete": prod.complete_operation}
    if action not in fns:
        raise WebError(404, N_("No such action."), action)
    fn = fns[action]

    async def run(session: AsyncSession, actor: Actor, _form: Any) -> None:
        await fn(session, actor, number, step)
    return await _act(request, f"/work-orders/{number}", N_("Operation updated."), run)


@router.post("/dispatches/{dispatch_id}/stop")
async def stop_dispatch(dispatch_id: Int32, request: Request) -> Response:
    async def run(session: AsyncSession, actor: Actor, _form: Any) -> None:
        await dispatch.stop(session, actor, dispatch_id)
    return await _act(request, "/", N_("Dispatch stopped."), run)


@router.post("/machines/{machine_id}/assign")
async def assign_unassigned(machine_id: Int32, request: Request) -> Response:
    async def run(session: AsyncSession, actor: Actor, form: Any) -> None:
        await dispatch.assign(session, actor, machine_id, _form_int(form, "wo_operation_id"),
                              _form_int(form, "start_ts"), _form_int(form, "end_ts"))
    return await _act(request, "/", N_("Unassigned production assigned."), run)


@router.post("/machines")
async def register_machine(request: Request) -> Response:
    """An admin registers a device as a machine (from the board's list of devices)."""
    form = await request.form()
    user = await require_action(request, form)
    if not user.is_admin:
        raise WebError(403, N_("This needs the admin role."))

    async def run(session: AsyncSession, actor: Actor, f: Any) -> None:
        await prod.create_machine(session, actor, str(f.get("gateway_id") or ""),
                                  str(f.get("device") or ""),
                                  str(f.get("name") or f.get("device") or ""),
                                  str(f.get("work_center") or "") or None)
    return await _act(request, "/", N_("Machine registered."), run)


@router.post("/stops/reason")
async def stop_reason(request: Request) -> Response:
    async def run(session: AsyncSession, actor: Actor, form: Any) -> None:
        await oee.set_stop_reason(session, actor, machine_id=_form_int(form, "machine_id"),
                                start_ts=_form_int(form, "start_ts"),
                                reason=str(form.get("reason") or "").strip(),
                                note=str(form.get("note") or "").strip() or None)
    return await _act(request, "/oee", N_("Stop reason saved."), run)


@router.post("/anomalies/bulk")
async def anomaly_bulk(request: Request) -> Response:
    """The ticked anomalies of the page acknowledged or closed at once (each on its own:
    the message says how many were done and how many were refused)."""
    form = await request.form()
    action = str(form.get("action") or "")
    if action not in anomalies.BULK_ACTIONS:
        raise WebError(404, N_("No such action."), action)
    ids = [int(str(v)) for v in form.getlist("ids") if str(v).strip().isdigit()]
    user = await require_action(request, form)
    target = safe_next(str(form.get("next") or "/anomalies"))
    try:
        async with request.app.state.db.sessions() as session, session.begin():
            result = await anomalies.act_in_bulk(
                session, user.actor, action, ids,
                cause=str(form.get("cause") or "").strip() or None,
                action_taken=str(form.get("action_taken") or "").strip() or None)
    except SERVICE_ERRORS as exc:
        return redirect_with_flash(target, "error", N_("Not done:"), str(exc))
    page_cache(request.app).clear()
    return redirect_with_flash(
        target, "ok" if not result["failed"] else "error",
        N_("Anomalies: %(done)s done, %(failed)s not (already done, or closing needs a "
           "cause and an action taken)."), done=result["done"], failed=result["failed"])


@router.post("/anomalies/{anomaly_id}/{action}")
async def anomaly_action(anomaly_id: Int32, action: str, request: Request) -> Response:
    if action not in ("acknowledge", "resolve", "close"):
        raise WebError(404, N_("No such action."), action)

    async def run(session: AsyncSession, actor: Actor, form: Any) -> None:
        if action == "acknowledge":
            await anomalies.acknowledge(session, actor, anomaly_id,
                                assignee=str(form.get("assignee") or "").strip() or None,
                                note=str(form.get("note") or "").strip() or None)
        elif action == "resolve":
            await anomalies.resolve(session, actor, anomaly_id, str(form.get("cause") or "").strip(),
                            str(form.get("action") or "").strip())
        else:
            await anomalies.close(session, actor, anomaly_id)

    done = {"acknowledge": N_("Anomaly acknowledged."), "resolve": N_("Anomaly resolved."),
            "close": N_("Anomaly closed.")}[action]
    return await _act(request, "/anomalies", done, run)
