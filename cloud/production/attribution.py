"""Attribution: every count record to the work-order operation that ran on its machine at
the record's own time, with progress and backflush; the ingest applier.

Rules (the plant manager's view):

- A count record attributes by its own ``ts`` to the dispatch of its machine that covers
  it (``[start_ts, end_ts)``), whenever it arrives: a batch a day late lands on the order
  that ran then. No dispatch: the row is kept as unassigned production of the machine
  (``wo_operation_id`` NULL), visible and assignable later (cloud/production/dispatch.py).
- The machine is found by (gateway, device). A device no machine is registered for is
  not dropped and no machine is invented (machines are master data with names and work
  centers a planner chooses): its counts are kept with ``machine_id`` NULL under their
  gateway and device, and ``adopt_device`` claims them when the machine is registered
  (cloud/production/ ``create_machine``, in the same transaction): from then on they
  are the machine's unassigned production, attributed by any dispatch covering them.
- How counters combine, per record, fixed when the record is first applied (so moving it
  later moves exactly the same pieces). Let K be the counter kinds the device has ever
  reported (learned from its stored count records and this batch):
  ``good`` adds to good; ``scrap`` adds to scrap; ``total`` adds to good unless the
  device also has a ``good`` counter (then total is informational); a ``scrap`` record
  of a device with ``total`` and no ``good`` counter also takes its pieces off good
  (good = total - scrap). Limit: scrap counted before the device's first-ever ``total``
  record is not taken off good.
- Backflush, per attributed record and component of the operation's work order (the
  component's ``step``, or the last operation when the step is None):
  ``-(good + scrap if backflush_scrap) x per_piece_u`` where ``per_piece_u =
  round_half_up(qty_per_unit_u x (1 + scrap_factor))`` is rounded once per component to
  micro-units, so everything after is exact integer arithmetic (equal on SQLite and
  PostgreSQL, and a re-attribution can recompute it in SQL). One move per record and
  material, unique on (gateway_id, seq, material_id): it can never run twice.
- Idempotent: ingest hands only *new* records to the applier, and attributions are keyed
  by (gateway_id, seq): a replay changes nothing.

Locking: on PostgreSQL the applier locks the rows of the machines it attributes to
(``FOR UPDATE``, in id order) before reading dispatches, and every dispatch action locks
its machine first, so an edit and an ingest of one machine serialize and never see each
other half-done. Operations and balances are updated in id order (no deadlock cycles).
SQLite: one write transaction at a time (cloud/core/db.py: writers queue and begin
IMMEDIATE), so none of this is needed there.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import structlog
from sqlalchemy import (
    Integer,
    Row,
    String,
    and_,
    bindparam,
    func,
    insert,
    literal,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from buffer.records import Record
from cloud.core.models import (
    attributions,
    dispatches,
    machines,
    stock_moves,
    wo_components,
    wo_operations,
    work_orders,
)
from cloud.inventory import add_to_balances
from cloud.production.status import on_operation_progress

log = structlog.get_logger(__name__)

# (gateway, device) -> counter kinds seen; only grows, so caching it is safe.
_COUNTER_KINDS: dict[tuple[str, str], set[str]] = {}


@dataclass(frozen=True, slots=True)
class Component:
    material_id: int
    per_piece_u: int        # micro-units per good piece, scrap factor included
    per_scrap_u: int        # micro-units per scrap piece (0 unless backflush_scrap)


@dataclass(frozen=True, slots=True)
class OpInfo:
    id: int
    work_order_id: int
    components: tuple[Component, ...]   # merged per material


def per_piece_u(qty_per_unit_u: int, scrap_factor: float) -> int:
    """Micro-units one piece consumes: qty x (1 + scrap factor), rounded half up."""
    value = Decimal(qty_per_unit_u) * (Decimal(1) + Decimal(repr(float(scrap_factor or 0.0))))
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def contribution(counts: str, delta: int, kinds: set[str]) -> tuple[int, int]:
    """(good, scrap) pieces of one count record, given the device's counter kinds."""
    if counts == "good":
        return delta, 0
    if counts == "scrap":
        return (-delta if "total" in kinds and "good" not in kinds else 0), delta
    return (0 if "good" in kinds else delta), 0  # total


