"""The pages (GET): login, plant board, work orders, inventory, data completeness, and
(with the anomalies/OEE engine) anomalies and OEE. Every table exports with
``?export=csv|xlsx[&table=NAME]`` and the page's own filters."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import and_, exists, select

from cloud import inventory
from cloud.core import clock
from cloud.core.errors import NotFound
from cloud.core.models import WORK_ORDER_STATUSES, machine_events, machines, products, work_orders
from cloud.core.quantities import from_micro
from cloud.ingest import gateway_freshness, gateway_status, list_dead_letters
from cloud.production import dispatch as dispatch_service
from cloud.production import get_work_order, order_completion_status, order_due_status
from cloud.web import charts, engine, labels, reports
from cloud.web.cache import page_cache
from cloud.web.context import (
    Page,
    WebError,
    export_format,
    int_param,
    limit_param,
    open_page,
    refresh_s,
    render,
    render_fragment,
    safe_next,
    signed_micro,
)
from cloud.web.exports import MAX_ROWS, NUMBER, PERCENT, TEXT, TIME, Column, export
from cloud.web.i18n import LANG_COOKIE, LOCALES, N_

router = APIRouter(include_in_schema=False)
# -- login ---------------------------------------------------------------------------------

@router.get("/login")
async def login_page(request: Request) -> Response:
    lang = request.query_params.get("lang")
    page = await open_page(request, login=False)
    if lang in LOCALES:
        page.locale = lang
    resp = render(page, "login.html", next=safe_next(request.query_params.get("next")),
                  error=None, name="")
    if lang in LOCALES:
        resp.set_cookie(LANG_COOKIE, lang, max_age=365 * 86400, samesite="lax", path="/")
    return resp


# -- plant board ---------------------------------------------------------------------------

BOARD_FRESH_S: Final = 5.0
OEE_TODAY_FRESH_S: Final = 60.0
UNREGISTERED_FRESH_S: Final = 60.0


async def board_data(request: Request, page: Page) -> dict[str, Any]:

    db = request.app.state.db
    cache = page_cache(request.app)
    midnight = _local_midnight_ms(page)
    async with db.sessions() as session:
        ms = await reports.machine_list(session)
        running = await reports.running_dispatches(session)
        today = await reports.good_since(session, midnight)
        alarms = await engine.open_anomalies(session)
    ids = [m["id"] for m in ms]
    unregistered: list[dict[str, Any]] = []
    if not ms or (page.user is not None and page.user.is_admin):
        async def devices() -> Any:
            async with db.sessions() as s:
                return await _unregistered_devices(s)
        unregistered, _ = await cache.get(("unregistered",), UNREGISTERED_FRESH_S, devices)

    async def states() -> Any:
        async with db.sessions() as s:
            return await engine.machine_states(s, clock.now_ms())

    async def oee_today() -> Any:
        async with db.sessions() as s:
            return await engine.oee_today(s, clock.now_ms(), midnight, ids)

    state_of, _ = await cache.get(("board-states",), BOARD_FRESH_S, states)
    oee_of, _ = await cache.get(("board-oee", midnight, tuple(ids)), OEE_TODAY_FRESH_S,
                                oee_today)
    tiles = []
    for m in ms:
        d = running.get(m["id"])
        x = state_of.get(m["id"], {})
        state = x.get("state") or "unknown"
        good, scrap = today.get(m["id"], (0, 0))
        tiles.append({**m, "state": state, "since_ts": x.get("since_ts"),
                      "code": x.get("code"),
                      "oee": (oee_of.get(m["id"]) or {}).get("oee"),
                      # a capped performance, said beside the figure (and exported)
                      "data_quality": reports.quality_flags_text(
                          page._, (oee_of.get(m["id"]) or {}).get("quality_flags") or []),
                      "anomalies": alarms.get(m["id"], 0), "dispatch": d,
                      "progress": (min(1.0, d["good"] / d["quantity"]) if d and d["quantity"]
                                   else None),
                      "today_good": good, "today_scrap": scrap})
    counts: dict[str, int] = {}
    for t in tiles:
        counts[t["state"]] = counts.get(t["state"], 0) + 1
    return {"tiles": tiles, "counts": counts, "unregistered": unregistered}


async def _unregistered_devices(session: Any) -> list[dict[str, Any]]:
    """Devices with a machine timeline (state or link records) that are no machine yet,
    so an admin can register them from the board."""
    ev = machine_events.c
    q = (select(ev.gateway_id, ev.device).distinct()
         .where(~exists().where(and_(machines.c.gateway_id == ev.gateway_id,
                                     machines.c.device == ev.device)))
         .order_by(ev.gateway_id, ev.device).limit(50))
    return [{"gateway_id": g, "device": d} for g, d in (await session.execute(q)).all()]


def _local_midnight_ms(page: Page) -> int:
    now = datetime.fromtimestamp(page.now_ms / 1000, UTC).astimezone(page.tz)
    return int(now.replace(hour=0, minute=0, second=0, microsecond=0).timestamp() * 1000)


BOARD_COLUMNS: Final = (
    Column("name", N_("Machine")), Column("work_center", N_("Work center")),
    Column("state", N_("State"), labels=labels.MACHINE_STATE),
    Column("work_order", N_("Work order"), lambda r: r["dispatch"] and r["dispatch"]["number"],
           kind=TEXT),
    Column("operation", N_("Operation"), lambda r: r["dispatch"] and r["dispatch"]["operation"]),
    Column("customer", N_("Customer"), lambda r: r["dispatch"] and r["dispatch"]["customer"]),
    Column("good", N_("Good"), lambda r: r["dispatch"] and r["dispatch"]["good"]),
    Column("quantity", N_("Quantity"), lambda r: r["dispatch"] and r["dispatch"]["quantity"]),
    Column("today_good", N_("Good today")), Column("today_scrap", N_("Scrap today")),
    Column("completion", N_("Completion")),
    Column("oee", N_("OEE today"), lambda r: None if r["oee"] is None else round(r["oee"], 4),
           kind=PERCENT),
    Column("data_quality", N_("Data quality")),
    Column("anomalies", N_("Open anomalies")),
)


@router.get("/", response_class=HTMLResponse)
async def board(request: Request) -> Response:
    page = await open_page(request)
    data = await board_data(request, page)
    if fmt := export_format(request):
        rows = [{**t, "completion": reports.completion_text(
                     page._, t["dispatch"] and t["dispatch"]["completion"]),
                 }
                for t in data["tiles"]]
        return export(fmt, "plant-board", BOARD_COLUMNS, rows, page.t.gettext)
    wall = request.query_params.get("wall") == "1"
    if wall:
        data.update(await _wall_data(request))
    return render(page, "board.html", wall=wall, refresh=refresh_s(), **data)


WALL_FRESH_S: Final = 60.0


async def _wall_data(request: Request) -> dict[str, Any]:
    """The wall screen's plant-wide figures: output against the standard target per
    shift, OEE per shift, open anomalies in all (cached a minute: a report)."""
    db = request.app.state.db

    async def shifts() -> Any:
        async with db.sessions() as s:
            return await engine.plant_shifts(s, clock.now_ms())

    rows, _ = await page_cache(request.app).get(("wall-shifts",), WALL_FRESH_S, shifts)
    return {"plant_shifts": rows}


@router.get("/board/tiles", response_class=HTMLResponse)
async def board_tiles(request: Request) -> Response:
    page = await open_page(request)
    data = await board_data(request, page)
    wall = request.query_params.get("wall") == "1"
    if wall:
        data.update(await _wall_data(request))
    return HTMLResponse(render_fragment(page, "_tiles.html", wall=wall, **data))


# -- work orders ---------------------------------------------------------------------------

ORDER_COLUMNS: Final = (
    Column("number", N_("Work order"), kind=TEXT), Column("product", N_("Product"), kind=TEXT),
    Column("customer", N_("Customer")), Column("priority", N_("Priority")),
    Column("status", N_("Status")), Column("quantity", N_("Quantity")),
    Column("good", N_("Good")), Column("scrap", N_("Scrap")),
    Column("progress", N_("Progress"), lambda r: round(r["progress"], 4), kind=PERCENT),
    Column("due", N_("Due"), kind=TIME), Column("due_status", N_("Due status")),
    Column("completion", N_("Completion")),
)


def _order_query(request: Request) -> reports.OrderQuery:
    status = tuple(s for s in request.query_params.getlist("status") if s in WORK_ORDER_STATUSES)
    due = request.query_params.get("due")
    return reports.OrderQuery(status=status, customer=request.query_params.get("customer"),
                              q=request.query_params.get("q"),
                              due=due if due in labels.DUE else None)


@router.get("/work-orders", response_class=HTMLResponse)
async def work_orders_page(request: Request) -> Response:
    page = await open_page(request)
    query = _order_query(request)
    fmt = export_format(request)
    limit = MAX_ROWS if fmt else limit_param(request, 25)
    offset = 0 if fmt else int_param(request, "offset", 0)
    now = clock.now()
    async with request.app.state.db.sessions() as session:
        rows, total = await reports.order_rows(session, query, limit=limit, offset=offset,
                                               now=now)
        customers = list((await session.execute(
            select(work_orders.c.customer).where(work_orders.c.customer.is_not(None))
            .distinct().order_by(work_orders.c.customer).limit(200))).scalars())
    if fmt:
        for r in rows:
            r["status"] = page.tr(labels.ORDER_STATUS[r["status"]])
            r["due_status"] = page.tr(labels.DUE[r["due_status"]]) if r["due_status"] \
                else None
            r["completion"] = reports.completion_text(page._, r["completion"])
        return export(fmt, "work-orders", ORDER_COLUMNS, rows, page.t.gettext, tz=page.tz)
    return render(page, "work_orders.html", rows=rows, total=total, limit=limit, offset=offset,
                  query=query, customers=customers, statuses=WORK_ORDER_STATUSES)


async def _order_detail(request: Request, page: Page, number: str) -> dict[str, Any]:

    async with request.app.state.db.sessions() as session:
        try:
            wo = await get_work_order(session, number)
        except NotFound:
            raise WebError(404, N_("No such work order."), number) from None
        product = (await session.execute(select(products).where(
            products.c.id == wo.product_id))).first()
        ops = await reports.operations_of(session, wo.id)
        history = await reports.dispatch_history(session, wo.id)
        hourly = await reports.output_per_hour(session, wo.id)
        mats = await reports.materials_vs_bom(session, wo.id)
        ms = await reports.machine_list(session)
        machine_ids = sorted({o["machine_id"] for o in ops if o["machine_id"]}
                             | {h["machine_id"] for h in history})
        unassigned = [u for u in await dispatch_service.unassigned(session)
                      if u["machine_id"] is not None] if wo.status in ("released",
                                                                        "in_progress") else []
        timeline = await engine.order_timeline(session, wo.id, history, machine_ids,
                                               page.now_ms, page.locale)
    for e in timeline:          # a stop by its reason, else its state, in the reader's words
        if e["kind"] == "stop":
            st = e["stop"]
            e["text"] = page.reason(st.get("reason") or st.get("cause") or st.get("state"))
    good = max(ops, key=lambda o: o["step"])["good"] if ops else 0
    due = order_due_status(wo, good, clock.now())
    return {"wo": wo, "product": product, "ops": ops, "history": history, "hourly": hourly,
            "materials": mats, "machines": ms, "unassigned": unassigned, "timeline": timeline,
            "good": good, "due_status": due, "completion": order_completion_status(wo, good),
            "progress": min(1.0, good / wo.quantity) if wo.quantity else 0.0}


OP_COLUMNS: Final = (
    Column("step", N_("Step")), Column("name", N_("Operation")),
    Column("machine", N_("Machine")), Column("work_center", N_("Work center")),
    Column("status", N_("Status")), Column("good", N_("Good")), Column("scrap", N_("Scrap")),
)
DISPATCH_COLUMNS: Final = (
    Column("id", N_("Dispatch")), Column("step", N_("Step")),
    Column("operation", N_("Operation")), Column("machine", N_("Machine")),
    Column("start", N_("Start"), kind=TIME), Column("end", N_("End"), kind=TIME),
    Column("created_by", N_("By")),
)
MATERIAL_COLUMNS: Final = (
    Column("material", N_("Material code")), Column("name", N_("Material")),
    Column("unit", N_("Unit")),
    Column("qty_per_unit", N_("Per piece"), lambda r: from_micro(r["qty_per_unit_u"]),
           kind=NUMBER),
    Column("planned", N_("BOM at counted quantity"), lambda r: from_micro(r["planned_u"]),
           kind=NUMBER),
    Column("consumed", N_("Consumed (ledger)"), lambda r: from_micro(r["consumed_u"]),
           kind=NUMBER),
    Column("difference", N_("Difference"), lambda r: signed_micro(r["difference_u"]),
           kind=NUMBER),
)
UNASSIGNED_COLUMNS: Final = (
    Column("machine", N_("Machine")), Column("good", N_("Good")), Column("scrap", N_("Scrap")),
    Column("from", N_("From"), kind=TIME), Column("to", N_("To"), kind=TIME),
)
TIMELINE_COLUMNS: Final = (
    Column("time", N_("Time"), kind=TIME), Column("kind", N_("Event")),
    Column("machine", N_("Machine")), Column("text", N_("Detail")),
)


@router.get("/work-orders/{number}", response_class=HTMLResponse)
async def work_order_page(number: str, request: Request) -> Response:
    page = await open_page(request)
    data = await _order_detail(request, page, number)
    if fmt := export_format(request):
        table = request.query_params.get("table", "operations")
        if table == "operations":
            rows = [{**o, "status": page.tr(labels.OPERATION_STATUS[o["status"]])}
                    for o in data["ops"]]
            return export(fmt, f"{number}-operations", OP_COLUMNS, rows, page.t.gettext)
        if table == "dispatches":
            rows = [{**h, "start": page.ts(h["start_ts"]), "end": page.ts(h["end_ts"])}
                    for h in data["history"]]
            return export(fmt, f"{number}-dispatches", DISPATCH_COLUMNS, rows, page.t.gettext)
        if table == "materials":
            return export(fmt, f"{number}-materials", MATERIAL_COLUMNS, data["materials"],
                          page.t.gettext)
        if table == "timeline":
            rows = [{**e, "time": page.ts(e["ts"]), "kind": page.tr(e["label"])}
                    for e in data["timeline"]]
            return export(fmt, f"{number}-timeline", TIMELINE_COLUMNS, rows, page.t.gettext)
        if table == "unassigned":
            names = {mc["id"]: mc["name"] for mc in data["machines"]}
            rows = [{**u, "machine": names.get(u["machine_id"], u["device"]),
                     "from": page.ts(u["first_ts"]), "to": page.ts(u["last_ts"])}
                    for u in data["unassigned"]]
            return export(fmt, f"{number}-unassigned", UNASSIGNED_COLUMNS, rows,
                          page.t.gettext)
        raise WebError(404, N_("No such table."), table)
    hourly = data["hourly"]
    chart = charts.bar_chart(
        [charts.Bar(page.ts(h)[11:13], (g, s), f"{page.ts(h)}: {g} / {s}")
         for h, g, s in hourly],
        label_every=max(1, len(hourly) // 16), title=page._("Output per hour")) if hourly \
        else None
    return render(page, "work_order.html", chart=chart, refresh=refresh_s(), **data)


@router.get("/work-orders/{number}/operations", response_class=HTMLResponse)
async def work_order_operations(number: str, request: Request) -> Response:
    """The operations table alone (the detail page refreshes it in place)."""
    page = await open_page(request)
    data = await _order_detail(request, page, number)
    return HTMLResponse(render_fragment(page, "_operations.html", **data))


# -- inventory -----------------------------------------------------------------------------

STOCK_COLUMNS: Final = (
    Column("material", N_("Material code")), Column("name", N_("Material")),
    Column("unit", N_("Unit")),
    Column("balance", N_("On hand"), lambda r: from_micro(r["balance_u"]), kind=NUMBER),
    Column("safety", N_("Safety stock"), lambda r: from_micro(r["safety_stock_u"]),
           kind=NUMBER),
    Column("source", N_("Safety stock from")),
    Column("usage", N_("Daily usage (7 d)"), lambda r: from_micro(r["avg_daily_usage_7d_u"]),
           kind=NUMBER),
    Column("days_of_cover", N_("Days of cover"), kind=NUMBER),
    Column("shortage", N_("Shortage")),
)
LEDGER_COLUMNS: Final = (
    Column("id", N_("Move")), Column("time", N_("Time"), kind=TIME),
    Column("material", N_("Material code"), kind=TEXT), Column("kind", N_("Kind")),
    Column("qty", N_("Quantity"), lambda r: signed_micro(r["qty_u"]), kind=NUMBER),
    Column("work_order", N_("Work order"), kind=TEXT), Column("gateway_id", N_("Gateway")),
    Column("seq", N_("Record seq")), Column("user", N_("By")), Column("note", N_("Note")),
)


@router.get("/inventory", response_class=HTMLResponse)
async def inventory_page(request: Request) -> Response:
    page = await open_page(request)
    fmt = export_format(request)
    table = request.query_params.get("table", "stock")
    qp = request.query_params
    q = qp.get("q") or None
    shortage = qp.get("shortage") == "1"
    limit = limit_param(request, 50)
    offset = int_param(request, "offset", 0)
    move_filter = {"material": qp.get("material") or None,
                   "kind": qp.get("kind") if qp.get("kind") in labels.MOVE_KIND else None,
                   "work_order": qp.get("work_order") or None}
    before = int_param(request, "before", 0) or None
    async with request.app.state.db.sessions() as session:
        if fmt and table == "ledger":
            moves = await _all_moves(session, move_filter)
            rows = [{**m, "time": page.ts(m["ts"]),
                     "kind": page.tr(labels.MOVE_KIND[m["kind"]])} for m in moves]
            return export(fmt, "stock-ledger", LEDGER_COLUMNS, rows, page.t.gettext)
        stock, total = await reports.stock_rows(
            session, q=q, shortage_only=shortage, limit=MAX_ROWS if fmt else limit,
            offset=0 if fmt else offset, now_ms=page.now_ms)
        if fmt:
            rows = [{**s, "source": page.tr(
                N_("manual") if s["safety_stock_source"] == "manual" else N_("computed")),
                "shortage": page.tr(N_("yes") if s["below_safety_stock"] else N_("no"))}
                for s in stock]
            return export(fmt, "stock", STOCK_COLUMNS, rows, page.t.gettext)
        ledger = await inventory.list_moves(session, limit=50, before_id=before, **move_filter)
    return render(page, "inventory.html", stock=stock, total=total, limit=limit, offset=offset,
                  q=q or "", shortage=shortage, ledger=ledger, move_filter=move_filter)


async def _all_moves(session: Any, flt: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    before = None
    while len(out) < MAX_ROWS:
        chunk = await inventory.list_moves(session, limit=1000, before_id=before, **flt)
        out += chunk["items"]
        before = chunk["next_before_id"]
        if before is None:
            break
    return out[:MAX_ROWS]


# -- data completeness ---------------------------------------------------------------------

GATEWAY_COLUMNS: Final = (
    Column("id", N_("Gateway")), Column("state", N_("State")),
    Column("records_stored", N_("Records received")), Column("last_seq", N_("Last seq")),
    Column("missing", N_("Missing")), Column("unexplained", N_("Missing, unexplained")),
    Column("completeness", N_("Completeness"),
           lambda r: None if r["completeness"] is None else round(r["completeness"], 6),
           kind=PERCENT),
    Column("last_seen", N_("Last seen"), kind=TIME), Column("backlog", N_("Backlog at the gateway")),
    Column("lag", N_("Newest record lag (s)"),
                                                 lambda r: None if r["lag_ms"] is None
                                                 else r["lag_ms"] // 1000),
    Column("clock_skew_ms", N_("Clock skew (ms)")),
)
CLOCK_JUMP_COLUMNS: Final = (
    Column("gateway", N_("Gateway")), Column("seq", N_("Record seq")),
    Column("time", N_("Time"), kind=TIME),
    Column("jump_s", N_("Jump (s)")), Column("reason", N_("Why")),
)
GAP_COLUMNS: Final = (
    Column("gateway", N_("Gateway")), Column("first_seq", N_("First seq")),
    Column("last_seq", N_("Last seq")), Column("missing", N_("Missing")),
    Column("why", N_("Why")),
)


COMPLETENESS_FRESH_S: Final = 30.0


async def completeness_data(request: Request, page: Page) -> tuple[list[dict[str, Any]], float]:
    """Per gateway: its status (cloud/ingest/status.py) and freshness; cached (cloud/web/cache.py)
    because counting and gap-finding read every record of a gateway."""
    async def compute() -> list[dict[str, Any]]:
        return await _completeness(request)

    result: tuple[list[dict[str, Any]], float] = await page_cache(request.app).get(
        ("completeness",), COMPLETENESS_FRESH_S, compute)
    return result


async def _completeness(request: Request) -> list[dict[str, Any]]:
    async with request.app.state.db.sessions() as session:
        fresh = {g["id"]: g for g in await gateway_freshness(session, clock.now_ms())}
        out = []
        for gid in await reports.gateway_ids(session):
            doc = await gateway_status(session, gid)
            if doc is None:
                continue
            f = fresh.get(gid, {"state": "never", "lag_ms": None, "provisional": False})
            unexplained = sum(g["missing"] for g in doc["gaps"]
                              if not g["explained"] and not g["before_first_record"])
            sent = doc["last_seq"]
            out.append({**doc, "state": f["state"], "lag_ms": f["lag_ms"],
                        "provisional": f["provisional"], "unexplained": unexplained,
                        "revoked": doc["revoked_at"] is not None,
                        "completeness": (doc["records_stored"] / sent) if sent else None})
    return out


def _gap_why(gap: dict[str, Any], page: Page) -> str:
    if gap["before_first_record"] and not gap["explained_by"]:
        return page._("Before the first record the cloud received")
    if not gap["explained_by"]:
        return page._("Not explained yet (may still arrive)")
    parts = []
    for e in gap["explained_by"][:3]:
        reason = e.get("reason") or e.get("cause") or ""
        label = page._("gap record")
        parts.append(f"{label} #{e['seq']}: {reason}".strip())
    return "; ".join(parts)


@router.get("/completeness", response_class=HTMLResponse)
async def completeness_page(request: Request) -> Response:
    page = await open_page(request)
    gws, computed = await completeness_data(request, page)
    selected = request.query_params.get("gateway") or (gws[0]["id"] if gws else None)
    gaps = []
    for g in gws:
        if g["id"] == selected:
            gaps = [{**gap, "gateway": g["id"], "why": _gap_why(gap, page)} for gap in g["gaps"]]
    if fmt := export_format(request):
        if request.query_params.get("table") == "gaps":
            return export(fmt, f"gaps-{selected}", GAP_COLUMNS, gaps, page.t.gettext)
        if request.query_params.get("table") == "clock_jumps":
            jumps = [{**j, "gateway": g["id"], "time": page.ts(j["ts"]),
                      "jump_s": None if j["jump_ms"] is None else j["jump_ms"] / 1000}
                     for g in gws if g["id"] == selected for j in g["clock_jumps"]]
            return export(fmt, f"clock-jumps-{selected}", CLOCK_JUMP_COLUMNS, jumps,
                          page.t.gettext)
        rows = [{**g, "state": page.tr(labels.GATEWAY_STATE[g["state"]])} for g in gws]
        return export(fmt, "data-completeness", GATEWAY_COLUMNS, rows, page.t.gettext,
                      tz=page.tz)
    limit = limit_param(request, 50)
    offset = int_param(request, "offset", 0)
    async with request.app.state.db.sessions() as session:
        parked, parked_total = await list_dead_letters(session, limit=20, offset=0)
    return render(page, "completeness.html", gateways=gws, selected=selected,
                  computed_ms=int(computed * 1000), dead_letters=parked,
                  dead_letters_total=parked_total,
                  gaps=gaps[offset:offset + limit], gaps_total=len(gaps), limit=limit,
                  offset=offset)


@router.get("/logout")
async def logout_get(_request: Request) -> Response:
    """A bookmark to /logout lands on the login page; logging out is a POST."""
    return RedirectResponse("/login", status_code=303)
