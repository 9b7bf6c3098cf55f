"""HTTP API for dispatch and attribution (planners act, viewers read):

- ``POST /api/v1/dispatches`` {machine_id, wo_operation_id, start_ts?, end_ts?} -> 201
- ``POST /api/v1/dispatches/{id}/stop`` {end_ts?}
- ``PATCH /api/v1/dispatches/{id}`` {start_ts?, end_ts?, running?} (re-attributes)
- ``POST /api/v1/machines/{id}/assign`` {wo_operation_id, start_ts, end_ts}
- ``POST /api/v1/attributions/assign`` {wo_operation_id, records: [[gateway, seq], ...]}
- ``GET /api/v1/dispatches?machine_id=&work_order=&from=&to=&limit=&offset=``: newest
  start first; ``from``/``to`` keep the dispatches overlapping [from, to)
- ``GET /api/v1/dispatches/{id}``, ``GET /api/v1/unassigned?machine_id=&limit=&offset=``

Lists answer ``{items, total, limit, offset}`` (limit 1..500, default 50), like every list
of the API (cloud/api/paging.py). OpenAPI tag: dispatch.

Errors: ``{error, detail}`` with 404 (unknown), 409 (overlap, order not dispatchable),
422 (bad interval or filter). Times are epoch ms.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel
from sqlalchemy import or_, select

from cloud.api.deps import Db, Limit, Offset, Planner, Viewer
from cloud.api.paging import page_of_list, paged
from cloud.core.errors import Invalid
from cloud.core.models import Dispatch, WoOperation, WorkOrder
from cloud.production import dispatch

router = APIRouter(prefix="/api/v1", tags=["dispatch"])


class StartIn(BaseModel):
    machine_id: int
    wo_operation_id: int
    start_ts: int | None = None
    end_ts: int | None = None


class StopIn(BaseModel):
    end_ts: int | None = None


class EditIn(BaseModel):
    start_ts: int | None = None
    end_ts: int | None = None
    running: bool = False  # true: clear the end (the dispatch runs again)


class AssignRangeIn(BaseModel):
    wo_operation_id: int
    start_ts: int
    end_ts: int


class AssignRecordsIn(BaseModel):
    wo_operation_id: int
    records: list[tuple[str, int]]


def _doc(row: Any) -> dict[str, Any]:
    return {"id": row.id, "machine_id": row.machine_id, "wo_operation_id": row.wo_operation_id,
            "start_ts": row.start_ts, "end_ts": row.end_ts, "created_by": row.created_by,
            "edited_by": row.edited_by}


def _listed(row: Any) -> dict[str, Any]:
    d, number, step = row
    return {**_doc(d), "work_order": number, "step": step}


@router.post("/dispatches", status_code=201)
async def start(body: StartIn, request: Request, actor: Planner) -> dict[str, Any]:
    async with request.app.state.db.sessions() as s, s.begin():
        new = await dispatch.start(s, actor, body.machine_id, body.wo_operation_id,
                                   body.start_ts, body.end_ts)
        return _doc(await dispatch.get(s, new))


@router.post("/dispatches/{dispatch_id}/stop")
async def stop(dispatch_id: int, body: StopIn, request: Request,
               actor: Planner) -> dict[str, Any]:
    async with request.app.state.db.sessions() as s, s.begin():
        await dispatch.stop(s, actor, dispatch_id, body.end_ts)
        return _doc(await dispatch.get(s, dispatch_id))


@router.patch("/dispatches/{dispatch_id}")
async def edit(dispatch_id: int, body: EditIn, request: Request,
               actor: Planner) -> dict[str, Any]:
    async with request.app.state.db.sessions() as s, s.begin():
        detail = await dispatch.edit(s, actor, dispatch_id, start_ts=body.start_ts,
                                     end_ts=body.end_ts, clear_end=body.running)
        return {**_doc(await dispatch.get(s, dispatch_id)),
                "reattributed": detail["reattributed"]}


@router.get("/dispatches")
async def list_dispatches(
        _a: Viewer, session: Db, machine_id: int | None = None,
        work_order: Annotated[str | None, Query(description="work order number")] = None,
        from_ts: Annotated[int | None, Query(
            alias="from", description="epoch ms: dispatches running at or after")] = None,
        to_ts: Annotated[int | None, Query(
            alias="to", description="epoch ms: dispatches started before")] = None,
        limit: Limit = 50, offset: Offset = 0) -> dict[str, Any]:
    """Dispatches, newest start first, with their work order number and step; ``from``
    and ``to`` keep those overlapping [from, to) (a running one reaches to now)."""
    if from_ts is not None and to_ts is not None and from_ts >= to_ts:
        raise Invalid(f"from ({from_ts}) must be before to ({to_ts})", "from")
    stmt = (select(Dispatch, WorkOrder.number, WoOperation.step)
            .join(WoOperation, WoOperation.id == Dispatch.wo_operation_id)
            .join(WorkOrder, WorkOrder.id == WoOperation.work_order_id))
    if machine_id is not None:
        stmt = stmt.where(Dispatch.machine_id == machine_id)
    if work_order is not None:
        stmt = stmt.where(WorkOrder.number == work_order)
    if from_ts is not None:
        stmt = stmt.where(or_(Dispatch.end_ts.is_(None), Dispatch.end_ts > from_ts))
    if to_ts is not None:
        stmt = stmt.where(Dispatch.start_ts < to_ts)
    return await paged(session, stmt, [Dispatch.start_ts.desc(), Dispatch.id.desc()],
                       limit, offset, _listed, scalars=False)


@router.get("/dispatches/{dispatch_id}")
async def get(dispatch_id: int, request: Request, _a: Viewer) -> dict[str, Any]:
    async with request.app.state.db.sessions() as s:
        return _doc(await dispatch.get(s, dispatch_id))


@router.post("/machines/{machine_id}/assign")
async def assign(machine_id: int, body: AssignRangeIn, request: Request,
                 actor: Planner) -> dict[str, Any]:
    async with request.app.state.db.sessions() as s, s.begin():
        ids = await dispatch.assign(s, actor, machine_id, body.wo_operation_id,
                                    body.start_ts, body.end_ts)
    return {"dispatches": ids}


@router.post("/attributions/assign")
async def assign_records(body: AssignRecordsIn, request: Request,
                         actor: Planner) -> dict[str, Any]:
    async with request.app.state.db.sessions() as s, s.begin():
        ids = await dispatch.assign_records(s, actor, body.wo_operation_id,
                                            [(g, q) for g, q in body.records])
    return {"dispatches": ids}


@router.get("/unassigned")
async def unassigned(_a: Viewer, session: Db,
                     machine_id: int | None = None, limit: Limit = 50,
                     offset: Offset = 0) -> dict[str, Any]:
    """Unassigned production per machine (by machine id), then per gateway/device that
    is no machine yet."""
    items = await dispatch.unassigned(session, machine_id)
    items.sort(key=lambda u: (u["machine_id"] is None, u["machine_id"] or 0,
                              u["gateway_id"], u["device"]))
    return page_of_list(items, limit, offset)
