"""CSV and XLSX import of materials, BOMs, routings and work orders (plants keep these in
Excel).

``import_file(db, actor, kind, data, *, tz=UTC) -> ImportResult`` (the API and the CLI);
``import_table(session, ...)`` does the same inside a transaction the caller holds.
``kind`` is one of ``KINDS``. The file is XLSX (first sheet; recognised by its content,
not its name) or CSV in UTF-8 (with or without BOM) or GBK/GB18030 (what Excel saves on a
Chinese Windows), separated by comma, semicolon or tab (whichever the header line uses
most). The first row is the header; English or Chinese column names (``HEADERS``; case,
spaces, ``_``/``-`` and a bracketed unit like ``(天)`` are ignored). Rows are numbered as
the spreadsheet shows them: the header is row 1. Empty rows are skipped.

Limits (a file is a user's input and may be hostile): at most ``MAX_DATA_ROWS`` data
rows, ``MAX_COLUMNS`` columns, ``MAX_CELL_CHARS`` characters in a cell and, for XLSX,
``MAX_UNPACKED_BYTES`` unpacked, with at most ``MAX_ROW_CELLS`` cell elements in a row
and ``MAX_SHEET_CELLS`` in the sheet. Beyond one, ``ImportTooLarge`` (413
``import_too_large``, ``limit`` names which); a file that cannot be read as CSV
(``UnreadableTable``, 400) or XLSX (``TableImportError``, 422). The file is read as a
stream and refused at the first row past a limit: an XLSX sheet's declared
``<dimension>`` is ignored (a 1.6 KB sheet can declare A1:XFD1048576, and openpyxl would
pad every row to it), its zip directory is checked before anything is unpacked, and what
is unpacked is counted while reading, because the directory can lie, and so are the
sheet's cells (openpyxl holds a whole row in memory before handing it over). Reading and
checking run in a worker thread, so the event loop keeps serving (ingest, pages) while a
large file is parsed.

All or nothing, in one short write transaction. ``import_file`` takes no lock until the
file is known to be good: it parses the file (worker thread), looks up every code the file
names in a read snapshot (a few ``IN (...)`` queries, not one per row), checks every row
(every problem reported, ``row 7: material code 'M-42' unknown``) and binds what it will
write into statements (worker thread). Only then does it open one write transaction:
new materials, products and work orders and their audit entries as bulk inserts
(``executemany`` of rows already bound), changed materials as one bulk update; BOMs and
routings (one version per product) and changed work orders through cloud.production, so
their rules and audit apply as for a planner's action. Any problem while writing rolls
the whole transaction back; a code the file creates that someone else created since the
snapshot fails the unique index and is answered 409 (import again). Why one transaction
rather than chunks: chunked commits would let ingest in between chunks but need a staging
table or compensation to stay all-or-nothing; with the parsing, checking and binding done
before the lock, a file at the row limit (100,000 rows) holds SQLite's write lock for a
few seconds of ``executemany``, well inside the time an ingest waits for it (the
WriteGate, cloud/core/db.py), so one transaction bounded by ``MAX_DATA_ROWS`` keeps both
promises. ``import_table`` does the same inside a transaction the caller already holds
(so its lock covers the parse too).

Per kind (``*`` required):

- materials: code*, name*, unit*, lead_time_days, safety_stock (manual; empty = computed).
  Existing codes are updated.
- boms: product*, material*, qty_per_unit*, version, scrap_factor (0.02 or ``2%``),
  backflush_scrap (yes/no, 1/0, 是/否), step, product_name. Rows of one product (and
  version) form one new BOM version; no version = the next one.
- routings: product*, step*, name*, machine (machine name, or ``GATEWAY/DEVICE``),
  work_center, ideal_cycle_s or ideal_cycle_ms, cavities, version, product_name.
- work-orders: number*, product*, quantity*, due (date = end of that day, in CSV and
  in an XLSX date cell alike; a time without zone is in ``tz``), customer, priority,
  completion_mode (auto/confirm), product_name.
  An existing number is updated (what its state allows).

``product_name`` creates a product that does not exist yet (unit pcs); without it an
unknown product code is an error.
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
import zipfile
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, tzinfo
from decimal import Decimal, InvalidOperation
from types import TracebackType
from typing import IO, Any, Final

import structlog
from openpyxl.reader.excel import ExcelReader
from openpyxl.utils import get_column_letter
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.auth import Actor
from cloud.core import clock
from cloud.core.audit import actor_name
from cloud.core.db import Database
from cloud.core.errors import BadRequest, Conflict, DomainError, Invalid, TooLarge
from cloud.core.models import (
    Machine,
    Material,
    Product,
    WorkOrder,
    audit_log,
    materials,
    products,
    work_orders,
)
from cloud.core.quantities import from_micro, to_micro
from cloud.production.master import BomLineIn, RoutingOpIn, create_bom, create_routing
from cloud.production.orders import update_work_order

KINDS: Final = ("materials", "boms", "routings", "work-orders")
MAX_ERRORS: Final = 100
MAX_DATA_ROWS: Final = 100_000
MAX_COLUMNS: Final = 64
MAX_CELL_CHARS: Final = 32_767           # Excel's own limit for one cell
MAX_UNPACKED_BYTES: Final = 64 * 1024 * 1024
MAX_ROW_CELLS: Final = 1_024             # cell elements in one XLSX row (blank ones too)
MAX_SHEET_CELLS: Final = 4_000_000       # cell elements in the sheet
MAX_ZIP_MEMBERS: Final = 1_000
INT32_MAX: Final = 2**31 - 1             # Integer columns (PostgreSQL int4)
INT64_MAX: Final = 2**63 - 1             # BigInteger columns
_IN_CHUNK: Final = 1_000                 # codes per IN (...) lookup
_MIB: Final = 1024 * 1024

log = structlog.get_logger(__name__)


# canonical field -> accepted header names (normalised by _norm)
HEADERS: Final[dict[str, tuple[str, ...]]] = {
    "code": ("code", "material_code", "material", "物料编码", "物料代码", "编码", "代码"),
    "name": ("name", "description", "名称", "物料名称", "工序名称", "描述"),
    "unit": ("unit", "uom", "单位", "计量单位"),
    "lead_time_days": ("lead_time_days", "lead_time", "采购提前期", "提前期", "交货期"),
    "safety_stock": ("safety_stock", "safety_stock_manual", "安全库存"),
    "product": ("product", "product_code", "item", "产品编码", "产品代码", "产品", "成品编码"),
    "product_name": ("product_name", "产品名称", "成品名称"),
    "version": ("version", "bom_version", "routing_version", "版本", "版本号"),
    "material": ("material", "material_code", "component", "物料编码", "子件编码", "物料",
                 "组件"),
    "qty_per_unit": ("qty_per_unit", "quantity_per_unit", "qty", "quantity", "用量",
                     "单位用量", "数量"),
    "scrap_factor": ("scrap_factor", "scrap", "scrap_rate", "损耗率", "损耗系数"),
    "backflush_scrap": ("backflush_scrap", "废品倒冲", "废品扣料"),
    "step": ("step", "operation", "sequence", "seq", "工序号", "工序", "顺序"),
    "machine": ("machine", "设备", "机台", "设备名称"),
    "work_center": ("work_center", "workcenter", "工作中心"),
    "ideal_cycle_s": ("ideal_cycle_s", "cycle_time", "ideal_cycle", "cycle_s", "标准节拍",
                      "节拍", "周期"),
    "ideal_cycle_ms": ("ideal_cycle_ms", "cycle_ms", "节拍毫秒"),
    "cavities": ("cavities", "cavity", "穴数", "模穴数", "出模数"),
    "number": ("number", "work_order", "order", "wo", "order_number", "工单号", "工单编号",
               "生产工单", "工单"),
    "quantity": ("quantity", "qty", "order_quantity", "数量", "计划数量", "工单数量"),
    "due": ("due", "due_date", "交期", "交货日期", "计划完工日期", "完工日期"),
    "customer": ("customer", "客户", "客户名称"),
    "priority": ("priority", "优先级"),
    "completion_mode": ("completion_mode", "completion", "完工方式", "报工方式"),
}
FIELDS: Final[dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {  # (required, optional)
    "materials": (("code", "name", "unit"), ("lead_time_days", "safety_stock")),
    "boms": (("product", "material", "qty_per_unit"),
             ("version", "scrap_factor", "backflush_scrap", "step", "product_name")),
    "routings": (("product", "step", "name"),
                 ("machine", "work_center", "ideal_cycle_s", "ideal_cycle_ms", "cavities",
                  "version", "product_name")),
    "work-orders": (("number", "product", "quantity"),
                    ("due", "customer", "priority", "completion_mode", "product_name")),
}
TRUE: Final = frozenset({"1", "yes", "y", "true", "t", "是", "对", "√", "x"})
FALSE: Final = frozenset({"0", "no", "n", "false", "f", "否", "不", ""})


class TableImportError(Invalid):
    """The file cannot be imported (422 ``import_failed``); ``errors`` lists every
    problem, row-numbered (also in the answer)."""

    code = "import_failed"

    def __init__(self, errors: list[str]) -> None:
        shown = errors[:MAX_ERRORS]
        more = f" (and {len(errors) - MAX_ERRORS} more)" if len(errors) > MAX_ERRORS else ""
        super().__init__(f"nothing imported; {len(errors)} problem(s): "
                         + "; ".join(shown[:5]) + ("; ..." if len(shown) > 5 else "") + more,
                         errors=shown)
        self.errors = shown


class ImportTooLarge(TooLarge):
    """The file is beyond one of the import's limits (413 ``import_too_large``):
    ``limit`` names which (``rows``, ``columns``, ``cell_chars``, ``unpacked_bytes``,
    ``zip_members``) and ``max`` its value. Nothing was imported."""

    code = "import_too_large"

    def __init__(self, detail: str, limit: str, maximum: int) -> None:
        super().__init__(f"nothing imported; {detail}", "file", limit=limit, max=maximum)


class UnreadableTable(BadRequest):
    """The CSV file cannot be read (400 ``unreadable_file``), e.g. a field longer than the
    CSV reader's own limit. Nothing was imported."""

    code = "unreadable_file"


