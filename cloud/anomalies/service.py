"""Anomalies (生产异常): raised from records, by the periodic sweep or by a person, linked to
the orders they hit, and carried through open -> acknowledged -> resolved -> closed.

What raises an anomaly (times are the records' own epoch ms unless said otherwise)
----------------------------------------------------------------------------------
- ``alarm`` (device fault): an ``alarm`` record with ``active`` true; ``code`` is the alarm
  code. The record with ``active`` false sets ``cleared_ts`` on the device's uncleared
  alarm anomaly of that code. An alarm raised again while its anomaly is still uncleared
  and within the repeat window (a gateway restart re-reads an active alarm) adds nothing.
- ``limit`` (process deviation): a ``limit`` record with ``active`` true; ``code`` is the
  tag; cleared like alarms.
- ``stop``: the machine's state is not ``running`` for longer than ``stop_after_s`` while
  an order is dispatched on it. Measured from the later of the stop's start and the
  start of the first dispatch overlapping it (the time the order waited), and the
  anomaly's ``ts`` is that point, so it links to that dispatch. Raised at ingest when the
  stop's end arrives (a late batch; ``cleared_ts`` = the end) and by the sweep while the
  stop goes on (cleared when its end arrives). One per stop: ``stop:<gw>:<device>:<start>``.
- ``offline``: a device's ``link`` went offline and came back more than
  ``offline_after_s`` later (at ingest, ``cleared_ts`` = back online; code ``link``), or
  the sweep sees it still offline that long, or the sweep sees the gateway silent (its
  ``last_seen``) that long (code ``gateway``; one per machine of the gateway, cleared by
  the first sweep after the gateway is heard again). Link history is read from the
  records in the gateway's seq order (an indexed lookup; a gateway sends in seq order).
- ``scrap_rate``: scrap / (good + scrap) of a device over the trailing ``window_s`` from
  its attributions exceeds ``threshold`` with at least ``min_pieces`` pieces; checked at
  each scrap count of a batch, at most one per device per window.
- ``stock_low``: a material below safety stock (cloud/inventory.py ``shortages``), checked
  by the sweep at most every ``stock_check_every_s``; one uncleared anomaly per material
  (``stock_low:<material>:<episode>``), cleared (``ts`` of the sweep) when stock recovers.
- ``maintenance``: raised by the maintenance counters (cloud/maintenance.py) through
  ``raise_anomaly``.
- ``material`` / ``operator`` / ``quality``: by a person (``create_manual``).

Records of devices no machine is registered for still raise (``machine_id`` NULL, with
gateway and device). Only alarm, limit, state, link and scrap count records are looked at,
so a batch of samples costs one list comprehension.

Severity (rules under the ``anomalies`` setting, cloud/settings.py)
-------------------------------------------------------------------
``severity_by_code[code]`` (an alarm code or a limit tag; null removes an override) wins,
else ``severity[kind]``. Levels info < minor < major < critical; *severe* means critical.
A critical ``quality`` anomaly (with ``hold_on_severe_quality``) puts its linked pending or
in-progress operations on hold (cloud/production.py ``stop_operation``, audited) and
records them in ``held_operations``; resolving it resumes those still on hold, unless
another unresolved anomaly holds them too.

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

Lifecycle (every step audited, ``anomaly.<action>``)
----------------------------------------------------
``acknowledge`` open -> acknowledged; ``resolve`` (cause and action required) acknowledged
-> resolved, and from open it acknowledges implicitly (same time and person: the response
time is then the resolution time); ``close`` resolved -> closed; ``reopen`` resolved or
closed -> acknowledged; ``assign`` in any state but closed. Anything else raises
``StateConflict`` (409) with the allowed actions. Response time = acknowledged - created;
closure time = closed (else resolved) - created (the cloud's clock, when people act).

Escalation (sweep): an anomaly still open (unacknowledged) ``escalate_after_s[severity]``
seconds after it was created (or last escalated) goes up one level, at most
``max_escalation_level``; 0 seconds never escalates. Notifications: ``opened`` when raised,
``escalated``, ``resolved`` (cloud/notify.py ``enqueue``, same transaction).

Record time is compared with the cloud's clock through the gateway's clock skew
(``gateways.clock_skew_ms``, cloud minus gateway): a gateway's "now" is ``now - skew``.
"""

from __future__ import annotations

import weakref
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Annotated, Any, Final, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import Integer, and_, case, func, literal, or_, select, union_all, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from buffer.records import Record
from cloud import production as prod
from cloud.auth import Actor
from cloud.core import clock, settings
from cloud.core.audit import actor_name, audit
from cloud.core.db import Database
from cloud.core.errors import Invalid, NotFound, StateConflict
from cloud.core.fields import text, whole
from cloud.core.models import (
    ANOMALY_KINDS,
    ANOMALY_STATUSES,
    MANUAL_ANOMALY_KINDS,
    SEVERITIES,
    AuditEntry,
    anomalies,
    anomaly_links,
    attributions,
    bom_lines,
    boms,
    dispatches,
    gateways,
    machine_events,
    machines,
    materials,
    records,
    wo_components,
    wo_operations,
    work_orders,
)
from cloud.core.quantities import from_micro
from cloud.inventory import shortages
from cloud.notify import enqueue

log = structlog.get_logger(__name__)

SETTINGS_KEY: Final = "anomalies"
SYSTEM: Final = "system"
RUNNING: Final = "running"
OPEN_ORDER: Final = ("released", "in_progress")
UNRESOLVED: Final = ("open", "acknowledged")
STATUS_RANK: Final = {s: i for i, s in enumerate(ANOMALY_STATUSES)}
ACTIONS: Final[dict[str, tuple[str, ...]]] = {
    "open": ("acknowledge", "resolve", "assign"),
    "acknowledged": ("resolve", "assign"),
    "resolved": ("close", "reopen", "assign"),
    "closed": ("reopen",),
}

_LOOKED_AT: Final = frozenset({"alarm", "limit", "state", "link", "count"})
_UNSET: Final[Any] = object()
# the sweep's last stock check per database (shortages scan 30 days of moves)
_STOCK_CHECKED: weakref.WeakKeyDictionary[Database, int] = weakref.WeakKeyDictionary()


# -- settings -------------------------------------------------------------------------

Severity = Literal["info", "minor", "major", "critical"]
Seconds = Annotated[float, Field(ge=0)]


class ScrapRate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    window_s: Seconds = Field(3600, description="trailing window of the scrap rate")
    min_pieces: int = Field(20, ge=0, description="pieces in the window before it counts")
    threshold: float = Field(0.1, ge=0, le=1, description="a fraction: 0.1 = 10 % scrap")


