"""The web UI without a browser (httpx against create_app, SQLite): every page in both
languages, no external URL anywhere, the language choice (user, cookie, Accept-Language),
filters, paging and due-date colours, exports (CSV with BOM, XLSX) with the page's
filters, the provisional banner, CSRF and roles (a viewer sees no buttons and gets 403),
and each planner action through its form."""

from __future__ import annotations

import asyncio
import csv
import io
import re
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import httpx
import openpyxl
import pytest

from cloud.core.models import WORK_ORDER_STATUSES
from tests.fixtures.cloud import ADMIN_HEADERS, add_admin, migrate_sync
from tests.fixtures.plant import PASSWORD, WebPlant, add_work_order, now_ms, seed_plant

pytestmark = pytest.mark.xdist_group("web_pages")
PAGES = ["/", "/?wall=1", "/board/tiles", "/work-orders", "/work-orders/WO-1001",
         "/work-orders/WO-1001/operations", "/anomalies", "/oee", "/inventory",
         "/completeness"]
EXTERNAL = re.compile(r"""(?:src|href|action)\s*=\s*["']?\s*(?:https?:)?//|url\(\s*["']?(?:https?:)?//""",
                      re.I)


@pytest.fixture(scope="module")
def web_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, WebPlant]]:
    """A migrated SQLite cloud with the test plant, built once for the module."""
    from cloud.app import create_app
    from cloud.auth import create_gateway
    from cloud.core.db import Database

    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('web') / 'cloud.db'}"
    migrate_sync(url)

    async def build() -> WebPlant:
        await add_admin(url)
        async with Database(url) as db:
            token = await create_gateway(db, "gw-hall1")
        app = create_app(url)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://cloud") as c:
            plant = await seed_plant(c, ADMIN_HEADERS, "gw-hall1", token)
        await app.state.db.dispose()
        return plant

    yield url, asyncio.run(build())


class Web(httpx.AsyncClient):
    plant: WebPlant

    async def page(self, path: str, **kw: Any) -> str:
        res = await self.get(path, **kw)
        assert res.status_code == 200, (path, res.status_code, res.text[:500])
        return res.text

    async def csrf(self, path: str = "/") -> str:
        found = re.search(r'name="csrf_token" value="([^"]+)"', await self.page(path))
        assert found
        return found.group(1)

    async def act(self, path: str, data: dict[str, Any] | None = None,
                  from_page: str = "/") -> httpx.Response:
        token = await self.csrf(from_page)
        return await self.post(path, data={"csrf_token": token, **(data or {})})


@pytest.fixture
async def web(web_db: tuple[str, WebPlant]) -> AsyncIterator[Any]:
    """A client factory: ``await web(user, accept_language=...)`` is logged in as user."""
    from cloud.app import create_app

    url, plant = web_db
    app = create_app(url)
    clients: list[Web] = []

    async def client(user: str | None = "pat", accept_language: str = "en") -> Web:
        c = Web(transport=httpx.ASGITransport(app=app), base_url="http://cloud",
                headers={"Accept-Language": accept_language})
        c.plant = plant
        clients.append(c)
        if user is not None:
            res = await c.post("/login", data={"name": user, "password": PASSWORD, "next": "/"})
            assert res.status_code == 303, res.text
        return c

    client.app = app  # type: ignore[attr-defined]
    yield client
    for c in clients:
        await c.aclose()
    await app.state.db.dispose()


async def set_locale(c: Web, locale: str) -> None:
    res = await c.post("/locale", data={"locale": locale, "next": "/",
                                        "csrf_token": await c.csrf()})
    assert res.status_code == 303


async def test_login_required_then_login_and_logout(web: Any) -> None:
    c = await web(None)
    res = await c.get("/work-orders?q=WO")
    assert res.status_code == 303 and res.headers["location"].startswith("/login?next=")
    assert "%2Fwork-orders" in res.headers["location"]
    bad = await c.post("/login", data={"name": "pat", "password": "nope", "next": "/"})
    assert bad.status_code == 401 and "Wrong user name or password" in bad.text
    good = await c.post("/login", data={"name": "pat", "password": PASSWORD,
                                        "next": "/work-orders"})
    assert good.status_code == 303 and good.headers["location"] == "/work-orders"
    # an absolute URL as next is not followed
    other = await c.post("/login", data={"name": "pat", "password": PASSWORD,
                                         "next": "https://evil.example/"})
    assert other.headers["location"] == "/"
    token = await c.csrf()
    out = await c.post("/logout", data={"csrf_token": token})
    assert out.status_code == 303 and (await c.get("/")).status_code == 303


