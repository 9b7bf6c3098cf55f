"""gateway.toml and register maps: the pydantic models, loading and validation.

Validation never guesses and never stops at the first mistake: every problem of a file
is collected and reported as one line ``FILE: KEY.PATH: what is wrong (example of right)``.

Public surface::

    load_gateway(path) -> LoadedGateway       raises ConfigError
    load_map(path, protocol=None) -> LoadedMap raises ConfigError
    compile_map(map, protocol, file=...) -> tuple[TagSpec, ...]  raises ConfigError
    ConfigError(problems), Problem(file, key_path, message, hint)

Pydantic checks the shape of a file (keys, types, ranges); the checks that need more than
one key or the protocol (addresses, overlaps, roles) run afterwards in plain code, per tag,
so one broken tag does not hide the problems of the others.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError
from pydantic_core import ErrorDetails

from protocols.driver import Endpoint
from protocols.errors import AddressError
from protocols.model import (
    Address,
    DataType,
    Order,
    PlanLimits,
    Protocol,
    S7Address,
    TagSpec,
)

__all__ = [
    "MIN_POLL_MS",
    "CloudConfig",
    "ConfigError",
    "DeviceConfig",
    "GatewayConfig",
    "GatewaySection",
    "LoadedDevice",
    "LoadedGateway",
    "LoadedMap",
    "MapConfig",
    "MqttConfig",
    "Problem",
    "TagConfig",
    "compile_map",
    "detect_kind",
    "infer_protocol",
    "load_gateway",
    "load_map",
    "parse_map_text",
    "protocol_family",
]

MIN_POLL_MS = 100
_M = TypeVar("_M", bound=BaseModel)
DEFAULT_PORTS: dict[str, int] = {"modbus-tcp": 502, "s7": 102}

# --------------------------------------------------------------------------- errors


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong in one file. ``hint`` is an example of right (or a suggestion)."""

    file: str
    key_path: str
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        parts = [self.file]
        if self.key_path:
            parts.append(self.key_path)
        text = ": ".join(parts) + ": " + self.message
        if self.hint:
            text += f" ({self.hint})"
        return text


