"""The stock ledger and what is read from it: balances, safety stock, days of cover,
shortages.

- Every change of stock is a ``stock_moves`` row (micro-units, signed: + in, - out) and
  the same transaction adds it to ``stock_balances``; so a balance always equals the sum
  of its material's moves (``ledger_mismatches`` proves it; the tests call it after
  every scenario). Backflush moves are written by cloud/production/attribution.py the same way.
- Kinds: receipt (+), issue (-), scrap (-, material written off), adjustment (signed),
  count (a stock count: a move of the difference between counted and booked, so the
  balance becomes the counted quantity; a count that matches books a zero move, which
  documents that the count happened).
- Usage (for safety stock and cover) is what left the store for production or waste:
  backflush + issue + scrap, net (a re-attribution's change is already in the moves).
  Adjustments and counts are corrections, not usage.
- Safety stock = average daily usage over the last 30 days x lead_time_days x 1.5,
  unless ``materials.safety_stock_manual_u`` is set.
- Days of cover = balance / the live rate, the average daily usage over the last
  7 days (None when nothing was used in 7 days: cover is unbounded); never negative:
  a balance below 0 covers 0 days.
- A negative balance is booked, not refused, when production consumed more than the
  books held (a backflush: the parts were made; the books were wrong). It shows as
  negative (``negative`` true) and is a shortage whatever the safety stock, so the
  anomalies sweep raises its stock anomaly (``stock_low``) and keeps it open until a
  receipt or a count puts the balance back.
- Shortage: balance below safety stock (a safety stock of 0 never signals), or below 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from sqlalchemy import Row, Select, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.core import clock
from cloud.core.audit import Named, actor_name, audit
from cloud.core.errors import Invalid, NotFound
from cloud.core.models import materials, stock_balances, stock_moves, work_orders

DAY_MS: Final = 86_400_000
USAGE_DAYS: Final = 30
LIVE_DAYS: Final = 7
SAFETY_FACTOR: Final = 1.5
USAGE_KINDS: Final = ("backflush", "issue", "scrap")
SIGN: Final = {"receipt": 1, "issue": -1, "scrap": -1}
MAX_QTY_U: Final = 10**15  # one move or count: at most 10^9 units (balances are 64-bit)


class InventoryError(Invalid):
    """A stock move or count that cannot be booked (422); ``field`` names the input."""

    code = "invalid_stock_move"


class UnknownMaterial(NotFound):
    pass


async def material_id(session: AsyncSession, code: str) -> int:
    mid = (await session.execute(select(materials.c.id).where(materials.c.code == code))).scalar()
    if mid is None:
        raise UnknownMaterial(f"no material {code!r}", "material")
    return int(mid)


async def balance_u(session: AsyncSession, mid: int, *, lock: bool = False) -> int:
    """The material's balance. ``lock``: hold it until the transaction ends, so no
    backflush or move can change it meanwhile (PostgreSQL: the row is created if missing,
    then read FOR UPDATE; SQLite: the write transaction already excludes other writers,
    cloud/core/db.py)."""
    stmt = select(stock_balances.c.qty_u).where(stock_balances.c.material_id == mid)
    if lock and session.bind.dialect.name == "postgresql":
        await session.execute(postgresql.insert(stock_balances).values(material_id=mid, qty_u=0)
                              .on_conflict_do_nothing(index_elements=["material_id"]))
        stmt = stmt.with_for_update()
    q = (await session.execute(stmt)).scalar()
    return int(q or 0)


async def post_move(session: AsyncSession, actor: Named | str, code: str, kind: str, qty_u: int, *,
                    work_order: str | None = None, note: str | None = None,
                    ts: int | None = None) -> dict[str, Any]:
    """Book a receipt, issue, scrap (``qty_u`` > 0, the sign comes from the kind) or an
    adjustment (signed). Balance and ledger in one transaction; audited. Raises
    UnknownMaterial, InventoryError."""
    if kind in SIGN:
        if qty_u <= 0:
            raise InventoryError(f"qty of a {kind} must be positive, got {qty_u} micro-units",
                                 "qty")
        qty_u *= SIGN[kind]
    elif kind != "adjustment":
        raise InventoryError(f"kind must be receipt, issue, scrap or adjustment, not {kind!r}",
                             "kind")
    elif qty_u == 0:
        raise InventoryError("qty: an adjustment of 0 changes nothing", "qty")
    _check_size(qty_u, "qty")
    return await _book(session, actor, code, kind, qty_u, work_order, note, ts)


async def stock_count(session: AsyncSession, actor: Named | str, code: str, counted_u: int, *,
                      note: str | None = None, ts: int | None = None) -> dict[str, Any]:
    """A physical count: books the difference to the current balance (kind ``count``).
    The balance is locked from the read to the booking, so a backflush committing
    meanwhile waits and then applies on top: the balance is the counted figure at the
    count and moves from there."""
    if counted_u < 0:
        raise InventoryError(f"counted cannot be negative ({counted_u} micro-units)", "counted")
    _check_size(counted_u, "counted")
    mid = await material_id(session, code)
    diff = counted_u - await balance_u(session, mid, lock=True)
    return await _book(session, actor, code, "count", diff, None, note, ts, counted_u=counted_u)


def _check_size(qty_u: int, field: str) -> None:
    if abs(qty_u) > MAX_QTY_U:
        raise InventoryError(f"{field} is too large: at most {MAX_QTY_U // 1_000_000} units "
                             f"per move", field)


async def _book(session: AsyncSession, actor: Named | str, code: str, kind: str, qty_u: int,
                work_order: str | None, note: str | None, ts: int | None,
                **extra: Any) -> dict[str, Any]:
    mid = await material_id(session, code)
    wo_id = None
    if work_order is not None:
        wo_id = (await session.execute(select(work_orders.c.id)
                                       .where(work_orders.c.number == work_order))).scalar()
        if wo_id is None:
            raise InventoryError(f"work_order: no work order {work_order!r}", "work_order")
    move_id = (await session.execute(insert(stock_moves).values(
        material_id=mid, qty_u=qty_u, kind=kind, ts=clock.now_ms() if ts is None else ts,
        work_order_id=wo_id, user=actor_name(actor), note=note).returning(stock_moves.c.id))
    ).scalar_one()
    await add_to_balances(session, {mid: qty_u})
    detail = {"material": code, "kind": kind, "qty_u": qty_u, "work_order": work_order,
              "note": note, **extra}
    await audit(session, actor, f"stock.{kind}", "stock_move", str(move_id), detail)
    return {"id": int(move_id), **detail, "balance_u": await balance_u(session, mid)}


async def add_to_balances(session: AsyncSession, deltas: dict[int, int]) -> None:
    """Add signed micro-units per material to the balances (rows created as needed), in
    material id order (no deadlock cycles). Every writer of ``stock_moves`` calls this in
    the same transaction, which keeps each balance equal to its ledger sum."""
    rows = [{"material_id": m, "qty_u": q} for m, q in sorted(deltas.items()) if q]
    if not rows:
        return
    mod = postgresql if session.bind.dialect.name == "postgresql" else sqlite
    stmt = mod.insert(stock_balances)
    stmt = stmt.on_conflict_do_update(
        index_elements=["material_id"],
        set_={"qty_u": stock_balances.c.qty_u + stmt.excluded.qty_u})
    for row in rows:  # one statement each: upsert executemany is not portable
        await session.execute(stmt, row)


async def _usage_u(session: AsyncSession, mids: Sequence[int] | None, since: int,
                   until: int) -> dict[int, int]:
    q = (select(stock_moves.c.material_id, func.sum(stock_moves.c.qty_u))
         .where(stock_moves.c.kind.in_(USAGE_KINDS), stock_moves.c.ts >= since,
                stock_moves.c.ts < until)
         .group_by(stock_moves.c.material_id))
    if mids is not None:
        q = q.where(stock_moves.c.material_id.in_(mids))
    return {int(m): -int(s or 0) for m, s in (await session.execute(q)).all()}


def _stock_doc(m: Row[Any], bal: int, used30: int, used7: int) -> dict[str, Any]:
    daily30 = used30 / USAGE_DAYS
    daily7 = used7 / LIVE_DAYS
    if m.safety_stock_manual_u is not None:
        safety, source = int(m.safety_stock_manual_u), "manual"
    else:
        safety, source = round(daily30 * m.lead_time_days * SAFETY_FACTOR), "computed"
    return {"material": m.code, "unit": m.unit, "balance_u": bal,
            "avg_daily_usage_30d_u": round(daily30), "avg_daily_usage_7d_u": round(daily7),
            "lead_time_days": m.lead_time_days, "safety_stock_u": safety,
            "safety_stock_source": source,
            "days_of_cover": (0.0 if bal < 0 else round(bal / daily7, 2) if daily7 > 0
                              else None),
            "negative": bal < 0,
            "below_safety_stock": bal < 0 or (safety > 0 and bal < safety)}


async def stock(session: AsyncSession, code: str, *, now: int | None = None) -> dict[str, Any]:
    """A material's balance, usage rates, safety stock, days of cover, shortage flag."""
    now = clock.now_ms() if now is None else now
    m = (await session.execute(select(materials).where(materials.c.code == code))).first()
    if m is None:
        raise UnknownMaterial(f"no material {code!r}")
    u30 = await _usage_u(session, [m.id], now - USAGE_DAYS * DAY_MS, now)
    u7 = await _usage_u(session, [m.id], now - LIVE_DAYS * DAY_MS, now)
    return _stock_doc(m, await balance_u(session, m.id), u30.get(m.id, 0), u7.get(m.id, 0))


