"""The pages' side of the anomalies/OEE engine (cloud/anomalies.py, cloud/oee.py): machine
states, today's OEE and open anomalies for the board, stops and anomalies for an order's
timeline. Only this module calls the engine for those parts of the pages."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.web.i18n import N_

log = structlog.get_logger(__name__)


def _module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except Exception:  # not there (yet), or broken: the pages work without it
        return None


def oee() -> ModuleType | None:
    mod = _module("cloud.oee")
    return mod if mod is not None and hasattr(mod, "current_states") else None


def anomalies() -> ModuleType | None:
    mod = _module("cloud.anomalies")
    return mod if mod is not None and hasattr(mod, "list_anomalies") else None


def available() -> bool:
    return oee() is not None and anomalies() is not None


async def board_extras(session: AsyncSession, now_ms: int, midnight_ms: int,
                       machine_ids: list[int]) -> dict[int, dict[str, Any]]:
    """Per machine: state, since_ts, code, today's OEE (0..1 or None), open anomalies."""
    out: dict[int, dict[str, Any]] = {m: {} for m in machine_ids}
    o, a = oee(), anomalies()
    if o is not None:
        for mid, st in (await o.current_states(session, now_ms)).items():
            if mid in out:
                out[mid].update(state=st.get("state"), since_ts=st.get("since_ts"),
                                code=st.get("code"))
        if machine_ids:
            for row in await o.oee_report(session, start_ms=midnight_ms, end_ms=now_ms,
                                          group_by="machine", machine_ids=machine_ids):
                mid = row.get("machine_id")
                if mid in out:
                    out[mid]["oee"] = row.get("oee")
    if a is not None:
        for mid, n in (await a.open_anomalies_by_machine(session)).items():
            if mid in out:
                out[mid]["anomalies"] = n
    return out


async def order_timeline(session: AsyncSession, work_order_id: int,
                         history: list[dict[str, Any]], machine_ids: list[int],
                         now_ms: int) -> list[dict[str, Any]]:
    """Dispatches, stops on the order's machines while it ran there, and its anomalies,
    newest first: {ts, end_ts, kind, label (msgid), machine, text, ...}."""
    events: list[dict[str, Any]] = []
    for h in history:
        events.append({"ts": h["start_ts"], "end_ts": h["end_ts"], "kind": "dispatch",
                       "label": N_("Dispatch"), "machine": h["machine"],
                       "machine_id": h["machine_id"],
                       "text": f"{h['step']} {h['operation']}"})
    o, a = oee(), anomalies()
    if o is not None:
        names = {h["machine_id"]: h["machine"] for h in history}
        for h in history[:20]:
            end = h["end_ts"] if h["end_ts"] is not None else now_ms
            for st in await o.stops(session, machine_id=h["machine_id"],
                                    start_ms=h["start_ts"], end_ms=end):
                events.append({"ts": st.get("start_ts"), "end_ts": st.get("end_ts"),
                               "kind": "stop", "label": N_("Stop"),
                               "machine": names.get(h["machine_id"]),
                               "machine_id": h["machine_id"], "stop": st,
                               "text": st.get("reason") or st.get("state") or ""})
    if a is not None:
        for an in await a.anomalies_for_work_order(session, work_order_id):
            events.append({"ts": an.get("ts"), "end_ts": an.get("cleared_ts"),
                           "kind": "anomaly", "label": N_("Anomaly"),
                           "machine": an.get("machine"), "machine_id": an.get("machine_id"),
                           "anomaly": an, "text": an.get("title") or ""})
    events.sort(key=lambda e: -(e["ts"] or 0))
    return events[:300]
