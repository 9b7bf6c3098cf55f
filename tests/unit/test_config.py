"""Loading and validating gateway.toml and register maps (edge.config)."""

from __future__ import annotations

from pathlib import Path

import pytest

from buffer.store import Outbox
from edge.config import (
    MAX_DEVICE_NAME,
    MAX_GATEWAY_ID,
    MIN_BUFFER_MB,
    ConfigError,
    MapConfig,
    Problem,
    compile_map,
    infer_protocol,
    load_gateway,
    load_map,
)
from protocols.model import DataType, ModbusAddress, Order, PlanLimits, S7Address

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config"

GATEWAY_HEAD = """
[gateway]
id = "gw-t"
data_dir = "/tmp/gw-t"

[cloud]
url = "auto"
token_file = "/tmp/gw-t/token"
"""

MODBUS_MAP = """
model = "m"
[tags.parts]
address = "HR0"
type = "uint32"
role = "counter"
counts = "good"
"""

S7_MAP = """
model = "s"
[tags.parts]
address = "DB1.DBD0"
type = "uint32"
role = "counter"
counts = "good"
"""


def _write(tmp_path: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _device(name: str, map_: str, protocol: str, **extra: object) -> str:
    lines = [f'\n[[devices]]\nname = "{name}"\nmap = "{map_}"\nprotocol = "{protocol}"',
             'host = "127.0.0.1"']
    lines += [f"{k} = {v!r}".replace("'", '"') for k, v in extra.items()]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("path", sorted((CONFIG / "maps").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_map_is_valid(path: Path) -> None:
    loaded = load_map(path)
    roles = {t.role for t in loaded.tags.values()}
    assert {"counter", "state", "alarm", "parameter", "sample"} <= roles
    counts = {t.counts for t in loaded.tags.values() if t.role == "counter"}
    assert {"good", "scrap"} <= counts
    for tag in loaded.tags.values():
        if tag.role == "counter":
            assert DataType(tag.type) is DataType.UINT32
        if tag.role == "parameter":
            assert tag.limits is not None and tag.unit
    assert any(t.type == "string" for t in loaded.tags.values())


def test_the_example_gateway_is_valid_and_shares_maps() -> None:
    gw = load_gateway(CONFIG / "gateway.example.toml")
    names = [d.name for d in gw.devices]
    assert names == ["cnc-01", "cnc-02", "imm-01", "imm-02"]
    assert gw.device("cnc-01").map is gw.device("cnc-02").map
    assert gw.device("imm-01").map is gw.device("imm-02").map
    assert len(gw.maps) == 2
    assert all(d.config.host == "127.0.0.1" for d in gw.devices)
    with pytest.raises(KeyError, match="cnc-01"):
        gw.device("nope")


def test_map_paths_resolve_against_the_gateway_folder(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path, {"etc/maps/m.toml": MODBUS_MAP,
                      "etc/gw.toml": GATEWAY_HEAD + _device("cnc-01", "maps/m.toml",
                                                            "modbus-tcp")})
    monkeypatch.chdir(tmp_path)
    gw = load_gateway("etc/gw.toml")
    assert gw.device("cnc-01").map.path == Path("etc/maps/m.toml")


def test_device_defaults_and_endpoint(tmp_path: Path) -> None:
    _write(tmp_path, {"m.toml": MODBUS_MAP, "s.toml": S7_MAP,
                      "gw.toml": GATEWAY_HEAD + _device("cnc", "m.toml", "modbus-tcp",
                                                        max_registers=60, timeout_ms=250)
                      + _device("imm", "s.toml", "s7", rack=0, slot=2)})
    gw = load_gateway(tmp_path / "gw.toml")
    cnc, imm = gw.device("cnc"), gw.device("imm")
    assert cnc.endpoint.port == 502 and imm.endpoint.port == 102
    assert cnc.endpoint.timeout_s == 0.25
    assert cnc.limits.max_registers == 60 and cnc.limits.max_bits == 2000
    assert imm.endpoint.slot == 2 and imm.map.protocol == "s7"
    assert gw.config.gateway.status_listen == "127.0.0.1:8470"
    assert gw.config.gateway.buffer_synchronous == "FULL"


def test_same_map_different_protocol_families_are_different_objects(tmp_path: Path) -> None:
    _write(tmp_path, {"m.toml": MODBUS_MAP,
                      "gw.toml": GATEWAY_HEAD + _device("a", "m.toml", "modbus-tcp")
                      + _device("b", "m.toml", "modbus-tcp", port=5021)})
    gw = load_gateway(tmp_path / "gw.toml")
    assert gw.device("a").map is gw.device("b").map


def test_problems_of_gateway_and_maps_are_all_reported(tmp_path: Path) -> None:
    bad_map = MODBUS_MAP.replace('type = "uint32"', 'type = "int32"')
    _write(tmp_path, {"m.toml": bad_map,
                      "gw.toml": GATEWAY_HEAD + _device("a", "m.toml", "modbus-tcp", poll_ms=5)
                      + _device("a", "missing.toml", "modbus-tcp")})
    with pytest.raises(ConfigError) as info:
        load_gateway(tmp_path / "gw.toml")
    keys = [(Path(p.file).name, p.key_path) for p in info.value.problems]
    assert ("gw.toml", "devices[0].poll_ms") in keys
    # the poll_ms error stops the gateway model; devices are still checked one by one
    assert ("m.toml", "tags.parts.type") in keys


def test_duplicate_names_and_missing_map_together(tmp_path: Path) -> None:
    _write(tmp_path, {"m.toml": MODBUS_MAP,
                      "gw.toml": GATEWAY_HEAD + _device("a", "m.toml", "modbus-tcp")
                      + _device("a", "missing.toml", "modbus-tcp")})
    with pytest.raises(ConfigError) as info:
        load_gateway(tmp_path / "gw.toml")
    text = str(info.value)
    assert "devices[1].name: device name 'a' is already used by devices[0]" in text
    assert "devices[1].map: device 'a': map file" in text and "missing.toml not found" in text


def test_modbus_map_on_s7_device_names_both_files(tmp_path: Path) -> None:
    _write(tmp_path, {"m.toml": MODBUS_MAP,
                      "gw.toml": GATEWAY_HEAD + _device("imm", "m.toml", "s7")})
    with pytest.raises(ConfigError) as info:
        load_gateway(tmp_path / "gw.toml")
    (problem,) = info.value.problems
    assert problem.file.endswith("gw.toml") and "m.toml" in problem.message
    assert "s7" in problem.message and "Modbus" in problem.message


def test_mixed_map_on_s7_device_reports_addresses_with_device(tmp_path: Path) -> None:
    mixed = S7_MAP + '[tags.mode]\naddress = "HR4"\ntype = "uint16"\n'
    _write(tmp_path, {"m.toml": mixed, "gw.toml": GATEWAY_HEAD + _device("imm", "m.toml", "s7")})
    with pytest.raises(ConfigError) as info:
        load_gateway(tmp_path / "gw.toml")
    (problem,) = info.value.problems
    assert problem.key_path == "tags.mode.address"
    assert "device 'imm'" in problem.message and "gw.toml" in problem.message


def test_rtu_and_tcp_requirements(tmp_path: Path) -> None:
    gw_text = GATEWAY_HEAD + (
        '\n[[devices]]\nname = "rtu"\nmap = "m.toml"\nprotocol = "modbus-rtu"\n'
        '\n[[devices]]\nname = "tcp"\nmap = "m.toml"\nprotocol = "modbus-tcp"\n')
    _write(tmp_path, {"m.toml": MODBUS_MAP, "gw.toml": gw_text})
    with pytest.raises(ConfigError) as info:
        load_gateway(tmp_path / "gw.toml")
    keys = {p.key_path for p in info.value.problems}
    assert keys == {"devices[0].serial_port", "devices[1].host"}


def test_problem_rendering() -> None:
    p = Problem("maps/x.toml", "tags.t.address", "'DB1.DBX4' is a bit address but type is "
                "float32", "e.g. DB1.DBD4")
    assert str(p) == ("maps/x.toml: tags.t.address: 'DB1.DBX4' is a bit address but type is "
                      "float32 (e.g. DB1.DBD4)")
    assert str(Problem("x.toml", "", "file not found")) == "x.toml: file not found"
    err = ConfigError([p, p])
    assert str(err).count("\n") == 1


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_map(tmp_path / "nope.toml")


def test_compile_map_orders_and_string_lengths() -> None:
    cfg = MapConfig.model_validate({
        "model": "m", "word_order": "little",
        "tags": {"t": {"address": "40001", "type": "float32", "byte_order": "little"},
                 "name": {"address": "HR10", "type": "string", "length": 7}}})
    t, name = compile_map(cfg, "modbus-tcp")
    assert t.address == ModbusAddress("HR", 0)
    assert (t.byte_order, t.word_order) == (Order.LITTLE, Order.LITTLE)
    assert name.length == 7
    s7 = MapConfig.model_validate({"model": "m", "tags": {
        "mold": {"address": "DB1.STRING44.20", "type": "string"}}})
    (mold,) = compile_map(s7, "s7")
    assert isinstance(mold.address, S7Address) and mold.length == 20


def test_compile_map_raises_with_every_problem() -> None:
    cfg = MapConfig.model_validate({"model": "m", "tags": {
        "a": {"address": "HR0", "type": "uint32"}, "b": {"address": "HR1", "type": "uint16"},
        "c": {"address": "DB1.DBW0", "type": "uint16"}}})
    with pytest.raises(ConfigError) as info:
        compile_map(cfg, "modbus-tcp", file="maps/x.toml")
    assert [p.key_path for p in info.value.problems] == ["tags.b.address", "tags.c.address"]
    assert all(p.file == "maps/x.toml" for p in info.value.problems)


def test_infer_protocol() -> None:
    assert infer_protocol(["DB1.DBW0", "MW10", "HR0"]) == "s7"
    assert infer_protocol(["40001", "HR3"]) == "modbus-tcp"
    assert infer_protocol([]) == "modbus-tcp"


def test_parameter_keys_on_wrong_roles(tmp_path: Path) -> None:
    _write(tmp_path, {"m.toml": """
model = "m"
[tags.t]
address = "HR0"
type = "uint16"
role = "sample"
limits = [1.0, 2.0]
states = { 0 = "off" }
counts = "good"
length = 4
"""})
    with pytest.raises(ConfigError) as info:
        load_map(tmp_path / "m.toml")
    keys = sorted(p.key_path for p in info.value.problems)
    assert keys == ["tags.t.counts", "tags.t.length", "tags.t.limits", "tags.t.states"]


def test_strict_types_reject_quoted_numbers_and_floats_for_ints(tmp_path: Path) -> None:
    _write(tmp_path, {"m.toml": MODBUS_MAP, "gw.toml": GATEWAY_HEAD.replace(
        'data_dir = "/tmp/gw-t"', 'data_dir = "/tmp/gw-t"\nbuffer_max_mb = 1.5')
        + _device("a", "m.toml", "modbus-tcp", port="502")})
    with pytest.raises(ConfigError) as info:
        load_gateway(tmp_path / "gw.toml")
    keys = {p.key_path for p in info.value.problems}
    assert keys == {"gateway.buffer_max_mb", "devices[0].port"}


def _one_problem(tmp_path: Path, gateway_text: str) -> Problem:
    _write(tmp_path, {"m.toml": MODBUS_MAP, "gw.toml": gateway_text})
    with pytest.raises(ConfigError) as info:
        load_gateway(tmp_path / "gw.toml")
    (problem,) = info.value.problems
    return problem


def test_max_gap_takes_the_builtin_default_explicitly(tmp_path: Path) -> None:
    # 125 is PlanLimits' own default (the Modbus request limit): writing it out must work
    default = PlanLimits().max_gap
    _write(tmp_path, {"m.toml": MODBUS_MAP, "gw.toml": GATEWAY_HEAD
                      + _device("a", "m.toml", "modbus-tcp", max_gap=default)
                      + _device("b", "m.toml", "modbus-tcp")})
    gw = load_gateway(tmp_path / "gw.toml")
    assert gw.device("a").limits.max_gap == gw.device("b").limits.max_gap == default == 125
    problem = _one_problem(tmp_path, GATEWAY_HEAD + _device("a", "m.toml", "modbus-tcp",
                                                            max_gap=126))
    assert problem.key_path == "devices[0].max_gap"
    assert "at most 125, got 126" in problem.message


def test_buffer_max_mb_below_the_outbox_minimum_is_a_validation_error(tmp_path: Path) -> None:
    # 1 MiB used to pass validate and then crash `run` in Outbox() (a systemd restart loop)
    problem = _one_problem(tmp_path, GATEWAY_HEAD.replace(
        'data_dir = "/tmp/gw-t"', 'data_dir = "/tmp/gw-t"\nbuffer_max_mb = 1')
        + _device("a", "m.toml", "modbus-tcp"))
    assert problem.key_path == "gateway.buffer_max_mb"
    assert "at least 2, got 1" in problem.message
    # the smallest valid quota is one the Outbox accepts
    Outbox(tmp_path / "b.db", gateway="gw-t", max_bytes=MIN_BUFFER_MB * 2**20)


def test_names_longer_than_the_cloud_stores_are_refused(tmp_path: Path) -> None:
    long_gw = GATEWAY_HEAD.replace('id = "gw-t"', f'id = "{"g" * 65}"')
    problem = _one_problem(tmp_path, long_gw + _device("a", "m.toml", "modbus-tcp"))
    assert problem.key_path == "gateway.id" and "65 characters, at most 64" in problem.message
    problem = _one_problem(tmp_path, GATEWAY_HEAD + _device("d" * 129, "m.toml", "modbus-tcp"))
    assert problem.key_path == "devices[0].name"
    assert "129 characters, at most 128" in problem.message
    _write(tmp_path, {"gw.toml": GATEWAY_HEAD.replace('id = "gw-t"', f'id = "{"g" * 64}"')
                      + _device("d" * 128, "m.toml", "modbus-tcp")})
    assert load_gateway(tmp_path / "gw.toml").devices[0].name == "d" * 128


def test_config_limits_match_the_buffer_and_cloud() -> None:
    from buffer.records import MAX_DEVICE_NAME as RECORD_DEVICE
    from buffer.records import MAX_GATEWAY_ID as RECORD_GATEWAY
    from buffer.store import MIN_MAX_BYTES

    assert (MAX_GATEWAY_ID, MAX_DEVICE_NAME) == (RECORD_GATEWAY, RECORD_DEVICE)
    assert MIN_BUFFER_MB * 2**20 == MIN_MAX_BYTES


@pytest.mark.parametrize("url", ["mqtt://b:1883", "mqtts://b", "tcp://b:1883", "mqtt://",
                                 "mqtt://b:99999", "b:1883"])
def test_broker_urls_refused_as_the_mqtt_uplink_refuses_them(url: str) -> None:
    from pydantic import ValidationError

    from buffer.records import parse_broker_url
    from edge.config import MqttConfig

    try:
        parse_broker_url(url)
        uplink_ok = True
    except ValueError:
        uplink_ok = False
    try:
        MqttConfig(broker=url)
        config_ok = True
    except ValidationError:
        config_ok = False
    assert config_ok == uplink_ok
