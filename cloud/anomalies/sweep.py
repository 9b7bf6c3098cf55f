"""The periodic sweep (the ``anomaly_sweep`` job, cloud/app.py): offline machines and
silent gateways, ongoing stops while dispatched, stock below safety (at most every
``stock_check_every_s``), escalation. Each part reads first, then writes what it found in
one short transaction.

Escalation
----------
An anomaly still open (unacknowledged) ``escalate_after_s[severity]`` seconds after it was
created (or last escalated) goes up one level, at most ``max_escalation_level``; 0 seconds
never escalates. Each step is audited (``anomaly.escalate``) and notified (``escalated``).

Record time is compared with the cloud's clock through the gateway's clock skew
(``gateways.clock_skew_ms``, cloud minus gateway): a gateway's "now" is ``now - skew``.
"""

from __future__ import annotations

import weakref
from collections import defaultdict
from typing import Any

import structlog
from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.anomalies.episodes import dispatched_from, link_history, offline_start, raise_offline, raise_stop
from cloud.anomalies.limits import raise_due
from cloud.anomalies.raising import clear_ids, raise_full
from cloud.anomalies.rules import RUNNING, SETTINGS_KEY, SYSTEM
from cloud.core import anomaly_text, clock, settings
from cloud.core.audit import audit
from cloud.core.db import Database
from cloud.core.models import (
    SEVERITIES,
    anomalies,
    dispatches,
    gateways,
    limit_excursions,
    machine_events,
    machines,
    materials,
    records,
)
from cloud.core.quantities import from_micro
from cloud.inventory import shortages
from cloud.notify import enqueue

log = structlog.get_logger(__name__)

# the sweep's last stock check per database (shortages scan 30 days of moves)
_STOCK_CHECKED: weakref.WeakKeyDictionary[Database, int] = weakref.WeakKeyDictionary()


async def _write_lock(session: AsyncSession) -> None:
    """SQLite: take the write lock with the transaction's first statement, so what is
    read next is what gets written over (PostgreSQL needs nothing: conflicts are handled
    by unique keys and conditional updates)."""
    if session.bind.dialect.name == "sqlite":
        await session.execute(update(anomalies).where(anomalies.c.id == -1)
                              .values(status=anomalies.c.status))


async def sweep(db: Database, now_ms: int) -> None:
    """The periodic job (cloud/core/jobs.py): offline machines and silent gateways, ongoing
    stops while dispatched, stock below safety, escalation. Idempotent (source keys,
    conditional updates), so several cloud processes may run it. Each part runs in its
    own transaction; a failing part does not stop the others (the first error is raised
    after all ran)."""
    async with db.sessions() as s:
        conf = await settings.get(s, SETTINGS_KEY)
    first: Exception | None = None
    for part in (_sweep_offline, _sweep_stops, _sweep_limits, _sweep_stock,
                 _sweep_escalation):
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
                start = offline_start(await link_history(s, gw.id, row.device,
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
            await raise_offline(s, conf, gw_id, row.device if row else None,
                                row.id if row else None, label, start,
                                "gateway" if what == "silent" else "link", until, None,
                                clock.from_ms(now_ms))
        for anomaly_id, gw in heard:  # back: cleared when the gateway was heard again
            back_ts = clock.to_ms(gw.last_seen) - int(gw.clock_skew_ms or 0)
            await clear_ids(s, conf, [anomaly_id], back_ts, clock.from_ms(now_ms))


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
            since = await dispatched_from(s, r.machine_id, int(first.ts), gw_now)
            if since is not None and gw_now - since > limit_ms:
                todo.append((r, int(first.ts), str(first.state), gw_now))
    if not todo:
        return
    async with db.sessions() as s, s.begin():
        await _write_lock(s)
        for r, start, state, gw_now in todo:
            await raise_stop(s, conf, r.gateway_id, r.device, r.machine_id, r.name, start,
                             state, gw_now, None, clock.from_ms(now_ms))


async def _sweep_limits(db: Database, conf: dict[str, Any], now_ms: int) -> None:
    """Limit excursions going on that have lasted ``limit_min_duration_s`` on their
    gateway's clock (limits.py)."""
    x, g = limit_excursions.c, gateways.c
    async with db.sessions() as s:
        rows = (await s.execute(
            select(x.gateway_id, g.clock_skew_ms).distinct()
            .select_from(limit_excursions.join(gateways, g.id == x.gateway_id))
            .where(x.anomaly_id.is_(None), g.revoked_at.is_(None)))).all()
    if not rows:
        return
    async with db.sessions() as s, s.begin():
        await _write_lock(s)
        for r in rows:
            await raise_due(s, conf, r.gateway_id, {None: now_ms - int(r.clock_skew_ms or 0)},
                            clock.from_ms(now_ms))


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
            params = {"material": code, "balance": float(from_micro(doc["balance_u"]) or 0),
                      "safety": float(from_micro(doc["safety_stock_u"]) or 0),
                      "unit": doc["unit"]}
            await raise_full(
                s, kind="stock_low", ts=now_ms, code=None,
                title=anomaly_text.title("stock_low", params, "en", code),
                title_code="stock_low", title_params=params,
                detail={k: doc[k] for k in ("balance_u", "safety_stock_u",
                                            "safety_stock_source", "days_of_cover", "unit")},
                material_id=mid, source_key=f"stock_low:{code}:{episode}", conf=conf,
                now=clock.from_ms(now_ms))
        await clear_ids(s, conf, recovered, now_ms, clock.from_ms(now_ms))


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
