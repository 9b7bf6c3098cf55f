"""Alarms and limit excursions from records: when they raise, fold and clear.

Limit excursions wait for their minimum duration
------------------------------------------------
A ``limit`` record with ``active`` true starts an excursion (a ``limit_excursions`` row,
keyed by the record); the record with ``active`` false ends it (the row is deleted). It
becomes an anomaly only once it has lasted ``limit_min_duration_s`` (``>=``; 0 raises at
once), with the anomaly's ``ts`` = the excursion's start:

- at ingest, when its end arrives late enough (raised already cleared: ``cleared_ts`` =
  the end, and it closes itself when ``auto_close.limit``);
- at ingest, when a batch carries a record of the same device at least that long after
  the start and the excursion has not ended by then (the gateway sends in seq order);
- by the sweep, when the gateway's clock (cloud now - clock skew) is that far past the
  start (``raise_due``).

An active record while the tag's excursion is already going on (a restarted gateway
re-reads it) adds nothing.

Folding repeats
---------------
An alarm or a limit excursion (once due) that begins again on the same machine (or
gateway/device) with the same code within ``fold_window_s`` of its anomaly's last
occurrence is counted on that anomaly (``occurrences``, ``last_seen_ts``, ``cleared_ts``
again None while it goes on) instead of a new row; one that had closed itself opens
again (raising.py ``fold``). Outside the window a new anomaly is raised, ``repeat_of`` the
earlier one within ``repeat_window_s``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from buffer.records import Record
from cloud.anomalies.raising import (
    clear_ids,
    clear_latest,
    fold,
    fold_target,
    previous_anomaly,
    raise_full,
)
from cloud.core import anomaly_text
from cloud.core.models import anomalies, limit_excursions, machines


def _min_ms(conf: Mapping[str, Any]) -> int:
    return int(float(conf.get("limit_min_duration_s") or 0) * 1000)


def limit_title(label: str, tag: str, value: float, lo: float | None, hi: float | None,
                units: Mapping[str, str] | None) -> tuple[str, dict[str, Any]]:
    """The title code and parameters of a limit excursion (above, below or outside)."""
    code = ("limit.high" if hi is not None and value > hi else
            "limit.low" if lo is not None and value < lo else "limit")
    return code, {"machine": label, "tag": tag, "value": value, "lo": lo, "hi": hi,
                  "unit": anomaly_text.unit_for(tag, units)}


async def alarm_record(session: AsyncSession, conf: dict[str, Any], gateway_id: str,
                       r: Record, subject: dict[str, Any], label: str) -> None:
    """An ``alarm`` record: raise, fold, or (inactive) clear."""
    body = r.body
    code = str(body["code"])[:64]
    if not body["active"]:
        await clear_latest(session, kind="alarm", code=code, gateway_id=gateway_id,
                           device=r.device, ts=r.ts, conf=conf)
        return
    before = await previous_anomaly(session, int(conf["repeat_window_s"]) * 1000, kind="alarm",
                                    ts=r.ts, code=code, material_id=None, **subject)
    if before is not None and before.cleared_ts is None:
        return  # still active: raised again (a restarted gateway re-reads it)
    target = await fold_target(session, conf, kind="alarm", ts=r.ts, code=code, **subject)
    if target is not None:
        await fold(session, target, r.ts, None, conf)
        return
    params = {"machine": label, "code": code, "text": body.get("text") or ""}
    await raise_full(session, kind="alarm", ts=r.ts,
                     title=anomaly_text.title("alarm", params, "en", code), code=code,
                     detail={"code": body["code"], "text": body.get("text"), "seq": r.seq},
                     source_key=f"alarm:{gateway_id}:{r.seq}", conf=conf,
                     repeat_of=None if before is None else int(before.id), title_code="alarm",
                     title_params=params, **subject)


async def _raise_excursion(session: AsyncSession, conf: dict[str, Any], gateway_id: str,
                           ex: Any, subject: dict[str, Any], label: str,
                           cleared_ts: int | None, now: datetime | None = None) -> int | None:
    """The anomaly of a due excursion (folded into an earlier one when it repeats)."""
    tag = str(ex.tag)
    target = await fold_target(session, conf, kind="limit", ts=int(ex.start_ts), code=tag,
                               **subject)
    if target is not None:
        return await fold(session, target, int(ex.start_ts), cleared_ts, conf, now)
    code, params = limit_title(label, tag, float(ex.value), ex.lo, ex.hi,
                               conf.get("tag_units"))
    key = f"limit:{gateway_id}:{int(ex.seq)}"
    new = await raise_full(
        session, kind="limit", ts=int(ex.start_ts), code=tag,
        title=anomaly_text.title(code, params, "en", tag),
        detail={"tag": tag, "value": ex.value, "lo": ex.lo, "hi": ex.hi, "seq": int(ex.seq),
                "unit": params["unit"]},
        source_key=key, conf=conf, cleared_ts=cleared_ts, now=now, title_code=code,
        title_params=params, **subject)
    if new is None:  # raised before (another process): the same anomaly
        return (await session.execute(select(anomalies.c.id)
                                      .where(anomalies.c.source_key == key))).scalar()
    return new


async def _ongoing(session: AsyncSession, gateway_id: str, device: str, tag: str,
                   ts: int) -> Any:
    x = limit_excursions.c
    return (await session.execute(
        select(limit_excursions).where(x.gateway_id == gateway_id, x.device == device,
                                       x.tag == tag, x.start_ts <= ts)
        .order_by(x.start_ts.desc(), x.seq.desc()).limit(1))).first()


async def limit_record(session: AsyncSession, conf: dict[str, Any], gateway_id: str,
                       r: Record, subject: dict[str, Any], label: str) -> None:
    """A ``limit`` record: start an excursion (raised at once when the minimum duration is
    0) or end one (raised cleared when it lasted long enough, else forgotten)."""
    body = r.body
    tag = str(body["tag"])[:64]
    ex = await _ongoing(session, gateway_id, r.device, tag, r.ts)
    x = limit_excursions.c
    if body["active"]:
        if ex is not None:
            return  # re-read while going on
        await session.execute(limit_excursions.insert().values(
            gateway_id=gateway_id, seq=r.seq, device=r.device, tag=tag, start_ts=r.ts,
            value=float(body["value"]), lo=body.get("lo"), hi=body.get("hi")))
        if _min_ms(conf) <= 0:
            ex = await _ongoing(session, gateway_id, r.device, tag, r.ts)
            await _mark(session, gateway_id, ex,
                        await _raise_excursion(session, conf, gateway_id, ex, subject, label,
                                               None))
        return
    if ex is None:  # an anomaly raised before excursions were kept (or already cleared)
        await clear_latest(session, kind="limit", code=tag, gateway_id=gateway_id,
                           device=r.device, ts=r.ts, conf=conf)
        return
    await session.execute(delete(limit_excursions).where(x.gateway_id == gateway_id,
                                                         x.seq == ex.seq))
    if ex.anomaly_id is not None:
        await clear_ids(session, conf, [int(ex.anomaly_id)], r.ts)
    elif r.ts - int(ex.start_ts) >= _min_ms(conf):
        await _raise_excursion(session, conf, gateway_id, ex, subject, label, r.ts)


async def _mark(session: AsyncSession, gateway_id: str, ex: Any, anomaly_id: int | None) -> None:
    if anomaly_id is None:
        return
    x = limit_excursions.c
    await session.execute(update(limit_excursions).where(
        x.gateway_id == gateway_id, x.seq == ex.seq).values(anomaly_id=anomaly_id))


async def pending(session: AsyncSession, gateway_id: str) -> bool:
    """Whether the gateway has an excursion going on that has not raised yet."""
    x = limit_excursions.c
    return (await session.execute(select(x.seq).where(
        x.gateway_id == gateway_id, x.anomaly_id.is_(None)).limit(1))).first() is not None


async def raise_due(session: AsyncSession, conf: dict[str, Any], gateway_id: str,
                    until: Mapping[str | None, int], now: datetime | None = None) -> None:
    """Raise the gateway's excursions still going on that have lasted the minimum duration
    by ``until[device]`` (the device's latest record time in a batch), or by
    ``until[None]`` for every device (the sweep: the gateway's clock)."""
    x, m = limit_excursions.c, machines.c
    horizon = max(until.values(), default=None)
    if horizon is None:
        return
    rows = (await session.execute(
        select(limit_excursions, m.id.label("machine_id"), m.name.label("machine"))
        .select_from(limit_excursions.outerjoin(
            machines, (m.gateway_id == x.gateway_id) & (m.device == x.device)))
        .where(x.gateway_id == gateway_id, x.anomaly_id.is_(None),
               x.start_ts <= horizon - _min_ms(conf))
        .order_by(x.start_ts, x.seq))).all()
    for ex in rows:
        seen = until.get(ex.device, until.get(None))
        if seen is None or seen - int(ex.start_ts) < _min_ms(conf):
            continue
        subject = {"machine_id": ex.machine_id, "gateway_id": gateway_id,
                   "device": ex.device}
        label = ex.machine or f"{gateway_id}/{ex.device}"
        await _mark(session, gateway_id, ex,
                    await _raise_excursion(session, conf, gateway_id, ex, subject, label,
                                           None, now))
