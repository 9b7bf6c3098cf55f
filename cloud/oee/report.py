"""OEE (设备综合效率) and downtime, computed at query time from the machine timeline
(cloud/oee/timeline.py, over ``machine_events``), the attributed counts
(``attributions``), the dispatches and the shift calendars (cloud/oee/calendars.py).
Nothing is stored, so a late record is in every report computed after it arrived.

Definitions (the plant manager's, per group of machine / shift / day / order / product;
the machine's status, stops, micro-stops and downtime are the timeline's, see
cloud/oee/timeline.py):

- **planned_ms**: planned production time from the machine's calendar
  (cloud/oee/calendars.py; no calendar: ``default``, else 24/7), breaks and non-working
  dates removed, clipped to the report window, to now, and to the time since the machine
  was first heard from (its first state or link record: before it there is no data,
  which is not downtime; a machine never heard from has no planned time, so its ratios
  are None). A device with counters but no state tag therefore never runs: OEE needs a
  state tag.
- **run_ms** (operating time) = planned time running + planned time in micro-stops.
  Micro-stops are not downtime: they lower performance, not availability
  (**micro_stop_ms** says how much of run_ms they are). So
  ``planned_ms = run_ms + downtime_ms`` always.
- **availability** = run_ms / planned_ms.
- **ideal_ms** = sum over counted pieces of ideal_cycle_ms / cavities of the operation
  the piece is attributed to (copied from the routing at release). Pieces = good + scrap.
- **performance** = ideal_ms / run_ms. Pieces that are unassigned or whose operation has
  no ideal cycle have no ideal time: they are left out of ideal_ms (so performance
  understates) and reported as **unrated_pieces**; they still count in quality. It is
  capped at 1: above 1 the pieces took less time than the routing says they can (its
  ideal cycle or cavities are wrong, or the counts are), which is a data-quality flag,
  not a performance: the row's **quality_flags** then holds ``{"code":
  "performance_over_100", "performance_measured", "ideal_ms_per_piece",
  "measured_ms_per_piece"}`` (run time per rated piece), and speed_loss_ms is 0. So
  oee never exceeds 1.
- **quality** = good / (good + scrap).
- **oee** = availability x performance x quality. Ratios are None when undefined
  (availability: no planned time; performance: no run time, or only unrated pieces;
  quality: no pieces); oee is None when planned time is 0, 0.0 when a factor is 0, else
  None when a factor is undefined.
- Only time and pieces inside planned time count (a count during a break is not in the
  report; neither is a stop outside the shifts).
- **losses**: ``downtime_by_state`` (the device's own state names, ``offline``,
  ``unknown``), ``downtime_by_reason`` (the stop's assigned reason, else the state of
  that part of the stop: an unexplained offline stretch is reason ``offline``),
  ``speed_loss_ms`` = run_ms - ideal_ms (micro-stops and slow cycles),
  ``scrap_loss_ms`` = ideal time of the scrap pieces.
- Grouping: ``shift`` and ``day`` come from the planned interval (the shift day, in the
  calendar's timezone); ``order`` and ``product`` from the dispatch covering the time
  (time without a dispatch: work_order None) and from each count's own attribution.

Errors: ``Invalid`` (window, group_by), ``NotFound`` (machine ids), cloud/core/errors.py.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.core import clock
from cloud.core.errors import Invalid
from cloud.core.models import dispatches, products, wo_operations, work_orders
from cloud.oee.calendars import Planned, calendars_for, planned_intervals
from cloud.oee.timeline import (
    category,
    check_window,
    first_seen,
    load_settings,
    machine_rows,
    machine_timeline,
)

GROUPS: Final = ("machine", "shift", "day", "order", "product")
_SLICE_CHUNK: Final = 2000


@dataclass(slots=True)
class _Acc:
    planned: int = 0
    run: int = 0
    micro: int = 0
    downtime: int = 0
    ideal: float = 0.0
    scrap_ideal: float = 0.0
    good: int = 0
    scrap: int = 0
    unrated: int = 0
    by_state: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    by_reason: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    stops_by_reason: dict[str, set[tuple[int, int]]] = field(
        default_factory=lambda: defaultdict(set))


@dataclass(frozen=True, slots=True)
class _Op:
    id: int
    ideal_piece_ms: float | None    # ideal_cycle_ms / cavities
    work_order: str
    customer: str | None
    product: str
    step: int
    name: str


@dataclass(frozen=True, slots=True)
class _Slice:
    start: int
    end: int
    shift: str
    day: str
    op: int | None


def _parse_group_by(group_by: str | Iterable[str]) -> tuple[str, ...]:
    parts = ([p.strip() for p in group_by.split(",")] if isinstance(group_by, str)
             else [str(p).strip() for p in group_by])
    parts = [p for p in parts if p]
    bad = [p for p in parts if p not in GROUPS]
    if not parts or bad:
        raise Invalid(f"group_by: expected one or more of {', '.join(GROUPS)} (comma-"
                      f"separated), got {group_by!r}", "group_by")
    return tuple(dict.fromkeys(parts))



def _slices(planned: list[Planned], disp: list[tuple[int, int | None, int]]) -> list[_Slice]:
    """Planned intervals cut at dispatch boundaries (both sorted, dispatches disjoint)."""
    out: list[_Slice] = []
    j = 0
    for p in planned:
        t = p.start
        while j < len(disp) and (until := disp[j][1]) is not None and until <= p.start:
            j += 1
        k = j
        while t < p.end:
            if k < len(disp) and disp[k][0] < p.end:
                d0, d1, op = disp[k]
                d1 = p.end if d1 is None else min(d1, p.end)
                if d0 > t:
                    out.append(_Slice(t, d0, p.shift, p.day, None))
                    t = d0
                if d1 > t:
                    out.append(_Slice(t, d1, p.shift, p.day, op))
                    t = d1
                k += 1
            else:
                out.append(_Slice(t, p.end, p.shift, p.day, None))
                t = p.end
    return out


async def _counts(session: AsyncSession, machine_id: int, slices: list[_Slice]
                  ) -> list[tuple[int, int | None, int, int]]:
    """(slice index, wo_operation_id, good, scrap) summed in SQL over the slices: one
    indexed range scan of attributions (machine_id, ts) per slice. The slices are a VALUES
    list of integers written into the statement (they are ints we computed, and compiling
    thousands of bound parameters cost more than the query)."""
    out: list[tuple[int, int | None, int, int]] = []
    for base in range(0, len(slices), _SLICE_CHUNK):
        chunk = slices[base:base + _SLICE_CHUNK]
        if not chunk:
            continue
        rows = ", ".join(f"({base + i:d}, {int(s.start):d}, {int(s.end):d})"
                         for i, s in enumerate(chunk))
        stmt = text(
            f"WITH slices (idx, lo, hi) AS (VALUES {rows}) "
            "SELECT slices.idx, a.wo_operation_id, sum(a.good), sum(a.scrap) "
            "FROM slices JOIN attributions AS a ON a.machine_id = :machine "
            "AND a.ts >= slices.lo AND a.ts < slices.hi "
            "GROUP BY slices.idx, a.wo_operation_id")
        out.extend((int(i), op, int(g or 0), int(s or 0))
                   for i, op, g, s in (await session.execute(
                       stmt, {"machine": int(machine_id)})).tuples())
    return out


async def _ops(session: AsyncSession, ids: Iterable[int]) -> dict[int, _Op]:
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    o, w, p = wo_operations.c, work_orders.c, products.c
    rows = (await session.execute(
        select(o.id, o.ideal_cycle_ms, o.cavities, o.step, o.name, w.number, w.customer,
               p.code).select_from(wo_operations.join(work_orders).join(products))
        .where(o.id.in_(wanted)))).all()
    return {r.id: _Op(r.id, (r.ideal_cycle_ms / max(r.cavities or 1, 1)
                             if r.ideal_cycle_ms else None),
                      r.number, r.customer, r.code, r.step, r.name) for r in rows}


async def _dispatches(session: AsyncSession, machine_id: int, start: int, end: int
                      ) -> list[tuple[int, int | None, int]]:
    d = dispatches.c
    rows = (await session.execute(
        select(d.start_ts, d.end_ts, d.wo_operation_id)
        .where(d.machine_id == machine_id, d.start_ts < end,
               or_(d.end_ts.is_(None), d.end_ts > start))
        .order_by(d.start_ts))).tuples().all()
    return [(int(s), None if e is None else int(e), int(op)) for s, e, op in rows]


async def _accumulate(session: AsyncSession, *, start_ms: int, end_ms: int,
                      machine_ids: Iterable[int] | None, parts: tuple[str, ...],
                      now_ms: int | None, with_counts: bool = True
                      ) -> tuple[dict[tuple[Any, ...], _Acc], dict[int, _Op], dict[int, str]]:
    check_window(start_ms, end_ms)
    cfg = await load_settings(session)
    now = clock.now_ms() if now_ms is None else now_ms
    end_eff = min(end_ms, now)
    rows = await machine_rows(session, machine_ids)
    cals = await calendars_for(session, [r.id for r in rows])
    accs: dict[tuple[Any, ...], _Acc] = defaultdict(_Acc)
    op_ids: set[int] = set()
    # slices and counts keyed by op id until the ops are known (one query at the end)
    pending: list[tuple[Any, ...]] = []
    names = {r.id: r.name for r in rows}
    for m in rows:
        # before the machine was first heard from there is no data, not downtime
        first = await first_seen(session, m.gateway_id, m.device)
        lo = start_ms if first is None else max(start_ms, first)
        planned = (planned_intervals(cals[m.id], lo, end_eff)
                   if first is not None and end_eff > lo else [])
        if not planned:
            if parts == ("machine",):   # every machine asked for is listed, ratios None
                pending.append(((m.id, None, None, None), "time", 0, None))
            continue
        disp = await _dispatches(session, m.id, planned[0].start, planned[-1].end)
        slices = _slices(planned, disp)
        tl = await machine_timeline(session, m.id, m.gateway_id, m.device,
                                     start_ms - cfg.micro_stop_ms,
                                     min(end_ms + cfg.micro_stop_ms, now), cfg)
        segs = tl.segments
        j = 0
        for sl in slices:
            acc_key = (m.id, sl.shift, sl.day, sl.op)
            pending.append((acc_key, "time", sl.end - sl.start, None))
            while j < len(segs) and segs[j].end <= sl.start:
                j += 1
            k = j
            while k < len(segs) and segs[k].start < sl.end:
                seg = segs[k]
                overlap = min(seg.end, sl.end) - max(seg.start, sl.start)
                k += 1
                if overlap <= 0:
                    continue
                if seg.running:
                    pending.append((acc_key, "run", overlap, None))
                    continue
                stop = tl.stops[seg.stop]
                if stop.micro:
                    pending.append((acc_key, "micro", overlap, None))
                else:
                    cause = (stop.cause if category(seg.status, cfg.state_map) == "down"
                             else None)
                    pending.append((acc_key, "down", overlap,
                                    (seg.status, stop.reason or cause or seg.status,
                                     (m.id, stop.start))))
        op_ids |= {s.op for s in slices if s.op is not None}
        if with_counts:
            for idx, op, good, scrap in await _counts(session, m.id, slices):
                sl = slices[idx]
                if op is not None:
                    op_ids.add(op)
                pending.append(((m.id, sl.shift, sl.day, op), "count", good, scrap))
    ops = await _ops(session, op_ids)
    for (mid, shift, day, op), what, a, b in pending:
        info = ops.get(op) if op is not None else None
        key = _key(parts, mid, names[mid], shift, day, info)
        acc = accs[key]
        if what == "time":
            acc.planned += a
        elif what == "run":
            acc.run += a
        elif what == "micro":
            acc.micro += a
            acc.run += a
        elif what == "down":
            state, reason, stop_key = b
            acc.downtime += a
            acc.by_state[state] += a
            acc.by_reason[reason] += a
            acc.stops_by_reason[reason].add(stop_key)
        else:
            acc.good += a
            acc.scrap += b
            if info is not None and info.ideal_piece_ms is not None:
                acc.ideal += (a + b) * info.ideal_piece_ms
                acc.scrap_ideal += b * info.ideal_piece_ms
            else:
                acc.unrated += a + b
    return accs, ops, names


def _key(parts: tuple[str, ...], machine_id: int, machine: str, shift: str, day: str,
         op: _Op | None) -> tuple[Any, ...]:
    out: list[Any] = []
    for p in parts:
        if p == "machine":
            out += [("machine_id", machine_id), ("machine", machine)]
        elif p == "shift":
            out.append(("shift", shift))
        elif p == "day":
            out.append(("day", day))
        elif p == "order":
            out += [("work_order", op.work_order if op else None),
                    ("customer", op.customer if op else None),
                    ("product", op.product if op else None)]
        elif p == "product" and "order" not in parts:
            out.append(("product", op.product if op else None))
    return tuple(out)


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


#: The quality flag of a group whose ideal time exceeds its run time.
PERFORMANCE_OVER_100: Final = "performance_over_100"


def _row(key: tuple[Any, ...], acc: _Acc) -> dict[str, Any]:
    availability = _ratio(acc.run, acc.planned)
    rated = acc.good + acc.scrap - acc.unrated
    measured = (None if acc.run <= 0 or (rated == 0 and acc.unrated > 0)
                else acc.ideal / acc.run)
    flags: list[dict[str, Any]] = []
    performance = measured
    if measured is not None and measured > 1.0:
        # the pieces took less time than the routing says they can: its ideal cycle
        # (or cavities) is wrong, or the counts are. Capped, and said beside the figure.
        performance = 1.0
        flags.append({"code": PERFORMANCE_OVER_100, "performance_measured": measured,
                      "ideal_ms_per_piece": round(acc.ideal / rated) if rated else None,
                      "measured_ms_per_piece": round(acc.run / rated) if rated else None})
    quality = _ratio(acc.good, acc.good + acc.scrap)
    oee: float | None
    if availability is None:
        oee = None
    elif 0 in (availability, performance, quality):
        oee = 0.0
    elif performance is None or quality is None:
        oee = None
    else:
        oee = availability * performance * quality
    return {**dict(key), "planned_ms": acc.planned, "run_ms": acc.run,
            "downtime_ms": acc.downtime, "micro_stop_ms": acc.micro,
            "ideal_ms": round(acc.ideal), "good": acc.good, "scrap": acc.scrap,
            "unrated_pieces": acc.unrated, "availability": availability,
            "performance": performance, "quality": quality, "oee": oee,
            "quality_flags": flags,
            "losses": {"downtime_by_state": dict(sorted(acc.by_state.items())),
                       "downtime_by_reason": dict(sorted(acc.by_reason.items())),
                       "speed_loss_ms": max(0, round(acc.run - acc.ideal)),
                       "scrap_loss_ms": round(acc.scrap_ideal)}}


def _sort_key(key: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple((v is None, v if v is not None else 0) if not isinstance(v, str)
                 else (False, v) for _, v in key)


async def oee_report(session: AsyncSession, *, start_ms: int, end_ms: int,
                     group_by: str | Sequence[str] = "machine",
                     machine_ids: Iterable[int] | None = None,
                     now_ms: int | None = None) -> list[dict[str, Any]]:
    """OEE over [start_ms, end_ms) (up to ``now_ms``, default the wall clock) per group:
    ``group_by`` is one of machine, shift, day, order, product or several joined by commas
    (``"day,shift"``: every shift of every day). Each row has its key fields (machine_id
    and machine; shift; day; work_order, customer and product; product), planned_ms,
    run_ms, downtime_ms, micro_stop_ms, ideal_ms, good, scrap, unrated_pieces,
    availability, performance, quality, oee and losses (see the module docstring). By
    machine, every machine is listed (no planned time: planned_ms 0, ratios None); other
    groupings list the groups that have planned time. Raises Invalid (window, group_by), NotFound
    (machine_ids)."""
    parts = _parse_group_by(group_by)
    accs, _, _ = await _accumulate(session, start_ms=start_ms, end_ms=end_ms,
                                   machine_ids=machine_ids, parts=parts, now_ms=now_ms)
    return [_row(k, accs[k]) for k in sorted(accs, key=_sort_key)]


async def oee_trend(session: AsyncSession, *, start_ms: int, end_ms: int,
                    machine_ids: Iterable[int] | None = None,
                    now_ms: int | None = None) -> list[dict[str, Any]]:
    """``oee_report`` per day (the calendar's day of each machine), oldest first."""
    return await oee_report(session, start_ms=start_ms, end_ms=end_ms, group_by="day",
                            machine_ids=machine_ids, now_ms=now_ms)


async def downtime_pareto(session: AsyncSession, *, start_ms: int, end_ms: int,
                          machine_ids: Iterable[int] | None = None,
                          now_ms: int | None = None) -> list[dict[str, Any]]:
    """Downtime in planned time by reason (the stop's reason, else the state of that part
    of the stop), longest first: {reason, duration_ms, count (stops)}. Micro-stops are
    not downtime and are not listed."""
    accs, _o, _n = await _accumulate(session, start_ms=start_ms, end_ms=end_ms,
                                     machine_ids=machine_ids, parts=(), now_ms=now_ms,
                                     with_counts=False)
    total: dict[str, int] = defaultdict(int)
    stops_of: dict[str, set[tuple[int, int]]] = defaultdict(set)
    for acc in accs.values():
        for reason, ms in acc.by_reason.items():
            total[reason] += ms
            stops_of[reason] |= acc.stops_by_reason[reason]
    return [{"reason": r, "duration_ms": ms, "count": len(stops_of[r])}
            for r, ms in sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))]


