"""The board's and an order's view of the anomalies/OEE engine (cloud/anomalies/,
cloud/oee/): machine states, today's OEE and open anomalies per machine; stops and
anomalies on an order's timeline."""

from __future__ import annotations

from typing import Any, Final

from sqlalchemy.ext.asyncio import AsyncSession

from cloud import anomalies, oee
from cloud.web.i18n import N_

#: How far back an order's timeline shows the stops of a dispatch.
STOPS_WINDOW_MS: Final = 92 * 86_400_000


async def machine_states(session: AsyncSession, now_ms: int) -> dict[int, dict[str, Any]]:
    """Per machine: state (running/idle/setup/down/offline), since_ts, code."""
    return {mid: {"state": st.get("state"), "since_ts": st.get("since_ts"),
                  "code": st.get("code")}
            for mid, st in (await oee.current_states(session, now_ms)).items()}


async def oee_today(session: AsyncSession, now_ms: int, midnight_ms: int,
                    machine_ids: list[int]) -> dict[int, dict[str, Any]]:
    """Per machine, from local midnight to now: oee (0..1, None when undefined) and
    quality_flags (cloud/oee/report.py: e.g. performance over 100 %, capped)."""
    if not machine_ids or now_ms <= midnight_ms:
        return {}
    return {row["machine_id"]: {"oee": row.get("oee"),
                                "quality_flags": row.get("quality_flags") or []}
            for row in await oee.oee_report(
                session, start_ms=midnight_ms, end_ms=now_ms, group_by="machine",
                machine_ids=machine_ids, now_ms=now_ms)}


WALL_WINDOW_MS: Final = 24 * 3600 * 1000
WALL_SHIFTS: Final = 3


async def plant_shifts(session: AsyncSession, now_ms: int) -> list[dict[str, Any]]:
    """The wall screen's plant-wide figures for the last ``WALL_SHIFTS`` shifts, newest
    first: {day, shift, good, scrap, oee, target, attainment}. ``target`` is the shift's
    standard output so far: its planned time on every machine divided by the routings'
    ideal time per piece (the rate each machine's rated pieces show); ``attainment`` is
    good / target. Machines without a calendar count as one shift a day (``""``)."""
    start_ms = now_ms - WALL_WINDOW_MS
    rows = await oee.oee_report(session, start_ms=start_ms, end_ms=now_ms,
                                group_by="day,shift,machine", now_ms=now_ms)
    # newest shift first: by when each (day, shift) began on the machines' calendars
    began: dict[tuple[str, str], int] = {}
    cals = await oee.calendars.calendars_for(session, sorted({r["machine_id"] for r in rows}))
    for cal in {c.id: c for c in cals.values() if c is not None}.values():
        for p in oee.calendars.planned_intervals(cal, start_ms, now_ms):
            key = (p.day, p.shift or "")
            began[key] = min(began.get(key, p.start), p.start)
    shifts: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        if not r["planned_ms"]:
            continue
        s = shifts.setdefault((r["day"], r["shift"] or ""), {
            "day": r["day"], "shift": r["shift"] or "", "good": 0, "scrap": 0,
            "planned_ms": 0, "run_ms": 0, "ideal_ms": 0, "target": 0.0})
        for k in ("good", "scrap", "planned_ms", "run_ms", "ideal_ms"):
            s[k] += r[k]
        rated = r["good"] + r["scrap"] - r["unrated_pieces"]
        if r["ideal_ms"] > 0 and rated > 0:
            s["target"] += r["planned_ms"] * rated / r["ideal_ms"]
    out = []
    for key in sorted(shifts, key=lambda k: (began.get(k, 0), k), reverse=True)[:WALL_SHIFTS]:
        s = shifts[key]
        availability = s["run_ms"] / s["planned_ms"] if s["planned_ms"] else None
        performance = min(1.0, s["ideal_ms"] / s["run_ms"]) if s["run_ms"] else None
        pieces = s["good"] + s["scrap"]
        quality = s["good"] / pieces if pieces else None
        s["oee"] = (availability * performance * quality
                    if availability is not None and performance is not None
                    and quality is not None else None)
        s["target"] = round(s["target"])
        s["attainment"] = s["good"] / s["target"] if s["target"] else None
        out.append(s)
    return out


async def open_anomalies(session: AsyncSession) -> dict[int, int]:
    return await anomalies.open_anomalies_by_machine(session)


async def order_timeline(session: AsyncSession, work_order_id: int,
                         history: list[dict[str, Any]], machine_ids: list[int],
                         now_ms: int, locale: str = "en") -> list[dict[str, Any]]:
    """Dispatches, stops on the order's machines while it ran there, and its anomalies,
    newest first: {ts, end_ts, kind, label (msgid), machine, text, ...}."""
    events: list[dict[str, Any]] = []
    for h in history:
        events.append({"ts": h["start_ts"], "end_ts": h["end_ts"], "kind": "dispatch",
                       "label": N_("Dispatch"), "machine": h["machine"],
                       "machine_id": h["machine_id"],
                       "text": f"{h['step']} {h['operation']}"})
    names = {h["machine_id"]: h["machine"] for h in history}
    for h in history[:20]:
        end = h["end_ts"] if h["end_ts"] is not None else now_ms
        # a dispatch left running for months: its last STOPS_WINDOW_MS (a stop list
        # covers at most 400 days, and a page needs far less)
        lo = max(h["start_ts"], end - STOPS_WINDOW_MS)
        if end > lo:
            for st in await oee.stops(session, machine_id=h["machine_id"],
                                      start_ms=lo, end_ms=end, now_ms=now_ms):
                if st["micro"]:
                    continue
                events.append({"ts": st.get("start_ts"), "end_ts": st.get("end_ts"),
                               "kind": "stop", "label": N_("Stop"),
                               "machine": names.get(h["machine_id"]),
                               "machine_id": h["machine_id"], "stop": st,
                               "text": st.get("reason") or st.get("state") or ""})
    for an in await anomalies.anomalies_for_work_order(session, work_order_id,
                                                       locale=locale):
        events.append({"ts": an.get("ts"), "end_ts": an.get("cleared_ts"),
                       "kind": "anomaly", "label": N_("Anomaly"),
                       "machine": an.get("machine"), "machine_id": an.get("machine_id"),
                       "anomaly": an, "text": an.get("title") or ""})
    events.sort(key=lambda e: -(e["ts"] or 0))
    return events[:300]
