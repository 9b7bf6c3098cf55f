"""HTTP API for dispatch and attribution (planners act, viewers read):

- ``POST /api/v1/dispatches`` {machine_id, wo_operation_id, start_ts?, end_ts?} -> 201
- ``POST /api/v1/dispatches/{id}/stop`` {end_ts?}
- ``PATCH /api/v1/dispatches/{id}`` {start_ts?, end_ts?, running?} (re-attributes)
- ``POST /api/v1/machines/{id}/assign`` {wo_operation_id, start_ts, end_ts}
- ``POST /api/v1/attributions/assign`` {wo_operation_id, records: [[gateway, seq], ...]}
- ``GET /api/v1/dispatches/{id}``, ``GET /api/v1/unassigned?machine_id=``

Errors: ``{error, detail}`` with 404 (unknown), 409 (overlap, order not dispatchable),
422 (bad interval). Times are epoch ms.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from cloud import dispatch
from cloud.auth import Actor, require


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


def install_dispatch_api(app: FastAPI) -> None:
    router = APIRouter(prefix="/api/v1")
    planner, viewer = Depends(require("planner")), Depends(require("viewer"))

    @app.exception_handler(dispatch.DispatchError)
    async def _err(_r: Request, exc: dispatch.DispatchError) -> JSONResponse:
        return JSONResponse({"error": exc.code, "detail": exc.detail}, status_code=exc.status)

    @router.post("/dispatches", status_code=201)
    async def start(body: StartIn, request: Request, actor: Actor = planner) -> dict[str, Any]:
        async with request.app.state.db.sessions() as s, s.begin():
            new = await dispatch.start(s, actor, body.machine_id, body.wo_operation_id,
                                       body.start_ts, body.end_ts)
            return _doc(await dispatch.get(s, new))

    @router.post("/dispatches/{dispatch_id}/stop")
    async def stop(dispatch_id: int, body: StopIn, request: Request,
                   actor: Actor = planner) -> dict[str, Any]:
        async with request.app.state.db.sessions() as s, s.begin():
            await dispatch.stop(s, actor, dispatch_id, body.end_ts)
            return _doc(await dispatch.get(s, dispatch_id))

    @router.patch("/dispatches/{dispatch_id}")
    async def edit(dispatch_id: int, body: EditIn, request: Request,
                   actor: Actor = planner) -> dict[str, Any]:
        async with request.app.state.db.sessions() as s, s.begin():
            detail = await dispatch.edit(s, actor, dispatch_id, start_ts=body.start_ts,
                                         end_ts=body.end_ts, clear_end=body.running)
            return {**_doc(await dispatch.get(s, dispatch_id)),
                    "reattributed": detail["reattributed"]}

    @router.get("/dispatches/{dispatch_id}")
    async def get(dispatch_id: int, request: Request, _a: Actor = viewer) -> dict[str, Any]:
        async with request.app.state.db.sessions() as s:
            return _doc(await dispatch.get(s, dispatch_id))

    @router.post("/machines/{machine_id}/assign")
    async def assign(machine_id: int, body: AssignRangeIn, request: Request,
                     actor: Actor = planner) -> dict[str, Any]:
        async with request.app.state.db.sessions() as s, s.begin():
            ids = await dispatch.assign(s, actor, machine_id, body.wo_operation_id,
                                        body.start_ts, body.end_ts)
        return {"dispatches": ids}

    @router.post("/attributions/assign")
    async def assign_records(body: AssignRecordsIn, request: Request,
                             actor: Actor = planner) -> dict[str, Any]:
        async with request.app.state.db.sessions() as s, s.begin():
            ids = await dispatch.assign_records(s, actor, body.wo_operation_id,
                                                [(g, q) for g, q in body.records])
        return {"dispatches": ids}

    @router.get("/unassigned")
    async def unassigned(request: Request, machine_id: int | None = None,
                         _a: Actor = viewer) -> dict[str, Any]:
        async with request.app.state.db.sessions() as s:
            return {"items": await dispatch.unassigned(s, machine_id)}

    app.include_router(router)
