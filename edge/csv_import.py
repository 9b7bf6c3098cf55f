"""A vendor register list (CSV) turned into a register map (TOML text).

PLC vendors hand over tag lists ("点表") as spreadsheets: a name, an address, a data type,
maybe a unit, a scale and a comment per row. Header spellings vary (``Tag Name``,
``Data Type``, ``Register``, ``倍率`` ...), so do separators (``,``, ``;``, tab) and type
names (``REAL``, ``DINT``, ``WORD``, ``float``, ``U16`` ...). Everything a row says is
converted or rejected with its row number; nothing is guessed (a double-word address
without a type is an error, a bit address is unambiguously bool).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from edge.config import ConfigError, Problem, toml_key, toml_value, validate_raw_map
from protocols.errors import AddressError
from protocols.model import ModbusAddress, Protocol, S7Address

__all__ = ["import_csv"]

_COLUMNS: dict[str, tuple[str, ...]] = {
    "name": ("name", "tag", "tagname", "tag_name", "symbol", "symbolname", "signal",
             "variable", "variablename", "point", "pointname", "名称", "变量名", "变量名称",
             "标签", "标签名", "点名", "点位名称"),
    "address": ("address", "addr", "register", "registeraddress", "modbusaddress",
                "s7address", "plcaddress", "location", "reg", "地址", "寄存器地址", "寄存器",
                "变量地址", "点位地址"),
    "type": ("type", "datatype", "dtype", "format", "valuetype", "typ", "数据类型",
             "类型"),
    "unit": ("unit", "units", "engunit", "engineeringunit", "engineeringunits", "uom",
             "eu", "单位"),
    "scale": ("scale", "factor", "multiplier", "gain", "scaling", "ratio", "倍率",
              "系数", "比例", "缩放"),
    "offset": ("offset", "valueoffset", "bias", "偏移", "偏移量"),
    "length": ("length", "len", "size", "strlen", "长度"),
    "description": ("description", "desc", "comment", "comments", "remark", "remarks",
                    "note", "notes", "text", "描述", "说明", "备注", "注释"),
    "role": ("role",),
}

_TYPES: dict[str, str] = {
    **dict.fromkeys(("bool", "boolean", "bit", "coil", "digital", "x"), "bool"),
    **dict.fromkeys(("sint", "int8", "i8", "s8"), "int8"),
    **dict.fromkeys(("byte", "usint", "uint8", "u8"), "uint8"),
    **dict.fromkeys(("int", "int16", "i16", "s16", "short", "signed", "signed16"), "int16"),
    **dict.fromkeys(("uint", "uint16", "u16", "word", "ushort", "unsigned", "unsigned16"),
                    "uint16"),
    **dict.fromkeys(("dint", "int32", "i32", "s32", "long", "signed32"), "int32"),
    **dict.fromkeys(("udint", "uint32", "u32", "dword", "ulong", "unsigned32"), "uint32"),
    **dict.fromkeys(("lint", "int64", "i64", "s64"), "int64"),
    **dict.fromkeys(("ulint", "uint64", "u64", "lword"), "uint64"),
    **dict.fromkeys(("real", "float", "float32", "f32", "single", "fp32"), "float32"),
    **dict.fromkeys(("lreal", "double", "float64", "f64", "fp64"), "float64"),
    **dict.fromkeys(("string", "str", "text", "ascii", "char", "chars"), "string"),
}
_STRING_LEN = re.compile(r"^(?:string|str|char|ascii)\s*[\[(\s]\s*(\d+)\s*[\])]?$")
_MODICON_X = re.compile(r"^([0134])X0*(\d+)((?:\.\d+)?)$")


def _norm_header(text: str) -> str:
    return re.sub(r"[\s_\-./()\[\]#]+", "", text.strip().lower().lstrip("\ufeff"))


def _snake(text: str) -> str:
    name = re.sub(r"[^0-9a-zA-Z]+", "_", text.strip()).strip("_").lower()
    if name and name[0].isdigit():
        name = "tag_" + name
    return name


@dataclass(slots=True)
class _Row:
    line: int
    name: str
    tag: dict[str, Any]


def _sniff(text: str) -> csv.Dialect | type[csv.Dialect]:
    sample = "\n".join(text.splitlines()[:20])
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|")
    except csv.Error:
        return csv.excel


def _normalize_address(text: str, protocol: Protocol) -> str:
    from protocols.address import parse_address

    compact = "".join(text.split()).upper().lstrip("%")
    if protocol != "s7":
        m = _MODICON_X.match(compact)  # 4x0101 / 4X101 = 40101
        if m:
            compact = f"{m.group(1)}{int(m.group(2)):04d}{m.group(3)}"
    addr = parse_address(compact, protocol)
    return str(addr)


def _type_for(raw_type: str, address: str, protocol: Protocol) -> tuple[str | None, int | None]:
    """(type name, string length from the type) or (None, None) when it cannot be told."""
    t = raw_type.strip().lower()
    if t:
        m = _STRING_LEN.match(t)
        if m:
            return "string", int(m.group(1))
        return _TYPES.get(re.sub(r"\s+", "", t)), None
    # no type: only a bit address says what it is
    from protocols.address import parse_address

    try:
        addr = parse_address(address, protocol)
    except AddressError:
        return None, None
    if isinstance(addr, ModbusAddress) and (addr.is_bit_area or addr.bit is not None):
        return "bool", None
    if isinstance(addr, S7Address) and addr.width in ("X", "S"):
        return ("bool" if addr.width == "X" else "string"), None
    return None, None


def import_csv(text: str, protocol: Literal["modbus", "s7"], *, file: str,
               model: str) -> str:
    """Convert a CSV register list to map TOML. Raises ConfigError naming every bad row.

    The result is validated as a map for ``protocol`` before it is returned, so what comes
    back always passes ``plantsync-edge validate``.
    """
    proto: Protocol = "s7" if protocol == "s7" else "modbus-tcp"
    problems: list[Problem] = []
    reader = csv.reader(io.StringIO(text), _sniff(text))
    header: list[str] | None = None
    columns: dict[str, int] = {}
    rows: list[_Row] = []
    for fields in reader:
        if not any(f.strip() for f in fields) or fields[0].strip().startswith("#"):
            continue
        line = reader.line_num
        if header is None:
            header = fields
            for i, head in enumerate(fields):
                key = _norm_header(head)
                for column, names in _COLUMNS.items():
                    if key in names and column not in columns:
                        columns[column] = i
            missing = [c for c in ("name", "address") if c not in columns]
            if missing:
                problems.append(Problem(
                    file, f"row {line}",
                    f"no {' and no '.join(missing)} column in the header "
                    f"{', '.join(repr(h) for h in fields)}",
                    "e.g. name,address,type,unit,scale,description"))
                raise ConfigError(problems)
            continue

        def cell(column: str, fields: list[str] = fields) -> str:
            i = columns.get(column)
            return fields[i].strip() if i is not None and i < len(fields) else ""

        row_problems = _convert_row(cell, line, proto, file, rows)
        problems.extend(row_problems)
    if header is None:
        raise ConfigError([Problem(file, "", "the file is empty",
                                   "e.g. name,address,type,unit,scale,description")])
    if not rows and not problems:
        raise ConfigError([Problem(file, "", "no rows after the header",
                                   "one row per tag: part_count,40101,uint32,,,Good parts")])
    raw = {"model": model, "tags": {r.name: r.tag for r in rows}}
    _, _, _, map_problems = validate_raw_map(raw, proto, file) if rows else (None, None, (), [])
    if map_problems:
        by_name = {r.name: r.line for r in rows}
        for p in map_problems:
            parts = p.key_path.split(".")
            name = parts[1].strip('"') if len(parts) > 1 and parts[0] == "tags" else ""
            where = f"row {by_name[name]}" if name in by_name else ""
            key = ".".join(parts[2:])
            message = f"{name}: {key}: {p.message}" if key else f"{name}: {p.message}"
            problems.append(Problem(file, where, message, p.hint))
    if problems:
        raise ConfigError(sorted(problems, key=_row_number))
    return _render(model, file, rows)


def _row_number(problem: Problem) -> int:
    m = re.match(r"row (\d+)", problem.key_path)
    return int(m.group(1)) if m else 0


def _convert_row(cell: Any, line: int, protocol: Protocol, file: str,
                 rows: list[_Row]) -> list[Problem]:
    problems: list[Problem] = []
    where = f"row {line}"
    raw_name = cell("name")
    name = _snake(raw_name)
    if not name:
        return [Problem(file, where, "the name is empty", "e.g. spindle_temp")]
    if any(r.name == name for r in rows):
        other = next(r for r in rows if r.name == name)
        return [Problem(file, where, f"name {raw_name!r} ({name}) is already used in row "
                        f"{other.line}", "give every tag its own name")]
    address_text = cell("address")
    if not address_text:
        return [Problem(file, where, f"{name}: the address is empty",
                        "e.g. 40101" if protocol != "s7" else "e.g. DB1.DBW4")]
    try:
        address = _normalize_address(address_text, protocol)
    except AddressError as exc:
        return [Problem(file, where, f"{name}: address {exc.message}"
                        if repr(address_text) in exc.message
                        else f"{name}: address {address_text!r}: {exc.message}",
                        f"e.g. {exc.example}" if exc.example else None)]
    type_name, type_len = _type_for(cell("type"), address, protocol)
    if type_name is None:
        if cell("type"):
            problems.append(Problem(file, where, f"{name}: unknown type {cell('type')!r}",
                                    "e.g. INT, UINT, DINT, UDINT, REAL, BOOL, STRING[20] "
                                    "or int16, uint32, float32"))
        else:
            problems.append(Problem(file, where, f"{name}: the type is empty and "
                                    f"{address} could hold several types",
                                    "e.g. uint16, int32, float32"))
        return problems
    tag: dict[str, Any] = {"address": address, "type": type_name}
    length_text = cell("length")
    length = type_len
    if length_text:
        try:
            length = int(float(length_text))
        except ValueError:
            problems.append(Problem(file, where, f"{name}: length {length_text!r} is not a "
                                    "number", "e.g. 16"))
    if type_name == "string" and length is not None:
        tag["length"] = length
    for column in ("scale", "offset"):
        text = cell(column)
        if not text:
            continue
        try:
            value = float(text.replace(",", ".")) if text.count(",") == 1 and "." not in text \
                else float(text)
        except ValueError:
            problems.append(Problem(file, where, f"{name}: {column} {text!r} is not a number",
                                    "e.g. 0.1"))
            continue
        default = 1.0 if column == "scale" else 0.0
        if value != default:
            tag[column] = value
    if cell("unit"):
        tag["unit"] = cell("unit")
    role = cell("role").lower() or "sample"
    tag["role"] = role
    if cell("description"):
        tag["description"] = cell("description")
    if not problems:
        rows.append(_Row(line, name, tag))
    return problems


_ORDER = ("address", "type", "length", "scale", "offset", "unit", "role", "description")


def _render(model: str, file: str, rows: list[_Row]) -> str:
    out = [
        "#:schema ../schema/map.schema.json",
        f"# Imported from {file} by plantsync-edge import-csv.",
        '# Every tag is role = "sample": mark counters (with counts), states (with states),',
        "# alarms (with alarms) and parameters (with limits) by hand, then validate.",
        f"model = {toml_value(model)}",
        'byte_order = "big"',
        'word_order = "big"',
    ]
    for row in rows:
        out.append("")
        out.append(f"[tags.{toml_key(row.name)}]")
        tag: Mapping[str, Any] = row.tag
        for key in _ORDER:
            if key in tag:
                out.append(f"{key} = {toml_value(tag[key])}")
    return "\n".join(out) + "\n"
