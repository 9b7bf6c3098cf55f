"""Reading anomalies (the web UI and the API call these): a filtered page, one anomaly
with its history, figures over a period, unresolved counts per machine, the anomalies of a
work order. Each anomaly is a JSON-ready dict (``_item``): cloud times ISO
(``cloud.core.clock.iso``), ``ts``/``cleared_ts`` epoch ms, ``response_s``/``closure_s``/
``age_s`` seconds or None, ``allowed_actions``, ``links`` (work order, step, operation,
customer). ``title`` is in the reader's ``locale`` (zh-CN or en; cloud/core/anomaly_text.py)
from ``title_code`` and ``title_params`` (both also given), the stored English title when
there is no code; history entries carry ``text``, the sentence in that locale."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.anomalies.rules import ACTIONS, STATUS_RANK, SYSTEM, UNRESOLVED
from cloud.core import anomaly_text, clock
from cloud.core.errors import Invalid, NotFound
from cloud.core.models import (
    ANOMALY_KINDS,
    ANOMALY_STATUSES,
    AuditEntry,
    anomalies,
    anomaly_links,
    machines,
    materials,
    wo_operations,
    work_orders,
)


def _seconds(later: datetime | None, earlier: datetime) -> float | None:
    return None if later is None else round((later - earlier).total_seconds(), 3)


def _began(r: Any) -> datetime:
    """Where response and closure times start: when the anomaly happened at the machine
    (``ts``) if the cloud raised it later (its data arrived late: the machine waited that
    long for someone, whatever the reason), else when the cloud raised it."""
    created: datetime = r.created
    happened = clock.from_ms(r.ts)
    # the same moment written twice (ms vs µs) is the cloud's own time
    return happened if (created - happened).total_seconds() >= 1 else created


def _item(r: Any, links: list[dict[str, Any]], now_ms: int, locale: str) -> dict[str, Any]:
    closure = r.closed_at or r.resolved_at
    return {"id": r.id, "kind": r.kind, "code": r.code, "severity": r.severity,
            "status": r.status,
            "title": anomaly_text.title(r.title_code, r.title_params, locale, r.title),
            "title_code": r.title_code if r.title_code in anomaly_text.TITLES else None,
            "title_params": r.title_params if r.title_code in anomaly_text.TITLES else None,
            "occurrences": int(r.occurrences or 1),
            "last_seen_ts": r.ts if r.last_seen_ts is None else r.last_seen_ts,
            "detail": r.detail,
            "machine_id": r.machine_id, "machine": r.machine, "material": r.material,
            "gateway_id": r.gateway_id, "device": r.device, "ts": r.ts,
            "cleared_ts": r.cleared_ts, "created": clock.iso(r.created), "created_by": r.created_by,
            "acknowledged_at": clock.iso(r.acknowledged_at), "acknowledged_by": r.acknowledged_by,
            "resolved_at": clock.iso(r.resolved_at), "resolved_by": r.resolved_by,
            "closed_at": clock.iso(r.closed_at), "closed_by": r.closed_by,
            "assignee": r.assignee, "cause": r.cause, "action": r.action,
            "escalation_level": r.escalation_level, "escalated_at": clock.iso(r.escalated_at),
            "repeat_of": r.repeat_of, "held_operations": r.held_operations or [],
            "response_s": _seconds(r.acknowledged_at, _began(r)),
            "closure_s": _seconds(closure, _began(r)),
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
                 now_ms: int | None, locale: str = "en") -> list[dict[str, Any]]:
    links = await _links_of(session, [r.id for r in rows])
    now_ms = clock.to_ms(clock.now()) if now_ms is None else now_ms
    return [_item(r, links[r.id], now_ms, locale) for r in rows]


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
                         now_ms: int | None = None, locale: str = "en") -> dict[str, Any]:
    """``{"items": [...], "total": n}``: anomalies with ``since_ts <= ts < until_ts``,
    filtered by status (one, a list, or comma-separated), kind and machine; with
    ``open_first`` ordered open, acknowledged, resolved, closed, then newest ``ts``
    first, else newest first. Each item is JSON-able (``_item``: times ISO, ``ts`` epoch
    ms, ``response_s``/``closure_s``/``age_s`` seconds or None, ``links``). Raises
    Invalid for an unknown status or kind."""
    a = anomalies.c
    cond: list[ColumnElement[bool]] = []
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
    order: list[ColumnElement[Any]] = [a.ts.desc(), a.id.desc()]
    if open_first:
        rank = case(*((a.status == s, i) for s, i in STATUS_RANK.items()), else_=9)
        order.insert(0, rank)
    rows = (await session.execute(_select().where(*cond).order_by(*order)
                                  .limit(limit).offset(offset))).all()
    return {"items": await _items(session, rows, now_ms, locale), "total": int(total)}


async def get_anomaly(session: AsyncSession, anomaly_id: int, *,
                      now_ms: int | None = None, locale: str = "en") -> dict[str, Any]:
    """One anomaly as in ``list_anomalies``, plus ``history``: its audit trail (who did
    what, with notes; ``text`` the sentence in ``locale``), oldest first. Raises
    NotFound."""
    row = (await session.execute(_select().where(anomalies.c.id == anomaly_id))).first()
    if row is None:
        raise NotFound(f"anomaly {anomaly_id} unknown")
    doc = (await _items(session, [row], now_ms, locale))[0]
    trail = (await session.execute(
        select(AuditEntry.ts, AuditEntry.actor, AuditEntry.action, AuditEntry.detail)
        .where(AuditEntry.entity == "anomaly", AuditEntry.entity_id == str(anomaly_id))
        .order_by(AuditEntry.id))).all()
    doc["history"] = [{"at": clock.iso(t.ts), "actor": t.actor, "action": t.action,
                       "detail": t.detail,
                       "text": anomaly_text.history_text(t.action, t.actor, t.detail, locale)}
                      for t in trail]
    return doc


async def anomaly_stats(session: AsyncSession, *, since_ts: int,
                        until_ts: int) -> dict[str, Any]:
    """Figures over anomalies with ``since_ts <= ts < until_ts``: ``total``; ``open``
    (not yet resolved: open or acknowledged) and ``unacknowledged`` (status open);
    ``closure_rate`` (resolved or closed / total) and ``repeat_rate`` (with repeat_of /
    total), fractions 0..1 or None when total is 0; ``mean_response_s`` and
    ``mean_closure_s`` over those that have one (None if none; one that closed itself
    without a person's resolution has no closure time); ``by_kind``,
    ``by_severity``, ``by_status`` counts."""
    a = anomalies.c
    rows = (await session.execute(
        select(a.kind, a.severity, a.status, a.repeat_of, a.created, a.ts, a.acknowledged_at,
               a.resolved_at, a.closed_at, a.closed_by, a.resolved_by)
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
            responses.append((r.acknowledged_at - _began(r)).total_seconds())
        if r.closed_by == SYSTEM and r.resolved_by is None:
            continue  # closed itself (its cause cleared): not a person's closure time
        if (r.closed_at or r.resolved_at) is not None:
            closures.append(((r.closed_at or r.resolved_at) - _began(r)).total_seconds())
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


async def anomalies_for_work_order(session: AsyncSession, work_order_id: int, *,
                                   locale: str = "en") -> list[dict[str, Any]]:
    """The anomalies linked to a work order (items as in ``list_anomalies``), newest
    ``ts`` first."""
    ids = select(anomaly_links.c.anomaly_id).where(
        anomaly_links.c.work_order_id == work_order_id)
    rows = (await session.execute(_select().where(anomalies.c.id.in_(ids))
                                  .order_by(anomalies.c.ts.desc(), anomalies.c.id.desc())
                                  )).all()
    return await _items(session, rows, None, locale)
