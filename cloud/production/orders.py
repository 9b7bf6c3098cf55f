"""Work orders and their operations: what a planner does to them, and how they are listed.

Each function works in the caller's ``AsyncSession`` and transaction (it never commits),
audits every change (``cloud.core.audit``) and raises ``NotFound``, ``Invalid``,
``Duplicate`` or ``StateConflict`` (with the actions the state allows) instead of returning
None. The status rules themselves, and why an order changed status, are in
cloud/production/status.py; this module checks and transitions through it.

Release copies the product's *current* (highest) BOM and routing versions into
``wo_components`` and ``wo_operations``; later versions never change a released order.
A planner's cancel, complete or close ends the order's running dispatches at that moment
(cloud/production/dispatch.py ``end_order_dispatches``), in the same transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.auth import Actor
from cloud.core import clock, fields
from cloud.core.audit import actor_name, audit
from cloud.core.db import like_pattern
from cloud.core.errors import Duplicate, Invalid, NotFound, StateConflict
from cloud.core.fields import text, whole
from cloud.core.models import (
    COMPLETION_MODES,
    BomLine,
    Product,
    RoutingOp,
    WoComponent,
    WoOperation,
    WorkOrder,
)
from cloud.production.dispatch import end_order_dispatches
from cloud.production.master import current_bom, current_routing, get_product
from cloud.production.status import (
    OPEN_ORDER,
    OPERATION_ACTIONS,
    WORK_ORDER_ACTIONS,
    check_action,
    is_last_operation,
    on_operation_progress,
    transition,
)


async def get_work_order(session: AsyncSession, number: str, *,
                         for_update: bool = False) -> WorkOrder:
    stmt = select(WorkOrder).where(WorkOrder.number == number)
    if for_update:  # a locking read sees the latest row, also over a loaded object
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    row = await session.scalar(stmt)
    if row is None:
        raise NotFound(f"work order {number!r} unknown")
    return row


def _due(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise Invalid("due must carry a time zone (UTC: ...Z)", "due")
    return None if value is None else value.astimezone(UTC)


def _mode(value: str) -> str:
    if value not in COMPLETION_MODES:
        raise Invalid(f"completion_mode {value!r} is not one of "
                      f"{', '.join(COMPLETION_MODES)}", "completion_mode")
    return value


async def create_work_order(session: AsyncSession, actor: Actor | str, number: str,
                            product_code: str, quantity: int, *, due: datetime | None = None,
                            customer: str | None = None, priority: int = 0,
                            completion_mode: str = "auto") -> WorkOrder:
    """A new work order in ``draft``. Duplicate if ``number`` is taken."""
    number = fields.code(number, "number", max_len=64)
    product = await get_product(session, product_code)
    quantity = whole(quantity, "quantity", minimum=1, maximum=fields.INT64_MAX)
    if await session.scalar(select(WorkOrder.id).where(WorkOrder.number == number)):
        raise Duplicate(f"work order {number!r} exists already")
    now = clock.now()
    order = WorkOrder(number=number, product_id=product.id, quantity=quantity, due=_due(due),
                      customer=text(customer, "customer", max_len=128, required=False),
                      priority=whole(priority, "priority", minimum=-1_000_000),
                      status="draft", completion_mode=_mode(completion_mode),
                      created=now, updated=now)
    session.add(order)
    await session.flush()
    await audit(session, actor, "work_order.create", "work_order", number,
                {"product": product_code, "quantity": quantity,
                 "due": clock.iso(due), "customer": order.customer,
                 "priority": order.priority, "completion_mode": completion_mode})
    return order


_UNSET: Any = object()


async def update_work_order(session: AsyncSession, actor: Actor | str, number: str, *,
                            quantity: int | None = None, product_code: str | None = None,
                            due: datetime | None = _UNSET, customer: str | None = _UNSET,
                            priority: int | None = None,
                            completion_mode: str | None = None) -> WorkOrder:
    """Change an open order. Product and quantity only in ``draft`` (release copied the
    BOM and routing for them); due, customer, priority and completion mode while draft,
    released or in progress. A switch to ``auto`` re-applies the completion rules."""
    order = await get_work_order(session, number, for_update=True)
    check_action(order, "update")
    changes: dict[str, Any] = {}
    if product_code is not None or quantity is not None:
        if order.status != "draft":
            raise StateConflict("work order", number, "update", order.status,
                                WORK_ORDER_ACTIONS[order.status],
                                reason=f"work order {number} is {order.status}: product and "
                                "quantity can change only in draft (allowed: due, customer, "
                                "priority, completion_mode)")
        if product_code is not None:
            order.product_id = (await get_product(session, product_code)).id
            changes["product"] = product_code
        if quantity is not None:
            order.quantity = changes["quantity"] = whole(quantity, "quantity", minimum=1,
                                                         maximum=fields.INT64_MAX)
    if due is not _UNSET:
        order.due = _due(due)
        changes["due"] = clock.iso(order.due)
    if customer is not _UNSET:
        order.customer = changes["customer"] = text(customer, "customer", max_len=128,
                                                     required=False)
    if priority is not None:
        order.priority = changes["priority"] = whole(priority, "priority", minimum=-1_000_000)
    if completion_mode is not None:
        order.completion_mode = changes["completion_mode"] = _mode(completion_mode)
    if not changes:
        return order
    order.updated = clock.now()
    await session.flush()
    await audit(session, actor, "work_order.update", "work_order", number, changes)
    if changes.get("completion_mode") == "auto" and order.status in OPEN_ORDER:
        for op_id in (await session.scalars(select(WoOperation.id).where(
                WoOperation.work_order_id == order.id).order_by(WoOperation.step))).all():
            await on_operation_progress(session, op_id)
    return order


async def release_work_order(session: AsyncSession, actor: Actor | str,
                             number: str) -> WorkOrder:
    """draft -> released: copy the product's current routing (required) into
    ``wo_operations`` and its current BOM (optional: a product may have none) into
    ``wo_components``; record both versions on the order."""
    order = await get_work_order(session, number, for_update=True)
    check_action(order, "release")
    product = await session.get(Product, order.product_id)
    assert product is not None
    routing = await current_routing(session, order.product_id)
    if routing is None:
        raise StateConflict("work order", number, "release", order.status,
                            WORK_ORDER_ACTIONS[order.status],
                            reason=f"work order {number}: product {product.code!r} has no "
                            "routing; create or import one before release")
    ops = (await session.scalars(select(RoutingOp).where(RoutingOp.routing_id == routing.id)
                                 .order_by(RoutingOp.step))).all()
    steps = {op.step for op in ops}
    bom = await current_bom(session, order.product_id)
    lines = [] if bom is None else (await session.scalars(
        select(BomLine).where(BomLine.bom_id == bom.id).order_by(BomLine.id))).all()
    for line in lines:
        if line.step is not None and line.step not in steps:
            assert bom is not None
            raise StateConflict("work order", number, "release", order.status,
                                WORK_ORDER_ACTIONS[order.status],
                                reason=f"work order {number}: BOM v{bom.version} consumes a "
                                f"component at step {line.step}, which routing "
                                f"v{routing.version} does not have")
    for op in ops:
        session.add(WoOperation(work_order_id=order.id, step=op.step, name=op.name,
                                machine_id=op.machine_id, work_center=op.work_center,
                                ideal_cycle_ms=op.ideal_cycle_ms, cavities=op.cavities,
                                status="pending", good=0, scrap=0))
    for line in lines:
        session.add(WoComponent(work_order_id=order.id, material_id=line.material_id,
                                qty_per_unit_u=line.qty_per_unit_u,
                                scrap_factor=line.scrap_factor,
                                backflush_scrap=line.backflush_scrap, step=line.step))
    now = clock.now()
    order.status, order.released_at, order.updated = "released", now, now
    order.routing_version = routing.version
    order.bom_version = bom.version if bom is not None else None
    await session.flush()
    await audit(session, actor, "work_order.release", "work_order", number,
                {"from": "draft", "to": "released", "routing_version": routing.version,
                 "bom_version": order.bom_version, "operations": len(ops),
                 "components": len(lines)})
    return order


async def cancel_work_order(session: AsyncSession, actor: Actor | str, number: str,
                            reason: str | None = None) -> WorkOrder:
    """draft/released -> cancelled (nothing was produced for it). Its dispatches end now
    (``_planner_transition``)."""
    return await _planner_transition(session, actor, number, "cancel", "cancelled", reason)


async def complete_work_order(session: AsyncSession, actor: Actor | str, number: str,
                              reason: str | None = None) -> WorkOrder:
    """released/in_progress -> completed by a planner (confirm mode, or an order finished
    short). Operation statuses stay as counted; later counts never reopen it. Its
    dispatches end now (``_planner_transition``)."""
    return await _planner_transition(session, actor, number, "complete", "completed", reason)


async def close_work_order(session: AsyncSession, actor: Actor | str, number: str,
                           reason: str | None = None) -> WorkOrder:
    """completed -> closed (final: statuses no longer move; counts from before the close
    that arrive late still attribute, by their time). Its dispatches still running (an
    order its counts completed keeps running for over-production) end now."""
    return await _planner_transition(session, actor, number, "close", "closed", reason)


async def _planner_transition(session: AsyncSession, actor: Actor | str, number: str,
                              action: str, to: str, reason: str | None) -> WorkOrder:
    """A planner's cancel/complete/close at ``now``: the order's dispatches running then
    end at ``now`` (cloud/production/dispatch.py ``end_order_dispatches``: counts after it become
    unassigned and no longer backflush for this order), then the transition, one
    transaction. The machines are locked before the order, as ingest does."""
    check_action(await get_work_order(session, number), action)
    now = clock.now()
    ended = await _end_dispatches(session, actor, number, now, f"work_order.{action}")
    order = await get_work_order(session, number, for_update=True)
    return await transition(session, actor, order, action, to, reason=reason, at=now,
                             detail={"dispatches_ended": ended} if ended else None)


async def _end_dispatches(session: AsyncSession, actor: Actor | str, number: str,
                          at: datetime, why: str) -> list[int]:
    order_id = await session.scalar(select(WorkOrder.id).where(WorkOrder.number == number))
    if order_id is None:
        return []
    return await end_order_dispatches(session, actor, order_id,
                                      int(at.timestamp() * 1000), why)


# -- operations -----------------------------------------------------------------------

async def _operation(session: AsyncSession, number: str, step: int, *, lock: bool = True
                     ) -> tuple[WorkOrder, WoOperation]:
    order = await get_work_order(session, number, for_update=lock)
    op = await session.scalar(select(WoOperation).where(
        WoOperation.work_order_id == order.id, WoOperation.step == step))
    if op is None:
        raise NotFound(f"work order {number!r} has no operation at step {step}"
                       + (" (not released yet)" if order.status == "draft" else ""))
    return order, op


def _check_op(order: WorkOrder, op: WoOperation, action: str) -> None:
    if order.status not in OPEN_ORDER:
        raise StateConflict("work order", order.number, action, order.status,
                            WORK_ORDER_ACTIONS[order.status],
                            reason=f"work order {order.number} is {order.status}: its "
                            f"operations cannot {action}")
    allowed = OPERATION_ACTIONS[op.status]
    if action not in allowed:
        raise StateConflict("operation", f"{order.number}/{op.step}", action, op.status,
                            allowed)


async def stop_operation(session: AsyncSession, actor: Actor | str, number: str, step: int,
                         reason: str | None = None) -> WoOperation:
    """Pause an operation: pending/in_progress -> on_hold. Counts still attribute to it;
    its status no longer follows them until ``resume_operation``."""
    order, op = await _operation(session, number, step)
    _check_op(order, op, "stop")
    before, op.status = op.status, "on_hold"
    await session.flush()
    await audit(session, actor, "operation.stop", "work_order", number,
                {"step": step, "from": before, "to": "on_hold",
                 **({"reason": reason} if reason else {})})
    return op


async def resume_operation(session: AsyncSession, actor: Actor | str, number: str,
                           step: int) -> WoOperation:
    """on_hold -> in_progress (or pending if nothing was counted yet), then the
    completion rules apply again."""
    order, op = await _operation(session, number, step)
    _check_op(order, op, "resume")
    op.status = "in_progress" if (op.good + op.scrap > 0 or op.started_at) else "pending"
    await session.flush()
    await audit(session, actor, "operation.resume", "work_order", number,
                {"step": step, "from": "on_hold", "to": op.status})
    await on_operation_progress(session, op.id)
    return op


async def complete_operation(session: AsyncSession, actor: Actor | str, number: str,
                             step: int) -> WoOperation:
    """A planner confirms an operation done (confirm mode, or short). Completing the last
    operation completes the order (and ends its dispatches, as ``complete_work_order``)."""
    order, op = await _operation(session, number, step, lock=False)
    _check_op(order, op, "complete")
    if await is_last_operation(session, op):
        await _end_dispatches(session, actor, number, clock.now(), "operation.complete")
    order, op = await _operation(session, number, step)
    _check_op(order, op, "complete")
    before, op.status, op.completed_at = op.status, "completed", clock.now()
    op.completed_by = actor_name(actor)
    await session.flush()
    await audit(session, actor, "operation.complete", "work_order", number,
                {"step": step, "from": before, "to": "completed", "good": op.good})
    if await is_last_operation(session, op):
        await transition(session, actor, order, "complete", "completed", check=False,
                          detail={"by_operation": step})
    return op


# -- queries --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class WorkOrderFilter:
    status: Sequence[str] = ()
    customer: str | None = None
    product: str | None = None
    due_from: datetime | None = None
    due_to: datetime | None = None
    q: str | None = None  # substring of number or customer


async def list_work_orders(session: AsyncSession, flt: WorkOrderFilter, *, limit: int,
                           offset: int) -> tuple[list[tuple[WorkOrder, str]], int]:
    """Orders matching ``flt`` with their product code, earliest due first (no due last),
    then higher priority, then number; and the total count of matches."""
    stmt = select(WorkOrder, Product.code).join(Product, Product.id == WorkOrder.product_id)
    if flt.status:
        stmt = stmt.where(WorkOrder.status.in_(list(flt.status)))
    if flt.customer is not None:
        stmt = stmt.where(WorkOrder.customer == flt.customer)
    if flt.product is not None:
        stmt = stmt.where(Product.code == flt.product)
    if flt.due_from is not None:
        stmt = stmt.where(WorkOrder.due >= flt.due_from)
    if flt.due_to is not None:
        stmt = stmt.where(WorkOrder.due < flt.due_to)
    if flt.q:
        pattern = like_pattern(flt.q)
        stmt = stmt.where(or_(func.lower(WorkOrder.number).like(pattern, escape="\\"),
                              func.lower(WorkOrder.customer).like(pattern, escape="\\")))
    total = await session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    rows = (await session.execute(
        stmt.order_by(WorkOrder.due.is_(None), WorkOrder.due, WorkOrder.priority.desc(),
                      WorkOrder.number).limit(limit).offset(offset))).all()
    return [(wo, code) for wo, code in rows], int(total)
