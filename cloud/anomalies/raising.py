"""Raising an anomaly in the caller's transaction: its severity (rules.py), the orders it
hits, whether it repeats an earlier one, the quality hold, the ``opened`` notification;
and clearing one when its condition ends (``cleared_ts``).

Links (受影响订单)
-----------------
A machine anomaly links the operation dispatched on that machine at the anomaly's own
``ts`` (so late data links to the order that ran then), with its order and customer. A
material anomaly (``stock_low``, or a manual one naming a material) links every released
or in-progress order whose components use the material, and draft orders whose product's
current BOM does. A manual anomaly naming a work order links it (its in-progress
operations, else the order alone) unless the machine's dispatch already did.

Repeats: the latest earlier anomaly (``ts`` within ``repeat_window_s`` before) of the same
kind and machine and code (or kind and material, or kind and gateway/device/code for a
device without a machine) is ``repeat_of``.

The quality hold
----------------
A critical ``quality`` anomaly (with ``hold_on_severe_quality``) puts its linked pending or
in-progress operations on hold (``cloud.production.stop_operation``, audited) and
records them in ``held_operations``; resolving it resumes those still on hold, unless
another unresolved anomaly holds them too (``release_hold``, called by lifecycle.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Final

import structlog
from sqlalchemy import Integer, and_, case, func, literal, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from cloud import production as prod
from cloud.anomalies.rules import OPEN_ORDER, SETTINGS_KEY, SYSTEM, UNRESOLVED, severity_for
from cloud.auth import Actor
from cloud.core import clock, settings
from cloud.core.audit import audit
from cloud.core.errors import Invalid
from cloud.core.models import (
    ANOMALY_KINDS,
    SEVERITIES,
    anomalies,
    anomaly_links,
    bom_lines,
    boms,
    dispatches,
    machines,
    wo_components,
    wo_operations,
    work_orders,
)
from cloud.notify import enqueue

log = structlog.get_logger(__name__)

_UNSET: Final[Any] = object()


def _insert(session: AsyncSession, table: Any) -> Any:
    mod: Any = postgresql if session.bind.dialect.name == "postgresql" else sqlite
    return mod.insert(table)


async def raise_anomaly(session: AsyncSession, *, kind: str, ts: int, title: str,
                        severity: str | None = None, code: str | None = None,
                        detail: dict[str, Any] | None = None, machine_id: int | None = None,
                        material_id: int | None = None, gateway_id: str | None = None,
                        device: str | None = None, source_key: str | None = None,
                        created_by: str = SYSTEM, title_code: str | None = None,
                        title_params: dict[str, Any] | None = None) -> int | None:
    """Raise an anomaly in the caller's transaction: severity from the rules when None,
    links, repeat detection, the quality hold, and the ``opened`` notification. Returns
    its id, or None when ``source_key`` was raised before (idempotent on both backends,
    also between concurrent transactions). Raises Invalid (422) for an unknown kind or
    severity. ``title`` is the English text; with ``title_code`` (a code of
    ``cloud.core.anomaly_text.TITLES``) and its ``title_params`` the pages, the API and
    the notifications show it in the reader's language."""
    return await raise_full(session, kind=kind, ts=ts, title=title, severity=severity,
                            code=code, detail=detail, machine_id=machine_id,
                            material_id=material_id, gateway_id=gateway_id, device=device,
                            source_key=source_key, created_by=created_by,
                            title_code=title_code, title_params=title_params)


