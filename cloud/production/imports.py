"""CSV and XLSX import of materials, BOMs, routings and work orders (plants keep these in
Excel).

``import_table(session, actor, kind, data, *, tz=UTC) -> ImportResult``; ``kind`` is one
of ``KINDS``. The file is XLSX (first sheet; recognised by its content, not its name) or
CSV in UTF-8 (with or without BOM) or GBK/GB18030 (what Excel saves on a Chinese
Windows), separated by comma, semicolon or tab (whichever the header line uses most).
The first row is the header; English or Chinese column names (``HEADERS``; case, spaces,
``_``/``-`` and a bracketed unit like ``(天)`` are ignored). Rows are numbered as the
spreadsheet shows them: the header is row 1. Empty rows are skipped.

All or nothing: every row is checked first (every problem reported, ``row 7: material
code 'M-42' unknown``), and only a file without problems is applied, inside the caller's
transaction, through cloud.production (so it is audited like any planner action). A
problem found while applying is reported with its row and the caller rolls back.

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

import csv
import io
import re
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, tzinfo
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from openpyxl import load_workbook
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.auth import Actor
from cloud.core.errors import DomainError, Invalid
from cloud.core.models import Machine, Material, Product, WorkOrder
from cloud.core.quantities import to_micro
from cloud.production.master import (
    BomLineIn,
    RoutingOpIn,
    create_bom,
    create_routing,
    upsert_material,
    upsert_product,
)
from cloud.production.orders import create_work_order, update_work_order

KINDS: Final = ("materials", "boms", "routings", "work-orders")
MAX_ERRORS: Final = 100

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
    that is not CSV/XLSX, a missing required column or an unknown/duplicate column."""
    if kind not in FIELDS:
        raise Invalid(f"import kind {kind!r} unknown; one of {', '.join(KINDS)}",
                                "kind")
    table = _xlsx(data) if data[:4] == b"PK\x03\x04" else _csv(data)
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
    return iter(list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)))


def _xlsx(data: bytes) -> Iterator[list[Any]]:
    try:
        book = load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise TableImportError([f"the file looks like XLSX but cannot be read: {exc}"]) from exc
    try:
        sheet = book.worksheets[0]
        return iter([[_xlsx_value(c) for c in r] for r in sheet.iter_rows()])
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


def _whole(value: Any, what: str, minimum: int = 0) -> int:
    try:
        dec = Decimal(_str(value).replace(",", ""))
        if dec != dec.to_integral_value():
            raise InvalidOperation
    except InvalidOperation:
        raise _Bad(f"{what} {value!r} is not a whole number") from None
    if dec < minimum:
        raise _Bad(f"{what} {value!r} is below {minimum}")
    return int(dec)


def _micro(value: Any, what: str) -> int:
    try:
        return to_micro(value if isinstance(value, int | float | Decimal)
                             else _str(value).replace(",", ""), what=what)
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

async def import_table(session: AsyncSession, actor: Actor | str, kind: str, data: bytes, *,
                       tz: tzinfo = UTC) -> ImportResult:
    """Import ``data`` (CSV or XLSX) as ``kind`` in the caller's transaction. Raises
    TableImportError with every row-numbered problem; then nothing may be committed
    (the caller rolls back: a problem found while applying leaves partial writes)."""
    rows = read_rows(data, kind)
    if not rows:
        raise TableImportError(["the file has a header but no rows"])
    importer = _IMPORTERS[kind]
    return await importer(session, actor, rows, tz)


