"""The board: what every machine is doing now (``current_states``), in the timeline's
categories (cloud/oee/timeline.py), with the dispatch it is running."""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.core.models import dispatches, machine_events, wo_operations, work_orders
from cloud.oee.events import events
from cloud.oee.timeline import category, load_settings, machine_rows


async def current_states(session: AsyncSession, now_ms: int) -> dict[int, dict[str, Any]]:
    """Per machine id, what it is doing at ``now_ms``: state (category: running, idle,
    setup, down, offline), device_state (its own word), since_ts (when this category
    began, as far as its last 200 events tell), online, code (of the state record), and
    dispatch: the running dispatch {work_order, step, operation, customer, good,
    quantity} or None. A machine never heard from is offline, since_ts None."""
    cfg = await load_settings(session)
    ev = machine_events.c
    out: dict[int, dict[str, Any]] = {}
    for m in await machine_rows(session, None):
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