async def raise_full(session: AsyncSession, *, kind: str, ts: int, title: str,
                     severity: str | None = None, code: str | int | None = None,
                     detail: dict[str, Any] | None = None, machine_id: int | None = None,
                     material_id: int | None = None, gateway_id: str | None = None,
                     device: str | None = None, source_key: str | None = None,
                     created_by: str = SYSTEM, cleared_ts: int | None = None,
                     work_order_id: int | None = None, conf: dict[str, Any] | None = None,
                     now: datetime | None = None, repeat_of: Any = _UNSET,
                     title_code: str | None = None,
                     title_params: dict[str, Any] | None = None) -> int | None:
    """``raise_anomaly`` with what the package's own raisers also know: ``cleared_ts``
    (an episode that already ended), the work order a person named, the settings already
    read (``conf``), the time (``now``, default the clock) and the repeat already looked up
    (``repeat_of``, default: look it up). Raised already cleared (``cleared_ts``), it
    closes itself at once when its kind does (``auto_close``)."""
    if kind not in ANOMALY_KINDS:
        raise Invalid(f"kind {kind!r} is not one of {', '.join(ANOMALY_KINDS)}", "kind")
    if conf is None:
        conf = await settings.get(session, SETTINGS_KEY)
    code = None if code is None else str(code)[:64]
    severity = severity or severity_for(conf, kind, code)
    if severity not in SEVERITIES:
        raise Invalid(f"severity {severity!r} is not one of {', '.join(SEVERITIES)}",
                      "severity")
    if machine_id is not None and (gateway_id is None or device is None):
        row = (await session.execute(select(machines.c.gateway_id, machines.c.device)
                                     .where(machines.c.id == machine_id))).first()
        if row is not None:
            gateway_id, device = gateway_id or row.gateway_id, device or row.device
    if repeat_of is _UNSET:
        repeat_of = await _repeat_of(session, int(conf["repeat_window_s"]) * 1000, kind=kind,
                                     ts=ts, code=code, machine_id=machine_id,
                                     material_id=material_id, gateway_id=gateway_id,
                                     device=device)
    stmt = _insert(session, anomalies).values(
        kind=kind, code=code, severity=severity, status="open", title=title[:255],
        detail=detail or {}, machine_id=machine_id, material_id=material_id,
        gateway_id=gateway_id, device=device, ts=ts, cleared_ts=cleared_ts,
        source_key=source_key, created=now or clock.now(), created_by=created_by[:96],
        escalation_level=0, repeat_of=repeat_of, title_code=title_code,
        title_params=title_params, occurrences=1, last_seen_ts=ts)
    if source_key is not None:
        stmt = stmt.on_conflict_do_nothing(index_elements=["source_key"])
    new_id = (await session.execute(stmt.returning(anomalies.c.id))).scalar_one_or_none()
    if new_id is None:
        return None
    if (material_id is None and work_order_id is None and machine_id is not None
            and kind != "quality"):  # a quality hold needs the links back
        # the common case (a machine's anomaly): the dispatch's link in one statement
        links: list[dict[str, Any]] = []
        await session.execute(anomaly_links.insert().from_select(
            ["anomaly_id", "work_order_id", "wo_operation_id", "customer"],
            _dispatch_at(machine_id, ts, literal(new_id, Integer))))
    else:
        links = await _links(session, machine_id=machine_id, material_id=material_id, ts=ts,
                             work_order_id=work_order_id)
        if links:
            await session.execute(anomaly_links.insert(),
                                  [{"anomaly_id": new_id, **link} for link in links])
    if kind == "quality" and severity == "critical" and conf["hold_on_severe_quality"]:
        await _hold(session, new_id, links, created_by)
    await enqueue(session, new_id, event="opened")
    if cleared_ts is not None:
        await auto_close(session, conf, [int(new_id)], now)
    log.info("anomaly_raised", anomaly_id=new_id, kind=kind, code=code, severity=severity,
             machine_id=machine_id, repeat_of=repeat_of)
    return int(new_id)


async def _repeat_of(session: AsyncSession, window_ms: int, *, kind: str, ts: int,
                     code: str | None, machine_id: int | None, material_id: int | None,
                     gateway_id: str | None, device: str | None) -> int | None:
    row = await previous_anomaly(session, window_ms, kind=kind, ts=ts, code=code,
                                 machine_id=machine_id, material_id=material_id,
                                 gateway_id=gateway_id, device=device)
    return None if row is None else int(row.id)