async def op_infos(session: AsyncSession, op_ids: Iterable[int]) -> dict[int, OpInfo]:
    """Operations with the components their counts backflush."""
    ids = sorted(set(op_ids))
    if not ids:
        return {}
    ops = (await session.execute(
        select(wo_operations.c.id, wo_operations.c.work_order_id, wo_operations.c.step)
        .where(wo_operations.c.id.in_(ids)))).all()
    wo_ids = sorted({o.work_order_id for o in ops})
    last_step = dict((await session.execute(
        select(wo_operations.c.work_order_id, func.max(wo_operations.c.step))
        .where(wo_operations.c.work_order_id.in_(wo_ids))
        .group_by(wo_operations.c.work_order_id))).tuples().all())
    comps: dict[int, list[Any]] = defaultdict(list)
    for c in (await session.execute(
            select(wo_components).where(wo_components.c.work_order_id.in_(wo_ids)))).all():
        comps[c.work_order_id].append(c)
    out: dict[int, OpInfo] = {}
    for o in ops:
        merged: dict[int, list[int]] = {}
        for c in comps[o.work_order_id]:
            step = c.step if c.step is not None else last_step[o.work_order_id]
            if step != o.step:
                continue
            pu = per_piece_u(c.qty_per_unit_u, c.scrap_factor)
            acc = merged.setdefault(c.material_id, [0, 0])
            acc[0] += pu
            acc[1] += pu if c.backflush_scrap else 0
        out[o.id] = OpInfo(o.id, o.work_order_id, tuple(
            Component(m, a[0], a[1]) for m, a in sorted(merged.items())))
    return out


async def lock_machines(session: AsyncSession, machine_ids: Iterable[int]) -> None:
    """Serialize with dispatch actions on these machines (PostgreSQL; SQLite serializes
    every writer anyway)."""
    ids = sorted(set(machine_ids))
    if ids and session.bind.dialect.name == "postgresql":
        await session.execute(select(machines.c.id).where(machines.c.id.in_(ids))
                              .order_by(machines.c.id).with_for_update())


async def lock_orders(session: AsyncSession, op_ids: Iterable[int | None]) -> None:
    """PostgreSQL: lock the work orders of these operations FOR UPDATE, in id order,
    before any backflush move references them. Inserting a stock move takes a KEY SHARE
    lock on its work order, which blocks the FOR UPDATE the status rules take later
    (cloud/production/ on_operation_progress): two transactions on one order, each
    holding its KEY SHARE and waiting for the other's FOR UPDATE or operation row, were
    a deadlock (20 gateways on one order's machines). Taking the order lock first
    serializes them instead. Callers hold the machine lock already."""
    ids = sorted({i for i in op_ids if i is not None})
    if ids and session.bind.dialect.name == "postgresql":
        await session.execute(
            select(work_orders.c.id).where(work_orders.c.id.in_(
                select(wo_operations.c.work_order_id).where(wo_operations.c.id.in_(ids))))
            .order_by(work_orders.c.id).with_for_update())


async def apply_quantities(session: AsyncSession, op_deltas: dict[int, list[int]],
                           balance_deltas: dict[int, int],
                           first_ts: dict[int, int] | None = None) -> None:
    """Add (good, scrap) to operations and quantities to balances, in id order, then let
    the status rules run for every operation touched. ``first_ts``: per operation, the
    earliest ts of the counts that joined it (its start time moves back to it)."""
    changed = [(op, d) for op, d in sorted(op_deltas.items()) if d[0] or d[1]]
    if changed:
        await session.execute(
            update(wo_operations).where(wo_operations.c.id == bindparam("op"))
            .values(good=wo_operations.c.good + bindparam("g"),
                    scrap=wo_operations.c.scrap + bindparam("s")),
            [{"op": op, "g": d[0], "s": d[1]} for op, d in changed])
    await add_to_balances(session, balance_deltas)
    if op_deltas:
        for op in sorted(op_deltas):
            await on_operation_progress(session, op, first_ts=(first_ts or {}).get(op))


