"""The stops of one machine and their reasons: a planner names why a machine stood
(``set_stop_reason``), keyed by the ts the stop began, and sees each stop with its
states, its part in planned time and its reason (``stops``). What a stop is, and which
are micro-stops, is the timeline's (cloud/oee/timeline.py); a reason shows in reports as
the stop's ``downtime_by_reason`` (cloud/oee/report.py).

Errors: ``NotFound`` (machine), ``Invalid`` (window; reason, note, a ``start_ts`` that is
not where a stop began), cloud/core/errors.py.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.auth import Actor
from cloud.core import clock
from cloud.core.audit import audit
from cloud.core.errors import Invalid
from cloud.core.models import stop_reasons
from cloud.oee.calendars import calendars_for, planned_intervals
from cloud.oee.timeline import (
    category,
    check_window,
    load_settings,
    machine_row,
    machine_timeline,
)


async def stops(session: AsyncSession, *, machine_id: int, start_ms: int, end_ms: int,
                now_ms: int | None = None) -> list[dict[str, Any]]:
    """The stops of a machine overlapping [start_ms, end_ms), oldest first: start_ts,
    end_ts (None: still stopped), duration_ms (to now when still stopped), state (the one
    it began with), category, states {state: ms}, micro, planned_ms (its part in planned
    time, i.e. downtime or micro-stop time in reports), reason (assigned, else
    ``offline`` for a stop that began offline, else None), note, cause (the alarm that
    stopped it, else None; see cloud/oee/timeline.py). Nothing before the machine's
    first record is a stop."""
    check_window(start_ms, end_ms)
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
                    "states": dict(by_state),
                    "micro": st.micro and (until - st.start) < cfg.micro_stop_ms,
                    "planned_ms": planned, "reason": reason, "note": st.note,
                    "cause": st.cause,
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

