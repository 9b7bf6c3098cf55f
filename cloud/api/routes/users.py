"""HTTP API for people: login, sessions, own API tokens and locale, user admin.

- ``POST /api/v1/login`` {name, password} -> {name, role, locale}; sets the session
  cookie (HttpOnly, SameSite=Lax, Secure on https, direct or through a trusted proxy).
  401 ``bad_credentials``, ``user_disabled``; 429 ``too_many_attempts`` with Retry-After
  (cloud/auth/users.py).
- ``POST /api/v1/logout`` -> {logged_out: true}; ends the cookie's session (idempotent).
- ``GET /api/v1/me`` -> {name, role, locale, kind}; ``PUT /api/v1/me/locale`` {locale}.
- ``GET /api/v1/me/tokens?limit=&offset=``; ``POST /api/v1/me/tokens`` {name} -> 201
  {id, name, token} (the token is shown this once); ``DELETE /api/v1/me/tokens/{id}``.
- admin: ``GET /api/v1/users?role=&limit=&offset=``, ``POST /api/v1/users`` {name, role,
  password, locale?} -> 201, ``PATCH /api/v1/users/{name}`` {role?, disabled?},
  ``POST /api/v1/users/{name}/password`` {password} (ends that user's sessions and
  revokes their API tokens; so does disabling), ``GET /api/v1/users/{name}/tokens``,
  ``DELETE /api/v1/users/{name}/tokens/{id}``.

A browser session's state-changing requests need its CSRF token in ``X-CSRF-Token``
(answered by ``POST /login`` and ``GET /me``) or a same-origin ``Origin``
(cloud/api/deps.py); a login from a page of another site is refused (403 ``csrf_failed``).

Lists answer ``{items, total, limit, offset}`` like every list of the API. Every answer is
a named response model (``UserOut``, ``TokenOut``, ...); cloud times (``created``,
``last_used_at``, ``revoked_at``) are ``Timestamp`` (``2026-12-01T08:00:00Z``).

Errors (cloud/api/errors.py): 404 ``unknown_user`` / ``unknown_token``, 409
``user_exists``, 422 ``invalid_request`` (a bad name, role or password, and any body that
does not match its schema).
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy import select

from cloud.api.deps import Admin, Db, Limit, Offset, Viewer
from cloud.api.paging import paged
from cloud.api.schemas import Out, Page, Timestamp
from cloud.auth import (
    CSRF_HEADER,
    SESSION_ABSOLUTE,
    SESSION_COOKIE,
    NotAllowed,
    create_api_token_in,
    create_user_in,
    csrf_token_for,
    foreign_origin,
    get_user,
    login,
    logout,
    revoke_api_token_in,
    set_locale_in,
    set_password_in,
    update_user_in,
)
from cloud.core.db import Database
from cloud.core.errors import NotFound
from cloud.core.models import ApiToken, User

router = APIRouter(prefix="/api/v1", tags=["users"])
Role = Literal["admin", "planner", "viewer"]
Locale = Literal["zh-CN", "en"]


class LoginBody(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    password: str = Field(max_length=1024)


class LocaleBody(BaseModel):
    locale: Locale


class TokenBody(BaseModel):
    name: str | None = Field(default=None, min_length=1, max_length=64)


class NewUserBody(BaseModel):
    name: str
    role: Role
    password: str = Field(max_length=1024)
    locale: Locale | None = None


class UserPatchBody(BaseModel):
    role: Role | None = None
    disabled: bool | None = None


class PasswordBody(BaseModel):
    password: str = Field(max_length=1024)


class LoginOut(Out):
    name: str
    role: str
    locale: str | None = Field(description="zh-CN, en, or null (the browser's choice)")


class LoggedOutOut(Out):
    logged_out: bool


class MeOut(Out):
    """Who is calling, and how: ``kind`` user (a session) or token (an API token)."""

    name: str
    role: str
    locale: str | None
    kind: str


class LocaleOut(Out):
    name: str
    locale: str


class TokenOut(Out):
    """An API token as its user sees it (never its secret)."""

    id: int
    name: str | None
    created: Timestamp
    last_used_at: Timestamp | None
    revoked_at: Timestamp | None


class NewTokenOut(Out):
    id: int
    name: str | None
    token: str = Field(description="the secret: shown in this answer only")


class RevokedTokenOut(Out):
    id: int
    revoked_at: Timestamp


class UserOut(Out):
    name: str
    role: str
    locale: str | None
    created: Timestamp
    disabled: bool


class PasswordSetOut(Out):
    name: str
    password_set: bool


def _user_doc(user: User) -> UserOut:
    return UserOut(name=user.name, role=user.role, locale=user.locale, created=user.created,
                   disabled=user.disabled_at is not None)


def _db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


@router.post("/login")
async def post_login(body: LoginBody, request: Request, response: Response) -> LoginOut:
    """Log in; sets the session cookie and answers its CSRF token in ``X-CSRF-Token``.
    Rate-limited per (name, client address) and per client address."""
    if foreign_origin(request.headers.get("origin"), request.headers.get("referer"),
                      request.headers.get("host")):
        raise NotAllowed("csrf_failed", "a login from a page of another site is refused")
    address = request.client.host if request.client else "unknown"
    result = await login(_db(request), body.name, body.password, address)
    response.headers[CSRF_HEADER] = csrf_token_for(result.session_secret)
    response.set_cookie(SESSION_COOKIE, result.session_secret, httponly=True, samesite="lax",
                        secure=request.url.scheme == "https", path="/",
                        max_age=int(SESSION_ABSOLUTE.total_seconds()))
    return LoginOut(name=result.user.name, role=result.user.role, locale=result.user.locale)


@router.post("/logout")
async def post_logout(request: Request, response: Response) -> LoggedOutOut:
    """End this browser's session (no error when there is none)."""
    secret = request.cookies.get(SESSION_COOKIE)
    if secret:
        async with _db(request).sessions() as session:
            await logout(session, secret)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax")
    return LoggedOutOut(logged_out=True)