async def previous_anomaly(session: AsyncSession, window_ms: int, *, kind: str, ts: int,
                           code: str | None, machine_id: int | None, material_id: int | None,
                           gateway_id: str | None, device: str | None) -> Any:
    """The latest earlier anomaly of the same subject within the window: (id, cleared_ts)
    or None."""
    a = anomalies.c
    same_code = a.code == code if code is not None else a.code.is_(None)
    if machine_id is not None:
        subject = [a.machine_id == machine_id, same_code]
    elif material_id is not None:
        subject = [a.material_id == material_id]
    elif gateway_id is not None and device is not None:
        subject = [a.machine_id.is_(None), a.gateway_id == gateway_id, a.device == device,
                   same_code]
    else:
        return None
    return (await session.execute(
        select(a.id, a.cleared_ts).where(a.kind == kind, *subject, a.ts <= ts,
                                         a.ts >= ts - window_ms)
        .order_by(a.ts.desc(), a.id.desc()).limit(1))).first()


def _dispatch_at(machine_id: int, ts: int, *first: Any) -> Any:
    """(work order, operation, customer) dispatched on the machine at ``ts``."""
    wo, op, d = work_orders.c, wo_operations.c, dispatches.c
    return (select(*first, wo.id, op.id.label("op"), wo.customer)
            .select_from(dispatches.join(wo_operations, op.id == d.wo_operation_id)
                         .join(work_orders, wo.id == op.work_order_id))
            .where(d.machine_id == machine_id, d.start_ts <= ts,
                   or_(d.end_ts.is_(None), d.end_ts > ts)))


async def _links(session: AsyncSession, *, machine_id: int | None, material_id: int | None,
                 ts: int, work_order_id: int | None) -> list[dict[str, Any]]:
    out: dict[tuple[int, int | None], dict[str, Any]] = {}
    wo, op = work_orders.c, wo_operations.c
    if machine_id is not None:
        rows = (await session.execute(_dispatch_at(machine_id, ts))).all()
        for r in rows:
            out[(r.id, r.op)] = {"work_order_id": r.id, "wo_operation_id": r.op,
                                 "customer": r.customer}
    if material_id is not None:
        current = (select(boms.c.product_id, func.max(boms.c.version).label("v"))
                   .group_by(boms.c.product_id).subquery())
        draft_products = (select(boms.c.product_id)
                          .select_from(boms.join(current, and_(
                              current.c.product_id == boms.c.product_id,
                              current.c.v == boms.c.version))
                                       .join(bom_lines, bom_lines.c.bom_id == boms.c.id))
                          .where(bom_lines.c.material_id == material_id))
        rows = (await session.execute(
            select(wo.id, wo.customer).where(or_(
                and_(wo.status.in_(OPEN_ORDER), wo.id.in_(
                    select(wo_components.c.work_order_id)
                    .where(wo_components.c.material_id == material_id))),
                and_(wo.status == "draft", wo.product_id.in_(draft_products))))
            .order_by(wo.id))).all()
        for r in rows:
            out.setdefault((r.id, None), {"work_order_id": r.id, "wo_operation_id": None,
                                          "customer": r.customer})
    if work_order_id is not None and not any(k[0] == work_order_id for k in out):
        customer = (await session.execute(select(wo.customer)
                                          .where(wo.id == work_order_id))).scalar()
        ops = (await session.execute(select(op.id).where(
            op.work_order_id == work_order_id, op.status == "in_progress")
            .order_by(op.step))).scalars().all()
        for op_id in ops or [None]:
            out[(work_order_id, op_id)] = {"work_order_id": work_order_id,
                                           "wo_operation_id": op_id, "customer": customer}
    return list(out.values())


async def _op_rows(session: AsyncSession, op_ids: Iterable[int]) -> list[Any]:
    ids = sorted(set(op_ids))
    if not ids:
        return []
    op, wo = wo_operations.c, work_orders.c
    return list((await session.execute(
        select(op.id, op.step, op.status, wo.number, wo.status.label("order_status"))
        .select_from(wo_operations.join(work_orders, wo.id == op.work_order_id))
        .where(op.id.in_(ids)).order_by(op.id))).all())


