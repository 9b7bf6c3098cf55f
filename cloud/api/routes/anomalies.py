"""REST API of anomalies (cloud/anomalies.py), under ``/api/v1`` (OpenAPI tag anomalies):

- ``GET /api/v1/anomalies`` ?status (repeatable or comma-separated), kind, machine_id,
  since_ts, until_ts (epoch ms, on the anomaly's ``ts``), open_first (default true),
  limit (1..500, default 50), offset -> ``{items, total, limit, offset}``
- ``GET /api/v1/anomalies/stats`` ?since_ts, until_ts (default: the last 30 days)
- ``GET /api/v1/anomalies/{id}`` (with ``history``, its audit trail)
- ``POST /api/v1/anomalies`` {kind: material|operator|quality, title, severity?,
  machine_id?, work_order?, material?, ts?, detail?} -> 201 (planner)
- ``POST /api/v1/anomalies/{id}/acknowledge`` {assignee?, note?},
  ``/resolve`` {cause, action}, ``/close`` {}, ``/reopen`` {note?}, ``/assign`` {assignee}
  (planner)
- thresholds and severity rules: ``/api/v1/settings/anomalies`` (cloud/api_settings.py)

Access: every person reads; planners and admins act; gateway tokens get 403. Errors
(cloud/api/errors.py): 404 ``not_found``, 409 ``invalid_state`` (+ ``current``,
``allowed``), 422 ``invalid`` (+ ``field``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from cloud import anomalies as an
from cloud.api.deps import MAX_LIMIT, Db, Planner, Viewer
from cloud.core.clock import DAY_MS, now_ms

router = APIRouter(prefix="/api/v1", tags=["anomalies"])


class ManualIn(BaseModel):
    kind: str = Field(description="material, operator or quality")
    title: str
    severity: str | None = Field(None, description="info, minor, major, critical; "
                                 "default from the rules")
    machine_id: int | None = None
    work_order: str | None = Field(None, description="work order number")
    material: str | None = Field(None, description="material code")
    ts: int | None = Field(None, description="when it happened, epoch ms (default now)")
    detail: dict[str, Any] | None = None


class AcknowledgeIn(BaseModel):
    assignee: str | None = None
    note: str | None = None


class ResolveIn(BaseModel):
    cause: str | None = None
    action: str | None = None


class AssignIn(BaseModel):
    assignee: str | None = None


class NoteIn(BaseModel):
    note: str | None = None


@router.get("/anomalies")
async def list_anomalies(
        _: Viewer, session: Db,
        status: Annotated[list[str] | None, Query(
            description="repeatable or comma-separated: open, acknowledged, resolved, "
                        "closed")] = None,
        kind: str | None = None, machine_id: int | None = None,
        since_ts: int | None = None, until_ts: int | None = None, open_first: bool = True,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0) -> dict[str, Any]:
    """Anomalies, not yet closed first (open, acknowledged, resolved), then newest."""
    page = await an.list_anomalies(session, status=status, kind=kind, machine_id=machine_id,
                                   since_ts=since_ts, until_ts=until_ts,
                                   open_first=open_first, limit=limit, offset=offset)
    return {**page, "limit": limit, "offset": offset}


@router.get("/anomalies/stats")
async def stats(_: Viewer, session: Db, since_ts: int | None = None,
                until_ts: int | None = None) -> dict[str, Any]:
    """Totals, open, closure and repeat rates, mean response and closure times, counts by
    kind/severity/status over anomalies with since_ts <= ts < until_ts."""
    until = now_ms() if until_ts is None else until_ts
    since = until - 30 * DAY_MS if since_ts is None else since_ts
    return await an.anomaly_stats(session, since_ts=since, until_ts=until)


@router.get("/anomalies/{anomaly_id}")
async def get_anomaly(anomaly_id: int, _: Viewer, session: Db) -> dict[str, Any]:
    """One anomaly with its links and history."""
    return await an.get_anomaly(session, anomaly_id)


@router.post("/anomalies", status_code=201)
async def create(body: ManualIn, actor: Planner, session: Db) -> dict[str, Any]:
    """Report a material, operator or quality anomaly (a critical quality one holds the
    affected operations)."""
    return await an.create_manual(session, actor, body.kind, body.title, body.severity,
                                  machine_id=body.machine_id, work_order=body.work_order,
                                  material=body.material, ts=body.ts, detail=body.detail)


@router.post("/anomalies/{anomaly_id}/acknowledge")
async def acknowledge(anomaly_id: int, actor: Planner, session: Db,
                      body: AcknowledgeIn | None = None) -> dict[str, Any]:
    """open -> acknowledged (optionally assigning it)."""
    body = body or AcknowledgeIn()
    return await an.acknowledge(session, actor, anomaly_id, body.assignee, body.note)


@router.post("/anomalies/{anomaly_id}/resolve")
async def resolve(anomaly_id: int, body: ResolveIn, actor: Planner,
                  session: Db) -> dict[str, Any]:
    """acknowledged (or open) -> resolved with cause and action; releases a quality hold."""
    return await an.resolve(session, actor, anomaly_id, body.cause or "", body.action or "")


@router.post("/anomalies/{anomaly_id}/close")
async def close(anomaly_id: int, actor: Planner, session: Db) -> dict[str, Any]:
    """resolved -> closed."""
    return await an.close(session, actor, anomaly_id)


@router.post("/anomalies/{anomaly_id}/reopen")
async def reopen(anomaly_id: int, actor: Planner, session: Db,
                 body: NoteIn | None = None) -> dict[str, Any]:
    """resolved/closed -> acknowledged."""
    return await an.reopen(session, actor, anomaly_id, body.note if body else None)


@router.post("/anomalies/{anomaly_id}/assign")
async def assign(anomaly_id: int, body: AssignIn, actor: Planner,
                 session: Db) -> dict[str, Any]:
    """Set the assignee (any state but closed)."""
    return await an.assign(session, actor, anomaly_id, body.assignee or "")

