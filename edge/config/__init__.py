"""gateway.toml and register maps: the pydantic models, loading and validation.

Validation never guesses and never stops at the first mistake: every problem of a file
is collected and reported as one line ``FILE: KEY.PATH: what is wrong (example of right)``.

Public surface::

    load_gateway(path) -> LoadedGateway       raises ConfigError
    load_runnable(path) -> LoadedGateway      load_gateway + this machine can run it
    load_map(path, protocol=None) -> LoadedMap raises ConfigError
    compile_map(map, protocol, file=...) -> tuple[TagSpec, ...]  raises ConfigError
    ConfigError(problems), Problem(file, key_path, message, hint)

Pydantic checks the shape of a file (keys, types, ranges); the checks that need more than
one key or the protocol (addresses, overlaps, roles) run afterwards in plain code, per tag,
so one broken tag does not hide the problems of the others.

The modules, each importing only those above it (import from this package, not from them):

- ``problems``: Problem, ConfigError, display_path (how a file is named in a problem);
- ``toml``: reading TOML with syntax errors as problems, writing TOML keys and values;
- ``shape``: the strict model settings and pydantic's errors worded as problems;
- ``map_models``: MapConfig and TagConfig; ``gateway_models``: GatewayConfig and its
  sections, DeviceConfig, and the limits the buffer and the cloud set;
- ``map_checks``: a map's checks beyond its shape, compile_map, infer_protocol;
- ``loading``: load_map, load_gateway (with the device checks), the Loaded* results;
- ``runnable``: load_runnable, run_problems: what ``validate`` and ``run`` both check of
  this machine once the file is valid (the token file, the data dir).

``toml_key``, ``toml_value`` and ``validate_raw_map`` are here for edge.csv_import, which
writes register maps and checks them before it does.
"""

from __future__ import annotations

from edge.config.gateway_models import (
    MAX_DEVICE_NAME,
    MAX_GATEWAY_ID,
    MIN_BUFFER_MB,
    MIN_POLL_MS,
    CloudConfig,
    DeviceConfig,
    GatewayConfig,
    GatewaySection,
    MqttConfig,
)
from edge.config.loading import (
    LoadedDevice,
    LoadedGateway,
    LoadedMap,
    detect_kind,
    load_gateway,
    load_map,
    protocol_family,
)
from edge.config.map_checks import compile_map, infer_protocol, parse_map_text, validate_raw_map
from edge.config.map_models import MapConfig, TagConfig
from edge.config.problems import ConfigError, Problem, display_path
from edge.config.runnable import load_runnable, run_problems
from edge.config.toml import read_toml, toml_key, toml_value

__all__ = [
    "MAX_DEVICE_NAME",
    "MAX_GATEWAY_ID",
    "MIN_BUFFER_MB",
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
    "display_path",
    "infer_protocol",
    "load_gateway",
    "load_map",
    "load_runnable",
    "parse_map_text",
    "protocol_family",
    "read_toml",
    "run_problems",
    "toml_key",
    "toml_value",
    "validate_raw_map",
]
