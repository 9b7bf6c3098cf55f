"""REST API of master data, work orders and import, under ``/api/v1`` (OpenAPI tags
machines, products, materials, boms, routings, work-orders, import).

Access: every person (viewer and up) reads. Planners and admins change products,
materials, BOMs and routings, act on work orders and import files; machines bind a
gateway's device, so only admins create or change them. Gateway tokens get 403.

Lists are paginated by ``limit`` (1..500, default 50) and ``offset``, newest-independent
and stable (ordered by a unique key), and answer ``{items, total, limit, offset}``.

Material quantities travel as exact decimal strings (``"2.5"``; a JSON number is taken as
written) and are stored as micro-units (cloud/models.py).

Errors are JSON ``{error, detail}``: 404 ``not_found``; 422 ``invalid`` (+ ``field``);
409 ``duplicate``; 409 ``invalid_state`` (+ ``current``, ``allowed``: the actions the
current state allows); 422 ``import_failed`` (+ ``errors``: every row-numbered problem;
nothing was imported).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import APIRouter, File, Query, UploadFile
from pydantic import BaseModel, Field
from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from cloud import production as prod
from cloud.api.deps import Admin, Db, Limit, Offset, Planner, Viewer
from cloud.api.paging import page_of, paged
from cloud.core.clock import iso
from cloud.core.db import like_pattern
from cloud.core.errors import Invalid, NotFound
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


def _micro(value: Quantity | None, what: str) -> int | None:
    return None if value is None else to_micro(value, what=what)


# -- machines -------------------------------------------------------------------------

class MachineIn(BaseModel):
    gateway_id: str
    device: str
    name: str
    work_center: str | None = None


class MachinePatch(BaseModel):
    name: str | None = None
    work_center: str | None = None


def _machine(m: Machine) -> dict[str, Any]:
    return {"id": m.id, "gateway_id": m.gateway_id, "device": m.device, "name": m.name,
            "work_center": m.work_center}


@router.get("/machines", tags=["machines"])
async def list_machines(_: Viewer, session: Db, gateway_id: str | None = None,
                        work_center: str | None = None,
                        q: Annotated[str | None, Query(description="in name or device")] = None,
                        limit: Limit = 50, offset: Offset = 0) -> dict[str, Any]:
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
    return await paged(session, stmt, [Machine.id], limit, offset, _machine)


@router.post("/machines", tags=["machines"], status_code=201)
async def create_machine(body: MachineIn, actor: Admin, session: Db) -> dict[str, Any]:
    """A machine for a gateway's device (admin). 409 if the pair is a machine already."""
    return _machine(await prod.create_machine(session, actor, body.gateway_id, body.device,
                                              body.name, body.work_center))


@router.get("/machines/{machine_id}", tags=["machines"])
async def get_machine(machine_id: int, _: Viewer, session: Db) -> dict[str, Any]:
    m = await session.get(Machine, machine_id)
    if m is None:
        raise NotFound(f"machine {machine_id} unknown")
    return _machine(m)


@router.patch("/machines/{machine_id}", tags=["machines"])
async def patch_machine(machine_id: int, body: MachinePatch, actor: Admin,
                        session: Db) -> dict[str, Any]:
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
    lead_time_days: int = Field(0, ge=0)
    safety_stock: Quantity | None = Field(
        None, description="manual safety stock (decimal); null = computed from usage")


def _product(p: Product) -> dict[str, Any]:
    return {"code": p.code, "name": p.name, "unit": p.unit}


def _material(m: Material) -> dict[str, Any]:
    return {"code": m.code, "name": m.name, "unit": m.unit,
            "lead_time_days": m.lead_time_days,
            "safety_stock_manual": from_micro(m.safety_stock_manual_u)}


def _code_or_name(stmt: Any, model: Any, q: str | None) -> Any:
    """``stmt`` narrowed to rows whose code or name contains ``q`` (case-insensitive)."""
    if not q:
        return stmt
    pattern = like_pattern(q)
    return stmt.where(or_(func.lower(model.code).like(pattern, escape="\\"),
                          func.lower(model.name).like(pattern, escape="\\")))


@router.get("/products", tags=["products"])
async def list_products(_: Viewer, session: Db,
                        q: Annotated[str | None, Query(description="in code or name")] = None,
                        limit: Limit = 50, offset: Offset = 0) -> dict[str, Any]:
    """Products, by code."""
    stmt = _code_or_name(select(Product), Product, q)
    return await paged(session, stmt, [Product.code], limit, offset, _product)


@router.get("/products/{code}", tags=["products"])
async def get_product(code: str, _: Viewer, session: Db) -> dict[str, Any]:
    return _product(await prod.get_product(session, code))


