"""The gateway.toml models: the gateway itself, its cloud and MQTT uplinks, and the
devices (machines) it polls.

These models check the shape of the file; edge.config.loading checks what needs more than
one key (unique device names, a host or serial port per protocol, no Modbus limits on an
S7 device, the [mqtt] table, the maps). Their field descriptions and examples are the
generated JSON Schema (config/schema/gateway.schema.json) and the examples in problems.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, field_validator

from edge.config.shape import STRICT
from protocols.driver import Endpoint
from protocols.model import PlanLimits

__all__ = [
    "DEFAULT_PORTS",
    "MAX_DEVICE_NAME",
    "MAX_GATEWAY_ID",
    "MIN_BUFFER_MB",
    "MIN_POLL_MS",
    "CloudConfig",
    "DeviceConfig",
    "GatewayConfig",
    "GatewaySection",
    "MqttConfig",
    "ProtocolName",
]

ProtocolName = Literal["modbus-tcp", "modbus-rtu", "s7"]
DEFAULT_PORTS: dict[str, int] = {"modbus-tcp": 502, "s7": 102}
MIN_POLL_MS = 100
# Limits the buffer and the cloud set (buffer.records MAX_GATEWAY_ID / MAX_DEVICE_NAME, the
# cloud's String(64)/String(128) columns; buffer.store MIN_MAX_BYTES). Written out rather
# than imported so that `validate` does not load the uplinks; tests/unit/test_config.py
# checks they agree.
MAX_GATEWAY_ID = 64
MAX_DEVICE_NAME = 128
MIN_BUFFER_MB = 2


class GatewaySection(BaseModel):
    """The gateway itself."""

    model_config = STRICT

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

    @field_validator("status_listen")
    @classmethod
    def _port_in_range(cls, value: str) -> str:
        port = int(value.rpartition(":")[2])
        if port > 65535:
            raise ValueError(f"port {port} of {value!r} is beyond 65535")
        return value


class MqttConfig(BaseModel):
    """The MQTT uplink (when cloud.transport = "mqtt")."""

    model_config = STRICT

    broker: str = Field(
        description="Broker URL.", examples=["mqtt://broker.example.com:1883"])

    @field_validator("broker")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        # What buffer.records.parse_broker_url (the MQTT uplink) accepts, written out so
        # that validate does not load the uplinks; tests/unit/test_config_runnable.py
        # checks they agree.
        try:
            parts = urlsplit(value)
            ok = parts.scheme in ("mqtt", "mqtts") and bool(parts.hostname)
            parts.port  # noqa: B018 (raises ValueError for a port beyond 65535)
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"{value!r} is not a broker URL (mqtt://host:1883 or "
                             "mqtts://host:8883)")
        return value
    confirm_timeout_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=15.0,
        description=("Seconds to wait for the cloud's confirmation (plantsync/v1/<gateway>/acks) "
                     "of a published batch before publishing it again. Records go to "
                     "plantsync/v1/<gateway>/records; the cloud drops what it already has."),
        examples=[15.0],
    )


class CloudConfig(BaseModel):
    """Where the records go."""

    model_config = STRICT

    url: str = Field(
        description='"auto" (find the cloud by zeroconf) or its base URL.',
        examples=["auto", "https://mes.example.com"],
    )

    @field_validator("url")
    @classmethod
    def _http_or_auto(cls, value: str) -> str:
        # The uplinks speak HTTP(S) only; an ftp:// or a bare host would pass here and be
        # refused by the running daemon, so it is refused here, where validate sees it.
        if value == "auto":
            return value
        try:
            parts = urlsplit(value)
            ok = parts.scheme in ("http", "https") and bool(parts.hostname)
            parts.port  # noqa: B018 (raises ValueError for a port beyond 65535)
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"{value!r} is not an http(s) URL: the gateway sends over "
                             'http:// or https:// (or finds the cloud itself with "auto")')
        return value
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

    model_config = STRICT

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

    model_config = STRICT

    gateway: GatewaySection = Field(description="The gateway itself.")
    cloud: CloudConfig = Field(description="Where the records go.")
    mqtt: MqttConfig | None = Field(
        default=None, description='The MQTT uplink, when cloud.transport = "mqtt".')
    devices: list[DeviceConfig] = Field(
        default_factory=list, description="The machines ([[devices]], one table each).")
