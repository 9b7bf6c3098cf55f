"""OEE (设备综合效率), stops and downtime, computed at query time from the machine timeline
(``machine_events``), the attributed counts (``attributions``), the dispatches and the
shift calendars. Nothing is stored, so a late record is in every report computed after
it arrived.

Definitions (the plant manager's, per group of machine / shift / day / order / product):

- **planned_ms**: planned production time from the machine's calendar (cloud/calendars.py;
  no calendar: ``default``, else 24/7), breaks and non-working dates removed, clipped to
  the report window, to now, and to the time since the machine was first heard from (its
  first state or link record: before it there is no data, which is not downtime; a
  machine never heard from has no planned time, so its ratios are None). A device with
  counters but no state tag therefore never runs: OEE needs a state tag.
- The machine's **status** at any moment: ``offline`` while its last link record says
  offline, else its last device state (``unknown`` before any). Only the status whose
  category is ``running`` (see ``category``) is running.
- A **stop** is a maximal stretch of not running (its states may change inside it, e.g.
  idle then alarm; it is keyed by the ts it began, which is where a reason is stored).
  A stop shorter than ``micro_stop_s`` (setting, default 120 s) is a **micro-stop**; the
  rest are **downtime**. The length that decides is the stop's whole length on the
  timeline, not only its part inside planned time.
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
  not clamped: above 1 means the ideal cycle is set slower than the machine really runs.
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

Device states map to the board's categories (``current_states``, ``stops``): running
(running, run, producing, production, in_cycle, cycle); idle (idle, waiting, wait,
ready, standby, stopped, stop, paused, hold, feed_hold, and any state not listed);
setup (setup, changeover, tool_change, adjusting); down (alarm, fault, error, down, off,
emergency, estop, e_stop, breakdown, maintenance); offline (link offline, or never heard
from). The setting ``oee.state_map`` ({"auto": "running"}) adds to or overrides this.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from pydantic import Field
from sqlalchemy import func, or_, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.auth import Actor
from cloud.core import clock, settings
from cloud.core.audit import audit
from cloud.core.models import (
    dispatches,
    machine_events,
    machines,
    products,
    stop_reasons,
    wo_operations,
    work_orders,
)
from cloud.oee.calendars import Invalid, NotFound, Planned, calendars_for, planned_intervals
from cloud.oee.events import Event, events

SETTINGS_KEY: Final = "oee"

CATEGORIES: Final = ("running", "idle", "setup", "down", "offline")
GROUPS: Final = ("machine", "shift", "day", "order", "product")
MAX_WINDOW_MS: Final = 400 * 86_400_000
_SLICE_CHUNK: Final = 2000

DEFAULT_STATE_MAP: Final[dict[str, str]] = {
    **dict.fromkeys(("running", "run", "producing", "production", "in_cycle", "cycle"),
                    "running"),
    **dict.fromkeys(("idle", "waiting", "wait", "ready", "standby", "stopped", "stop",
                     "paused", "hold", "feed_hold"), "idle"),
    **dict.fromkeys(("setup", "changeover", "tool_change", "adjusting"), "setup"),
    **dict.fromkeys(("alarm", "fault", "error", "down", "off", "emergency", "estop",
                     "e_stop", "breakdown", "maintenance"), "down"),
    "offline": "offline",
}


def category(status: str, state_map: dict[str, str] | None = None) -> str:
    """The board category of a timeline status (a device state, ``offline``, ``unknown``)."""
    key = status.lower()
    if state_map and key in state_map:
        return state_map[key]
    if key == "unknown":
        return "idle"
    return DEFAULT_STATE_MAP.get(key, "idle")


@dataclass(frozen=True, slots=True)
class StopRules:
    """The ``oee`` settings as the timeline uses them."""

    micro_stop_ms: int
    state_map: dict[str, str]


async def load_settings(session: AsyncSession) -> StopRules:
    doc = await settings.get(session, SETTINGS_KEY)
    state_map = {str(k).lower(): str(v) for k, v in (doc.get("state_map") or {}).items()
                 if v in CATEGORIES}
    return StopRules(int(float(doc["micro_stop_s"]) * 1000), state_map)


Category = Literal["running", "idle", "setup", "down", "offline"]


class OeeSettings(settings.SettingsModel):
    """How stops count (``/api/v1/settings/oee``)."""

    micro_stop_s: float = Field(120, ge=0, description="a stop shorter than this is a "
                                "micro-stop (speed loss), not downtime")
    state_map: dict[str, Category] = Field(
        default_factory=dict, description="a device state -> the category it counts as "
        "(e.g. {\"setup\": \"running\"})")


settings.register(SETTINGS_KEY, OeeSettings)


# -- the timeline of one machine ----------------------------------------------------------

@dataclass(slots=True)
class Segment:
    start: int
    end: int
    status: str           # device state, "offline" or "unknown"
    running: bool
    stop: int = -1        # index into Timeline.stops, -1 while running


@dataclass(slots=True)
class Stop:
    start: int
    end: int              # end of what the timeline saw
    ended: bool           # False: still stopped at the end of the timeline
    state: str            # the status it began with
    micro: bool = False
    reason: str | None = None
    note: str | None = None
    segments: list[Segment] = field(default_factory=list)

    @property
    def duration(self) -> int:
        return self.end - self.start


@dataclass(slots=True)
class Timeline:
    segments: list[Segment]
    stops: list[Stop]


async def machine_timeline(session: AsyncSession, machine_id: int, gateway_id: str,
                            device: str, lo: int, hi: int, cfg: StopRules, *,
                            finish_last_stop: bool = False) -> Timeline:
    """Segments and stops of a machine covering at least [lo, hi). Reads back to the last
    ``running`` state before ``lo`` so a stop in progress at ``lo`` has its true start
    (that is where its reason is keyed); with ``finish_last_stop`` keeps reading after
    ``hi`` until a stop open there ends (or the data does)."""
    ev = machine_events.c
    last_run = (await session.execute(
        select(func.max(ev.ts)).where(ev.gateway_id == gateway_id, ev.device == device,
                                      ev.kind == "state", ev.ts < lo,
                                      ev.state.in_(_running_names(cfg))))).scalar()
    begin = int(last_run) if last_run is not None else lo
    evs = await events(session, gateway_id, device, begin, hi)
    end = hi
    if finish_last_stop:
        while True:
            tl = _build(evs, begin, end, cfg)
            if not tl.stops or tl.stops[-1].ended:
                break
            more = await _events_after(session, gateway_id, device, end, 500)
            if not more:
                break
            evs.extend(more)
            end = more[-1].ts + 1
    timeline = _build(evs, begin, end, cfg)
    if timeline.stops:
        # a reason belongs to the stop that contains its start_ts: a late record that
        # shows a stop began earlier (or joins two stops) keeps the reason on it
        starts = [s.start for s in timeline.stops]
        sr = stop_reasons.c
        for ts, reason, note in (await session.execute(
                select(sr.start_ts, sr.reason, sr.note)
                .where(sr.machine_id == machine_id, sr.start_ts >= starts[0],
                       sr.start_ts < timeline.stops[-1].end)
                .order_by(sr.start_ts))).tuples():
            idx = bisect.bisect_right(starts, ts) - 1
            stop = timeline.stops[idx] if idx >= 0 else None
            if stop is not None and ts < stop.end and stop.reason is None:
                stop.reason, stop.note = reason, note
    return timeline


def _running_names(cfg: StopRules) -> list[str]:
    names = {k for k, v in DEFAULT_STATE_MAP.items() if v == "running"}
    names -= {k for k, v in cfg.state_map.items() if v != "running"}
    names |= {k for k, v in cfg.state_map.items() if v == "running"}
    return sorted(names | {n.upper() for n in names} | {n.capitalize() for n in names})


async def _events_after(session: AsyncSession, gateway_id: str, device: str, after: int,
                        limit: int) -> list[Event]:
    ev = machine_events.c
    rows = (await session.execute(
        select(ev.ts, ev.kind, ev.state, ev.code, ev.online, ev.error, ev.seq)
        .where(ev.gateway_id == gateway_id, ev.device == device, ev.ts >= after)
        .order_by(ev.ts, ev.seq).limit(limit))).all()
    return [Event(*r) for r in rows]


def _build(evs: Sequence[Event], begin: int, end: int, cfg: StopRules) -> Timeline:
    """Segments from ``min(begin, first event)`` to ``end`` and the stops among them."""
    state: str | None = None
    online: bool | None = None
    t = min(begin, evs[0].ts) if evs else begin
    raw: list[Segment] = []

    running: dict[str, bool] = {}

    def status() -> str:
        if online is False:
            return "offline"
        return state if state is not None else "unknown"

    def is_running(s: str) -> bool:
        found = running.get(s)
        if found is None:
            found = running[s] = category(s, cfg.state_map) == "running"
        return found

    for e in evs:
        if e.ts >= end:
            break
        if e.ts > t:
            s = status()
            raw.append(Segment(t, e.ts, s, is_running(s)))
            t = e.ts
        if e.kind == "state":
            state = e.state
        else:
            online = e.online
    if end > t:
        s = status()
        raw.append(Segment(t, end, s, is_running(s)))
    segments: list[Segment] = []
    for seg in raw:
        if segments and segments[-1].status == seg.status and segments[-1].end == seg.start:
            segments[-1].end = seg.end
        else:
            segments.append(seg)
    stops: list[Stop] = []
    for seg in segments:
        if seg.running:
            continue
        if stops and stops[-1].end == seg.start:
            cur = stops[-1]
            cur.end = seg.end
        else:
            cur = Stop(seg.start, seg.end, True, seg.status)
            stops.append(cur)
        cur.segments.append(seg)
        seg.stop = len(stops) - 1
    if stops and stops[-1].end >= end:
        stops[-1].ended = False
    for st in stops:
        st.micro = st.duration < cfg.micro_stop_ms
    return Timeline(segments, stops)


# -- report -------------------------------------------------------------------------------

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


def _check_window(start_ms: int, end_ms: int) -> None:
    if end_ms <= start_ms:
        raise Invalid("end: must be after start", "end")
    if end_ms - start_ms > MAX_WINDOW_MS:
        raise Invalid(f"end: a report covers at most {MAX_WINDOW_MS // 86_400_000} days",
                      "end")


async def _machines(session: AsyncSession, machine_ids: Iterable[int] | None) -> list[Any]:
    stmt = select(machines.c.id, machines.c.name, machines.c.gateway_id,
                  machines.c.device).order_by(machines.c.id)
    ids = None if machine_ids is None else sorted(set(machine_ids))
    if ids is not None:
        stmt = stmt.where(machines.c.id.in_(ids))
    rows = (await session.execute(stmt)).all()
    if ids is not None and len(rows) != len(ids):
        missing = sorted(set(ids) - {r.id for r in rows})
        raise NotFound(f"machine {missing[0]} unknown", "machine_id")
    return list(rows)


def _slices(planned: list[Planned], disp: list[tuple[int, int | None, int]]) -> list[_Slice]:
    """Planned intervals cut at dispatch boundaries (both sorted, dispatches disjoint)."""
    out: list[_Slice] = []
    j = 0
    for p in planned:
        t = p.start
        while j < len(disp) and disp[j][1] is not None and disp[j][1] <= p.start:
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


async def first_seen(session: AsyncSession, gateway_id: str, device: str) -> int | None:
    """The ts of a device's first state or link record (None: never heard from)."""
    ev = machine_events.c
    found = (await session.execute(select(func.min(ev.ts)).where(
        ev.gateway_id == gateway_id, ev.device == device))).scalar()
    return None if found is None else int(found)


