"""Every table of the pages as a file: CSV (UTF-8 with a byte-order mark, so Excel opens
Chinese text correctly) or XLSX (openpyxl, write-only). The columns are the page's,
headed in the reader's language; the rows are the page's query with the same filters
but without paging, up to ``MAX_ROWS``.

What a cell holds, by its column's ``kind``:

- ``NUMBER`` (a number, or an exact decimal string such as ``from_micro``'s ``"-2.5"``)
  and ``PERCENT`` (a fraction, 0.25 = 25 %): numbers in XLSX, with a number format
  (``0`` whole, ``0.0#####`` decimal, ``0.0%``), so Excel can sum them; as written in CSV.
- ``TIME`` (epoch ms, an aware datetime, or the page's ``YYYY-MM-DD HH:MM`` text already in
  plant time): a real date-time in the plant's time zone (``tz``) with a date format in
  XLSX; ``YYYY-MM-DD HH:MM`` in plant time in CSV.
- ``TEXT``: always text (a work-order number ``00123`` stays ``00123``).
- ``AUTO`` (the default): numbers and datetimes as above, anything else as text.
- A column with ``labels`` (a code -> msgid map such as ``labels.MACHINE_STATE``) writes
  the code's label in the reader's language, never a raw ``running``.

Text never becomes a formula: in CSV a value starting with ``=``, ``+``, ``-``, ``@``, a tab
or a carriage return gets a leading ``'`` (what spreadsheet programs show as "this is
text"); in XLSX every text cell is written with the string type forced (openpyxl would
make ``=STATEX()`` a formula cell and ``#N/A`` an error cell). Numbers stay numbers:
a negative quantity in a NUMBER column is written as the number it is.

The download's name: ``Content-Disposition`` carries an ASCII ``filename`` (anything else,
quotes and backslashes replaced by ``_``) and the real name as RFC 5987
``filename*=UTF-8''...``, so a work order numbered in Chinese or a filter value with a
``"`` cannot break the header. XLSX sheet titles lose the characters Excel forbids
(``[]:*?/\\``) and are cut to 31 characters.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, tzinfo
from decimal import Decimal, InvalidOperation
from typing import Any, Final
from urllib.parse import quote

from fastapi.responses import Response
from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
from openpyxl.worksheet._write_only import WriteOnlyWorksheet

MAX_ROWS: Final = 50_000
FORMATS: Final = ("csv", "xlsx")
XLSX_TYPE: Final = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"

AUTO: Final = "auto"
TEXT: Final = "text"
NUMBER: Final = "number"
PERCENT: Final = "percent"
TIME: Final = "time"

FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r")
WHOLE_FORMAT: Final = "0"
DECIMAL_FORMAT: Final = "0.0#####"
PERCENT_FORMAT: Final = "0.0%"
TIME_FORMAT: Final = "yyyy-mm-dd hh:mm"
DATE_FORMAT: Final = "yyyy-mm-dd"
MAX_CELL_CHARS: Final = 32_767          # Excel's limit for one cell
_PAGE_TIME: Final = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?")
_SHEET_FORBIDDEN: Final = re.compile(r"[\[\]:*?/\\\x00-\x1f]")
_FILENAME_UNSAFE: Final = re.compile(r'[^\x20-\x7e]|["\\;]')


@dataclass(frozen=True, slots=True)
class Column:
    key: str
    label: str                           # a msgid, translated when written
    value: Callable[[dict[str, Any]], Any] | None = None   # default: row[key]
    kind: str = AUTO                     # AUTO, TEXT, NUMBER, PERCENT, TIME (module doc)
    labels: Mapping[str, str] | None = None  # code -> msgid, for codes such as states

    def get(self, row: dict[str, Any]) -> Any:
        return self.value(row) if self.value is not None else row.get(self.key)


def _number(value: Any) -> int | float | Decimal | None:
    """``value`` as a number, or None when it is not one (then it is written as text)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float | Decimal):
        return value
    if isinstance(value, str):
        try:
            dec = Decimal(value.strip())
        except InvalidOperation:
            return None
        if not dec.is_finite():
            return None
        return int(dec) if dec == dec.to_integral_value() and "." not in value else dec
    return None


