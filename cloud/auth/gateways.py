"""Admin actions on gateways (the CLI's ``admin`` commands), usable from tests too.
Each is audited (``gateway.create``, ``gateway.rotate``, ``gateway.revoke``) in its own
transaction; the actor is ``cli`` unless the caller names one (an admin user)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Final

import structlog
from sqlalchemy import select, update

from cloud.auth.credentials import Actor, hash_token, new_token
from cloud.core import clock
from cloud.core.audit import audit
from cloud.core.db import Database
from cloud.core.errors import Duplicate, Invalid, NotFound
from cloud.core.models import Gateway, gateways

log = structlog.get_logger(__name__)


class GatewayExists(Duplicate):
    code = "gateway_exists"


class UnknownGateway(NotFound):
    code = "unknown_gateway"


CLI: Final = "cli"  # the audit actor of the command line
GATEWAY_ID: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_gateway_id(gateway_id: str) -> None:
    if not GATEWAY_ID.match(gateway_id):
        raise Invalid(f"gateway id {gateway_id!r} is not valid: 1-64 characters, letters, "
                      "digits, '.', '_' or '-', starting with a letter or digit "
                      "(e.g. gw-hall1)", "gateway_id")


async def create_gateway(db: Database, gateway_id: str, *, rotate: bool = False,
                         actor: Actor | str = CLI) -> str:
    """Create ``gateway_id`` and return its token (the only time it exists in clear).
    With ``rotate``, an existing gateway gets a new token (the old one stops working,
    a revoked gateway is re-enabled). Raises GatewayExists, UnknownGateway, Invalid."""
    check_gateway_id(gateway_id)
    token = new_token()
    now = clock.now()
    async with db.sessions() as session, session.begin():
        existing = (await session.execute(
            select(gateways.c.id).where(gateways.c.id == gateway_id))).first()
        if existing is not None and not rotate:
            raise GatewayExists(f"gateway {gateway_id!r} already exists; use --rotate to "
                                "give it a new token (the old one stops working)")
        if existing is None and rotate:
            raise UnknownGateway(f"no gateway {gateway_id!r} to rotate; create it without "
                                 "--rotate")
        if existing is None:
            session.add(Gateway(id=gateway_id, token_hash=hash_token(token), created=now,
                                last_seq=0))
        else:
            await session.execute(update(gateways).where(gateways.c.id == gateway_id)
                                  .values(token_hash=hash_token(token), revoked_at=None))
        await audit(session, actor, "gateway.rotate" if rotate else "gateway.create",
                    "gateway", gateway_id, {"token_issued": True})
    log.info("gateway_token_issued", gateway=gateway_id, rotated=rotate)
    return token


async def revoke_gateway(db: Database, gateway_id: str, *,
                         actor: Actor | str = CLI) -> datetime:
    """Revoke the gateway's token (its records stay); returns when. Revoking twice keeps
    the first time. Raises UnknownGateway."""
    now = clock.now()
    async with db.sessions() as session, session.begin():
        row = (await session.execute(
            select(gateways.c.revoked_at).where(gateways.c.id == gateway_id))).first()
        if row is None:
            raise UnknownGateway(f"no gateway {gateway_id!r}")
        if row.revoked_at is not None:
            return row.revoked_at  # type: ignore[no-any-return]
        await session.execute(update(gateways).where(gateways.c.id == gateway_id)
                              .values(revoked_at=now))
        await audit(session, actor, "gateway.revoke", "gateway", gateway_id,
                    {"revoked_at": clock.iso(now)})
    log.info("gateway_revoked", gateway=gateway_id)
    return now