@router.get("/me")
async def get_me(request: Request, response: Response, actor: Viewer) -> MeOut:
    """Who is calling; to a browser session also its CSRF token (``X-CSRF-Token``,
    needed by its state-changing API requests)."""
    async with _db(request).sessions() as session:
        user = await get_user(session, actor.name)
    secret = request.cookies.get(SESSION_COOKIE)
    if actor.kind == "user" and secret:
        response.headers[CSRF_HEADER] = csrf_token_for(secret)
    return MeOut(name=user.name, role=user.role, locale=user.locale, kind=actor.kind)


@router.put("/me/locale")
async def put_locale(body: LocaleBody, request: Request, actor: Viewer
                     ) -> LocaleOut:
    """Remember the user's language (reports and UI)."""
    assert actor.user_id is not None
    async with _db(request).sessions() as session, session.begin():
        await set_locale_in(session, actor.user_id, body.locale)
    return LocaleOut(name=actor.name, locale=body.locale)


def token_doc(t: ApiToken) -> TokenOut:
    """An API token as its user sees it (never its secret)."""
    return TokenOut(id=t.id, name=t.name, created=t.created, last_used_at=t.last_used_at,
                    revoked_at=t.revoked_at)


@router.get("/me/tokens")
async def get_tokens(actor: Viewer, session: Db, limit: Limit = 50,
                     offset: Offset = 0) -> Page[TokenOut]:
    """The caller's API tokens, oldest first (never their secrets)."""
    stmt = select(ApiToken).where(ApiToken.user_id == actor.user_id)
    return Page[TokenOut].model_validate(
        await paged(session, stmt, [ApiToken.id], limit, offset, token_doc))


@router.post("/me/tokens", status_code=201)
async def post_token(body: TokenBody, request: Request, actor: Viewer
                     ) -> NewTokenOut:
    """A new API token acting as the caller; shown only in this answer."""
    async with _db(request).sessions() as session, session.begin():
        token_id, token = await create_api_token_in(session, actor.name, body.name,
                                                    actor=actor)
    return NewTokenOut(id=token_id, name=body.name, token=token)


@router.delete("/me/tokens/{token_id}")
async def delete_token(token_id: int, request: Request, actor: Viewer
                       ) -> RevokedTokenOut:
    """Revoke one of the caller's tokens (idempotent); 404 if it is not theirs."""
    assert actor.user_id is not None
    async with _db(request).sessions() as session, session.begin():
        when = await revoke_api_token_in(session, actor.user_id, token_id, actor=actor)
    if when is None:
        raise NotFound(f"you have no API token {token_id}", code="unknown_token")
    return RevokedTokenOut(id=token_id, revoked_at=when)


@router.get("/users")
async def get_users(_actor: Admin, session: Db,
                    role: Role | None = None,
                    limit: Limit = 50, offset: Offset = 0) -> Page[UserOut]:
    """People, by name."""
    stmt = select(User) if role is None else select(User).where(User.role == role)
    return Page[UserOut].model_validate(
        await paged(session, stmt, [User.name], limit, offset, _user_doc))


@router.post("/users", status_code=201)
async def post_user(body: NewUserBody, request: Request, actor: Admin
                    ) -> UserOut:
    """A new person with a role and a password."""
    async with _db(request).sessions() as session, session.begin():
        await create_user_in(session, body.name, body.role, body.password,
                             locale=body.locale, actor=actor)
        user = await get_user(session, body.name)
        return _user_doc(user)


@router.patch("/users/{name}")
async def patch_user(name: str, body: UserPatchBody, request: Request, actor: Admin
                     ) -> UserOut:
    """Change role and/or disable/enable (disabling ends the user's sessions)."""
    async with _db(request).sessions() as session, session.begin():
        user = await update_user_in(session, name, role=body.role, disabled=body.disabled,
                                    actor=actor)
        return _user_doc(user)


@router.get("/users/{name}/tokens")
async def get_user_tokens(name: str, _actor: Admin, session: Db, limit: Limit = 50,
                          offset: Offset = 0) -> Page[TokenOut]:
    """A user's API tokens, oldest first (never their secrets); 404 ``unknown_user``."""
    user = await get_user(session, name)
    stmt = select(ApiToken).where(ApiToken.user_id == user.id)
    return Page[TokenOut].model_validate(
        await paged(session, stmt, [ApiToken.id], limit, offset, token_doc))


@router.delete("/users/{name}/tokens/{token_id}")
async def delete_user_token(name: str, token_id: int, actor: Admin, session: Db
                            ) -> RevokedTokenOut:
    """Revoke one of a user's API tokens (idempotent); 404 ``unknown_user`` /
    ``unknown_token``."""
    user = await get_user(session, name)
    when = await revoke_api_token_in(session, user.id, token_id, actor=actor)
    if when is None:
        raise NotFound(f"user {name!r} has no API token {token_id}", code="unknown_token")
    return RevokedTokenOut(id=token_id, revoked_at=when)


@router.post("/users/{name}/password")
async def post_password(name: str, body: PasswordBody, request: Request,
                        actor: Admin) -> PasswordSetOut:
    """Set a user's password (ends their sessions and revokes their API tokens)."""
    async with _db(request).sessions() as session, session.begin():
        await set_password_in(session, name, body.password, actor=actor)
    return PasswordSetOut(name=name, password_set=True)
