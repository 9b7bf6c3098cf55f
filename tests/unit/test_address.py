"""Address parsing, fit checks and extents: every notation, every error with its example."""

from __future__ import annotations

import pytest

from protocols import AddressError, DataType, ModbusAddress, S7Address, TagSpec
from protocols.address import check_fits, parse_address, tag_extent

MB = "modbus-tcp"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("HR100", ModbusAddress("HR", 100)),
        ("hr100", ModbusAddress("HR", 100)),
        ("  HR 100 ", ModbusAddress("HR", 100)),
        ("IR0", ModbusAddress("IR", 0)),
        ("CO5", ModbusAddress("CO", 5)),
        ("DI65535", ModbusAddress("DI", 65535)),
        ("HR100.3", ModbusAddress("HR", 100, 3)),
        ("IR7.15", ModbusAddress("IR", 7, 15)),
        ("40001", ModbusAddress("HR", 0)),
        ("40101", ModbusAddress("HR", 100)),
        ("49999", ModbusAddress("HR", 9998)),
        ("30001", ModbusAddress("IR", 0)),
        ("00001", ModbusAddress("CO", 0)),
        ("10001", ModbusAddress("DI", 0)),
        ("400001", ModbusAddress("HR", 0)),
        ("465536", ModbusAddress("HR", 65535)),
        ("300010", ModbusAddress("IR", 9)),
        ("000001", ModbusAddress("CO", 0)),
        ("100002", ModbusAddress("DI", 1)),
        ("40101.3", ModbusAddress("HR", 100, 3)),
    ],
)
def test_modbus_notations(text: str, expected: ModbusAddress) -> None:
    assert parse_address(text, MB) == expected
    assert parse_address(text, "modbus-rtu") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("DB1.DBX0.0", S7Address("DB", 1, 0, "X", 0)),
        ("db1.dbx4.7", S7Address("DB", 1, 4, "X", 7)),
        ("DB1.DBB2", S7Address("DB", 1, 2, "B")),
        ("DB1.DBW4", S7Address("DB", 1, 4, "W")),
        ("DB65535.DBD6", S7Address("DB", 65535, 6, "D")),
        ("DB1.STRING10.20", S7Address("DB", 1, 10, "S", None, 20)),
        (" db 2 . string 0 . 254 ", S7Address("DB", 2, 0, "S", None, 254)),
        ("M10.0", S7Address("M", 0, 10, "X", 0)),
        ("MB10", S7Address("M", 0, 10, "B")),
        ("MW20", S7Address("M", 0, 20, "W")),
        ("MD24", S7Address("M", 0, 24, "D")),
        ("I0.0", S7Address("I", 0, 0, "X", 0)),
        ("IB1", S7Address("I", 0, 1, "B")),
        ("IW2", S7Address("I", 0, 2, "W")),
        ("ID4", S7Address("I", 0, 4, "D")),
        ("Q0.1", S7Address("Q", 0, 0, "X", 1)),
        ("QB3", S7Address("Q", 0, 3, "B")),
        ("QW4", S7Address("Q", 0, 4, "W")),
        ("QD8", S7Address("Q", 0, 8, "D")),
        ("E1.2", S7Address("I", 0, 1, "X", 2)),
        ("EW2", S7Address("I", 0, 2, "W")),
        ("A0.1", S7Address("Q", 0, 0, "X", 1)),
        ("AD4", S7Address("Q", 0, 4, "D")),
    ],
)
def test_s7_notations(text: str, expected: S7Address) -> None:
    assert parse_address(text, "s7") == expected


@pytest.mark.parametrize(
    "text",
    ["HR100", "HR100.3", "CO5", "DB1.DBX0.0", "DB1.DBB2", "DB1.DBW4", "DB1.DBD6",
     "DB1.STRING10.20", "M10.0", "MB10", "MW20", "MD24", "I0.0", "IB1", "Q0.1", "QW4"],
)
def test_str_round_trips(text: str) -> None:
    protocol = "s7" if not text.startswith(("HR", "CO")) else MB
    assert str(parse_address(text, protocol)) == text


