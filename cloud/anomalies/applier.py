"""The ingest applier ``apply_anomalies``: raises and clears anomalies from a batch's new
records (alarms, limits, stops and offline episodes the batch ends, scrap rate; what each
means: the package docstring). Only alarm, limit, state, link and scrap count records are
looked at."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any, Final

from sqlalchemy import and_, case, func, select, union_all
from sqlalchemy.ext.asyncio import AsyncSession

from buffer.records import Record
from cloud.anomalies.episodes import link_history, offline_start, raise_offline, raise_stop
from cloud.anomalies.limits import alarm_record, limit_record, pending, raise_due
from cloud.anomalies.raising import raise_full
from cloud.anomalies.rules import RUNNING, SETTINGS_KEY
from cloud.core import anomaly_text, settings
from cloud.core.models import anomalies, attributions, machine_events, machines

_LOOKED_AT: Final = frozenset({"alarm", "limit", "state", "link", "count"})
_UNSET: Final[Any] = object()


def _scrap(r: Record) -> bool:
    return r.kind == "count" and r.body.get("counts") == "scrap" and int(r.body["delta"]) > 0


async def apply_anomalies(session: AsyncSession, gateway_id: str,
                          new_records: Sequence[Record]) -> None:
    """The ingest applier: raise and clear anomalies from the batch's new records (see
    the package docstring). Runs after attribution and the timeline applier in ingest's
    transaction; raises on database errors (the batch rolls back, the gateway retries)."""
    recs = [r for r in new_records if r.kind in _LOOKED_AT]
    recs = [r for r in recs if r.kind != "count" or _scrap(r)]
    if not recs:  # samples and counts: only excursions going on may now be due
        if new_records and await pending(session, gateway_id):
            await raise_due(session, await settings.get(session, SETTINGS_KEY), gateway_id,
                            _latest(new_records))
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
        if r.kind == "alarm":
            await alarm_record(session, conf, gateway_id, r, subject, label)
        elif r.kind == "limit":
            await limit_record(session, conf, gateway_id, r, subject, label)
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
    # excursions going on that the batch's own records show have lasted long enough
    await raise_due(session, conf, gateway_id, _latest(new_records))


def _latest(new_records: Sequence[Record]) -> dict[str | None, int]:
    """Each device's latest record time in the batch."""
    until: dict[str | None, int] = {}
    for r in new_records:
        until[r.device] = max(until.get(r.device, r.ts), r.ts)
    return until


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
    current: str | None = None    # the device whose events these are
    stop_start: int | None = None
    stop_state = ""
    for row in rows:
        if row.device != current:
            current, stop_start = row.device, None
        if row.state != RUNNING:
            if stop_start is None:
                stop_start, stop_state = int(row.ts), str(row.state)
            continue
        if stop_start is not None and row.ts - stop_start > limit_ms:
            m = known[row.device]
            await raise_stop(session, conf, gateway_id, row.device, m.id, m.name,
                             stop_start, stop_state, int(row.ts), int(row.ts))
        stop_start = None


async def _offline_ended(session: AsyncSession, conf: dict[str, Any], gateway_id: str,
                         device: str, machine_id: int | None, label: str,
                         recs: list[Record]) -> None:
    limit_ms = int(conf["offline_after_s"]) * 1000
    start = offline_start(await link_history(session, gateway_id, device, recs[0].seq))
    for r in recs:
        if not r.body.get("online"):
            start = r.ts if start is None else start
            continue
        if start is not None and r.ts - start > limit_ms:
            await raise_offline(session, conf, gateway_id, device, machine_id, label, start,
                                "link", r.ts, r.ts)
        start = None


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
            params = {"machine": label, "rate": round(scrap / total, 4),
                      "window": window // 60_000, "scrap": scrap, "total": total}
            new = await raise_full(
                session, kind="scrap_rate", ts=t, code=None,
                title=anomaly_text.title("scrap_rate", params, "en", label),
                title_code="scrap_rate", title_params=params,
                detail={"scrap": scrap, "total": total, "rate": round(scrap / total, 4),
                        "window_s": window // 1000, "threshold": threshold},
                machine_id=m.id if m else None, gateway_id=gateway_id, device=device,
                source_key=f"scrap_rate:{gateway_id}:{device}:{t // window}", conf=conf)
            if new is not None:
                last = t