async def shortages(session: AsyncSession, *, now: int | None = None) -> list[dict[str, Any]]:
    """Every material below its safety stock (the shortage signal), lowest cover first."""
    now = clock.now_ms() if now is None else now
    u30 = await _usage_u(session, None, now - USAGE_DAYS * DAY_MS, now)
    u7 = await _usage_u(session, None, now - LIVE_DAYS * DAY_MS, now)
    bals = dict((await session.execute(select(stock_balances.c.material_id,
                                              stock_balances.c.qty_u))).tuples().all())
    out = []
    for m in (await session.execute(select(materials).order_by(materials.c.code))).all():
        doc = _stock_doc(m, int(bals.get(m.id, 0)), u30.get(m.id, 0), u7.get(m.id, 0))
        if doc["below_safety_stock"]:
            out.append(doc)
    out.sort(key=lambda d: (d["days_of_cover"] is None, d["days_of_cover"] or 0))
    return out


#: The ledger's order: newest line first (ids grow with time; unique, so pages are stable).
MOVES_ORDER: Final = (stock_moves.c.id.desc(),)


def moves_query(*, material: str | None = None, kind: str | None = None,
                work_order: str | None = None, before_id: int | None = None) -> Select[Any]:
    """The ledger lines matching every filter given (material code, kind, work order
    number; ``before_id``: lines older than that id), each with its ``material`` code and
    ``work_order`` number, unordered: order by ``MOVES_ORDER``, map rows by ``move_doc``.
    The one query of the ledger: ``list_moves`` and the API's ``/stock/moves`` page it."""
    q = (select(stock_moves, materials.c.code.label("material"),
                work_orders.c.number.label("work_order"))
         .select_from(stock_moves.join(materials)
                      .outerjoin(work_orders, work_orders.c.id == stock_moves.c.work_order_id)))
    for column, value in ((materials.c.code, material), (stock_moves.c.kind, kind),
                          (work_orders.c.number, work_order)):
        if value is not None:
            q = q.where(column == value)
    if before_id is not None:
        q = q.where(stock_moves.c.id < before_id)
    return q