async def _accumulate(session: AsyncSession, *, start_ms: int, end_ms: int,
                      machine_ids: Iterable[int] | None, parts: tuple[str, ...],
                      now_ms: int | None, with_counts: bool = True
                      ) -> tuple[dict[tuple[Any, ...], _Acc], dict[int, _Op], dict[int, str]]:
    _check_window(start_ms, end_ms)
    cfg = await load_settings(session)
    now = clock.now_ms() if now_ms is None else now_ms
    end_eff = min(end_ms, now)
    rows = await _machines(session, machine_ids)
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
                    pending.append((acc_key, "down", overlap,
                                    (seg.status, stop.reason or seg.status,
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


def _row(key: tuple[Any, ...], acc: _Acc) -> dict[str, Any]:
    availability = _ratio(acc.run, acc.planned)
    rated = acc.good + acc.scrap - acc.unrated
    performance = (None if acc.run <= 0 or (rated == 0 and acc.unrated > 0)
                   else acc.ideal / acc.run)
    quality = _ratio(acc.good, acc.good + acc.scrap)
    factors = (availability, performance, quality)
    if availability is None:
        oee = None
    elif any(f == 0 for f in factors):
        oee = 0.0
    elif any(f is None for f in factors):
        oee = None
    else:
        oee = availability * performance * quality  # type: ignore[operator]
    return {**dict(key), "planned_ms": acc.planned, "run_ms": acc.run,
            "downtime_ms": acc.downtime, "micro_stop_ms": acc.micro,
            "ideal_ms": round(acc.ideal), "good": acc.good, "scrap": acc.scrap,
            "unrated_pieces": acc.unrated, "availability": availability,
            "performance": performance, "quality": quality, "oee": oee,
            "losses": {"downtime_by_state": dict(sorted(acc.by_state.items())),
                       "downtime_by_reason": dict(sorted(acc.by_reason.items())),
                       "speed_loss_ms": round(acc.run - acc.ideal),
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


# -- stops --------------------------------------------------------------------------------

async def machine_row(session: AsyncSession, machine_id: int) -> Any:
    """A machine's id, name, gateway_id and device (its timeline's key); NotFound when
    there is no such machine."""
    row = (await session.execute(select(machines.c.id, machines.c.name, machines.c.gateway_id,
                                        machines.c.device)
                                 .where(machines.c.id == machine_id))).first()
    if row is None:
        raise NotFound(f"machine {machine_id} unknown", "machine_id")
    return row


async def stops(session: AsyncSession, *, machine_id: int, start_ms: int, end_ms: int,
                now_ms: int | None = None) -> list[dict[str, Any]]:
    """The stops of a machine overlapping [start_ms, end_ms), oldest first: start_ts,
    end_ts (None: still stopped), duration_ms (to now when still stopped), state (the one
    it began with), category, states {state: ms}, micro, planned_ms (its part in planned
    time, i.e. downtime or micro-stop time in reports), reason (assigned, else
    ``offline`` for a stop that began offline, else None), note."""
    _check_window(start_ms, end_ms)
    m = await machine_row(session, machine_id)
    cfg = await load_settings(session)
    now = clock.now_ms() if now_ms is None else now_ms
    hi = min(end_ms, now)
    if hi <= start_ms:
        return []
    tl = await machine_timeline(session, m.id, m.gateway_id, m.device, start_ms, hi, cfg,
                                 finish_last_stop=True)
    cal = (await calendars_for(session, [m.id]))[m.id]
    out = []
    for st in tl.stops:
        if st.end <= start_ms or st.start >= hi:
            continue
        end = st.end if st.ended else None
        until = st.end if st.ended else max(st.end, now)
        planned = sum(min(p.end, until) - max(p.start, st.start)
                      for p in planned_intervals(cal, st.start, until))
        by_state: dict[str, int] = defaultdict(int)
        for seg in st.segments:
            by_state[seg.status] += seg.end - seg.start
        reason = st.reason or ("offline" if st.state == "offline" else None)
        out.append({"start_ts": st.start, "end_ts": end, "duration_ms": until - st.start,
                    "state": st.state, "category": category(st.state, cfg.state_map),
                    "states": dict(by_state), "micro": (until - st.start) < cfg.micro_stop_ms,
                    "planned_ms": planned, "reason": reason, "note": st.note,
                    "reason_set": st.reason is not None})
    return out


async def set_stop_reason(session: AsyncSession, actor: Actor | str, *, machine_id: int,
                          start_ts: int, reason: str, note: str | None = None
                          ) -> dict[str, Any]:
    """Give the stop of ``machine_id`` that began at ``start_ts`` a reason (and a note);
    replaces an earlier one. Audited ``stop.reason``. Raises NotFound (machine), Invalid
    (``start_ts`` is not the start of a stop of that machine; empty or long reason)."""
    m = await machine_row(session, machine_id)
    reason = (reason or "").strip() if isinstance(reason, str) else ""
    if not reason or len(reason) > 128:
        raise Invalid("reason: expected 1..128 characters", "reason")
    if note is not None and (not isinstance(note, str) or len(note) > 1000):
        raise Invalid("note: at most 1000 characters", "note")
    cfg = await load_settings(session)
    tl = await machine_timeline(session, m.id, m.gateway_id, m.device, start_ts,
                                 start_ts + 1, cfg)
    stop = next((s for s in tl.stops if s.start == start_ts), None)
    if stop is None:
        near = [s.start for s in tl.stops if s.start <= start_ts < max(s.end, s.start + 1)]
        hint = f" (the stop there began at {near[0]})" if near else ""
        raise Invalid(f"start_ts: machine {machine_id} has no stop beginning at {start_ts}"
                      f"{hint}", "start_ts")
    row = {"machine_id": machine_id, "start_ts": start_ts, "reason": reason, "note": note,
           "set_by": actor.name if isinstance(actor, Actor) else actor,
           "set_at": clock.now()}
    mod: Any = postgresql if session.bind.dialect.name == "postgresql" else sqlite
    stmt = mod.insert(stop_reasons).values(**row)
    await session.execute(stmt.on_conflict_do_update(
        index_elements=["machine_id", "start_ts"],
        set_={"reason": reason, "note": note, "set_by": row["set_by"],
              "set_at": row["set_at"]}))
    await audit(session, actor, "stop.reason", "machine", machine_id,
                {"start_ts": start_ts, "reason": reason, "note": note,
                 "previous": stop.reason, "state": stop.state})
    return {"machine_id": machine_id, "start_ts": start_ts, "reason": reason, "note": note,
            "set_by": row["set_by"]}


# -- the board ----------------------------------------------------------------------------

async def current_states(session: AsyncSession, now_ms: int) -> dict[int, dict[str, Any]]:
    """Per machine id, what it is doing at ``now_ms``: state (category: running, idle,
    setup, down, offline), device_state (its own word), since_ts (when this category
    began, as far as its last 200 events tell), online, code (of the state record), and
    dispatch: the running dispatch {work_order, step, operation, customer, good,
    quantity} or None. A machine never heard from is offline, since_ts None."""
    cfg = await load_settings(session)
    ev = machine_events.c
    out: dict[int, dict[str, Any]] = {}
    for m in await _machines(session, None):
        floor = (await session.execute(
            select(ev.ts).where(ev.gateway_id == m.gateway_id, ev.device == m.device,
                                ev.ts <= now_ms)
            .order_by(ev.ts.desc(), ev.seq.desc()).offset(199).limit(1))).scalar()
        # the last 200 events (all when fewer), with the state and link before them
        evs = await events(session, m.gateway_id, m.device,
                           int(floor) if floor is not None else -(2**62), now_ms + 1)
        state: str | None = None
        online: bool | None = None
        code: int | None = None
        cat, since = "offline", None
        for e in evs:
            if e.kind == "state":
                state, code = e.state, e.code
            else:
                online = e.online
            if online is False:
                now_cat = "offline"
            elif state is None:
                now_cat = "idle" if online else "offline"
            else:
                now_cat = category(state, cfg.state_map)
            if now_cat != cat or since is None:
                cat, since = now_cat, e.ts
        out[m.id] = {"machine_id": m.id, "machine": m.name, "state": cat,
                     "device_state": "offline" if online is False else state,
                     "since_ts": since, "online": online is not False and bool(evs),
                     "code": code, "dispatch": None}
    d, o, w = dispatches.c, wo_operations.c, work_orders.c
    for r in (await session.execute(
            select(d.machine_id, d.start_ts, w.number, w.customer, w.quantity, o.step, o.name,
                   o.good).select_from(dispatches.join(wo_operations).join(work_orders))
            .where(d.start_ts <= now_ms, or_(d.end_ts.is_(None), d.end_ts > now_ms)))).all():
        if r.machine_id in out:
            out[r.machine_id]["dispatch"] = {
                "work_order": r.number, "step": r.step, "operation": r.name,
                "customer": r.customer, "good": int(r.good), "quantity": int(r.quantity),
                "since_ts": int(r.start_ts)}
    return out
