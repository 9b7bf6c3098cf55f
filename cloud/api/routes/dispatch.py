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

Answers are named response models (``DispatchOut``, ``AssignedOut``, ``UnassignedOut``;
lists ``Page[...]``). Times are record times, epoch ms (``EpochMs``): a dispatch's start
and end are compared with the records' ``ts``.

Errors: ``{error, detail}`` with 404 (unknown), 409 (overlap, order not dispatchable),
422 (bad interval or filter).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import Row, or_, select

from cloud.api.deps import Db, Limit, Offset, Planner, Viewer
from cloud.api.paging import page_of_list, paged
from cloud.api.schemas import EpochMs, EpochMsIn, Int32, NonNegInt64, Out, Page
from cloud.core.errors import Invalid
from cloud.core.models import Dispatch, WoOperation, WorkOrder
from cloud.production import dispatch

router = APIRouter(prefix="/api/v1", tags=["dispatch"])


class StartIn(BaseModel):
    machine_id: Int32
    wo_operation_id: Int32
    start_ts: EpochMsIn | None = None
    end_ts: EpochMsIn | None = None


class StopIn(BaseModel):
    end_ts: EpochMsIn | None = None


class EditIn(BaseModel):
    start_ts: EpochMsIn | None = None
    end_ts: EpochMsIn | None = None
    running: bool = False  # true: clear the end (the dispatch runs again)


class AssignRangeIn(BaseModel):
    wo_operation_id: Int32
    start_ts: EpochMsIn
    end_ts: EpochMsIn


class AssignRecordsIn(BaseModel):
    wo_operation_id: Int32
    records: list[tuple[str, NonNegInt64]]


class DispatchOut(Out):
    """An operation running on a machine from ``start_ts`` to ``end_ts`` (null: still
    running); the counts of that machine in that time are the operation's."""

    id: int
    machine_id: int
    wo_operation_id: int
    start_ts: EpochMs
    end_ts: EpochMs | None = Field(description="null: still running")
    created_by: str
    edited_by: str | None


class DispatchListedOut(DispatchOut):
    """A dispatch with its work order number and operation step."""

    work_order: str
    step: int


class DispatchEditedOut(DispatchOut):
    """A dispatch after an edit, with how many count records changed operation."""

    reattributed: int = Field(description="count records re-attributed by the edit")


class AssignedOut(Out):
    dispatches: list[int] = Field(description="the dispatches made (none when the range "
                                              "was covered already)")


class UnassignedOut(Out):
    """Production no operation was dispatched for, per machine (or per gateway/device
    with no machine yet)."""

    machine_id: int | None
    gateway_id: str
    device: str
    good: int
    scrap: int
    records: int
    first_ts: EpochMs
    last_ts: EpochMs


def _doc(d: Row[Any] | Dispatch) -> DispatchOut:
    return DispatchOut(id=d.id, machine_id=d.machine_id, wo_operation_id=d.wo_operation_id,
                       start_ts=d.start_ts, end_ts=d.end_ts, created_by=d.created_by,
                       edited_by=d.edited_by)


def _listed(row: Row[tuple[Dispatch, str, int]]) -> DispatchListedOut:
    d, number, step = row
    return DispatchListedOut(**dict(_doc(d)), work_order=number, step=step)


@router.post("/dispatches", status_code=201)
async def start(body: StartIn, request: Request, actor: Planner) -> DispatchOut:
    """Dispatch an operation on a machine from ``start_ts`` (default now); a running
    dispatch that began earlier on that machine stops there (a changeover)."""
    async with request.app.state.db.sessions() as s, s.begin():
        new = await dispatch.start(s, actor, body.machine_id, body.wo_operation_id,
                                   body.start_ts, body.end_ts)
        return _doc(await dispatch.get(s, new))


@router.post("/dispatches/{dispatch_id}/stop")
async def stop(dispatch_id: Int32, body: StopIn, request: Request,
               actor: Planner) -> DispatchOut:
    """End a running dispatch at ``end_ts`` (default now)."""
    async with request.app.state.db.sessions() as s, s.begin():
        await dispatch.stop(s, actor, dispatch_id, body.end_ts)
        return _doc(await dispatch.get(s, dispatch_id))


@router.patch("/dispatches/{dispatch_id}")
async def edit(dispatch_id: Int32, body: EditIn, request: Request,
               actor: Planner) -> DispatchEditedOut:
    """Move a dispatch's start and/or end (``running``: clear the end); the counts in the
    time that changed are re-attributed."""
    async with request.app.state.db.sessions() as s, s.begin():
        detail = await dispatch.edit(s, actor, dispatch_id, start_ts=body.start_ts,
                                     end_ts=body.end_ts, clear_end=body.running)
        return DispatchEditedOut(**dict(_doc(await dispatch.get(s, dispatch_id))),
                                 reattributed=detail["reattributed"])


@router.get("/dispatches")
async def list_dispatches(
        _a: Viewer, session: Db, machine_id: Int32 | None = None,
        work_order: Annotated[str | None, Query(description="work order number")] = None,
        from_ts: Annotated[EpochMsIn | None, Query(
            alias="from", description="epoch ms: dispatches running at or after")] = None,
        to_ts: Annotated[EpochMsIn | None, Query(
            alias="to", description="epoch ms: dispatches started before")] = None,
        limit: Limit = 50, offset: Offset = 0) -> Page[DispatchListedOut]:
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
    return Page[DispatchListedOut].model_validate(
        await paged(session, stmt, [Dispatch.start_ts.desc(), Dispatch.id.desc()],
                    limit, offset, _listed, scalars=False))


@router.get("/dispatches/{dispatch_id}")
async def get(dispatch_id: Int32, request: Request, _a: Viewer) -> DispatchOut:
    """One dispatch."""
    async with request.app.state.db.sessions() as s:
        return _doc(await dispatch.get(s, dispatch_id))


@router.post("/machines/{machine_id}/assign")
async def assign(machine_id: Int32, body: AssignRangeIn, request: Request,
                 actor: Planner) -> AssignedOut:
    """Assign the machine's unassigned production in [start_ts, end_ts) to an operation:
    dispatches over the parts of the range no dispatch covers."""
    async with request.app.state.db.sessions() as s, s.begin():
        ids = await dispatch.assign(s, actor, machine_id, body.wo_operation_id,
                                    body.start_ts, body.end_ts)
    return AssignedOut(dispatches=ids)


@router.post("/attributions/assign")
async def assign_records(body: AssignRecordsIn, request: Request,
                         actor: Planner) -> AssignedOut:
    """Assign count records ([gateway, seq], ...) to an operation: per machine, the range
    from the first to the last of them."""
    async with request.app.state.db.sessions() as s, s.begin():
        ids = await dispatch.assign_records(s, actor, body.wo_operation_id,
                                            [(g, q) for g, q in body.records])
    return AssignedOut(dispatches=ids)


@router.get("/unassigned")
async def unassigned(_a: Viewer, session: Db,
                     machine_id: Int32 | None = None, limit: Limit = 50,
                     offset: Offset = 0) -> Page[UnassignedOut]:
    """Unassigned production per machine (by machine id), then per gateway/device that
    is no machine yet."""
    items = await dispatch.unassigned(session, machine_id)
    items.sort(key=lambda u: (u["machine_id"] is None, u["machine_id"] or 0,
                              u["gateway_id"], u["device"]))
    return Page[UnassignedOut].model_validate(page_of_list(items, limit, offset))