async def _counter_kinds(session: AsyncSession, gateway_id: str,
                         batch: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for device, seen in batch.items():
        known = _COUNTER_KINDS.setdefault((gateway_id, device), set())
        for kind in ("good", "total"):
            if kind in known or kind in seen:
                continue
            hit = (await session.execute(
                select(attributions.c.seq).where(
                    attributions.c.gateway_id == gateway_id, attributions.c.device == device,
                    attributions.c.counts == kind).limit(1))).first()
            if hit is not None:
                known.add(kind)
        out[device] = known | seen
    return out


class _Timeline:
    """One machine's dispatches, for finding the one covering a ts."""

    def __init__(self, rows: Sequence[Row[Any]]) -> None:
        self.rows = sorted(rows, key=lambda r: r.start_ts)
        self.starts = [r.start_ts for r in self.rows]

    def at(self, ts: int) -> Row[Any] | None:
        i = bisect.bisect_right(self.starts, ts) - 1
        if i < 0:
            return None
        row = self.rows[i]
        return row if row.end_ts is None or ts < row.end_ts else None


async def apply_counts(session: AsyncSession, gateway_id: str,
                       new_records: Sequence[Record]) -> None:
    """The ingest applier: attribute the batch's new count records, move progress and
    backflush. Runs inside ingest's transaction; raises on database errors (the batch
    then rolls back and the gateway retries)."""
    counts = [r for r in new_records if r.kind == "count"]
    if not counts:
        return
    machine_of = dict((await session.execute(
        select(machines.c.device, machines.c.id).where(machines.c.gateway_id == gateway_id)
    )).tuples().all())
    seen: dict[str, set[str]] = defaultdict(set)
    for r in counts:
        seen[r.device].add(r.body["counts"])
    kinds = await _counter_kinds(session, gateway_id, seen)
    used = sorted({machine_of[r.device] for r in counts if r.device in machine_of})
    timelines: dict[int, _Timeline] = {}
    if used:
        await lock_machines(session, used)
        lo, hi = min(r.ts for r in counts), max(r.ts for r in counts)
        rows = (await session.execute(
            select(dispatches.c.id, dispatches.c.machine_id, dispatches.c.wo_operation_id,
                   dispatches.c.start_ts, dispatches.c.end_ts)
            .where(dispatches.c.machine_id.in_(used), dispatches.c.start_ts <= hi,
                   or_(dispatches.c.end_ts.is_(None), dispatches.c.end_ts > lo)))).all()
        by_machine: dict[int, list[Row[Any]]] = defaultdict(list)
        for row in rows:
            by_machine[row.machine_id].append(row)
        timelines = {m: _Timeline(by_machine[m]) for m in used}
    attr_rows: list[dict[str, Any]] = []
    op_deltas: dict[int, list[int]] = {}
    first: dict[int, int] = {}
    for r in counts:
        body = r.body
        machine = machine_of.get(r.device)
        disp = timelines[machine].at(r.ts) if machine is not None else None
        good, scrap = contribution(body["counts"], int(body["delta"]), kinds[r.device])
        op = disp.wo_operation_id if disp is not None else None
        attr_rows.append({"gateway_id": gateway_id, "seq": r.seq, "device": r.device,
                          "machine_id": machine, "ts": r.ts, "counts": body["counts"],
                          "delta": body["delta"], "good": good, "scrap": scrap,
                          "dispatch_id": disp.id if disp is not None else None,
                          "wo_operation_id": op})
        if op is not None:
            acc = op_deltas.setdefault(op, [0, 0])
            acc[0] += good
            acc[1] += scrap
            if good or scrap:
                first[op] = min(first.get(op, r.ts), r.ts)
    await session.execute(insert(attributions), attr_rows)
    if not op_deltas:
        return
    await lock_orders(session, op_deltas)
    infos = await op_infos(session, op_deltas)
    moves: dict[tuple[int, int], dict[str, Any]] = {}
    balance: dict[int, int] = defaultdict(int)
    for a in attr_rows:
        op = a["wo_operation_id"]
        if op is None:
            continue
        info = infos[op]
        for c in info.components:
            qty = -(a["good"] * c.per_piece_u + a["scrap"] * c.per_scrap_u)
            if qty == 0:
                continue
            moves[(a["seq"], c.material_id)] = {
                "material_id": c.material_id, "qty_u": qty, "kind": "backflush",
                "ts": a["ts"], "work_order_id": info.work_order_id,
                "gateway_id": gateway_id, "seq": a["seq"], "user": None, "note": None}
            balance[c.material_id] += qty
    if moves:
        await session.execute(insert(stock_moves), list(moves.values()))
    await apply_quantities(session, op_deltas, balance, first)


async def reattribute(session: AsyncSession, machine_id: int, lo: int,
                      hi: int | None, *, ignore: int | None = None) -> dict[str, int]:
    """Re-attribute ``machine_id``'s counts with ts in [lo, hi) (hi None: no end) to the
    dispatches as they are now: only the rows whose dispatch changes are touched; their
    pieces leave the old operation and join the new one, their backflush moves are
    replaced by the new operation's (balances follow), status rules run for both. The
    caller holds the machine lock (cloud/production/dispatch.py) and the transaction. Set-based:
    a handful of statements per dispatch segment of the range, whatever its size.
    ``ignore``: a dispatch to treat as gone (about to be deleted). Returns
    {"moved": rows re-attributed}."""
    disp_rows = (await session.execute(
        select(dispatches.c.id, dispatches.c.wo_operation_id, dispatches.c.start_ts,
               dispatches.c.end_ts)
        .where(dispatches.c.machine_id == machine_id,
               *([dispatches.c.id != ignore] if ignore is not None else []),
               *([dispatches.c.start_ts < hi] if hi is not None else []),
               or_(dispatches.c.end_ts.is_(None), dispatches.c.end_ts > lo))
        .order_by(dispatches.c.start_ts))).all()
    # segments of [lo, hi): (a, b, dispatch or None)
    segments: list[tuple[int, int | None, Row[Any] | None]] = []
    cursor: int | None = lo
    for row in disp_rows:
        start = max(row.start_ts, lo)
        end = row.end_ts if hi is None else (hi if row.end_ts is None else min(row.end_ts, hi))
        assert cursor is not None
        if start > cursor:
            segments.append((cursor, start, None))
        segments.append((start, end, row))
        cursor = end
    if cursor is not None and (hi is None or cursor < hi):
        segments.append((cursor, hi, None))
    old_ops = (await session.execute(
        select(attributions.c.wo_operation_id).distinct().where(
            attributions.c.machine_id == machine_id, attributions.c.ts >= lo,
            *([attributions.c.ts < hi] if hi is not None else []),
            attributions.c.wo_operation_id.is_not(None)))).scalars().all()
    await lock_orders(session, [*old_ops, *(d.wo_operation_id for d in disp_rows)])
    infos = await op_infos(session, [d.wo_operation_id for d in disp_rows])
    op_deltas: dict[int, list[int]] = {}
    balance: dict[int, int] = defaultdict(int)
    first: dict[int, int] = {}
    moved = 0
    old_rows: list[Any] = []
    for a, b, d in segments:
        cond = [attributions.c.machine_id == machine_id, attributions.c.ts >= a]
        if b is not None:
            cond.append(attributions.c.ts < b)
        if d is None:
            cond.append(attributions.c.dispatch_id.is_not(None))
        else:
            cond.append(or_(attributions.c.dispatch_id.is_(None),
                            attributions.c.dispatch_id != d.id))
        where = and_(*cond)
        old = (await session.execute(
            select(attributions.c.wo_operation_id, func.count(), func.sum(attributions.c.good),
                   func.sum(attributions.c.scrap), func.min(attributions.c.ts))
            .where(where).group_by(attributions.c.wo_operation_id))).all()
        if not old:
            continue
        old_rows.extend(old)
        tot_g = tot_s = 0
        seg_first = min(int(r[4]) for r in old)
        for op, n, g, s, _ in old:
            moved += int(n)
            tot_g += int(g or 0)
            tot_s += int(s or 0)
            if op is not None:
                acc = op_deltas.setdefault(op, [0, 0])
                acc[0] -= int(g or 0)
                acc[1] -= int(s or 0)
        keys = select(attributions.c.gateway_id, attributions.c.seq).where(where)
        gone = (await session.execute(
            stock_moves.delete().where(
                stock_moves.c.kind == "backflush",
                tuple_(stock_moves.c.gateway_id, stock_moves.c.seq).in_(keys))
            .returning(stock_moves.c.material_id, stock_moves.c.qty_u))).all()
        for mat, qty in gone:
            balance[mat] -= int(qty)
        if d is not None:
            info = infos[d.wo_operation_id]
            acc = op_deltas.setdefault(d.wo_operation_id, [0, 0])
            acc[0] += tot_g
            acc[1] += tot_s
            first[d.wo_operation_id] = min(first.get(d.wo_operation_id, seg_first), seg_first)
            for c in info.components:
                qty_expr = -(attributions.c.good * c.per_piece_u
                             + attributions.c.scrap * c.per_scrap_u)
                await session.execute(insert(stock_moves).from_select(
                    ["material_id", "qty_u", "kind", "ts", "work_order_id", "gateway_id", "seq"],
                    select(literal(c.material_id, Integer), qty_expr,
                           literal("backflush", String), attributions.c.ts,
                           literal(info.work_order_id, Integer), attributions.c.gateway_id,
                           attributions.c.seq).where(where, qty_expr != 0)))
                total = (await session.execute(
                    select(func.coalesce(func.sum(qty_expr), 0)).where(where))).scalar_one()
                balance[c.material_id] += int(total)
        await session.execute(update(attributions).where(where).values(
            dispatch_id=d.id if d is not None else None,
            wo_operation_id=d.wo_operation_id if d is not None else None))
    # an operation that also lost counts gets no first_ts: its times are read again
    # whole (the count it lost may have been its first or its crossing)
    lost = {op for op, n, _g, _s, _t in old_rows if op is not None}
    await apply_quantities(session, op_deltas, balance,
                           {op: t for op, t in first.items() if op not in lost})
    return {"moved": moved}


async def adopt_device(session: AsyncSession, machine_id: int) -> int:
    """Claim the counts stored for this machine's (gateway, device) before the machine
    was registered, and attribute them to its dispatches. Returns rows adopted."""
    m = (await session.execute(select(machines.c.gateway_id, machines.c.device)
                               .where(machines.c.id == machine_id))).one()
    res = await session.execute(update(attributions).where(
        attributions.c.gateway_id == m.gateway_id, attributions.c.device == m.device,
        attributions.c.machine_id.is_(None)).values(machine_id=machine_id))
    n = int(res.rowcount or 0)  # type: ignore[attr-defined]
    if n:
        await reattribute(session, machine_id, -(2**62), None)
    return n
