"""REST API of master data, work orders and import, under ``/api/v1`` (OpenAPI tags
machines, products, materials, boms, routings, work-orders, import).

Access: every person (viewer and up) reads. Planners and admins change products,
materials, BOMs and routings, act on work orders and import files; machines bind a
gateway's device, so only admins create or change them. Gateway tokens get 403.

Lists are paginated by ``limit`` (1..500, default 50) and ``offset``, newest-independent
and stable (ordered by a unique key), and answer ``{items, total, limit, offset}``.

Material quantities travel as exact decimal strings (``"2.5"``; a JSON number is taken as
written) and are stored as micro-units (cloud/core/models.py).

Errors are JSON ``{error, detail}``: 404 ``not_found``; 422 ``invalid`` (+ ``field``);
409 ``duplicate``; 409 ``invalid_state`` (+ ``current``, ``allowed``: the actions the
current state allows); 422 ``import_failed`` (+ ``errors``: every row-numbered problem;
nothing was imported).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final, TypeVar

from fastapi import APIRouter, File, Query, Request, UploadFile
from pydantic import BaseModel, Field
from sqlalchemy import Select, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from cloud import production as prod
from cloud.api.deps import Admin, Db, Limit, Offset, Planner, Viewer
from cloud.api.paging import paged
from cloud.api.schemas import Int32, NonNegInt64, Out, Page, SearchText, Timestamp
from cloud.core import clock, plant
from cloud.core.db import like_pattern
from cloud.core.errors import Invalid, NotFound
from cloud.core.fields import whole
from cloud.core.models import (
    WORK_ORDER_STATUSES,
    Bom,
    BomLine,
    Machine,
    Material,
    Product,
    Routing,
    RoutingOp,
    WoComponent,
    WoOperation,
    WorkOrder,
)
from cloud.core.quantities import from_micro, to_micro

MAX_UPLOAD: Final = 20 * 1024 * 1024

router = APIRouter(prefix="/api/v1")
Quantity = str | int | float
DecimalText = Annotated[str, Field(description="exact decimal (micro-unit precision)",
                                   examples=["2.5"])]
Versioned = TypeVar("Versioned", Bom, Routing)


def _micro(value: Quantity | None, what: str) -> int | None:
    return None if value is None else to_micro(value, what=what)


def _decimal(value_u: int) -> str:
    text = from_micro(value_u)
    assert text is not None
    return text


# -- machines -------------------------------------------------------------------------

class MachineIn(BaseModel):
    gateway_id: str
    device: str
    name: str
    work_center: str | None = None


class MachinePatch(BaseModel):
    name: str | None = None
    work_center: str | None = None


class MachineOut(Out):
    """A machine: a gateway's device with a name, in a work center."""

    id: int
    gateway_id: str
    device: str
    name: str
    work_center: str | None


def _machine(m: Machine) -> MachineOut:
    return MachineOut(id=m.id, gateway_id=m.gateway_id, device=m.device, name=m.name,
                      work_center=m.work_center)


@router.get("/machines", tags=["machines"])
async def list_machines(_: Viewer, session: Db, gateway_id: str | None = None,
                        work_center: str | None = None,
                        q: Annotated[SearchText | None, Query(description="in name or device")] = None,
                        limit: Limit = 50, offset: Offset = 0) -> Page[MachineOut]:
    """Machines, by id."""
    stmt = select(Machine)
    if gateway_id is not None:
        stmt = stmt.where(Machine.gateway_id == gateway_id)
    if work_center is not None:
        stmt = stmt.where(Machine.work_center == work_center)
    if q:
        pattern = like_pattern(q)
        stmt = stmt.where(or_(func.lower(Machine.name).like(pattern, escape="\\"),
                              func.lower(Machine.device).like(pattern, escape="\\")))
    return Page[MachineOut].model_validate(
        await paged(session, stmt, [Machine.id], limit, offset, _machine))


@router.post("/machines", tags=["machines"], status_code=201)
async def create_machine(body: MachineIn, actor: Admin, session: Db) -> MachineOut:
    """A machine for a gateway's device (admin). 409 if the pair is a machine already."""
    return _machine(await prod.create_machine(session, actor, body.gateway_id, body.device,
                                              body.name, body.work_center))


