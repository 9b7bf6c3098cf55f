"""Tag values to and from the raw bytes of ``TagReading.raw``. Pure, no I/O.

Raw forms (as the drivers deliver them): Modbus registers as big-endian 2-byte words in
address order; coils and discrete inputs one byte (0/1) per bit; S7 the bytes of the area.

Orders: ``byte_order = little`` swaps the two bytes inside every 16-bit word;
``word_order = little`` reverses the order of the 16-bit words of a multi-word value.
Both are applied to one value at a time (never to a whole block), then ``struct`` unpacks
the value big-endian. S7 data is big-endian on the wire; the orders apply there too, so a
tag that overrides them means what it says, but maps normally leave them at big.
"""

from __future__ import annotations

import math
import struct

from protocols.address import tag_extent
from protocols.errors import CodecError
from protocols.model import DataType, ModbusAddress, Order, S7Address, TagSpec

Value = bool | int | float | str

_STRUCTS: dict[DataType, struct.Struct] = {
    DataType.INT8: struct.Struct(">b"), DataType.UINT8: struct.Struct(">B"),
    DataType.INT16: struct.Struct(">h"), DataType.UINT16: struct.Struct(">H"),
    DataType.INT32: struct.Struct(">i"), DataType.UINT32: struct.Struct(">I"),
    DataType.INT64: struct.Struct(">q"), DataType.UINT64: struct.Struct(">Q"),
    DataType.FLOAT32: struct.Struct(">f"), DataType.FLOAT64: struct.Struct(">d"),
}
_ALL_ORDERS = (
    (Order.BIG, Order.BIG), (Order.BIG, Order.LITTLE),
    (Order.LITTLE, Order.BIG), (Order.LITTLE, Order.LITTLE),
)


def raw_size(spec: TagSpec) -> int:
    """How many raw bytes one value of ``spec`` takes in ``TagReading.raw``."""
    _, _, _, count = tag_extent(spec)
    if isinstance(spec.address, ModbusAddress):
        return 1 if spec.address.is_bit_area else 2 * count
    return count


def _swap_bytes(raw: bytes) -> bytes:
    out = bytearray(raw)
    out[0::2], out[1::2] = raw[1::2], raw[0::2]
    return bytes(out)


def _reverse_words(raw: bytes) -> bytes:
    return b"".join(raw[i:i + 2] for i in range(len(raw) - 2, -1, -2))


def _reorder(raw: bytes, byte_order: Order, word_order: Order) -> bytes:
    """Between wire order and big-endian. Its own inverse, so encode uses it too."""
    if len(raw) < 2:
        return raw
    if byte_order is Order.LITTLE:
        raw = _swap_bytes(raw)
    if word_order is Order.LITTLE and len(raw) > 2:
        raw = _reverse_words(raw)
    return raw


def decode(spec: TagSpec, raw: bytes) -> Value:
    """Decode one tag's raw bytes to its value, with scale/offset applied.

    Integers stay ``int`` when scale is 1 and offset 0, else become ``float``. Modbus
    strings strip trailing NULs and spaces; S7 strings take their actual length from the
    header. Raises CodecError when ``raw`` has the wrong length or an S7 string header
    does not fit its bytes. Pure: the same input always gives the same output.
    """
    t = spec.type
    st = _STRUCTS.get(t)
    # Numbers take exactly their struct's size (int8/uint8 exist only on S7, one byte);
    # the fast check keeps the per-value cost down on the poll path.
    need = st.size if st is not None else raw_size(spec)
    if len(raw) != need:
        raise CodecError(
            f"{spec.name}: {t.value} at '{spec.address}' needs {need} raw bytes, "
            f"got {len(raw)}"
        )
    if st is None:
        return _decode_bool(spec, raw) if t is DataType.BOOL else _decode_string(spec, raw)
    if spec.byte_order is not Order.BIG or spec.word_order is not Order.BIG:
        raw = _reorder(raw, spec.byte_order, spec.word_order)
    value: int | float = st.unpack(raw)[0]
    if spec.scale != 1.0 or spec.offset != 0.0:
        return value * spec.scale + spec.offset
    return value


def _decode_bool(spec: TagSpec, raw: bytes) -> bool:
    addr = spec.address
    if isinstance(addr, ModbusAddress):
        if addr.is_bit_area:
            return raw[0] != 0
        word = _reorder(raw, spec.byte_order, Order.BIG)
        return bool((int.from_bytes(word, "big") >> (addr.bit or 0)) & 1)
    return bool((raw[0] >> (addr.bit or 0)) & 1)


def _decode_string(spec: TagSpec, raw: bytes) -> str:
    addr = spec.address
    if isinstance(addr, S7Address):
        declared, actual = raw[0], raw[1]
        if actual > len(raw) - 2:
            raise CodecError(
                f"{spec.name}: S7 string at '{addr}' says {actual} characters "
                f"(maximum {declared}) but has room for {len(raw) - 2}"
            )
        return raw[2:2 + actual].decode("latin-1").rstrip("\x00")
    if spec.byte_order is Order.LITTLE:
        raw = _swap_bytes(raw)
    length = spec.length if spec.length is not None else len(raw)
    return raw[:length].decode("latin-1").rstrip("\x00 ")


