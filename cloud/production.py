"""Master data and work orders: every planner action and every status rule, in one place.

Each function works in the caller's ``AsyncSession`` and transaction (it never commits),
writes an ``audit_log`` row for every change it makes (cloud.auth.audit), and raises a
``ProductionError`` subclass instead of returning None::

    ProductionError
    ├── NotFound          no such product / material / machine / BOM / routing / order (404)
    ├── InvalidInput      a value that cannot be used; ``field`` names it (422)
    ├── Duplicate         a code, number or (gateway, device) already taken (409)
    └── StateConflict     an action the current state does not allow (409); carries
                          ``current`` and ``allowed`` (the actions that state does allow)

Work order states (ARCHITECTURE.md, "Cloud model")::

    draft --release--> released --(first attributed count)--> in_progress
    released/in_progress --complete (manual, or automatic)--> completed --close--> closed
    draft/released --cancel--> cancelled

Release copies the product's *current* (highest) BOM and routing versions into
``wo_components`` and ``wo_operations``; later versions never change a released order.

Completion (``completion_mode``): in ``auto`` an operation completes when its good count
reaches the order quantity, and the order completes when its last operation (highest
step) completes. In ``confirm`` counts only move statuses to in_progress; a planner
completes operations (``complete_operation``) or the order (``complete_work_order``).
Attribution calls ``on_operation_progress`` after every change of an operation's
good/scrap; it is the only place that derives statuses from counts.

Material quantities are integers in micro-units (``*_u``); ``to_micro``/``from_micro``
convert at the edges (API, import).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final

import structlog
from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.attribution import adopt_device
from cloud.auth import Actor, audit
from cloud.dispatch import end_order_dispatches
from cloud.models import (
    COMPLETION_MODES,
    Bom,
    BomLine,
    Gateway,
    Machine,
    Material,
    Product,
    Routing,
    RoutingOp,
    WoComponent,
    WoOperation,
    WorkOrder,
    attributions,
)

log = structlog.get_logger(__name__)

MICRO: Final = 1_000_000
SYSTEM: Final = "system"  # the audit actor of transitions derived from counts

# What a planner may do to a work order in each state (the 409 answer lists these).
WORK_ORDER_ACTIONS: Final[dict[str, tuple[str, ...]]] = {
    "draft": ("update", "release", "cancel"),
    "released": ("update", "cancel", "complete"),
    "in_progress": ("update", "complete"),
    "completed": ("close",),
    "closed": (),
    "cancelled": (),
}
OPERATION_ACTIONS: Final[dict[str, tuple[str, ...]]] = {
    "pending": ("stop", "complete"),
    "in_progress": ("stop", "complete"),
    "on_hold": ("resume", "complete"),
    "completed": (),
}
OPEN_ORDER: Final = ("released", "in_progress")


class ProductionError(Exception):
    """Root of this module's errors; the message is meant for the planner."""


class NotFound(ProductionError):
    pass


class InvalidInput(ProductionError):
    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class Duplicate(ProductionError):
    pass


class StateConflict(ProductionError):
    """``action`` is not allowed on ``entity`` in state ``current``; ``allowed`` lists
    what that state does allow."""

    def __init__(self, entity: str, entity_id: str, action: str, current: str,
                 allowed: Sequence[str], reason: str | None = None) -> None:
        allowed_txt = ", ".join(allowed) if allowed else "nothing (final state)"
        super().__init__(reason or f"{entity} {entity_id} is {current}: cannot {action} "
                         f"(allowed: {allowed_txt})")
        self.entity, self.entity_id, self.action = entity, entity_id, action
        self.current, self.allowed = current, tuple(allowed)


# -- quantities -----------------------------------------------------------------------