@router.put("/products/{code}", tags=["products"])
async def put_product(code: str, body: ProductIn, actor: Planner,
                      session: Db) -> dict[str, Any]:
    """Create or update a product (idempotent)."""
    return _product(await prod.upsert_product(session, actor, code, body.name, body.unit))


@router.get("/materials", tags=["materials"])
async def list_materials(_: Viewer, session: Db,
                         q: Annotated[str | None, Query(description="in code or name")] = None,
                         limit: Limit = 50, offset: Offset = 0) -> dict[str, Any]:
    """Materials, by code."""
    stmt = _code_or_name(select(Material), Material, q)
    return await paged(session, stmt, [Material.code], limit, offset, _material)


@router.get("/materials/{code}", tags=["materials"])
async def get_material(code: str, _: Viewer, session: Db) -> dict[str, Any]:
    return _material(await prod.get_material(session, code))


@router.put("/materials/{code}", tags=["materials"])
async def put_material(code: str, body: MaterialIn, actor: Planner,
                       session: Db) -> dict[str, Any]:
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
    step: int | None = Field(None, description="consuming operation; null = the last")


class BomIn(BaseModel):
    product: str
    version: int | None = Field(None, ge=1, description="default: current + 1")
    lines: list[BomLineBody]


class RoutingOpBody(BaseModel):
    step: int
    name: str
    machine_id: int | None = None
    work_center: str | None = None
    ideal_cycle_ms: int | None = Field(None, gt=0)
    cavities: int = Field(1, ge=1)


class RoutingIn(BaseModel):
    product: str
    version: int | None = Field(None, ge=1, description="default: current + 1")
    operations: list[RoutingOpBody]


async def _bom_doc(session: AsyncSession, bom: Bom, product_code: str) -> dict[str, Any]:
    lines = (await session.execute(
        select(BomLine, Material.code).join(Material, Material.id == BomLine.material_id)
        .where(BomLine.bom_id == bom.id).order_by(BomLine.id))).all()
    return {"product": product_code, "version": bom.version, "created": iso(bom.created),
            "lines": [{"material": code, "qty_per_unit": from_micro(line.qty_per_unit_u),
                       "scrap_factor": line.scrap_factor,
                       "backflush_scrap": line.backflush_scrap, "step": line.step}
                      for line, code in lines]}


async def _routing_doc(session: AsyncSession, routing: Routing,
                       product_code: str) -> dict[str, Any]:
    ops = (await session.scalars(select(RoutingOp).where(RoutingOp.routing_id == routing.id)
                                 .order_by(RoutingOp.step))).all()
    return {"product": product_code, "version": routing.version,
            "created": iso(routing.created),
            "operations": [{"step": o.step, "name": o.name, "machine_id": o.machine_id,
                            "work_center": o.work_center, "ideal_cycle_ms": o.ideal_cycle_ms,
                            "cavities": o.cavities} for o in ops]}


async def _versioned(session: AsyncSession, model: type[Bom] | type[Routing], product: str,
                     version: str) -> Bom | Routing:
    p = await prod.get_product(session, product)
    stmt = select(model).where(model.product_id == p.id)
    if version == "current":
        stmt = stmt.order_by(model.version.desc()).limit(1)
    elif version.isdigit():
        stmt = stmt.where(model.version == int(version))
    else:
        raise Invalid(f"version {version!r} is not a number or 'current'", "version")
    row = await session.scalar(stmt)
    if row is None:
        kind = "BOM" if model is Bom else "routing"
        raise NotFound(f"product {product!r} has no {kind} version {version}")
    return row


@router.get("/boms", tags=["boms"])
async def list_boms(_: Viewer, session: Db, product: str | None = None,
                    limit: Limit = 50, offset: Offset = 0) -> dict[str, Any]:
    """BOM versions with their lines, by product code then version (newest first)."""
    return await _list_versions(session, Bom, product, limit, offset)


@router.post("/boms", tags=["boms"], status_code=201)
async def create_bom(body: BomIn, actor: Planner, session: Db) -> dict[str, Any]:
    """A new BOM version; it becomes the product's current BOM (orders released later
    copy it; released orders keep theirs)."""
    lines = [prod.BomLineIn(line.material,
                            to_micro(line.qty_per_unit, what="qty_per_unit"),
                            line.scrap_factor, line.backflush_scrap, line.step)
             for line in body.lines]
    bom = await prod.create_bom(session, actor, body.product, lines, body.version)
    return await _bom_doc(session, bom, body.product)


@router.get("/boms/{product}/{version}", tags=["boms"])
async def get_bom(product: str, version: str, _: Viewer, session: Db) -> dict[str, Any]:
    """One BOM version (``current`` for the newest)."""
    bom = await _versioned(session, Bom, product, version)
    assert isinstance(bom, Bom)
    return await _bom_doc(session, bom, product)


