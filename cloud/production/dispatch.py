"""Dispatch actions: which operation runs on which machine from when to when.

Every action runs in the caller's transaction, locks the machine first, changes the
dispatches, re-attributes exactly the counts whose dispatch changed (cloud/production/attribution.py
``reattribute`` over the time ranges that changed, nothing else), and writes one audit
row. Times are epoch ms (the records' unit).

Overlap: dispatches of one machine never overlap; an action that would make them overlap
is refused (DispatchConflict, HTTP 409), with one exception a plant expects: starting an
operation on a machine whose *running* dispatch (no end) began earlier stops that one at
the new start (a changeover), audited as part of the start.

Assigning unassigned production is expressed as dispatches: assigning a machine's time
range to an operation creates dispatches over the parts of the range no dispatch covers
(the covered parts already belong to an order and stay). Keeping every attribution a
function of the dispatches means a later edit can never silently undo an assignment.
A list of records is assigned as the range from its first to its last record per machine.

A planner who cancels, completes or closes an order ends its dispatches at that moment
(``end_order_dispatches``, called by cloud/production/): counts after it become
unassigned, counts before it stay with the order. An order completed by its counts
keeps its dispatches running: over-production is still the order's.

A closed order is final: its dispatches can no longer be edited; a running one can
still be stopped, but only at or after its last attributed count, so a closed order's
quantities never change by a stop (``stop``). A cancelled order's dispatches stay
editable: counts from before the cancel that arrive late land on it by their time (it
did run then), and the planner moves them elsewhere by editing its dispatch.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.core import clock
from cloud.core.audit import Named, actor_name, audit
from cloud.core.errors import Conflict, Invalid, NotFound
from cloud.core.models import attributions, dispatches, machines, wo_operations, work_orders
from cloud.production.attribution import adopt_device, lock_machines, reattribute

DISPATCHABLE = ("released", "in_progress")


class DispatchError(Invalid):
    """A dispatch that cannot be as asked: an empty interval, a count record without a
    machine (422 ``invalid_dispatch``)."""

    code = "invalid_dispatch"


class DispatchNotFound(NotFound):
    pass


class DispatchConflict(Conflict):
    """An overlap, or an order that cannot be dispatched (409 ``dispatch_overlap``)."""

    code = "dispatch_overlap"


async def lock_machine(session: AsyncSession, machine_id: int) -> None:
    """Take the machine's lock before reading its dispatches. PostgreSQL: its row
    FOR UPDATE (ingest takes the same lock). SQLite: a write first, so this transaction
    holds SQLite's write lock from its first statement (no lock upgrade, no BUSY)."""
    if session.bind.dialect.name == "postgresql":
        row = (await session.execute(select(machines.c.id).where(machines.c.id == machine_id)
                                     .with_for_update())).first()
    else:
        await session.execute(update(dispatches).where(dispatches.c.id == -1)
                              .values(machine_id=dispatches.c.machine_id))
        row = (await session.execute(select(machines.c.id)
                                     .where(machines.c.id == machine_id))).first()
    if row is None:
        raise DispatchNotFound(f"no machine {machine_id}")


async def _overlapping(session: AsyncSession, machine_id: int, start: int, end: int | None,
                       exclude: int | None = None) -> list[Row[Any]]:
    cond = [dispatches.c.machine_id == machine_id,
            or_(dispatches.c.end_ts.is_(None), dispatches.c.end_ts > start)]
    if end is not None:
        cond.append(dispatches.c.start_ts < end)
    if exclude is not None:
        cond.append(dispatches.c.id != exclude)
    return list((await session.execute(select(dispatches).where(*cond)
                                       .order_by(dispatches.c.start_ts))).all())


def _check_interval(start: int, end: int | None) -> None:
    if end is not None and end <= start:
        raise DispatchError(f"end_ts {end} is not after start_ts {start}")


async def _check_operation(session: AsyncSession, wo_operation_id: int) -> None:
    row = (await session.execute(
        select(work_orders.c.number, work_orders.c.status)
        .select_from(wo_operations.join(work_orders))
        .where(wo_operations.c.id == wo_operation_id))).first()
    if row is None:
        raise DispatchNotFound(f"no work-order operation {wo_operation_id}")
    if row.status not in DISPATCHABLE:
        raise DispatchConflict(f"work order {row.number} is {row.status}; only a released or "
                               f"in-progress order can be dispatched")