@dataclass
class ImportResult:
    kind: str
    rows: int
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    versions: list[dict[str, Any]] = field(default_factory=list)  # BOMs / routings made

    def as_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"kind": self.kind, "rows": self.rows, "created": self.created,
                               "updated": self.updated, "unchanged": self.unchanged}
        if self.versions:
            doc["versions"] = self.versions
        return doc


# -- reading a table ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Row:
    number: int  # as the spreadsheet shows it (header = 1)
    values: dict[str, Any]


def _norm(header: str) -> str:
    text = re.sub(r"[（(\[].*?[)）\]]", "", str(header))
    return re.sub(r"[\s_\-]+", "", text).lower()


def read_rows(data: bytes, kind: str) -> list[Row]:
    """The file's data rows, keyed by canonical field. Raises TableImportError for a file
    that is not CSV/XLSX, a missing required column or an unknown/duplicate column;
    ImportTooLarge past a limit; UnreadableTable for CSV the reader refuses. Blocking
    (it parses the whole file): call it in a worker thread (``read_table``)."""
    if kind not in FIELDS:
        raise Invalid(f"import kind {kind!r} unknown; one of {', '.join(KINDS)}", "kind")
    table = _bounded(_xlsx(data) if data[:4] == b"PK\x03\x04" else _csv(data))
    try:
        header = next(table)
    except StopIteration:
        raise TableImportError(["the file is empty (no header row)"]) from None
    required, optional = FIELDS[kind]
    wanted = required + optional
    aliases = {_norm(alias): name for name in wanted for alias in HEADERS[name]}
    columns: dict[int, str] = {}
    errors: list[str] = []
    for i, cell in enumerate(header):
        if cell is None or not str(cell).strip():
            continue
        name = aliases.get(_norm(str(cell)))
        if name is None:
            errors.append(f"row 1: column {str(cell).strip()!r} is not a {kind} column "
                          f"(columns: {', '.join(wanted)})")
        elif name in columns.values():
            errors.append(f"row 1: column {str(cell).strip()!r} repeats {name!r}")
        else:
            columns[i] = name
    missing = [name for name in required if name not in columns.values()]
    if missing:
        errors.append(f"row 1: required column(s) missing: {', '.join(missing)}")
    if errors:
        raise TableImportError(errors)
    rows: list[Row] = []
    for number, cells in enumerate(table, start=2):
        values = {name: _cell(cells[i]) if i < len(cells) else None
                  for i, name in columns.items()}
        if all(v is None for v in values.values()):
            continue
        rows.append(Row(number, values))
    return rows