class SeverityByKind(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alarm: Severity = "major"
    limit: Severity = "minor"
    offline: Severity = "major"
    stop: Severity = "major"
    scrap_rate: Severity = "major"
    stock_low: Severity = "minor"
    maintenance: Severity = "minor"
    material: Severity = "minor"
    operator: Severity = "minor"
    quality: Severity = "minor"


class EscalateAfter(BaseModel):
    """Seconds an anomaly may stay open (unacknowledged) per severity before it is
    escalated one level; 0 never escalates. One number sets every severity."""

    model_config = ConfigDict(extra="forbid")

    info: Seconds = 0
    minor: Seconds = 3600
    major: Seconds = 900
    critical: Seconds = 300


class AnomalySettings(settings.SettingsModel):
    """Thresholds and severity rules of the anomalies (``/api/v1/settings/anomalies``)."""

    offline_after_s: Seconds = Field(300, description="a device offline this long is an anomaly")
    stop_after_s: Seconds = Field(600, description="a stop this long while an order is "
                                  "dispatched is an anomaly")
    scrap_rate: ScrapRate = Field(default_factory=ScrapRate)
    escalate_after_s: EscalateAfter = Field(default_factory=EscalateAfter)
    max_escalation_level: int = Field(3, ge=0)
    repeat_window_s: Seconds = Field(86400, description="an anomaly of the same machine and "
                                     "code within this window is a repeat")
    stock_check_every_s: Seconds = 300
    severity: SeverityByKind = Field(default_factory=SeverityByKind)
    severity_by_code: dict[str, Severity | None] = Field(
        default_factory=dict, description="alarm code or limit tag -> severity (wins over "
        "the kind's); null removes an override")
    hold_on_severe_quality: bool = Field(True, description="a critical quality anomaly "
                                         "puts its operations on hold")

    @field_validator("escalate_after_s", mode="before")
    @classmethod
    def _one_for_all(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return {sev: value for sev in SEVERITIES}
        return value


settings.register(SETTINGS_KEY, AnomalySettings)


def severity_for(conf: dict[str, Any], kind: str, code: str | int | None) -> str:
    """The rule's severity for ``kind`` (and ``code``)."""
    if code is not None:
        sev = (conf.get("severity_by_code") or {}).get(str(code))
        if sev in SEVERITIES:
            return str(sev)
    sev = conf["severity"].get(kind)
    return str(sev) if sev in SEVERITIES else "minor"


# -- helpers --------------------------------------------------------------------------

def _insert(session: AsyncSession, table: Any) -> Any:
    mod: Any = postgresql if session.bind.dialect.name == "postgresql" else sqlite
    return mod.insert(table)


async def _write_lock(session: AsyncSession) -> None:
    """SQLite: take the write lock with the transaction's first statement, so what is
    read next is what gets written over (PostgreSQL needs nothing: conflicts are handled
    by unique keys and conditional updates)."""
    if session.bind.dialect.name == "sqlite":
        await session.execute(update(anomalies).where(anomalies.c.id == -1)
                              .values(status=anomalies.c.status))


# -- raising --------------------------------------------------------------------------

async def raise_anomaly(session: AsyncSession, *, kind: str, ts: int, title: str,
                        severity: str | None = None, code: str | None = None,
                        detail: dict[str, Any] | None = None, machine_id: int | None = None,
                        material_id: int | None = None, gateway_id: str | None = None,
                        device: str | None = None, source_key: str | None = None,
                        created_by: str = SYSTEM) -> int | None:
    """Raise an anomaly in the caller's transaction: severity from the rules when None,
    links, repeat detection, the quality hold, and the ``opened`` notification. Returns
    its id, or None when ``source_key`` was raised before (idempotent on both backends,
    also between concurrent transactions). Raises production.InvalidInput for an unknown
    kind or severity."""
    return await _raise(session, kind=kind, ts=ts, title=title, severity=severity, code=code,
                        detail=detail, machine_id=machine_id, material_id=material_id,
                        gateway_id=gateway_id, device=device, source_key=source_key,
                        created_by=created_by)


async def _raise(session: AsyncSession, *, kind: str, ts: int, title: str,
                 severity: str | None = None, code: str | int | None = None,
                 detail: dict[str, Any] | None = None, machine_id: int | None = None,
                 material_id: int | None = None, gateway_id: str | None = None,
                 device: str | None = None, source_key: str | None = None,
                 created_by: str = SYSTEM, cleared_ts: int | None = None,
                 work_order_id: int | None = None, conf: dict[str, Any] | None = None,
                 now: datetime | None = None, repeat_of: Any = _UNSET) -> int | None:
    if kind not in ANOMALY_KINDS:
        raise Invalid(f"kind {kind!r} is not one of {', '.join(ANOMALY_KINDS)}",
                                "kind")
    if conf is None:
        conf = await settings.get(session, SETTINGS_KEY)
    code = None if code is None else str(code)[:64]
    severity = severity or severity_for(conf, kind, code)
    if severity not in SEVERITIES:
        raise Invalid(f"severity {severity!r} is not one of "
                                f"{', '.join(SEVERITIES)}", "severity")
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
        escalation_level=0, repeat_of=repeat_of)
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
    log.info("anomaly_raised", anomaly_id=new_id, kind=kind, code=code, severity=severity,
             machine_id=machine_id, repeat_of=repeat_of)
    return int(new_id)


async def _repeat_of(session: AsyncSession, window_ms: int, *, kind: str, ts: int,
                     code: str | None, machine_id: int | None, material_id: int | None,
                     gateway_id: str | None, device: str | None) -> int | None:
    row = await _previous(session, window_ms, kind=kind, ts=ts, code=code,
                          machine_id=machine_id, material_id=material_id,
                          gateway_id=gateway_id, device=device)
    return None if row is None else int(row.id)


async def _previous(session: AsyncSession, window_ms: int, *, kind: str, ts: int,
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


async def _release_hold(session: AsyncSession, actor: Actor | str, anomaly_id: int,
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


async def _clear(session: AsyncSession, *, kind: str, code: str | None, gateway_id: str,
                 device: str, ts: int) -> None:
    """Set ``cleared_ts`` on the latest uncleared anomaly of this device, kind and code
    raised at or before ``ts`` (one statement)."""
    a = anomalies.c
    latest = (select(a.id).where(a.kind == kind, a.code == code, a.gateway_id == gateway_id,
                                 a.device == device, a.cleared_ts.is_(None), a.ts <= ts)
              .order_by(a.ts.desc(), a.id.desc()).limit(1).scalar_subquery())
    await session.execute(update(anomalies).where(a.id == latest).values(cleared_ts=ts))


async def _clear_key(session: AsyncSession, source_key: str, ts: int) -> None:
    await session.execute(update(anomalies).where(anomalies.c.source_key == source_key,
                                                  anomalies.c.cleared_ts.is_(None))
                          .values(cleared_ts=ts))


async def _dispatched_from(session: AsyncSession, machine_id: int, start: int,
                           end: int) -> int | None:
    """The earliest time in [start, end) an order was dispatched on the machine (None:
    no dispatch overlaps). Dispatches never overlap, so the first one decides."""
    d = dispatches.c
    first = (await session.execute(
        select(d.start_ts).where(d.machine_id == machine_id, d.start_ts < end,
                                 or_(d.end_ts.is_(None), d.end_ts > start))
        .order_by(d.start_ts).limit(1))).scalar()
    return None if first is None else max(start, int(first))


# -- the ingest applier ----------------------------------------------------------------

def _scrap(r: Record) -> bool:
    return r.kind == "count" and r.body.get("counts") == "scrap" and int(r.body["delta"]) > 0


async def apply_anomalies(session: AsyncSession, gateway_id: str,
                          new_records: Sequence[Record]) -> None:
    """The ingest applier: raise and clear anomalies from the batch's new records (see
    the module docstring). Runs after attribution and the timeline applier in ingest's
    transaction; raises on database errors (the batch rolls back, the gateway retries)."""
    recs = [r for r in new_records if r.kind in _LOOKED_AT]
    recs = [r for r in recs if r.kind != "count" or _scrap(r)]
    if not recs:
        return
    conf = await settings.get(session, SETTINGS_KEY)
    known = {row.device: row for row in (await session.execute(
        select(machines.c.device, machines.c.id, machines.c.name)
        .where(machines.c.gateway_id == gateway_id))).all()}
    by_kind: dict[str, dict[str, list[Record]]] = defaultdict(lambda: defaultdict(list))
    for r in recs:
        m = known.get(r.device)
        subject = {"machine_id": m.id if m else None, "gateway_id": gateway_id,
                   "device": r.device}
        label = m.name if m else f"{gateway_id}/{r.device}"
        if r.kind in ("alarm", "limit"):
            await _alarm_or_limit(session, conf, gateway_id, r, subject, label)
        else:
            by_kind[r.kind][r.device].append(r)
    # a stop matters only while an order is dispatched: registered machines only
    stopped = {d: rs for d, rs in by_kind["state"].items() if d in known}
    if stopped:
        await _stops_ended(session, conf, gateway_id, known, stopped)
    for device, recs_ in by_kind["link"].items():
        m = known.get(device)
        await _offline_ended(session, conf, gateway_id, device, m.id if m else None,
                             m.name if m else f"{gateway_id}/{device}", recs_)
    if by_kind["count"]:
        await _scrap_rate(session, conf, gateway_id, known, by_kind["count"])


async def _alarm_or_limit(session: AsyncSession, conf: dict[str, Any], gateway_id: str,
                          r: Record, subject: dict[str, Any], label: str) -> None:
    body = r.body
    code = str(body["code"]) if r.kind == "alarm" else str(body["tag"])
    if not body["active"]:
        await _clear(session, kind=r.kind, code=code[:64], gateway_id=gateway_id,
                     device=r.device, ts=r.ts)
        return
    before = await _previous(session, int(conf["repeat_window_s"]) * 1000, kind=r.kind,
                             ts=r.ts, code=code[:64], material_id=None, **subject)
    if before is not None and before.cleared_ts is None:
        return  # still active: raised again (a restarted gateway re-reads it)
    if r.kind == "alarm":
        title = f"{label}: alarm {code} {body.get('text') or ''}".strip()
        detail = {"code": body["code"], "text": body.get("text"), "seq": r.seq}
    else:
        title = (f"{label}: {code} = {body['value']} outside "
                 f"[{body.get('lo')}, {body.get('hi')}]")
        detail = {"tag": code, "value": body["value"], "lo": body.get("lo"),
                  "hi": body.get("hi"), "seq": r.seq}
    await _raise(session, kind=r.kind, ts=r.ts, title=title, code=code, detail=detail,
                 source_key=f"{r.kind}:{gateway_id}:{r.seq}", conf=conf,
                 repeat_of=None if before is None else int(before.id), **subject)


async def _stops_ended(session: AsyncSession, conf: dict[str, Any], gateway_id: str,
                       known: dict[str, Any], by_device: dict[str, list[Record]]) -> None:
    """Stops that the batch's state records end (or, for late records inserted into the
    past, the stops around them), longer than the threshold while dispatched. One
    statement for all devices: per device, its state events from the last running one
    before the batch (else its first event) to the first running one after the batch
    (else the batch's last)."""
    ev = machine_events.c
    parts = []
    for device, recs in by_device.items():
        base = [ev.gateway_id == gateway_id, ev.device == device, ev.kind == "state"]
        lo, hi = min(r.ts for r in recs), max(r.ts for r in recs)
        start = (select(ev.ts).where(*base, ev.state == RUNNING, ev.ts < lo)
                 .order_by(ev.ts.desc()).limit(1).scalar_subquery())
        end = (select(ev.ts).where(*base, ev.state == RUNNING, ev.ts > hi)
               .order_by(ev.ts).limit(1).scalar_subquery())
        parts.append(select(ev.device, ev.ts, ev.seq, ev.state).where(
            *base, ev.ts >= func.coalesce(start, -(2**62)), ev.ts <= func.coalesce(end, hi)))
    both = parts[0] if len(parts) == 1 else union_all(*parts)
    sub = both.subquery()
    rows = (await session.execute(select(sub).order_by(sub.c.device, sub.c.ts,
                                                       sub.c.seq))).all()
    limit_ms = int(conf["stop_after_s"]) * 1000
    device: str | None = None
    stop_start: int | None = None
    stop_state = ""
    for row in rows:
        if row.device != device:
            device, stop_start = row.device, None
        if row.state != RUNNING:
            if stop_start is None:
                stop_start, stop_state = int(row.ts), str(row.state)
            continue
        if stop_start is not None and row.ts - stop_start > limit_ms:
            m = known[row.device]
            await _raise_stop(session, conf, gateway_id, row.device, m.id, m.name,
                              stop_start, stop_state, int(row.ts), int(row.ts))
        stop_start = None


async def _raise_stop(session: AsyncSession, conf: dict[str, Any], gateway_id: str,
                      device: str, machine_id: int, label: str, start: int, state: str,
                      until: int, cleared_ts: int | None, now: datetime | None = None) -> None:
    since = await _dispatched_from(session, machine_id, start, until)
    if since is None or until - since <= int(conf["stop_after_s"]) * 1000:
        return
    key = f"stop:{gateway_id}:{device}:{start}"
    minutes = round((until - since) / 60_000)
    new = await _raise(
        session, kind="stop", ts=since, title=f"{label}: stopped ({state}) "
        f"{'for' if cleared_ts else 'for over'} {minutes} min while dispatched", code=None,
        detail={"state": state, "stop_start_ts": start, "dispatched_from_ts": since,
                "seen_until_ts": until}, machine_id=machine_id, gateway_id=gateway_id,
        device=device, source_key=key, cleared_ts=cleared_ts, conf=conf, now=now)
    if new is None and cleared_ts is not None:
        await _clear_key(session, key, cleared_ts)


async def _link_history(session: AsyncSession, gateway_id: str, device: str,
                        before_seq: int) -> list[tuple[int, bool]]:
    """The device's link records before ``before_seq`` back to (and including) the last
    one that was online, oldest first: where an offline episode in progress began."""
    out: list[tuple[int, bool]] = []
    r = records.c
    cursor = before_seq
    while True:
        rows = (await session.execute(
            select(r.seq, r.ts, r.body).where(r.gateway_id == gateway_id, r.device == device,
                                              r.kind == "link", r.seq < cursor)
            .order_by(r.seq.desc()).limit(50))).all()
        for row in rows:
            online = bool(row.body.get("online"))
            out.append((int(row.ts), online))
            if online:
                return out[::-1]
        if len(rows) < 50:
            return out[::-1]
        cursor = rows[-1].seq


def _offline_start(history: Iterable[tuple[int, bool]]) -> int | None:
    start = None
    for ts, online in history:
        if online:
            start = None
        elif start is None:
            start = ts
    return start


async def _offline_ended(session: AsyncSession, conf: dict[str, Any], gateway_id: str,
                         device: str, machine_id: int | None, label: str,
                         recs: list[Record]) -> None:
    limit_ms = int(conf["offline_after_s"]) * 1000
    start = _offline_start(await _link_history(session, gateway_id, device, recs[0].seq))
    for r in recs:
        if not r.body.get("online"):
            start = r.ts if start is None else start
            continue
        if start is not None and r.ts - start > limit_ms:
            await _raise_offline(session, conf, gateway_id, device, machine_id, label, start,
                                 "link", r.ts, r.ts)
        start = None


async def _raise_offline(session: AsyncSession, conf: dict[str, Any], gateway_id: str,
                         device: str | None, machine_id: int | None, label: str, start: int,
                         code: str, until: int, cleared_ts: int | None,
                         now: datetime | None = None) -> None:
    key = f"offline:{gateway_id}:{device or ''}:{code}:{start}"
    minutes = round((until - start) / 60_000)
    what = "gateway silent" if code == "gateway" else "offline"
    new = await _raise(
        session, kind="offline", ts=start, code=code,
        title=f"{label}: {what} {'for' if cleared_ts else 'for over'} {minutes} min",
        detail={"since_ts": start, "seen_until_ts": until}, machine_id=machine_id,
        gateway_id=gateway_id, device=device, source_key=key, cleared_ts=cleared_ts,
        conf=conf, now=now)
    if new is None and cleared_ts is not None:
        await _clear_key(session, key, cleared_ts)


def _points(times: Iterable[int], window: int, most: int = 16) -> list[int]:
    """Where to measure a device's trailing scrap window: its scrap counts' times, thinned
    to at least window/10 apart (a live batch spans seconds: one point), the last kept."""
    at = sorted(set(times))
    gap = max(window // 10, (at[-1] - at[0]) // most, 1)
    out = [at[0]]
    for t in at[1:]:
        if t - out[-1] >= gap:
            out.append(t)
    if out[-1] != at[-1]:
        if at[-1] - out[-1] < gap and len(out) > 1:
            out.pop()
        out.append(at[-1])
    return out


async def _scrap_rate(session: AsyncSession, conf: dict[str, Any], gateway_id: str,
                      known: dict[str, Any], by_device: dict[str, list[Record]]) -> None:
    """Scrap rate over the trailing window at the batch's scrap counts, summed in the
    database (one statement for all devices: the window's rows never leave it)."""
    rule = conf["scrap_rate"]
    window = int(rule["window_s"]) * 1000
    threshold, min_pieces = float(rule["threshold"]), int(rule["min_pieces"])
    if window <= 0:
        return
    at = attributions.c
    points = {d: _points((r.ts for r in rs), window) for d, rs in by_device.items()}
    width = max(len(p) for p in points.values())
    parts = []
    for device, pts in points.items():
        pts = pts + [pts[-1]] * (width - len(pts))
        cols: list[Any] = [at.device]
        for i, t in enumerate(pts):
            inside = and_(at.ts > t - window, at.ts <= t)
            cols += [func.sum(case((inside, at.good), else_=0)).label(f"g{i}"),
                     func.sum(case((inside, at.scrap), else_=0)).label(f"s{i}")]
        parts.append(select(*cols).where(at.gateway_id == gateway_id, at.device == device,
                                         at.ts > pts[0] - window, at.ts <= pts[-1])
                     .group_by(at.device))
    stmt = parts[0] if len(parts) == 1 else union_all(*parts)
    a = anomalies.c
    for row in (await session.execute(stmt)).mappings().all():
        device = row["device"]
        m = known.get(device)
        label = m.name if m else f"{gateway_id}/{device}"
        last: Any = _UNSET
        for i, t in enumerate(points[device]):
            good, scrap = int(row[f"g{i}"] or 0), int(row[f"s{i}"] or 0)
            total = good + scrap
            if total < min_pieces or total <= 0 or scrap / total <= threshold:
                continue
            if last is _UNSET:  # looked up only when a window is over the threshold
                last = (await session.execute(
                    select(a.ts).where(a.kind == "scrap_rate", a.gateway_id == gateway_id,
                                       a.device == device, a.ts > t - window,
                                       a.ts <= points[device][-1])
                    .order_by(a.ts.desc()).limit(1))).scalar()
            if last is not None and last > t - window:
                continue
            new = await _raise(
                session, kind="scrap_rate", ts=t, code=None,
                title=f"{label}: scrap rate {scrap / total:.0%} over {window // 60_000} min "
                      f"({scrap} of {total})",
                detail={"scrap": scrap, "total": total, "rate": round(scrap / total, 4),
                        "window_s": window // 1000, "threshold": threshold},
                machine_id=m.id if m else None, gateway_id=gateway_id, device=device,
                source_key=f"scrap_rate:{gateway_id}:{device}:{t // window}", conf=conf)
            if new is not None:
                last = t


# -- the sweep --------------------------------------------------------------------------

async def sweep(db: Database, now_ms: int) -> None:
    """The periodic job (cloud/jobs.py): offline machines and silent gateways, ongoing
    stops while dispatched, stock below safety, escalation. Idempotent (source keys,
    conditional updates), so several cloud processes may run it. Each part runs in its
    own transaction; a failing part does not stop the others (the first error is raised
    after all ran)."""
    async with db.sessions() as s:
        conf = await settings.get(s, SETTINGS_KEY)
    first: Exception | None = None
    for part in (_sweep_offline, _sweep_stops, _sweep_stock, _sweep_escalation):
        try:
            await part(db, conf, now_ms)
        except Exception as exc:  # the other parts still run
            log.exception("anomaly_sweep_failed", part=part.__name__)
            first = first or exc
    if first is not None:
        raise first


async def _sweep_offline(db: Database, conf: dict[str, Any], now_ms: int) -> None:
    limit_ms = int(conf["offline_after_s"]) * 1000
    g, m = gateways.c, machines.c
    async with db.sessions() as s:
        gws = {r.id: r for r in (await s.execute(
            select(g.id, g.last_seen, g.clock_skew_ms).where(g.revoked_at.is_(None)))).all()}
        machine_rows = (await s.execute(select(m.id, m.gateway_id, m.device, m.name)
                                        .order_by(m.id))).all()
        by_gw: dict[str, list[Any]] = defaultdict(list)
        for row in machine_rows:
            by_gw[row.gateway_id].append(row)
        todo: list[tuple[Any, ...]] = []
        for gw in gws.values():
            skew = int(gw.clock_skew_ms or 0)
            if gw.last_seen is None:
                continue
            seen = clock.to_ms(gw.last_seen)
            if now_ms - seen > limit_ms:  # silent: every machine of it is unknown
                for row in by_gw[gw.id] or [None]:
                    todo.append(("silent", gw.id, row, seen - skew, now_ms - skew))
                continue
            for row in by_gw[gw.id]:
                last = (await s.execute(
                    select(records.c.seq, records.c.body).where(
                        records.c.gateway_id == gw.id, records.c.device == row.device,
                        records.c.kind == "link").order_by(records.c.seq.desc()).limit(1))
                ).first()
                if last is None or last.body.get("online"):
                    continue
                start = _offline_start(await _link_history(s, gw.id, row.device,
                                                           int(last.seq) + 1))
                if start is not None and now_ms - skew - start > limit_ms:
                    todo.append(("link", gw.id, row, start, now_ms - skew))
        a = anomalies.c
        back = (await s.execute(
            select(a.id, a.gateway_id).where(a.kind == "offline", a.code == "gateway",
                                             a.cleared_ts.is_(None)))).all()
        heard = [(r.id, gws[r.gateway_id]) for r in back
                 if r.gateway_id in gws and gws[r.gateway_id].last_seen is not None
                 and now_ms - clock.to_ms(gws[r.gateway_id].last_seen) <= limit_ms]
    if not todo and not heard:
        return
    async with db.sessions() as s, s.begin():
        await _write_lock(s)
        for what, gw_id, row, start, until in todo:
            label = row.name if row is not None else gw_id
            await _raise_offline(s, conf, gw_id, row.device if row else None,
                                 row.id if row else None, label, start,
                                 "gateway" if what == "silent" else "link", until, None,
                                 clock.from_ms(now_ms))
        for anomaly_id, gw in heard:  # back: cleared when the gateway was heard again
            back_ts = clock.to_ms(gw.last_seen) - int(gw.clock_skew_ms or 0)
            await s.execute(update(anomalies).where(anomalies.c.id == anomaly_id,
                                                    anomalies.c.cleared_ts.is_(None))
                            .values(cleared_ts=back_ts))


async def _sweep_stops(db: Database, conf: dict[str, Any], now_ms: int) -> None:
    limit_ms = int(conf["stop_after_s"]) * 1000
    d, m, g, ev = dispatches.c, machines.c, gateways.c, machine_events.c
    todo = []
    async with db.sessions() as s:
        rows = (await s.execute(
            select(d.machine_id, d.start_ts, d.end_ts, m.gateway_id, m.device, m.name,
                   g.clock_skew_ms)
            .select_from(dispatches.join(machines, m.id == d.machine_id)
                         .join(gateways, g.id == m.gateway_id))
            .where(g.revoked_at.is_(None), or_(d.end_ts.is_(None),
                                               d.end_ts > now_ms - 86_400_000)))).all()
        seen: set[int] = set()
        for r in rows:
            gw_now = now_ms - int(r.clock_skew_ms or 0)
            if r.machine_id in seen or not (r.start_ts <= gw_now and
                                            (r.end_ts is None or r.end_ts > gw_now)):
                continue
            seen.add(r.machine_id)
            base = [ev.gateway_id == r.gateway_id, ev.device == r.device, ev.kind == "state"]
            last = (await s.execute(select(ev.ts, ev.state).where(*base, ev.ts <= gw_now)
                                    .order_by(ev.ts.desc(), ev.seq.desc()).limit(1))).first()
            if last is None or last.state == RUNNING or gw_now - last.ts <= 0:
                continue
            ran = (await s.execute(select(ev.ts).where(*base, ev.state == RUNNING,
                                                       ev.ts < last.ts)
                                   .order_by(ev.ts.desc()).limit(1))).scalar()
            q = select(ev.ts, ev.state).where(*base).order_by(ev.ts, ev.seq).limit(1)
            first = (await s.execute(q.where(ev.ts > ran) if ran is not None else q)).first()
            assert first is not None
            if gw_now - first.ts <= limit_ms:
                continue
            since = await _dispatched_from(s, r.machine_id, int(first.ts), gw_now)
            if since is not None and gw_now - since > limit_ms:
                todo.append((r, int(first.ts), str(first.state), gw_now))
    if not todo:
        return
    async with db.sessions() as s, s.begin():
        await _write_lock(s)
        for r, start, state, gw_now in todo:
            await _raise_stop(s, conf, r.gateway_id, r.device, r.machine_id, r.name, start,
                              state, gw_now, None, clock.from_ms(now_ms))


async def _sweep_stock(db: Database, conf: dict[str, Any], now_ms: int) -> None:
    every = int(conf["stock_check_every_s"]) * 1000
    last = _STOCK_CHECKED.get(db)
    if last is not None and 0 <= now_ms - last < every:
        return
    _STOCK_CHECKED[db] = now_ms
    a = anomalies.c
    async with db.sessions() as s:
        short = {d["material"]: d for d in await shortages(s, now=now_ms)}
        ids = dict((await s.execute(select(materials.c.code, materials.c.id))).tuples().all())
        uncleared = dict((await s.execute(
            select(a.material_id, a.id).where(a.kind == "stock_low",
                                              a.cleared_ts.is_(None)))).tuples().all())
    new = {code: doc for code, doc in short.items() if ids.get(code) not in uncleared}
    short_ids = {ids.get(c) for c in short}
    recovered = [aid for mid, aid in uncleared.items() if mid not in short_ids]
    if not new and not recovered:
        return
    async with db.sessions() as s, s.begin():
        await _write_lock(s)
        for code, doc in new.items():
            mid = ids[code]
            episode = 1 + int((await s.execute(
                select(func.count()).select_from(anomalies)
                .where(a.kind == "stock_low", a.material_id == mid))).scalar_one())
            await _raise(
                s, kind="stock_low", ts=now_ms, code=None,
                title=f"{code} below safety stock: {from_micro(doc['balance_u'])} < "
                      f"{from_micro(doc['safety_stock_u'])} {doc['unit']}",
                detail={k: doc[k] for k in ("balance_u", "safety_stock_u",
                                            "safety_stock_source", "days_of_cover", "unit")},
                material_id=mid, source_key=f"stock_low:{code}:{episode}", conf=conf,
                now=clock.from_ms(now_ms))
        if recovered:
            await s.execute(update(anomalies).where(a.id.in_(recovered),
                                                    a.cleared_ts.is_(None))
                            .values(cleared_ts=now_ms))


async def _sweep_escalation(db: Database, conf: dict[str, Any], now_ms: int) -> None:
    after = {sev: int(conf["escalate_after_s"].get(sev) or 0) * 1000 for sev in SEVERITIES}
    top = int(conf["max_escalation_level"])
    a = anomalies.c
    async with db.sessions() as s:
        rows = (await s.execute(
            select(a.id, a.severity, a.created, a.escalated_at, a.escalation_level)
            .where(a.status == "open", a.escalation_level < top))).all()
    due = [r for r in rows if after.get(r.severity, 0) > 0 and
           now_ms - clock.to_ms(r.escalated_at or r.created) >= after[r.severity]]
    if not due:
        return
    when = clock.from_ms(now_ms)
    async with db.sessions() as s, s.begin():
        await _write_lock(s)
        for r in due:
            done = (await s.execute(
                update(anomalies).where(a.id == r.id, a.status == "open",
                                        a.escalation_level == r.escalation_level)
                .values(escalation_level=r.escalation_level + 1, escalated_at=when)
                .returning(a.id))).scalar()
            if done is None:  # acknowledged or escalated meanwhile
                continue
            await audit(s, SYSTEM, "anomaly.escalate", "anomaly", r.id,
                        {"level": r.escalation_level + 1, "severity": r.severity})
            await enqueue(s, r.id, event="escalated", now=when)
            log.info("anomaly_escalated", anomaly_id=r.id, level=r.escalation_level + 1)


# -- lifecycle ----------------------------------------------------------------------------

async def _transition(session: AsyncSession, actor: Actor | str, anomaly_id: int,
                      action: str, from_: Sequence[str], values: dict[str, Any],
                      detail: dict[str, Any]) -> Any:
    """Move the anomaly with one conditional UPDATE (atomic on both backends: a
    concurrent action makes this one a 409, never a lost update), then audit."""
    a = anomalies.c
    row = (await session.execute(
        update(anomalies).where(a.id == anomaly_id, a.status.in_(from_)).values(**values)
        .returning(a.id, a.status, a.kind, a.held_operations))).first()
    if row is None:
        current = (await session.execute(select(a.status).where(a.id == anomaly_id))).scalar()
        if current is None:
            raise NotFound(f"anomaly {anomaly_id} unknown")
        raise StateConflict("anomaly", str(anomaly_id), action, current, ACTIONS[current])
    await audit(session, actor, f"anomaly.{action}", "anomaly", anomaly_id, detail)
    return row


def _person(value: Any, what: str, max_len: int = 96) -> str:
    name = text(value, what, max_len=max_len)
    assert name is not None
    return name


async def acknowledge(session: AsyncSession, actor: Actor | str, anomaly_id: int,
                      assignee: str | None = None, note: str | None = None, *,
                      now: datetime | None = None) -> dict[str, Any]:
    """open -> acknowledged (the response), optionally assigning it; the note is kept in
    the audit trail (``history`` of ``get_anomaly``). Raises NotFound, StateConflict,
    InvalidInput."""
    values: dict[str, Any] = {"status": "acknowledged", "acknowledged_at": now or clock.now(),
                              "acknowledged_by": actor_name(actor)[:96]}
    if assignee is not None:
        values["assignee"] = _person(assignee, "assignee")
    note = text(note, "note", max_len=1000, required=False)
    await _transition(session, actor, anomaly_id, "acknowledge", ("open",), values,
                      {"assignee": values.get("assignee"), "note": note})
    return await get_anomaly(session, anomaly_id)


async def resolve(session: AsyncSession, actor: Actor | str, anomaly_id: int, cause: str,
                  action: str, *, now: datetime | None = None) -> dict[str, Any]:
    """acknowledged (or open: acknowledged implicitly, same time and person) -> resolved
    with the cause and the action taken (both required). Releases a quality hold this
    anomaly put on operations. Raises NotFound, StateConflict, InvalidInput."""
    cause_t = text(cause, "cause", max_len=1000)
    action_t = text(action, "action", max_len=1000)
    when, who = now or clock.now(), actor_name(actor)[:96]
    a = anomalies.c
    values = {"status": "resolved", "resolved_at": when, "resolved_by": who,
              "cause": cause_t, "action": action_t,
              "acknowledged_at": func.coalesce(a.acknowledged_at, when),
              "acknowledged_by": func.coalesce(a.acknowledged_by, who)}
    row = await _transition(session, actor, anomaly_id, "resolve", UNRESOLVED, values,
                            {"cause": cause_t, "action": action_t})
    if row.held_operations:
        await _release_hold(session, actor, anomaly_id, row.held_operations)
    await enqueue(session, anomaly_id, event="resolved")
    return await get_anomaly(session, anomaly_id)


async def close(session: AsyncSession, actor: Actor | str, anomaly_id: int, *,
                now: datetime | None = None) -> dict[str, Any]:
    """resolved -> closed (the loop is closed). Raises NotFound, StateConflict."""
    await _transition(session, actor, anomaly_id, "close", ("resolved",),
                      {"status": "closed", "closed_at": now or clock.now(),
                       "closed_by": actor_name(actor)[:96]}, {})
    return await get_anomaly(session, anomaly_id)


async def reopen(session: AsyncSession, actor: Actor | str, anomaly_id: int,
                 note: str | None = None) -> dict[str, Any]:
    """resolved/closed -> acknowledged (the fix did not hold); resolution and closure are
    cleared, cause and action stay until the next resolve. A released hold is not put
    back (stop the operation by hand if needed)."""
    note = text(note, "note", max_len=1000, required=False)
    await _transition(session, actor, anomaly_id, "reopen", ("resolved", "closed"),
                      {"status": "acknowledged", "resolved_at": None, "resolved_by": None,
                       "closed_at": None, "closed_by": None}, {"note": note})
    return await get_anomaly(session, anomaly_id)


async def assign(session: AsyncSession, actor: Actor | str, anomaly_id: int,
                 assignee: str) -> dict[str, Any]:
    """Set who handles it (any state but closed); the status does not change."""
    who = _person(assignee, "assignee")
    await _transition(session, actor, anomaly_id, "assign", ("open", "acknowledged", "resolved"),
                      {"assignee": who}, {"assignee": who})
    return await get_anomaly(session, anomaly_id)


async def create_manual(session: AsyncSession, actor: Actor | str, kind: str, title: str,
                        severity: str | None = None, machine_id: int | None = None,
                        work_order: str | None = None, material: str | None = None,
                        ts: int | None = None, detail: dict[str, Any] | None = None, *,
                        now: datetime | None = None) -> dict[str, Any]:
    """A person reports a material, operator or quality anomaly, optionally on a machine,
    a work order (number) and/or a material (code); ``ts`` defaults to now (epoch ms).
    Severity from the rules when None. A critical quality anomaly holds the linked
    operations (module docstring). Audited. Raises InvalidInput naming the field."""
    if kind not in MANUAL_ANOMALY_KINDS:
        raise Invalid(f"kind {kind!r}: a person reports one of "
                                f"{', '.join(MANUAL_ANOMALY_KINDS)}", "kind")
    title_t = text(title, "title", max_len=255)
    assert title_t is not None
    if severity is not None and severity not in SEVERITIES:
        raise Invalid(f"severity {severity!r} is not one of "
                                f"{', '.join(SEVERITIES)}", "severity")
    if detail is not None and not isinstance(detail, dict):
        raise Invalid("detail must be an object", "detail")
    if machine_id is not None and (await session.execute(
            select(machines.c.id).where(machines.c.id == machine_id))).scalar() is None:
        raise Invalid(f"machine_id: no machine {machine_id}", "machine_id")
    wo_id = mat_id = None
    if work_order is not None:
        wo_id = (await session.execute(select(work_orders.c.id)
                                       .where(work_orders.c.number == work_order))).scalar()
        if wo_id is None:
            raise Invalid(f"work_order: no work order {work_order!r}", "work_order")
    if material is not None:
        mat_id = (await session.execute(select(materials.c.id)
                                        .where(materials.c.code == material))).scalar()
        if mat_id is None:
            raise Invalid(f"material: no material {material!r}", "material")
    when = now or clock.now()
    ts = clock.to_ms(when) if ts is None else whole(ts, "ts")
    full = {**(detail or {}), **({"work_order": work_order} if work_order else {})}
    new_id = await _raise(session, kind=kind, ts=ts, title=title_t, severity=severity,
                          detail=full, machine_id=machine_id, material_id=mat_id,
                          created_by=actor_name(actor), work_order_id=wo_id, now=when)
    assert new_id is not None
    await audit(session, actor, "anomaly.create", "anomaly", new_id,
                {"kind": kind, "title": title_t, "severity": severity,
                 "machine_id": machine_id, "work_order": work_order, "material": material})
    return await get_anomaly(session, new_id)


# -- reading (the web UI and the API call these) ------------------------------------------

def _seconds(later: datetime | None, earlier: datetime) -> float | None:
    return None if later is None else round((later - earlier).total_seconds(), 3)


def _item(r: Any, links: list[dict[str, Any]], now_ms: int) -> dict[str, Any]:
    closure = r.closed_at or r.resolved_at
    return {"id": r.id, "kind": r.kind, "code": r.code, "severity": r.severity,
            "status": r.status, "title": r.title, "detail": r.detail,
            "machine_id": r.machine_id, "machine": r.machine, "material": r.material,
            "gateway_id": r.gateway_id, "device": r.device, "ts": r.ts,
            "cleared_ts": r.cleared_ts, "created": clock.iso(r.created), "created_by": r.created_by,
            "acknowledged_at": clock.iso(r.acknowledged_at), "acknowledged_by": r.acknowledged_by,
            "resolved_at": clock.iso(r.resolved_at), "resolved_by": r.resolved_by,
            "closed_at": clock.iso(r.closed_at), "closed_by": r.closed_by,
            "assignee": r.assignee, "cause": r.cause, "action": r.action,
            "escalation_level": r.escalation_level, "escalated_at": clock.iso(r.escalated_at),
            "repeat_of": r.repeat_of, "held_operations": r.held_operations or [],
            "response_s": _seconds(r.acknowledged_at, r.created),
            "closure_s": _seconds(closure, r.created),
            "age_s": None if r.status == "closed" else round((now_ms - r.ts) / 1000, 3),
            "allowed_actions": list(ACTIONS[r.status]),
            "links": links}


def _select() -> Any:
    return (select(anomalies, machines.c.name.label("machine"),
                   materials.c.code.label("material"))
            .select_from(anomalies.outerjoin(machines, machines.c.id == anomalies.c.machine_id)
                         .outerjoin(materials, materials.c.id == anomalies.c.material_id)))


async def _links_of(session: AsyncSession, ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
    if not ids:
        return out
    lk, wo, op = anomaly_links.c, work_orders.c, wo_operations.c
    rows = (await session.execute(
        select(lk.anomaly_id, wo.number, op.step, op.name, lk.customer, lk.work_order_id,
               lk.wo_operation_id)
        .select_from(anomaly_links.join(work_orders, wo.id == lk.work_order_id)
                     .outerjoin(wo_operations, op.id == lk.wo_operation_id))
        .where(lk.anomaly_id.in_(ids)).order_by(lk.id))).all()
    for r in rows:
        out[r.anomaly_id].append({"work_order": r.number, "step": r.step, "operation": r.name,
                                  "customer": r.customer, "work_order_id": r.work_order_id,
                                  "wo_operation_id": r.wo_operation_id})
    return out


async def _items(session: AsyncSession, rows: Sequence[Any],
                 now_ms: int | None) -> list[dict[str, Any]]:
    links = await _links_of(session, [r.id for r in rows])
    now_ms = clock.to_ms(clock.now()) if now_ms is None else now_ms
    return [_item(r, links[r.id], now_ms) for r in rows]


def _statuses(status: str | Sequence[str] | None) -> list[str]:
    if status is None:
        return []
    given = [status] if isinstance(status, str) else list(status)
    out = [s for item in given for s in item.split(",") if s]
    for s in out:
        if s not in ANOMALY_STATUSES:
            raise Invalid(f"status {s!r} is not one of "
                                    f"{', '.join(ANOMALY_STATUSES)}", "status")
    return out


async def list_anomalies(session: AsyncSession, *, status: str | Sequence[str] | None = None,
                         kind: str | None = None, machine_id: int | None = None,
                         since_ts: int | None = None, until_ts: int | None = None,
                         open_first: bool = True, limit: int = 100, offset: int = 0,
                         now_ms: int | None = None) -> dict[str, Any]:
    """``{"items": [...], "total": n}``: anomalies with ``since_ts <= ts < until_ts``,
    filtered by status (one, a list, or comma-separated), kind and machine; with
    ``open_first`` ordered open, acknowledged, resolved, closed, then newest ``ts``
    first, else newest first. Each item is JSON-able (``_item``: times ISO, ``ts`` epoch
    ms, ``response_s``/``closure_s``/``age_s`` seconds or None, ``links``). Raises
    InvalidInput for an unknown status or kind."""
    a = anomalies.c
    cond = []
    statuses = _statuses(status)
    if statuses:
        cond.append(a.status.in_(statuses))
    if kind is not None:
        if kind not in ANOMALY_KINDS:
            raise Invalid(f"kind {kind!r} is not one of {', '.join(ANOMALY_KINDS)}",
                                    "kind")
        cond.append(a.kind == kind)
    if machine_id is not None:
        cond.append(a.machine_id == machine_id)
    if since_ts is not None:
        cond.append(a.ts >= since_ts)
    if until_ts is not None:
        cond.append(a.ts < until_ts)
    total = (await session.execute(select(func.count()).select_from(anomalies)
                                   .where(*cond))).scalar_one()
    order = [a.ts.desc(), a.id.desc()]
    if open_first:
        rank = case(*((a.status == s, i) for s, i in STATUS_RANK.items()), else_=9)
        order.insert(0, rank)
    rows = (await session.execute(_select().where(*cond).order_by(*order)
                                  .limit(limit).offset(offset))).all()
    return {"items": await _items(session, rows, now_ms), "total": int(total)}


async def get_anomaly(session: AsyncSession, anomaly_id: int, *,
                      now_ms: int | None = None) -> dict[str, Any]:
    """One anomaly as in ``list_anomalies``, plus ``history``: its audit trail (who did
    what, with notes), oldest first. Raises NotFound."""
    row = (await session.execute(_select().where(anomalies.c.id == anomaly_id))).first()
    if row is None:
        raise NotFound(f"anomaly {anomaly_id} unknown")
    doc = (await _items(session, [row], now_ms))[0]
    trail = (await session.execute(
        select(AuditEntry.ts, AuditEntry.actor, AuditEntry.action, AuditEntry.detail)
        .where(AuditEntry.entity == "anomaly", AuditEntry.entity_id == str(anomaly_id))
        .order_by(AuditEntry.id))).all()
    doc["history"] = [{"at": clock.iso(t.ts), "actor": t.actor, "action": t.action,
                       "detail": t.detail} for t in trail]
    return doc


async def anomaly_stats(session: AsyncSession, *, since_ts: int,
                        until_ts: int) -> dict[str, Any]:
    """Figures over anomalies with ``since_ts <= ts < until_ts``: ``total``; ``open``
    (not yet resolved: open or acknowledged) and ``unacknowledged`` (status open);
    ``closure_rate`` (resolved or closed / total) and ``repeat_rate`` (with repeat_of /
    total), fractions 0..1 or None when total is 0; ``mean_response_s`` and
    ``mean_closure_s`` over those that have one (None if none); ``by_kind``,
    ``by_severity``, ``by_status`` counts."""
    a = anomalies.c
    rows = (await session.execute(
        select(a.kind, a.severity, a.status, a.repeat_of, a.created, a.acknowledged_at,
               a.resolved_at, a.closed_at)
        .where(a.ts >= since_ts, a.ts < until_ts))).all()
    total = len(rows)
    by: dict[str, dict[str, int]] = {"kind": defaultdict(int), "severity": defaultdict(int),
                                     "status": defaultdict(int)}
    responses, closures = [], []
    for r in rows:
        by["kind"][r.kind] += 1
        by["severity"][r.severity] += 1
        by["status"][r.status] += 1
        if r.acknowledged_at is not None:
            responses.append((r.acknowledged_at - r.created).total_seconds())
        if (r.closed_at or r.resolved_at) is not None:
            closures.append(((r.closed_at or r.resolved_at) - r.created).total_seconds())
    done = by["status"]["resolved"] + by["status"]["closed"]
    repeats = sum(1 for r in rows if r.repeat_of is not None)

    def mean(xs: list[float]) -> float | None:
        return round(sum(xs) / len(xs), 3) if xs else None

    return {"since_ts": since_ts, "until_ts": until_ts, "total": total,
            "open": by["status"]["open"] + by["status"]["acknowledged"],
            "unacknowledged": by["status"]["open"],
            "closure_rate": round(done / total, 4) if total else None,
            "repeat_rate": round(repeats / total, 4) if total else None,
            "mean_response_s": mean(responses), "mean_closure_s": mean(closures),
            "by_kind": dict(by["kind"]), "by_severity": dict(by["severity"]),
            "by_status": dict(by["status"])}


async def open_anomalies_by_machine(session: AsyncSession) -> dict[int, int]:
    """machine id -> number of its anomalies not yet resolved (open or acknowledged)."""
    a = anomalies.c
    rows = (await session.execute(
        select(a.machine_id, func.count()).where(a.status.in_(UNRESOLVED),
                                                 a.machine_id.is_not(None))
        .group_by(a.machine_id))).tuples().all()
    return {int(m): int(n) for m, n in rows}


async def anomalies_for_work_order(session: AsyncSession,
                                   work_order_id: int) -> list[dict[str, Any]]:
    """The anomalies linked to a work order (items as in ``list_anomalies``), newest
    ``ts`` first."""
    ids = select(anomaly_links.c.anomaly_id).where(
        anomaly_links.c.work_order_id == work_order_id)
    rows = (await session.execute(_select().where(anomalies.c.id.in_(ids))
                                  .order_by(anomalies.c.ts.desc(), anomalies.c.id.desc())
                                  )).all()
    return await _items(session, rows, None)


__all__ = [
    "SETTINGS_KEY", "AnomalySettings", "acknowledge", "anomalies_for_work_order", "anomaly_stats",
    "apply_anomalies", "assign", "close", "create_manual", "get_anomaly", "list_anomalies",
    "open_anomalies_by_machine", "raise_anomaly", "reopen", "resolve",
    "severity_for", "sweep",
]

