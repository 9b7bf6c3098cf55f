"""Who is calling. All authentication lives here (the audit trail: cloud/core/audit.py).

Public names (other cloud modules use exactly these):

- ``Actor(name, role, kind, gateway_id=None, user_id=None, token_id=None)``: the
  authenticated caller. ``kind`` is ``"user"`` (browser session), ``"token"`` (API token
  acting as a user) or ``"gateway"`` (gateway token; ``role == "gateway"``,
  ``gateway_id`` set, ``name == "gateway:<id>"``). ``role`` of a person is one of
  ``admin > planner > viewer``.
- ``authenticate(session, authorization, session_cookie) -> Actor``: the caller behind
  ``Authorization: Bearer <API token>`` or the session cookie (``plantsync_session``);
  AuthError 401 for missing/unknown/expired/revoked credentials and for disabled users.
- ``check_role(actor, role, allow_gateway=False)``: AuthError 403 when the role is below
  ``role``; a gateway token gets 403 ``gateway_not_allowed`` unless ``allow_gateway``
  (then the route itself checks ``actor.may_read_gateway(id)`` / ``require_read``).
  The FastAPI dependency built on these is ``cloud.api.deps.require``.
- ``check_csrf(...)``: a state-changing request by session cookie needs the session's
  CSRF token (``csrf_token_for``; header ``X-CSRF-Token``, the forms' ``csrf_token``) or
  an Origin/Referer of this host; bearer tokens are not sent by browsers on their own and
  need neither.

Tokens (gateway and API) are 256-bit random strings; we store only their SHA-256, as a
unique lookup key. A slow password hash (argon2, cloud/auth/users.py) exists to make guessing
a *low-entropy secret* from a stolen hash expensive; a 256-bit random token cannot be
guessed whatever the hash costs, so a fast hash is just as safe and lets every request
find its caller with one indexed lookup instead of an argon2 run.

Sessions: the cookie holds a random secret, the ``sessions`` row its SHA-256. A session
ends 12 h after its last use (idle) and 7 days after login (absolute), whichever first;
``expires_at`` holds the earlier of the two and slides forward on use (written at most
every ``SESSION_TOUCH_EVERY``, not on every request).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Final, Literal
from urllib.parse import urlsplit

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.core import clock
from cloud.core.clock import iso
from cloud.core.errors import DomainError, Forbidden, TooManyRequests, Unauthorized
from cloud.core.models import ApiToken, Gateway, Session, User

TOKEN_PREFIX: Final = "psg_"      # gateway tokens
API_TOKEN_PREFIX: Final = "psu_"  # API tokens acting as a user
SESSION_COOKIE: Final = "plantsync_session"
SESSION_IDLE: Final = timedelta(hours=12)
SESSION_ABSOLUTE: Final = timedelta(days=7)
SESSION_TOUCH_EVERY: Final = timedelta(minutes=5)
TOKEN_TOUCH_EVERY: Final = timedelta(minutes=5)

SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_HEADER: Final = "X-CSRF-Token"

ROLES: Final = ("viewer", "planner", "admin")  # ascending power
_RANK: Final = {role: i for i, role in enumerate(ROLES)}

ActorKind = Literal["user", "token", "gateway"]


@dataclass(frozen=True, slots=True)
class Actor:
    """An authenticated caller: a person (by session or API token) or a gateway."""

    name: str
    role: str
    kind: ActorKind
    gateway_id: str | None = None
    user_id: int | None = None
    token_id: int | None = None

    def has_role(self, role: str) -> bool:
        """At least ``role`` (admin > planner > viewer); gateways have no person's role."""
        return self.kind != "gateway" and _RANK.get(self.role, -1) >= _RANK[role]

    def may_read_gateway(self, gateway_id: str) -> bool:
        """Every person may read every gateway's status; a gateway only its own."""
        return self.kind != "gateway" or self.gateway_id == gateway_id


