"""Who is calling: gateway tokens and the admin token. All authentication lives here.

Tokens are 256-bit random strings (``psg_`` + 43 url-safe characters). We store only
their SHA-256, as a unique lookup key. A slow password hash (argon2) exists to make
guessing a *low-entropy secret* from a stolen hash expensive; a 256-bit random token
cannot be guessed whatever the hash costs, so a fast hash is just as safe here and lets
every request find its gateway with one indexed lookup instead of an argon2 run
(tens of ms of CPU per ingest). User passwords (a later issue) do need argon2.

The admin token (until users exist) comes from ``$PLANTSYNC_CLOUD_ADMIN_TOKEN`` or
``create_app(admin_token=...)``; it may read every gateway but does not ingest.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.models import Gateway

ADMIN_TOKEN_ENV: Final = "PLANTSYNC_CLOUD_ADMIN_TOKEN"
TOKEN_PREFIX: Final = "psg_"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: a gateway (``gateway_id`` set) or the admin."""

    role: Literal["gateway", "admin"]
    gateway_id: str | None = None

    def may_read_gateway(self, gateway_id: str) -> bool:
        return self.role == "admin" or self.gateway_id == gateway_id


class AuthError(Exception):
    """The request is not authorized. ``status`` is 401 (who are you?) or 403 (not you)."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason  # short machine-readable code
        self.detail = detail


def new_token() -> str:
    """A fresh gateway token (shown once to the admin, never stored in clear)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer ...`` header. Raises AuthError(401)."""
    if not authorization:
        raise AuthError(401, "missing_token", "no Authorization header; send "
                        "`Authorization: Bearer <token>` (from `plantsync-cloud admin "
                        "create-gateway`)")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthError(401, "bad_authorization", "Authorization must be `Bearer <token>`")
    return token


async def authenticate(session: AsyncSession, authorization: str | None,
                       admin_token: str | None) -> Principal:
    """The caller behind ``authorization``. Raises AuthError(401) for a missing, unknown
    or revoked token."""
    token = bearer_token(authorization)
    if admin_token and hmac.compare_digest(hash_token(token), hash_token(admin_token)):
        return Principal("admin")
    row = (await session.execute(
        select(Gateway.id, Gateway.revoked_at).where(Gateway.token_hash == hash_token(token))
    )).first()
    if row is None:
        raise AuthError(401, "unknown_token", "this token belongs to no gateway")
    if row.revoked_at is not None:
        raise AuthError(401, "revoked_token",
                        f"the token of gateway {row.id!r} was revoked at "
                        f"{_iso(row.revoked_at)}; ask for a new one")
    return Principal("gateway", row.id)


def require_gateway(principal: Principal) -> str:
    """The gateway id of a caller that must be a gateway (ingest). Raises AuthError(403)."""
    if principal.gateway_id is None:
        raise AuthError(403, "not_a_gateway", "only a gateway token may ingest records")
    return principal.gateway_id


def require_read(principal: Principal, gateway_id: str) -> None:
    """Raise AuthError(403) unless ``principal`` may read ``gateway_id``."""
    if not principal.may_read_gateway(gateway_id):
        raise AuthError(403, "other_gateway",
                        f"the token of gateway {principal.gateway_id!r} may read only "
                        f"that gateway, not {gateway_id!r}")


def _iso(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="seconds")
