"""Every table of the pages as a file: CSV (UTF-8 with a byte-order mark, so Excel opens
Chinese text correctly) or XLSX (openpyxl, write-only). The columns are the page's,
headed in the reader's language; the rows are the page's query with the same filters
but without paging, up to ``MAX_ROWS``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from urllib.parse import quote

from fastapi.responses import Response
from openpyxl import Workbook

MAX_ROWS: Final = 50_000
FORMATS: Final = ("csv", "xlsx")
XLSX_TYPE: Final = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


@dataclass(frozen=True, slots=True)
class Column:
    key: str
    label: str                           # a msgid, translated when written
    value: Callable[[dict[str, Any]], Any] | None = None   # default: row[key]

    def get(self, row: dict[str, Any]) -> Any:
        return self.value(row) if self.value is not None else row.get(self.key)


def _cell(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.replace(tzinfo=None) if value.tzinfo else value
    if isinstance(value, (list, tuple, dict)):
        return str(value)
    return value


def export(fmt: str, name: str, columns: Sequence[Column], rows: Iterable[dict[str, Any]],
           gettext: Callable[[str], str]) -> Response:
    """The table as a download named ``<name>.<fmt>``."""
    header = [gettext(c.label) for c in columns]
    if fmt == "csv":
        buf = io.StringIO()
        buf.write("\ufeff")
        writer = csv.writer(buf)
        writer.writerow(header)
        for row in rows:
            writer.writerow(["" if (v := c.get(row)) is None else v for c in columns])
        body = buf.getvalue().encode("utf-8")
        media = "text/csv; charset=utf-8"
    elif fmt == "xlsx":
        wb = Workbook(write_only=True)
        ws = wb.create_sheet(title=name[:31])
        ws.append(header)
        for row in rows:
            ws.append([_cell(c.get(row)) for c in columns])
        out = io.BytesIO()
        wb.save(out)
        body = out.getvalue()
        media = XLSX_TYPE
    else:
        raise ValueError(f"export format {fmt!r} is not one of {', '.join(FORMATS)}")
    filename = f"{name}.{fmt}"
    return Response(body, media_type=media, headers={
        "Content-Disposition": f"attachment; filename=\"{filename}\"; "
                               f"filename*=UTF-8''{quote(filename)}"})