@router.get("/machines/{machine_id}", tags=["machines"])
async def get_machine(machine_id: Int32, _: Viewer, session: Db) -> MachineOut:
    m = await session.get(Machine, machine_id)
    if m is None:
        raise NotFound(f"machine {machine_id} unknown")
    return _machine(m)


@router.patch("/machines/{machine_id}", tags=["machines"])
async def patch_machine(machine_id: Int32, body: MachinePatch, actor: Admin,
                        session: Db) -> MachineOut:
    """Rename a machine or move it to another work center (``null`` clears it)."""
    clear = "work_center" in body.model_fields_set and body.work_center is None
    return _machine(await prod.update_machine(session, actor, machine_id, name=body.name,
                                              work_center=body.work_center,
                                              clear_work_center=clear))


# -- products and materials -----------------------------------------------------------

class ProductIn(BaseModel):
    name: str
    unit: str = "pcs"


class MaterialIn(BaseModel):
    name: str
    unit: str
    lead_time_days: Int32 = Field(0, ge=0)
    safety_stock: Quantity | None = Field(
        None, description="manual safety stock (decimal); null = computed from usage")


class ProductOut(Out):
    code: str
    name: str
    unit: str


class MaterialOut(Out):
    code: str
    name: str
    unit: str
    lead_time_days: int
    safety_stock_manual: DecimalText | None = Field(
        description="manual safety stock; null = computed from usage")


def _product(p: Product) -> ProductOut:
    return ProductOut(code=p.code, name=p.name, unit=p.unit)


def _material(m: Material) -> MaterialOut:
    return MaterialOut(code=m.code, name=m.name, unit=m.unit,
                       lead_time_days=m.lead_time_days,
                       safety_stock_manual=from_micro(m.safety_stock_manual_u))


def _code_or_name(stmt: Select[Any], model: type[Product] | type[Material],
                  q: str | None) -> Select[Any]:
    """``stmt`` narrowed to rows whose code or name contains ``q`` (case-insensitive)."""
    if not q:
        return stmt
    pattern = like_pattern(q)
    return stmt.where(or_(func.lower(model.code).like(pattern, escape="\\"),
                          func.lower(model.name).like(pattern, escape="\\")))


@router.get("/products", tags=["products"])
async def list_products(_: Viewer, session: Db,
                        q: Annotated[SearchText | None, Query(description="in code or name")] = None,
                        limit: Limit = 50, offset: Offset = 0) -> Page[ProductOut]:
    """Products, by code."""
    stmt = _code_or_name(select(Product), Product, q)
    return Page[ProductOut].model_validate(
        await paged(session, stmt, [Product.code], limit, offset, _product))


@router.get("/products/{code}", tags=["products"])
async def get_product(code: str, _: Viewer, session: Db) -> ProductOut:
    return _product(await prod.get_product(session, code))


@router.put("/products/{code}", tags=["products"])
async def put_product(code: str, body: ProductIn, actor: Planner, session: Db) -> ProductOut:
    """Create or update a product (idempotent)."""
    return _product(await prod.upsert_product(session, actor, code, body.name, body.unit))


@router.get("/materials", tags=["materials"])
async def list_materials(_: Viewer, session: Db,
                         q: Annotated[SearchText | None, Query(description="in code or name")] = None,
                         limit: Limit = 50, offset: Offset = 0) -> Page[MaterialOut]:
    """Materials, by code."""
    stmt = _code_or_name(select(Material), Material, q)
    return Page[MaterialOut].model_validate(
        await paged(session, stmt, [Material.code], limit, offset, _material))


@router.get("/materials/{code}", tags=["materials"])
async def get_material(code: str, _: Viewer, session: Db) -> MaterialOut:
    return _material(await prod.get_material(session, code))


@router.put("/materials/{code}", tags=["materials"])
async def put_material(code: str, body: MaterialIn, actor: Planner,
                       session: Db) -> MaterialOut:
    """Create or update a material (idempotent)."""
    return _material(await prod.upsert_material(
        session, actor, code, body.name, body.unit, body.lead_time_days,
        _micro(body.safety_stock, "safety_stock")))


