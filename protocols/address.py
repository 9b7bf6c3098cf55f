"""Address parsing and the fit between an address and a tag's type. Pure, no I/O.

Modbus notations (``protocol`` "modbus-tcp" or "modbus-rtu"):

- area + 0-based offset: ``HR100``, ``IR0``, ``CO5``, ``DI12``; a bit of a register:
  ``HR100.3`` (bit 0 is the least significant bit of the register value);
- Modicon numbers, 1-based: 5-digit ``40001`` = HR0 (to 49999), ``30001`` = IR0,
  ``00001`` = CO0, ``10001`` = DI0; 6-digit ``400001`` = HR0 (to 465536), likewise
  ``300001``, ``000001``, ``100001``; ``40101.3`` is bit 3 of HR100.

S7 notations (``protocol`` "s7"): ``DB1.DBX0.0``, ``DB1.DBB2``, ``DB1.DBW4``,
``DB1.DBD6``, ``DB1.STRING10.20`` (start byte 10, maximum length 20); ``M10.0``,
``MB10``, ``MW20``, ``MD24``; ``I0.0``/``IB1``/``IW2``/``ID4``; ``Q0.1``/``QB``/``QW``/
``QD``; the German ``E`` (Eingang) and ``A`` (Ausgang) are accepted for I and Q.

Everything is case-insensitive and whitespace inside an address is ignored.
"""

from __future__ import annotations

import re

from protocols.errors import AddressError
from protocols.model import (
    Address,
    DataType,
    ModbusAddress,
    ModbusArea,
    S7Address,
    S7Area,
    TagSpec,
)

MODBUS_MAX = 65535
S7_MAX_BYTE = 65535
S7_MAX_DB = 65535
S7_MAX_STRING = 254

_MODBUS_EXAMPLE = "HR100"
_S7_EXAMPLE = "DB1.DBW4"

_MB_AREA = re.compile(r"^(HR|IR|CO|DI)(\d+)(?:\.(\d+))?$")
_MB_MODICON = re.compile(r"^(\d{5,6})(?:\.(\d+))?$")
_S7_DB = re.compile(r"^DB(\d+)\.DB([XBWD])(\d+)(?:\.(\d+))?$")
_S7_DB_STRING = re.compile(r"^DB(\d+)\.STRING(\d+)(?:\.(\d+))?$")
_S7_MEM = re.compile(r"^([MIQEA])([XBWD]?)(\d+)(?:\.(\d+))?$")

_MODICON_AREA: dict[str, ModbusArea] = {"4": "HR", "3": "IR", "0": "CO", "1": "DI"}
_S7_ALIAS: dict[str, S7Area] = {"M": "M", "I": "I", "Q": "Q", "E": "I", "A": "Q"}

# Register counts (Modbus) per type; strings depend on length, bool on the area.
_WORDS = {
    DataType.INT16: 1, DataType.UINT16: 1, DataType.INT32: 2, DataType.UINT32: 2,
    DataType.FLOAT32: 2, DataType.INT64: 4, DataType.UINT64: 4, DataType.FLOAT64: 4,
}
# Which S7 width letter each type needs.
_S7_WIDTH = {
    DataType.INT8: "B", DataType.UINT8: "B", DataType.INT16: "W", DataType.UINT16: "W",
    DataType.INT32: "D", DataType.UINT32: "D", DataType.FLOAT32: "D",
    DataType.INT64: "B", DataType.UINT64: "B", DataType.FLOAT64: "B",
    DataType.BOOL: "X", DataType.STRING: "S",
}


def parse_address(text: str, protocol: str) -> Address:
    """Parse an address in the notation of ``protocol`` ("modbus-tcp", "modbus-rtu", "s7").

    Pure and total: returns a ModbusAddress or S7Address, or raises AddressError whose
    message says what is wrong and whose ``example`` is a right address for the protocol.
    """
    compact = "".join(str(text).split()).upper()
    if protocol in ("modbus-tcp", "modbus-rtu"):
        return _parse_modbus(text, compact)
    if protocol == "s7":
        return _parse_s7(text, compact)
    raise AddressError(
        f"unknown protocol {protocol!r} (one of modbus-tcp, modbus-rtu, s7)",
        example=_MODBUS_EXAMPLE,
    )


