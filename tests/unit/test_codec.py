"""Codec: round-trips for every type x byte order x word order, known vectors, strings,
scale/offset, wrong lengths, and the probe's order hints."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols import CodecError, DataType, Order, TagSpec
from protocols.address import parse_address
from protocols.codec import decode, encode, plausible_orders, raw_size

ORDERS = [(b, w) for b in Order for w in Order]
NUMERIC = {
    DataType.INT16: st.integers(-(2**15), 2**15 - 1),
    DataType.UINT16: st.integers(0, 2**16 - 1),
    DataType.INT32: st.integers(-(2**31), 2**31 - 1),
    DataType.UINT32: st.integers(0, 2**32 - 1),
    DataType.INT64: st.integers(-(2**63), 2**63 - 1),
    DataType.UINT64: st.integers(0, 2**64 - 1),
    DataType.FLOAT32: st.floats(width=32, allow_nan=False),
    DataType.FLOAT64: st.floats(allow_nan=False),
}
S7_ADDR = {
    DataType.INT8: "DB1.DBB0", DataType.UINT8: "MB0", DataType.INT16: "DB1.DBW0",
    DataType.UINT16: "IW0", DataType.INT32: "DB1.DBD0", DataType.UINT32: "QD0",
    DataType.FLOAT32: "DB1.DBD0", DataType.INT64: "DB1.DBB0", DataType.UINT64: "DB1.DBB0",
    DataType.FLOAT64: "DB1.DBB0",
}


def mb(address: str, type_: DataType, byte: Order = Order.BIG, word: Order = Order.BIG,
       **kw: object) -> TagSpec:
    return TagSpec("t", parse_address(address, "modbus-tcp"), type_, byte_order=byte,
                   word_order=word, **kw)  # type: ignore[arg-type]


def s7(address: str, type_: DataType, **kw: object) -> TagSpec:
    return TagSpec("t", parse_address(address, "s7"), type_, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("byte", "word"), ORDERS)
@pytest.mark.parametrize("type_", list(NUMERIC))
@given(data=st.data())
def test_modbus_numeric_round_trip(
    type_: DataType, byte: Order, word: Order, data: st.DataObject,
) -> None:
    value = data.draw(NUMERIC[type_])
    spec = mb("HR10", type_, byte, word)
    raw = encode(spec, value)
    assert len(raw) == raw_size(spec) == max(2, type_.size_bytes)
    back = decode(spec, raw)
    assert back == value
    assert type(back) is type(value)


@pytest.mark.parametrize(("byte", "word"), ORDERS)
@pytest.mark.parametrize("type_", list(NUMERIC))
@given(raw=st.binary(min_size=8, max_size=8))
def test_decode_then_encode_is_identity_on_bytes(
    type_: DataType, byte: Order, word: Order, raw: bytes,
) -> None:
    spec = mb("HR10", type_, byte, word)
    raw = raw[:raw_size(spec)]
    value = decode(spec, raw)
    if isinstance(value, float) and math.isnan(value):
        return  # NaN payloads need not survive struct's float conversion
    assert encode(spec, value) == raw


def _wire(big: bytes, byte: Order, word: Order) -> bytes:
    """A big-endian value as it travels in (byte, word) order, written out plainly."""
    words = [big[i:i + 2] for i in range(0, len(big), 2)] if len(big) > 1 else [big]
    if byte is Order.LITTLE:
        words = [w[::-1] for w in words]
    if word is Order.LITTLE:
        words.reverse()
    return b"".join(words)


@pytest.mark.parametrize(("byte", "word"), ORDERS)
@pytest.mark.parametrize("type_", list(S7_ADDR))
@given(data=st.data())
def test_s7_numeric_round_trip(type_: DataType, byte: Order, word: Order,
                               data: st.DataObject) -> None:
    bytes_ = {DataType.INT8: st.integers(-128, 127), DataType.UINT8: st.integers(0, 255)}
    strategy = NUMERIC[type_] if type_ in NUMERIC else bytes_[type_]
    value = data.draw(strategy)
    spec = s7(S7_ADDR[type_], type_, byte_order=byte, word_order=word)
    raw = encode(spec, value)
    assert len(raw) == raw_size(spec) == type_.size_bytes
    assert raw == _wire(encode(s7(S7_ADDR[type_], type_), value), byte, word)
    back = decode(spec, raw)
    assert back == value
    assert type(back) is type(value)


@pytest.mark.parametrize(
    ("byte", "word", "hex_"),
    [
        (Order.BIG, Order.BIG, "42f6e979"),
        (Order.BIG, Order.LITTLE, "e97942f6"),
        (Order.LITTLE, Order.BIG, "f64279e9"),
        (Order.LITTLE, Order.LITTLE, "79e9f642"),
    ],
)
def test_float32_123_456_vectors(byte: Order, word: Order, hex_: str) -> None:
    spec = mb("HR0", DataType.FLOAT32, byte, word)
    assert encode(spec, 123.456).hex() == hex_
    assert decode(spec, bytes.fromhex(hex_)) == pytest.approx(123.456, rel=1e-7)


@pytest.mark.parametrize(
    ("type_", "byte", "word", "hex_", "value"),
    [
        (DataType.UINT32, Order.BIG, Order.BIG, "00010002", 0x00010002),
        (DataType.UINT32, Order.BIG, Order.LITTLE, "00020001", 0x00010002),
        (DataType.INT16, Order.BIG, Order.BIG, "fffe", -2),
        (DataType.INT16, Order.LITTLE, Order.BIG, "feff", -2),
        (DataType.UINT64, Order.BIG, Order.LITTLE, "0004000300020001", 0x0001000200030004),
        (DataType.UINT64, Order.LITTLE, Order.LITTLE, "0400030002000100", 0x0001000200030004),
        (DataType.FLOAT64, Order.BIG, Order.BIG, "405edd2f1a9fbe77", 123.456),
        (DataType.FLOAT64, Order.BIG, Order.LITTLE, "be771a9fdd2f405e", 123.456),
    ],
)
def test_known_vectors(type_: DataType, byte: Order, word: Order, hex_: str,
                       value: float) -> None:
    spec = mb("HR0", type_, byte, word)
    assert decode(spec, bytes.fromhex(hex_)) == value
    assert encode(spec, value).hex() == hex_


def test_s7_is_big_endian() -> None:
    assert decode(s7("DB1.DBD0", DataType.FLOAT32), bytes.fromhex("42f6e979")) == \
        pytest.approx(123.456, rel=1e-7)
    assert decode(s7("DB1.DBW0", DataType.INT16), b"\xff\xfe") == -2
    assert decode(s7("MB0", DataType.INT8), b"\xff") == -1


def test_bools() -> None:
    assert decode(mb("CO3", DataType.BOOL), b"\x01") is True
    assert decode(mb("DI3", DataType.BOOL), b"\x00") is False
    assert encode(mb("CO3", DataType.BOOL), True) == b"\x01"
    bit3 = mb("HR1.3", DataType.BOOL)
    assert decode(bit3, (0b1000).to_bytes(2, "big")) is True
    assert decode(bit3, (0b0111).to_bytes(2, "big")) is False
    bit9 = mb("HR1.9", DataType.BOOL)
    assert decode(bit9, bytes([0x02, 0x00])) is True
    assert encode(bit9, True) == bytes([0x02, 0x00])
    bit9_swapped = mb("HR1.9", DataType.BOOL, Order.LITTLE)
    assert decode(bit9_swapped, bytes([0x00, 0x02])) is True
    assert encode(bit9_swapped, True) == bytes([0x00, 0x02])
    db_bit = s7("DB1.DBX4.6", DataType.BOOL)
    assert decode(db_bit, bytes([0x40])) is True
    assert decode(db_bit, bytes([0xBF])) is False
    assert encode(db_bit, True) == bytes([0x40])


def test_modbus_string_packs_two_chars_per_register_high_byte_first() -> None:
    spec = mb("HR130", DataType.STRING, length=5)
    raw = encode(spec, "AB12")
    assert raw == b"AB12\x00\x00"
    assert decode(spec, raw) == "AB12"
    assert decode(spec, b"P-77  ") == "P-77"          # trailing spaces stripped
    assert decode(spec, b"ABCDEF") == "ABCDE"         # the length limits the text
    swapped = mb("HR130", DataType.STRING, Order.LITTLE, length=4)
    assert decode(swapped, b"BADC") == "ABCD"
    assert encode(swapped, "ABCD") == b"BADC"
    with pytest.raises(CodecError, match="exceed"):
        encode(spec, "TOOLONG")


@given(text=st.text(st.characters(min_codepoint=0x21, max_codepoint=0xFF), max_size=16),
       little=st.booleans())
def test_modbus_string_round_trip(text: str, little: bool) -> None:
    spec = mb("HR0", DataType.STRING, Order.LITTLE if little else Order.BIG, length=16)
    assert decode(spec, encode(spec, text)) == text


def test_s7_string_has_a_header() -> None:
    spec = s7("DB1.STRING10.8", DataType.STRING)
    raw = encode(spec, "MOLD-3")
    assert raw == bytes([8, 6]) + b"MOLD-3\x00\x00"
    assert decode(spec, raw) == "MOLD-3"
    assert decode(spec, bytes([8, 2]) + b"OKjunk!!") == "OK"
    with pytest.raises(CodecError, match="says 9 characters"):
        decode(spec, bytes([8, 9]) + b"12345678")
    with pytest.raises(CodecError, match="exceed"):
        encode(spec, "123456789")


@given(text=st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=20))
def test_s7_string_round_trip(text: str) -> None:
    spec = s7("DB1.STRING0.20", DataType.STRING)
    assert decode(spec, encode(spec, text)) == text.rstrip("\x00")


def test_scale_and_offset() -> None:
    plain = mb("HR0", DataType.INT16)
    assert decode(plain, struct.pack(">h", 215)) == 215
    assert isinstance(decode(plain, struct.pack(">h", 215)), int)
    tenths = mb("HR0", DataType.INT16, scale=0.1)
    assert decode(tenths, struct.pack(">h", 215)) == pytest.approx(21.5)
    assert isinstance(decode(tenths, struct.pack(">h", 215)), float)
    shifted = mb("HR0", DataType.UINT16, scale=1.0, offset=-40.0)
    assert decode(shifted, struct.pack(">H", 100)) == 60.0
    assert encode(shifted, 60.0) == struct.pack(">H", 100)
    assert encode(tenths, 21.5) == struct.pack(">h", 215)
    f = mb("HR0", DataType.FLOAT32, scale=2.0, offset=1.0)
    assert decode(f, struct.pack(">f", 3.0)) == 7.0


@given(value=st.integers(-3000, 3000))
def test_scaled_integers_round_trip(value: int) -> None:
    spec = mb("HR0", DataType.INT16, scale=0.1, offset=5.0)
    shown = decode(spec, struct.pack(">h", value))
    assert isinstance(shown, float)
    assert encode(spec, shown) == struct.pack(">h", value)


@pytest.mark.parametrize(
    ("spec", "raw"),
    [
        (mb("HR0", DataType.FLOAT32), b"\x00\x00"),
        (mb("HR0", DataType.UINT16), b"\x00\x00\x00"),
        (mb("CO0", DataType.BOOL), b""),
        (mb("HR0", DataType.STRING, length=4), b"AB"),
        (s7("DB1.DBD0", DataType.FLOAT32), b"\x00" * 8),
        (s7("DB1.STRING0.4", DataType.STRING), b"\x04\x00ab"),
    ],
)
def test_wrong_length_is_a_codec_error(spec: TagSpec, raw: bytes) -> None:
    with pytest.raises(CodecError, match="raw bytes"):
        decode(spec, raw)


@pytest.mark.parametrize(
    ("spec", "value"),
    [
        (mb("HR0", DataType.UINT16), 70000),
        (mb("HR0", DataType.UINT16), -1),
        (mb("HR0", DataType.INT16), "12"),
        (mb("HR0", DataType.FLOAT32), 1e300),
        (mb("HR0", DataType.STRING, length=4), "Ω"),
    ],
)
def test_unencodable_values(spec: TagSpec, value: object) -> None:
    with pytest.raises(CodecError):
        encode(spec, value)  # type: ignore[arg-type]


# -- probe hints ----------------------------------------------------------------------


def test_float_in_the_other_word_order_is_found() -> None:
    wire = encode(mb("HR0", DataType.FLOAT32, word=Order.LITTLE), 23.5)
    configured = mb("HR0", DataType.FLOAT32)
    assert abs(decode(configured, wire)) < 1e-30  # type: ignore[arg-type]
    hints = plausible_orders(configured, wire)
    assert hints[0] == (Order.BIG, Order.LITTLE)


def test_plausible_float_gives_no_hint() -> None:
    spec = mb("HR0", DataType.FLOAT32)
    assert plausible_orders(spec, encode(spec, 23.5)) == []
    assert plausible_orders(spec, encode(spec, 0.0)) == []


@pytest.mark.parametrize(("byte", "word"), ORDERS)
@given(value=st.floats(0.5, 10000.0))
def test_float_hints_contain_the_true_order(byte: Order, word: Order, value: float) -> None:
    wire = encode(mb("HR0", DataType.FLOAT64, byte, word), value)
    for guess_byte, guess_word in ORDERS:
        guess = mb("HR0", DataType.FLOAT64, guess_byte, guess_word)
        hints = plausible_orders(guess, wire)
        if (guess_byte, guess_word) == (byte, word):
            assert hints == []
        elif hints:
            assert (byte, word) in hints


def test_counter_in_the_other_word_order_is_found() -> None:
    wire = encode(mb("HR0", DataType.UINT32, word=Order.LITTLE), 5)
    configured = mb("HR0", DataType.UINT32)
    assert decode(configured, wire) == 5 * 65536
    assert plausible_orders(configured, wire) == [(Order.BIG, Order.LITTLE)]
    signed = mb("HR0", DataType.INT32)
    wire = encode(mb("HR0", DataType.INT32, word=Order.LITTLE), -2)
    assert (Order.BIG, Order.LITTLE) in plausible_orders(signed, wire)


def test_integers_that_look_fine_get_no_hint() -> None:
    spec = mb("HR0", DataType.UINT32)
    for value in (0, 5, 65535, 70000, 123456):
        assert plausible_orders(spec, encode(spec, value)) == []


def test_no_hints_for_single_register_or_text() -> None:
    assert plausible_orders(mb("HR0", DataType.UINT16), b"\x12\x34") == []
    assert plausible_orders(mb("HR0", DataType.STRING, length=2), b"AB") == []
    assert plausible_orders(mb("HR0", DataType.FLOAT32), b"\x00") == []
