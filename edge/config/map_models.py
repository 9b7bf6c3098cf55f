"""The register map models: a map (``MapConfig``) and its tags (``TagConfig``).

A map describes one kind of machine; identical machines share one map. These models check
the shape of a map file only; edge.config.map_checks checks what needs more than one key
or the protocol (addresses, overlaps, roles). Their field descriptions and examples are
the generated JSON Schema (config/schema/map.schema.json) and the examples in problems.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, Strict

from edge.config.shape import STRICT

__all__ = ["CountsName", "DataTypeName", "MapConfig", "OrderName", "RoleName", "TagConfig"]

DataTypeName = Literal[
    "bool", "int8", "uint8", "int16", "uint16", "int32", "uint32",
    "int64", "uint64", "float32", "float64", "string",
]
OrderName = Literal["big", "little"]
RoleName = Literal["counter", "state", "alarm", "parameter", "sample"]
CountsName = Literal["good", "scrap", "total"]
_Code = Annotated[int, Strict(False)]  # TOML table keys are strings: states = { 0 = "off" }


class TagConfig(BaseModel):
    """One tag of a register map: where it lives in the PLC, how to decode it, what it means."""

    model_config = STRICT

    address: str = Field(
        description="Where the value lives. Modbus: HR/IR/CO/DI plus 0-based offset "
        "(HR100, HR100.3 for a bit) or Modicon style (40101 = HR100). S7: DB1.DBX0.0, "
        "DB1.DBB2, DB1.DBW4, DB1.DBD6, DB1.STRING10.20, M10.0, MW20, MD24, I0.0, Q0.1.",
        examples=["HR100", "DB1.DBD6"],
    )
    type: DataTypeName = Field(
        description="Data type of the value. string needs `length` (Modbus) or takes it "
        "from the S7 STRING address.",
        examples=["uint32", "float32"],
    )
    length: Annotated[int, Field(ge=1, le=254)] | None = Field(
        default=None,
        description="String length in characters (Modbus strings pack two per register).",
        examples=[16],
    )
    byte_order: OrderName | None = Field(
        default=None,
        description="Byte order inside each 16-bit word; overrides the map's byte_order.",
        examples=["big"],
    )
    word_order: OrderName | None = Field(
        default=None,
        description="Word order of multi-word values; overrides the map's word_order.",
        examples=["little"],
    )
    scale: float = Field(
        default=1.0, description="Engineering value = raw * scale + offset.", examples=[0.1])
    offset: float = Field(
        default=0.0, description="Engineering value = raw * scale + offset.", examples=[-40.0])
    unit: str | None = Field(
        default=None, description="Engineering unit shown to people.", examples=["degC", "bar"])
    role: RoleName = Field(
        default="sample",
        description="What the value means: counter (pieces made), state (machine state "
        "code), alarm (alarm code), parameter (process value with limits), sample "
        "(recorded value).",
        examples=["parameter"],
    )
    counts: CountsName | None = Field(
        default=None,
        description="For role = counter: which pieces it counts (good, scrap or total).",
        examples=["good"],
    )
    states: dict[_Code, str] | None = Field(
        default=None,
        description="For role = state: state code -> name.",
        examples=[{0: "off", 1: "idle", 2: "running"}],
    )
    alarms: dict[_Code, str] | None = Field(
        default=None,
        description="For role = alarm: alarm code -> text (0 means no alarm).",
        examples=[{1001: "Spindle overload"}],
    )
    limits: Annotated[list[float], Field(min_length=2, max_length=2)] | None = Field(
        default=None,
        description="For role = parameter: [lo, hi]; leaving them raises a limit record.",
        examples=[[10.0, 65.0]],
    )
    deadband: Annotated[float, Field(ge=0)] | None = Field(
        default=None,
        description="For parameter and sample: smallest change worth recording.",
        examples=[0.5],
    )
    description: str | None = Field(
        default=None, description="Free text for people.", examples=["Barrel zone 1"])


class MapConfig(BaseModel):
    """A register map: the tags of one kind of machine. Identical machines share one map."""

    model_config = STRICT

    model: str = Field(
        description="The machine this map describes.",
        examples=["Generic CNC behind a Modbus gateway"],
    )
    byte_order: OrderName = Field(
        default="big", description="Default byte order inside a 16-bit word for every tag.",
        examples=["big"],
    )
    word_order: OrderName = Field(
        default="big", description="Default word order of multi-word values for every tag.",
        examples=["big"],
    )
    description: str | None = Field(
        default=None, description="Free text for people.", examples=["Fanuc 0i via gateway"])
    tags: dict[str, TagConfig] = Field(
        default_factory=dict,
        description="The tags, by name ([tags.part_count], [tags.spindle_temp], ...).",
    )
