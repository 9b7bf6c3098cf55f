"""The pages built on the anomalies/OEE engine (cloud/anomalies/, cloud/oee/):

- ``/anomalies``: open first, with affected orders and customers, age, response and
  closure times, how often it happened (folded repeats); closure and repeat rate over
  the period; acknowledge / resolve / close for planners, one by one or the ticked ones
  at once (``POST /anomalies/bulk``). Titles and history in the reader's language.
  Filters: status, kind, machine, period (``days``).
- ``/oee``: OEE with availability, performance and quality per machine, shift, day, order
  or product (``group``) over a period (``from``/``to`` dates in the plant's time zone,
  at most ``MAX_DAYS``); the downtime Pareto by reason; the daily trend; a machine's stops
  with the reason form for planners.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from cloud import anomalies, oee
from cloud.core import clock
from cloud.core.errors import NotFound
from cloud.core.models import ANOMALY_KINDS, ANOMALY_STATUSES
from cloud.web import charts, labels, reports
from cloud.web.cache import page_cache
from cloud.web.context import Page, export_format, int_param, limit_param, open_page, render
from cloud.web.exports import MAX_ROWS, PERCENT, TIME, Column, export
from cloud.web.i18n import N_, fmt_pct

router = APIRouter(include_in_schema=False)
DAY_MS: Final = 86_400_000
MAX_DAYS: Final = 92
PERIODS: Final = (1, 7, 30, 90)
OEE_FRESH_S: Final = 60.0


def _s_to_ms(s: float | None) -> float | None:
    return None if s is None else s * 1000


# -- anomalies -------------------------------------------------------------------------------

ANOMALY_COLUMNS: Final = (
    Column("id", N_("Anomaly")), Column("severity", N_("Severity")), Column("kind", N_("Kind")),
    Column("title", N_("Title")), Column("machine", N_("Machine")),
    Column("orders", N_("Affected orders"),
           lambda r: ", ".join(f"{lk['work_order']}" + (f"/{lk['step']}" if lk["step"] else "")
                               for lk in r["links"])),
    Column("customers", N_("Customers"),
           lambda r: ", ".join(sorted({lk["customer"] for lk in r["links"] if lk["customer"]}))),
    Column("time", N_("Time"), kind=TIME), Column("status", N_("Status")),
    Column("assignee", N_("Assignee")),
    Column("age_min", N_("Age (min)"), lambda r: _minutes(r["age_s"])),
    Column("response_min", N_("Response time (min)"), lambda r: _minutes(r["response_s"])),
    Column("closure_min", N_("Closure time (min)"), lambda r: _minutes(r["closure_s"])),
    Column("cause", N_("Cause")), Column("action", N_("Action taken")),
    Column("repeat_of", N_("Repeat of")),
)


def _minutes(s: float | None) -> float | None:
    return None if s is None else round(s / 60, 1)


@router.get("/anomalies", response_class=HTMLResponse)
async def anomalies_page(request: Request) -> Response:
    page = await open_page(request)
    a = anomalies
    qp = request.query_params
    fmt = export_format(request)
    status = qp.get("status", "unresolved")
    statuses: list[str] | None = (["open", "acknowledged"] if status == "unresolved" else
                                  [status] if status in ANOMALY_STATUSES else None)
    kind = qp.get("kind") if qp.get("kind") in ANOMALY_KINDS else None
    machine_id = int_param(request, "machine_id", 0) or None
    days = int_param(request, "days", 30, 1, 366)
    since = page.now_ms - days * DAY_MS
    limit = MAX_ROWS if fmt else limit_param(request, 50)
    offset = 0 if fmt else int_param(request, "offset", 0)
    async with request.app.state.db.sessions() as session:
        found = await a.list_anomalies(session, status=statuses, kind=kind,
                                       machine_id=machine_id,
                                       since_ts=None if statuses == ["open", "acknowledged"]
                                       else since, open_first=True, limit=limit,
                                       offset=offset, now_ms=page.now_ms,
                                       locale=page.locale)
        stats = await a.anomaly_stats(session, since_ts=since, until_ts=page.now_ms + 1)
        machines = await reports.machine_list(session)
        one = None
        if (aid := int_param(request, "id", 0)) and not fmt:
            try:
                one = await a.get_anomaly(session, aid, now_ms=page.now_ms,
                                          locale=page.locale)
            except NotFound:
                one = None
    if one is not None:  # history times shown like every other time (the plant's zone)
        for h in one["history"]:
            h["at_ms"] = clock.to_ms(datetime.fromisoformat(h["at"].replace("Z", "+00:00")))
    items = found["items"]
    if fmt:
        rows = [{**r, "severity": page.tr(labels.SEVERITY.get(r["severity"], r["severity"])),
                 "kind": page.tr(labels.ANOMALY_KIND.get(r["kind"], r["kind"])),
                 "status": page.tr(labels.ANOMALY_STATUS.get(r["status"], r["status"])),
                 "time": page.ts(r["ts"])} for r in items]
        return export(fmt, "anomalies", ANOMALY_COLUMNS, rows, page.tr)
    by_kind = [(page.tr(labels.ANOMALY_KIND.get(k, k)), float(n), str(n))
               for k, n in stats["by_kind"].items()]
    return render(page, "anomalies.html", items=items, total=found["total"], limit=limit,
                  offset=offset, stats=stats, days=days, periods=PERIODS, status=status,
                  kind=kind, machine_id=machine_id, machines=machines, one=one,
                  kinds=ANOMALY_KINDS, statuses=ANOMALY_STATUSES, fmt_pct=fmt_pct,
                  s_to_ms=_s_to_ms,
                  kind_chart=charts.pareto(by_kind, title=page._("Anomalies by kind"))
                  if by_kind else None)


# -- OEE and downtime ------------------------------------------------------------------------

def _period(request: Request, page: Page) -> tuple[date, date, int, int]:
    """[from, to] as local dates (to inclusive) and as epoch ms [start, end)."""
    today = datetime.fromtimestamp(page.now_ms / 1000, UTC).astimezone(page.tz).date()

    def parse(name: str, default: date) -> date:
        try:
            return date.fromisoformat(request.query_params.get(name, ""))
        except ValueError:
            return default

    to = parse("to", today)
    frm = parse("from", to - timedelta(days=6))
    if frm > to:
        frm, to = to, frm
    if (to - frm).days >= MAX_DAYS:
        frm = to - timedelta(days=MAX_DAYS - 1)

    def ms(d: date) -> int:
        return int(datetime(d.year, d.month, d.day, tzinfo=page.tz).timestamp() * 1000)

    return frm, to, ms(frm), ms(to + timedelta(days=1))


def _key_text(row: dict[str, Any], group: str) -> str:
    if group == "machine":
        return str(row.get("machine") or "")
    if group == "order":
        return " ".join(str(v) for v in (row.get("work_order") or "–", row.get("product") or "")
                        if v)
    return str(row.get(group) if row.get(group) is not None else "–")


OEE_COLUMNS: Final = (
    Column("key", N_("Group")),
    Column("planned_h", N_("Planned (h)"), lambda r: round(r["planned_ms"] / 3.6e6, 2)),
    Column("run_h", N_("Run (h)"), lambda r: round(r["run_ms"] / 3.6e6, 2)),
    Column("downtime_h", N_("Downtime (h)"), lambda r: round(r["downtime_ms"] / 3.6e6, 2)),
    Column("good", N_("Good")), Column("scrap", N_("Scrap")),
    Column("availability", N_("Availability"), lambda r: _round(r["availability"]),
           kind=PERCENT),
    Column("performance", N_("Performance"), lambda r: _round(r["performance"]),
           kind=PERCENT),
    Column("quality", N_("Quality"), lambda r: _round(r["quality"]), kind=PERCENT),
    Column("oee", N_("OEE"), lambda r: _round(r["oee"]), kind=PERCENT),
    Column("data_quality", N_("Data quality")),
)
PARETO_COLUMNS: Final = (
    Column("reason", N_("Reason")),
    Column("duration_min", N_("Downtime (min)"), lambda r: round(r["duration_ms"] / 60000, 1)),
    Column("count", N_("Stops")),
)
STOP_COLUMNS: Final = (
    Column("machine", N_("Machine")), Column("start", N_("Start"), kind=TIME),
    Column("end", N_("End"), kind=TIME),
    Column("duration_min", N_("Duration (min)"), lambda r: round(r["duration_ms"] / 60000, 1)),
    Column("state", N_("State"), labels=labels.MACHINE_STATE), Column("reason", N_("Reason")),
    Column("note", N_("Note")),
)


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 4)


@router.get("/oee", response_class=HTMLResponse)
async def oee_page(request: Request) -> Response:
    page = await open_page(request)
    o = oee
    fmt = export_format(request)
    table = request.query_params.get("table", "oee")
    group = request.query_params.get("group", "machine")
    if group not in labels.GROUP_BY:
        group = "machine"
    frm, to, start, end = _period(request, page)
    machine_id = int_param(request, "machine_id", 0) or None
    ids = [machine_id] if machine_id else None
    async with request.app.state.db.sessions() as session:
        machines = await reports.machine_list(session)
    if machine_id not in {m["id"] for m in machines}:
        machine_id, ids = None, None
    stop_machine = machine_id or (machines[0]["id"] if machines else None)
    db = request.app.state.db

    async def compute() -> dict[str, Any]:
        now = clock.now_ms()
        async with db.sessions() as session:
            doc: dict[str, Any] = {
                "rows": await o.oee_report(session, start_ms=start, end_ms=end, group_by=group,
                                           machine_ids=ids, now_ms=now),
                "pareto": await o.downtime_pareto(session, start_ms=start, end_ms=end,
                                                  machine_ids=ids, now_ms=now),
                "trend": await o.oee_trend(session, start_ms=start, end_ms=end,
                                           machine_ids=ids, now_ms=now),
                "stops": []}
            if stop_machine is not None:
                doc["stops"] = [s for s in await o.stops(
                    session, machine_id=stop_machine, start_ms=start, end_ms=end, now_ms=now)
                    if not s["micro"]][::-1]
        return doc

    data, computed = await page_cache(request.app).get(
        ("oee", group, start, end, machine_id), OEE_FRESH_S, compute)
    rows = [dict(r) for r in data["rows"]]
    pareto, trend, stops = data["pareto"], [dict(r) for r in data["trend"]], data["stops"]
    names = {m["id"]: m["name"] for m in machines}
    for r in (*rows, *trend):
        r["key"] = _key_text(r, group)
        # a capped performance is said beside the figure, on the page and in exports
        r["data_quality"] = reports.quality_flags_text(page._, r.get("quality_flags") or [])
    if fmt:
        if table == "pareto":
            return export(fmt, "downtime-pareto", PARETO_COLUMNS,
                          [{**p, "reason": page.reason(p["reason"])} for p in pareto], page.tr)
        if table == "stops":
            out = [{**s, "machine": names.get(stop_machine, ""), "start": page.ts(s["start_ts"]),
                    "end": page.ts(s["end_ts"]), "reason": s["reason"] or s["cause"] or ""}
                   for s in stops[:MAX_ROWS]]
            return export(fmt, "stops", STOP_COLUMNS, out, page.tr)
        if table == "trend":
            for r in trend:
                r["key"] = r.get("day")
            return export(fmt, "oee-trend", OEE_COLUMNS, trend, page.tr)
        return export(fmt, f"oee-by-{group}", OEE_COLUMNS, rows, page.tr)
    limit = limit_param(request, 50)
    offset = int_param(request, "offset", 0)
    pareto_chart = charts.pareto(
        [(page.reason(p["reason"]), float(p["duration_ms"]),
          f"{page.dur(p['duration_ms'])} · {p['count']}×") for p in pareto[:12]],
        title=page._("Downtime by reason")) if pareto else None
    trend_chart = charts.line_chart(
        [str(r.get("day"))[5:] for r in trend],
        [(page._("OEE"), [r["oee"] for r in trend]),
         (page._("Availability"), [r["availability"] for r in trend]),
         (page._("Performance"), [r["performance"] for r in trend]),
         (page._("Quality"), [r["quality"] for r in trend])],
        label_every=max(1, len(trend) // 15), title=page._("OEE trend")) if trend else None
    return render(page, "oee.html", rows=rows[offset:offset + limit], total=len(rows),
                  limit=limit, offset=offset, group=group, frm=frm, to=to,
                  machine_id=machine_id, machines=machines, pareto=pareto,
                  pareto_chart=pareto_chart, trend_chart=trend_chart,
                  stops=stops[:50], stop_machine=stop_machine, names=names, fmt_pct=fmt_pct,
                  computed_ms=int(computed * 1000),
                  reason=page.reason)