# -- BOMs and routings ----------------------------------------------------------------

class BomLineBody(BaseModel):
    material: str
    qty_per_unit: Quantity = Field(description="per unit of product, exact decimal")
    scrap_factor: float = Field(0.0, ge=0, lt=10, description="0.02 = 2 % extra")
    backflush_scrap: bool = False
    step: Int32 | None = Field(None, description="consuming operation; null = the last")


class BomIn(BaseModel):
    product: str
    version: Int32 | None = Field(None, ge=1, description="default: current + 1")
    lines: list[BomLineBody]


class RoutingOpBody(BaseModel):
    step: Int32
    name: str
    machine_id: Int32 | None = None
    work_center: str | None = None
    ideal_cycle_ms: Int32 | None = Field(None, gt=0)
    cavities: Int32 = Field(1, ge=1)


class RoutingIn(BaseModel):
    product: str
    version: Int32 | None = Field(None, ge=1, description="default: current + 1")
    operations: list[RoutingOpBody]


class BomLineOut(Out):
    material: str
    qty_per_unit: DecimalText = Field(description="per unit of product")
    scrap_factor: float = Field(description="0.02 = 2 % extra")
    backflush_scrap: bool
    step: int | None = Field(description="consuming operation; null = the last")


class BomOut(Out):
    """One BOM version of a product (versions never change once made)."""

    product: str
    version: int
    created: Timestamp
    lines: list[BomLineOut]


class RoutingOpOut(Out):
    step: int
    name: str
    machine_id: int | None
    work_center: str | None
    ideal_cycle_ms: int | None
    cavities: int


class RoutingOut(Out):
    """One routing version of a product (versions never change once made)."""

    product: str
    version: int
    created: Timestamp
    operations: list[RoutingOpOut]


async def _bom_doc(session: AsyncSession, bom: Bom, product_code: str) -> BomOut:
    lines = (await session.execute(
        select(BomLine, Material.code).join(Material, Material.id == BomLine.material_id)
        .where(BomLine.bom_id == bom.id).order_by(BomLine.id))).tuples().all()
    return BomOut(product=product_code, version=bom.version, created=bom.created,
                  lines=[BomLineOut(material=code, qty_per_unit=_decimal(line.qty_per_unit_u),
                                    scrap_factor=line.scrap_factor,
                                    backflush_scrap=line.backflush_scrap, step=line.step)
                         for line, code in lines])


async def _routing_doc(session: AsyncSession, routing: Routing,
                       product_code: str) -> RoutingOut:
    ops = (await session.scalars(select(RoutingOp).where(RoutingOp.routing_id == routing.id)
                                 .order_by(RoutingOp.step))).all()
    return RoutingOut(product=product_code, version=routing.version, created=routing.created,
                      operations=[RoutingOpOut(step=o.step, name=o.name,
                                               machine_id=o.machine_id,
                                               work_center=o.work_center,
                                               ideal_cycle_ms=o.ideal_cycle_ms,
                                               cavities=o.cavities) for o in ops])


async def _versioned(session: AsyncSession, model: type[Versioned], product: str,
                     version: str) -> Versioned:
    p = await prod.get_product(session, product)
    stmt = select(model).where(model.product_id == p.id)
    if version == "current":
        stmt = stmt.order_by(model.version.desc()).limit(1)
    elif version.isascii() and version.isdigit():
        stmt = stmt.where(model.version == whole(version, "version", minimum=1))
    else:
        raise Invalid(f"version {version!r} is not a number or 'current'", "version")
    row: Versioned | None = await session.scalar(stmt)
    if row is None:
        kind = "BOM" if model is Bom else "routing"
        raise NotFound(f"product {product!r} has no {kind} version {version}")
    return row


async def _versions(session: AsyncSession, model: type[Versioned], product: str | None,
                    limit: int, offset: int) -> tuple[list[tuple[Versioned, str]], int]:
    """A page of ``model``'s versions with their product codes, by product code then
    version (newest first), and the total."""
    stmt = select(model, Product.code).join(Product, Product.id == model.product_id)
    if product is not None:
        stmt = stmt.where(Product.code == product)
    total = await session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    rows = (await session.execute(stmt.order_by(Product.code, model.version.desc())
                                  .limit(limit).offset(offset))).tuples().all()
    return [(row, code) for row, code in rows], int(total)