async def read_table(data: bytes, kind: str) -> list[Row]:
    """``read_rows`` in a worker thread: parsing a large file must not stall the event
    loop (ingest and the pages share it)."""
    return await asyncio.to_thread(read_rows, data, kind)


def _bounded(table: Iterator[list[Any]]) -> Iterator[list[Any]]:
    """``table``'s rows, refused at the first one past a limit (rows, columns, cell
    size). Each row is a list of cell values (XLSX: already converted by _xlsx_value)."""
    for number, cells in enumerate(table, start=1):
        if number > MAX_DATA_ROWS + 1:
            raise ImportTooLarge(
                f"the file has more than {MAX_DATA_ROWS:,} data rows (row {number:,} is "
                f"used); split it into files of at most {MAX_DATA_ROWS:,} rows",
                "rows", MAX_DATA_ROWS)
        if len(cells) > MAX_COLUMNS:
            for i in range(MAX_COLUMNS, len(cells)):
                if not _blank(cells[i]):
                    raise ImportTooLarge(
                        f"row {number:,} has a value in column {get_column_letter(i + 1)} "
                        f"({i + 1:,}); at most {MAX_COLUMNS} columns may be used",
                        "columns", MAX_COLUMNS)
            cells = cells[:MAX_COLUMNS]
        for i, value in enumerate(cells):
            if isinstance(value, str) and len(value) > MAX_CELL_CHARS:
                raise ImportTooLarge(
                    f"row {number:,}, column {get_column_letter(i + 1)}: a cell of "
                    f"{len(value):,} characters; at most {MAX_CELL_CHARS:,} per cell",
                    "cell_chars", MAX_CELL_CHARS)
        yield cells


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _cell(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, str):
        value = value.strip()
        return value or None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _csv(data: bytes) -> Iterator[list[Any]]:
    text: str | None = None
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            text = data.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    if text is None or "\x00" in text:
        raise TableImportError(["the file is neither XLSX nor CSV in UTF-8 or GBK"])
    first = text.split("\n", 1)[0]
    delimiter = max((",", ";", "\t"), key=first.count)
    return _csv_rows(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))


def _csv_rows(reader: Any) -> Iterator[list[Any]]:
    """The reader's rows; its errors (a field over the csv module's limit of 131,072
    characters, a stray quote in strict mode) as a 400 naming the line, not a 500."""
    while True:
        try:
            cells: list[Any] = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            line = reader.line_num
            if "field larger than field limit" in str(exc):
                raise UnreadableTable(
                    f"nothing imported; line {line:,}: a field is longer than "
                    f"{csv.field_size_limit():,} characters, the CSV reader's limit (a cell "
                    f"may hold at most {MAX_CELL_CHARS:,})", "file") from None
            raise UnreadableTable(f"nothing imported; line {line:,} is not valid CSV: {exc}",
                                  "file") from None
        yield cells


# XLSX: openpyxl in read-only mode, which streams a sheet's XML row by row. Three things it
# does not guard against, handled here: the zip directory's sizes (checked before opening),
# the bytes actually inflated (counted, since a directory can lie), and the sheet's declared
# dimension (ignored: a row is only as wide as its last cell, rows only as many as exist).

class _Meter:
    """Bytes left to inflate; ImportTooLarge once they run out."""

    def __init__(self, limit: int) -> None:
        self.left = limit

    def take(self, size: int) -> None:
        self.left -= size
        if self.left < 0:
            raise ImportTooLarge(
                f"the XLSX file unpacks to more than {MAX_UNPACKED_BYTES // _MIB} MiB "
                "(counted while reading; its zip directory claims less); at most "
                f"{MAX_UNPACKED_BYTES // _MIB} MiB unpacked may be imported",
                "unpacked_bytes", MAX_UNPACKED_BYTES)


class _CellCounter:
    """Counts a sheet's cells in its XML as it is inflated, before openpyxl parses it:
    openpyxl collects a whole ``<row>`` before handing it over, so one row of millions of
    ``<c/>`` elements (a few hundred KB zipped) would take gigabytes and minutes. Cells
    per row and in all are refused past ``MAX_ROW_CELLS`` / ``MAX_SHEET_CELLS``. A tag
    split across two reads is carried over (from its ``<``); text cannot hold a ``<``
    (XML escapes it), so every ``<c``/``<row`` found is an element."""

    _TAG: Final = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?(row|c)[\s/>]")

    def __init__(self) -> None:
        self._carry = b""
        self.in_row = 0
        self.total = 0

    def feed(self, data: bytes) -> None:
        buf = self._carry + data
        cut = buf.rfind(b"<")
        if cut < 0 or len(buf) - cut > 64:   # no tag can still be open
            cut = len(buf)
        self._carry = buf[cut:]
        for match in self._TAG.finditer(buf, 0, cut + 0):
            if match.end() > cut:
                break
            if match.group(1) == b"row":
                self.in_row = 0
                continue
            self.in_row += 1
            self.total += 1
            if self.in_row > MAX_ROW_CELLS:
                raise ImportTooLarge(
                    f"a row of the sheet has more than {MAX_ROW_CELLS:,} cells; at most "
                    f"{MAX_COLUMNS} columns are imported", "columns", MAX_COLUMNS)
            if self.total > MAX_SHEET_CELLS:
                raise ImportTooLarge(
                    f"the sheet has more than {MAX_SHEET_CELLS:,} cells; at most "
                    f"{MAX_DATA_ROWS:,} rows of {MAX_COLUMNS} columns are imported",
                    "cells", MAX_SHEET_CELLS)