async def _hold(session: AsyncSession, anomaly_id: int, links: Sequence[dict[str, Any]],
                actor: str) -> None:
    held = []
    for r in await _op_rows(session, (x["wo_operation_id"] for x in links
                                      if x["wo_operation_id"] is not None)):
        if r.status in ("pending", "in_progress") and r.order_status in OPEN_ORDER:
            await prod.stop_operation(session, actor, r.number, r.step,
                                      reason=f"quality anomaly {anomaly_id}")
            held.append(int(r.id))
    if held:
        await session.execute(update(anomalies).where(anomalies.c.id == anomaly_id)
                              .values(held_operations=held))
        await audit(session, actor, "anomaly.hold", "anomaly", anomaly_id,
                    {"operations": held})


async def release_hold(session: AsyncSession, actor: Actor | str, anomaly_id: int,
                       held: Sequence[int]) -> list[int]:
    """Resume the operations this anomaly held that are still on hold and not held by
    another unresolved anomaly."""
    others = (await session.execute(
        select(anomalies.c.held_operations).where(
            anomalies.c.id != anomaly_id, anomalies.c.status.in_(UNRESOLVED),
            anomalies.c.held_operations.is_not(None)))).scalars().all()
    still = {int(i) for ops in others for i in (ops or [])}
    released = []
    for r in await _op_rows(session, (i for i in held if i not in still)):
        if r.status == "on_hold" and r.order_status in OPEN_ORDER:
            await prod.resume_operation(session, actor, r.number, r.step)
            released.append(int(r.id))
    if released:
        await audit(session, actor, "anomaly.release_hold", "anomaly", anomaly_id,
                    {"operations": released})
    return released


async def clear_latest(session: AsyncSession, *, kind: str, code: str | None, gateway_id: str,
                       device: str, ts: int, conf: dict[str, Any] | None = None) -> None:
    """Set ``cleared_ts`` on the latest uncleared anomaly of this device, kind and code
    raised at or before ``ts`` (one statement); with ``conf``, close it when its kind
    closes itself (``auto_close``)."""
    a = anomalies.c
    latest = (select(a.id).where(a.kind == kind, a.code == code, a.gateway_id == gateway_id,
                                 a.device == device, a.cleared_ts.is_(None), a.ts <= ts)
              .order_by(a.ts.desc(), a.id.desc()).limit(1).scalar_subquery())
    ids = (await session.execute(update(anomalies).where(a.id == latest)
                                 .values(cleared_ts=ts).returning(a.id))).scalars().all()
    if conf is not None:
        await auto_close(session, conf, ids)


async def clear_key(session: AsyncSession, source_key: str, ts: int,
                    conf: dict[str, Any] | None = None) -> None:
    """Set ``cleared_ts`` on the anomaly raised under ``source_key`` (if not yet cleared);
    with ``conf``, close it when its kind closes itself."""
    ids = (await session.execute(
        update(anomalies).where(anomalies.c.source_key == source_key,
                                anomalies.c.cleared_ts.is_(None))
        .values(cleared_ts=ts).returning(anomalies.c.id))).scalars().all()
    if conf is not None:
        await auto_close(session, conf, ids)


async def clear_ids(session: AsyncSession, conf: dict[str, Any], ids: Sequence[int],
                    ts: int, now: datetime | None = None) -> None:
    """Set ``cleared_ts`` on these anomalies (those not yet cleared), then close those whose
    kind closes itself."""
    if not ids:
        return
    done = (await session.execute(
        update(anomalies).where(anomalies.c.id.in_(list(ids)), anomalies.c.cleared_ts.is_(None))
        .values(cleared_ts=ts).returning(anomalies.c.id))).scalars().all()
    await auto_close(session, conf, done, now)


