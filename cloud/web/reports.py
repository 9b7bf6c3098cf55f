"""What the pages show, read from the database: board tiles, work orders with progress
and due-date status, an order's detail, stock, data completeness. Read-only; every list
is bounded (a page, or ``limit`` for exports).

The rules behind what the pages show live in the domain, so the REST API answers them
too: the due-date colour is cloud/production/status.py ``due_status``, over-production
and short-closing its ``completion_status``, an OEE figure's data-quality flags
cloud/oee/report.py ``quality_flags``, provisional data is cloud/ingest/status.py
``gateway_freshness``. ``completion_text`` and ``quality_flags_text`` word the last two
for a page or an export cell, in the reader's language.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from cloud import inventory
from cloud.core.models import (
    attributions,
    dispatches,
    gateways,
    machines,
    materials,
    products,
    stock_moves,
    wo_components,
    wo_operations,
    work_orders,
)
from cloud.production import (
    WorkOrderFilter,
    completion_status,
    list_work_orders,
    order_completion_status,
    order_due_status,
)
from cloud.web import labels
from cloud.web.i18n import fmt_pct

HOUR_MS: Final = 3_600_000
DAY_MS: Final = 86_400_000

#: ``_(msgid, **params)``: a page's translation function (cloud/web/context.py Page._).
Gettext = Callable[..., str]


def completion_text(_: Gettext, status: str | None) -> str | None:
    """An order's completion status in words (None: nothing to say)."""
    return _(labels.COMPLETION[status]) if status in labels.COMPLETION else None


def quality_flags_text(_: Gettext, flags: Sequence[dict[str, Any]]) -> str | None:
    """An OEE row's data-quality flags in words, one sentence each (None: no flag)."""
    out = []
    for f in flags:
        if f.get("code") == "performance_over_100":
            out.append(_(labels.PERFORMANCE_OVER_100,
                         measured=fmt_pct(f.get("performance_measured"), 0) or "?",
                         ideal=_seconds(f.get("ideal_ms_per_piece")),
                         actual=_seconds(f.get("measured_ms_per_piece"))))
        else:
            out.append(str(f.get("code")))
    return " ".join(out) or None


def _seconds(ms: float | None) -> str:
    return "?" if ms is None else f"{ms / 1000:.1f}"


# -- machines ------------------------------------------------------------------------------

async def machine_list(session: AsyncSession) -> list[dict[str, Any]]:
    rows = (await session.execute(
        select(machines).order_by(machines.c.work_center.is_(None), machines.c.work_center,
                                  machines.c.name).limit(1000))).all()
    return [dict(r._mapping) for r in rows]


async def running_dispatches(session: AsyncSession,
                             machine_ids: list[int] | None = None) -> dict[int, dict[str, Any]]:
    """The running dispatch (no end) of each machine: order, operation, progress, and
    ``completion`` (over-produced: the operation made more than ordered; see
    cloud/production/status.py ``completion_status``)."""
    q = (select(dispatches.c.id, dispatches.c.machine_id, dispatches.c.start_ts,
                wo_operations.c.id.label("op_id"), wo_operations.c.step,
                wo_operations.c.name.label("operation"), wo_operations.c.good,
                wo_operations.c.scrap, wo_operations.c.status.label("op_status"),
                work_orders.c.number, work_orders.c.quantity, work_orders.c.customer,
                work_orders.c.status.label("order_status"), products.c.code.label("product"))
         .select_from(dispatches.join(wo_operations,
                                      wo_operations.c.id == dispatches.c.wo_operation_id)
                      .join(work_orders, work_orders.c.id == wo_operations.c.work_order_id)
                      .join(products, products.c.id == work_orders.c.product_id))
         .where(dispatches.c.end_ts.is_(None)).order_by(dispatches.c.start_ts))
    if machine_ids is not None:
        q = q.where(dispatches.c.machine_id.in_(machine_ids))
    return {r.machine_id: {**r._mapping, "completion": completion_status(
                status=r.order_status, quantity=r.quantity, good=r.good)}
            for r in (await session.execute(q)).all()}


async def good_since(session: AsyncSession, since_ms: int) -> dict[int, tuple[int, int]]:
    """(good, scrap) per machine counted since ``since_ms`` (today's output)."""
    rows = (await session.execute(
        select(attributions.c.machine_id, func.sum(attributions.c.good),
               func.sum(attributions.c.scrap))
        .where(attributions.c.ts >= since_ms, attributions.c.machine_id.is_not(None))
        .group_by(attributions.c.machine_id))).all()
    return {int(m): (int(g or 0), int(s or 0)) for m, g, s in rows}


# -- work orders ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class OrderQuery:
    status: tuple[str, ...] = ()
    customer: str | None = None
    q: str | None = None
    due: str | None = None          # on_time | at_risk | late (filtered after the page)

    def to_filter(self) -> WorkOrderFilter:
        return WorkOrderFilter(status=self.status, customer=self.customer or None,
                               q=self.q or None)