@pytest.mark.parametrize(
    ("text", "protocol", "fragment", "example"),
    [
        ("", MB, "empty", "HR100"),
        ("HR70000", MB, "beyond the Modbus range", "HR65535"),
        ("465537", MB, "beyond the Modbus range", "HR65535"),
        ("40000", MB, "1-based", "HR0"),
        ("50001", MB, "start with 0", "40001"),
        ("HR1.16", MB, "bit 16", "HR1.15"),
        ("CO5.1", MB, "already a bit area", "CO5"),
        ("XX3", MB, "unknown Modbus area 'XX'", "HR100"),
        ("123", MB, "Modicon", "HR123"),
        ("HR", MB, "not a Modbus address", "HR100"),
        ("DB1.DBW0", MB, "S7 notation", "HR100"),
        ("MW20", "modbus-rtu", "S7 notation", "HR100"),
        ("", "s7", "empty", "DB1.DBW4"),
        ("HR100", "s7", "Modbus notation", "DB1.DBW4"),
        ("40001", "s7", "Modbus notation", "DB1.DBW4"),
        ("DB1.DBX4", "s7", "bit address without a bit number", "DB1.DBX4.0"),
        ("M10", "s7", "bit address without a bit number", "M10.0"),
        ("DB1.DBX4.8", "s7", "bit 8", "DB1.DBX4.7"),
        ("Q0.9", "s7", "bit 9", "Q0.7"),
        ("MW20.1", "s7", "word address takes no bit", "MW20"),
        ("DB1.DBD4.0", "s7", "double word address takes no bit", "DB1.DBD4"),
        ("DB0.DBW0", "s7", "DB number 0", "DB1.DBW0"),
        ("DB70000.DBW0", "s7", "DB number 70000", "DB1.DBW0"),
        ("DB1.DBW70000", "s7", "byte 70000", "DB1.DBW4"),
        ("DB1.STRING10", "s7", "maximum length", "DB1.STRING10.20"),
        ("DB1.STRING10.255", "s7", "outside 1..254", "DB1.STRING10.254"),
        ("DB1.STRING10.0", "s7", "outside 1..254", "DB1.STRING10.254"),
        ("DB1", "s7", "part inside the DB", "DB1.DBW0"),
        ("DB1.DBQ3", "s7", "DBX (bit), DBB, DBW, DBD or STRING", "DB1.DBW4"),
        ("Z3", "s7", "not an S7 address", "DB1.DBW4"),
        ("HR1", "profinet", "unknown protocol", "HR100"),
    ],
)
def test_errors_say_what_and_show_an_example(
    text: str, protocol: str, fragment: str, example: str,
) -> None:
    with pytest.raises(AddressError) as info:
        parse_address(text, protocol)
    assert fragment in info.value.message
    assert info.value.example == example
    assert f"(e.g. {example})" in str(info.value)
    if protocol in (MB, "modbus-rtu", "s7"):
        parse_address(example, protocol)  # the example itself is right


def spec(text: str, protocol: str, type_: DataType, length: int | None = None) -> TagSpec:
    return TagSpec("t", parse_address(text, protocol), type_, length=length)


@pytest.mark.parametrize(
    ("text", "protocol", "type_", "length"),
    [
        ("CO1", MB, DataType.BOOL, None),
        ("DI1", MB, DataType.BOOL, None),
        ("HR1.4", MB, DataType.BOOL, None),
        ("HR1", MB, DataType.UINT16, None),
        ("IR1", MB, DataType.INT16, None),
        ("HR1", MB, DataType.FLOAT32, None),
        ("HR1", MB, DataType.UINT64, None),
        ("HR1", MB, DataType.STRING, 16),
        ("HR65534", MB, DataType.UINT32, None),
        ("DB1.DBX0.0", "s7", DataType.BOOL, None),
        ("M1.1", "s7", DataType.BOOL, None),
        ("DB1.DBB0", "s7", DataType.UINT8, None),
        ("MB0", "s7", DataType.INT8, None),
        ("DB1.DBB0", "s7", DataType.FLOAT64, None),
        ("DB1.DBB0", "s7", DataType.INT64, None),
        ("DB1.DBW0", "s7", DataType.INT16, None),
        ("IW0", "s7", DataType.UINT16, None),
        ("DB1.DBD0", "s7", DataType.FLOAT32, None),
        ("QD0", "s7", DataType.UINT32, None),
        ("DB1.STRING0.20", "s7", DataType.STRING, None),
        ("DB1.STRING0.20", "s7", DataType.STRING, 20),
    ],
)
def test_fits(text: str, protocol: str, type_: DataType, length: int | None) -> None:
    check_fits(spec(text, protocol, type_, length))


