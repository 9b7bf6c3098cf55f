"""The frozen values that flow through ``protocols``: types, addresses, tag specs, plans.

A register map compiles once, in a pure function (``plan_reads``), into a ``ReadPlan``;
drivers only execute plans. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from protocols.errors import ProtocolError


class DataType(StrEnum):
    BOOL = "bool"
    INT8 = "int8"      # S7 byte addresses (DBB, MB, IB, QB)
    UINT8 = "uint8"
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    STRING = "string"

    @property
    def size_bytes(self) -> int:
        """Width in bytes; 0 for bool (a bit) and string (depends on length)."""
        return _SIZES[self]

    @property
    def is_unsigned_int(self) -> bool:
        return self in (DataType.UINT8, DataType.UINT16, DataType.UINT32, DataType.UINT64)

    @property
    def is_integer(self) -> bool:
        return self.is_unsigned_int or self in (
            DataType.INT8, DataType.INT16, DataType.INT32, DataType.INT64)

    @property
    def max_value(self) -> int:
        """Largest value of an integer type (the rollover point of a counter)."""
        if not self.is_integer:
            raise ValueError(f"{self.value} is not an integer type")
        bits = self.size_bytes * 8
        return (1 << bits) - 1 if self.is_unsigned_int else (1 << (bits - 1)) - 1


_SIZES = {
    DataType.BOOL: 0, DataType.INT8: 1, DataType.UINT8: 1, DataType.INT16: 2,
    DataType.UINT16: 2, DataType.INT32: 4, DataType.UINT32: 4, DataType.INT64: 8,
    DataType.UINT64: 8, DataType.FLOAT32: 4, DataType.FLOAT64: 8, DataType.STRING: 0,
}


class Order(StrEnum):
    """Byte order within a 16-bit word, or word order within a multi-word value."""

    BIG = "big"
    LITTLE = "little"


Protocol = Literal["modbus-tcp", "modbus-rtu", "s7"]
ModbusArea = Literal["HR", "IR", "CO", "DI"]
S7Area = Literal["DB", "M", "I", "Q"]


@dataclass(frozen=True, slots=True)
class ModbusAddress:
    """A Modbus address: area and 0-based offset; ``bit`` for a bit inside a register
    (``HR100.3``), None otherwise. Coils and discrete inputs are bit areas."""

    area: ModbusArea
    offset: int
    bit: int | None = None

    @property
    def is_bit_area(self) -> bool:
        return self.area in ("CO", "DI")

    def __str__(self) -> str:
        return f"{self.area}{self.offset}" + (f".{self.bit}" if self.bit is not None else "")


@dataclass(frozen=True, slots=True)
class S7Address:
    """A Siemens S7 address. ``width`` is the letter of the notation: X (bit), B, W, D
    (byte, word, double word) or S (``DBn.STRINGb.len``). ``db`` is 0 outside DBs.
    ``string_len`` is the declared maximum length of an S7 string."""

    area: S7Area
    db: int
    byte: int
    width: Literal["X", "B", "W", "D", "S"]
    bit: int | None = None
    string_len: int | None = None

    def __str__(self) -> str:
        if self.area == "DB":
            if self.width == "S":
                return f"DB{self.db}.STRING{self.byte}.{self.string_len}"
            suffix = f"DB{self.width}{self.byte}" + (f".{self.bit}" if self.width == "X" else "")
            return f"DB{self.db}.{suffix}"
        letter = "" if self.width == "X" else self.width
        return f"{self.area}{letter}{self.byte}" + (f".{self.bit}" if self.width == "X" else "")


Address = ModbusAddress | S7Address


@dataclass(frozen=True, slots=True)
class TagSpec:
    """What the planner and the codec need to know about one tag (nothing about roles)."""

    name: str
    address: Address
    type: DataType
    length: int | None = None          # string length in characters
    byte_order: Order = Order.BIG
    word_order: Order = Order.BIG
    scale: float = 1.0
    offset: float = 0.0


@dataclass(frozen=True, slots=True)
class Span:
    """One contiguous block read from one area.

    Modbus: ``start``/``count`` in registers (HR/IR) or bits (CO/DI); ``db`` is 0.
    S7: ``start``/``count`` in bytes of the area (of DB ``db``).
    ``tags`` names the tags whose bytes lie inside, in address order.
    """

    area: str
    db: int
    start: int
    count: int
    tags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Request:
    """One round trip. Modbus requests carry exactly one span; an S7 request may carry
    several (a multi-variable read) as long as request and answer fit the PDU."""

    spans: tuple[Span, ...]


@dataclass(frozen=True, slots=True)
class PlanLimits:
    """Per-device limits for the planner. Defaults are the protocol maxima."""

    max_registers: int = 125      # Modbus FC3/FC4 per request
    max_bits: int = 2000          # Modbus FC1/FC2 per request
    # Unused registers (bits/8 for coils, bytes for S7) a request may read and throw away to
    # save a round trip. The default bridges any gap that fits the request limit, so the
    # plan needs the fewest requests the protocol allows; a PLC that refuses reads across
    # unmapped registers answers "illegal data address" once and read_plan splits that block.
    # Set it lower per device (``max_gap`` in gateway.toml) for PLCs that need it.
    max_gap: int = 125
    pdu_size: int = 480           # S7 negotiated PDU; the driver replaces it after connect
    max_vars: int = 20            # S7 items per multi-variable read


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """A compiled, immutable read plan for one device."""

    protocol: Protocol
    tags: tuple[TagSpec, ...]
    requests: tuple[Request, ...]
    limits: PlanLimits = field(default_factory=PlanLimits)

    @property
    def one_per_tag(self) -> int:
        """How many requests reading each tag alone would take."""
        return len(self.tags)


@dataclass(frozen=True, slots=True)
class TagReading:
    """The outcome for one tag of one poll: its raw bytes and decoded value, or the error.

    ``raw`` is the tag's bytes as they came off the wire (Modbus registers big-endian,
    two bytes each; one byte 0/1 per bit for coils and discrete inputs; S7 bytes as read).
    """

    name: str
    raw: bytes
    value: bool | int | float | str | None
    error: ProtocolError | None = None

    @property
    def good(self) -> bool:
        return self.error is None