@router.get("/boms", tags=["boms"])
async def list_boms(_: Viewer, session: Db, product: str | None = None,
                    limit: Limit = 50, offset: Offset = 0) -> Page[BomOut]:
    """BOM versions with their lines, by product code then version (newest first)."""
    rows, total = await _versions(session, Bom, product, limit, offset)
    return Page[BomOut](items=[await _bom_doc(session, bom, code) for bom, code in rows],
                        total=total, limit=limit, offset=offset)


@router.post("/boms", tags=["boms"], status_code=201)
async def create_bom(body: BomIn, actor: Planner, session: Db) -> BomOut:
    """A new BOM version; it becomes the product's current BOM (orders released later
    copy it; released orders keep theirs)."""
    lines = [prod.BomLineIn(line.material,
                            to_micro(line.qty_per_unit, what="qty_per_unit"),
                            line.scrap_factor, line.backflush_scrap, line.step)
             for line in body.lines]
    bom = await prod.create_bom(session, actor, body.product, lines, body.version)
    return await _bom_doc(session, bom, body.product)


@router.get("/boms/{product}/{version}", tags=["boms"])
async def get_bom(product: str, version: str, _: Viewer, session: Db) -> BomOut:
    """One BOM version (``current`` for the newest)."""
    return await _bom_doc(session, await _versioned(session, Bom, product, version), product)


@router.get("/routings", tags=["routings"])
async def list_routings(_: Viewer, session: Db, product: str | None = None,
                        limit: Limit = 50, offset: Offset = 0) -> Page[RoutingOut]:
    """Routing versions with their operations, by product code then version (newest
    first)."""
    rows, total = await _versions(session, Routing, product, limit, offset)
    return Page[RoutingOut](items=[await _routing_doc(session, routing, code)
                                   for routing, code in rows],
                            total=total, limit=limit, offset=offset)


@router.post("/routings", tags=["routings"], status_code=201)
async def create_routing(body: RoutingIn, actor: Planner, session: Db) -> RoutingOut:
    """A new routing version; it becomes the product's current routing."""
    ops = [prod.RoutingOpIn(o.step, o.name, o.machine_id, o.work_center, o.ideal_cycle_ms,
                            o.cavities) for o in body.operations]
    routing = await prod.create_routing(session, actor, body.product, ops, body.version)
    return await _routing_doc(session, routing, body.product)


@router.get("/routings/{product}/{version}", tags=["routings"])
async def get_routing(product: str, version: str, _: Viewer, session: Db) -> RoutingOut:
    """One routing version (``current`` for the newest)."""
    return await _routing_doc(session, await _versioned(session, Routing, product, version),
                              product)


# -- work orders ----------------------------------------------------------------------

class WorkOrderIn(BaseModel):
    number: str
    product: str
    quantity: NonNegInt64 = Field(gt=0, description="pieces")
    due: datetime | None = Field(None, description="with time zone, e.g. 2026-12-01T16:00Z")
    customer: str | None = None
    priority: Int32 = Field(0, description="higher runs first")
    completion_mode: str = Field("auto", pattern="^(auto|confirm)$")


class WorkOrderPatch(BaseModel):
    product: str | None = None
    quantity: NonNegInt64 | None = Field(None, gt=0)
    due: datetime | None = None
    customer: str | None = None
    priority: Int32 | None = None
    completion_mode: str | None = Field(None, pattern="^(auto|confirm)$")


class ActionBody(BaseModel):
    reason: str | None = Field(None, max_length=500)


