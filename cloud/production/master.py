"""Master data: products, materials, machines, and the versioned BOMs and routings.

Every function works in the caller's ``AsyncSession`` and transaction (it never commits),
audits each change it makes (``cloud.core.audit``) and raises ``NotFound``, ``Invalid``
(``field`` names the input) or ``Duplicate`` instead of returning None. Upserts are
idempotent: the same values twice change nothing and audit nothing.

BOM and routing versions are immutable: a change is a new version, which becomes the
product's current one (the highest); a work order copies the current versions at release
(cloud/production/orders.py), so a later version never changes an order already running.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.auth import Actor
from cloud.core import clock, fields
from cloud.core.audit import audit
from cloud.core.errors import Duplicate, Invalid, NotFound
from cloud.core.fields import text, whole
from cloud.core.models import Bom, BomLine, Gateway, Machine, Material, Product, Routing, RoutingOp
from cloud.core.quantities import from_micro
from cloud.production.attribution import adopt_device


async def get_product(session: AsyncSession, code: str) -> Product:
    row = await session.scalar(select(Product).where(Product.code == code))
    if row is None:
        raise NotFound(f"product code {code!r} unknown")
    return row


async def get_material(session: AsyncSession, code: str) -> Material:
    row = await session.scalar(select(Material).where(Material.code == code))
    if row is None:
        raise NotFound(f"material code {code!r} unknown")
    return row



async def upsert_product(session: AsyncSession, actor: Actor | str, code: str, name: str,
                         unit: str = "pcs") -> Product:
    """Create the product ``code`` or update its name and unit. Idempotent."""
    code = fields.code(code, "code", max_len=64)
    name = text(name, "name", max_len=255) or ""
    unit = text(unit, "unit", max_len=16) or ""
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
    code = fields.code(code, "code", max_len=64)
    name = text(name, "name", max_len=255) or ""
    unit = text(unit, "unit", max_len=16) or ""
    lead = whole(lead_time_days, "lead_time_days")
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
    cloud/production/attribution.py) become the machine's production in the same transaction:
    unassigned, or the order's where a dispatch of the new machine covers them (none can
    yet, so later dispatches and assignments pick them up). The gateway row is locked
    first (PostgreSQL), as ingest does, so no batch of that gateway can store counts for
    the device without a machine while the machine is being created."""
    device = text(device, "device", max_len=128) or ""
    name = text(name, "name", max_len=128) or ""
    work_center = text(work_center, "work_center", max_len=64, required=False)
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
        changes["name"] = text(name, "name", max_len=128)
    if work_center is not None or clear_work_center:
        changes["work_center"] = text(work_center, "work_center", max_len=64, required=False)
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
    product = await get_product(session, product_code)
    if not lines:
        raise Invalid(f"BOM of {product_code!r} has no lines", "lines")
    version = await _next_version(session, Bom, product.id, version)
    bom = Bom(product_id=product.id, version=version, created=clock.now())
    session.add(bom)
    await session.flush()
    for i, line in enumerate(lines, 1):
        material = await get_material(session, line.material)
        if line.qty_per_unit_u <= 0:
            raise Invalid(f"line {i}: quantity per unit of {line.material!r} must be "
                               "above 0", "qty_per_unit")
        if not 0 <= line.scrap_factor < 10:
            raise Invalid(f"line {i}: scrap factor {line.scrap_factor} must be a "
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
    product = await get_product(session, product_code)
    if not ops:
        raise Invalid(f"routing of {product_code!r} has no operations", "operations")
    for op in ops:
        if op.machine_id is None and not (op.work_center or "").strip():
            raise Invalid(f"routing of {product_code!r}: step {op.step} ({op.name!r}) "
                               "names neither a machine nor a work center; give one "
                               "(machine_id, or work_center e.g. \"WC-1\")", "work_center")
    steps = [op.step for op in ops]
    if len(set(steps)) != len(steps):
        raise Invalid(f"routing of {product_code!r} repeats a step: {sorted(steps)}",
                           "step")
    version = await _next_version(session, Routing, product.id, version)
    routing = Routing(product_id=product.id, version=version, created=clock.now())
    session.add(routing)
    await session.flush()
    for op in sorted(ops, key=lambda o: o.step):
        if op.machine_id is not None and await session.get(Machine, op.machine_id) is None:
            raise NotFound(f"step {op.step}: machine {op.machine_id} unknown")
        if op.cavities < 1:
            raise Invalid(f"step {op.step}: cavities must be at least 1", "cavities")
        if op.ideal_cycle_ms is not None and op.ideal_cycle_ms <= 0:
            raise Invalid(f"step {op.step}: ideal cycle time must be above 0",
                               "ideal_cycle_ms")
        session.add(RoutingOp(routing_id=routing.id, step=op.step,
                              name=text(op.name, "name", max_len=128),
                              machine_id=op.machine_id,
                              work_center=text(op.work_center, "work_center", max_len=64,
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
    version = whole(version, "version", minimum=1)
    if await session.scalar(select(model.id).where(model.product_id == product_id,
                                                   model.version == version)) is not None:
        kind = "BOM" if model is Bom else "routing"
        raise Duplicate(f"{kind} version {version} exists already (versions are immutable; "
                        "give a new version)")
    return version


async def current_bom(session: AsyncSession, product_id: int) -> Bom | None:
    """The product's newest BOM version, None when it has none."""
    bom: Bom | None = await session.scalar(select(Bom).where(Bom.product_id == product_id)
                                           .order_by(Bom.version.desc()).limit(1))
    return bom


async def current_routing(session: AsyncSession, product_id: int) -> Routing | None:
    """The product's newest routing version, None when it has none."""
    routing: Routing | None = await session.scalar(
        select(Routing).where(Routing.product_id == product_id)
        .order_by(Routing.version.desc()).limit(1))
    return routing