async def order_rows(session: AsyncSession, query: OrderQuery, *, limit: int, offset: int,
                     now: datetime) -> tuple[list[dict[str, Any]], int]:
    """A page of work orders (earliest due first) with good = the last operation's good
    pieces, scrap over all operations, progress 0..1, the due status and the completion
    status (over-produced, closed short)."""
    flt = query.to_filter()
    if query.due == "late" and not flt.status:
        flt = WorkOrderFilter(status=("draft", "released", "in_progress"),
                              customer=flt.customer, q=flt.q, due_to=now)
    elif query.due == "late":
        flt = WorkOrderFilter(status=flt.status, customer=flt.customer, q=flt.q, due_to=now)
    rows, total = await list_work_orders(session, flt, limit=limit, offset=offset)
    ids = [wo.id for wo, _ in rows]
    prog = await order_progress(session, ids)
    out = []
    for wo, product in rows:
        good, scrap, ops = prog.get(wo.id, (0, 0, 0))
        out.append({
            "id": wo.id, "number": wo.number, "product": product, "quantity": wo.quantity,
            "good": good, "scrap": scrap, "operations": ops,
            "progress": min(1.0, good / wo.quantity) if wo.quantity else 0.0,
            "status": wo.status, "customer": wo.customer, "priority": wo.priority,
            "due": wo.due, "released_at": wo.released_at, "completed_at": wo.completed_at,
            "due_status": order_due_status(wo, good, now),
            "completion": order_completion_status(wo, good)})
    if query.due in ("on_time", "at_risk"):
        out = [r for r in out if r["due_status"] == query.due]
    return out, total


async def order_progress(session: AsyncSession, order_ids: list[int]
                         ) -> dict[int, tuple[int, int, int]]:
    """(good of the last operation, scrap of all, number of operations) per order."""
    if not order_ids:
        return {}
    rows = (await session.execute(
        select(wo_operations.c.work_order_id, wo_operations.c.step, wo_operations.c.good,
               wo_operations.c.scrap)
        .where(wo_operations.c.work_order_id.in_(order_ids)))).all()
    best: dict[int, tuple[int, int]] = {}
    scrap: dict[int, int] = defaultdict(int)
    count: dict[int, int] = defaultdict(int)
    for r in rows:
        if r.work_order_id not in best or r.step > best[r.work_order_id][0]:
            best[r.work_order_id] = (r.step, int(r.good))
        scrap[r.work_order_id] += int(r.scrap)
        count[r.work_order_id] += 1
    return {wid: (best[wid][1], scrap[wid], count[wid]) for wid in best}


async def operations_of(session: AsyncSession, order_id: int) -> list[dict[str, Any]]:
    running = {r.wo_operation_id: r for r in (await session.execute(
        select(dispatches.c.id, dispatches.c.wo_operation_id, dispatches.c.machine_id,
               dispatches.c.start_ts)
        .where(dispatches.c.end_ts.is_(None), dispatches.c.wo_operation_id.in_(
            select(wo_operations.c.id).where(wo_operations.c.work_order_id == order_id)))
    )).all()}
    rows = (await session.execute(
        select(wo_operations, machines.c.name.label("machine"))
        .select_from(wo_operations.outerjoin(machines,
                                             machines.c.id == wo_operations.c.machine_id))
        .where(wo_operations.c.work_order_id == order_id).order_by(wo_operations.c.step))).all()
    out = []
    for r in rows:
        doc = dict(r._mapping)
        d = running.get(r.id)
        doc["running"] = None if d is None else {"dispatch_id": d.id, "machine_id": d.machine_id,
                                                  "start_ts": d.start_ts}
        out.append(doc)
    return out


async def dispatch_history(session: AsyncSession, order_id: int, limit: int = 200
                           ) -> list[dict[str, Any]]:
    rows = (await session.execute(
        select(dispatches, wo_operations.c.step, wo_operations.c.name.label("operation"),
               machines.c.name.label("machine"))
        .select_from(dispatches.join(wo_operations,
                                     wo_operations.c.id == dispatches.c.wo_operation_id)
                     .join(machines, machines.c.id == dispatches.c.machine_id))
        .where(wo_operations.c.work_order_id == order_id)
        .order_by(dispatches.c.start_ts.desc()).limit(limit))).all()
    return [dict(r._mapping) for r in rows]


