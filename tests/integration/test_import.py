"""CSV (UTF-8 and GBK; comma, semicolon, tab) and XLSX import of materials, BOMs, routings
and work orders, on SQLite and PostgreSQL: English and Chinese headers, row-numbered
errors, and nothing imported when any row is wrong."""

from __future__ import annotations

import io
from datetime import date, datetime
from typing import Any

import pytest
from openpyxl import Workbook

from tests.fixtures.plant import make_plant

pytestmark = pytest.mark.needs_service("postgresql")


async def upload(api: Any, kind: str, data: bytes, name: str = "f.csv", **params: Any) -> Any:
    return await api.post(f"/api/v1/import/{kind}", params=params,
                          files={"file": (name, data, "application/octet-stream")})


def xlsx(rows: list[list[Any]]) -> bytes:
    book = Workbook()
    for row in rows:
        book.active.append(row)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


async def test_materials_utf8_comma_then_gbk_semicolon_chinese_headers(api):
    csv_text = "code,name,unit,lead_time_days,safety_stock\nM-1,Resin PA66,kg,7,12.5\nM-2,Insert,pcs,,\n"
    res = await upload(api, "materials", csv_text.encode("utf-8-sig"))
    assert res.status_code == 200, res.text
    assert res.json() == {"kind": "materials", "rows": 2, "created": 2, "updated": 0,
                          "unchanged": 0}
    gbk = "物料编码;物料名称;单位;采购提前期(天);安全库存\nM-2;嵌件;个;3;\nM-3;色母;kg;10;0.5\n"
    res = await upload(api, "materials", gbk.encode("gbk"))
    assert res.status_code == 200, res.text
    assert (res.json()["created"], res.json()["updated"]) == (1, 1)
    m2 = (await api.get("/api/v1/materials/M-2")).json()
    assert m2 == {"code": "M-2", "name": "嵌件", "unit": "个", "lead_time_days": 3,
                  "safety_stock_manual": None}
    m1 = (await api.get("/api/v1/materials/M-1")).json()
    assert m1["safety_stock_manual"] == "12.5"


async def test_row_numbered_errors_and_nothing_imported(api):
    data = (b"code\tname\tunit\tlead_time_days\n"
            b"M-1\tok\tkg\t1\n"
            b"\t\t\t\n"                     # empty row 3: skipped
            b"M-2\t\tkg\tsoon\n"            # row 4: two problems
            b"M-1\tagain\tkg\t2\n")  # row 5: repeats row 2
    res = await upload(api, "materials", data)
    assert res.status_code == 422
    body = res.json()
    assert body["error"] == "import_failed"
    assert body["errors"] == ["row 4: name is empty",
                              "row 4: lead_time_days 'soon' is not a whole number",
                              "row 5: material code 'M-1' repeats row 2"]
    assert (await api.get("/api/v1/materials")).json()["total"] == 0


async def test_bom_import_checks_materials_and_is_all_or_nothing(api):
    await make_plant(api)
    data = (b"product,material,qty_per_unit,scrap_factor,backflush_scrap,step\n"
            b"P-100,M-1,0.25,2%,no,\n"
            b"P-100,M-2,1,0,yes,10\n"
            b"P-100,M-42,3,0,no,\n"
            b"P-9,M-1,1,,,\n")
    res = await upload(api, "boms", data)
    assert res.status_code == 422
    assert res.json()["errors"] == [
        "row 4: material code 'M-42' unknown",
        "row 5: product code 'P-9' unknown (add a product_name column to create it)"]
    assert (await api.get("/api/v1/boms", params={"product": "P-100"})).json()["total"] == 1
    good = b"\n".join(data.split(b"\n")[:3]) + b"\n"
    res = await upload(api, "boms", good)
    assert res.status_code == 200, res.text
    assert res.json()["versions"] == [{"product": "P-100", "version": 2, "lines": 2}]
    bom = (await api.get("/api/v1/boms/P-100/current")).json()
    assert [(x["material"], x["qty_per_unit"], x["scrap_factor"], x["backflush_scrap"],
             x["step"]) for x in bom["lines"]] == [("M-1", "0.25", 0.02, False, None),
                                                   ("M-2", "1", 0.0, True, 10)]