class _Checker:
    """Collects row-numbered problems; references are looked up once per code."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.errors: list[str] = []
        self._materials: dict[str, bool] = {}
        self._products: dict[str, bool] = {}

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

    async def material_known(self, code: str) -> bool:
        if code not in self._materials:
            self._materials[code] = await self.session.scalar(
                select(Material.id).where(Material.code == code)) is not None
        return self._materials[code]

    async def product(self, row: Row) -> str | None:
        code = self.text(row, "product", 64, required=True)
        if code is None:
            return None
        if code not in self._products:
            self._products[code] = await self.session.scalar(
                select(Product.id).where(Product.code == code)) is not None
        if not self._products[code] and row.values.get("product_name") is None:
            self.bad(row, f"product code {code!r} unknown (add a product_name column to "
                     "create it)")
        return code

    def fail_if_any(self) -> None:
        if self.errors:
            raise TableImportError(self.errors)


async def _ensure_product(session: AsyncSession, actor: Actor | str, row: Row,
                          code: str) -> None:
    if await session.scalar(select(Product.id).where(Product.code == code)) is None:
        await upsert_product(session, actor, code, _str(row.values["product_name"]))


async def _apply(row: Row, step: Any) -> Any:
    try:
        return await step
    except DomainError as exc:
        raise TableImportError([f"row {row.number}: {exc}"]) from exc


async def _import_materials(session: AsyncSession, actor: Actor | str, rows: list[Row],
                            tz: tzinfo) -> ImportResult:
    chk = _Checker(session)
    parsed: list[tuple[Row, dict[str, Any]]] = []
    seen: dict[str, int] = {}
    for row in rows:
        code = chk.text(row, "code", 64, required=True)
        if code is not None and code in seen:
            chk.bad(row, f"material code {code!r} repeats row {seen[code]}")
        elif code is not None:
            seen[code] = row.number
        parsed.append((row, {
            "code": code, "name": chk.text(row, "name", 255, required=True),
            "unit": chk.text(row, "unit", 16, required=True),
            "lead_time_days": chk.get(row, "lead_time_days", _whole, 0),
            "safety_stock_manual_u": chk.get(row, "safety_stock", _micro)}))
    chk.fail_if_any()
    result = ImportResult("materials", len(rows))
    for row, values in parsed:
        before = await session.scalar(select(Material).where(Material.code == values["code"]))
        snapshot = None if before is None else (before.name, before.unit, before.lead_time_days,
                                                before.safety_stock_manual_u)
        await _apply(row, upsert_material(session, actor, **values))
        if before is None:
            result.created += 1
        elif snapshot == (values["name"], values["unit"], values["lead_time_days"],
                          values["safety_stock_manual_u"]):
            result.unchanged += 1
        else:
            result.updated += 1
    return result


async def _import_boms(session: AsyncSession, actor: Actor | str, rows: list[Row],
                       tz: tzinfo) -> ImportResult:
    chk = _Checker(session)
    groups: dict[tuple[str, int | None], list[tuple[Row, BomLineIn]]] = {}
    for row in rows:
        product = await chk.product(row)
        material = chk.text(row, "material", 64, required=True)
        if material is not None and not await chk.material_known(material):
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
    result = ImportResult("boms", len(rows))
    for (product, version), lines in groups.items():
        first = lines[0][0]
        await _ensure_product(session, actor, first, product)
        bom = await _apply(first, create_bom(session, actor, product,
                                                  [line for _, line in lines], version))
        result.created += 1
        result.versions.append({"product": product, "version": bom.version,
                                "lines": len(lines)})
    return result


async def _import_routings(session: AsyncSession, actor: Actor | str, rows: list[Row],
                           tz: tzinfo) -> ImportResult:
    chk = _Checker(session)
    groups: dict[tuple[str, int | None], list[tuple[Row, RoutingOpIn]]] = {}
    machines = (await session.scalars(select(Machine))).all()
    by_name: dict[str, list[Machine]] = {}
    for m in machines:
        by_name.setdefault(m.name, []).append(m)
    by_key = {f"{m.gateway_id}/{m.device}": m for m in machines}
    for row in rows:
        product = await chk.product(row)
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
    result = ImportResult("routings", len(rows))
    for (product, version), ops in groups.items():
        first = ops[0][0]
        await _ensure_product(session, actor, first, product)
        routing = await _apply(first, create_routing(session, actor, product,
                                                          [op for _, op in ops], version))
        result.created += 1
        result.versions.append({"product": product, "version": routing.version,
                                "operations": len(ops)})
    return result


async def _import_work_orders(session: AsyncSession, actor: Actor | str, rows: list[Row],
                              tz: tzinfo) -> ImportResult:
    chk = _Checker(session)
    parsed: list[tuple[Row, dict[str, Any]]] = []
    seen: dict[str, int] = {}
    for row in rows:
        number = chk.text(row, "number", 64, required=True)
        if number is not None and number in seen:
            chk.bad(row, f"work order {number!r} repeats row {seen[number]}")
        elif number is not None:
            seen[number] = row.number
        mode = chk.text(row, "completion_mode", 16)
        if mode is not None:
            mode = {"自动": "auto", "确认": "confirm", "手动": "confirm"}.get(mode, mode.lower())
            if mode not in ("auto", "confirm"):
                chk.bad(row, f"completion_mode {mode!r} is not auto or confirm")
        quantity = chk.get(row, "quantity", lambda v, w: _whole(v, w, 1))
        parsed.append((row, {
            "number": number, "product_code": await chk.product(row), "quantity": quantity,
            "due": chk.get(row, "due", lambda v, w: _due(v, tz)),
            "customer": chk.text(row, "customer", 128),
            "priority": chk.get(row, "priority", lambda v, w: _whole(v, w, -1_000_000), 0),
            "completion_mode": mode}))
    chk.fail_if_any()
    result = ImportResult("work-orders", len(rows))
    for row, v in parsed:
        await _ensure_product(session, actor, row, v["product_code"])
        existing = await session.scalar(select(WorkOrder).where(WorkOrder.number == v["number"]))
        if existing is None:
            await _apply(row, create_work_order(
                session, actor, v["number"], v["product_code"], v["quantity"], due=v["due"],
                customer=v["customer"], priority=v["priority"],
                completion_mode=v["completion_mode"] or "auto"))
            result.created += 1
            continue
        product = await session.get(Product, existing.product_id)
        assert product is not None
        changes: dict[str, Any] = {}
        if product.code != v["product_code"]:
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
        if not changes:
            result.unchanged += 1
            continue
        await _apply(row, update_work_order(session, actor, v["number"], **changes))
        result.updated += 1
    return result


_IMPORTERS: Final = {"materials": _import_materials, "boms": _import_boms,
                     "routings": _import_routings, "work-orders": _import_work_orders}