def to_micro(value: str | int | float | Decimal, *, what: str = "quantity") -> int:
    """An exact decimal (``"2.5"``, ``2``, ``Decimal``) as integer micro-units. More than
    six decimals, negatives, NaN and infinities raise InvalidInput. Floats go through
    their shortest repr (``0.1`` -> 100000), so JSON numbers convert as written."""
    try:
        dec = Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value).strip())
    except InvalidOperation:
        raise InvalidInput(f"{what} {value!r} is not a number", what) from None
    if not dec.is_finite():
        raise InvalidInput(f"{what} {value!r} is not a finite number", what)
    if dec < 0:
        raise InvalidInput(f"{what} {value!r} is negative", what)
    micro = dec * MICRO
    if micro != micro.to_integral_value():
        raise InvalidInput(f"{what} {value!r} has more than 6 decimals", what)
    return int(micro)


def from_micro(value_u: int | None) -> str | None:
    """Micro-units as an exact decimal string (``2500000`` -> ``"2.5"``)."""
    if value_u is None:
        return None
    dec = (Decimal(value_u) / MICRO).normalize()
    return format(dec, "f")


def _now() -> datetime:
    return datetime.now(UTC)


def _name(actor: Actor | str) -> str:
    return actor.name if isinstance(actor, Actor) else actor


# -- master data ----------------------------------------------------------------------

async def _product(session: AsyncSession, code: str) -> Product:
    row = await session.scalar(select(Product).where(Product.code == code))
    if row is None:
        raise NotFound(f"product code {code!r} unknown")
    return row


async def _material(session: AsyncSession, code: str) -> Material:
    row = await session.scalar(select(Material).where(Material.code == code))
    if row is None:
        raise NotFound(f"material code {code!r} unknown")
    return row


async def get_product(session: AsyncSession, code: str) -> Product:
    return await _product(session, code)


async def get_material(session: AsyncSession, code: str) -> Material:
    return await _material(session, code)


def _text(value: Any, what: str, *, max_len: int, required: bool = True) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise InvalidInput(f"{what} is required", what)
        return None
    text = str(value).strip()
    if len(text) > max_len:
        raise InvalidInput(f"{what} {text[:20]!r}... is longer than {max_len} characters", what)
    return text


def _int(value: Any, what: str, *, minimum: int = 0) -> int:
    try:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError
        number = int(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"{what} {value!r} is not a whole number", what) from None
    if number < minimum:
        raise InvalidInput(f"{what} {number} is below {minimum}", what)
    return number


async def upsert_product(session: AsyncSession, actor: Actor | str, code: str, name: str,
                         unit: str = "pcs") -> Product:
    """Create the product ``code`` or update its name and unit. Idempotent."""
    code = _text(code, "code", max_len=64) or ""
    name = _text(name, "name", max_len=255) or ""
    unit = _text(unit, "unit", max_len=16) or ""
    row = await session.scalar(select(Product).where(Product.code == code))
    if row is None:
        row = Product(code=code, name=name, unit=unit)
        session.add(row)
        action = "product.create"
    elif (row.name, row.unit) == (name, unit):
        return row
    else:
        row.name, row.unit = name, unit
        action = "product.update"
    await session.flush()
    await audit(session, actor, action, "product", code, {"name": name, "unit": unit})
    return row


async def upsert_material(session: AsyncSession, actor: Actor | str, code: str, name: str,
                          unit: str, lead_time_days: int = 0,
                          safety_stock_manual_u: int | None = None) -> Material:
    """Create the material ``code`` or update it. ``safety_stock_manual_u`` None means
    "computed from usage". Idempotent."""
    code = _text(code, "code", max_len=64) or ""
    name = _text(name, "name", max_len=255) or ""
    unit = _text(unit, "unit", max_len=16) or ""
    lead = _int(lead_time_days, "lead_time_days")
    row = await session.scalar(select(Material).where(Material.code == code))
    values = {"name": name, "unit": unit, "lead_time_days": lead,
              "safety_stock_manual_u": safety_stock_manual_u}
    if row is None:
        row = Material(code=code, **values)
        session.add(row)
        action = "material.create"
    elif all(getattr(row, k) == v for k, v in values.items()):
        return row
    else:
        for k, v in values.items():
            setattr(row, k, v)
        action = "material.update"
    await session.flush()
    await audit(session, actor, action, "material", code,
                {**values, "safety_stock_manual": from_micro(safety_stock_manual_u)})
    return row


