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

Logins are rate-limited (``login``), so that guessing is slow and nobody can lock
anyone else out: after ``MAX_FAILURES_PER_NAME`` failures for one user name *from one
client address* since that pair's last success, that pair is locked for ``LOGIN_WINDOW``,
doubling with each further failure (``lock_after``); the user logs in from any address
that has not failed. One address is also limited to ``MAX_FAILURES_PER_ADDRESS`` failures
within ``LOGIN_WINDOW`` whatever the names (spraying; not reset by a success; higher
because a plant's browsers may share one NAT address). A refused attempt (429) is not a
failure: it is audited but extends nothing. The address is the TCP peer unless the
service trusts a proxy (``plantsync-cloud serve --trusted-proxy``). Every checked attempt
is a ``login_attempts`` row; every failure and every user or token change is audited.

A password reset or a disable revokes the user's API tokens (re-enabling does not bring
them back); an admin lists and revokes anyone's with ``list_api_tokens_in`` /
``revoke_api_token_in``.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, ParamSpec, TypeVar, cast

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
P = ParamSpec("P")
R = TypeVar("R")

ARGON2_PROFILE_ENV: Final = "PLANTSYNC_ARGON2_PROFILE"
MIN_PASSWORD_LENGTH: Final = 10
LOCALES: Final = ("zh-CN", "en")
USER_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
LOGIN_WINDOW: Final = timedelta(minutes=10)
MAX_FAILURES_PER_NAME: Final = 5        # per (name, address), then locked
MAX_FAILURES_PER_ADDRESS: Final = 20    # per address within LOGIN_WINDOW, any names
FAILURES_REMEMBERED: Final = timedelta(days=1)
LOCK_MAX: Final = timedelta(days=1)
LOGIN_LOCK_KEY: Final = 0x706C616E74  # PostgreSQL advisory lock of the login check


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
    password_hash = await _in_hash_thread(hash_password, password)
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
    """Give ``name`` a new password: ends their sessions and revokes their API tokens
    (whoever had the old password may have made some)."""
    password_hash = await _in_hash_thread(hash_password, password)
    user = await get_user(session, name)
    user.password_hash = password_hash
    await session.execute(delete(Session).where(Session.user_id == user.id))
    await audit(session, actor, "user.set_password", "user", name, {})
    await _revoke_all_tokens(session, user.id, "password_set", actor)


async def update_user_in(session: AsyncSession, name: str, *, role: str | None = None,
                         disabled: bool | None = None, actor: Actor | str = "system") -> User:
    """Change a user's role and/or disable (ends their sessions, revokes their API
    tokens for good) or enable them.
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
            await _revoke_all_tokens(session, user.id, "user_disabled", actor)
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


async def list_api_tokens_in(session: AsyncSession, user: str) -> list[ApiToken]:
    """``user``'s API tokens, oldest first (for an admin). Raises UnknownUser."""
    row = await get_user(session, user)
    return list((await session.execute(select(ApiToken).where(ApiToken.user_id == row.id)
                                       .order_by(ApiToken.id))).scalars())


async def _revoke_all_tokens(session: AsyncSession, user_id: int, reason: str,
                             actor: Actor | str) -> None:
    now = clock.now()
    tokens = (await session.execute(select(ApiToken).where(
        ApiToken.user_id == user_id, ApiToken.revoked_at.is_(None)))).scalars().all()
    for token in tokens:
        token.revoked_at = now
        await audit(session, actor, "api_token.revoke", "api_token", token.id,
                    {"name": token.name, "reason": reason})


# --- logins --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Login:
    user: User
    session_secret: str  # the cookie's value; only its hash is stored


async def login(db: Database, name: str, password: str, address: str) -> Login:
    """Check a login and open a browser session. Raises TooManyAttempts 429 (rate limit;
    Retry-After), NotAuthenticated 401 bad_credentials (unknown name and wrong password
    alike) or 401 user_disabled.

    Three short transactions, none held while the password hash runs (in a worker
    thread, at most ``HASH_THREADS`` at once, so neither the event loop nor the
    connection pool waits for argon2): *reserve* (the limit check and a failed attempt
    row, atomically: see ``_serialize_logins``), *verify* (no connection), *record*
    (the attempt becomes a success and a session is opened, or the failure is audited).
    A refused (429) attempt runs no hash and is not a failure: it is audited only, so it
    can neither extend a lock nor count towards one."""
    now = clock.now()
    name = name[:64]
    address = address[:64]
    async with db.sessions() as session, session.begin():
        await _serialize_logins(session)
        retry_after = await _blocked_for(session, name, address, now)
        if retry_after is not None:
            await audit(session, f"login:{address}", "login.failed", "user", name,
                        {"address": address, "reason": "rate_limited"})
        else:
            user = (await session.execute(
                select(User.id, User.password_hash, User.disabled_at)
                .where(User.name == name))).first()
            # counted as a failure by every check from now on, until proven otherwise
            attempt = LoginAttempt(name=name, address=address, ts=now, ok=False)
            session.add(attempt)
            await session.flush()
            attempt_id = attempt.id
    if retry_after is not None:
        log.warning("login_failed", user=name, address=address, reason="rate_limited")
        raise TooManyAttempts(retry_after, f"too many failed logins for {name!r} from "
                              f"{address}; try again in {retry_after} s")
    stored = user.password_hash if user is not None else None
    ok = await _in_hash_thread(_verify, stored, password)
    rehashed = (await _in_hash_thread(password_hasher.hash, password)
                if ok and stored is not None and password_hasher.check_needs_rehash(stored)
                else None)
    async with db.sessions() as session, session.begin():
        current = (await session.execute(select(User).where(User.name == name))
                   ).scalar_one_or_none()
        # the password may have been changed while we were hashing: the proof was for
        # the old one
        if not ok or current is None or current.password_hash != stored:
            reason = "bad_credentials"
        elif current.disabled_at is not None:
            reason = "user_disabled"
        else:
            reason = ""
        if reason:
            await audit(session, f"login:{address}", "login.failed", "user", name,
                        {"address": address, "reason": reason})
        else:
            assert current is not None
            await session.execute(update(LoginAttempt).where(LoginAttempt.id == attempt_id)
                                  .values(ok=True))
            if rehashed is not None:
                current.password_hash = rehashed
            # housekeeping: this user's ended sessions
            await session.execute(delete(Session).where(Session.user_id == current.id,
                                                        Session.expires_at <= now))
            secret = secrets.token_urlsafe(32)
            session.add(Session(id=hash_token(secret), user_id=current.id, created=now,
                                expires_at=min(now + SESSION_IDLE, now + SESSION_ABSOLUTE)))
    if reason == "user_disabled":
        log.warning("login_failed", user=name, address=address, reason=reason)
        raise NotAuthenticated("user_disabled", f"user {name!r} is disabled; ask an admin")
    if reason:
        log.warning("login_failed", user=name, address=address, reason=reason)
        raise NotAuthenticated("bad_credentials", "wrong user name or password")
    assert current is not None
    log.info("login", user=name, address=address)
    return Login(current, secret)