async def test_every_page_in_both_languages_without_external_urls(web: Any) -> None:
    c = await web("pat")
    words = {"en": ("Work orders", "Plant board", "Inventory"),
             "zh-CN": ("生产工单", "生产看板", "库存")}
    for locale, expected in words.items():
        await set_locale(c, locale)
        for path in PAGES:
            html = await c.page(path)
            assert not EXTERNAL.search(html), (path, EXTERNAL.search(html))
            if not path.endswith(("tiles", "operations")):
                assert f'<html lang="{locale}">' in html
                for word in expected if "wall" not in path else expected[1:2]:
                    assert word in html, (locale, path, word)
    zh = await c.page("/work-orders")
    assert "交期" in zh and "超期" in zh and "进行中" in zh
    await set_locale(c, "en")
    assert "Late" in await c.page("/work-orders")
    for asset in ("/static/app.css", "/static/app.js"):
        res = await c.get(asset)
        assert res.status_code == 200 and not re.search(r"https?://", res.text)


async def test_language_from_browser_user_and_login_page(web: Any) -> None:
    anon = await web(None, accept_language="zh-CN,zh;q=0.9,en;q=0.5")
    assert "登录" in (await anon.get("/login")).text
    res = await anon.get("/login?lang=en")
    assert "Log in" in res.text and res.cookies.get("plantsync_lang") == "en"
    assert "Log in" in (await anon.get("/login")).text          # the cookie wins now
    vic = await web("vic", accept_language="zh-CN")
    assert "生产工单" in await vic.page("/work-orders")          # no choice stored: browser
    await set_locale(vic, "en")
    vic2 = await web("vic", accept_language="zh-CN")            # stored per user
    assert "Work orders" in await vic2.page("/work-orders")
    me = await vic2.get("/api/v1/me")
    assert me.json()["locale"] == "en"
    await set_locale(vic2, "zh-CN")


async def test_work_orders_filters_paging_and_due_colours(web: Any) -> None:
    c = await web("pat")
    html = await c.page("/work-orders")
    row = {n: re.search(rf'<tr data-number="{n}">(.*?)</tr>', html, re.S).group(1)  # type: ignore[union-attr]
           for n in ("WO-1001", "WO-1002", "WO-1003", "WO-1004")}
    assert "due-late" in row["WO-1002"] and "due-at_risk" in row["WO-1004"]
    assert "due-on_time" in row["WO-1001"] and "华东精密" in row["WO-1001"]
    assert 'class="bar"' in row["WO-1001"]
    late = await c.page("/work-orders?due=late")
    assert "WO-1002" in late and "WO-1001" not in late
    assert "WO-1003" in await c.page("/work-orders?q=1003")
    assert "WO-1001" not in await c.page("/work-orders?q=1003")
    drafts = await c.page("/work-orders?status=draft")
    assert "WO-1003" in drafts and "WO-1002" not in drafts
    paged = await c.page("/work-orders?limit=25&customer=%E5%8D%8E%E4%B8%9C%E7%B2%BE%E5%AF%86")
    assert "WO-1001" in paged and "WO-1003" in paged and "WO-1002" not in paged
    detail = await c.page("/work-orders/WO-1001")
    assert "<svg" in detail and "Output per hour" in detail
    assert "RESIN" in detail and "Unassigned production" in detail
    assert (await c.get("/work-orders/NOPE")).status_code == 404


