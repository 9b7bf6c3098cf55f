"""HTTP API for stock (planners book, viewers read). Quantities are decimal strings or
numbers in the material's unit (exact to 6 decimals); answers carry micro-units (*_u).

- ``GET /api/v1/materials/{code}/stock``: balance, usage, safety stock, days of cover
- ``GET /api/v1/stock/moves?material=&kind=&work_order=&limit=&offset=&before_id=``
  (newest first; ``before_id``/``next_before_id`` page by key through a growing ledger)
- ``GET /api/v1/stock/shortages?limit=&offset=``: materials below safety stock
- ``POST /api/v1/stock/receipts|issues|scrap`` {material, qty, work_order?, note?}
- ``POST /api/v1/stock/adjustments`` {material, qty (signed), note?}
- ``POST /api/v1/stock/counts`` {material, counted, note?}

Lists answer ``{items, total, limit, offset}`` like every list of the API. Answers are
named response models (``StockOut``, ``MoveOut``, ``BookedOut``, ``CountedOut``); a
ledger line's ``ts`` is epoch ms (``EpochMs``). The ledger is read by the one query of
cloud/inventory (``moves_query``), the same query the web's ledger page uses. OpenAPI tag:
inventory.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from cloud import inventory
from cloud.api.deps import Db, Limit, Offset, Planner, Viewer
from cloud.api.paging import page_of_list, paged
from cloud.api.schemas import EpochMs, Int32, Out, Page
from cloud.auth import Actor
from cloud.core.errors import Invalid
from cloud.core.models import STOCK_MOVE_KINDS
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


class StockOut(Out):
    """A material's stock (cloud/inventory/ledger.py says how each figure is computed);
    quantities in micro-units of the material's unit (``*_u``)."""

    material: str
    unit: str
    balance_u: int = Field(description="always the sum of the material's ledger lines")
    avg_daily_usage_30d_u: int
    avg_daily_usage_7d_u: int
    lead_time_days: int
    safety_stock_u: int
    safety_stock_source: Literal["manual", "computed"]
    days_of_cover: float | None = Field(description="balance / 7-day usage rate, 0 when "
                                        "the balance is below 0 (never negative); null: "
                                        "nothing used in 7 days")
    negative: bool = Field(description="the balance is below 0: production consumed more "
                           "than the books held (a stock anomaly is raised)")
    below_safety_stock: bool = Field(description="below safety stock, or below 0")


class MoveOut(Out):
    """A ledger line: + into the store, - out of it."""

    id: int
    material: str
    qty_u: int = Field(description="signed micro-units")
    kind: str = Field(description=", ".join(STOCK_MOVE_KINDS))
    ts: EpochMs
    work_order: str | None
    gateway_id: str | None = Field(description="backflush: the count record's gateway")
    seq: int | None = Field(description="backflush: the count record's seq")
    user: str | None
    note: str | None


class MovesPage(Page[MoveOut]):
    """A page of the ledger, newest first."""

    next_before_id: int | None = Field(
        description="pass as before_id for the next page (stable while lines arrive); "
                    "null: no more")


class BookedOut(Out):
    """A booked move and the balance after it."""

    id: int
    material: str
    kind: str
    qty_u: int = Field(description="signed micro-units")
    work_order: str | None
    note: str | None
    balance_u: int


class CountedOut(BookedOut):
    """A stock count: the move of the difference, the counted figure and the balance."""

    counted_u: int


@router.get("/materials/{code}/stock")
async def stock(code: str, request: Request, _a: Viewer) -> StockOut:
    """Balance, usage rates, safety stock, days of cover and the shortage flag."""
    async with request.app.state.db.sessions() as s:
        return StockOut.model_validate(await inventory.stock(s, code))


@router.get("/stock/shortages")
async def shortages(_a: Viewer, session: Db, limit: Limit = 50,
                    offset: Offset = 0) -> Page[StockOut]:
    """Materials below their safety stock, lowest days of cover first."""
    return Page[StockOut].model_validate(
        page_of_list(await inventory.shortages(session), limit, offset))


@router.get("/stock/moves")
async def moves(_a: Viewer, session: Db, material: str | None = None,
                kind: Annotated[str | None, Query(
                    pattern=f"^({'|'.join(STOCK_MOVE_KINDS)})$")] = None,
                work_order: str | None = None,
                limit: Annotated[int, Query(ge=1, le=1000)] = 100, offset: Offset = 0,
                before_id: Int32 | None = None) -> MovesPage:
    """Ledger lines, newest first. ``next_before_id``: pass it as ``before_id`` for the
    next page when new lines may arrive meanwhile (offsets would shift)."""
    stmt = inventory.moves_query(material=material, kind=kind, work_order=work_order,
                                 before_id=before_id)
    page = await paged(session, stmt, list(inventory.MOVES_ORDER), limit, offset,
                       inventory.move_doc, scalars=False)
    items = page["items"]
    more = offset + len(items) < page["total"]
    return MovesPage.model_validate(
        {**page, "next_before_id": items[-1]["id"] if more and items else None})


async def _book(request: Request, actor: Actor, kind: str, body: MoveIn) -> BookedOut:
    qty = _micro(body.qty, "qty", signed=kind == "adjustment")
    async with request.app.state.db.sessions() as s, s.begin():
        return BookedOut.model_validate(await inventory.post_move(
            s, actor, body.material, kind, qty, work_order=body.work_order, note=body.note))


@router.post("/stock/receipts", status_code=201)
async def receipt(body: MoveIn, request: Request, actor: Planner) -> BookedOut:
    """Goods in (``qty`` > 0)."""
    return await _book(request, actor, "receipt", body)


@router.post("/stock/issues", status_code=201)
async def issue(body: MoveIn, request: Request, actor: Planner) -> BookedOut:
    """Goods out to production (``qty`` > 0, booked negative)."""
    return await _book(request, actor, "issue", body)


@router.post("/stock/scrap", status_code=201)
async def scrap(body: MoveIn, request: Request, actor: Planner) -> BookedOut:
    """Material written off (``qty`` > 0, booked negative)."""
    return await _book(request, actor, "scrap", body)


@router.post("/stock/adjustments", status_code=201)
async def adjustment(body: MoveIn, request: Request, actor: Planner) -> BookedOut:
    """A correction (``qty`` signed, not 0)."""
    return await _book(request, actor, "adjustment", body)


@router.post("/stock/counts", status_code=201)
async def count(body: CountIn, request: Request, actor: Planner) -> CountedOut:
    """A physical count: books the difference, so the balance becomes ``counted``."""
    counted = _micro(body.counted, "counted")
    async with request.app.state.db.sessions() as s, s.begin():
        return CountedOut.model_validate(await inventory.stock_count(
            s, actor, body.material, counted, note=body.note))