class ConfigError(Exception):
    """A gateway config or map that cannot be used; ``problems`` lists every reason."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


# --------------------------------------------------------------------------- models

DataTypeName = Literal[
    "bool", "int8", "uint8", "int16", "uint16", "int32", "uint32",
    "int64", "uint64", "float32", "float64", "string",
]
OrderName = Literal["big", "little"]
RoleName = Literal["counter", "state", "alarm", "parameter", "sample"]
CountsName = Literal["good", "scrap", "total"]
ProtocolName = Literal["modbus-tcp", "modbus-rtu", "s7"]

# strict: TOML has real numbers and booleans, so "0.1" in quotes is a mistake worth naming
_STRICT = ConfigDict(extra="forbid", frozen=True, strict=True)
_Code = Annotated[int, Strict(False)]  # TOML table keys are strings: states = { 0 = "off" }
# Limits the buffer and the cloud set (buffer.records MAX_GATEWAY_ID / MAX_DEVICE_NAME, the
# cloud's String(64)/String(128) columns; buffer.store MIN_MAX_BYTES). Written out rather
# than imported so that `validate` does not load the uplinks; tests/unit/test_config.py
# checks they agree.
MAX_GATEWAY_ID = 64
MAX_DEVICE_NAME = 128
MIN_BUFFER_MB = 2


class TagConfig(BaseModel):
    """One tag of a register map: where it lives in the PLC, how to decode it, what it means."""

    model_config = _STRICT

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

    model_config = _STRICT

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


class GatewaySection(BaseModel):
    """The gateway itself."""

    model_config = _STRICT

    id: Annotated[str, Field(min_length=1, max_length=MAX_GATEWAY_ID,
                             pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")] = Field(
        description="This gateway's id, unique in the plant; the cloud knows it by this "
        f"(at most {MAX_GATEWAY_ID} characters).",
        examples=["gw-hall1"],
    )
    data_dir: str = Field(
        description="Where the buffer (SQLite) and counter baselines live.",
        examples=["/var/lib/plantsync"],
    )
    buffer_max_mb: Annotated[int, Field(ge=MIN_BUFFER_MB)] = Field(
        default=512, description="Buffer quota in MiB (at least "
        f"{MIN_BUFFER_MB}): database, WAL and their side files; above it the "
        "oldest samples go.",
        examples=[512],
    )
    buffer_synchronous: Literal["FULL", "NORMAL"] = Field(
        default="FULL",
        description="SQLite synchronous mode. FULL: every stored cycle survives a power cut. "
        "NORMAL: far fewer fsyncs (SD cards); a power cut can lose the cycles not yet sent "
        "(their samples, states and alarms; their counter movement is recovered from the last "
        "durable baseline, never counted twice).",
        examples=["FULL"],
    )
    log_format: Literal["json", "logfmt"] = Field(
        default="json", description="Log line format on stdout (the journal): json or logfmt.",
        examples=["json"])
    status_listen: str = Field(
        default="127.0.0.1:8470",
        pattern=r"^[^\s:]*:\d{1,5}$",
        description="host:port of the status endpoint.",
        examples=["127.0.0.1:8470"],
    )
    zeroconf_interfaces: list[str] | None = Field(
        default=None,
        description=("IPv4 addresses of the interfaces zeroconf may use: to advertise the "
                     "status port as _plantsync-edge._tcp.local. and to find the cloud when "
                     "cloud.url is \"auto\". Default: every interface. [] turns zeroconf off."),
        examples=[["192.168.10.5"], []],
    )


class MqttConfig(BaseModel):
    """The MQTT uplink (when cloud.transport = "mqtt")."""

    model_config = _STRICT

    broker: str = Field(
        description="Broker URL.", examples=["mqtt://broker.example.com:1883"])
    confirm_timeout_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=15.0,
        description=("Seconds to wait for the cloud's confirmation (plantsync/v1/<gateway>/acks) "
                     "of a published batch before publishing it again. Records go to "
                     "plantsync/v1/<gateway>/records; the cloud drops what it already has."),
        examples=[15.0],
    )


class CloudConfig(BaseModel):
    """Where the records go."""

    model_config = _STRICT

    url: str = Field(
        description='"auto" (find the cloud by zeroconf) or its base URL.',
        examples=["auto", "https://mes.example.com"],
    )
    token_file: str = Field(
        description="File holding this gateway's bearer token.",
        examples=["/etc/plantsync/token"],
    )
    transport: Literal["http", "mqtt"] = Field(
        default="http", description="http, or mqtt (then a [mqtt] table).", examples=["http"])
    retry_max_s: Annotated[float, Field(ge=1, le=600)] = Field(
        default=30.0,
        description=("Longest wait between tries while the cloud (or broker) is unreachable: "
                     "retries back off exponentially with full jitter up to this, so a "
                     "returning cloud is used again within this many seconds."),
        examples=[30.0],
    )


class DeviceConfig(BaseModel):
    """One machine the gateway polls."""

    model_config = _STRICT

    name: Annotated[str, Field(min_length=1, max_length=MAX_DEVICE_NAME,
                               pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")] = Field(
        description="The machine's name, unique on this gateway "
        f"(at most {MAX_DEVICE_NAME} characters).", examples=["cnc-03"])
    map: str = Field(
        description="Register map file, relative to this file's folder.",
        examples=["maps/cnc-generic-modbus.toml"],
    )
    protocol: ProtocolName = Field(
        description="modbus-tcp, modbus-rtu or s7.", examples=["modbus-tcp"])
    host: str | None = Field(
        default=None, description="PLC host (modbus-tcp, s7).", examples=["192.0.2.23"])
    port: Annotated[int, Field(ge=1, le=65535)] | None = Field(
        default=None, description="TCP port; 502 for Modbus, 102 for S7 when left out.",
        examples=[502])
    unit: Annotated[int, Field(ge=0, le=255)] = Field(
        default=1, description="Modbus unit id.", examples=[1])
    serial_port: str | None = Field(
        default=None, description="modbus-rtu: serial device.", examples=["/dev/ttyUSB0"])
    baudrate: Annotated[int, Field(ge=300, le=1_000_000)] = Field(
        default=19200, description="modbus-rtu: baud rate.", examples=[19200])
    parity: Literal["N", "E", "O"] = Field(
        default="E", description="modbus-rtu: parity N, E or O.", examples=["E"])
    stopbits: Literal[1, 2] = Field(
        default=1, description="modbus-rtu: stop bits.", examples=[1])
    rack: Annotated[int, Field(ge=0, le=7)] = Field(
        default=0, description="S7 rack.", examples=[0])
    slot: Annotated[int, Field(ge=0, le=31)] = Field(
        default=1, description="S7 slot (1 for S7-1200/1500, 2 for S7-300).", examples=[1])
    poll_ms: Annotated[int, Field(ge=MIN_POLL_MS, le=3_600_000)] = Field(
        default=1000, description=f"Poll period in milliseconds (at least {MIN_POLL_MS}).",
        examples=[1000])
    timeout_ms: Annotated[int, Field(ge=10, le=60_000)] = Field(
        default=1000, description="How long to wait for an answer.", examples=[1000])
    max_registers: Annotated[int, Field(ge=1, le=125)] | None = Field(
        default=None, description="Modbus: registers per request (PLCs that need fewer "
        "than 125).", examples=[60])
    max_bits: Annotated[int, Field(ge=1, le=2000)] | None = Field(
        default=None, description="Modbus: coils/inputs per request (at most 2000).",
        examples=[800])
    max_gap: Annotated[int, Field(ge=0, le=125)] | None = Field(
        default=None, description="Unused registers (S7: bytes) read to save a request "
        "(default 125, the Modbus request limit: any gap that fits a request).",
        examples=[10])

    @property
    def effective_port(self) -> int:
        """The port, with the protocol's default filled in."""
        return self.port if self.port is not None else DEFAULT_PORTS.get(self.protocol, 0)

    def endpoint(self) -> Endpoint:
        """The driver's view of this device."""
        return Endpoint(
            protocol=self.protocol, name=self.name, host=self.host or "127.0.0.1",
            port=self.effective_port, unit=self.unit, serial_port=self.serial_port,
            baudrate=self.baudrate, parity=self.parity, stopbits=self.stopbits,
            rack=self.rack, slot=self.slot, timeout_s=self.timeout_ms / 1000.0,
        )

    def plan_limits(self) -> PlanLimits:
        """Planner limits: protocol maxima unless this device asks for less."""
        base = PlanLimits()
        return PlanLimits(
            max_registers=self.max_registers or base.max_registers,
            max_bits=self.max_bits or base.max_bits,
            max_gap=self.max_gap if self.max_gap is not None else base.max_gap,
            pdu_size=base.pdu_size, max_vars=base.max_vars,
        )


