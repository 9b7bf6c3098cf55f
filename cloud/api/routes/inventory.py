"""HTTP API for stock (planners book, viewers read). Quantities are decimal strings or
numbers in the material's unit (exact to 6 decimals); answers carry micro-units (*_u).

- ``GET /api/v1/materials/{code}/stock``: balance, usage, safety stock, days of cover
- ``GET /api/v1/stock/moves?material=&kind=&work_order=&limit=&offset=&before_id=``
  (newest first; ``before_id``/``next_before_id`` page by key through a growing ledger)
- ``GET /api/v1/stock/shortages?limit=&offset=``: materials below safety stock

Lists answer ``{items, total, limit, offset}`` like every list of the API. OpenAPI tag:
inventory.
- ``POST /api/v1/stock/receipts|issues|scrap`` {material, qty, work_order?, note?}
- ``POST /api/v1/stock/adjustments`` {material, qty (signed), note?}
- ``POST /api/v1/stock/counts`` {material, counted, note?}
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel
from sqlalchemy import select

from cloud import inventory
from cloud.api.deps import Db, Limit, Offset, Planner, Viewer
from cloud.api.paging import page_of_list, paged
from cloud.auth import Actor
from cloud.core.errors import Invalid
from cloud.core.models import STOCK_MOVE_KINDS, materials, stock_moves, work_orders
from cloud.core.quantities import to_micro, to_micro_signed

router = APIRouter(prefix="/api/v1", tags=["inventory"])


class MoveIn(BaseModel):
    material: str
    qty: str | int | float
    work_order: str | None = None
    note: str | None = None


class CountIn(BaseModel):
    material: str
    counted: str | int | float
    note: str | None = None


def _micro(value: str | int | float, field: str, *, signed: bool = False) -> int:
    """``value`` in micro-units; InventoryError naming ``field`` when it is no quantity."""
    try:
        return (to_micro_signed if signed else to_micro)(value, what=field)
    except Invalid as exc:
        raise inventory.InventoryError(str(exc), field) from None


def _move(r: Any) -> dict[str, Any]:
    return {"id": r.id, "material": r.material, "qty_u": r.qty_u, "kind": r.kind, "ts": r.ts,
            "work_order": r.work_order, "gateway_id": r.gateway_id, "seq": r.seq,
            "user": r.user, "note": r.note}


@router.get("/materials/{code}/stock")
async def stock(code: str, request: Request, _a: Viewer) -> dict[str, Any]:
    async with request.app.state.db.sessions() as s:
        return await inventory.stock(s, code)


@router.get("/stock/shortages")
async def shortages(_a: Viewer, session: Db, limit: Limit = 50,
                    offset: Offset = 0) -> dict[str, Any]:
    """Materials below their safety stock, lowest days of cover first."""
    return page_of_list(await inventory.shortages(session), limit, offset)


@router.get("/stock/moves")
async def moves(_a: Viewer, session: Db, material: str | None = None,
                kind: Annotated[str | None, Query(
                    pattern=f"^({'|'.join(STOCK_MOVE_KINDS)})$")] = None,
                work_order: str | None = None,
                limit: Annotated[int, Query(ge=1, le=1000)] = 100, offset: Offset = 0,
                before_id: int | None = None) -> dict[str, Any]:
    """Ledger lines, newest first. ``next_before_id``: pass it as ``before_id`` for the
    next page when new lines may arrive meanwhile (offsets would shift)."""
    stmt = (select(stock_moves, materials.c.code.label("material"),
                   work_orders.c.number.label("work_order"))
            .select_from(stock_moves.join(materials).outerjoin(
                work_orders, work_orders.c.id == stock_moves.c.work_order_id)))
    for column, value in ((materials.c.code, material), (stock_moves.c.kind, kind),
                          (work_orders.c.number, work_order)):
        if value is not None:
            stmt = stmt.where(column == value)
    if before_id is not None:
        stmt = stmt.where(stock_moves.c.id < before_id)
    page = await paged(session, stmt, [stock_moves.c.id.desc()], limit, offset, _move,
                       scalars=False)
    more = offset + len(page["items"]) < page["total"]
    page["next_before_id"] = page["items"][-1]["id"] if more and page["items"] else None
    return page


async def _book(request: Request, actor: Actor, kind: str, body: MoveIn) -> dict[str, Any]:
    qty = _micro(body.qty, "qty", signed=kind == "adjustment")
    async with request.app.state.db.sessions() as s, s.begin():
        return await inventory.post_move(s, actor, body.material, kind, qty,
                                         work_order=body.work_order, note=body.note)


@router.post("/stock/receipts", status_code=201)
async def receipt(body: MoveIn, request: Request, actor: Planner) -> dict[str, Any]:
    return await _book(request, actor, "receipt", body)


@router.post("/stock/issues", status_code=201)
async def issue(body: MoveIn, request: Request, actor: Planner) -> dict[str, Any]:
    return await _book(request, actor, "issue", body)


@router.post("/stock/scrap", status_code=201)
async def scrap(body: MoveIn, request: Request, actor: Planner) -> dict[str, Any]:
    return await _book(request, actor, "scrap", body)


@router.post("/stock/adjustments", status_code=201)
async def adjustment(body: MoveIn, request: Request,
                     actor: Planner) -> dict[str, Any]:
    return await _book(request, actor, "adjustment", body)


@router.post("/stock/counts", status_code=201)
async def count(body: CountIn, request: Request, actor: Planner) -> dict[str, Any]:
    counted = _micro(body.counted, "counted")
    async with request.app.state.db.sessions() as s, s.begin():
        return await inventory.stock_count(s, actor, body.material, counted, note=body.note)