def encode(spec: TagSpec, value: Value) -> bytes:
    """Encode ``value`` into the raw bytes ``decode`` reads (the inverse of ``decode``).

    Scale/offset are undone first (integers are rounded). For a bit inside a Modbus
    register or an S7 byte the result is the whole word/byte with only that bit set (or
    clear); a simulator merges it into its memory. Raises CodecError when the value does
    not fit the type or the string is too long.
    """
    t = spec.type
    addr = spec.address
    if t is DataType.BOOL:
        bit_on = bool(value)
        if isinstance(addr, ModbusAddress):
            if addr.is_bit_area:
                return b"\x01" if bit_on else b"\x00"
            word = (int(bit_on) << (addr.bit or 0)).to_bytes(2, "big")
            return _reorder(word, spec.byte_order, Order.BIG)
        return bytes([int(bit_on) << (addr.bit or 0)])
    if t is DataType.STRING:
        return _encode_string(spec, str(value))
    if isinstance(value, str):
        raise CodecError(f"{spec.name}: {value!r} is text but type is {t.value}")
    number: float = value
    if spec.scale != 1.0 or spec.offset != 0.0:
        if spec.scale == 0:
            raise CodecError(f"{spec.name}: scale 0 cannot be inverted")
        number = (number - spec.offset) / spec.scale
    try:
        if t.is_integer:
            packed = _STRUCTS[t].pack(round(number))
        else:
            packed = _STRUCTS[t].pack(float(number))
    except (struct.error, OverflowError, ValueError) as exc:
        raise CodecError(f"{spec.name}: {value!r} does not fit {t.value}: {exc}") from exc
    return _reorder(packed, spec.byte_order, spec.word_order)


def _encode_string(spec: TagSpec, text: str) -> bytes:
    try:
        data = text.encode("latin-1")
    except UnicodeEncodeError as exc:
        raise CodecError(f"{spec.name}: {text!r} is not latin-1 text") from exc
    addr = spec.address
    if isinstance(addr, S7Address):
        declared = addr.string_len or 0
        if len(data) > declared:
            raise CodecError(f"{spec.name}: {len(data)} characters exceed {declared}")
        return bytes([declared, len(data)]) + data.ljust(declared, b"\x00")
    size = raw_size(spec)
    limit = spec.length if spec.length is not None else size
    if len(data) > limit:
        raise CodecError(f"{spec.name}: {len(data)} characters exceed {limit}")
    padded = data.ljust(size, b"\x00")
    return _swap_bytes(padded) if spec.byte_order is Order.LITTLE else padded


# -- the probe hint ----------------------------------------------------------------

_HINT_TYPES = (DataType.FLOAT32, DataType.FLOAT64, DataType.INT32, DataType.UINT32,
               DataType.INT64, DataType.UINT64)


def plausible_float(x: float) -> bool:
    """A process value a machine could report: finite and 0 or 1e-6 < |x| < 1e9."""
    return math.isfinite(x) and (x == 0.0 or 1e-6 < abs(x) < 1e9)


def plausible_orders(spec: TagSpec, raw: bytes) -> list[tuple[Order, Order]]:
    """Other ``(byte_order, word_order)`` pairs that give a plausible value when the
    configured pair does not, likeliest first. Empty when the configured value is plausible, when the type
    is not a multi-word number, or when no other order helps. Scale/offset are ignored.

    The heuristic (pure, documented, a hint never an error):

    - floats: plausible means finite and exactly 0 or 1e-6 < |x| < 1e9. A configured
      value that fails is reported with every other order that passes, those that
      change one setting (byte or word order) before the one that changes both.
    - integers: a wrong word order moves the low word on top, multiplying a small
      value by about 65536. The configured value counts as implausible when it is at
      least 2**16 in magnitude and another order gives a value at least 2**15 times
      smaller; those smaller orders are returned (smallest magnitude first).
    """
    if spec.type not in _HINT_TYPES or len(raw) != raw_size(spec):
        return []
    st = _STRUCTS[spec.type]
    # raw is wire order; decode it under every pair.
    values = {
        orders: st.unpack(_reorder(raw, *orders))[0] for orders in _ALL_ORDERS
    }
    mine = (spec.byte_order, spec.word_order)
    configured = values[mine]
    others = [(o, v) for o, v in values.items() if o != mine]
    if spec.type in (DataType.FLOAT32, DataType.FLOAT64):
        if plausible_float(configured):
            return []
        # One setting changed is a likelier mistake than both: those come first.
        return sorted((o for o, v in others if plausible_float(v)),
                      key=lambda o: (o[0] != mine[0]) + (o[1] != mine[1]))
    big = abs(configured)
    if big < 1 << 16:
        return []
    smaller = [(abs(v), o) for o, v in others if abs(v) * (1 << 15) <= big]
    return [o for _, o in sorted(smaller, key=lambda p: (p[0], _ALL_ORDERS.index(p[1])))]