def move_doc(row: Row[Any]) -> dict[str, Any]:
    """A row of ``moves_query`` as a ledger line: id, material, qty_u (signed), kind, ts
    (epoch ms), work_order, gateway_id and seq (a backflush's count record), user, note."""
    return {"id": row.id, "material": row.material, "qty_u": row.qty_u, "kind": row.kind,
            "ts": row.ts, "work_order": row.work_order, "gateway_id": row.gateway_id,
            "seq": row.seq, "user": row.user, "note": row.note}


async def list_moves(session: AsyncSession, *, material: str | None = None,
                     kind: str | None = None, work_order: str | None = None,
                     limit: int = 100, before_id: int | None = None) -> dict[str, Any]:
    """Ledger lines newest first, filtered (``moves_query``): ``{items, next_before_id}``;
    keyset pagination: pass ``next_before_id`` as ``before_id`` (None: no more lines)."""
    q = (moves_query(material=material, kind=kind, work_order=work_order, before_id=before_id)
         .order_by(*MOVES_ORDER).limit(limit + 1))
    rows = (await session.execute(q)).all()
    items = [move_doc(r) for r in rows[:limit]]
    return {"items": items,
            "next_before_id": items[-1]["id"] if len(rows) > limit and items else None}


async def ledger_mismatches(session: AsyncSession) -> list[tuple[int, int, int]]:
    """(material_id, balance, ledger sum) for every material where they differ: empty
    when the books are right."""
    sums = dict((await session.execute(
        select(stock_moves.c.material_id, func.sum(stock_moves.c.qty_u))
        .group_by(stock_moves.c.material_id))).tuples().all())
    bals = dict((await session.execute(select(stock_balances.c.material_id,
                                              stock_balances.c.qty_u))).tuples().all())
    return [(m, int(bals.get(m, 0)), int(sums.get(m, 0) or 0))
            for m in sorted(set(sums) | set(bals))
            if int(bals.get(m, 0)) != int(sums.get(m, 0) or 0)]