async def test_exports_follow_the_page_filters(web: Any) -> None:
    c = await web("pat")
    res = await c.get("/work-orders?status=released&status=in_progress&export=csv")
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/csv")
    assert res.content.startswith(b"\xef\xbb\xbf")
    rows = list(csv.DictReader(io.StringIO(res.content.decode("utf-8-sig"))))
    assert {r["Work order"] for r in rows} >= {"WO-1001", "WO-1002", "WO-1004"}
    assert "WO-1003" not in {r["Work order"] for r in rows}
    assert {r["Status"] for r in rows} <= {"Released", "In progress"}
    await set_locale(c, "zh-CN")
    res = await c.get("/work-orders?export=xlsx&q=1002")
    ws = openpyxl.load_workbook(io.BytesIO(res.content)).active
    data = [[cell.value for cell in r] for r in ws.iter_rows()]
    assert data[0][0] == "工单" and [r[0] for r in data[1:]] == ["WO-1002"]
    assert data[1][2] == "Acme GmbH" and data[1][10] == "超期"
    await set_locale(c, "en")
    for path in ("/?export=csv", "/inventory?export=csv", "/inventory?export=csv&table=ledger",
                 "/completeness?export=xlsx", "/completeness?export=csv&table=gaps",
                 "/work-orders/WO-1001?export=csv&table=materials",
                 "/work-orders/WO-1001?export=xlsx&table=timeline",
                 "/anomalies?export=csv&status=all", "/oee?export=xlsx",
                 "/oee?export=csv&table=pareto", "/oee?export=csv&table=stops",
                 "/completeness?export=xlsx&table=clock_jumps"):
        res = await c.get(path)
        assert res.status_code == 200, (path, res.text[:300])
        assert "attachment" in res.headers["content-disposition"]
    ledger = (await c.get("/inventory?export=csv&table=ledger&kind=receipt")).content.decode(
        "utf-8-sig")
    lines = list(csv.DictReader(io.StringIO(ledger)))
    assert {r["Kind"] for r in lines} == {"Receipt"} and {r["Note"] for r in lines} == {"PO-7781"}
    board = list(csv.DictReader(io.StringIO((await c.get("/?export=csv")).content.decode(
        "utf-8-sig"))))
    assert {r["Machine"] for r in board} == {"IMM 1", "IMM 2", "CNC 1", "CNC 2"}
    assert (await c.get("/work-orders?export=pdf")).status_code == 400
    loose = list(csv.DictReader(io.StringIO((await c.get(
        "/work-orders/WO-1001?export=csv&table=unassigned")).content.decode("utf-8-sig"))))
    assert [(r["Machine"], r["Good"]) for r in loose] == [("CNC 1", "15")]
    jumps = (await c.get("/completeness?export=csv&table=clock_jumps")).content.decode("utf-8-sig")
    assert jumps.splitlines()[0].split(",") == ["Gateway", "Record seq", "Time", "Jump (s)", "Why"]


async def test_viewer_sees_no_buttons_and_may_not_post(web: Any) -> None:
    vic = await web("vic")
    await set_locale(vic, "en")
    html = await vic.page("/work-orders/WO-1003")
    assert 'id="action-release"' not in html and "dispatch-form" not in html
    assert "ack-form" not in await vic.page("/anomalies")
    token = await vic.csrf()
    for path, data in (("/work-orders/WO-1003/release", {}),
                       ("/work-orders/WO-1001/dispatch", {"machine_id": "1",
                                                          "wo_operation_id": "1"}),
                       ("/anomalies/1/acknowledge", {}),
                       ("/stops/reason", {"machine_id": "1", "start_ts": "1", "reason": "x"})):
        res = await vic.post(path, data={"csrf_token": token, **data})
        assert res.status_code == 403, (path, res.text[:200])
        assert "planner role" in res.text
    pat = await web("pat")
    assert 'id="action-release"' in await pat.page("/work-orders/WO-1003")


async def test_forms_need_the_session_token_and_this_origin(web: Any) -> None:
    pat = await web("pat")
    res = await pat.post("/work-orders/WO-1003/cancel", data={})
    assert res.status_code == 403 and "security token" in res.text
    token = await pat.csrf()
    res = await pat.post("/work-orders/WO-1003/cancel", data={"csrf_token": token},
                         headers={"Origin": "http://evil.example"})
    assert res.status_code == 403
    other = await web("ada")       # another session's token does not fit this one
    res = await pat.post("/work-orders/WO-1003/cancel", data={"csrf_token": await other.csrf()})
    assert res.status_code == 403
    anon = await web(None)
    res = await anon.post("/work-orders/WO-1003/cancel", data={"csrf_token": token})
    assert res.status_code == 303 and res.headers["location"] == "/login"
    doc = (await pat.get("/api/v1/work-orders/WO-1003")).json()
    assert doc["status"] == "draft"