class WorkOrderOut(Out):
    """A work order with its progress and what a planner may do to it now."""

    number: str
    product: str
    quantity: int = Field(description="pieces")
    due: Timestamp | None
    customer: str | None
    priority: int = Field(description="higher runs first")
    status: str = Field(description=", ".join(WORK_ORDER_STATUSES))
    completion_mode: str = Field(description="auto or confirm")
    bom_version: int | None = Field(description="copied at release")
    routing_version: int | None = Field(description="copied at release")
    good: int = Field(description="good pieces of the last operation")
    scrap: int = Field(description="scrap of all operations")
    due_status: prod.DueStatus | None = Field(
        description="the due-date colour the pages show (cloud/production/status.py): "
                    "null without a due date or when cancelled")
    completion: prod.CompletionStatus | None = Field(
        None, description="what the due colour does not say (cloud/production/status.py): "
        "over_produced (more good pieces than ordered), short_closed (completed or closed "
        "with fewer); null otherwise")
    allowed_actions: list[str] = Field(description="what a planner may do in this status")
    created: Timestamp
    updated: Timestamp
    released_at: Timestamp | None
    started_at: Timestamp | None
    completed_at: Timestamp | None
    completed_by: str | None
    closed_at: Timestamp | None
    cancelled_at: Timestamp | None


class WoOperationOut(Out):
    """An operation of a released order (its routing step, copied at release)."""

    id: int = Field(description="the wo_operation_id dispatches name")
    step: int
    name: str
    machine_id: int | None
    work_center: str | None
    ideal_cycle_ms: int | None
    cavities: int
    status: str = Field(description="pending, in_progress, on_hold or completed")
    good: int
    scrap: int
    started_at: Timestamp | None
    completed_at: Timestamp | None
    completed_by: str | None
    allowed_actions: list[str] = Field(description="empty unless the order is open")
    ready_to_complete: bool = Field(description="not completed, and good >= quantity")


class WoComponentOut(Out):
    """A material of a released order (its BOM line, copied at release)."""

    material: str
    qty_per_unit: DecimalText
    scrap_factor: float
    backflush_scrap: bool
    step: int | None


class WorkOrderDetailOut(WorkOrderOut):
    """A work order with its operations and components."""

    operations: list[WoOperationOut]
    components: list[WoComponentOut]


def _order(wo: WorkOrder, product: str, ops: list[WoOperation]) -> WorkOrderOut:
    """``wo`` as listed; good = the last operation's good pieces (as the pages count)."""
    last = max(ops, key=lambda o: o.step) if ops else None
    good = last.good if last else 0
    return WorkOrderOut(
        number=wo.number, product=product, quantity=wo.quantity, due=wo.due,
        customer=wo.customer, priority=wo.priority, status=wo.status,
        completion_mode=wo.completion_mode, bom_version=wo.bom_version,
        routing_version=wo.routing_version, good=good, scrap=sum(o.scrap for o in ops),
        due_status=prod.order_due_status(wo, good, clock.now()),
        completion=prod.order_completion_status(wo, good),
        allowed_actions=list(prod.WORK_ORDER_ACTIONS[wo.status]),
        created=wo.created, updated=wo.updated, released_at=wo.released_at,
        started_at=wo.started_at, completed_at=wo.completed_at,
        completed_by=wo.completed_by, closed_at=wo.closed_at, cancelled_at=wo.cancelled_at)


async def _order_doc(session: AsyncSession, wo: WorkOrder) -> WorkOrderDetailOut:
    product = await session.get(Product, wo.product_id)
    assert product is not None
    ops = list((await session.scalars(select(WoOperation).where(
        WoOperation.work_order_id == wo.id).order_by(WoOperation.step))).all())
    comps = (await session.execute(
        select(WoComponent, Material.code).join(Material, Material.id == WoComponent.material_id)
        .where(WoComponent.work_order_id == wo.id).order_by(WoComponent.id))).tuples().all()
    operations = [
        WoOperationOut(id=o.id, step=o.step, name=o.name, machine_id=o.machine_id,
                       work_center=o.work_center, ideal_cycle_ms=o.ideal_cycle_ms,
                       cavities=o.cavities, status=o.status, good=o.good, scrap=o.scrap,
                       started_at=o.started_at, completed_at=o.completed_at,
                       completed_by=o.completed_by,
                       allowed_actions=list(prod.OPERATION_ACTIONS[o.status])
                       if wo.status in prod.OPEN_ORDER else [],
                       ready_to_complete=o.status != "completed" and o.good >= wo.quantity)
        for o in ops]
    components = [
        WoComponentOut(material=code, qty_per_unit=_decimal(c.qty_per_unit_u),
                       scrap_factor=c.scrap_factor, backflush_scrap=c.backflush_scrap,
                       step=c.step)
        for c, code in comps]
    return WorkOrderDetailOut(**dict(_order(wo, product.code, ops)), operations=operations,
                              components=components)


