"""`plantsync-edge simulate` as a real process, read by `plantsync-edge probe` and `plan`.

The simulator runs with --speed 0 (its clock moves only when told through the control
channel), so what probe reads can be compared exactly with the plant's own state.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from snap7.server import Server
from snap7.type import SrvArea

from tests.fixtures.plc import SimProcess, simulate_process
from tests.services import free_port

ROOT = Path(__file__).resolve().parents[2]
MAPS = ROOT / "config" / "maps"


def _free_ports(n: int) -> list[int]:
    return [free_port() for _ in range(n)]


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge.cli", *argv], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)


def _gateway(tmp_path: Path, ports: list[int]) -> Path:
    cnc, imm_mb, imm_s7 = (MAPS / "cnc-generic-modbus.toml", MAPS / "imm-generic-modbus.toml",
                           MAPS / "imm-generic-s7.toml")
    text = f"""
[gateway]
id = "gw-it"
data_dir = "{tmp_path}/data"

[cloud]
url = "auto"
token_file = "{tmp_path}/token"

[[devices]]
name = "cnc-01"
map = "{cnc}"
protocol = "modbus-tcp"
host = "127.0.0.1"
port = {ports[0]}

[[devices]]
name = "imm-03"
map = "{imm_mb}"
protocol = "modbus-tcp"
host = "127.0.0.1"
port = {ports[1]}
unit = 3