async def test_planner_actions_through_the_forms(web: Any) -> None:
    pat = await web("pat")
    plant = pat.plant
    detail = "/work-orders/WO-1003"
    res = await pat.act(f"{detail}/release", {"next": detail}, detail)
    assert res.status_code == 303 and res.headers["location"] == detail
    html = await pat.page(detail)
    assert "Work order WO-1003 released." in html and "dispatch-form" in html
    op = (await pat.get("/api/v1/work-orders/WO-1003")).json()["operations"][0]
    res = await pat.act(f"{detail}/dispatch", {"machine_id": plant.machines["imm-02"],
                                               "wo_operation_id": op["id"], "next": detail},
                        detail)
    assert res.status_code == 303
    html = await pat.page(detail)
    assert "Dispatched." in html and "Running since" in html
    dispatch_id = re.search(r'/dispatches/(\d+)/stop', html).group(1)  # type: ignore[union-attr]
    await pat.act(f"{detail}/operations/10/hold", {"next": detail}, detail)
    assert (await pat.get("/api/v1/work-orders/WO-1003")).json()["operations"][0][
        "status"] == "on_hold"
    await pat.act(f"{detail}/operations/10/resume", {"next": detail}, detail)
    res = await pat.act(f"/dispatches/{dispatch_id}/stop", {"next": detail}, detail)
    assert res.status_code == 303
    assert "Dispatch stopped." in await pat.page(detail)
    # a refused action comes back as a message, nothing changes
    res = await pat.act(f"{detail}/close", {"next": detail}, detail)
    assert "Not done:" in await pat.page(detail)
    # unassigned production of CNC 1 onto WO-1001 step 20
    unassigned = (await pat.get("/api/v1/unassigned")).json()["items"]
    cnc1 = next(u for u in unassigned if u["machine_id"] == plant.machines["cnc-01"])
    res = await pat.act(f"/machines/{plant.machines['cnc-01']}/assign", {
        "wo_operation_id": plant.ops["WO-1001"][1], "start_ts": cnc1["first_ts"],
        "end_ts": cnc1["last_ts"] + 1, "next": "/work-orders/WO-1001"}, "/work-orders/WO-1001")
    assert res.status_code == 303
    doc = (await pat.get("/api/v1/work-orders/WO-1001")).json()
    assert doc["operations"][1]["good"] == cnc1["good"] > 0


async def test_anomaly_lifecycle_and_stop_reason_from_the_pages(web: Any) -> None:
    pat = await web("pat")
    html = await pat.page("/anomalies")
    ids = re.findall(r'data-anomaly="(\d+)"', html)
    assert ids, html[:2000]
    aid = ids[0]
    res = await pat.act(f"/anomalies/{aid}/acknowledge", {"assignee": "王工",
                                                          "next": "/anomalies"}, "/anomalies")
    assert res.status_code == 303
    html = await pat.page("/anomalies")
    assert "Anomaly acknowledged." in html
    assert "王工" in html
    await pat.act(f"/anomalies/{aid}/resolve", {"cause": "heater", "action": "replaced",
                                                "next": "/anomalies"}, "/anomalies")
    await pat.act(f"/anomalies/{aid}/close", {"next": "/anomalies"}, "/anomalies")
    closed = await pat.page("/anomalies?status=closed&days=30")
    assert f'data-anomaly="{aid}"' in closed
    oee = await pat.page(f"/oee?machine_id={pat.plant.machines['cnc-02']}")
    starts = re.findall(r'name="start_ts" value="(\d+)"', oee)
    assert starts, "no stop of CNC 2 listed"
    res = await pat.act("/stops/reason", {"machine_id": pat.plant.machines["cnc-02"],
                                          "start_ts": starts[0], "reason": "换刀 tool change",
                                          "next": "/oee"}, "/oee")
    assert res.status_code == 303
    assert "Stop reason saved." in await pat.page("/oee")