@router.get("/routings", tags=["routings"])
async def list_routings(_: Viewer, session: Db, product: str | None = None,
                        limit: Limit = 50, offset: Offset = 0) -> dict[str, Any]:
    """Routing versions with their operations, by product code then version (newest
    first)."""
    return await _list_versions(session, Routing, product, limit, offset)


@router.post("/routings", tags=["routings"], status_code=201)
async def create_routing(body: RoutingIn, actor: Planner, session: Db) -> dict[str, Any]:
    """A new routing version; it becomes the product's current routing."""
    ops = [prod.RoutingOpIn(o.step, o.name, o.machine_id, o.work_center, o.ideal_cycle_ms,
                            o.cavities) for o in body.operations]
    routing = await prod.create_routing(session, actor, body.product, ops, body.version)
    return await _routing_doc(session, routing, body.product)


@router.get("/routings/{product}/{version}", tags=["routings"])
async def get_routing(product: str, version: str, _: Viewer, session: Db) -> dict[str, Any]:
    """One routing version (``current`` for the newest)."""
    routing = await _versioned(session, Routing, product, version)
    assert isinstance(routing, Routing)
    return await _routing_doc(session, routing, product)


async def _list_versions(session: AsyncSession, model: type[Bom] | type[Routing],
                         product: str | None, limit: int, offset: int) -> dict[str, Any]:
    stmt = select(model, Product.code).join(Product, Product.id == model.product_id)
    if product is not None:
        stmt = stmt.where(Product.code == product)
    total = await session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    rows = (await session.execute(stmt.order_by(Product.code, model.version.desc())
                                  .limit(limit).offset(offset))).all()
    items = []
    for row, code in rows:
        items.append(await (_bom_doc(session, row, code) if isinstance(row, Bom)
                            else _routing_doc(session, row, code)))
    return page_of(items, int(total), limit, offset)


# -- work orders ----------------------------------------------------------------------

class WorkOrderIn(BaseModel):
    number: str
    product: str
    quantity: int = Field(gt=0, description="pieces")
    due: datetime | None = Field(None, description="with time zone, e.g. 2026-12-01T16:00Z")
    customer: str | None = None
    priority: int = Field(0, description="higher runs first")
    completion_mode: str = Field("auto", pattern="^(auto|confirm)$")


class WorkOrderPatch(BaseModel):
    product: str | None = None
    quantity: int | None = Field(None, gt=0)
    due: datetime | None = None
    customer: str | None = None
    priority: int | None = None
    completion_mode: str | None = Field(None, pattern="^(auto|confirm)$")


class ActionBody(BaseModel):
    reason: str | None = Field(None, max_length=500)


def _order(wo: WorkOrder, product: str, ops: list[WoOperation]) -> dict[str, Any]:
    last = max(ops, key=lambda o: o.step) if ops else None
    return {"number": wo.number, "product": product, "quantity": wo.quantity,
            "due": iso(wo.due), "customer": wo.customer, "priority": wo.priority,
            "status": wo.status, "completion_mode": wo.completion_mode,
            "bom_version": wo.bom_version, "routing_version": wo.routing_version,
            "good": last.good if last else 0, "scrap": sum(o.scrap for o in ops),
            "allowed_actions": list(prod.WORK_ORDER_ACTIONS[wo.status]),
            "created": iso(wo.created), "updated": iso(wo.updated),
            "released_at": iso(wo.released_at), "started_at": iso(wo.started_at),
            "completed_at": iso(wo.completed_at), "completed_by": wo.completed_by,
            "closed_at": iso(wo.closed_at), "cancelled_at": iso(wo.cancelled_at)}


async def _order_doc(session: AsyncSession, wo: WorkOrder) -> dict[str, Any]:
    product = await session.get(Product, wo.product_id)
    assert product is not None
    ops = list((await session.scalars(select(WoOperation).where(
        WoOperation.work_order_id == wo.id).order_by(WoOperation.step))).all())
    comps = (await session.execute(
        select(WoComponent, Material.code).join(Material, Material.id == WoComponent.material_id)
        .where(WoComponent.work_order_id == wo.id).order_by(WoComponent.id))).all()
    doc = _order(wo, product.code, ops)
    doc["operations"] = [
        {"id": o.id, "step": o.step, "name": o.name, "machine_id": o.machine_id,
         "work_center": o.work_center, "ideal_cycle_ms": o.ideal_cycle_ms,
         "cavities": o.cavities, "status": o.status, "good": o.good, "scrap": o.scrap,
         "started_at": iso(o.started_at), "completed_at": iso(o.completed_at),
         "completed_by": o.completed_by,
         "allowed_actions": list(prod.OPERATION_ACTIONS[o.status])
         if wo.status in prod.OPEN_ORDER else [],
         "ready_to_complete": o.status != "completed" and o.good >= wo.quantity}
        for o in ops]
    doc["components"] = [
        {"material": code, "qty_per_unit": from_micro(c.qty_per_unit_u),
         "scrap_factor": c.scrap_factor, "backflush_scrap": c.backflush_scrap, "step": c.step}
        for c, code in comps]
    return doc


