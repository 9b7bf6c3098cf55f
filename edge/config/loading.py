"""Loading files: one register map, or gateway.toml with every map its devices name, read,
checked and compiled; what a loaded file is (LoadedMap, LoadedDevice, LoadedGateway).

Loading raises ConfigError listing every problem of the file (and, for a gateway, of its
maps), never only the first.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from edge.config.gateway_models import DeviceConfig, GatewayConfig
from edge.config.map_checks import infer_protocol, raw_addresses, validate_map, validate_raw_map
from edge.config.map_models import MapConfig, TagConfig
from edge.config.problems import ConfigError, Problem, display_path
from edge.config.shape import pydantic_problems, without_broken_keys
from edge.config.toml import read_toml
from protocols.driver import Endpoint
from protocols.model import PlanLimits, Protocol, TagSpec

__all__ = [
    "LoadedDevice",
    "LoadedGateway",
    "LoadedMap",
    "detect_kind",
    "load_gateway",
    "load_map",
    "protocol_family",
]


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


def protocol_family(protocol: str) -> Literal["modbus", "s7"]:
    """The address family of ``protocol`` (modbus-tcp and modbus-rtu are both "modbus");
    devices naming the same map in one family share one LoadedMap."""
    return "s7" if protocol == "s7" else "modbus"


def load_map(path: str | os.PathLike[str], protocol: Protocol | None = None) -> LoadedMap:
    """Load and validate one map for ``protocol`` (None: the protocol its addresses imply).

    Raises ConfigError listing every problem of the file.
    """
    p = Path(path)
    shown = display_path(p)
    raw, problems = read_toml(p, shown)
    if raw is None:
        raise ConfigError(problems)
    config, used, specs, problems = validate_raw_map(raw, protocol, shown)
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
    raw, problems = read_toml(p, shown)
    if raw is None:
        raise ConfigError(problems)
    config: GatewayConfig | None = None
    try:
        config = GatewayConfig.model_validate(raw)
    except ValidationError as exc:
        problems.extend(pydantic_problems(exc, GatewayConfig, shown))

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
                dev, _ = without_broken_keys(DeviceConfig, item, {"name", "map", "protocol"})
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
        map_raw, map_problems = read_toml(map_path, map_shown)
        if map_raw is None:
            problems.extend(map_problems)
            failed[key] = True
            continue
        protocol: Protocol = dev.protocol
        implied = infer_protocol(raw_addresses(map_raw))
        if protocol_family(implied) != protocol_family(protocol):
            # clean under its own protocol? then one line naming both files is clearer
            _, _, own_problems = validate_map(map_raw, implied, map_shown)
            if not own_problems:
                kind = "S7" if implied == "s7" else "Modbus"
                problems.append(Problem(
                    shown, f"devices[{i}].map",
                    f"device {dev.name!r} is {protocol} but {map_shown} has {kind} addresses",
                    f"use a map with {'S7' if protocol == 's7' else 'Modbus'} addresses"))
                failed[key] = True
                continue
        context = f" (map used by {protocol} device {dev.name!r} in {shown})"
        map_cfg, specs, map_problems = validate_map(map_raw, protocol, map_shown, context)
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
