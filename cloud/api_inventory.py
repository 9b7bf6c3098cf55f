"""HTTP API for stock (planners book, viewers read). Quantities are decimal strings or
numbers in the material's unit (exact to 6 decimals); answers carry micro-units (*_u).

- ``GET /api/v1/materials/{code}/stock``: balance, usage, safety stock, days of cover
- ``GET /api/v1/stock/moves?material=&kind=&work_order=&limit=&before_id=`` (newest first)
- ``GET /api/v1/stock/shortages``: materials below safety stock
- ``POST /api/v1/stock/receipts|issues|scrap`` {material, qty, work_order?, note?}
- ``POST /api/v1/stock/adjustments`` {material, qty (signed), note?}
- ``POST /api/v1/stock/counts`` {material, counted, note?}
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from cloud import inventory
from cloud.auth import Actor, require
from cloud.production import InvalidInput, to_micro


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
        if not signed:
            return to_micro(value, what=field)
        text = repr(value) if isinstance(value, float) else str(value).strip()
        return -to_micro(text[1:], what=field) if text.startswith("-") else to_micro(text,
                                                                                  what=field)
    except InvalidInput as exc:
        raise inventory.InventoryError(str(exc), field) from None


def install_inventory_api(app: FastAPI) -> None:
    router = APIRouter(prefix="/api/v1")
    planner, viewer = Depends(require("planner")), Depends(require("viewer"))

    @app.exception_handler(inventory.InventoryError)
    async def _err(_r: Request, exc: inventory.InventoryError) -> JSONResponse:
        return JSONResponse({"error": exc.code, "detail": exc.detail, "field": exc.field},
                            status_code=exc.status)

    @router.get("/materials/{code}/stock")
    async def stock(code: str, request: Request, _a: Actor = viewer) -> dict[str, Any]:
        async with request.app.state.db.sessions() as s:
            return await inventory.stock(s, code)

    @router.get("/stock/shortages")
    async def shortages(request: Request, _a: Actor = viewer) -> dict[str, Any]:
        async with request.app.state.db.sessions() as s:
            return {"items": await inventory.shortages(s)}

    @router.get("/stock/moves")
    async def moves(request: Request, material: str | None = None, kind: str | None = None,
                    work_order: str | None = None, limit: int = Query(100, ge=1, le=1000),
                    before_id: int | None = None, _a: Actor = viewer) -> dict[str, Any]:
        async with request.app.state.db.sessions() as s:
            return await inventory.list_moves(s, material=material, kind=kind,
                                              work_order=work_order, limit=limit,
                                              before_id=before_id)

    async def _book(request: Request, actor: Actor, kind: str, body: MoveIn) -> dict[str, Any]:
        qty = _micro(body.qty, "qty", signed=kind == "adjustment")
        async with request.app.state.db.sessions() as s, s.begin():
            return await inventory.post_move(s, actor, body.material, kind, qty,
                                             work_order=body.work_order, note=body.note)

    @router.post("/stock/receipts", status_code=201)
    async def receipt(body: MoveIn, request: Request, actor: Actor = planner) -> dict[str, Any]:
        return await _book(request, actor, "receipt", body)

    @router.post("/stock/issues", status_code=201)
    async def issue(body: MoveIn, request: Request, actor: Actor = planner) -> dict[str, Any]:
        return await _book(request, actor, "issue", body)

    @router.post("/stock/scrap", status_code=201)
    async def scrap(body: MoveIn, request: Request, actor: Actor = planner) -> dict[str, Any]:
        return await _book(request, actor, "scrap", body)

    @router.post("/stock/adjustments", status_code=201)
    async def adjustment(body: MoveIn, request: Request,
                         actor: Actor = planner) -> dict[str, Any]:
        return await _book(request, actor, "adjustment", body)

    @router.post("/stock/counts", status_code=201)
    async def count(body: CountIn, request: Request, actor: Actor = planner) -> dict[str, Any]:
        counted = _micro(body.counted, "counted")
        async with request.app.state.db.sessions() as s, s.begin():
            return await inventory.stock_count(s, actor, body.material, counted, note=body.note)

    app.include_router(router)