@router.get("/work-orders", tags=["work-orders"])
async def list_work_orders(
        _: Viewer, session: Db,
        status: Annotated[list[str] | None, Query(
            description=f"repeatable: {', '.join(WORK_ORDER_STATUSES)}")] = None,
        customer: str | None = None, product: str | None = None,
        due_from: Annotated[datetime | None, Query(description="due >= this")] = None,
        due_to: Annotated[datetime | None, Query(description="due < this")] = None,
        q: Annotated[str | None, Query(description="in number or customer")] = None,
        limit: Limit = 50, offset: Offset = 0) -> dict[str, Any]:
    """Work orders, earliest due first (none last), then priority, then number; each with
    its good count (last operation) and scrap (all operations)."""
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
    return page_of([_order(wo, code, ops[wo.id]) for wo, code in rows], total, limit, offset)


@router.post("/work-orders", tags=["work-orders"], status_code=201)
async def create_work_order(body: WorkOrderIn, actor: Planner,
                            session: Db) -> dict[str, Any]:
    """A new work order in draft."""
    wo = await prod.create_work_order(session, actor, body.number, body.product,
                                      body.quantity, due=body.due, customer=body.customer,
                                      priority=body.priority,
                                      completion_mode=body.completion_mode)
    return await _order_doc(session, wo)


@router.get("/work-orders/{number}", tags=["work-orders"])
async def get_work_order(number: str, _: Viewer, session: Db) -> dict[str, Any]:
    """The order with its operations (status, good, scrap) and components."""
    return await _order_doc(session, await prod.get_work_order(session, number))


@router.patch("/work-orders/{number}", tags=["work-orders"])
async def patch_work_order(number: str, body: WorkOrderPatch, actor: Planner,
                           session: Db) -> dict[str, Any]:
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


def _action(name: str, doc: str, fn: Callable[..., Any]) -> None:
    async def route(number: str, actor: Planner, session: Db,
                    body: ActionBody | None = None) -> dict[str, Any]:
        if name == "release":
            wo = await fn(session, actor, number)
        else:
            wo = await fn(session, actor, number, reason=body.reason if body else None)
        return await _order_doc(session, wo)

    route.__doc__ = doc
    route.__name__ = f"{name}_work_order"
    router.add_api_route(f"/work-orders/{{number}}/{name}", route, methods=["POST"],
                         tags=["work-orders"], name=f"{name}_work_order")


_action("release", "draft -> released: copies the current BOM and routing.",
        prod.release_work_order)
_action("cancel", "draft/released -> cancelled.", prod.cancel_work_order)
_action("complete", "released/in_progress -> completed by a planner.",
        prod.complete_work_order)
_action("close", "completed -> closed (final).", prod.close_work_order)


@router.post("/work-orders/{number}/operations/{step}/{action}", tags=["work-orders"])
async def operation_action(number: str, step: int, action: str, actor: Planner, session: Db,
                           body: ActionBody | None = None) -> dict[str, Any]:
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

@router.post("/import/{kind}", tags=["import"])
async def import_file(kind: str, actor: Planner, session: Db,
                      file: Annotated[UploadFile, File(description="CSV or XLSX")],
                      tz: Annotated[str, Query(description="time zone of due dates "
                                               "without one, e.g. Asia/Shanghai")] = "UTC"
                      ) -> dict[str, Any]:
    """Import materials, boms, routings or work-orders from CSV (UTF-8 or GBK; comma,
    semicolon or tab) or XLSX, with English or Chinese headers (cloud/imports.py). All
    or nothing: 422 ``import_failed`` lists every row-numbered problem."""
    if kind not in prod.IMPORT_KINDS:
        raise NotFound(f"import kind {kind!r} unknown; one of {', '.join(prod.IMPORT_KINDS)}")
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise Invalid(f"time zone {tz!r} unknown (e.g. Asia/Shanghai)",
                                "tz") from None
    data = await file.read(MAX_UPLOAD + 1)
    if len(data) > MAX_UPLOAD:
        raise Invalid(f"file over {MAX_UPLOAD // (1024 * 1024)} MiB", "file")
    result = await prod.import_table(session, actor, kind, data, tz=zone)
    return result.as_dict()