@router.get("/work-orders", tags=["work-orders"])
async def list_work_orders(
        _: Viewer, session: Db,
        status: Annotated[list[str] | None, Query(
            description=f"repeatable: {', '.join(WORK_ORDER_STATUSES)}")] = None,
        customer: str | None = None, product: str | None = None,
        due_from: Annotated[datetime | None, Query(description="due >= this")] = None,
        due_to: Annotated[datetime | None, Query(description="due < this")] = None,
        q: Annotated[SearchText | None, Query(description="in number or customer")] = None,
        limit: Limit = 50, offset: Offset = 0) -> Page[WorkOrderOut]:
    """Work orders, earliest due first (none last), then priority, then number; each with
    its good count (last operation), scrap (all operations) and due status."""
    statuses = [s for item in status or [] for s in item.split(",") if s]
    for s in statuses:
        if s not in WORK_ORDER_STATUSES:
            raise Invalid(f"status {s!r} is not one of "
                          f"{', '.join(WORK_ORDER_STATUSES)}", "status")
    for name, value in (("due_from", due_from), ("due_to", due_to)):
        if value is not None and value.tzinfo is None:
            raise Invalid(f"{name} must carry a time zone (...Z)", name)
    flt = prod.WorkOrderFilter(statuses, customer, product, due_from, due_to, q)
    rows, total = await prod.list_work_orders(session, flt, limit=limit, offset=offset)
    ids = [wo.id for wo, _ in rows]
    ops: dict[int, list[WoOperation]] = {i: [] for i in ids}
    if ids:
        for op in (await session.scalars(select(WoOperation).where(
                WoOperation.work_order_id.in_(ids)))).all():
            ops[op.work_order_id].append(op)
    return Page[WorkOrderOut](
        items=[_order(wo, code, ops[wo.id]) for wo, code in rows],
        total=total, limit=limit, offset=offset)


@router.post("/work-orders", tags=["work-orders"], status_code=201)
async def create_work_order(body: WorkOrderIn, actor: Planner,
                            session: Db) -> WorkOrderDetailOut:
    """A new work order in draft."""
    wo = await prod.create_work_order(session, actor, body.number, body.product,
                                      body.quantity, due=body.due, customer=body.customer,
                                      priority=body.priority,
                                      completion_mode=body.completion_mode)
    return await _order_doc(session, wo)


@router.get("/work-orders/{number}", tags=["work-orders"])
async def get_work_order(number: str, _: Viewer, session: Db) -> WorkOrderDetailOut:
    """The order with its operations (status, good, scrap) and components."""
    return await _order_doc(session, await prod.get_work_order(session, number))


@router.patch("/work-orders/{number}", tags=["work-orders"])
async def patch_work_order(number: str, body: WorkOrderPatch, actor: Planner,
                           session: Db) -> WorkOrderDetailOut:
    """Change an open order: product and quantity in draft only; due, customer, priority,
    completion mode while draft, released or in progress (409 otherwise)."""
    given = body.model_fields_set
    changes: dict[str, Any] = {}
    for name in ("quantity", "priority", "completion_mode"):
        if getattr(body, name) is not None:
            changes[name] = getattr(body, name)
    if body.product is not None:
        changes["product_code"] = body.product
    for name in ("due", "customer"):
        if name in given:
            changes[name] = getattr(body, name)
    wo = await prod.update_work_order(session, actor, number, **changes)
    return await _order_doc(session, wo)


@router.post("/work-orders/{number}/release", tags=["work-orders"])
async def release_work_order(number: str, actor: Planner, session: Db,
                             body: ActionBody | None = None) -> WorkOrderDetailOut:
    """draft -> released: copies the current BOM and routing."""
    return await _order_doc(session, await prod.release_work_order(session, actor, number))


