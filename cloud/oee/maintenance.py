"""Maintenance counters (预防性维护): run hours or cycles of a machine since a reset, against
a threshold; a maintenance-due anomaly when one is reached.

- **run_hours**: the machine's running time since ``since_ts`` from the timeline
  (cloud/oee/timeline.py: running while online), around the clock: the shift calendar does not
  matter to wear. Micro-stops are not running time here. Stored and compared in
  milliseconds (``threshold``); the API also shows hours.
- **cycles**: machine cycles since ``since_ts``: the pieces counted (good + scrap) divided
  by the cavities of the operation each count is attributed to (the dispatched
  operation; 1 when unassigned), summed per operation and rounded down. An injection
  mold with 4 cavities making 400 pieces made 100 cycles.
- ``check_maintenance(db, now_ms)`` (a job every 60 s, cloud/app.py) raises one anomaly of
  kind ``maintenance`` per counter and counting period (``source_key``
  ``maintenance:<counter id>:<since_ts>``, so it is raised once however often the job
  runs, and by however many processes) at the time the threshold was reached, and keeps
  its id in ``due_anomaly_id``.
- ``reset_counter`` (audited ``maintenance.reset``, with the value at the reset) starts a
  new period at the reset time and clears ``due_anomaly_id``. The due anomaly itself is
  left in its lifecycle: the person who did the work resolves and closes it with cause
  and action (cloud/anomalies); a reset is the maintenance record, not the anomaly's.

Create, change, delete and reset are for planners and admins (cloud/api/routes/oee.py)
and are audited. Errors: ``NotFound``, ``Invalid`` (``field`` names the input),
``Conflict`` (a name the machine's counters already have), from cloud/core/errors.py.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any, Literal

import structlog
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.anomalies import raise_anomaly
from cloud.auth import Actor
from cloud.core import clock
from cloud.core.audit import audit
from cloud.core.db import Database
from cloud.core.errors import Conflict, Invalid, NotFound
from cloud.core.models import (
    MAINTENANCE_METRICS,
    anomalies,
    attributions,
    machines,
    maintenance_counters,
    wo_operations,
)
from cloud.oee.timeline import MachineRef, load_settings, machine_row, machine_timeline

log = structlog.get_logger(__name__)
HOUR_MS = 3_600_000
#: What a counter counts (``MAINTENANCE_METRICS``, the table's check constraint).
Metric = Literal["run_hours", "cycles"]


async def _run_ms(session: AsyncSession, machine: MachineRef, since: int, now: int,
                  threshold: int | None = None) -> tuple[int, int | None]:
    """Running ms in [since, now), and when ``threshold`` ms were reached (None: not)."""
    if now <= since:
        return 0, None
    cfg = await load_settings(session)
    tl = await machine_timeline(session, machine.id, machine.gateway_id, machine.device,
                                 since, now, cfg)
    total, reached = 0, None
    for seg in tl.segments:
        if not seg.running:
            continue
        lo, hi = max(seg.start, since), min(seg.end, now)
        if hi <= lo:
            continue
        if threshold is not None and reached is None and total + (hi - lo) >= threshold:
            reached = lo + (threshold - total)
        total += hi - lo
    return total, reached


async def _cycles(session: AsyncSession, machine_id: int, since: int, now: int) -> int:
    a, o = attributions.c, wo_operations.c
    cav = func.coalesce(o.cavities, 1)
    rows = (await session.execute(
        select(cav, func.sum(a.good + a.scrap))
        .select_from(attributions.outerjoin(wo_operations, a.wo_operation_id == o.id))
        .where(a.machine_id == machine_id, a.ts >= since, a.ts < now)
        .group_by(cav))).tuples().all()
    return int(sum((Fraction(int(p or 0), max(int(c or 1), 1)) for c, p in rows),
                   Fraction(0)))


async def _cycles_reached(session: AsyncSession, machine_id: int, since: int, now: int,
                          threshold: int) -> int | None:
    """The ts of the count record with which ``threshold`` cycles were reached."""
    a, o = attributions.c, wo_operations.c
    total = Fraction(0)
    result = await session.stream(
        select(a.ts, a.good + a.scrap, func.coalesce(o.cavities, 1))
        .select_from(attributions.outerjoin(wo_operations, a.wo_operation_id == o.id))
        .where(a.machine_id == machine_id, a.ts >= since, a.ts < now)
        .order_by(a.ts, a.seq))
    async for ts, pieces, cav in result:
        total += Fraction(int(pieces or 0), max(int(cav or 1), 1))
        if total >= threshold:
            await result.close()
            return int(ts)
    return None


async def counter_value(session: AsyncSession, counter: Any, now_ms: int) -> int:
    """Run ms or cycles of ``counter`` since its since_ts, up to ``now_ms``."""
    m = await machine_row(session, counter.machine_id)
    if counter.metric == "run_hours":
        return (await _run_ms(session, m, counter.since_ts, now_ms))[0]
    return await _cycles(session, m.id, counter.since_ts, now_ms)


def _doc(c: Any, machine: str, value: int) -> dict[str, Any]:
    doc = {"id": c.id, "machine_id": c.machine_id, "machine": machine, "name": c.name,
           "metric": c.metric, "threshold": int(c.threshold), "since_ts": int(c.since_ts),
           "value": value, "percent": round(100.0 * value / c.threshold, 2),
           "due": value >= c.threshold, "due_anomaly_id": c.due_anomaly_id,
           "last_reset_at": c.last_reset_at,     # cloud time: the API writes it
           "last_reset_by": c.last_reset_by}
    if c.metric == "run_hours":
        doc["value_hours"] = round(value / HOUR_MS, 3)
        doc["threshold_hours"] = round(c.threshold / HOUR_MS, 3)
    return doc


async def _row(session: AsyncSession, counter_id: int) -> Any:
    row = (await session.execute(select(maintenance_counters)
                                 .where(maintenance_counters.c.id == counter_id))).first()
    if row is None:
        raise NotFound(f"maintenance counter {counter_id} unknown")
    return row


async def list_counters(session: AsyncSession, now_ms: int, *,
                        machine_id: int | None = None) -> list[dict[str, Any]]:
    """Every counter (of one machine) with value, threshold, percent and due, by machine
    and name."""
    mc = maintenance_counters.c
    stmt = (select(maintenance_counters, machines.c.name.label("machine_name"))
            .join(machines, machines.c.id == mc.machine_id).order_by(mc.machine_id, mc.name))
    if machine_id is not None:
        stmt = stmt.where(mc.machine_id == machine_id)
    out = []
    for c in (await session.execute(stmt)).all():
        out.append(_doc(c, c.machine_name, await counter_value(session, c, now_ms)))
    return out


async def get_counter(session: AsyncSession, counter_id: int, now_ms: int) -> dict[str, Any]:
    c = await _row(session, counter_id)
    m = await machine_row(session, c.machine_id)
    return _doc(c, m.name, await counter_value(session, c, now_ms))


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip() or len(name.strip()) > 128:
        raise Invalid("name: expected 1..128 characters (e.g. \"hydraulic filter\")", "name")
    return name.strip()


def _check_threshold(threshold: Any) -> int:
    if isinstance(threshold, bool) or not isinstance(threshold, int) or not \
            0 < threshold <= 10**15:
        raise Invalid(f"threshold: expected a whole number > 0 (run_hours: milliseconds of "
                      f"run time, cycles: cycles), got {threshold!r}", "threshold")
    return threshold


async def _unique(session: AsyncSession, machine_id: int, name: str,
                  other_than: int | None) -> None:
    mc = maintenance_counters.c
    stmt = select(mc.id).where(mc.machine_id == machine_id, mc.name == name)
    if other_than is not None:
        stmt = stmt.where(mc.id != other_than)
    if (await session.execute(stmt)).first() is not None:
        raise Conflict(f"machine {machine_id} has a counter named {name!r}", "name")


async def create_counter(session: AsyncSession, actor: Actor | str, *, machine_id: int,
                         name: Any, metric: Any, threshold: Any, since_ts: int | None = None,
                         now_ms: int) -> dict[str, Any]:
    """A counter counting from ``since_ts`` (default now). Audited ``maintenance.create``."""
    m = await machine_row(session, machine_id)
    name = _check_name(name)
    if metric not in MAINTENANCE_METRICS:
        raise Invalid(f"metric: expected one of {', '.join(MAINTENANCE_METRICS)}, got "
                      f"{metric!r}", "metric")
    threshold = _check_threshold(threshold)
    since = now_ms if since_ts is None else int(since_ts)
    await _unique(session, machine_id, name, None)
    new_id = (await session.execute(insert(maintenance_counters).values(
        machine_id=m.id, name=name, metric=metric, threshold=threshold, since_ts=since,
        created=clock.now()).returning(maintenance_counters.c.id))).scalar_one()
    await audit(session, actor, "maintenance.create", "maintenance_counter", new_id,
                {"machine_id": m.id, "name": name, "metric": metric,
                 "threshold": threshold, "since_ts": since})
    return await get_counter(session, new_id, now_ms)


async def update_counter(session: AsyncSession, actor: Actor | str, counter_id: int, *,
                         now_ms: int, name: Any = None, threshold: Any = None
                         ) -> dict[str, Any]:
    """Rename a counter or change its threshold (the counting period stays; a raised due
    anomaly stays raised). Audited ``maintenance.update``."""
    c = await _row(session, counter_id)
    changes: dict[str, Any] = {}
    if name is not None:
        changes["name"] = _check_name(name)
        await _unique(session, c.machine_id, changes["name"], counter_id)
    if threshold is not None:
        changes["threshold"] = _check_threshold(threshold)
    if changes:
        await session.execute(update(maintenance_counters)
                              .where(maintenance_counters.c.id == counter_id).values(**changes))
        await audit(session, actor, "maintenance.update", "maintenance_counter", counter_id,
                    {"before": {k: getattr(c, k) for k in changes}, "after": changes})
    return await get_counter(session, counter_id, now_ms)


async def delete_counter(session: AsyncSession, actor: Actor | str, counter_id: int) -> None:
    c = await _row(session, counter_id)
    await session.execute(delete(maintenance_counters)
                          .where(maintenance_counters.c.id == counter_id))
    await audit(session, actor, "maintenance.delete", "maintenance_counter", counter_id,
                {"machine_id": c.machine_id, "name": c.name, "metric": c.metric,
                 "threshold": int(c.threshold), "since_ts": int(c.since_ts)})


async def reset_counter(session: AsyncSession, actor: Actor | str, counter_id: int,
                        now_ms: int) -> dict[str, Any]:
    """Maintenance done: count again from ``now_ms``; clears ``due_anomaly_id`` (the
    anomaly stays open for its own lifecycle). Audited ``maintenance.reset`` with the
    value at the reset."""
    c = await _row(session, counter_id)
    value = await counter_value(session, c, now_ms)
    who = actor.name if isinstance(actor, Actor) else actor
    await session.execute(update(maintenance_counters)
                          .where(maintenance_counters.c.id == counter_id)
                          .values(since_ts=now_ms, due_anomaly_id=None,
                                  last_reset_at=clock.now(), last_reset_by=who))
    await audit(session, actor, "maintenance.reset", "maintenance_counter", counter_id,
                {"machine_id": c.machine_id, "name": c.name, "metric": c.metric,
                 "threshold": int(c.threshold), "previous_since_ts": int(c.since_ts),
                 "value": value, "due_anomaly_id": c.due_anomaly_id, "since_ts": now_ms})
    return await get_counter(session, counter_id, now_ms)


async def check_maintenance(db: Database, now_ms: int) -> None:
    """The periodic job: raise the maintenance-due anomaly of every counter whose value
    reached its threshold and has none yet. Idempotent (source_key); one counter per
    transaction, so one failing counter does not hold back the others."""
    mc = maintenance_counters.c
    async with db.sessions() as session:
        todo = (await session.execute(select(maintenance_counters)
                                      .where(mc.due_anomaly_id.is_(None))
                                      .order_by(mc.id))).all()
    for c in todo:
        try:
            async with db.sessions() as session, session.begin():
                m = await machine_row(session, c.machine_id)
                if c.metric == "run_hours" and now_ms - c.since_ts < c.threshold:
                    continue        # cannot have run that long yet: no need to read
                if c.metric == "run_hours":
                    value, reached = await _run_ms(session, m, c.since_ts, now_ms,
                                                   int(c.threshold))
                else:
                    value = await _cycles(session, m.id, c.since_ts, now_ms)
                    reached = (await _cycles_reached(session, m.id, c.since_ts, now_ms,
                                                     int(c.threshold))
                               if value >= c.threshold else None)
                if value < c.threshold:
                    continue
                key = f"maintenance:{c.id}:{c.since_ts}"
                shown = (f"{value / HOUR_MS:.1f} of {c.threshold / HOUR_MS:.1f} run hours"
                         if c.metric == "run_hours" else f"{value} of {c.threshold} cycles")
                anomaly_id = await raise_anomaly(
                    session, kind="maintenance", ts=reached if reached is not None else now_ms,
                    title=f"Maintenance due on {m.name}: {c.name} ({shown})", code=c.name,
                    machine_id=m.id,
                    detail={"counter_id": c.id, "counter": c.name, "metric": c.metric,
                            "threshold": int(c.threshold), "value": value,
                            "since_ts": int(c.since_ts)},
                    source_key=key)
                if anomaly_id is None:
                    anomaly_id = (await session.execute(
                        select(anomalies.c.id).where(anomalies.c.source_key == key))).scalar()
                # only if nobody reset the counter meanwhile
                await session.execute(update(maintenance_counters).where(
                    mc.id == c.id, mc.since_ts == c.since_ts, mc.due_anomaly_id.is_(None))
                    .values(due_anomaly_id=anomaly_id))
                log.info("maintenance_due", counter=c.id, machine=m.id, anomaly=anomaly_id)
        except Exception:  # one broken counter must not stop the others
            log.exception("maintenance_check_failed", counter=c.id)