def _parse_modbus(text: str, s: str) -> ModbusAddress:
    if not s:
        raise AddressError("empty address", example=_MODBUS_EXAMPLE)
    m = _MB_AREA.match(s)
    if m:
        area: ModbusArea = m.group(1)  # type: ignore[assignment]
        offset = int(m.group(2))
        bit = m.group(3)
    else:
        m = _MB_MODICON.match(s)
        if not m:
            return _modbus_unparsable(text, s)
        digits = m.group(1)
        bit = m.group(2)
        if digits[0] not in _MODICON_AREA:
            raise AddressError(
                f"{text!r}: Modicon numbers start with 0 (coil), 1 (discrete input), "
                "3 (input register) or 4 (holding register)",
                example="40001",
            )
        area = _MODICON_AREA[digits[0]]
        number = int(digits[1:])
        if number == 0:
            raise AddressError(
                f"{text!r}: Modicon numbers are 1-based; the first is {digits[0]}"
                + "0" * (len(digits) - 2) + "1",
                example=f"{area}0",
            )
        offset = number - 1
    if offset > MODBUS_MAX:
        raise AddressError(
            f"{text!r}: offset {offset} is beyond the Modbus range 0..{MODBUS_MAX}",
            example=f"{area}{MODBUS_MAX}",
        )
    if bit is None:
        return ModbusAddress(area, offset)
    if area in ("CO", "DI"):
        raise AddressError(
            f"{text!r}: {area} is already a bit area; it takes no bit number",
            example=f"{area}{offset}",
        )
    b = int(bit)
    if b > 15:
        raise AddressError(
            f"{text!r}: bit {b} is beyond 0..15 of a 16-bit register",
            example=f"{area}{offset}.15",
        )
    return ModbusAddress(area, offset, b)


def _modbus_unparsable(text: str, s: str) -> ModbusAddress:
    if _S7_DB.match(s) or _S7_DB_STRING.match(s) or _S7_MEM.match(s) or s.startswith("DB"):
        raise AddressError(
            f"{text!r} is S7 notation but the device speaks Modbus", example=_MODBUS_EXAMPLE)
    if s.isdigit():
        raise AddressError(
            f"{text!r}: a bare number must be a 5- or 6-digit Modicon number "
            "(40001 = HR0); for a 0-based offset name the area",
            example=f"HR{int(s)}" if int(s) <= MODBUS_MAX else "40001",
        )
    m = re.match(r"^([A-Z%]+)", s)
    if m and m.group(1) not in ("HR", "IR", "CO", "DI"):
        raise AddressError(
            f"{text!r}: unknown Modbus area {m.group(1)!r} (one of HR, IR, CO, DI)",
            example=_MODBUS_EXAMPLE,
        )
    raise AddressError(
        f"{text!r} is not a Modbus address (area HR/IR/CO/DI and 0-based offset, or a "
        "Modicon number)",
        example=_MODBUS_EXAMPLE,
    )


def _parse_s7(text: str, s: str) -> S7Address:
    if not s:
        raise AddressError("empty address", example=_S7_EXAMPLE)
    m = _S7_DB_STRING.match(s)
    if m:
        db, byte = _s7_db(text, m.group(1)), _s7_byte(text, m.group(2))
        if m.group(3) is None:
            raise AddressError(
                f"{text!r}: an S7 string needs its maximum length after the start byte",
                example=f"DB{db}.STRING{byte}.20",
            )
        length = int(m.group(3))
        if not 1 <= length <= S7_MAX_STRING:
            raise AddressError(
                f"{text!r}: S7 string length {length} is outside 1..{S7_MAX_STRING}",
                example=f"DB{db}.STRING{byte}.{S7_MAX_STRING}",
            )
        return S7Address("DB", db, byte, "S", None, length)
    m = _S7_DB.match(s)
    if m:
        db, width, byte = _s7_db(text, m.group(1)), m.group(2), _s7_byte(text, m.group(3))
        bit = _s7_bit(text, width, m.group(4), f"DB{db}.DB{width}{byte}", f"DB{db}.DBW{byte}",
                      f"DB{db}.DBX{byte}.0")
        return S7Address("DB", db, byte, width, bit)  # type: ignore[arg-type]
    m = _S7_MEM.match(s)
    if m:
        area = _S7_ALIAS[m.group(1)]
        width = m.group(2) or "X"
        byte = _s7_byte(text, m.group(3))
        letter = "" if width == "X" else width
        bit = _s7_bit(text, width, m.group(4), f"{area}{letter}{byte}", f"{area}W{byte}",
                      f"{area}{byte}.0")
        return S7Address(area, 0, byte, width, bit)  # type: ignore[arg-type]
    if _MB_AREA.match(s) or _MB_MODICON.match(s):
        raise AddressError(
            f"{text!r} is Modbus notation but the device speaks S7", example=_S7_EXAMPLE)
    if s.startswith("DB") and "." not in s:
        raise AddressError(
            f"{text!r}: a DB address needs the part inside the DB after a dot",
            example=f"{s}.DBW0" if s[2:].isdigit() else _S7_EXAMPLE,
        )
    if s.startswith("DB"):
        raise AddressError(
            f"{text!r}: inside a DB use DBX (bit), DBB, DBW, DBD or STRING",
            example=_S7_EXAMPLE,
        )
    raise AddressError(
        f"{text!r} is not an S7 address (DBn.DBX/DBB/DBW/DBD, DBn.STRINGb.len, M, I, Q)",
        example=_S7_EXAMPLE,
    )