@router.post("/work-orders/{number}/cancel", tags=["work-orders"])
async def cancel_work_order(number: str, actor: Planner, session: Db,
                            body: ActionBody | None = None) -> WorkOrderDetailOut:
    """draft/released -> cancelled (its dispatches end now)."""
    wo = await prod.cancel_work_order(session, actor, number, reason=_reason(body))
    return await _order_doc(session, wo)


@router.post("/work-orders/{number}/complete", tags=["work-orders"])
async def complete_work_order(number: str, actor: Planner, session: Db,
                              body: ActionBody | None = None) -> WorkOrderDetailOut:
    """released/in_progress -> completed by a planner (its dispatches end now)."""
    wo = await prod.complete_work_order(session, actor, number, reason=_reason(body))
    return await _order_doc(session, wo)


@router.post("/work-orders/{number}/close", tags=["work-orders"])
async def close_work_order(number: str, actor: Planner, session: Db,
                           body: ActionBody | None = None) -> WorkOrderDetailOut:
    """completed -> closed (final)."""
    wo = await prod.close_work_order(session, actor, number, reason=_reason(body))
    return await _order_doc(session, wo)


def _reason(body: ActionBody | None) -> str | None:
    return body.reason if body else None


@router.post("/work-orders/{number}/operations/{step}/{action}", tags=["work-orders"])
async def operation_action(number: str, step: Int32, action: str, actor: Planner, session: Db,
                           body: ActionBody | None = None) -> WorkOrderDetailOut:
    """``stop`` (pause: on_hold), ``resume``, or ``complete`` (a planner confirms the
    operation done; the last one completes the order)."""
    if action == "stop":
        await prod.stop_operation(session, actor, number, step,
                                  reason=body.reason if body else None)
    elif action == "resume":
        await prod.resume_operation(session, actor, number, step)
    elif action == "complete":
        await prod.complete_operation(session, actor, number, step)
    else:
        raise NotFound(f"operation action {action!r} unknown; stop, resume or complete")
    return await _order_doc(session, await prod.get_work_order(session, number))


# -- import ---------------------------------------------------------------------------

class ImportedVersionOut(Out):
    """A BOM (``lines``) or routing (``operations``) version an import made."""

    product: str
    version: int
    lines: int | None = Field(None, description="BOMs: its lines")
    operations: int | None = Field(None, description="routings: its operations")


class ImportOut(Out):
    """What an import did (keys that do not apply are left out)."""

    kind: str
    rows: int
    created: int
    updated: int
    unchanged: int
    versions: list[ImportedVersionOut] | None = Field(
        None, description="BOMs and routings: the versions made")


@router.post("/import/{kind}", tags=["import"], response_model_exclude_none=True)
async def import_file(kind: str, actor: Planner, request: Request,
                      file: Annotated[UploadFile, File(description="CSV or XLSX")],
                      tz: Annotated[str | None, Query(
                          description="time zone of due dates without one, e.g. "
                                      "Asia/Shanghai; default: the plant's")] = None
                      ) -> ImportOut:
    """Import materials, boms, routings or work-orders from CSV (UTF-8 or GBK; comma,
    semicolon or tab) or XLSX, with English or Chinese headers (cloud/production/imports.py). All
    or nothing: 422 ``import_failed`` lists every row-numbered problem; 413
    ``import_too_large`` past a limit (``limit``: rows, columns, cell_chars,
    unpacked_bytes; ``max``); 400 ``unreadable_file`` for CSV the reader refuses."""
    if kind not in prod.IMPORT_KINDS:
        raise NotFound(f"import kind {kind!r} unknown; one of {', '.join(prod.IMPORT_KINDS)}")
    if tz is None:
        async with request.app.state.db.sessions() as session:
            zone = await plant.timezone(session)
    elif (named := plant.zone(tz)) is None:
        raise Invalid(f"time zone {tz!r} unknown (e.g. Asia/Shanghai)", "tz")
    else:
        zone = named
    data = await file.read(MAX_UPLOAD + 1)
    if len(data) > MAX_UPLOAD:
        raise Invalid(f"file over {MAX_UPLOAD // (1024 * 1024)} MiB", "file")
    # No request transaction (Db): the file is parsed before the write lock is taken.
    result = await prod.import_file(request.app.state.db, actor, kind, data, tz=zone)
    return ImportOut.model_validate(result.as_dict())