FINAL = ("closed",)


async def _order_of(session: AsyncSession, wo_operation_id: int) -> Row[Any] | None:
    return (await session.execute(
        select(work_orders.c.number, work_orders.c.status)
        .select_from(wo_operations.join(work_orders))
        .where(wo_operations.c.id == wo_operation_id))).first()


async def _check_not_final(session: AsyncSession, d: Row[Any], action: str,
                           new_end: int | None) -> None:
    """A closed order's numbers are settled (progress, backflush, reports): its dispatches
    are not moved any more. Stopping one that still runs stays allowed at or after its
    last attributed count (counts after the stop leave the order, and it has none)."""
    row = await _order_of(session, d.wo_operation_id)
    if row is None or row.status not in FINAL:
        return
    if action != "dispatch.stop" or d.end_ts is not None:
        raise DispatchConflict(f"dispatch {d.id} belongs to work order {row.number}, "
                               f"which is {row.status}; its counts are final and the dispatch "
                               f"can no longer be edited")
    last = (await session.execute(select(func.max(attributions.c.ts)).where(
        attributions.c.dispatch_id == d.id))).scalar()
    if last is not None and new_end is not None and new_end <= last:
        raise DispatchConflict(f"dispatch {d.id} of {row.status} work order {row.number} has "
                               f"counts up to ts {last}; its quantities are final, so stop it "
                               f"at {last + 1} or later")


async def get(session: AsyncSession, dispatch_id: int) -> Row[Any]:
    """The ``dispatches`` row (id, machine_id, wo_operation_id, start_ts, end_ts, created,
    created_by, edited, edited_by). Raises DispatchNotFound."""
    row = (await session.execute(select(dispatches).where(dispatches.c.id == dispatch_id))).first()
    if row is None:
        raise DispatchNotFound(f"no dispatch {dispatch_id}")
    return row


async def start(session: AsyncSession, actor: Named | str, machine_id: int, wo_operation_id: int,
                start_ts: int | None = None, end_ts: int | None = None) -> int:
    """Dispatch an operation on a machine from ``start_ts`` (default now). Counts of the
    machine from then on (already stored ones too) attribute to it. Raises
    DispatchNotFound, DispatchConflict (overlap, order not dispatchable), DispatchError."""
    start_ts = clock.now_ms() if start_ts is None else start_ts
    _check_interval(start_ts, end_ts)
    await lock_machine(session, machine_id)
    await _check_operation(session, wo_operation_id)
    clash = await _overlapping(session, machine_id, start_ts, end_ts)
    stopped = None
    if (len(clash) == 1 and clash[0].end_ts is None and clash[0].start_ts < start_ts):
        stopped = clash[0].id
        await session.execute(update(dispatches).where(dispatches.c.id == stopped)
                              .values(end_ts=start_ts))
    elif clash:
        raise DispatchConflict(
            f"machine {machine_id} already has dispatch(es) "
            f"{', '.join(str(c.id) for c in clash)} in that time; stop or edit them first")
    now = clock.now()
    new_id = (await session.execute(insert(dispatches).values(
        machine_id=machine_id, wo_operation_id=wo_operation_id, start_ts=start_ts,
        end_ts=end_ts, created=now, created_by=actor_name(actor)).returning(dispatches.c.id))
    ).scalar_one()
    # a stopped running dispatch gave up everything from start_ts on, also after end_ts
    res = await reattribute(session, machine_id, start_ts, None if stopped else end_ts)
    await audit(session, actor, "dispatch.start", "dispatch", str(new_id),
                {"machine_id": machine_id, "wo_operation_id": wo_operation_id,
                 "start_ts": start_ts, "end_ts": end_ts, "stopped_dispatch": stopped,
                 "reattributed": res["moved"]})
    return int(new_id)