async def logout(session: AsyncSession, session_secret: str) -> None:
    """End the session of this cookie value (nothing if there is none). Commits."""
    await session.execute(delete(Session).where(Session.id == hash_token(session_secret)))
    await session.commit()


# argon2 takes 64 MiB and tens of milliseconds per run: a few threads, not the event loop
# and not anyio's 40-thread default pool (40 x 64 MiB), with the rest queued.
HASH_THREADS: Final = 2
_hash_pool = ThreadPoolExecutor(max_workers=HASH_THREADS, thread_name_prefix="argon2")


async def _in_hash_thread(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    return await asyncio.get_running_loop().run_in_executor(
        _hash_pool, functools.partial(fn, *args, **kwargs))


def _verify(password_hash: str | None, password: str) -> bool:
    try:
        return password_hasher.verify(password_hash or _DUMMY_HASH, password) and \
            password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


async def _serialize_logins(session: AsyncSession) -> None:
    """Make this write transaction's check-and-reserve atomic with every other login's,
    so N concurrent guesses cannot all pass the same check. SQLite: already so
    (``session.begin()`` takes the write lock first, cloud/core/db.py). PostgreSQL: a
    transaction-scoped advisory lock, held only for the reserve's few statements."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(select(func.pg_advisory_xact_lock(LOGIN_LOCK_KEY)))


def lock_after(failures: int) -> timedelta | None:
    """How long (name, address) is locked after its latest failure when it has
    ``failures`` since its last success: none below ``MAX_FAILURES_PER_NAME``, then
    ``LOGIN_WINDOW`` doubling with each further failure, at most ``LOCK_MAX``."""
    if failures < MAX_FAILURES_PER_NAME:
        return None
    lock: timedelta = LOGIN_WINDOW * 2 ** min(failures - MAX_FAILURES_PER_NAME, 16)
    return min(lock, LOCK_MAX)


async def _blocked_for(session: AsyncSession, name: str, address: str,
                       now: datetime) -> int | None:
    """Seconds until a login for ``name`` from ``address`` may be tried again, or None.

    Two locks, neither of which another address can set on a user: (name, address) after
    ``MAX_FAILURES_PER_NAME`` failures since that pair's last success (within
    ``FAILURES_REMEMBERED``), for ``lock_after(failures)``; and an address after
    ``MAX_FAILURES_PER_ADDRESS`` failures for any names within ``LOGIN_WINDOW`` (spraying;
    a success does not reset it)."""
    waits: list[datetime] = []
    last_ok = (await session.execute(select(func.max(LoginAttempt.ts)).where(
        LoginAttempt.name == name, LoginAttempt.address == address, LoginAttempt.ok))
    ).scalar_one()
    start = now - FAILURES_REMEMBERED
    if last_ok is not None and last_ok > start:
        start = last_ok
    pair = (await session.execute(
        select(LoginAttempt.ts).where(LoginAttempt.name == name,
                                      LoginAttempt.address == address,
                                      LoginAttempt.ts >= start, LoginAttempt.ok.is_(False))
        .order_by(LoginAttempt.ts.desc()).limit(MAX_FAILURES_PER_NAME + 32))).scalars().all()
    lock = lock_after(len(pair))
    if lock is not None:
        waits.append(pair[0] + lock)
    sprayed = (await session.execute(
        select(LoginAttempt.ts).where(LoginAttempt.address == address,
                                      LoginAttempt.ts > now - LOGIN_WINDOW,
                                      LoginAttempt.ok.is_(False))
        .order_by(LoginAttempt.ts.desc()).limit(MAX_FAILURES_PER_ADDRESS))).scalars().all()
    if len(sprayed) >= MAX_FAILURES_PER_ADDRESS:
        # allowed again when the limit-th most recent failure leaves the window
        waits.append(sprayed[-1] + LOGIN_WINDOW)
    until = max(waits, default=now)
    if until <= now:
        return None
    return max(1, int((until - now).total_seconds()) + 1)


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
