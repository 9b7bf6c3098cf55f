"""The web UI in headless Chromium against a real cloud: log in, watch the plant board
follow ingested records without a reload, dispatch an order from its page and watch its
progress move, switch to Chinese and back, acknowledge an anomaly, download a table as
CSV and XLSX and read the files, and screenshot every page in both languages (looked at
by a person; see tests/browser/conftest.py for where they go)."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from tests.browser.conftest import WebServer, artifacts_dir
from tests.fixtures.plant import now_ms

pytestmark = [pytest.mark.needs_service("chromium"), pytest.mark.xdist_group("browser")]


def tile(page: Any, name: str) -> Any:
    return page.locator("section.tile", has=page.locator("b.name", has_text=name))


def test_board_follows_ingested_records(signed_in: Any, web_server: WebServer) -> None:
    page = signed_in
    page.goto(web_server.url + "/")
    imm1 = tile(page, "IMM 1")
    assert imm1.get_attribute("data-state") == "running"
    before = int(imm1.locator(".today-good").inner_text())
    cnc1 = tile(page, "CNC 1")
    assert cnc1.get_attribute("data-state") == "idle"
    t = now_ms()
    plant = web_server.plant
    web_server.ingest([plant.count("imm-01", 25, t),
                       plant.rec("cnc-01", "state", {"state": "alarm", "code": 9}, t)])
    page.wait_for_function(
        "([sel, n]) => { const e = document.querySelector(sel);"
        " return e && parseInt(e.textContent) >= n; }",
        arg=[f"section.tile[data-machine='{web_server.plant.machines['imm-01']}'] .today-good",
             before + 25])
    page.wait_for_selector(
        f"section.tile[data-machine='{web_server.plant.machines['cnc-01']}'][data-state='down']")
    web_server.ingest([plant.rec("cnc-01", "state", {"state": "idle", "code": 0}, now_ms())])


def test_dispatch_from_the_page_and_watch_progress(signed_in: Any,
                                                   web_server: WebServer) -> None:
    page = signed_in
    page.goto(web_server.url + "/work-orders/WO-1004")
    row = page.locator("#operations tr[data-step='10']")
    row.locator("select[name=machine_id]").select_option(
        str(web_server.plant.machines["cnc-01"]))
    row.locator("button.go").click()
    page.wait_for_selector("#flash")
    assert "Dispatched." in page.inner_text("#flash")
    assert page.locator("#operations tr[data-step='10'] .op-progress").get_attribute(
        "data-good") == "0"
    web_server.ingest([web_server.plant.count("cnc-01", 7, now_ms())])
    page.wait_for_selector("#operations tr[data-step='10'] .op-progress[data-good='7']")
    assert "7 / 100" in page.inner_text("#operations tr[data-step='10']")
    doc = web_server.api("/api/v1/work-orders/WO-1004")
    assert doc["operations"][0]["good"] == 7 and doc["status"] == "in_progress"


def test_switch_to_chinese_and_back(signed_in: Any, web_server: WebServer) -> None:
    page = signed_in
    page.goto(web_server.url + "/work-orders")
    page.click("form.lang button[value='zh-CN']")
    page.wait_for_selector("html[lang='zh-CN']")
    assert "工单" in page.inner_text("h1") and "生产看板" in page.inner_text("header.top")
    assert "交期" in page.inner_text("#orders thead")
    page.click("form.lang button[value='en']")
    page.wait_for_selector("html[lang='en']")
    assert page.inner_text("h1") == "Work orders"
    assert "工单" not in page.inner_text("body")


def test_acknowledge_an_anomaly(signed_in: Any, web_server: WebServer) -> None:
    page = signed_in
    page.goto(web_server.url + "/anomalies")
    row = page.locator("#anomalies tr", has=page.locator("form.ack-form")).first
    anomaly_id = row.get_attribute("data-anomaly")
    row.locator("input[name=assignee]").fill("李工")
    row.locator("form.ack-form button").click()
    page.wait_for_selector("#flash")
    assert "Anomaly acknowledged." in page.inner_text("#flash")
    done = page.locator(f"#anomalies tr[data-anomaly='{anomaly_id}']")
    assert "Acknowledged" in done.inner_text() and "李工" in done.inner_text()
    doc = web_server.api(f"/api/v1/anomalies/{anomaly_id}")
    assert doc["status"] == "acknowledged" and doc["assignee"] == "李工"


def test_export_csv_and_xlsx_and_open_them(signed_in: Any, web_server: WebServer) -> None:
    page = signed_in
    page.goto(web_server.url + "/work-orders?q=WO-100&due=late")
    with page.expect_download() as got:
        page.click("a.export-csv")
    raw = Path(got.value.path()).read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")   # the BOM Excel needs for Chinese
    text = raw.decode("utf-8-sig")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["Work order"] for r in rows] == ["WO-1002"]
    assert rows[0]["Customer"] == "Acme GmbH" and rows[0]["Due status"] == "Late"
    page.goto(web_server.url + "/inventory")
    with page.expect_download() as got:
        page.click("#ledger a.export-xlsx")
    assert got.value.suggested_filename == "stock-ledger.xlsx"
    sheet = openpyxl.load_workbook(io.BytesIO(Path(got.value.path()).read_bytes())).active
    data = [[c.value for c in r] for r in sheet.iter_rows()]
    assert data[0][:4] == ["Move", "Time", "Material code", "Kind"]
    kinds = {r[3] for r in data[1:]}
    assert "Receipt" in kinds and "Backflush" in kinds
    assert any(r[2] == "INSERT" and r[5] == "WO-1001" for r in data[1:])


PAGES = [("board", "/"), ("wall", "/?wall=1"), ("work-orders", "/work-orders"),
         ("work-order", "/work-orders/WO-1001"), ("anomalies", "/anomalies"),
         ("oee", "/oee"), ("inventory", "/inventory"), ("completeness", "/completeness")]


def test_screenshots_of_every_page_in_both_languages(browser: Any, signed_in: Any,
                                                     web_server: WebServer) -> None:
    out = artifacts_dir()
    page = signed_in
    for locale in ("zh-CN", "en"):
        page.goto(web_server.url + "/")
        page.click(f"form.lang button[value='{locale}']")
        page.wait_for_selector(f"html[lang='{locale}']")
        for name, path in PAGES:
            page.goto(web_server.url + path)
            assert page.locator("html").get_attribute("lang") == locale
            page.screenshot(path=str(out / f"{name}-{locale}.png"), full_page=True)
        anon = browser.new_context(viewport={"width": 1366, "height": 800})
        login = anon.new_page()
        login.goto(f"{web_server.url}/login?lang={locale}")
        login.screenshot(path=str(out / f"login-{locale}.png"))
        anon.close()
    names = {p.name for p in out.glob("*.png")}
    for name, _path in [*PAGES, ("login", "/login")]:
        for locale in ("zh-CN", "en"):
            assert f"{name}-{locale}.png" in names
    assert re.search(r"\d", page.inner_text("#orders, body"))


def test_the_anomalies_page_fits_a_tablet_in_both_languages(signed_in: Any,
                                                            web_server: WebServer) -> None:
    """No horizontal overflow of the anomalies page at 1366 px in English and 800 px in
    Chinese (the table may scroll inside its own box), with long alarm texts on it."""
    t = now_ms() - 60_000
    web_server.ingest([web_server.plant.rec(
        "imm-01", "alarm", {"code": 900 + i, "text": "液压油温度过高 hydraulic oil temperature "
                            "above its limit for a long time", "active": True}, t + i)
        for i in range(3)])
    page = signed_in
    out = artifacts_dir()
    for locale, width in (("en", 1366), ("zh-CN", 800)):
        page.set_viewport_size({"width": width, "height": 900})
        page.goto(web_server.url + "/")
        page.click(f"form.lang button[value='{locale}']")
        page.wait_for_selector(f"html[lang='{locale}']")
        page.goto(web_server.url + "/anomalies")
        page.screenshot(path=str(out / f"anomalies-{locale}-{width}.png"), full_page=True)
        over = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert over <= 0, (locale, width, over)
    page.set_viewport_size({"width": 1366, "height": 900})
    page.goto(web_server.url + "/")
    page.click("form.lang button[value='en']")
    page.wait_for_selector("html[lang='en']")