async def auto_close(session: AsyncSession, conf: dict[str, Any], ids: Sequence[int],
                     now: datetime | None = None) -> list[int]:
    """Close the cleared anomalies among ``ids`` whose kind closes itself
    (``auto_close``) and that are not closed yet: closed by ``system``, audited
    ``anomaly.auto_close`` (history: "closed automatically: cause cleared"). Returns
    the ids closed."""
    kinds = [k for k, on in (conf.get("auto_close") or {}).items() if on]
    if not ids or not kinds:
        return []
    a = anomalies.c
    when = now or clock.now()
    closed = [int(i) for i in (await session.execute(
        update(anomalies).where(a.id.in_(list(ids)), a.kind.in_(kinds),
                                a.cleared_ts.is_not(None), a.status != "closed")
        .values(status="closed", closed_at=when, closed_by=SYSTEM)
        .returning(a.id))).scalars().all()]
    for anomaly_id in sorted(closed):
        await audit(session, SYSTEM, "anomaly.auto_close", "anomaly", anomaly_id,
                    {"reason": "cause_cleared"})
    if closed:
        log.info("anomalies_auto_closed", anomaly_ids=sorted(closed))
    return closed


async def fold_target(session: AsyncSession, conf: dict[str, Any], *, kind: str, ts: int,
                      code: str | None, machine_id: int | None, gateway_id: str | None,
                      device: str | None) -> Any:
    """The anomaly a new occurrence at ``ts`` folds into: the latest of the same kind,
    machine (else gateway/device) and code that began at or before ``ts`` and last
    occurred within ``fold_window_s`` before it, unless a person closed it. (id,
    cleared_ts, status, occurrences) or None."""
    window = int(float(conf.get("fold_window_s") or 0) * 1000)
    if window <= 0:
        return None
    a = anomalies.c
    same_code = a.code == code if code is not None else a.code.is_(None)
    if machine_id is not None:
        subject = [a.machine_id == machine_id]
    elif gateway_id is not None and device is not None:
        subject = [a.machine_id.is_(None), a.gateway_id == gateway_id, a.device == device]
    else:
        return None
    last = func.coalesce(a.last_seen_ts, a.ts)
    return (await session.execute(
        select(a.id, a.cleared_ts, a.status, a.occurrences)
        .where(a.kind == kind, *subject, same_code, a.ts <= ts, last >= ts - window,
               or_(a.status != "closed", a.closed_by == SYSTEM))
        .order_by(a.ts.desc(), a.id.desc()).limit(1))).first()


async def fold(session: AsyncSession, target: Any, ts: int, cleared_ts: int | None,
               conf: dict[str, Any], now: datetime | None = None) -> int:
    """Count one more occurrence (beginning at ``ts``) on the anomaly ``target``
    (``fold_target``): ``occurrences`` + 1, ``last_seen_ts``, ``cleared_ts`` (None: going
    on). One that had closed itself opens again (acknowledged if it was), audited
    ``anomaly.recur``; one still going on is cleared and may close itself again."""
    a = anomalies.c
    values: dict[str, Any] = {"occurrences": a.occurrences + 1,
                              "last_seen_ts": func.max(ts, func.coalesce(a.last_seen_ts, a.ts))
                              if session.bind.dialect.name == "sqlite" else
                              func.greatest(ts, func.coalesce(a.last_seen_ts, a.ts)),
                              "cleared_ts": cleared_ts}
    reopen = target.status == "closed" and cleared_ts is None
    if reopen:
        values.update(status=case((a.acknowledged_at.is_(None), "open"),
                                  else_="acknowledged"),
                      closed_at=None, closed_by=None)
    await session.execute(update(anomalies).where(a.id == target.id).values(**values))
    if reopen:
        await audit(session, SYSTEM, "anomaly.recur", "anomaly", int(target.id),
                    {"occurrences": int(target.occurrences) + 1})
    elif cleared_ts is not None:
        await auto_close(session, conf, [int(target.id)], now)
    log.info("anomaly_folded", anomaly_id=target.id, occurrences=int(target.occurrences) + 1)
    return int(target.id)