async def create_machine(session: AsyncSession, actor: Actor | str, gateway_id: str,
                         device: str, name: str, work_center: str | None = None) -> Machine:
    """A machine for one device of one gateway. Duplicate if (gateway, device) exists.

    Counts the device sent before it was registered (kept under gateway and device,
    cloud/attribution.py) become the machine's production in the same transaction:
    unassigned, or the order's where a dispatch of the new machine covers them (none can
    yet, so later dispatches and assignments pick them up). The gateway row is locked
    first (PostgreSQL), as ingest does, so no batch of that gateway can store counts for
    the device without a machine while the machine is being created."""
    device = _text(device, "device", max_len=128) or ""
    name = _text(name, "name", max_len=128) or ""
    work_center = _text(work_center, "work_center", max_len=64, required=False)
    if await session.scalar(select(Gateway.id).where(Gateway.id == gateway_id)
                            .with_for_update()) is None:
        raise NotFound(f"gateway {gateway_id!r} unknown")
    if await session.scalar(select(Machine.id).where(
            Machine.gateway_id == gateway_id, Machine.device == device)) is not None:
        raise Duplicate(f"gateway {gateway_id!r} device {device!r} is already a machine")
    row = Machine(gateway_id=gateway_id, device=device, name=name, work_center=work_center)
    session.add(row)
    await session.flush()
    adopted = await adopt_device(session, row.id)
    await audit(session, actor, "machine.create", "machine", row.id,
                {"gateway_id": gateway_id, "device": device, "name": name,
                 "work_center": work_center, "adopted_records": adopted})
    return row


async def update_machine(session: AsyncSession, actor: Actor | str, machine_id: int, *,
                         name: str | None = None, work_center: str | None = None,
                         clear_work_center: bool = False) -> Machine:
    row = await session.get(Machine, machine_id)
    if row is None:
        raise NotFound(f"machine {machine_id} unknown")
    changes: dict[str, Any] = {}
    if name is not None:
        changes["name"] = _text(name, "name", max_len=128)
    if work_center is not None or clear_work_center:
        changes["work_center"] = _text(work_center, "work_center", max_len=64, required=False)
    for k, v in changes.items():
        setattr(row, k, v)
    if changes:
        await audit(session, actor, "machine.update", "machine", row.id, changes)
    return row


@dataclass(frozen=True, slots=True)
class BomLineIn:
    """One component line as given (API, import): quantity per unit in micro-units."""

    material: str
    qty_per_unit_u: int
    scrap_factor: float = 0.0
    backflush_scrap: bool = False
    step: int | None = None


@dataclass(frozen=True, slots=True)
class RoutingOpIn:
    step: int
    name: str
    machine_id: int | None = None
    work_center: str | None = None
    ideal_cycle_ms: int | None = None
    cavities: int = 1


async def create_bom(session: AsyncSession, actor: Actor | str, product_code: str,
                     lines: Sequence[BomLineIn], version: int | None = None) -> Bom:
    """A new BOM version of ``product_code`` (default: highest + 1; it becomes current).
    Duplicate if that version exists; InvalidInput for an empty BOM or a bad line."""
    product = await _product(session, product_code)
    if not lines:
        raise InvalidInput(f"BOM of {product_code!r} has no lines", "lines")
    version = await _next_version(session, Bom, product.id, version)
    bom = Bom(product_id=product.id, version=version, created=_now())
    session.add(bom)
    await session.flush()
    for i, line in enumerate(lines, 1):
        material = await _material(session, line.material)
        if line.qty_per_unit_u <= 0:
            raise InvalidInput(f"line {i}: quantity per unit of {line.material!r} must be "
                               "above 0", "qty_per_unit")
        if not 0 <= line.scrap_factor < 10:
            raise InvalidInput(f"line {i}: scrap factor {line.scrap_factor} must be a "
                               "fraction from 0 (0.02 = 2 %)", "scrap_factor")
        session.add(BomLine(bom_id=bom.id, material_id=material.id,
                            qty_per_unit_u=line.qty_per_unit_u,
                            scrap_factor=float(line.scrap_factor),
                            backflush_scrap=bool(line.backflush_scrap), step=line.step))
    await session.flush()
    await audit(session, actor, "bom.create", "bom", f"{product_code}/v{version}",
                {"product": product_code, "version": version, "lines": len(lines)})
    return bom