[[devices]]
name = "imm-07"
map = "{imm_s7}"
protocol = "s7"
host = "127.0.0.1"
port = {ports[2]}
"""
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[tuple[SimProcess, Path]]:
    config = _gateway(tmp_path, _free_ports(3))
    with simulate_process(config, seed=7) as proc:
        yield proc, config


def test_simulate_prints_where_machines_listen(sim: tuple[SimProcess, Path]) -> None:
    s, _ = sim
    text = "\n".join(s.banner)
    for name in ("cnc-01", "imm-03", "imm-07"):
        assert name in text
    assert "control channel" in text


def test_probe_agrees_with_the_plant(sim: tuple[SimProcess, Path]) -> None:
    s, config = sim
    state = s.command({"cmd": "step", "seconds": 900})["devices"]
    assert isinstance(state, dict)
    for device, good_tag, scrap_tag, state_tag, text_tag in (
            ("cnc-01", "part_count", "scrap_count", "mode", "program"),
            ("imm-03", "good_parts", "scrap_parts", "machine_state", "mold_name"),
            ("imm-07", "good_parts", "scrap_parts", "machine_state", "mold_name")):
        result = _cli("probe", "--config", str(config), device, "--json")
        assert result.returncode == 0, result.stderr
        doc = json.loads(result.stdout)
        tags = {t["name"]: t for t in doc["tags"]}
        assert all(t["quality"] == "good" for t in doc["tags"]), doc
        dev_state = state[device]
        assert tags[good_tag]["value"] == dev_state["counters"][good_tag]
        assert tags[scrap_tag]["value"] == dev_state["counters"][scrap_tag]
        assert tags[good_tag]["value"] > 0
        assert tags[state_tag]["label"] == dev_state["state"]
        assert tags[text_tag]["value"] == dev_state["program"]
        raw = bytes.fromhex(tags[good_tag]["raw"].replace(" ", ""))
        assert int.from_bytes(raw, "big") == tags[good_tag]["value"]


def test_probe_table_for_people(sim: tuple[SimProcess, Path]) -> None:
    _, config = sim
    result = _cli("probe", "--config", str(config), "imm-07")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = lines[1]
    assert header.split() == ["tag", "address", "type", "raw", "value", "unit", "quality"]
    assert any(line.startswith("zone1_temp") and "degC" in line and line.endswith("good")
               for line in lines)
    assert "15 good, 0 bad" in result.stdout


def test_probe_hints_at_the_other_word_order(sim: tuple[SimProcess, Path], tmp_path: Path) -> None:
    s, config = sim
    s.command({"cmd": "step", "seconds": 60})
    # the same CNC read with a map that gets spindle_temp's word order wrong
    wrong = (MAPS / "cnc-generic-modbus.toml").read_text().replace(
        'word_order = "little"     # many', 'word_order = "big"     # many')
    (tmp_path / "wrong.toml").write_text(wrong)
    gw = config.read_text().replace(str(MAPS / "cnc-generic-modbus.toml"),
                                    str(tmp_path / "wrong.toml"))
    (tmp_path / "wrong-gw.toml").write_text(gw)
    result = _cli("probe", "--config", str(tmp_path / "wrong-gw.toml"), "cnc-01", "--json")
    doc = json.loads(result.stdout)
    hint = next(t["hint"] for t in doc["tags"] if t["name"] == "spindle_temp")
    assert hint is not None and 'word_order = "little"' in hint


def test_plan_matches_what_probe_needs(sim: tuple[SimProcess, Path]) -> None:
    _, config = sim
    result = _cli("plan", "--config", str(config), "imm-07", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["request_count"] == 1 and doc["one_per_tag"] == 15


def test_probe_of_a_device_that_is_not_there(tmp_path: Path) -> None:
    (port,) = _free_ports(1)
    config = _gateway(tmp_path, [port, port, port])
    result = _cli("probe", "--config", str(config), "cnc-01")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith(f"plantsync-edge probe: cnc-01: 127.0.0.1:{port}: ")
    assert "connection refused" in result.stderr and result.stderr.count("\n") == 1


# ---- probe plans within the PDU the PLC negotiated -----------------------------------------

class _S7With240(Server):
    """A real snap7 server that agrees to a PDU of 240 bytes, like an S7-300."""

    def _handle_setup_communication(self, request: dict[str, Any]) -> bytes:
        params = request["parameters"]
        params["pdu_length"] = min(int(params.get("pdu_length", 480)), 240)
        return super()._handle_setup_communication(request)  # type: ignore[no-any-return]


def test_probe_plans_within_the_negotiated_pdu(tmp_path: Path) -> None:
    """Four counters 100 bytes apart: within the default PDU of 480 one 304-byte span reads
    them all, which an S7-300's 240-byte PDU cannot carry. probe connects first and plans
    within what the PLC agreed to, so every request fits 240 and all tags read good."""
    import asyncio

    from edge.cli import _plan_for, probe_device
    from edge.config import load_gateway
    from protocols.plan import s7_request_fits

    port = free_port()
    db1 = bytearray(304)
    want = {f"c{i}": 1000 + i for i in range(4)}
    for i in range(4):
        db1[100 * i:100 * i + 4] = want[f"c{i}"].to_bytes(4, "big")
    server = _S7With240(log=False)
    server.register_area(SrvArea.DB, 1, db1)
    server.start(tcp_port=port)
    (tmp_path / "wide.toml").write_text('model = "S7-300 with a wide DB"\n' + "".join(
        f'[tags.c{i}]\naddress = "DB1.DBD{100 * i}"\ntype = "uint32"\nrole = "counter"\n'
        'counts = "good"\n' for i in range(4)))
    (tmp_path / "gateway.toml").write_text(
        f'[gateway]\nid = "gw-pdu"\ndata_dir = "{tmp_path}/data"\n'
        f'[cloud]\nurl = "auto"\ntoken_file = "{tmp_path}/token"\n'
        f'[[devices]]\nname = "s7-300"\nmap = "{tmp_path}/wide.toml"\nprotocol = "s7"\n'
        f'host = "127.0.0.1"\nport = {port}\n')
    try:
        dev = load_gateway(tmp_path / "gateway.toml").device("s7-300")
        default_plan = _plan_for(dev)
        assert default_plan.limits.pdu_size == 480
        at_240 = replace(default_plan.limits, pdu_size=240)
        assert not all(s7_request_fits(req.spans, at_240) for req in default_plan.requests), \
            "the map must need a smaller plan at 240, or this test proves nothing"

        plan, readings = asyncio.run(probe_device(dev))
    finally:
        server.stop()
        server.destroy()
    assert plan.limits.pdu_size == 240
    assert all(s7_request_fits(req.spans, plan.limits) for req in plan.requests)
    assert {r.name: r.value for r in readings if r.good} == want
