"""The machine timeline: ``state`` and ``link`` records copied into ``machine_events`` at
ingest (the applier), and read back as ordered events per machine.

Stops, downtime, OEE, run hours and offline anomalies are all computed from this
timeline at query time, never stored as intervals: a late record lands at its own ``ts``
and every figure computed afterwards includes it, with nothing to repair. Rows are keyed
by (gateway_id, seq), so the applier is idempotent like the rest of ingest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from buffer.records import Record
from cloud.core.models import machine_events


@dataclass(frozen=True, slots=True)
class Event:
    ts: int
    kind: str                 # state | link
    state: str | None         # kind state: the new state (running, idle, setup, down, ...)
    code: int | None
    online: bool | None       # kind link
    error: str | None
    seq: int


async def apply_events(session: AsyncSession, gateway_id: str,
                       new_records: Sequence[Record]) -> None:
    """The ingest applier: copy the batch's new state and link records into the timeline."""
    rows: list[dict[str, Any]] = []
    for r in new_records:
        if r.kind == "state":
            code = r.body.get("code")
            rows.append({"gateway_id": gateway_id, "seq": r.seq, "device": r.device, "ts": r.ts,
                         "kind": "state", "state": str(r.body.get("state"))[:32],
                         "code": int(code) if isinstance(code, int) else None,
                         "online": None, "error": None})
        elif r.kind == "link":
            err = r.body.get("error")
            rows.append({"gateway_id": gateway_id, "seq": r.seq, "device": r.device, "ts": r.ts,
                         "kind": "link", "state": None, "code": None,
                         "online": bool(r.body.get("online")),
                         "error": str(err)[:255] if err else None})
    if rows:
        mod: Any = postgresql if session.bind.dialect.name == "postgresql" else sqlite
        await session.execute(mod.insert(machine_events).on_conflict_do_nothing(
            index_elements=["gateway_id", "seq"]), rows)


async def events(session: AsyncSession, gateway_id: str, device: str, start: int, end: int,
                 *, with_prior: bool = True) -> list[Event]:
    """A device's events with ``start <= ts < end`` in time order (ties by seq). With
    ``with_prior``, the last state event and the last link event before ``start`` come
    first, so the caller knows what the machine was doing when the window opened."""
    ev = machine_events.c
    cols = (ev.ts, ev.kind, ev.state, ev.code, ev.online, ev.error, ev.seq)
    out: list[Event] = []
    if with_prior:
        for kind in ("state", "link"):
            row = (await session.execute(
                select(*cols).where(ev.gateway_id == gateway_id, ev.device == device,
                                    ev.kind == kind, ev.ts < start)
                .order_by(ev.ts.desc(), ev.seq.desc()).limit(1))).first()
            if row is not None:
                out.append(Event(*row))
        out.sort(key=lambda e: (e.ts, e.seq))
    rows = (await session.execute(
        select(*cols).where(and_(ev.gateway_id == gateway_id, ev.device == device,
                                 ev.ts >= start, ev.ts < end))
        .order_by(ev.ts, ev.seq))).all()
    out.extend(Event(*r) for r in rows)
    return out