class AuthError(DomainError):
    """Root of the refusals of who is calling; ``reason`` (the answer's ``code``) says
    why. A gateway stops retrying on 401/403, so they are used for exactly these causes::

        AuthError
        ├── NotAuthenticated   401 who are you? (says ``WWW-Authenticate: Bearer``)
        ├── NotAllowed         403 not you (role, or another gateway's data)
        └── TooManyAttempts    429 too many failed logins (``Retry-After``)
    """

    def __init__(self, reason: str, detail: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail, code=reason, headers=headers)

    @property
    def reason(self) -> str:
        return self.code


class NotAuthenticated(AuthError, Unauthorized):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail, headers={"WWW-Authenticate": "Bearer"})


class NotAllowed(AuthError, Forbidden):
    pass


class TooManyAttempts(AuthError, TooManyRequests):
    def __init__(self, retry_after_s: int, detail: str) -> None:
        super().__init__("too_many_attempts", detail,
                         headers={"Retry-After": str(retry_after_s)})


def new_token() -> str:
    """A fresh gateway token (shown once to the admin, never stored in clear)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_api_token() -> str:
    """A fresh API token (shown once to its user, never stored in clear)."""
    return API_TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def csrf_token_for(session_secret: str) -> str:
    """The CSRF token of a browser session: derived from the cookie's secret (only a page
    served to this browser can know it; it dies with the session; nothing is stored).
    Forms send it as ``csrf_token``, scripts as the ``X-CSRF-Token`` header."""
    return hashlib.sha256(b"plantsync-csrf\0" + session_secret.encode()).hexdigest()[:40]


def foreign_origin(origin: str | None, referer: str | None, host: str | None) -> bool:
    """Whether a browser says the request comes from a page of another origin: its
    ``Origin`` (else ``Referer``) is ``null`` or names another host:port than ``host``.
    False when it says nothing: browsers send ``Origin`` with every cross-site POST, PUT,
    PATCH and DELETE, so a request without either is not a browser's (a script, curl)."""
    source = origin or referer
    if not source:
        return False
    if source == "null":
        return True
    return urlsplit(source).netloc != (host or "")