async def output_per_hour(session: AsyncSession, order_id: int, hours: int = 48
                          ) -> list[tuple[int, int, int]]:
    """(hour start ms, good, scrap) of the pieces counted for the order on all its
    operations, per hour over the last ``hours`` hours up to its newest count, oldest
    first."""
    op_ids = select(wo_operations.c.id).where(wo_operations.c.work_order_id == order_id)
    newest = (await session.execute(
        select(func.max(attributions.c.ts))
        .where(attributions.c.wo_operation_id.in_(op_ids)))).scalar()
    if newest is None:
        return []
    start = (int(newest) // HOUR_MS - hours + 1) * HOUR_MS
    bucket = (attributions.c.ts / HOUR_MS).label("h")
    rows = (await session.execute(
        select(bucket, func.sum(attributions.c.good), func.sum(attributions.c.scrap))
        .where(attributions.c.wo_operation_id.in_(op_ids), attributions.c.ts >= start)
        .group_by(bucket))).all()
    per: dict[int, list[int]] = {}
    for h, g, s in rows:
        acc = per.setdefault(int(h), [0, 0])
        acc[0] += int(g or 0)
        acc[1] += int(s or 0)
    first = min(per) if per else int(newest) // HOUR_MS
    out: list[tuple[int, int, int]] = []
    for h in range(first, int(newest) // HOUR_MS + 1):
        good, scrap = per.get(h, [0, 0])
        out.append((h * HOUR_MS, good, scrap))
    return out


async def materials_vs_bom(session: AsyncSession, order_id: int) -> list[dict[str, Any]]:
    """Per component: what the BOM calls for at the counted quantities (good, and scrap
    where it backflushes scrap, at the consuming step) and what the ledger booked against
    the order (backflush, issues, scrap; micro-units)."""
    comps = (await session.execute(
        select(wo_components, materials.c.code, materials.c.name, materials.c.unit)
        .join(materials, materials.c.id == wo_components.c.material_id)
        .where(wo_components.c.work_order_id == order_id).order_by(wo_components.c.id))).all()
    ops = {r.step: (int(r.good), int(r.scrap)) for r in (await session.execute(
        select(wo_operations.c.step, wo_operations.c.good, wo_operations.c.scrap)
        .where(wo_operations.c.work_order_id == order_id))).all()}
    last = max(ops) if ops else None
    booked = dict((await session.execute(
        select(stock_moves.c.material_id, func.sum(stock_moves.c.qty_u))
        .where(stock_moves.c.work_order_id == order_id,
               stock_moves.c.kind.in_(inventory.USAGE_KINDS))
        .group_by(stock_moves.c.material_id))).tuples().all())
    out: dict[int, dict[str, Any]] = {}
    for c in comps:
        step = c.step if c.step is not None else last
        good, scrap = ops.get(step, (0, 0)) if step is not None else (0, 0)
        per_piece = round(c.qty_per_unit_u * (1 + c.scrap_factor))
        planned = per_piece * good + (per_piece * scrap if c.backflush_scrap else 0)
        doc = out.setdefault(c.material_id, {
            "material": c.code, "name": c.name, "unit": c.unit, "qty_per_unit_u": 0,
            "planned_u": 0, "consumed_u": -int(booked.get(c.material_id, 0) or 0)})
        doc["qty_per_unit_u"] += c.qty_per_unit_u
        doc["planned_u"] += planned
    for doc in out.values():
        doc["difference_u"] = doc["consumed_u"] - doc["planned_u"]
    return list(out.values())


# -- inventory -----------------------------------------------------------------------------

async def stock_rows(session: AsyncSession, *, q: str | None, shortage_only: bool,
                     limit: int, offset: int, now_ms: int) -> tuple[list[dict[str, Any]], int]:
    """A page of materials (by code) with balance, safety stock, days of cover and
    shortage (cloud/inventory/ledger.py's rules). ``shortage_only``: only those below safety."""
    if shortage_only:
        docs = await inventory.shortages(session, now=now_ms)
        if q:
            docs = [d for d in docs if q.lower() in d["material"].lower()]
        names = dict((await session.execute(
            select(materials.c.code, materials.c.name)
            .where(materials.c.code.in_([d["material"] for d in docs[offset:offset + limit]]))
        )).tuples().all())
        page = [{**d, "name": names.get(d["material"], "")} for d in docs[offset:offset + limit]]
        return page, len(docs)
    stmt = select(materials.c.code, materials.c.name)
    if q:
        pattern = f"%{q.lower()}%"
        stmt = stmt.where(or_(func.lower(materials.c.code).like(pattern),
                              func.lower(materials.c.name).like(pattern)))
    total = int((await session.execute(select(func.count()).select_from(stmt.subquery())))
                .scalar() or 0)
    rows = (await session.execute(stmt.order_by(materials.c.code).limit(limit)
                                  .offset(offset))).all()
    out = []
    for code, name in rows:
        out.append({**await inventory.stock(session, code, now=now_ms), "name": name})
    return out, total


# -- data completeness ---------------------------------------------------------------------

async def gateway_ids(session: AsyncSession) -> list[str]:
    return list((await session.execute(select(gateways.c.id).order_by(gateways.c.id)))
                .scalars())


def utc_ms(value: datetime) -> int:
    return int(value.astimezone(UTC).timestamp() * 1000)