class _MeteredStream:
    """A zip member opened for reading, whose inflated bytes count against a meter (and,
    for a worksheet, whose cells are counted)."""

    def __init__(self, raw: IO[bytes], meter: _Meter, cells: _CellCounter | None) -> None:
        self._raw, self._meter, self._cells = raw, meter, cells

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._meter.take(len(data))
        if self._cells is not None:
            self._cells.feed(data)
        return data

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> _MeteredStream:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None
                 ) -> None:
        self.close()


class _MeteredArchive:
    """The workbook's zip archive with every member opened through the meter (openpyxl
    opens its parts through it at load time, and its read-only worksheets each time their
    rows are read)."""

    def __init__(self, archive: zipfile.ZipFile, meter: _Meter) -> None:
        self._archive, self._meter = archive, meter

    def open(self, name: str, mode: str = "r") -> _MeteredStream:
        cells = _CellCounter() if name.startswith("xl/worksheets/") else None
        return _MeteredStream(self._archive.open(name, mode),  # type: ignore[arg-type]
                              self._meter, cells)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._archive, name)


def _zip_checked(data: bytes) -> _Meter:
    """Refuse a zip whose directory names too many members or too many unpacked bytes,
    before anything is inflated; the meter for what is then read."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError) as exc:
        raise TableImportError([f"the file looks like XLSX but cannot be read: {exc}"]) from exc
    if len(members) > MAX_ZIP_MEMBERS:
        raise ImportTooLarge(f"the XLSX file has {len(members):,} parts; at most "
                             f"{MAX_ZIP_MEMBERS:,}", "zip_members", MAX_ZIP_MEMBERS)
    unpacked = sum(m.file_size for m in members)
    if unpacked > MAX_UNPACKED_BYTES:
        raise ImportTooLarge(
            f"the XLSX file unpacks to {unpacked / _MIB:,.0f} MiB; at most "
            f"{MAX_UNPACKED_BYTES // _MIB} MiB unpacked may be imported (split it, or save "
            "it as CSV)", "unpacked_bytes", MAX_UNPACKED_BYTES)
    return _Meter(MAX_UNPACKED_BYTES)


_XLSX_BROKEN: Final = (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError,
                       SyntaxError, TypeError, AttributeError, IndexError)


def _xlsx(data: bytes) -> Iterator[list[Any]]:
    meter = _zip_checked(data)
    try:
        # load_workbook, with the archive metered before anything is read from it:
        # openpyxl parses the sheet's head at load time (the whole sheet when it declares
        # no dimension).
        reader = ExcelReader(io.BytesIO(data), read_only=True, data_only=True)
        reader.archive = _MeteredArchive(reader.archive, meter)
        reader.read()
    except _XLSX_BROKEN as exc:
        raise TableImportError([f"the file looks like XLSX but cannot be read: {exc}"]) from exc
    return _xlsx_rows(reader.wb)


def _xlsx_rows(book: Any) -> Iterator[list[Any]]:
    try:
        if not book.worksheets:
            raise TableImportError(["the XLSX file has no sheet"])
        sheet = book.worksheets[0]
        sheet.reset_dimensions()
        for cells in sheet.iter_rows():
            yield [_xlsx_value(c) for c in cells]
    except _XLSX_BROKEN as exc:  # a broken part, a CRC error at a lying size, bad XML
        raise TableImportError([f"the file looks like XLSX but cannot be read: {exc}"]) from exc
    finally:
        book.close()


_TIME_OF_DAY: Final = re.compile(r"h|s|am/pm|a/p", re.IGNORECASE)


def _xlsx_value(cell: Any) -> Any:
    """A cell's value; a date-only cell as a ``date``. Excel stores dates as day numbers
    and openpyxl reads every one as a ``datetime``, so a due date typed as 2026-12-01
    would arrive as midnight instead of "that day" (as in CSV). A midnight value whose
    number format shows no time of day (no hours or seconds, quoted text aside) is the
    date; one formatted with a time (``yyyy-mm-dd hh:mm``) stays midnight."""
    value = getattr(cell, "value", None)
    if isinstance(value, datetime) and value.time() == time(0, 0):
        fmt = re.sub(r'"[^"]*"|\\.|\[[^]]*]', "", str(getattr(cell, "number_format", "")))
        if not _TIME_OF_DAY.search(fmt):
            return value.date()
    return value


# -- values ---------------------------------------------------------------------------

class _Bad(Exception):
    pass


def _str(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def _whole(value: Any, what: str, minimum: int = 0, maximum: int = INT32_MAX) -> int:
    try:
        dec = Decimal(_str(value).replace(",", ""))
        if not dec.is_finite() or dec != dec.to_integral_value():
            raise InvalidOperation
    except InvalidOperation:
        raise _Bad(f"{what} {value!r} is not a whole number") from None
    if dec < minimum:
        raise _Bad(f"{what} {value!r} is below {minimum}")
    if dec > maximum:  # compared as a Decimal: int('1e999999999') would take forever
        raise _Bad(f"{what} {value!r} is above {maximum:,}")
    return int(dec)


def _micro(value: Any, what: str) -> int:
    try:
        dec = Decimal(repr(value)) if isinstance(value, float) else Decimal(
            _str(value).replace(",", "").strip())
    except InvalidOperation:
        raise _Bad(f"{what} {value!r} is not a number") from None
    if dec.is_finite() and abs(dec) > INT64_MAX // 1_000_000:
        raise _Bad(f"{what} {value!r} is above {INT64_MAX // 1_000_000:,}")
    try:
        return to_micro(dec, what=what)
    except Invalid as exc:
        raise _Bad(str(exc)) from None


def _fraction(value: Any, what: str) -> float:
    text = _str(value).strip()
    try:
        number = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise _Bad(f"{what} {value!r} is not a fraction (0.02) or percentage (2%)") from None
    if not 0 <= number < 10:
        raise _Bad(f"{what} {value!r} must be a fraction from 0 (0.02 = 2 %)")
    return number


def _bool(value: Any, what: str) -> bool:
    text = _str(value).strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise _Bad(f"{what} {value!r} is not yes/no")


def _due(value: Any, tz: tzinfo) -> datetime:
    if isinstance(value, datetime):
        stamp = value
    elif isinstance(value, date):
        stamp = datetime.combine(value, time(23, 59, 59))
    else:
        text = _str(value).strip().replace("/", "-")
        try:
            if len(text) <= 10:
                stamp = datetime.combine(date.fromisoformat(text), time(23, 59, 59))
            else:
                stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise _Bad(f"due {value!r} is not a date (2026-12-01) or date and time "
                       "(2026-12-01 18:00)") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=tz)
    return stamp.astimezone(UTC)




# -- importing ------------------------------------------------------------------------

async def import_file(db: Database, actor: Actor | str, kind: str, data: bytes, *,
                      tz: tzinfo = UTC) -> ImportResult:
    """Import ``data`` (CSV or XLSX) as ``kind``. Parsed (worker thread), checked against
    a read snapshot and bound into statements before the write lock is taken; then
    written in one short write transaction (module docstring). Raises TableImportError
    with every row-numbered problem, ImportTooLarge, UnreadableTable, Conflict when what
    the file refers to changed meanwhile, or another DomainError; then nothing was
    written."""
    rows = await read_table(data, kind)
    if not rows:
        raise TableImportError(["the file has a header but no rows"])
    async with db.transaction(write=False) as session:
        refs = await _References.load(session, kind, rows)
    writes = await asyncio.to_thread(_prepare, kind, rows, refs, tz, actor,
                                     db.engine.dialect)
    try:
        async with db.sessions() as session, session.begin():
            result = await writes.run(session, actor)
    except IntegrityError as exc:
        # A code or number this file creates was created by someone else between the
        # check and the write (the unique index refused it): the whole file rolled back.
        raise Conflict(f"nothing imported; a {kind} entry this file creates was created "
                       "meanwhile by another import or a planner; import the file again "
                       "to update it", "file") from exc
    log.info("table_imported", kind=kind, rows=result.rows, created=result.created,
             updated=result.updated, unchanged=result.unchanged)
    return result


async def import_table(session: AsyncSession, actor: Actor | str, kind: str, data: bytes, *,
                       tz: tzinfo = UTC) -> ImportResult:
    """Import ``data`` (CSV or XLSX) as ``kind`` in the caller's transaction (which then
    holds its lock through the parse too; the API and CLI use ``import_file``). Raises
    as ``import_file``; after an error nothing may be committed (the caller rolls back:
    a problem found while writing leaves partial writes)."""
    rows = await read_table(data, kind)
    if not rows:
        raise TableImportError(["the file has a header but no rows"])
    refs = await _References.load(session, kind, rows)
    writes = await asyncio.to_thread(_prepare, kind, rows, refs, tz, actor,
                                     session.get_bind().dialect)
    return await writes.run(session, actor)


def _prepare(kind: str, rows: list[Row], refs: _References, tz: tzinfo, actor: Actor | str,
             dialect: Dialect) -> _Writes:
    """Check every row (TableImportError), then bind what the file writes. Pure Python
    over prefetched references: run in a worker thread."""
    plan = _CHECKS[kind](rows, refs, tz)
    return _BINDERS[kind](plan, refs, len(rows), actor, dialect)


@dataclass(frozen=True, slots=True)
class _Batch:
    """One statement and its rows, bound ahead: the dialect's SQL and each row's values
    already converted by the columns' types. SQLAlchemy would otherwise convert every
    value of every row on the event loop, inside the write transaction (about 5x the
    driver's own time for 100,000 rows)."""

    sql: str
    params: list[tuple[Any, ...]]


def _batch(dialect: Dialect, stmt: Any, rows: list[dict[str, Any]]) -> _Batch | None:
    """``stmt`` (bind names = the rows' keys) compiled for ``dialect`` with ``rows`` bound;
    a value that repeats (the time, the actor) is converted once."""
    if not rows:
        return None
    compiled = stmt.compile(dialect=dialect, column_keys=list(rows[0]))
    order = list(compiled.positiontup or ())
    procs = [compiled.binds[key].type.dialect_impl(dialect).bind_processor(dialect)
             for key in order]
    memo: list[dict[Any, Any]] = [{} for _ in order]
    params: list[tuple[Any, ...]] = []
    for row in rows:
        values = []
        for key, proc, seen in zip(order, procs, memo, strict=True):
            value = row[key]
            if proc is None:
                values.append(value)
            elif isinstance(value, dict | list):
                values.append(proc(value))
            elif value in seen:
                values.append(seen[value])
            else:
                values.append(seen.setdefault(value, proc(value)))
        params.append(tuple(values))
    return _Batch(str(compiled), params)


_Step = Callable[[AsyncSession, "Actor | str"], Awaitable[None]]


@dataclass
class _Writes:
    """What a checked file writes: bulk statements, then steps through cloud.production
    (each with the row it reports a refusal under)."""

    result: ImportResult
    batches: list[_Batch | None] = field(default_factory=list)
    steps: list[tuple[Row, _Step]] = field(default_factory=list)

    async def run(self, session: AsyncSession, actor: Actor | str) -> ImportResult:
        conn = await session.connection()
        for batch in self.batches:
            if batch is not None:
                await conn.exec_driver_sql(batch.sql, batch.params)
        for row, step in self.steps:
            try:
                await step(session, actor)
            except DomainError as exc:
                raise TableImportError([f"row {row.number}: {exc}"]) from exc
        return self.result


@dataclass(frozen=True, slots=True)
class _Order:
    id: int
    product: str
    quantity: int
    due: datetime | None
    customer: str | None
    priority: int
    completion_mode: str
    status: str


@dataclass
class _References:
    """What the file's rows refer to, looked up once in a few ``IN (...)`` queries."""

    products: set[str] = field(default_factory=set)                  # codes
    materials: dict[str, tuple[int, str, str, int, int | None]] = field(default_factory=dict)
    orders: dict[str, _Order] = field(default_factory=dict)          # number -> existing
    machines: list[Machine] = field(default_factory=list)

    @classmethod
    async def load(cls, session: AsyncSession, kind: str, rows: list[Row]) -> _References:
        refs = cls()
        for (code,) in await _in(session, select(Product.code), Product.code,
                                 _codes(rows, "product")):
            refs.products.add(code)
        material_codes = _codes(rows, "code" if kind == "materials" else "material")
        for mat in await _in(session, select(Material.code, Material.id, Material.name,
                                             Material.unit, Material.lead_time_days,
                                             Material.safety_stock_manual_u),
                             Material.code, material_codes):
            refs.materials[mat[0]] = (mat[1], mat[2], mat[3], mat[4], mat[5])
        if kind == "work-orders":
            for o in await _in(session, select(
                    WorkOrder.number, WorkOrder.id, Product.code, WorkOrder.quantity,
                    WorkOrder.due, WorkOrder.customer, WorkOrder.priority,
                    WorkOrder.completion_mode, WorkOrder.status)
                    .join(Product, Product.id == WorkOrder.product_id),
                    WorkOrder.number, _codes(rows, "number")):
                refs.orders[o[0]] = _Order(*o[1:])
        if kind == "routings":
            refs.machines = list((await session.scalars(select(Machine))).all())
        return refs


def _codes(rows: list[Row], name: str) -> set[str]:
    return {_str(v).strip() for row in rows if (v := row.values.get(name)) is not None}


async def _in(session: AsyncSession, stmt: Any, column: Any, keys: Iterable[str]
              ) -> list[Any]:
    ordered = sorted(keys)
    found: list[Any] = []
    for i in range(0, len(ordered), _IN_CHUNK):
        found += (await session.execute(stmt.where(column.in_(ordered[i:i + _IN_CHUNK])))).all()
    return found


class _Checker:
    """Collects row-numbered problems; references come from the prefetched ``refs``."""

    def __init__(self, refs: _References) -> None:
        self.refs = refs
        self.errors: list[str] = []

    def bad(self, row: Row, message: str) -> None:
        self.errors.append(f"row {row.number}: {message}")

    def get(self, row: Row, name: str, parse: Callable[[Any, str], Any],
            default: Any = None) -> Any:
        value = row.values.get(name)
        if value is None:
            return default
        try:
            return parse(value, name)
        except _Bad as exc:
            self.bad(row, str(exc))
            return default

    def text(self, row: Row, name: str, max_len: int, *, required: bool = False) -> str | None:
        value = row.values.get(name)
        if value is None:
            if required:
                self.bad(row, f"{name} is empty")
            return None
        text = _str(value).strip()
        if len(text) > max_len:
            self.bad(row, f"{name} {text[:20]!r}... is longer than {max_len} characters")
        return text

    def product(self, row: Row) -> str | None:
        code = self.text(row, "product", 64, required=True)
        if code is None:
            return None
        if code not in self.refs.products and row.values.get("product_name") is None:
            self.bad(row, f"product code {code!r} unknown (add a product_name column to "
                     "create it)")
        return code

    def fail_if_any(self) -> None:
        if self.errors:
            raise TableImportError(self.errors)


@dataclass
class _Plan:
    """A checked file: ``items`` per kind (see its checker); ``new_products``: code ->
    name of the products it creates (unit pcs)."""

    items: list[Any]
    new_products: dict[str, str] = field(default_factory=dict)


def _new_product(chk: _Checker, plan: _Plan, row: Row, code: str | None) -> None:
    if code is None or code in chk.refs.products or code in plan.new_products:
        return
    name = chk.text(row, "product_name", 255)
    if name:
        plan.new_products[code] = name


def _audit_rows(actor: Actor | str, now: datetime, action: str, entity: str,
                entries: Iterable[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    who = actor_name(actor)
    return [{"ts": now, "actor": who, "action": action, "entity": entity, "entity_id": key,
             "detail": detail} for key, detail in entries]


def _product_batches(plan: _Plan, actor: Actor | str, now: datetime,
                     dialect: Dialect) -> list[_Batch | None]:
    """The plan's new products, audited as upsert_product does."""
    return [
        _batch(dialect, insert(products), [{"code": code, "name": name, "unit": "pcs"}
                                           for code, name in plan.new_products.items()]),
        _batch(dialect, insert(audit_log), _audit_rows(
            actor, now, "product.create", "product",
            ((code, {"name": name, "unit": "pcs"}) for code, name in plan.new_products.items())))]


# materials ------------------------------------------------------------------------------

def _check_materials(rows: list[Row], refs: _References, tz: tzinfo) -> _Plan:
    chk = _Checker(refs)
    items: list[tuple[Row, dict[str, Any]]] = []
    seen: dict[str, int] = {}
    for row in rows:
        code = chk.text(row, "code", 64, required=True)
        if code is not None and code in seen:
            chk.bad(row, f"material code {code!r} repeats row {seen[code]}")
        elif code is not None:
            seen[code] = row.number
        items.append((row, {
            "code": code, "name": chk.text(row, "name", 255, required=True),
            "unit": chk.text(row, "unit", 16, required=True),
            "lead_time_days": chk.get(row, "lead_time_days", _whole, 0),
            "safety_stock_manual_u": chk.get(row, "safety_stock", _micro)}))
    chk.fail_if_any()
    return _Plan(items)


_MATERIAL_UPDATE: Final = (
    update(materials).where(materials.c.id == bindparam("material_id"))
    .values(name=bindparam("new_name"), unit=bindparam("new_unit"),
            lead_time_days=bindparam("new_lead_time_days"),
            safety_stock_manual_u=bindparam("new_safety_stock_manual_u")))


def _bind_materials(plan: _Plan, refs: _References, total: int, actor: Actor | str,
                    dialect: Dialect) -> _Writes:
    result = ImportResult("materials", total)
    now = clock.now()
    new: list[dict[str, Any]] = []
    changed: list[dict[str, Any]] = []
    created: list[tuple[str, dict[str, Any]]] = []
    updated: list[tuple[str, dict[str, Any]]] = []
    for _, values in plan.items:
        before = refs.materials.get(values["code"])
        if before is not None and before[1:] == (
                values["name"], values["unit"], values["lead_time_days"],
                values["safety_stock_manual_u"]):
            result.unchanged += 1
            continue
        detail = {k: v for k, v in values.items() if k != "code"}
        detail["safety_stock_manual"] = from_micro(values["safety_stock_manual_u"])
        if before is None:
            new.append(values)
            created.append((values["code"], detail))
            result.created += 1
        else:
            changed.append({"material_id": before[0],
                            **{f"new_{k}": v for k, v in values.items() if k != "code"}})
            updated.append((values["code"], detail))
            result.updated += 1
    return _Writes(result, [
        _batch(dialect, insert(materials), new),
        _batch(dialect, _MATERIAL_UPDATE, changed),
        _batch(dialect, insert(audit_log),
               _audit_rows(actor, now, "material.create", "material", created)
               + _audit_rows(actor, now, "material.update", "material", updated))])


# BOMs and routings -----------------------------------------------------------------------

def _check_boms(rows: list[Row], refs: _References, tz: tzinfo) -> _Plan:
    chk = _Checker(refs)
    plan = _Plan([])
    groups: dict[tuple[str, int | None], list[tuple[Row, BomLineIn]]] = {}
    for row in rows:
        product = chk.product(row)
        _new_product(chk, plan, row, product)
        material = chk.text(row, "material", 64, required=True)
        if material is not None and material not in refs.materials:
            chk.bad(row, f"material code {material!r} unknown")
        qty = chk.get(row, "qty_per_unit", _micro)  # None: empty or already reported
        if qty == 0:
            chk.bad(row, "qty_per_unit must be above 0")
        line = BomLineIn(material or "", qty or 0,
                         chk.get(row, "scrap_factor", _fraction, 0.0),
                         chk.get(row, "backflush_scrap", _bool, False),
                         chk.get(row, "step", _whole))
        version = chk.get(row, "version", lambda v, w: _whole(v, w, 1))
        if product is not None:
            groups.setdefault((product, version), []).append((row, line))
    chk.fail_if_any()
    plan.items = list(groups.items())
    return plan


def _bind_boms(plan: _Plan, refs: _References, total: int, actor: Actor | str,
               dialect: Dialect) -> _Writes:
    writes = _Writes(ImportResult("boms", total),
                     _product_batches(plan, actor, clock.now(), dialect))
    for (product, version), lines in plan.items:
        writes.steps.append((lines[0][0], _bom_step(writes.result, product, version,
                                                    [line for _, line in lines])))
    return writes


def _bom_step(result: ImportResult, product: str, version: int | None,
              lines: list[BomLineIn]) -> _Step:
    async def step(session: AsyncSession, actor: Actor | str) -> None:
        bom = await create_bom(session, actor, product, lines, version)
        result.created += 1
        result.versions.append({"product": product, "version": bom.version,
                                "lines": len(lines)})
    return step


def _check_routings(rows: list[Row], refs: _References, tz: tzinfo) -> _Plan:
    chk = _Checker(refs)
    plan = _Plan([])
    groups: dict[tuple[str, int | None], list[tuple[Row, RoutingOpIn]]] = {}
    by_name: dict[str, list[Machine]] = {}
    for m in refs.machines:
        by_name.setdefault(m.name, []).append(m)
    by_key = {f"{m.gateway_id}/{m.device}": m for m in refs.machines}
    for row in rows:
        product = chk.product(row)
        _new_product(chk, plan, row, product)
        step = chk.get(row, "step", _whole)
        machine_id = None
        ref = chk.text(row, "machine", 128)
        if ref is not None:
            found = [by_key[ref]] if ref in by_key else by_name.get(ref, [])
            if not found:
                chk.bad(row, f"machine {ref!r} unknown (a machine name or GATEWAY/DEVICE)")
            elif len(found) > 1:
                chk.bad(row, f"machine name {ref!r} is ambiguous; use GATEWAY/DEVICE")
            else:
                machine_id = found[0].id
        cycle_ms = chk.get(row, "ideal_cycle_ms", lambda v, w: _whole(v, w, 1))
        if cycle_ms is None and row.values.get("ideal_cycle_s") is not None:
            micro = chk.get(row, "ideal_cycle_s", _micro)
            if micro is not None:
                cycle_ms = round(micro / 1000) or None
                if cycle_ms is None:
                    chk.bad(row, "ideal_cycle_s must be at least 0.001")
                elif cycle_ms > INT32_MAX:
                    chk.bad(row, f"ideal_cycle_s is above {INT32_MAX // 1000:,}")
        work_center = chk.text(row, "work_center", 64)
        if ref is None and work_center is None:
            chk.bad(row, f"step {step}: name a machine or a work_center for this operation")
        op = RoutingOpIn(step or 0, chk.text(row, "name", 128, required=True) or "",
                         machine_id, work_center, cycle_ms,
                         chk.get(row, "cavities", lambda v, w: _whole(v, w, 1), 1))
        version = chk.get(row, "version", lambda v, w: _whole(v, w, 1))
        if product is not None and step is not None:
            group = groups.setdefault((product, version), [])
            for other, existing in group:
                if existing.step == step:
                    chk.bad(row, f"step {step} of {product!r} repeats row {other.number}")
            group.append((row, op))
    chk.fail_if_any()
    plan.items = list(groups.items())
    return plan


def _bind_routings(plan: _Plan, refs: _References, total: int, actor: Actor | str,
                   dialect: Dialect) -> _Writes:
    writes = _Writes(ImportResult("routings", total),
                     _product_batches(plan, actor, clock.now(), dialect))
    for (product, version), ops in plan.items:
        writes.steps.append((ops[0][0], _routing_step(writes.result, product, version,
                                                      [op for _, op in ops])))
    return writes


def _routing_step(result: ImportResult, product: str, version: int | None,
                  ops: list[RoutingOpIn]) -> _Step:
    async def step(session: AsyncSession, actor: Actor | str) -> None:
        routing = await create_routing(session, actor, product, ops, version)
        result.created += 1
        result.versions.append({"product": product, "version": routing.version,
                                "operations": len(ops)})
    return step


# work orders -------------------------------------------------------------------------------

_MODES: Final = {"自动": "auto", "确认": "confirm", "手动": "confirm"}


def _check_work_orders(rows: list[Row], refs: _References, tz: tzinfo) -> _Plan:
    chk = _Checker(refs)
    plan = _Plan([])
    seen: dict[str, int] = {}
    for row in rows:
        number = chk.text(row, "number", 64, required=True)
        if number is not None and number in seen:
            chk.bad(row, f"work order {number!r} repeats row {seen[number]}")
        elif number is not None:
            seen[number] = row.number
        mode = chk.text(row, "completion_mode", 16)
        if mode is not None:
            mode = _MODES.get(mode, mode.lower())
            if mode not in ("auto", "confirm"):
                chk.bad(row, f"completion_mode {mode!r} is not auto or confirm")
        product = chk.product(row)
        _new_product(chk, plan, row, product)
        plan.items.append((row, {
            "number": number, "product_code": product,
            "quantity": chk.get(row, "quantity", lambda v, w: _whole(v, w, 1, INT64_MAX)),
            "due": chk.get(row, "due", lambda v, w: _due(v, tz)),
            "customer": chk.text(row, "customer", 128),
            "priority": chk.get(row, "priority",
                                lambda v, w: _whole(v, w, -1_000_000, 1_000_000), 0),
            "completion_mode": mode}))
    chk.fail_if_any()
    return plan


def _order_changes(existing: _Order, v: dict[str, Any]) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if existing.product != v["product_code"]:
        changes["product_code"] = v["product_code"]
    if existing.quantity != v["quantity"]:
        changes["quantity"] = v["quantity"]
    if existing.due != v["due"]:
        changes["due"] = v["due"]
    if existing.customer != v["customer"]:
        changes["customer"] = v["customer"]
    if existing.priority != v["priority"]:
        changes["priority"] = v["priority"]
    if v["completion_mode"] and existing.completion_mode != v["completion_mode"]:
        changes["completion_mode"] = v["completion_mode"]
    return changes


# The product's id looked up by the database per row: a product the same file creates has
# no id before the write transaction, and the statement is bound before it.
_WORK_ORDER_INSERT: Final = insert(work_orders).values(
    number=bindparam("number"),
    product_id=select(products.c.id).where(products.c.code == bindparam("product_code"))
    .scalar_subquery(),
    quantity=bindparam("quantity"), due=bindparam("due"), customer=bindparam("customer"),
    priority=bindparam("priority"), status=bindparam("status"),
    completion_mode=bindparam("completion_mode"), created=bindparam("created"),
    updated=bindparam("updated"))


def _bind_work_orders(plan: _Plan, refs: _References, total: int, actor: Actor | str,
                      dialect: Dialect) -> _Writes:
    writes = _Writes(ImportResult("work-orders", total))
    result = writes.result
    now = clock.now()
    new: list[dict[str, Any]] = []
    audits: list[tuple[str, dict[str, Any]]] = []
    for row, v in plan.items:
        existing = refs.orders.get(v["number"])
        if existing is None:
            mode = v["completion_mode"] or "auto"
            new.append({"number": v["number"], "product_code": v["product_code"],
                        "quantity": v["quantity"], "due": v["due"], "customer": v["customer"],
                        "priority": v["priority"], "status": "draft",
                        "completion_mode": mode, "created": now, "updated": now})
            audits.append((v["number"], {
                "product": v["product_code"], "quantity": v["quantity"],
                "due": clock.iso(v["due"]), "customer": v["customer"],
                "priority": v["priority"], "completion_mode": mode}))
            result.created += 1
            continue
        changes = _order_changes(existing, v)
        if not changes:
            result.unchanged += 1
            continue
        # An existing order changes through the order rules (its state, completion mode).
        writes.steps.append((row, _order_step(v["number"], changes)))
        result.updated += 1
    writes.batches = [*_product_batches(plan, actor, now, dialect),
                      _batch(dialect, _WORK_ORDER_INSERT, new),
                      _batch(dialect, insert(audit_log), _audit_rows(
                          actor, now, "work_order.create", "work_order", audits))]
    return writes


def _order_step(number: str, changes: dict[str, Any]) -> _Step:
    async def step(session: AsyncSession, actor: Actor | str) -> None:
        await update_work_order(session, actor, number, **changes)
    return step


_Check = Callable[[list[Row], _References, tzinfo], _Plan]
_Bind = Callable[[_Plan, _References, int, "Actor | str", Dialect], _Writes]
_CHECKS: Final[dict[str, _Check]] = {
    "materials": _check_materials, "boms": _check_boms, "routings": _check_routings,
    "work-orders": _check_work_orders}
_BINDERS: Final[dict[str, _Bind]] = {
    "materials": _bind_materials, "boms": _bind_boms, "routings": _bind_routings,
    "work-orders": _bind_work_orders}