async def create_routing(session: AsyncSession, actor: Actor | str, product_code: str,
                         ops: Sequence[RoutingOpIn], version: int | None = None) -> Routing:
    """A new routing version of ``product_code`` (default: highest + 1; it becomes
    current). Steps must be unique; each operation names a machine or a work center
    (InvalidInput otherwise, field ``work_center``)."""
    product = await _product(session, product_code)
    if not ops:
        raise InvalidInput(f"routing of {product_code!r} has no operations", "operations")
    for op in ops:
        if op.machine_id is None and not (op.work_center or "").strip():
            raise InvalidInput(f"routing of {product_code!r}: step {op.step} ({op.name!r}) "
                               "names neither a machine nor a work center; give one "
                               "(machine_id, or work_center e.g. \"WC-1\")", "work_center")
    steps = [op.step for op in ops]
    if len(set(steps)) != len(steps):
        raise InvalidInput(f"routing of {product_code!r} repeats a step: {sorted(steps)}",
                           "step")
    version = await _next_version(session, Routing, product.id, version)
    routing = Routing(product_id=product.id, version=version, created=_now())
    session.add(routing)
    await session.flush()
    for op in sorted(ops, key=lambda o: o.step):
        if op.machine_id is not None and await session.get(Machine, op.machine_id) is None:
            raise NotFound(f"step {op.step}: machine {op.machine_id} unknown")
        if op.cavities < 1:
            raise InvalidInput(f"step {op.step}: cavities must be at least 1", "cavities")
        if op.ideal_cycle_ms is not None and op.ideal_cycle_ms <= 0:
            raise InvalidInput(f"step {op.step}: ideal cycle time must be above 0",
                               "ideal_cycle_ms")
        session.add(RoutingOp(routing_id=routing.id, step=op.step,
                              name=_text(op.name, "name", max_len=128),
                              machine_id=op.machine_id,
                              work_center=_text(op.work_center, "work_center", max_len=64,
                                                required=False),
                              ideal_cycle_ms=op.ideal_cycle_ms, cavities=op.cavities))
    await session.flush()
    await audit(session, actor, "routing.create", "routing", f"{product_code}/v{version}",
                {"product": product_code, "version": version, "operations": len(ops)})
    return routing


async def _next_version(session: AsyncSession, model: type[Bom] | type[Routing],
                        product_id: int, version: int | None) -> int:
    highest = await session.scalar(select(func.max(model.version)).where(
        model.product_id == product_id))
    if version is None:
        return (highest or 0) + 1
    version = _int(version, "version", minimum=1)
    if await session.scalar(select(model.id).where(model.product_id == product_id,
                                                   model.version == version)) is not None:
        kind = "BOM" if model is Bom else "routing"
        raise Duplicate(f"{kind} version {version} exists already (versions are immutable; "
                        "give a new version)")
    return version


async def current_bom(session: AsyncSession, product_id: int) -> Bom | None:
    return await session.scalar(select(Bom).where(Bom.product_id == product_id)
                                .order_by(Bom.version.desc()).limit(1))


async def current_routing(session: AsyncSession, product_id: int) -> Routing | None:
    return await session.scalar(select(Routing).where(Routing.product_id == product_id)
                                .order_by(Routing.version.desc()).limit(1))


# -- work orders ----------------------------------------------------------------------

async def get_work_order(session: AsyncSession, number: str, *,
                         for_update: bool = False) -> WorkOrder:
    stmt = select(WorkOrder).where(WorkOrder.number == number)
    if for_update:  # a locking read sees the latest row, also over a loaded object
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    row = await session.scalar(stmt)
    if row is None:
        raise NotFound(f"work order {number!r} unknown")
    return row