async def test_provisional_banner_while_a_gateway_catches_up(web: Any, web_db: Any) -> None:
    from cloud.auth import create_gateway
    from cloud.core.db import Database

    url, _plant = web_db
    async with Database(url) as db:
        token = await create_gateway(db, f"gw-late-{time.time_ns()}")
    gid = None
    async with Database(url) as db, db.sessions() as s:
        from sqlalchemy import text
        gid = (await s.execute(text("SELECT id FROM gateways ORDER BY created DESC LIMIT 1"))
               ).scalar()
    pat = await web("pat")
    late = WebPlant(str(gid), token)
    old = now_ms() - 40 * 60_000
    await late.ingest(pat, [late.rec("press-9", "state", {"state": "running"}, old),
                            late.count("press-9", 5, old + 1000)], sent_at=now_ms())
    html = await pat.page("/work-orders")
    assert 'id="provisional"' in html and str(gid) in html
    assert "Catching up" in await pat.page("/completeness")
    await late.ingest(pat, [late.count("press-9", 1, now_ms())])
    assert str(gid) not in await pat.page("/work-orders")

    async def with_backlog(backlog: int) -> None:   # live records, but a queue behind them
        await late.ingest(pat, [late.count("press-9", 1, now_ms())], backlog=backlog)

    await with_backlog(5001)              # 5000 still queued behind this batch
    assert str(gid) in await pat.page("/work-orders")
    await with_backlog(3)
    assert str(gid) not in await pat.page("/work-orders")


def test_due_status_rule() -> None:
    from datetime import UTC, datetime, timedelta

    from cloud.production import due_status

    now = datetime(2026, 3, 1, 12, tzinfo=UTC)
    day = timedelta(days=1)

    def due(**kw: Any) -> str | None:
        args = {"status": "in_progress", "due": now + 5 * day, "quantity": 100, "good": 0,
                "now": now, "started": now - day, "completed_at": None, **kw}
        return due_status(**args)

    assert due(due=None) is None and due(status="cancelled") is None
    assert due() == "on_time"                                 # 5/6 of the time left, none made
    assert due(started=now - 10 * day) == "at_risk"           # 1/3 of the time left, none made
    assert due(started=now - 10 * day, good=60) == "on_time"  # 40 % left vs 33 % time left
    assert due(due=now + timedelta(hours=20), good=99) == "at_risk"
    assert due(due=now + timedelta(hours=20), good=100) == "on_time"
    assert due(due=now - timedelta(minutes=1), good=99) == "late"
    assert due(status="completed", completed_at=now + 6 * day) == "late"
    assert due(status="closed", completed_at=now) == "on_time"


def test_accept_language_negotiation() -> None:
    from cloud.web.i18n import negotiate, pick_locale

    assert negotiate("zh-CN,zh;q=0.9,en;q=0.8") == "zh-CN"
    assert negotiate("en-US,en;q=0.9,zh-CN;q=0.8") == "en"
    assert negotiate("de-DE,zh;q=0.5") == "zh-CN"
    assert negotiate("zh-TW") == "en" and negotiate(None) == "en" and negotiate("") == "en"
    assert negotiate("en;q=0.1, zh-Hans;q=0.9") == "zh-CN"
    assert pick_locale("en", "zh-CN", "zh") == "en"
    assert pick_locale(None, "zh-CN", "en") == "zh-CN"


def test_charts_escape_their_text() -> None:
    from cloud.web import charts

    svg = str(charts.pareto([("<script>", 10.0, "a&b")]))
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "a&amp;b" in svg
    assert str(charts.bar_chart([charts.Bar("1", (3, 1))])).startswith("<svg")
    line = str(charts.line_chart(["a", "b"], [("OEE", [0.5, None])]))
    assert "<path" in line and "<svg" in line


def test_package_files() -> None:
    root = Path(__file__).resolve().parents[2] / "cloud" / "web"
    assert (root / "static" / "app.css").exists() and (root / "templates" / "base.html").exists()


async def test_the_wall_screen_is_read_only_with_plant_wide_figures(web: Any) -> None:
    """The wall screen (also for an admin, with an unregistered device waiting) has no
    form at all, keeps its mode when its tiles refresh, and shows the plant's shifts
    (good against target, OEE) and open anomalies."""
    ada = await web("ada")
    await ada.plant.ingest(ada, [ada.plant.count("press-9", 1, now_ms())])
    for path in ("/?wall=1", "/board/tiles?wall=1"):
        html = await ada.page(path)
        assert "<form" not in html, path
        assert 'id="plant-shifts"' in html, path
    assert 'data-refresh="/board/tiles?wall=1"' in await ada.page("/?wall=1")
    assert "<form" in await ada.page("/")          # the normal board keeps its forms