class GatewayConfig(BaseModel):
    """gateway.toml: the gateway, its cloud and the machines it polls."""

    model_config = _STRICT

    gateway: GatewaySection = Field(description="The gateway itself.")
    cloud: CloudConfig = Field(description="Where the records go.")
    mqtt: MqttConfig | None = Field(
        default=None, description='The MQTT uplink, when cloud.transport = "mqtt".')
    devices: list[DeviceConfig] = Field(
        default_factory=list, description="The machines ([[devices]], one table each).")


# --------------------------------------------------------------------------- loaded results


@dataclass(frozen=True, slots=True)
class LoadedMap:
    """A validated map compiled for one protocol. ``specs`` follow the map's tag order."""

    path: Path
    protocol: Protocol
    config: MapConfig
    specs: tuple[TagSpec, ...]

    @property
    def tags(self) -> Mapping[str, TagConfig]:
        return self.config.tags


@dataclass(frozen=True, slots=True)
class LoadedDevice:
    """One device of a gateway with its compiled map (shared with identical machines)."""

    config: DeviceConfig
    map: LoadedMap

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def endpoint(self) -> Endpoint:
        return self.config.endpoint()

    @property
    def limits(self) -> PlanLimits:
        return self.config.plan_limits()


@dataclass(frozen=True, slots=True)
class LoadedGateway:
    """A validated gateway.toml with every device's map compiled."""

    path: Path
    config: GatewayConfig
    devices: tuple[LoadedDevice, ...]
    maps: Mapping[tuple[Path, str], LoadedMap] = field(default_factory=dict)

    def device(self, name: str) -> LoadedDevice:
        """The device called ``name``; KeyError naming the known ones otherwise."""
        for dev in self.devices:
            if dev.name == name:
                return dev
        known = ", ".join(d.name for d in self.devices) or "none"
        raise KeyError(f"no device {name!r} in {self.path} (devices: {known})")


# --------------------------------------------------------------------------- helpers


def display_path(path: Path | str) -> str:
    """The path as people should read it: relative to the cwd when under it."""
    text = os.path.normpath(str(path))
    if os.path.isabs(text):
        try:
            rel = os.path.relpath(text)
        except ValueError:
            return text
        if not rel.startswith(".."):
            return rel
    return text


def protocol_family(protocol: str) -> Literal["modbus", "s7"]:
    return "s7" if protocol == "s7" else "modbus"