async def test_routings_from_xlsx_with_chinese_headers(api):
    await make_plant(api)
    data = xlsx([["产品编码", "产品名称", "工序号", "工序名称", "设备", "标准节拍(秒)", "穴数"],
                 ["P-200", "端盖", 10, "注塑", "CNC 3", 12.5, 4],
                 ["P-200", "端盖", 20, "去毛刺", "gw-test/cnc-03", None, None],
                 [None, None, None, None, None, None, None]])
    res = await upload(api, "routings", data, name="工艺路线.xlsx")
    assert res.status_code == 200, res.text
    routing = (await api.get("/api/v1/routings/P-200/1")).json()
    assert [(o["step"], o["name"], o["ideal_cycle_ms"], o["cavities"])
            for o in routing["operations"]] == [(10, "注塑", 12500, 4), (20, "去毛刺", None, 1)]
    assert (await api.get("/api/v1/products/P-200")).json()["name"] == "端盖"
    bad = xlsx([["product", "step", "name", "machine"], ["P-200", 10, "x", "CNC 99"],
                ["P-200", 10, "y", "CNC 3"]])
    res = await upload(api, "routings", bad, name="r.xlsx")
    assert res.json()["errors"] == [
        "row 2: machine 'CNC 99' unknown (a machine name or GATEWAY/DEVICE)",
        "row 3: step 10 of 'P-200' repeats row 2"]


async def test_work_orders_csv_with_time_zone_and_update_on_reimport(api):
    await make_plant(api)
    data = ("工单号,产品编码,计划数量,交期,客户,优先级\n"
            "WO-1,P-100,500,2026-12-01,华东汽配,2\n"
            "WO-2,P-100,80,2026-12-03 08:00,,\n").encode("gbk")
    res = await upload(api, "work-orders", data, tz="Asia/Shanghai")
    assert res.status_code == 200, res.text
    wo1 = (await api.get("/api/v1/work-orders/WO-1")).json()
    assert (wo1["status"], wo1["quantity"], wo1["customer"], wo1["priority"]) == (
        "draft", 500, "华东汽配", 2)
    assert wo1["due"] == "2026-12-01T15:59:59Z"  # end of that day in Shanghai
    assert (await api.get("/api/v1/work-orders/WO-2")).json()["due"] == "2026-12-03T00:00:00Z"
    await api.post("/api/v1/work-orders/WO-1/release")
    changed = data.replace(b",2\n", b",9\n")
    res = await upload(api, "work-orders", changed, tz="Asia/Shanghai")
    assert (res.json()["updated"], res.json()["unchanged"]) == (1, 1)
    assert (await api.get("/api/v1/work-orders/WO-1")).json()["priority"] == 9
    # a released order's quantity cannot change: the whole file is refused
    res = await upload(api, "work-orders", changed.replace(b"500", b"600"), tz="Asia/Shanghai")
    assert res.status_code == 422
    assert res.json()["errors"][0].startswith("row 2: work order WO-1 is released")


async def test_bad_files_and_headers(api):
    res = await upload(api, "materials", b"code,name\nM-1,x\n")
    assert res.json()["errors"] == ["row 1: required column(s) missing: unit"]
    res = await upload(api, "materials", b"code,name,unit,colour\nM-1,x,kg,red\n")
    assert "row 1: column 'colour' is not a materials column" in res.json()["errors"][0]
    res = await upload(api, "materials", b"PK\x03\x04not a zip")
    assert res.status_code == 422 and "cannot be read" in res.json()["errors"][0]
    assert (await upload(api, "widgets", b"a\n1\n")).status_code == 404
    assert (await upload(api, "materials", b"code,name,unit\n", )).status_code == 422
    res = await api.post("/api/v1/import/materials", headers=api.viewer,
                         files={"file": ("f.csv", b"code,name,unit\nM,x,kg\n")})
    assert res.status_code == 403


async def test_materials_from_xlsx_and_all_or_nothing_with_row_numbers(api):
    data = xlsx([["物料编码", "物料名称", "单位", "采购提前期(天)", "安全库存"],
                 ["M-1", "Resin PA66", "kg", 7, 12.5],
                 ["M-2", "嵌件", "个", None, None]])
    res = await upload(api, "materials", data, name="物料.xlsx")
    assert res.status_code == 200, res.text
    assert (res.json()["created"], res.json()["updated"]) == (2, 0)
    assert (await api.get("/api/v1/materials/M-1")).json() == {
        "code": "M-1", "name": "Resin PA66", "unit": "kg", "lead_time_days": 7,
        "safety_stock_manual": "12.5"}
    bad = xlsx([["code", "name", "unit", "lead_time_days"],
                ["M-1", "renamed", "kg", 1],        # fine on its own
                ["M-3", "new", "kg", "soon"],       # row 3
                [None, None, None, None],           # empty: skipped
                ["M-4", None, "kg", -2]])           # row 5: two problems
    res = await upload(api, "materials", bad, name="m.xlsx")
    assert res.status_code == 422
    assert res.json()["errors"] == ["row 3: lead_time_days 'soon' is not a whole number",
                                    "row 5: name is empty",
                                    "row 5: lead_time_days -2 is below 0"]
    # nothing of the file was applied: M-1 keeps its name, M-3 and M-4 do not exist
    assert (await api.get("/api/v1/materials/M-1")).json()["name"] == "Resin PA66"
    assert (await api.get("/api/v1/materials")).json()["total"] == 2


