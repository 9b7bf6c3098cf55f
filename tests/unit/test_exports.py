"""The export writer (cloud/web/exports.py), read back with csv and openpyxl: text never
becomes a formula (CSV and XLSX), numbers stay numbers with a number format, times are
real date-times in the plant's time zone, state codes are written in the reader's
language, and names that are not ASCII or hold ``"`` or ``:`` make a valid download."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote
from zoneinfo import ZoneInfo

import openpyxl

from cloud.web import labels
from cloud.web.exports import NUMBER, PERCENT, TEXT, TIME, Column, export
from cloud.web.i18n import translations

SHANGHAI = ZoneInfo("Asia/Shanghai")
COLUMNS = (
    Column("note", "Note"),
    Column("number", "Work order", kind=TEXT),
    Column("qty", "Quantity", kind=NUMBER),
    Column("good", "Good"),
    Column("oee", "OEE", kind=PERCENT),
    Column("time", "Time", kind=TIME),
    Column("state", "State", labels=labels.MACHINE_STATE),
)
HOSTILE = ["=STATEX()", "+1+2", "-2+3", "@SUM(A1)", "\t=1", "\r=1", "#N/A"]
T0 = int(datetime(2026, 12, 9, 15, 59, tzinfo=UTC).timestamp() * 1000)  # 23:59 Shanghai


def rows() -> list[dict[str, Any]]:
    out = [{"note": text, "number": "00123", "qty": "-2.5", "good": 7, "oee": 0.8123,
            "time": T0, "state": "running"} for text in HOSTILE]
    out.append({"note": "bell\x07", "number": "WO-1", "qty": "3", "good": None, "oee": None,
                "time": "2026-12-01 08:00", "state": "unknown"})
    return out


def csv_rows(body: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(body.decode("utf-8-sig"))))


def test_csv_text_is_never_a_formula_and_numbers_stay_numbers() -> None:
    res = export("csv", "t", COLUMNS, rows(), translations("en").gettext, tz=SHANGHAI)
    table = csv_rows(res.body)
    assert table[0] == ["Note", "Work order", "Quantity", "Good", "OEE", "Time", "State"]
    assert [r[0] for r in table[1:8]] == ["'" + text if text[0] in "=+-@\t\r" else text
                                         for text in HOSTILE]
    assert table[1][1:] == ["00123", "-2.5", "7", "0.8123", "2026-12-09 23:59", "Running"]
    assert table[8][2:] == ["3", "", "", "2026-12-01 08:00", "No data"]


def test_xlsx_cells_are_typed_and_text_is_never_a_formula() -> None:
    res = export("xlsx", "t", COLUMNS, rows(), translations("en").gettext, tz=SHANGHAI)
    sheet = openpyxl.load_workbook(io.BytesIO(res.body)).active
    cells = list(sheet.iter_rows(min_row=2))
    for cell, text in zip((r[0] for r in cells), HOSTILE, strict=False):
        # (XML reads a carriage return back as a line feed)
        assert (cell.data_type, cell.value) == ("s", text.replace("\r", "\n"))
    first = cells[0]
    assert (first[1].data_type, first[1].value) == ("s", "00123")
    assert first[2].value == -2.5 and first[2].data_type == "n"
    assert first[3].value == 7 and first[3].number_format == "0"
    assert first[4].value == 0.8123 and first[4].number_format == "0.0%"
    assert first[5].value == datetime(2026, 12, 9, 23, 59)   # plant time, a real date
    assert first[5].is_date and first[5].number_format == "yyyy-mm-dd hh:mm"
    last = cells[-1]
    assert last[0].value == "bell" and last[2].value == 3 and last[3].value is None
    assert last[5].value == datetime(2026, 12, 1, 8, 0)      # the page's own plant time


def test_chinese_export_translates_headers_and_state_codes() -> None:
    zh = translations("zh-CN").gettext
    for fmt in ("csv", "xlsx"):
        res = export(fmt, "t", COLUMNS, rows(), zh, tz=SHANGHAI)
        if fmt == "csv":
            table = csv_rows(res.body)
        else:
            sheet = openpyxl.load_workbook(io.BytesIO(res.body)).active
            table = [[c.value for c in r] for r in sheet.iter_rows()]
        assert table[0][1] == "工单"
        states = {r[6] for r in table[1:]}
        assert states == {zh("Running"), zh("No data")}
        assert not states & {"running", "unknown", "Running", "No data"}


def test_names_in_chinese_with_colon_and_quote_make_a_valid_download() -> None:
    name = 'WO-工单:7"x-operations'
    res = export("xlsx", name, COLUMNS, [], translations("en").gettext)
    header = res.headers["content-disposition"]
    header.encode("latin-1")  # a header Starlette can send
    assert header.startswith('attachment; filename="WO-__:7_x-operations.xlsx"; ')
    assert unquote(header.split("filename*=UTF-8''")[1]) == name + ".xlsx"
    book = openpyxl.load_workbook(io.BytesIO(res.body))
    assert book.sheetnames == ['WO-工单_7"x-operations']
    long = export("xlsx", "[a]/b\\c?d*e" + "f" * 40, COLUMNS, [], str)
    title = openpyxl.load_workbook(io.BytesIO(long.body)).sheetnames[0]
    assert title == ("_a__b_c_d_e" + "f" * 40)[:31]