async def test_an_admin_registers_a_device_as_a_machine(web: Any) -> None:
    ada = await web("ada")
    await ada.plant.ingest(ada, [ada.plant.count("lathe-5", 2, now_ms())])
    pat = await web("pat")
    res = await pat.act("/machines", {"gateway_id": ada.plant.gateway, "device": "lathe-5",
                                      "name": "Lathe 5"})
    assert res.status_code == 403                      # planners do not bind devices
    res = await ada.act("/machines", {"gateway_id": ada.plant.gateway, "device": "lathe-5",
                                      "name": "Lathe 5", "next": "/"})
    assert res.status_code == 303
    names = [m["name"] for m in (await ada.get("/api/v1/machines?limit=50")).json()["items"]]
    assert "Lathe 5" in names
    assert "Lathe 5" in await ada.page("/board/tiles")


# -- the user's own page: API tokens (SQLite and PostgreSQL) ------------------------------

class Account:
    """``cloud_client`` logged in (a session cookie) as viewer ``vic2``; ``csrf`` is the
    account page's form token. Users ``vic2`` (viewer) and ``pat2`` (planner) exist."""

    def __init__(self, client: Any, csrf: dict[str, str]) -> None:
        self.c, self.csrf = client, csrf

    async def tokens_audit(self) -> list[dict[str, Any]]:
        """The audit entries of vic2's API tokens, newest first."""
        res = await self.c.get("/api/v1/audit", headers=ADMIN_HEADERS,
                               params={"entity": "api_token", "actor": "vic2"})
        return list(res.json()["items"])

    async def create_token(self, name: str) -> tuple[str, int]:
        """Create a token through the page: (the token shown once, its id)."""
        res = await self.c.post("/account/tokens", data={**self.csrf, "name": name})
        assert res.status_code == 201, res.text[:500]
        token = re.findall(r"psu_[A-Za-z0-9_-]{40,}", res.text)[0]
        html = (await self.c.get("/account")).text
        found = re.search(r'action="/account/tokens/(\d+)/revoke"', html)
        assert found, html
        return token, int(found.group(1))


@pytest.fixture
async def account(cloud_client: Any) -> Account:
    c = cloud_client
    c.headers.pop("Authorization", None)
    for name, role in (("vic2", "viewer"), ("pat2", "planner")):
        res = await c.post("/api/v1/users", headers=ADMIN_HEADERS,
                           json={"name": name, "role": role, "password": PASSWORD})
        assert res.status_code == 201, res.text
    res = await c.post("/login", data={"name": "vic2", "password": PASSWORD, "next": "/"})
    assert res.status_code == 303, res.text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', (await c.get("/account")).text)
    assert csrf
    return Account(c, {"csrf_token": csrf.group(1)})


async def test_the_account_page_needs_a_login(cloud_client: Any) -> None:
    c = cloud_client
    c.headers.pop("Authorization", None)
    anon = await c.get("/account")
    assert anon.status_code == 303 and anon.headers["location"].startswith("/login")


async def test_the_account_page_shows_the_user_and_no_tokens_yet(account: Account) -> None:
    c = account.c
    html = (await c.get("/account", headers={"Accept-Language": "en"})).text
    assert 'href="/account"' in html  # reachable from the header
    assert "My account" in html and "vic2" in html and "Viewer" in html
    assert "No API tokens yet." in html
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert csrf


async def test_token_forms_need_the_sessions_csrf_token_and_no_foreign_origin(
        account: Account) -> None:
    """Creating and revoking are refused without the session's token, with another
    site's Origin, or with none; a refused revoke leaves the token working."""
    c, token_field, my_tokens = account.c, account.csrf, account.tokens_audit
    res = await c.post("/account/tokens", data={"name": "x"})
    assert res.status_code == 403 and "security token" in res.text
    res = await c.post("/account/tokens", data={**token_field, "name": "x"},
                       headers={"Origin": "http://evil.example"})
    assert res.status_code == 403
    assert await my_tokens() == []
    token, token_id = await account.create_token("ERP export")
    res = await c.post(f"/account/tokens/{token_id}/revoke", data={})
    assert res.status_code == 403
    res = await c.post(f"/account/tokens/{token_id}/revoke", data=token_field,
                       headers={"Origin": "http://evil.example"})
    assert res.status_code == 403
    assert (await c.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
            ).status_code == 200