async def test_boms_from_xlsx_and_all_or_nothing_with_row_numbers(api):
    await make_plant(api)
    data = xlsx([["产品编码", "物料编码", "单位用量", "损耗率", "废品倒冲", "工序号"],
                 ["P-100", "M-1", 0.25, "2%", "否", None],
                 ["P-100", "M-2", 1, 0, "是", 10]])
    res = await upload(api, "boms", data, name="BOM.xlsx")
    assert res.status_code == 200, res.text
    assert res.json()["versions"] == [{"product": "P-100", "version": 2, "lines": 2}]
    bom = (await api.get("/api/v1/boms/P-100/current")).json()
    assert [(x["material"], x["qty_per_unit"], x["scrap_factor"], x["backflush_scrap"],
             x["step"]) for x in bom["lines"]] == [("M-1", "0.25", 0.02, False, None),
                                                   ("M-2", "1", 0.0, True, 10)]
    bad = xlsx([["product", "material", "qty_per_unit"],
                ["P-100", "M-1", 3],
                ["P-100", "M-42", 1],
                ["P-100", "M-2", "lots"]])
    res = await upload(api, "boms", bad, name="b.xlsx")
    assert res.status_code == 422
    errors = res.json()["errors"]
    assert errors[0] == "row 3: material code 'M-42' unknown"
    assert errors[1:] == ["row 4: qty_per_unit 'lots' is not a number"]
    # still version 2: the file made no BOM version
    assert (await api.get("/api/v1/boms/P-100/current")).json()["version"] == 2
    assert (await api.get("/api/v1/boms", params={"product": "P-100"})).json()["total"] == 2


async def test_work_orders_from_xlsx_date_cells_and_all_or_nothing(api):
    """A date-only Excel cell means the end of that day in the plant's zone (as the CSV
    text 2026-12-01 does); a cell formatted with a time of day keeps that time, midnight
    included."""
    await make_plant(api)
    book = Workbook()
    sheet = book.active
    sheet.append(["工单号", "产品编码", "计划数量", "交期", "客户"])
    sheet.append(["WO-1", "P-100", 500, date(2026, 12, 1), "华东汽配"])
    sheet.append(["WO-2", "P-100", 80, datetime(2026, 12, 3, 8, 0), None])
    sheet.append(["WO-3", "P-100", 10, datetime(2026, 12, 4, 0, 0), None])
    sheet["D4"].number_format = "yyyy-mm-dd hh:mm"     # typed with a time: midnight
    sheet.append(["WO-4", "P-100", 20, datetime(2026, 12, 5, 0, 0), None])
    sheet["D5"].number_format = 'yyyy"年"m"月"d"日"'  # a Chinese date-only format
    out = io.BytesIO()
    book.save(out)
    res = await upload(api, "work-orders", out.getvalue(), name="工单.xlsx",
                       tz="Asia/Shanghai")
    assert res.status_code == 200, res.text
    assert res.json()["created"] == 4
    due = {n: (await api.get(f"/api/v1/work-orders/{n}")).json()["due"]
           for n in ("WO-1", "WO-2", "WO-3", "WO-4")}
    assert due == {"WO-1": "2026-12-01T15:59:59Z", "WO-2": "2026-12-03T00:00:00Z",
                   "WO-3": "2026-12-03T16:00:00Z", "WO-4": "2026-12-05T15:59:59Z"}
    bad = xlsx([["number", "product", "quantity", "due"],
                ["WO-9", "P-100", 5, date(2026, 12, 1)],
                ["WO-10", "P-100", 0, None],
                ["WO-11", "P-100", 5, "next week"]])
    res = await upload(api, "work-orders", bad, name="w.xlsx")
    assert res.status_code == 422
    errors = res.json()["errors"]
    assert [e.split(":")[0] for e in errors] == ["row 3", "row 4"], errors
    assert "'next week' is not a date" in errors[1]
    assert (await api.get("/api/v1/work-orders")).json()["total"] == 4


async def test_csv_and_xlsx_due_dates_are_equal(api):
    await make_plant(api)
    csv_data = b"number,product,quantity,due\nWO-C,P-100,1,2026-12-01\n"
    res = await upload(api, "work-orders", csv_data, tz="Asia/Shanghai")
    assert res.status_code == 200, res.text
    xlsx_data = xlsx([["number", "product", "quantity", "due"],
                      ["WO-X", "P-100", 1, date(2026, 12, 1)]])
    res = await upload(api, "work-orders", xlsx_data, name="w.xlsx", tz="Asia/Shanghai")
    assert res.status_code == 200, res.text
    from_csv = (await api.get("/api/v1/work-orders/WO-C")).json()["due"]
    from_xlsx = (await api.get("/api/v1/work-orders/WO-X")).json()["due"]
    assert from_csv == from_xlsx == "2026-12-01T15:59:59Z"