def _check(order: WorkOrder, action: str) -> None:
    allowed = WORK_ORDER_ACTIONS[order.status]
    if action not in allowed:
        raise StateConflict("work order", order.number, action, order.status, allowed)


def _due(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise InvalidInput("due must carry a time zone (UTC: ...Z)", "due")
    return None if value is None else value.astimezone(UTC)


def _mode(value: str) -> str:
    if value not in COMPLETION_MODES:
        raise InvalidInput(f"completion_mode {value!r} is not one of "
                           f"{', '.join(COMPLETION_MODES)}", "completion_mode")
    return value


async def create_work_order(session: AsyncSession, actor: Actor | str, number: str,
                            product_code: str, quantity: int, *, due: datetime | None = None,
                            customer: str | None = None, priority: int = 0,
                            completion_mode: str = "auto") -> WorkOrder:
    """A new work order in ``draft``. Duplicate if ``number`` is taken."""
    number = _text(number, "number", max_len=64) or ""
    product = await _product(session, product_code)
    quantity = _int(quantity, "quantity", minimum=1)
    if await session.scalar(select(WorkOrder.id).where(WorkOrder.number == number)):
        raise Duplicate(f"work order {number!r} exists already")
    now = _now()
    order = WorkOrder(number=number, product_id=product.id, quantity=quantity, due=_due(due),
                      customer=_text(customer, "customer", max_len=128, required=False),
                      priority=_int(priority, "priority", minimum=-1_000_000),
                      status="draft", completion_mode=_mode(completion_mode),
                      created=now, updated=now)
    session.add(order)
    await session.flush()
    await audit(session, actor, "work_order.create", "work_order", number,
                {"product": product_code, "quantity": quantity,
                 "due": due.isoformat() if due else None, "customer": order.customer,
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
    _check(order, "update")
    changes: dict[str, Any] = {}
    if product_code is not None or quantity is not None:
        if order.status != "draft":
            raise StateConflict("work order", number, "update", order.status,
                                WORK_ORDER_ACTIONS[order.status],
                                reason=f"work order {number} is {order.status}: product and "
                                "quantity can change only in draft (allowed: due, customer, "
                                "priority, completion_mode)")
        if product_code is not None:
            order.product_id = (await _product(session, product_code)).id
            changes["product"] = product_code
        if quantity is not None:
            order.quantity = changes["quantity"] = _int(quantity, "quantity", minimum=1)
    if due is not _UNSET:
        order.due = _due(due)
        changes["due"] = order.due.isoformat() if order.due else None
    if customer is not _UNSET:
        order.customer = changes["customer"] = _text(customer, "customer", max_len=128,
                                                     required=False)
    if priority is not None:
        order.priority = changes["priority"] = _int(priority, "priority", minimum=-1_000_000)
    if completion_mode is not None:
        order.completion_mode = changes["completion_mode"] = _mode(completion_mode)
    if not changes:
        return order
    order.updated = _now()
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
    _check(order, "release")
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
    now = _now()
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
    end at ``now`` (cloud/dispatch.py ``end_order_dispatches``: counts after it become
    unassigned and no longer backflush for this order), then the transition, one
    transaction. The machines are locked before the order, as ingest does."""
    _check(await get_work_order(session, number), action)
    now = _now()
    ended = await _end_dispatches(session, actor, number, now, f"work_order.{action}")
    order = await get_work_order(session, number, for_update=True)
    return await _transition(session, actor, order, action, to, reason=reason, at=now,
                             detail={"dispatches_ended": ended} if ended else None)


async def _end_dispatches(session: AsyncSession, actor: Actor | str, number: str,
                          at: datetime, why: str) -> list[int]:
    order_id = await session.scalar(select(WorkOrder.id).where(WorkOrder.number == number))
    if order_id is None:
        return []
    return await end_order_dispatches(session, actor, order_id,
                                      int(at.timestamp() * 1000), why)


_STAMP: Final = {"released": "released_at", "in_progress": "started_at",
                 "completed": "completed_at", "closed": "closed_at",
                 "cancelled": "cancelled_at"}


async def _transition(session: AsyncSession, actor: Actor | str, order: WorkOrder,
                      action: str, to: str, *, reason: str | None = None,
                      at: datetime | None = None, check: bool = True,
                      detail: dict[str, Any] | None = None) -> WorkOrder:
    if check:
        _check(order, action)
    before = order.status
    now = _now()
    order.status, order.updated = to, now
    setattr(order, _STAMP[to], at or now)
    if to == "completed":
        order.completed_by = _name(actor)
    elif before == "completed":
        order.completed_at = order.completed_by = None
    await session.flush()
    await audit(session, actor, f"work_order.{action}", "work_order", order.number,
                {"from": before, "to": to, **({"reason": reason} if reason else {}),
                 **(detail or {})})
    log.info("work_order_transition", number=order.number, action=action, before=before,
             to=to)
    return order


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
    if await _is_last(session, op):
        await _end_dispatches(session, actor, number, _now(), "operation.complete")
    order, op = await _operation(session, number, step)
    _check_op(order, op, "complete")
    before, op.status, op.completed_at = op.status, "completed", _now()
    op.completed_by = _name(actor)
    await session.flush()
    await audit(session, actor, "operation.complete", "work_order", number,
                {"step": step, "from": before, "to": "completed", "good": op.good})
    if await _is_last(session, op):
        await _transition(session, actor, order, "complete", "completed", check=False,
                          detail={"by_operation": step})
    return op


async def _is_last(session: AsyncSession, op: WoOperation) -> bool:
    last = await session.scalar(select(func.max(WoOperation.step)).where(
        WoOperation.work_order_id == op.work_order_id))
    return bool(op.step == last)


@dataclass(slots=True)
class Progress:
    """What ``on_operation_progress`` changed: (entity, from, to) per transition."""

    transitions: list[tuple[str, str, str]] = field(default_factory=list)


async def on_operation_progress(session: AsyncSession, wo_operation_id: int, *,
                                at: datetime | None = None,
                                first_ts: int | None = None) -> Progress:
    """Derive statuses from an operation's counts; call after every change of its
    ``good``/``scrap`` (attribution, re-attribution). The only place these rules live:

    - first count on a pending operation -> operation in_progress; on a released order
      -> order in_progress;
    - ``auto`` mode: good >= order quantity -> operation completed; the last operation
      completed -> order completed (from released or in_progress);
    - the times are the records' own, as if every record had arrived on time: started_at
      is the ts of the operation's first attributed count, completed_at the ts of the
      count that brought its good pieces (in ts order) to the quantity; the order takes
      its operation's. ``first_ts`` (epoch ms): the earliest of the counts that just
      joined the operation; a late count from before its started_at moves the
      operation's and the order's started_at back to it. ``at`` (default now) only where
      no record says;
    - ``auto`` mode: good < quantity on an operation the counts completed (counts taken
      away by re-attribution) -> operation back to in_progress, and if it is the last
      operation and the counts completed the order, the order back to in_progress; what
      a planner completed stays completed (``completed_by``);
    - an operation on hold keeps its status (its order still starts); closed and
      cancelled orders keep theirs.

    Idempotent (a second call with unchanged counts changes nothing). Locks the order row
    (PostgreSQL) so concurrent attributions to one order serialise their status rules.
    Audited as actor ``system``. Works in the caller's transaction; never commits."""
    op = await session.get(WoOperation, wo_operation_id, populate_existing=True)
    if op is None:
        raise NotFound(f"work order operation {wo_operation_id} unknown")
    order = await session.scalar(select(WorkOrder).where(WorkOrder.id == op.work_order_id)
                                 .with_for_update().execution_options(populate_existing=True))
    assert order is not None
    result = Progress()
    if order.status not in (*OPEN_ORDER, "completed"):
        return result
    when = at or _now()
    counted = op.good + op.scrap > 0
    auto = order.completion_mode == "auto"

    async def op_to(to: str) -> None:
        before = op.status
        op.status = to
        if to == "in_progress" and op.started_at is None:
            op.started_at = await _first_count_at(session, op.id) or when
        op.completed_at = (await _crossing_at(session, op.id, order.quantity) or when
                           if to == "completed" else None)
        op.completed_by = SYSTEM if to == "completed" else None
        result.transitions.append((f"operation {op.step}", before, to))
        await audit(session, SYSTEM, f"operation.{'reopen' if before == 'completed' else to}",
                    "work_order", order.number,
                    {"step": op.step, "from": before, "to": to, "good": op.good,
                     "scrap": op.scrap, "quantity": order.quantity})

    if op.status == "pending" and counted:
        await op_to("in_progress")
    if auto and op.status in ("pending", "in_progress") and op.good >= order.quantity:
        await op_to("completed")
    reopened_last = False
    if (auto and op.status == "completed" and op.completed_by == SYSTEM
            and op.good < order.quantity):
        await op_to("in_progress")
        reopened_last = await _is_last(session, op)

    if order.status == "released" and counted:
        started = op.started_at or await _first_count_at(session, op.id) or when
        await _transition(session, SYSTEM, order, "start", "in_progress", at=started,
                          check=False, detail={"by_operation": op.step})
        result.transitions.append(("work order", "released", "in_progress"))
    if (auto and order.status in OPEN_ORDER and op.status == "completed"
            and await _is_last(session, op)):
        before = order.status
        await _transition(session, SYSTEM, order, "complete", "completed",
                          at=op.completed_at or when, check=False,
                          detail={"by_operation": op.step, "auto": True})
        result.transitions.append(("work order", before, "completed"))
    elif reopened_last and order.status == "completed" and order.completed_by == SYSTEM:
        await _transition(session, SYSTEM, order, "reopen", "in_progress", check=False,
                          detail={"by_operation": op.step, "good": op.good,
                                  "quantity": order.quantity})
        result.transitions.append(("work order", "completed", "in_progress"))
    early = _ms_to_dt(first_ts)
    if early is not None and op.started_at is not None and early < op.started_at:
        op.started_at = early  # a late count from before the start: as if on time
    if early is not None and order.started_at is not None and early < order.started_at:
        order.started_at = early
    await session.flush()
    return result


def _ms_to_dt(ts: int | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts / 1000, UTC)


async def _first_count_at(session: AsyncSession, wo_operation_id: int) -> datetime | None:
    """The ts of the operation's first attributed count with pieces (None: none)."""
    return _ms_to_dt(await session.scalar(
        select(func.min(attributions.c.ts)).where(
            attributions.c.wo_operation_id == wo_operation_id,
            or_(attributions.c.good != 0, attributions.c.scrap != 0))))


async def _crossing_at(session: AsyncSession, wo_operation_id: int,
                       quantity: int) -> datetime | None:
    """The ts of the attributed count that, in ts order, brought the operation's good
    pieces to ``quantity`` (None: they never reached it)."""
    running = (select(attributions.c.ts, func.sum(attributions.c.good).over(
        order_by=(attributions.c.ts, attributions.c.gateway_id, attributions.c.seq))
        .label("cum")).where(attributions.c.wo_operation_id == wo_operation_id,
                             attributions.c.good != 0).subquery())
    return _ms_to_dt(await session.scalar(
        select(running.c.ts).where(running.c.cum >= quantity)
        .order_by(running.c.ts).limit(1)))


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
        pattern = f"%{_like_escape(flt.q.lower())}%"
        stmt = stmt.where(or_(func.lower(WorkOrder.number).like(pattern, escape="\\"),
                              func.lower(WorkOrder.customer).like(pattern, escape="\\")))
    total = await session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    rows = (await session.execute(
        stmt.order_by(WorkOrder.due.is_(None), WorkOrder.due, WorkOrder.priority.desc(),
                      WorkOrder.number).limit(limit).offset(offset))).all()
    return [(wo, code) for wo, code in rows], int(total)


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def like_pattern(text: str) -> str:
    """A case-folded LIKE pattern matching ``text`` anywhere (escape char backslash)."""
    return f"%{_like_escape(text.lower())}%"