def check_csrf(method: str, session_secret: str, csrf_header: str | None,
               origin: str | None, referer: str | None, host: str | None) -> None:
    """Refuse (NotAllowed 403 ``csrf_failed``) a state-changing request authenticated by
    the session cookie, which a browser attaches on its own, unless it carries the
    session's CSRF token (``X-CSRF-Token``) or comes from a page of this origin.
    GET, HEAD and OPTIONS change nothing and pass."""
    if method in SAFE_METHODS:
        return
    if csrf_header:
        if not hmac.compare_digest(csrf_header, csrf_token_for(session_secret)):
            raise NotAllowed("csrf_failed", "the X-CSRF-Token header does not belong to "
                             "this session; reload the page")
        return
    if foreign_origin(origin, referer, host):
        raise NotAllowed("csrf_failed", f"a request from another site ({origin or referer}) "
                         "may not act with this browser's session; send the session's "
                         "X-CSRF-Token header, or use an API token")


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer ...`` header. Raises NotAuthenticated (401)."""
    if not authorization:
        raise NotAuthenticated("missing_token", "not logged in: log in (POST /api/v1/login) "
                               "or send `Authorization: Bearer <token>` (an API token from "
                               "`plantsync-cloud admin create-token USER`, or a gateway's token)")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise NotAuthenticated("bad_authorization", "Authorization must be `Bearer <token>`")
    return token


async def authenticate(session: AsyncSession, authorization: str | None,
                       session_cookie: str | None = None) -> Actor:
    """The caller behind an ``Authorization`` header, else a session cookie.
    Raises NotAuthenticated (401) for missing, unknown, expired or revoked credentials and for
    a disabled user. A present but bad header never falls back to the cookie."""
    if authorization is None and session_cookie:
        return await _from_session(session, session_cookie)
    token = bearer_token(authorization)
    digest = hash_token(token)
    now = clock.now()
    if not token.startswith(API_TOKEN_PREFIX):
        gw = (await session.execute(
            select(Gateway.id, Gateway.revoked_at).where(Gateway.token_hash == digest)
        )).first()
        if gw is not None:
            if gw.revoked_at is not None:
                raise NotAuthenticated("revoked_token",
                                       f"the token of gateway {gw.id!r} was revoked at "
                                       f"{iso(gw.revoked_at)}; ask for a new one")
            return Actor(f"gateway:{gw.id}", "gateway", "gateway", gateway_id=gw.id)
    row = (await session.execute(
        select(ApiToken.id, ApiToken.revoked_at, ApiToken.last_used_at, User.id.label("uid"),
               User.name, User.role, User.disabled_at)
        .join(User, User.id == ApiToken.user_id).where(ApiToken.token_hash == digest)
    )).first()
    if row is None:
        raise NotAuthenticated("unknown_token", "this token belongs to no gateway or user")
    # disabled first: disabling also revokes, and "disabled" is what the user must hear
    if row.disabled_at is not None:
        raise NotAuthenticated("user_disabled", f"user {row.name!r} is disabled")
    if row.revoked_at is not None:
        raise NotAuthenticated("revoked_token", f"this API token of {row.name!r} was revoked "
                               f"at {iso(row.revoked_at)}")
    if row.last_used_at is None or now - row.last_used_at > TOKEN_TOUCH_EVERY:
        await session.execute(update(ApiToken).where(ApiToken.id == row.id)
                              .values(last_used_at=now))
        await session.commit()
    return Actor(row.name, row.role, "token", user_id=row.uid, token_id=row.id)


async def _from_session(session: AsyncSession, secret: str) -> Actor:
    now = clock.now()
    row = (await session.execute(
        select(Session.id, Session.created, Session.expires_at, User.id.label("uid"),
               User.name, User.role, User.disabled_at)
        .join(User, User.id == Session.user_id).where(Session.id == hash_token(secret))
    )).first()
    if row is None or row.expires_at <= now:
        raise NotAuthenticated("session_expired", "the session has ended; log in again")
    if row.disabled_at is not None:
        raise NotAuthenticated("user_disabled", f"user {row.name!r} is disabled")
    slid = min(row.created + SESSION_ABSOLUTE, now + SESSION_IDLE)
    if slid - row.expires_at > SESSION_TOUCH_EVERY:
        await session.execute(update(Session).where(Session.id == row.id)
                              .values(expires_at=slid))
        await session.commit()
    return Actor(row.name, row.role, "user", user_id=row.uid)


def check_role(actor: Actor, role: str, *, allow_gateway: bool = False) -> None:
    """Raise NotAllowed (403) unless ``actor`` may act as ``role`` (see ``require``)."""
    if role == "gateway":
        require_gateway(actor)
        return
    if actor.kind == "gateway":
        if allow_gateway:
            return
        raise NotAllowed("gateway_not_allowed",
                         "a gateway token may only ingest and read its own gateway's status "
                         "and counters")
    if not actor.has_role(role):
        raise NotAllowed("forbidden", f"this needs the {role} role; {actor.name!r} is "
                         f"{actor.role}")


def require_gateway(actor: Actor) -> str:
    """The gateway id of a caller that must be a gateway (ingest). Raises NotAllowed (403)."""
    if actor.gateway_id is None:
        raise NotAllowed("not_a_gateway", "only a gateway token may ingest records")
    return actor.gateway_id


def require_read(actor: Actor, gateway_id: str) -> None:
    """Raise NotAllowed (403) unless ``actor`` may read ``gateway_id``."""
    if not actor.may_read_gateway(gateway_id):
        raise NotAllowed("other_gateway",
                         f"the token of gateway {actor.gateway_id!r} may read only "
                         f"that gateway, not {gateway_id!r}")


