"""REST API of the audit log (who did what, when: cloud/auth/credentials.py ``audit``), under
``/api/v1`` (OpenAPI tag audit).

- ``GET /api/v1/audit?entity=&entity_id=&actor=&action=&since=&until=&limit=&offset=``:
  newest first, ``Page[AuditEntryOut]``; each item ``{id, ts, actor, action, entity,
  entity_id, detail}`` (``ts`` a ``Timestamp``, ``2026-12-01T08:00:00Z``; ``detail`` the
  action's own JSON object). ``since``/``until`` are ISO date-times with a zone
  (``since <= ts < until``); the other filters match exactly.

Access: planners and admins. Entries about people and credentials (``PEOPLE_ENTITIES``:
users, failed logins, API and gateway tokens) are the admin's only: a planner does not
see them, and asking for them is 403. Viewers and gateway tokens get 403.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final

from fastapi import APIRouter, Query
from pydantic import Field
from sqlalchemy import select

from cloud.api.deps import Db, Limit, Offset, Planner
from cloud.api.paging import paged
from cloud.api.schemas import Out, Page, Timestamp
from cloud.auth import NotAllowed
from cloud.core.errors import Invalid
from cloud.core.models import AuditEntry

PEOPLE_ENTITIES: Final = ("user", "api_token", "gateway")

router = APIRouter(prefix="/api/v1", tags=["audit"])


class AuditEntryOut(Out):
    """Who did what, when."""

    id: int
    ts: Timestamp
    actor: str = Field(description="user name, gateway:<id>, system or cli")
    action: str = Field(description="<entity>.<verb>, e.g. work_order.release")
    entity: str
    entity_id: str
    detail: dict[str, Any] = Field(description="what changed; its keys depend on the action")


def _entry(e: AuditEntry) -> AuditEntryOut:
    return AuditEntryOut(id=e.id, ts=e.ts, actor=e.actor, action=e.action, entity=e.entity,
                         entity_id=e.entity_id, detail=e.detail)


@router.get("/audit")
async def list_audit(
        actor: Planner, session: Db,
        entity: Annotated[str | None, Query(description="e.g. work_order, bom")] = None,
        entity_id: Annotated[str | None, Query(description="e.g. WO-1, P-100/v2")] = None,
        by: Annotated[str | None, Query(alias="actor", description="user name, "
                                        "gateway:<id> or system")] = None,
        action: Annotated[str | None, Query(description="e.g. work_order.release")] = None,
        since: Annotated[datetime | None, Query(description="ts >= this (with zone)")] = None,
        until: Annotated[datetime | None, Query(description="ts < this (with zone)")] = None,
        limit: Limit = 50, offset: Offset = 0) -> Page[AuditEntryOut]:
    """Audit entries, newest first (planner; people and credentials: admin)."""
    for name, stamp in (("since", since), ("until", until)):
        if stamp is not None and stamp.tzinfo is None:
            raise Invalid(f"{name} must carry a time zone (2026-12-01T08:00Z)", name)
    if since is not None and until is not None and since >= until:
        raise Invalid(f"since ({since.isoformat()}) must be before until "
                           f"({until.isoformat()})", "since")
    admin = actor.has_role("admin")
    if entity in PEOPLE_ENTITIES and not admin:
        raise NotAllowed("forbidden", f"audit entries of {entity} need the admin role; "
                         f"{actor.name!r} is {actor.role}")
    stmt = select(AuditEntry)
    if not admin:
        stmt = stmt.where(AuditEntry.entity.not_in(PEOPLE_ENTITIES))
    for column, wanted in ((AuditEntry.entity, entity), (AuditEntry.entity_id, entity_id),
                           (AuditEntry.actor, by), (AuditEntry.action, action)):
        if wanted is not None:
            stmt = stmt.where(column == wanted)
    if since is not None:
        stmt = stmt.where(AuditEntry.ts >= since)
    if until is not None:
        stmt = stmt.where(AuditEntry.ts < until)
    return Page[AuditEntryOut].model_validate(
        await paged(session, stmt, [AuditEntry.ts.desc(), AuditEntry.id.desc()], limit,
                    offset, _entry))