def _key_path(loc: Iterable[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif out:
            out += "." + _toml_key(part)
        else:
            out = _toml_key(part)
    return out


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else f'"{key}"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON escapes are valid TOML
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)


_SYNTAX_AT = re.compile(r"\(at line (\d+), column (\d+)\)")


def _read_toml(path: Path, shown: str) -> tuple[dict[str, Any] | None, list[Problem]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, [Problem(shown, "", "file not found")]
    except (OSError, UnicodeDecodeError) as exc:
        return None, [Problem(shown, "", f"cannot read file: {exc}")]
    return _parse_toml(text, shown)


def _parse_toml(text: str, shown: str) -> tuple[dict[str, Any] | None, list[Problem]]:
    try:
        return tomllib.loads(text), []
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        where = ""
        m = _SYNTAX_AT.search(msg)
        if m:
            where = f"line {m.group(1)}, column {m.group(2)}"
            msg = msg[: m.start()].strip()
        elif "at end of document" in msg:
            where = "end of file"
            msg = msg.replace("(at end of document)", "").strip()
        return None, [Problem(shown, where, f"TOML syntax error: {msg}")]


def _inner_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _resolve_model(root: type[BaseModel], loc: Sequence[int | str]) -> type[BaseModel] | None:
    """Walk ``loc`` through models, lists and dicts; return the model owning loc[-1]."""
    current: type[BaseModel] = root
    i = 0
    parts = list(loc[:-1])
    while i < len(parts):
        part = parts[i]
        if isinstance(part, int):
            i += 1
            continue
        info = current.model_fields.get(part)
        if info is None:
            return None
        inner = _inner_model(info.annotation)
        if inner is None:
            return None
        origin = getattr(info.annotation, "__origin__", None)
        current = inner
        i += 1
        if origin is dict and i < len(parts):
            i += 1  # skip the dict key (a tag name)
    return current


def _translate(err: ErrorDetails, root: type[BaseModel], shown: str) -> Problem:
    loc = [p for p in err["loc"]]
    kind = err["type"]
    value = err.get("input")
    ctx = err.get("ctx") or {}
    if loc and loc[-1] == "[key]":
        # a dict key that is not an int: states/alarms codes
        loc = loc[:-1]
        return Problem(shown, _key_path(loc[:-1]),
                       f"code {loc[-1]!r} is not an integer", "e.g. { 0 = \"off\", 1 = \"idle\" }")
    path = _key_path([p for p in loc if isinstance(p, int | str)])
    last = loc[-1] if loc else ""
    owner = _resolve_model(root, loc) if loc else root
    info = owner.model_fields.get(str(last)) if owner is not None else None
    hint = None
    if info is not None and info.examples:
        hint = f"e.g. {_toml_key(str(last))} = {_toml_value(info.examples[0])}"
    if kind == "extra_forbidden":
        valid = sorted(owner.model_fields) if owner is not None else []
        close = difflib.get_close_matches(str(last), valid, n=1, cutoff=0.6)
        if close:
            hint = f"did you mean {close[0]!r}?"
        else:
            hint = "valid keys: " + ", ".join(valid) if valid else None
        return Problem(shown, path, f"unknown key {str(last)!r}", hint)
    if kind == "missing":
        return Problem(shown, path, "required key is missing", hint)
    if kind == "literal_error":
        return Problem(shown, path, f"{value!r} is not allowed",
                       f"one of {ctx.get('expected', '')}")
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        words = {"greater_than_equal": "at least", "greater_than": "more than",
                 "less_than_equal": "at most", "less_than": "less than"}[kind]
        bound = next(iter(ctx.values()), "")
        return Problem(shown, path, f"must be {words} {bound}, got {value!r}", hint)
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return Problem(shown, path, f"expected a whole number, got {value!r}", hint)
    if kind in ("float_type", "float_parsing", "int_type") and isinstance(value, str):
        return Problem(shown, path, f"expected a number, got the text {value!r}",
                       f"{hint}, without quotes" if hint else "write it without quotes")
    if kind in ("float_type", "float_parsing"):
        return Problem(shown, path, f"expected a number, got {value!r}", hint)
    if kind in ("string_type",):
        return Problem(shown, path, f"expected a string in quotes, got {value!r}", hint)
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return Problem(shown, path, f"expected a table, got {value!r}", hint)
    if kind in ("list_type", "tuple_type"):
        return Problem(shown, path, f"expected a list, got {value!r}", hint)
    if kind == "too_short" or kind == "too_long":
        return Problem(shown, path, f"expected two numbers [lo, hi], got {value!r}", hint)
    if kind == "string_pattern_mismatch":
        if ":" in str(ctx.get("pattern", "")):
            return Problem(shown, path, f"{value!r} is not host:port", hint)
        return Problem(shown, path, f"{value!r}: use only letters, digits, '.', '_' and '-' "
                       "(no spaces), starting with a letter or digit", hint)
    if kind == "string_too_short":
        return Problem(shown, path, "must not be empty", hint)
    if kind == "string_too_long":
        return Problem(shown, path, f"{len(str(value))} characters, at most "
                       f"{ctx.get('max_length')} (the cloud stores no more)", hint)
    return Problem(shown, path, err["msg"].removeprefix("Value error, "), hint)


def _pydantic_problems(exc: ValidationError, root: type[BaseModel], shown: str
                       ) -> list[Problem]:
    out: list[Problem] = []
    seen: set[str] = set()
    errors = exc.errors(include_url=False)
    # 'adress' unknown and 'address' missing are one mistake: report the misspelling only
    misspelt: set[tuple[Any, ...]] = set()
    for err in errors:
        if err["type"] == "extra_forbidden" and err["loc"]:
            owner = _resolve_model(root, err["loc"])
            if owner is not None:
                for close in difflib.get_close_matches(str(err["loc"][-1]),
                                                       list(owner.model_fields), 1, 0.6):
                    misspelt.add((*err["loc"][:-1], close))
    for err in errors:
        if err["type"] == "missing" and tuple(err["loc"]) in misspelt:
            continue
        problem = _translate(err, root, shown)
        # unions report one error per branch; one line per key is enough
        key = f"{problem.key_path}|{problem.message}"
        if key not in seen:
            seen.add(key)
            out.append(problem)
    return out


# --------------------------------------------------------------------------- maps


_S7_LIKE = re.compile(r"^%?(DB\d|[MIQEA][BWDX]?\d)", re.IGNORECASE)


def infer_protocol(addresses: Iterable[str]) -> Protocol:
    """The protocol a map's addresses imply: s7 when most look like Siemens notation."""
    s7 = modbus = 0
    for text in addresses:
        if _S7_LIKE.match(text.strip()):
            s7 += 1
        else:
            modbus += 1
    return "s7" if s7 > modbus else "modbus-tcp"


def _parse_address(text: str, protocol: Protocol) -> Address:
    from protocols.address import parse_address

    return parse_address(text, protocol)


def _check_fits(spec: TagSpec) -> None:
    from protocols.address import check_fits

    check_fits(spec)


def _extent(spec: TagSpec) -> tuple[str, int, int, int]:
    from protocols.address import tag_extent

    return tag_extent(spec)


def _address_bit(addr: Address) -> int | None:
    return addr.bit


def _check_tag(name: str, tag: TagConfig, map_cfg: MapConfig | None, protocol: Protocol,
               shown: str, context: str) -> tuple[TagSpec | None, list[Problem]]:
    """Everything about one tag that pydantic cannot see. Returns its spec when usable."""
    problems: list[Problem] = []
    base = f"tags.{_toml_key(name)}"
    dtype = DataType(tag.type)

    # role rules
    if tag.role == "counter":
        if not dtype.is_unsigned_int:
            problems.append(Problem(
                shown, f"{base}.type",
                f"a counter must be an unsigned integer, not {tag.type}",
                "use uint16 or uint32"))
        if tag.counts is None:
            problems.append(Problem(shown, f"{base}.counts",
                                    "a counter needs to say what it counts",
                                    'e.g. counts = "good" (good | scrap | total)'))
    elif tag.counts is not None:
        problems.append(Problem(shown, f"{base}.counts",
                                f"counts is only for role = \"counter\", this tag is {tag.role}",
                                'remove it or set role = "counter"'))
    for table, role, example in (("states", "state", '{ 0 = "off", 1 = "idle", 2 = "running" }'),
                                 ("alarms", "alarm", '{ 1001 = "Spindle overload" }')):
        value = getattr(tag, table)
        if tag.role == role:
            if not value:
                article = "an" if role[0] in "aeiou" else "a"
                problems.append(Problem(shown, f"{base}.{table}",
                                        f"{article} {role} tag needs {article} {table} table",
                                        f"e.g. {table} = {example}"))
            if not (dtype.is_integer or dtype is DataType.BOOL):
                problems.append(Problem(shown, f"{base}.type",
                                        f"{'an' if role == 'alarm' else 'a'} {role} tag must "
                                        f"be an integer, not {tag.type}",
                                        "use uint16"))
        elif value is not None:
            problems.append(Problem(shown, f"{base}.{table}",
                                    f"{table} is only for role = \"{role}\", this tag is "
                                    f"{tag.role}", f'set role = "{role}" or remove it'))
    if tag.limits is not None:
        lo, hi = tag.limits
        if lo >= hi:
            problems.append(Problem(shown, f"{base}.limits",
                                    f"lo must be below hi, got [{lo:g}, {hi:g}]",
                                    "e.g. limits = [10.0, 65.0]"))
        if tag.role != "parameter":
            problems.append(Problem(shown, f"{base}.limits",
                                    f"limits are only for role = \"parameter\", this tag is "
                                    f"{tag.role}", 'set role = "parameter"'))
    if tag.deadband is not None and tag.role not in ("parameter", "sample"):
        problems.append(Problem(shown, f"{base}.deadband",
                                f"deadband is only for parameters and samples, this tag is "
                                f"{tag.role}", "remove it"))
    if tag.scale == 0:
        problems.append(Problem(shown, f"{base}.scale", "scale 0 makes every value 0",
                                "e.g. scale = 0.1"))

    # the address and the type
    try:
        addr = _parse_address(tag.address, protocol)
    except AddressError as exc:
        message = exc.message if repr(tag.address) in exc.message else (
            f"{tag.address!r}: {exc.message}")
        problems.append(Problem(shown, f"{base}.address", message + context,
                                f"e.g. {exc.example}" if exc.example else None))
        return None, problems

    length = tag.length
    if dtype is DataType.STRING:
        s7_len = addr.string_len if isinstance(addr, S7Address) else None
        if length is None and s7_len is None:
            problems.append(Problem(shown, f"{base}.length",
                                    "a string needs a length in characters",
                                    "e.g. length = 16"))
            return None, problems
        if length is None:
            length = s7_len
    elif length is not None:
        problems.append(Problem(shown, f"{base}.length",
                                f"length is only for strings, this tag is {tag.type}",
                                "remove it"))
        length = None
    default_bo = map_cfg.byte_order if map_cfg else "big"
    default_wo = map_cfg.word_order if map_cfg else "big"
    spec = TagSpec(
        name=name, address=addr, type=dtype, length=length,
        byte_order=Order(tag.byte_order or default_bo),
        word_order=Order(tag.word_order or default_wo),
        scale=tag.scale, offset=tag.offset,
    )
    try:
        _check_fits(spec)
    except AddressError as exc:
        problems.append(Problem(shown, f"{base}.address", exc.message + context,
                                f"e.g. {exc.example}" if exc.example else None))
        return None, problems
    return (spec if not problems else None), problems


def _overlaps(specs: Sequence[TagSpec], shown: str) -> list[Problem]:
    """Two tags reading the same register/byte, except bit tags on different bits."""
    problems: list[Problem] = []
    extents: list[tuple[str, int, int, int, TagSpec]] = []
    for spec in specs:
        area, db, start, count = _extent(spec)
        extents.append((area, db, start, start + count, spec))
    extents.sort(key=lambda e: (e[0], e[1], e[2], e[3]))
    reported: set[str] = set()
    for i, (area, db, start, end, spec) in enumerate(extents):
        for other_area, other_db, other_start, other_end, other in extents[i + 1:]:
            if (other_area, other_db) != (area, db) or other_start >= end:
                break
            if other_end <= start:
                continue
            a_bit, b_bit = _address_bit(spec.address), _address_bit(other.address)
            both_bits = (spec.type is DataType.BOOL and other.type is DataType.BOOL
                         and a_bit is not None and b_bit is not None)
            if both_bits and a_bit != b_bit:
                continue
            if other.name in reported:
                continue
            reported.add(other.name)
            problems.append(Problem(
                shown, f"tags.{_toml_key(other.name)}.address",
                f"{other.address} ({other.type.value}) overlaps tag {spec.name!r} at "
                f"{spec.address} ({spec.type.value})",
                "give each tag its own registers/bytes"))
    return problems


def _tag_order(problems: list[Problem], names: Sequence[str]) -> list[Problem]:
    """Sort problems by the order of the tags in the file, then key."""
    rank = {f"tags.{_toml_key(n)}": i for i, n in enumerate(names)}

    def key(p: Problem) -> tuple[int, str]:
        head = ".".join(p.key_path.split(".")[:2])
        return (rank.get(head, -1), "")

    return sorted(problems, key=key)


def _validate_map(raw: dict[str, Any], protocol: Protocol, shown: str, context: str = ""
                  ) -> tuple[MapConfig | None, tuple[TagSpec, ...], list[Problem]]:
    problems: list[Problem] = []
    config: MapConfig | None = None
    try:
        config = MapConfig.model_validate(raw)
    except ValidationError as exc:
        problems.extend(_pydantic_problems(exc, MapConfig, shown))
    header: MapConfig | None = config
    if header is None:
        # defaults for the tags even when the map header is broken
        try:
            header = MapConfig.model_validate({k: v for k, v in raw.items() if k != "tags"})
        except ValidationError:
            header = None
    tags_raw = raw.get("tags", {})
    specs: list[TagSpec] = []
    names: list[str] = []
    if isinstance(tags_raw, dict):
        names = list(tags_raw)
        for name, tag_raw in tags_raw.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                problems.append(Problem(shown, f"tags.{_toml_key(name)}",
                                        f"tag name {name!r} is not a plain snake_case name",
                                        "e.g. [tags.zone1_temp]"))
            skip: set[str] = set()
            if config is not None:
                tag = config.tags[name]
            else:
                # already reported against the whole map; check the rest of the tag
                # without its broken keys so its other problems show up too
                maybe, skip = _tag_without_broken_keys(tag_raw)
                if maybe is None:
                    continue
                tag = maybe
            spec, tag_problems = _check_tag(name, tag, header, protocol, shown, context)
            if skip:
                spec = None
                tag_problems = [p for p in tag_problems
                                if p.key_path.rsplit(".", 1)[-1] not in skip]
            problems.extend(tag_problems)
            if spec is not None:
                specs.append(spec)
    if not names and config is not None:
        problems.append(Problem(shown, "tags", "the map has no tags",
                                'e.g. [tags.part_count] address = "HR100"'))
    problems.extend(_overlaps(specs, shown))
    problems = _tag_order(problems, names)
    return (config if not problems else None), tuple(specs), problems


def _without_broken_keys(model: type[_M], raw: Any, essential: set[str]
                         ) -> tuple[_M | None, set[str]]:
    """Validate after dropping the keys pydantic rejected (their problems are reported
    already), so the rest of the table can still be checked. None when an essential key
    is broken or it still fails."""
    if not isinstance(raw, dict):
        return None, set()
    try:
        return model.model_validate(raw), set()
    except ValidationError as exc:
        broken = {str(e["loc"][0]) for e in exc.errors() if e["loc"]}
    if broken & essential:
        return None, broken
    try:
        return model.model_validate({k: v for k, v in raw.items() if k not in broken}), broken
    except ValidationError:
        return None, broken


def _tag_without_broken_keys(tag_raw: Any) -> tuple[TagConfig | None, set[str]]:
    return _without_broken_keys(TagConfig, tag_raw, {"address", "type"})


def compile_map(map_config: MapConfig, protocol: Protocol, *, file: str = "<map>"
                ) -> tuple[TagSpec, ...]:
    """The map's tags as TagSpecs for ``protocol``, in the map's order.

    Pure; raises ConfigError with every problem (bad addresses, overlaps, roles).
    """
    raw = map_config.model_dump(exclude_none=True)
    _, specs, problems = _validate_map(raw, protocol, file)
    if problems:
        raise ConfigError(problems)
    return specs


def parse_map_text(text: str, protocol: Protocol | None, shown: str
                   ) -> tuple[MapConfig | None, Protocol, tuple[TagSpec, ...], list[Problem]]:
    """Validate map TOML text. Returns (config or None, protocol used, specs, problems)."""
    raw, problems = _parse_toml(text, shown)
    if raw is None:
        return None, protocol or "modbus-tcp", (), problems
    return _validate_raw_map(raw, protocol, shown)


def _validate_raw_map(raw: dict[str, Any], protocol: Protocol | None, shown: str,
                      context: str = ""
                      ) -> tuple[MapConfig | None, Protocol, tuple[TagSpec, ...], list[Problem]]:
    if protocol is None:
        protocol = infer_protocol(_raw_addresses(raw))
    config, specs, problems = _validate_map(raw, protocol, shown, context)
    return config, protocol, specs, problems


def _raw_addresses(raw: Mapping[str, Any]) -> list[str]:
    tags = raw.get("tags")
    if not isinstance(tags, dict):
        return []
    return [t["address"] for t in tags.values()
            if isinstance(t, dict) and isinstance(t.get("address"), str)]


def load_map(path: str | os.PathLike[str], protocol: Protocol | None = None) -> LoadedMap:
    """Load and validate one map for ``protocol`` (None: the protocol its addresses imply).

    Raises ConfigError listing every problem of the file.
    """
    p = Path(path)
    shown = display_path(p)
    raw, problems = _read_toml(p, shown)
    if raw is None:
        raise ConfigError(problems)
    config, used, specs, problems = _validate_raw_map(raw, protocol, shown)
    if problems or config is None:
        raise ConfigError(problems)
    return LoadedMap(path=p, protocol=used, config=config, specs=specs)


def detect_kind(raw: Mapping[str, Any]) -> Literal["gateway", "map"] | None:
    """Which kind of file parsed TOML is: a gateway config, a map, or neither."""
    if any(k in raw for k in ("gateway", "devices", "cloud")):
        return "gateway"
    if any(k in raw for k in ("tags", "model")):
        return "map"
    return None


# --------------------------------------------------------------------------- gateway


def _device_problems(devices: Sequence[tuple[int, DeviceConfig]], shown: str
                     ) -> list[Problem]:
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for i, dev in devices:
        base = f"devices[{i}]"
        if dev.name in seen:
            problems.append(Problem(shown, f"{base}.name",
                                    f"device name {dev.name!r} is already used by "
                                    f"devices[{seen[dev.name]}]", "give every device its own name"))
        else:
            seen[dev.name] = i
        if dev.protocol in ("modbus-tcp", "s7") and not dev.host:
            problems.append(Problem(shown, f"{base}.host",
                                    f"device {dev.name!r} ({dev.protocol}) needs a host",
                                    'e.g. host = "192.0.2.23"'))
        if dev.protocol == "modbus-rtu" and not dev.serial_port:
            problems.append(Problem(shown, f"{base}.serial_port",
                                    f"device {dev.name!r} (modbus-rtu) needs a serial port",
                                    'e.g. serial_port = "/dev/ttyUSB0"'))
        if dev.protocol == "s7":
            for key in ("max_registers", "max_bits"):
                if getattr(dev, key) is not None:
                    problems.append(Problem(shown, f"{base}.{key}",
                                            f"{key} is a Modbus limit; device {dev.name!r} is s7",
                                            "remove it"))
    return problems


def load_gateway(path: str | os.PathLike[str]) -> LoadedGateway:
    """Load gateway.toml and every map its devices name, all validated.

    Map paths are relative to the gateway file's folder. Devices that name the same map
    with the same protocol share one LoadedMap object. Raises ConfigError listing every
    problem of the gateway file and of its maps.
    """
    p = Path(path)
    shown = display_path(p)
    raw, problems = _read_toml(p, shown)
    if raw is None:
        raise ConfigError(problems)
    config: GatewayConfig | None = None
    try:
        config = GatewayConfig.model_validate(raw)
    except ValidationError as exc:
        problems.extend(_pydantic_problems(exc, GatewayConfig, shown))

    # devices are checked one by one so a broken one does not hide the others' maps
    devices: list[tuple[int, DeviceConfig]] = []
    if config is not None:
        devices = list(enumerate(config.devices))
        if config.cloud.transport == "mqtt" and config.mqtt is None:
            problems.append(Problem(shown, "mqtt", 'cloud.transport = "mqtt" needs a [mqtt] table',
                                    'e.g. [mqtt] broker = "mqtt://broker.local:1883"'))
        if not config.devices:
            problems.append(Problem(shown, "devices", "no devices",
                                    'e.g. [[devices]] name = "cnc-03" ...'))
    else:
        raw_devices = raw.get("devices")
        if isinstance(raw_devices, list):
            for i, item in enumerate(raw_devices):
                dev, _ = _without_broken_keys(DeviceConfig, item, {"name", "map", "protocol"})
                if dev is not None:
                    devices.append((i, dev))
    problems.extend(_device_problems(devices, shown))

    base_dir = p.parent
    maps: dict[tuple[Path, str], LoadedMap] = {}
    failed: dict[tuple[Path, str], bool] = {}
    loaded: list[LoadedDevice] = []
    for i, dev in devices:
        map_path = base_dir / dev.map
        key = (map_path.resolve(), protocol_family(dev.protocol))
        if key in maps:
            loaded.append(LoadedDevice(dev, maps[key]))
            continue
        if key in failed:
            continue
        map_shown = display_path(map_path)
        if not map_path.is_file():
            problems.append(Problem(shown, f"devices[{i}].map",
                                    f"device {dev.name!r}: map file {map_shown} not found",
                                    f"map paths are relative to the folder of {shown}"))
            failed[key] = True
            continue
        map_raw, map_problems = _read_toml(map_path, map_shown)
        if map_raw is None:
            problems.extend(map_problems)
            failed[key] = True
            continue
        protocol: Protocol = dev.protocol
        implied = infer_protocol(_raw_addresses(map_raw))
        if protocol_family(implied) != protocol_family(protocol):
            # clean under its own protocol? then one line naming both files is clearer
            _, _, own_problems = _validate_map(map_raw, implied, map_shown)
            if not own_problems:
                kind = "S7" if implied == "s7" else "Modbus"
                problems.append(Problem(
                    shown, f"devices[{i}].map",
                    f"device {dev.name!r} is {protocol} but {map_shown} has {kind} addresses",
                    f"use a map with {'S7' if protocol == 's7' else 'Modbus'} addresses"))
                failed[key] = True
                continue
        context = f" (map used by {protocol} device {dev.name!r} in {shown})"
        map_cfg, specs, map_problems = _validate_map(map_raw, protocol, map_shown, context)
        if map_problems or map_cfg is None:
            problems.extend(map_problems)
            failed[key] = True
            continue
        lm = LoadedMap(path=map_path, protocol=protocol, config=map_cfg, specs=specs)
        maps[key] = lm
        loaded.append(LoadedDevice(dev, lm))
    if problems or config is None:
        raise ConfigError(problems)
    return LoadedGateway(path=p, config=config, devices=tuple(loaded), maps=maps)