async def test_a_new_token_is_shown_once_and_works(account: Account) -> None:
    c, token_field = account.c, account.csrf
    res = await c.post("/account/tokens", data={**token_field, "name": "ERP export"})
    assert res.status_code == 201, res.text[:500]
    assert res.headers["cache-control"] == "no-store"
    shown = re.findall(r"psu_[A-Za-z0-9_-]{40,}", res.text)
    assert len(set(shown)) == 1 and "not shown again" in res.text
    token = shown[0]
    me = await c.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200 and me.json()["name"] == "vic2"
    html = (await c.get("/account")).text  # listed, never shown again
    assert token not in html and "ERP export" in html and "Active" in html
    assert (await c.get("/api/v1/me/tokens")).json()["items"][0]["last_used_at"] is not None


async def test_revoking_a_token_ends_it_and_is_audited(account: Account) -> None:
    c, token_field, my_tokens = account.c, account.csrf, account.tokens_audit
    token, token_id = await account.create_token("ERP export")
    res = await c.post(f"/account/tokens/{token_id}/revoke", data=token_field)
    assert res.status_code == 303 and res.headers["location"] == "/account"
    html = (await c.get("/account")).text
    assert "API token revoked." in html and "Revoked" in html
    assert f'action="/account/tokens/{token_id}/revoke"' not in html
    res = await c.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert (res.status_code, res.json()["error"]) == (401, "revoked_token")
    assert [e["action"] for e in await my_tokens()] == ["api_token.revoke", "api_token.create"]


async def test_another_persons_token_is_not_theirs_to_revoke(account: Account) -> None:
    c, token_field = account.c, account.csrf
    other = httpx.AsyncClient(transport=httpx.ASGITransport(app=c.app), base_url="http://cloud")
    async with other:
        assert (await other.post("/login", data={"name": "pat2", "password": PASSWORD,
                                                 "next": "/"})).status_code == 303
        res = await other.post("/api/v1/me/tokens", json={"name": "pat's"})
        pat_token = res.json()
    res = await c.post(f"/account/tokens/{pat_token['id']}/revoke", data=token_field)
    assert res.status_code == 404
    res = await c.get("/api/v1/me", headers={"Authorization": f"Bearer {pat_token['token']}"})
    assert res.status_code == 200


async def test_the_account_page_in_chinese(account: Account) -> None:
    """With a revoked token listed (its "revoked on" date shows)."""
    c, token_field = account.c, account.csrf
    _, token_id = await account.create_token("ERP export")
    res = await c.post(f"/account/tokens/{token_id}/revoke", data=token_field)
    assert res.status_code == 303, res.text
    res = await c.post("/locale", data={**token_field, "locale": "zh-CN", "next": "/account"})
    assert res.status_code == 303
    html = (await c.get("/account")).text
    assert '<html lang="zh-CN">' in html
    for word in ("我的账户", "API 令牌", "创建令牌", "查看者", "已于"):
        assert word in html, word
    res = await c.post("/account/tokens", data={**token_field, "name": "脚本"})
    assert res.status_code == 201 and "请立即复制：令牌只显示这一次。" in res.text


async def test_ticked_anomalies_acknowledged_and_closed_at_once_in_chinese(web: Any) -> None:
    """The bulk form (CSRF like every form): acknowledge two ticked anomalies, then close
    them with a cause and an action; the Chinese page shows titles and history as
    sentences, never action keys or escaped names."""
    from cloud.anomalies import create_manual

    async with web.app.state.db.sessions() as s, s.begin():
        ids = [(await create_manual(s, "pat", "operator", f"缺人 {n}"))["id"] for n in (1, 2)]
    pat = await web("pat", accept_language="zh-CN")
    await set_locale(pat, "zh-CN")                  # another test may have chosen English
    form = {"ids": [str(i) for i in ids], "next": "/anomalies"}
    res = await pat.act("/anomalies/bulk", {**form, "action": "acknowledge"}, "/anomalies")
    assert res.status_code == 303
    html = await pat.page("/anomalies")
    assert "异常:2 条已完成,0 条未完成" in html
    for i in ids:
        assert re.search(rf'data-anomaly="{i}".*?已响应', html, re.S)
    res = await pat.act("/anomalies/bulk", {**form, "action": "close", "cause": "换班",
                                            "action_taken": "补人"}, "/anomalies")
    assert res.status_code == 303
    one = await pat.page(f"/anomalies?status=closed&id={ids[0]}")
    assert "异常:2 条已完成" in one
    history = re.search(r'<ol class="a-history">(.*?)</ol>', one, re.S)
    assert history and "pat 已响应" in history.group(1) and "pat 已关闭" in history.group(1)
    assert "anomaly." not in one and not re.search(r"\\u[0-9a-f]{4}", one)
    vic = await web("vic")
    token = await vic.csrf("/anomalies")
    res = await vic.post("/anomalies/bulk", data={"csrf_token": token, "action": "close",
                                                  "ids": [str(ids[0])]})
    assert res.status_code == 403
    res = await pat.post("/anomalies/bulk", data={"action": "acknowledge",
                                                  "ids": [str(ids[0])]})
    assert res.status_code == 403                                   # no CSRF token
    await set_locale(pat, "en")