@pytest.mark.parametrize(
    ("text", "protocol", "type_", "length", "message", "example"),
    [
        ("DB1.DBX4.0", "s7", DataType.FLOAT32, None,
         "'DB1.DBX4.0' is a bit address but type is float32", "DB1.DBD4"),
        ("M10.0", "s7", DataType.UINT16, None,
         "'M10.0' is a bit address but type is uint16", "MW10"),
        ("DB1.DBW4", "s7", DataType.BOOL, None,
         "'DB1.DBW4' is a word address but type is bool", "DB1.DBX4.0"),
        ("DB1.DBW4", "s7", DataType.FLOAT32, None,
         "'DB1.DBW4' is a word address but type is float32 (4 bytes)", "DB1.DBD4"),
        ("DB1.DBD4", "s7", DataType.INT16, None,
         "'DB1.DBD4' is a double word address but type is int16 (2 bytes)", "DB1.DBW4"),
        ("MB2", "s7", DataType.UINT32, None,
         "'MB2' is a byte address but type is uint32 (4 bytes)", "MD2"),
        ("DB1.DBD0", "s7", DataType.FLOAT64, None,
         "'DB1.DBD0' is a double word address but type is float64 (8 bytes)", "DB1.DBB0"),
        ("DB1.DBW0", "s7", DataType.STRING, None,
         "'DB1.DBW0' is a word address but type is string", "DB1.STRING0.20"),
        ("DB1.STRING0.20", "s7", DataType.UINT16, None,
         "'DB1.STRING0.20' is a string address but type is uint16", "DB1.DBW0"),
        ("DB1.STRING0.20", "s7", DataType.STRING, 16,
         "'DB1.STRING0.20' declares 20 characters but length is 16", "DB1.STRING0.16"),
        ("DB1.DBW65535", "s7", DataType.INT16, None,
         "needs 2 bytes and runs past byte 65535", "DB1.DBW65534"),
        ("DB1.DBW0", "s7", DataType.INT16, 3,
         "length applies only to type string", "DB1.DBW0"),
        ("CO3", MB, DataType.UINT16, None, "'CO3' is a bit address but type is uint16", "HR3"),
        ("HR3.1", MB, DataType.FLOAT32, None,
         "'HR3.1' is a bit address but type is float32", "HR3"),
        ("HR3", MB, DataType.BOOL, None, "'HR3' is a register but type is bool", "HR3.0"),
        ("HR3", MB, DataType.UINT8, None, "use type uint16", "HR3"),
        ("HR3", MB, DataType.STRING, None, "has no length", "HR3"),
        ("HR3", MB, DataType.UINT16, 4, "length applies only to type string", "HR3"),
        ("HR65535", MB, DataType.UINT32, None,
         "needs 2 registers and runs past 65535", "HR65534"),
        ("HR65530", MB, DataType.STRING, 20,
         "needs 10 registers and runs past 65535", "HR65526"),
    ],
)
def test_misfits(
    text: str, protocol: str, type_: DataType, length: int | None, message: str, example: str,
) -> None:
    with pytest.raises(AddressError) as info:
        check_fits(spec(text, protocol, type_, length))
    assert message in info.value.message
    assert info.value.example == example
    parse_address(example, protocol)


@pytest.mark.parametrize(
    ("text", "protocol", "type_", "length", "extent"),
    [
        ("HR100", MB, DataType.UINT16, None, ("HR", 0, 100, 1)),
        ("HR100", MB, DataType.FLOAT32, None, ("HR", 0, 100, 2)),
        ("IR100", MB, DataType.FLOAT64, None, ("IR", 0, 100, 4)),
        ("HR100.3", MB, DataType.BOOL, None, ("HR", 0, 100, 1)),
        ("CO7", MB, DataType.BOOL, None, ("CO", 0, 7, 1)),
        ("HR130", MB, DataType.STRING, 16, ("HR", 0, 130, 8)),
        ("HR130", MB, DataType.STRING, 15, ("HR", 0, 130, 8)),
        ("DB3.DBX4.1", "s7", DataType.BOOL, None, ("DB", 3, 4, 1)),
        ("DB3.DBB4", "s7", DataType.UINT8, None, ("DB", 3, 4, 1)),
        ("DB3.DBB4", "s7", DataType.FLOAT64, None, ("DB", 3, 4, 8)),
        ("DB3.DBW4", "s7", DataType.INT16, None, ("DB", 3, 4, 2)),
        ("MD4", "s7", DataType.FLOAT32, None, ("M", 0, 4, 4)),
        ("DB3.STRING10.20", "s7", DataType.STRING, None, ("DB", 3, 10, 22)),
    ],
)
def test_extent(
    text: str, protocol: str, type_: DataType, length: int | None,
    extent: tuple[str, int, int, int],
) -> None:
    assert tag_extent(spec(text, protocol, type_, length)) == extent