async def edit(session: AsyncSession, actor: Named | str, dispatch_id: int, *,
               start_ts: int | None = None, end_ts: int | None = None,
               clear_end: bool = False, action: str = "dispatch.edit",
               reason: str | None = None) -> dict[str, Any]:
    """Change a dispatch's start and/or end after the fact (``clear_end``: running again).
    Re-attributes only the counts in the time ranges that changed. Raises
    DispatchNotFound, DispatchConflict (overlap), DispatchError (empty interval)."""
    d = await get(session, dispatch_id)
    await lock_machine(session, d.machine_id)
    d = await get(session, dispatch_id)  # re-read under the lock
    new_start = d.start_ts if start_ts is None else start_ts
    new_end = None if clear_end else (d.end_ts if end_ts is None else end_ts)
    await _check_not_final(session, d, action, new_end)
    _check_interval(new_start, new_end)
    clash = await _overlapping(session, d.machine_id, new_start, new_end, exclude=dispatch_id)
    if clash:
        raise DispatchConflict(
            f"dispatch {dispatch_id} would overlap dispatch(es) "
            f"{', '.join(str(c.id) for c in clash)} on machine {d.machine_id}")
    await session.execute(update(dispatches).where(dispatches.c.id == dispatch_id).values(
        start_ts=new_start, end_ts=new_end, edited=clock.now(), edited_by=actor_name(actor)))
    moved = 0
    if new_start != d.start_ts:
        lo, hi = sorted((new_start, d.start_ts))
        moved += (await reattribute(session, d.machine_id, lo, hi))["moved"]
    if new_end != d.end_ts:
        if d.end_ts is None or new_end is None:
            lo = new_end if d.end_ts is None else d.end_ts
            assert lo is not None
            moved += (await reattribute(session, d.machine_id, lo, None))["moved"]
        else:
            lo, hi = sorted((new_end, d.end_ts))
            moved += (await reattribute(session, d.machine_id, lo, hi))["moved"]
    detail: dict[str, Any] = {"before": {"start_ts": d.start_ts, "end_ts": d.end_ts},
                              "after": {"start_ts": new_start, "end_ts": new_end},
                              "reattributed": moved}
    if reason is not None:
        detail["reason"] = reason
    await audit(session, actor, action, "dispatch", str(dispatch_id), detail)
    return detail


async def stop(session: AsyncSession, actor: Named | str, dispatch_id: int,
               end_ts: int | None = None) -> dict[str, Any]:
    """End a running dispatch at ``end_ts`` (default now); counts after it become
    unassigned (or another dispatch's). Raises as ``edit``. On a closed order only a
    running dispatch can be stopped, and not before its last attributed count
    (DispatchConflict names the earliest end): a closed order's quantities stay."""
    return await edit(session, actor, dispatch_id, end_ts=clock.now_ms() if end_ts is None else end_ts,
                      action="dispatch.stop")


async def end_order_dispatches(session: AsyncSession, actor: Named | str, work_order_id: int,
                               at: int, reason: str) -> list[int]:
    """A planner cancelled, completed or closed the order at ``at``: its dispatches that
    still run then end at ``at`` (audited ``dispatch.stop``), those that would start at or
    after it are deleted (``dispatch.delete``); counts from ``at`` on leave the order
    (unassigned), re-attributed here. Locks the machines (in id order) before the order,
    as ingest does. Call it before locking the order. Returns the dispatch ids."""
    cond = [wo_operations.c.work_order_id == work_order_id,
            or_(dispatches.c.end_ts.is_(None), dispatches.c.end_ts > at)]
    q = (select(dispatches).select_from(dispatches.join(wo_operations))
         .where(*cond).order_by(dispatches.c.id))
    rows = (await session.execute(q)).all()
    if not rows:
        return []
    await lock_machines(session, [r.machine_id for r in rows])
    ids: list[int] = []
    for d in (await session.execute(q)).all():  # again, under the locks
        ids.append(int(d.id))
        if d.start_ts < at:
            await edit(session, actor, d.id, end_ts=at, action="dispatch.stop", reason=reason)
            continue
        await lock_machine(session, d.machine_id)
        moved = (await reattribute(session, d.machine_id, d.start_ts, d.end_ts,
                                   ignore=d.id))["moved"]
        await session.execute(delete(dispatches).where(dispatches.c.id == d.id))
        await audit(session, actor, "dispatch.delete", "dispatch", str(d.id),
                    {"before": {"start_ts": d.start_ts, "end_ts": d.end_ts},
                     "reattributed": moved, "reason": reason})
    return ids