def _time(value: Any, tz: tzinfo) -> datetime | date | None:
    """``value`` as a naive date-time in plant time (what a spreadsheet holds), or None."""
    if isinstance(value, datetime):
        return (value.astimezone(tz) if value.tzinfo else value).replace(tzinfo=None)
    if isinstance(value, date):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return datetime.fromtimestamp(value / 1000, UTC).astimezone(tz).replace(tzinfo=None)
    if isinstance(value, str) and _PAGE_TIME.fullmatch(value.strip()):
        # The page's own text (page.ts / page.dt) is already in plant time.
        return datetime.fromisoformat(value.strip())
    if isinstance(value, str) and value.strip()[:1].isdigit():
        try:
            stamp = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
        return _time(stamp, tz)
    return None


def _typed(column: Column, value: Any, tz: tzinfo, gettext: Callable[[str], str]) -> Any:
    """The cell's value for both formats: a number, a naive datetime/date, text, or None."""
    if value is None or value == "":
        return None
    if column.labels is not None and isinstance(value, str):
        return gettext(column.labels[value]) if value in column.labels else value
    kind = column.kind
    if kind in (NUMBER, PERCENT, AUTO) and not (kind == AUTO and isinstance(value, str)):
        number = _number(value)
        if number is not None:
            return number
    if kind in (TIME, AUTO) and not (kind == AUTO and isinstance(value, str)):
        stamp = _time(value, tz)
        if stamp is not None:
            return stamp
    if isinstance(value, list | tuple | dict):
        return str(value)
    return value if isinstance(value, str) else str(value)


def _csv_text(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def _xlsx_cell(sheet: WriteOnlyWorksheet, column: Column, value: Any) -> WriteOnlyCell:
    if isinstance(value, str):
        text = ILLEGAL_CHARACTERS_RE.sub("", value)[:MAX_CELL_CHARS]
        cell = WriteOnlyCell(sheet, value=text)
        cell.data_type = "s"   # never a formula ("=...") or an error ("#N/A") cell
        return cell
    cell = WriteOnlyCell(sheet, value=value)
    if isinstance(value, datetime):
        cell.number_format = TIME_FORMAT
    elif isinstance(value, date):
        cell.number_format = DATE_FORMAT
    elif column.kind == PERCENT and value is not None:
        cell.number_format = PERCENT_FORMAT
    elif isinstance(value, int):
        cell.number_format = WHOLE_FORMAT
    elif isinstance(value, float | Decimal):
        cell.number_format = DECIMAL_FORMAT
    return cell


def sheet_title(name: str) -> str:
    """``name`` as an Excel sheet title: without ``[]:*?/\\``, at most 31 characters, not
    blank and not starting or ending with an apostrophe."""
    title = _SHEET_FORBIDDEN.sub("_", name).strip("'")[:31]
    return title or "export"


def content_disposition(filename: str) -> str:
    """``attachment`` with an ASCII ``filename`` and the real one as RFC 5987
    ``filename*``: a header must be Latin-1, and a ``"`` in a name would end the quoted
    string early."""
    fallback = _FILENAME_UNSAFE.sub("_", filename) or "export"
    return (f"attachment; filename=\"{fallback}\"; "
            f"filename*=UTF-8''{quote(filename, safe='')}")


def export(fmt: str, name: str, columns: Sequence[Column], rows: Iterable[dict[str, Any]],
           gettext: Callable[[str], str], *, tz: tzinfo = UTC) -> Response:
    """The table as a download named ``<name>.<fmt>``; ``tz``: the plant's time zone,
    for times given as epoch ms or aware datetimes."""
    header = [gettext(c.label) for c in columns]
    if fmt == "csv":
        buf = io.StringIO()
        buf.write("\ufeff")
        writer = csv.writer(buf)
        writer.writerow([_csv_text(h) for h in header])
        for row in rows:
            writer.writerow([_csv_text(_typed(c, c.get(row), tz, gettext)) for c in columns])
        body = buf.getvalue().encode("utf-8")
        media = "text/csv; charset=utf-8"
    elif fmt == "xlsx":
        wb = Workbook(write_only=True)
        ws = wb.create_sheet(title=sheet_title(name))
        ws.append([_xlsx_cell(ws, Column("", ""), h) for h in header])
        for row in rows:
            ws.append([_xlsx_cell(ws, c, _typed(c, c.get(row), tz, gettext)) for c in columns])
        out = io.BytesIO()
        wb.save(out)
        body = out.getvalue()
        media = XLSX_TYPE
    else:
        raise ValueError(f"export format {fmt!r} is not one of {', '.join(FORMATS)}")
    return Response(body, media_type=media,
                    headers={"Content-Disposition": content_disposition(f"{name}.{fmt}")})