def _s7_db(text: str, digits: str) -> int:
    db = int(digits)
    if not 1 <= db <= S7_MAX_DB:
        raise AddressError(
            f"{text!r}: DB number {db} is outside 1..{S7_MAX_DB}", example="DB1.DBW0")
    return db


def _s7_byte(text: str, digits: str) -> int:
    byte = int(digits)
    if byte > S7_MAX_BYTE:
        raise AddressError(
            f"{text!r}: byte {byte} is beyond 0..{S7_MAX_BYTE}", example=_S7_EXAMPLE)
    return byte


def _s7_bit(
    text: str, width: str, bit: str | None, as_typed: str, word_example: str, bit_example: str,
) -> int | None:
    if width == "X":
        if bit is None:
            raise AddressError(
                f"{text!r} is a bit address without a bit number", example=bit_example)
        b = int(bit)
        if b > 7:
            raise AddressError(
                f"{text!r}: bit {b} is beyond 0..7 of a byte",
                example=bit_example[:-1] + "7",
            )
        return b
    if bit is not None:
        raise AddressError(
            f"{text!r}: a {_WIDTH_NAME[width]} address takes no bit number",
            example=as_typed if as_typed != text else word_example,
        )
    return None


_WIDTH_NAME = {"B": "byte", "W": "word", "D": "double word", "X": "bit"}