async def assign(session: AsyncSession, actor: Named | str, machine_id: int, wo_operation_id: int,
                 start_ts: int, end_ts: int) -> list[int]:
    """Assign the machine's unassigned production in [start_ts, end_ts) to an operation:
    dispatches over the uncovered parts of the range (covered parts stay with their
    orders). Counts stored before the machine was registered are adopted first. Returns
    the new dispatch ids (none when the range was fully covered)."""
    _check_interval(start_ts, end_ts)
    await lock_machine(session, machine_id)
    await _check_operation(session, wo_operation_id)
    await adopt_device(session, machine_id)
    gaps: list[tuple[int, int]] = []
    cursor = start_ts
    for d in await _overlapping(session, machine_id, start_ts, end_ts):
        if d.start_ts > cursor:
            gaps.append((cursor, d.start_ts))
        cursor = end_ts if d.end_ts is None else max(cursor, d.end_ts)
    if cursor < end_ts:
        gaps.append((cursor, end_ts))
    ids: list[int] = []
    moved = 0
    now = clock.now()
    for a, b in gaps:
        new_id = (await session.execute(insert(dispatches).values(
            machine_id=machine_id, wo_operation_id=wo_operation_id, start_ts=a, end_ts=b,
            created=now, created_by=actor_name(actor)).returning(dispatches.c.id))).scalar_one()
        ids.append(int(new_id))
        moved += (await reattribute(session, machine_id, a, b))["moved"]
    await audit(session, actor, "dispatch.assign", "machine", str(machine_id),
                {"wo_operation_id": wo_operation_id, "start_ts": start_ts, "end_ts": end_ts,
                 "dispatches": ids, "reattributed": moved})
    return ids


async def assign_records(session: AsyncSession, actor: Named | str, wo_operation_id: int,
                         keys: list[tuple[str, int]]) -> list[int]:
    """Assign count records (gateway_id, seq) to an operation: per machine, the range from
    the first to the last of them (see ``assign``). Raises DispatchError for a record
    without a registered machine."""
    rows = (await session.execute(
        select(attributions.c.gateway_id, attributions.c.seq, attributions.c.device,
               attributions.c.ts)
        .where(attributions.c.gateway_id.in_({g for g, _ in keys}),
               attributions.c.seq.in_({s for _, s in keys})))).all()
    want = set(keys)
    rows = [r for r in rows if (r.gateway_id, r.seq) in want]
    if len(rows) != len(want):
        raise DispatchNotFound("some of these records are not stored count records")
    spans: dict[int, list[int]] = {}
    for r in rows:
        m = (await session.execute(select(machines.c.id).where(
            machines.c.gateway_id == r.gateway_id, machines.c.device == r.device))).scalar()
        if m is None:
            raise DispatchError(f"record {r.gateway_id}/{r.seq}: no machine is registered for "
                                f"device {r.device!r}; register it first")
        span = spans.setdefault(int(m), [r.ts, r.ts])
        span[0], span[1] = min(span[0], r.ts), max(span[1], r.ts)
    ids: list[int] = []
    for m, (a, b) in sorted(spans.items()):
        ids += await assign(session, actor, m, wo_operation_id, a, b + 1)
    return ids


async def unassigned(session: AsyncSession, machine_id: int | None = None) -> list[dict[str, Any]]:
    """Unassigned production per machine (or per gateway/device with no machine): pieces,
    records, first and last ts."""
    q = (select(attributions.c.machine_id, attributions.c.gateway_id, attributions.c.device,
                func.sum(attributions.c.good), func.sum(attributions.c.scrap), func.count(),
                func.min(attributions.c.ts), func.max(attributions.c.ts))
         .where(attributions.c.wo_operation_id.is_(None))
         .group_by(attributions.c.machine_id, attributions.c.gateway_id, attributions.c.device))
    if machine_id is not None:
        q = q.where(attributions.c.machine_id == machine_id)
    return [{"machine_id": r[0], "gateway_id": r[1], "device": r[2], "good": int(r[3] or 0),
             "scrap": int(r[4] or 0), "records": int(r[5]), "first_ts": r[6], "last_ts": r[7]}
            for r in (await session.execute(q)).all()]