async def test_a_form_number_beyond_its_column_is_a_message_not_a_500(web: Any) -> None:
    pat = await web("pat")
    res = await pat.act("/stops/reason", {"machine_id": str(2**40), "start_ts": str(2**70),
                                          "reason": "setup"}, from_page="/oee")
    assert res.status_code == 303, res.text[:300]
    assert "Not done:" in await pat.page("/oee")
    res = await pat.act(f"/dispatches/{2**40}/stop")
    assert res.status_code == 422, res.text[:300]


async def test_a_parked_mqtt_batch_shows_on_the_completeness_page(
        web: Any, web_db: tuple[str, WebPlant]) -> None:
    from buffer.records import decode_batch
    from cloud.core.db import Database
    from cloud.ingest.dead_letters import park
    from tests.fixtures.ingest import batch_bytes, record

    payload = batch_bytes("gw-hall1", [record(900_001), record(900_002)])
    async with Database(web_db[0]) as db:
        await park(db, decode_batch(payload), payload, "RuntimeError: an applier's bug", 5)
    html = await (await web("pat")).page("/completeness")
    assert "Batches set aside" in html and "an applier&#39;s bug" in html
    assert "900001" in html


async def test_exports_are_typed_translated_and_never_formulas(web: Any) -> None:
    """Runs last in this module: it adds a work order to the shared plant."""
    c = await web("pat")
    number = '工单:7"x'
    await add_work_order(c, number, "P-100", 1200, headers=ADMIN_HEADERS,
                         customer='=HYPERLINK("http://evil.example")',
                         due="2026-12-09T15:59:00Z")
    text = (await c.get("/work-orders?export=csv&q=工单")).content.decode("utf-8-sig")
    row = next(csv.DictReader(io.StringIO(text)))
    assert row["Customer"] == '\'=HYPERLINK("http://evil.example")' and row["Quantity"] == "1200"
    await set_locale(c, "zh-CN")
    res = await c.get("/work-orders?export=xlsx&q=工单")
    sheet = openpyxl.load_workbook(io.BytesIO(res.content)).active
    header, cells = [cell.value for cell in sheet[1]], sheet[2]
    assert header[0] == "工单"
    assert (cells[0].data_type, cells[0].value) == ("s", number)
    assert (cells[2].data_type, cells[2].value) == ("s", '=HYPERLINK("http://evil.example")')
    assert cells[5].value == 1200 and cells[5].data_type == "n"
    assert cells[8].number_format == "0.0%" and cells[8].value == 0
    assert isinstance(cells[9].value, datetime) and cells[9].is_date
    assert cells[4].value not in WORK_ORDER_STATUSES     # "draft" in the reader's language
    res = await c.get(f"/work-orders/{quote(number, safe='')}?export=xlsx&table=operations")
    assert res.status_code == 200, res.text[:300]
    disposition = res.headers["content-disposition"]
    assert unquote(disposition.split("filename*=UTF-8''")[1]) == f"{number}-operations.xlsx"
    assert openpyxl.load_workbook(io.BytesIO(res.content)).sheetnames == ['工单_7"x-operations']
    board = openpyxl.load_workbook(io.BytesIO((await c.get("/?export=xlsx")).content)).active
    states = {r[2] for r in board.iter_rows(min_row=2, values_only=True)}
    assert states and not states & {"running", "idle", "down", "offline", "unknown", "setup"}
    res = await c.get('/completeness?export=csv&table=gaps&gateway=a"b')
    assert res.status_code == 200 and 'filename="gaps-a_b.csv"' in res.headers[
        "content-disposition"]
