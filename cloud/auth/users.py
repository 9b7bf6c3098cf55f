"""People: users, passwords, API tokens, logins. Usable from the CLI, the demo and tests.

Entry points taking a ``Database`` (each its own transaction; for the CLI and
edge/demo.py):

- ``await create_user(db, name, role, password, *, locale=None, actor="system") -> int``
- ``await set_password(db, name, password, *, actor="system") -> None``
- ``await create_api_token(db, user, token_name=None, *, actor="system") -> tuple[int, str]``

The ``*_in`` variants take an open ``AsyncSession`` and join the caller's transaction
(the HTTP API uses them). Errors (cloud.core.errors subclasses, message for the
user): ``UserError`` (bad name, role or password), ``UserExists``, ``UnknownUser``.

Passwords: argon2id via argon2-cffi, RFC 9106 "low memory" parameters (64 MiB, t=3,
p=4); a hash made with other parameters is re-hashed at the next successful login.
Tests may set ``PLANTSYNC_ARGON2_PROFILE=cheapest`` before import (the test fixtures
do) -- never set it in production. A password is at least ``MIN_PASSWORD_LENGTH``
characters. No user, and no password, is ever created implicitly.

Logins are rate-limited: ``MAX_FAILURES_PER_NAME`` failed attempts for one user name
since that name's last success, or ``MAX_FAILURES_PER_ADDRESS`` from one client address
(not reset by a success: someone with a valid account must not be able to reset the
counter while spraying other names; higher because a plant's browsers may share one
NAT address), within ``LOGIN_WINDOW`` -> 429 with Retry-After. Every attempt (also the
refused ones, which keep counting) is a ``login_attempts`` row; every failure and every
user or token change is audited.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, cast

import structlog
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from argon2.profiles import CHEAPEST, RFC_9106_LOW_MEMORY
from sqlalchemy import CursorResult, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.auth.credentials import (
    ROLES,
    SESSION_ABSOLUTE,
    SESSION_IDLE,
    Actor,
    NotAuthenticated,
    TooManyAttempts,
    hash_token,
    new_api_token,
)
from cloud.core import clock
from cloud.core.audit import audit
from cloud.core.db import Database
from cloud.core.errors import Duplicate, Invalid, NotFound
from cloud.core.models import ApiToken, LoginAttempt, Session, User

log = structlog.get_logger(__name__)

ARGON2_PROFILE_ENV: Final = "PLANTSYNC_ARGON2_PROFILE"
MIN_PASSWORD_LENGTH: Final = 10
LOCALES: Final = ("zh-CN", "en")
USER_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
LOGIN_WINDOW: Final = timedelta(minutes=10)
MAX_FAILURES_PER_NAME: Final = 5
MAX_FAILURES_PER_ADDRESS: Final = 20


class UserError(Invalid):
    """A user, role, password or token request that cannot be done as asked (422
    ``invalid_request``)."""

    code = "invalid_request"


class UserExists(Duplicate):
    code = "user_exists"


class UnknownUser(NotFound):
    code = "unknown_user"


def _password_hasher() -> PasswordHasher:
    profile = os.environ.get(ARGON2_PROFILE_ENV, "")
    if profile == "cheapest":  # tests only: makes a hash take microseconds
        return PasswordHasher.from_parameters(CHEAPEST)
    return PasswordHasher.from_parameters(RFC_9106_LOW_MEMORY)


password_hasher: PasswordHasher = _password_hasher()
# Verified against when the user does not exist, so both cases take the same time.
_DUMMY_HASH: Final = password_hasher.hash(secrets.token_urlsafe(16))


def check_user_name(name: str) -> None:
    if not USER_NAME.match(name):
        raise UserError(f"user name {name!r} is not valid: 1-64 characters, letters, digits, "
                        "'.', '_', '@' or '-', starting with a letter or digit (e.g. li.wei)")


def check_role_name(role: str) -> None:
    if role not in ROLES:
        raise UserError(f"role {role!r} is not one of {', '.join(reversed(ROLES))}")


def check_password(password: str) -> None:
    """Raise UserError for an empty or too short password."""
    if not password:
        raise UserError("the password is empty; give one of at least "
                        f"{MIN_PASSWORD_LENGTH} characters")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"the password has {len(password)} characters; use at least "
                        f"{MIN_PASSWORD_LENGTH}")


def check_locale(locale: str | None) -> None:
    if locale is not None and locale not in LOCALES:
        raise UserError(f"locale {locale!r} is not one of {', '.join(LOCALES)}")


def hash_password(password: str) -> str:
    check_password(password)
    return password_hasher.hash(password)


# --- database-level entry points (own transaction) -----------------------------------

async def create_user(db: Database, name: str, role: str, password: str, *,
                      locale: str | None = None, actor: Actor | str = "system") -> int:
    """Create user ``name`` with ``role`` and ``password``; returns its id.
    Raises UserError (name, role, password), UserExists."""
    async with db.sessions() as session, session.begin():
        user_id = await create_user_in(session, name, role, password, locale=locale,
                                       actor=actor)
    log.info("user_created", user=name, role=role)
    return user_id


async def set_password(db: Database, name: str, password: str, *,
                       actor: Actor | str = "system") -> None:
    """Give ``name`` a new password; ends the user's sessions. Raises UserError,
    UnknownUser."""
    async with db.sessions() as session, session.begin():
        await set_password_in(session, name, password, actor=actor)
    log.info("user_password_set", user=name)


async def create_api_token(db: Database, user: str, token_name: str | None = None, *,
                           actor: Actor | str = "system") -> tuple[int, str]:
    """A new API token acting as ``user``: (id, token). The token exists in clear only
    in this return value. Raises UnknownUser, UserError."""
    async with db.sessions() as session, session.begin():
        result = await create_api_token_in(session, user, token_name, actor=actor)
    log.info("api_token_created", user=user, token_id=result[0])
    return result


# --- session-level (join the caller's transaction) -----------------------------------

async def get_user(session: AsyncSession, name: str) -> User:
    user = (await session.execute(select(User).where(User.name == name))).scalar_one_or_none()
    if user is None:
        raise UnknownUser(f"no user {name!r}")
    return user


async def create_user_in(session: AsyncSession, name: str, role: str, password: str, *,
                         locale: str | None = None, actor: Actor | str = "system") -> int:
    check_user_name(name)
    check_role_name(role)
    check_locale(locale)
    password_hash = hash_password(password)
    exists = (await session.execute(select(User.id).where(User.name == name))).first()
    if exists is not None:
        raise UserExists(f"user {name!r} already exists")
    user = User(name=name, role=role, password_hash=password_hash, locale=locale,
                created=clock.now())
    session.add(user)
    await session.flush()
    await audit(session, actor, "user.create", "user", name, {"role": role})
    return user.id


async def set_password_in(session: AsyncSession, name: str, password: str, *,
                          actor: Actor | str = "system") -> None:
    password_hash = hash_password(password)
    user = await get_user(session, name)
    user.password_hash = password_hash
    await session.execute(delete(Session).where(Session.user_id == user.id))
    await audit(session, actor, "user.set_password", "user", name, {})


async def update_user_in(session: AsyncSession, name: str, *, role: str | None = None,
                         disabled: bool | None = None, actor: Actor | str = "system") -> User:
    """Change a user's role and/or disable (ends their sessions) or enable them.
    Refuses to leave no enabled admin. Raises UnknownUser, UserError."""
    user = await get_user(session, name)
    changes: dict[str, object] = {}
    if role is not None and role != user.role:
        check_role_name(role)
        changes["role"] = [user.role, role]
        user.role = role
    if disabled is not None and disabled != (user.disabled_at is not None):
        changes["disabled"] = disabled
        user.disabled_at = clock.now() if disabled else None
        if disabled:
            await session.execute(delete(Session).where(Session.user_id == user.id))
    if not changes:
        return user
    await session.flush()
    admins = (await session.execute(select(func.count()).select_from(User).where(
        User.role == "admin", User.disabled_at.is_(None)))).scalar_one()
    if admins == 0:
        raise UserError("this would leave no enabled admin; make someone else admin first")
    await audit(session, actor, "user.update", "user", name, changes)
    return user


async def create_api_token_in(session: AsyncSession, user: str, token_name: str | None,
                              *, actor: Actor | str = "system") -> tuple[int, str]:
    if token_name is not None and not 1 <= len(token_name) <= 64:
        raise UserError("a token name has 1-64 characters")
    row = await get_user(session, user)
    if row.disabled_at is not None:
        raise UserError(f"user {user!r} is disabled")
    token = new_api_token()
    api_token = ApiToken(user_id=row.id, token_hash=hash_token(token), name=token_name,
                         created=clock.now())
    session.add(api_token)
    await session.flush()
    await audit(session, actor, "api_token.create", "api_token", api_token.id,
                {"user": user, "name": token_name})
    return api_token.id, token


async def revoke_api_token_in(session: AsyncSession, user_id: int, token_id: int, *,
                              actor: Actor | str) -> datetime | None:
    """Revoke ``user_id``'s token ``token_id``; its revocation time (the first one if
    already revoked), or None when the user has no such token."""
    token = (await session.execute(select(ApiToken).where(
        ApiToken.id == token_id, ApiToken.user_id == user_id))).scalar_one_or_none()
    if token is None:
        return None
    if token.revoked_at is None:
        token.revoked_at = clock.now()
        await audit(session, actor, "api_token.revoke", "api_token", token_id,
                    {"name": token.name})
    return token.revoked_at


# --- logins --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Login:
    user: User
    session_secret: str  # the cookie's value; only its hash is stored


async def login(session: AsyncSession, name: str, password: str, address: str) -> Login:
    """Check a login and open a browser session. Commits (the attempt is recorded even
    when refused). Raises TooManyAttempts 429 (rate limit; Retry-After), NotAuthenticated 401 bad_credentials
    (unknown name and wrong password alike) or 401 user_disabled."""
    now = clock.now()
    name = name[:64]
    address = address[:64]
    retry_after = await _blocked_for(session, name, address, now)
    if retry_after is not None:
        await _failed(session, name, address, now, "rate_limited")
        raise TooManyAttempts(retry_after, f"too many failed logins for {name!r} or from "
                              f"{address}; try again in {retry_after} s")
    user = (await session.execute(select(User).where(User.name == name))).scalar_one_or_none()
    if not _verify(user.password_hash if user is not None else None, password):
        await _failed(session, name, address, now, "bad_credentials")
        raise NotAuthenticated("bad_credentials", "wrong user name or password")
    assert user is not None and user.password_hash is not None
    if user.disabled_at is not None:
        await _failed(session, name, address, now, "user_disabled")
        raise NotAuthenticated("user_disabled", f"user {name!r} is disabled; ask an admin")
    if password_hasher.check_needs_rehash(user.password_hash):
        user.password_hash = password_hasher.hash(password)
    session.add(LoginAttempt(name=name, address=address, ts=now, ok=True))
    # housekeeping: this user's ended sessions
    await session.execute(delete(Session).where(Session.user_id == user.id,
                                                Session.expires_at <= now))
    secret = secrets.token_urlsafe(32)
    session.add(Session(id=hash_token(secret), user_id=user.id, created=now,
                        expires_at=min(now + SESSION_IDLE, now + SESSION_ABSOLUTE)))
    await session.commit()
    log.info("login", user=name, address=address)
    return Login(user, secret)


async def logout(session: AsyncSession, session_secret: str) -> None:
    """End the session of this cookie value (nothing if there is none). Commits."""
    await session.execute(delete(Session).where(Session.id == hash_token(session_secret)))
    await session.commit()


def _verify(password_hash: str | None, password: str) -> bool:
    try:
        return password_hasher.verify(password_hash or _DUMMY_HASH, password) and \
            password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


async def _failed(session: AsyncSession, name: str, address: str, now: datetime,
                  reason: str) -> None:
    session.add(LoginAttempt(name=name, address=address, ts=now, ok=False))
    await audit(session, f"login:{address}", "login.failed", "user", name,
                {"address": address, "reason": reason})
    await session.commit()
    log.warning("login_failed", user=name, address=address, reason=reason)


async def _blocked_for(session: AsyncSession, name: str, address: str,
                       now: datetime) -> int | None:
    """Seconds until a login for ``name`` from ``address`` may be tried again, or None."""
    since = now - LOGIN_WINDOW
    last_ok = (await session.execute(select(func.max(LoginAttempt.ts)).where(
        LoginAttempt.name == name, LoginAttempt.ok))).scalar_one()
    name_since = max(since, last_ok) if last_ok is not None else since
    waits: list[datetime] = []
    for column, value, start, limit in (
            (LoginAttempt.name, name, name_since, MAX_FAILURES_PER_NAME),
            (LoginAttempt.address, address, since, MAX_FAILURES_PER_ADDRESS)):
        times = (await session.execute(
            select(LoginAttempt.ts).where(column == value, LoginAttempt.ts > start,
                                          LoginAttempt.ok.is_(False))
            .order_by(LoginAttempt.ts.desc()).limit(limit))).scalars().all()
        if len(times) >= limit:
            # allowed again when the limit-th most recent failure leaves the window
            waits.append(times[limit - 1] + LOGIN_WINDOW)
    if not waits:
        return None
    return max(1, int((max(waits) - now).total_seconds()) + 1)


async def set_locale_in(session: AsyncSession, user_id: int, locale: str) -> None:
    check_locale(locale)
    await session.execute(update(User).where(User.id == user_id).values(locale=locale))


LOGIN_ATTEMPTS_KEPT: Final = timedelta(days=30)


async def prune(db: Database, now_ms: int) -> None:
    """A periodic job (cloud/core/jobs.py): delete login attempts older than
    ``LOGIN_ATTEMPTS_KEPT`` (the rate limit looks back ``LOGIN_WINDOW``; failures stay in
    the audit log) and every ended session. Idempotent."""
    now = datetime.fromtimestamp(now_ms / 1000, UTC)
    async with db.sessions() as session, session.begin():
        # a DELETE's result is a CursorResult (it has a rowcount); execute() is typed wider
        attempts = cast(CursorResult[Any], await session.execute(delete(LoginAttempt).where(
            LoginAttempt.ts < now - LOGIN_ATTEMPTS_KEPT))).rowcount
        ended = cast(CursorResult[Any], await session.execute(
            delete(Session).where(Session.expires_at <= now))).rowcount
    if attempts or ended:
        log.info("pruned", login_attempts=attempts, sessions=ended)
