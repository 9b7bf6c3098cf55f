"""Stop and offline episodes, shared by the ingest applier (an episode a batch ends:
raised with ``cleared_ts``) and the sweep (one still going on: raised without, cleared
when its end arrives). One anomaly per episode, keyed by where it began
(``stop:<gw>:<device>:<start>``, ``offline:<gw>:<device>:<code>:<start>``), so the
applier and the sweep, or two cloud processes, never raise it twice.

A stop counts from the later of its start and the start of the first dispatch that
overlaps it (``dispatched_from``); an offline episode from the first ``link`` record
that went offline after the last one online (``link_history``, ``offline_start``).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.anomalies.raising import clear_key, raise_full
from cloud.core import anomaly_text
from cloud.core.models import dispatches, records


async def dispatched_from(session: AsyncSession, machine_id: int, start: int,
                          end: int) -> int | None:
    """The earliest time in [start, end) an order was dispatched on the machine (None:
    no dispatch overlaps). Dispatches never overlap, so the first one decides."""
    d = dispatches.c
    first = (await session.execute(
        select(d.start_ts).where(d.machine_id == machine_id, d.start_ts < end,
                                 or_(d.end_ts.is_(None), d.end_ts > start))
        .order_by(d.start_ts).limit(1))).scalar()
    return None if first is None else max(start, int(first))


async def raise_stop(session: AsyncSession, conf: dict[str, Any], gateway_id: str,
                     device: str, machine_id: int, label: str, start: int, state: str,
                     until: int, cleared_ts: int | None, now: datetime | None = None) -> None:
    """Raise the stop that began at ``start`` and was seen until ``until`` if it lasted
    longer than ``stop_after_s`` while dispatched; with ``cleared_ts`` (it ended), clear
    it when it was raised before (by the sweep)."""
    since = await dispatched_from(session, machine_id, start, until)
    if since is None or until - since <= int(conf["stop_after_s"]) * 1000:
        return
    key = f"stop:{gateway_id}:{device}:{start}"
    params = {"machine": label, "state": state, "minutes": round((until - since) / 60_000)}
    code = "stop" if cleared_ts else "stop.ongoing"
    new = await raise_full(
        session, kind="stop", ts=since, title=anomaly_text.title(code, params, "en", label),
        code=None, detail={"state": state, "stop_start_ts": start, "dispatched_from_ts": since,
                           "seen_until_ts": until}, machine_id=machine_id,
        gateway_id=gateway_id, device=device, source_key=key, cleared_ts=cleared_ts,
        conf=conf, now=now, title_code=code, title_params=params)
    if new is None and cleared_ts is not None:
        await clear_key(session, key, cleared_ts, conf)


async def link_history(session: AsyncSession, gateway_id: str, device: str,
                       before_seq: int) -> list[tuple[int, bool]]:
    """The device's link records before ``before_seq`` back to (and including) the last
    one that was online, oldest first: where an offline episode in progress began."""
    out: list[tuple[int, bool]] = []
    r = records.c
    cursor = before_seq
    while True:
        rows = (await session.execute(
            select(r.seq, r.ts, r.body).where(r.gateway_id == gateway_id, r.device == device,
                                              r.kind == "link", r.seq < cursor)
            .order_by(r.seq.desc()).limit(50))).all()
        for row in rows:
            online = bool(row.body.get("online"))
            out.append((int(row.ts), online))
            if online:
                return out[::-1]
        if len(rows) < 50:
            return out[::-1]
        cursor = rows[-1].seq


def offline_start(history: Iterable[tuple[int, bool]]) -> int | None:
    """When the offline episode at the end of ``history`` (oldest first) began; None
    when the last record is online."""
    start = None
    for ts, online in history:
        if online:
            start = None
        elif start is None:
            start = ts
    return start


async def raise_offline(session: AsyncSession, conf: dict[str, Any], gateway_id: str,
                        device: str | None, machine_id: int | None, label: str, start: int,
                        code: str, until: int, cleared_ts: int | None,
                        now: datetime | None = None) -> None:
    """Raise the offline episode (``code`` link: the device's link; gateway: the gateway
    silent) that began at ``start``; with ``cleared_ts`` (it ended), clear it when it was
    raised before (by the sweep)."""
    key = f"offline:{gateway_id}:{device or ''}:{code}:{start}"
    params = {"machine": label, "minutes": round((until - start) / 60_000)}
    title_code = (("gateway_silent" if code == "gateway" else "offline")
                  + ("" if cleared_ts else ".ongoing"))
    new = await raise_full(
        session, kind="offline", ts=start, code=code,
        title=anomaly_text.title(title_code, params, "en", label),
        detail={"since_ts": start, "seen_until_ts": until}, machine_id=machine_id,
        gateway_id=gateway_id, device=device, source_key=key, cleared_ts=cleared_ts,
        conf=conf, now=now, title_code=title_code, title_params=params)
    if new is None and cleared_ts is not None:
        await clear_key(session, key, cleared_ts, conf)