def tag_extent(spec: TagSpec) -> tuple[str, int, int, int]:
    """Where a tag's data lies, in the planner's units: ``(area, db, start, count)``.

    Modbus: registers for HR/IR (a bit of a register occupies its whole register), bits for
    CO/DI; ``db`` is 0. S7: bytes of the area (a bit occupies its byte; a STRING takes
    ``len + 2`` bytes for its header). Assumes ``check_fits(spec)`` passes; a string
    without a length counts as one register / byte so this never raises for it.
    """
    addr = spec.address
    if isinstance(addr, ModbusAddress):
        if addr.is_bit_area or addr.bit is not None or spec.type is DataType.BOOL:
            return addr.area, 0, addr.offset, 1
        if spec.type is DataType.STRING:
            return addr.area, 0, addr.offset, max(1, ((spec.length or 1) + 1) // 2)
        return addr.area, 0, addr.offset, _WORDS.get(spec.type, 1)
    if addr.width == "S":
        return addr.area, addr.db, addr.byte, (addr.string_len or 0) + 2
    if addr.width == "X":
        return addr.area, addr.db, addr.byte, 1
    size = spec.type.size_bytes
    if size == 0 or (addr.width == "W" and size < 2) or (addr.width == "D" and size < 4):
        size = {"B": 1, "W": 2, "D": 4}[addr.width]
    return addr.area, addr.db, addr.byte, size


def check_fits(spec: TagSpec) -> None:
    """Raise AddressError when ``spec.type`` (and ``length``) cannot be read at its address.

    The message names the address and the type; ``example`` suggests a right address.
    Covers: bit addresses must be bool and bool needs a bit; S7 width letters must match
    the type's size; strings need a length (Modbus) or a matching one (S7); the extent
    must lie within the protocol's range.
    """
    if isinstance(spec.address, ModbusAddress):
        _check_modbus(spec, spec.address)
    else:
        _check_s7(spec, spec.address)


def _check_modbus(spec: TagSpec, addr: ModbusAddress) -> None:
    t = spec.type
    if addr.is_bit_area or addr.bit is not None:
        if t is not DataType.BOOL:
            raise AddressError(
                f"'{addr}' is a bit address but type is {t.value}",
                example=f"HR{addr.offset}" if addr.is_bit_area else f"{addr.area}{addr.offset}",
            )
        return
    if t is DataType.BOOL:
        raise AddressError(
            f"'{addr}' is a register but type is bool; name the bit",
            example=f"{addr.area}{addr.offset}.0",
        )
    if t in (DataType.INT8, DataType.UINT8):
        raise AddressError(
            f"'{addr}': {t.value} is for S7 byte addresses; a Modbus register is 16 bits "
            f"(use type {'u' if t is DataType.UINT8 else ''}int16)",
            example=str(addr),
        )
    if t is DataType.STRING:
        if spec.length is None or spec.length < 1:
            raise AddressError(
                f"'{addr}' is typed string but has no length (characters, two per register)",
                example=str(addr),
            )
    if spec.length is not None and t is not DataType.STRING:
        raise AddressError(
            f"'{addr}': length applies only to type string, not {t.value}", example=str(addr))
    _, _, start, count = tag_extent(spec)
    if start + count - 1 > MODBUS_MAX:
        raise AddressError(
            f"'{addr}' with type {t.value} needs {count} registers and runs past "
            f"{MODBUS_MAX}",
            example=f"{addr.area}{MODBUS_MAX - count + 1}",
        )


def _check_s7(spec: TagSpec, addr: S7Address) -> None:
    t = spec.type
    need = _S7_WIDTH[t]
    if addr.width == "X" and t is not DataType.BOOL:
        raise AddressError(
            f"'{addr}' is a bit address but type is {t.value}",
            example=_s7_with_width(addr, need, t),
        )
    if addr.width == "S" and t is not DataType.STRING:
        raise AddressError(
            f"'{addr}' is a string address but type is {t.value}",
            example=_s7_with_width(addr, need, t),
        )
    if addr.width != "S" and t is DataType.STRING:
        raise AddressError(
            f"'{addr}' is a {_WIDTH_NAME[addr.width]} address but type is string",
            example=_s7_with_width(addr, "S", t),
        )
    if addr.width != "X" and t is DataType.BOOL:
        raise AddressError(
            f"'{addr}' is a {_WIDTH_NAME.get(addr.width, 'string')} address but type is bool",
            example=_s7_with_width(addr, "X", t),
        )
    if addr.width in ("B", "W", "D") and need != addr.width:
        raise AddressError(
            f"'{addr}' is a {_WIDTH_NAME[addr.width]} address but type is {t.value} "
            f"({t.size_bytes} bytes)",
            example=_s7_with_width(addr, need, t),
        )
    if t is DataType.STRING and spec.length is not None and spec.length != addr.string_len:
        raise AddressError(
            f"'{addr}' declares {addr.string_len} characters but length is {spec.length}",
            example=f"DB{addr.db}.STRING{addr.byte}.{spec.length}",
        )
    if spec.length is not None and t is not DataType.STRING:
        raise AddressError(
            f"'{addr}': length applies only to type string, not {t.value}", example=str(addr))
    _, _, start, count = tag_extent(spec)
    if start + count - 1 > S7_MAX_BYTE:
        raise AddressError(
            f"'{addr}' with type {t.value} needs {count} bytes and runs past byte "
            f"{S7_MAX_BYTE}",
            example=_s7_with_width(addr, addr.width, t, byte=S7_MAX_BYTE - count + 1),
        )


def _s7_with_width(addr: S7Address, width: str, t: DataType, byte: int | None = None) -> str:
    """The same place in the same area, written with another width letter."""
    b = addr.byte if byte is None else byte
    if width == "S":
        return f"DB{addr.db if addr.area == 'DB' else 1}.STRING{b}.20"
    if addr.area == "DB":
        suffix = f".{addr.bit or 0}" if width == "X" else ""
        return f"DB{addr.db}.DB{width}{b}{suffix}"
    if width == "X":
        return f"{addr.area}{b}.{addr.bit or 0}"
    return f"{addr.area}{width}{b}"
