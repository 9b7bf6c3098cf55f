"""Debian's mbpoll, an independent Modbus master, reading the simulator agrees with our
driver + codec (registers in hex, a big-word-order uint32, a little-word-order float),
and with `plantsync-edge probe --json` run against the simulator as a process."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from protocols.codec import decode
from protocols.drivers import make_driver
from protocols.model import Span
from protocols.sim import SimulatedPlant
from tests.fixtures.plc import ROOT, endpoint_of, simulate_process
from tests.services import free_port, require_binary

pytestmark = pytest.mark.needs_service("mbpoll")
_LINE = re.compile(r"^\[(\d+)\]:\s+(\S+)", re.M)


async def _mbpoll(*args: str) -> dict[int, str]:
    binary = require_binary("mbpoll")
    proc = await asyncio.create_subprocess_exec(
        binary, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode() + out.decode()
    return {int(a): v for a, v in _LINE.findall(out.decode())}


async def test_mbpoll_agrees_with_driver_and_codec(sim_plant: SimulatedPlant) -> None:
    sim_plant.step(2400)
    ep = endpoint_of(sim_plant, "cnc-01")
    common = ("-m", "tcp", "-p", str(ep.port), "-a", str(ep.unit), "-0", "-1")
    dev = sim_plant.devices["cnc-01"]
    points = {p.name: p for p in dev.points}
    async with make_driver(ep) as drv:
        raw = await drv.read(Span("HR", 0, 100, 46, ()))
    words = {100 + i: int.from_bytes(raw[2 * i:2 * i + 2], "big") for i in range(46)}

    hexes = await _mbpoll(*common, "-t", "4:hex", "-r", "100", "-c", "46", ep.host)
    assert {a: int(v, 16) for a, v in hexes.items()} == words

    count = await _mbpoll(*common, "-t", "4:int", "-B", "-r", "100", "-c", "1", ep.host)
    assert int(count[100]) == decode(points["part_count"].spec, raw[0:4])
    assert int(count[100]) == sim_plant.state()["cnc-01"]["good"]

    temp = await _mbpoll(*common, "-t", "4:float", "-r", "120", "-c", "1", ep.host)
    assert float(temp[120]) == pytest.approx(
        decode(points["spindle_temp"].spec, raw[40:44]), rel=1e-5)


# -- mbpoll against `plantsync-edge probe` --------------------------------------------------

_MAP = """
model = "CNC lathe, mixed word orders"
byte_order = "big"
word_order = "big"

[tags.part_count]
address = "HR100"
type = "uint32"
role = "counter"
counts = "good"

[tags.scrap_count]
address = "HR102"
type = "uint32"
word_order = "little"
role = "counter"
counts = "scrap"

[tags.mode]
address = "HR110"
type = "uint16"
role = "state"
states = { 0 = "off", 1 = "idle", 2 = "running", 3 = "alarm", 4 = "setup" }

[tags.spindle_temp]
address = "HR120"
type = "float32"
word_order = "little"
role = "sample"

[tags.cycle_time]
address = "HR122"
type = "float32"
role = "sample"
"""


def _gateway(tmp_path: Path) -> Path:
    (tmp_path / "cnc.toml").write_text(_MAP)
    config = tmp_path / "gateway.toml"
    config.write_text(f"""
[gateway]
id = "gw-mbpoll"
data_dir = "{tmp_path}/data"

[cloud]
url = "auto"
token_file = "{tmp_path}/token"

[[devices]]
name = "cnc-01"
map = "{tmp_path}/cnc.toml"
protocol = "modbus-tcp"
host = "127.0.0.1"
port = {free_port()}
unit = 1
""")
    return config


async def test_mbpoll_agrees_with_probe(tmp_path: Path) -> None:
    """The simulator as a process (clock at speed 0), read by mbpoll and by `probe --json`:
    the same raw registers, and the same uint32 counters and floats in both word orders.
    The counters are wrapped close to 2**32 first so both of their words are non-zero."""
    config = _gateway(tmp_path)
    port = re.search(r"^port = (\d+)$", config.read_text(), re.M)
    assert port is not None
    with simulate_process(config) as sim:
        sim.command({"cmd": "step", "seconds": 1800})
        sim.command({"cmd": "fault", "device": "cnc-01", "fault": "wrap", "margin": 70000})
        state = sim.command({"cmd": "state"})["devices"]["cnc-01"]

        probe = subprocess.run(
            [sys.executable, "-m", "edge.cli", "probe", "--config", str(config), "cnc-01",
             "--json"], capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert probe.returncode == 0, probe.stderr
        tags = {t["name"]: t for t in json.loads(probe.stdout)["tags"]}
        assert all(t["quality"] == "good" for t in tags.values()), tags

        common = ("-m", "tcp", "-p", port.group(1), "-a", "1", "-0", "-1", "127.0.0.1")
        regs = {a: int(v, 16) for a, v in
                (await _mbpoll(*common, "-t", "4:hex", "-r", "100", "-c", "24")).items()}
        big = await _mbpoll(*common, "-t", "4:int", "-B", "-r", "100", "-c", "1")
        little = await _mbpoll(*common, "-t", "4:int", "-r", "102", "-c", "1")
        floats_little = await _mbpoll(*common, "-t", "4:float", "-r", "120", "-c", "1")
        floats_big = await _mbpoll(*common, "-t", "4:float", "-B", "-r", "122", "-c", "1")

    # raw: probe's bytes of each tag are the registers mbpoll saw, in wire order
    for name, start, count in (("part_count", 100, 2), ("scrap_count", 102, 2),
                               ("mode", 110, 1), ("spindle_temp", 120, 2),
                               ("cycle_time", 122, 2)):
        raw = bytes.fromhex(tags[name]["raw"].replace(" ", ""))
        assert raw == b"".join(regs[a].to_bytes(2, "big") for a in range(start, start + count))
    # decoded: mbpoll prints 32-bit integers signed
    assert tags["part_count"]["value"] == int(big[100]) & 0xFFFFFFFF \
        == state["counters"]["part_count"]
    assert tags["scrap_count"]["value"] == int(little[102]) & 0xFFFFFFFF \
        == state["counters"]["scrap_count"]
    for name in ("part_count", "scrap_count"):
        assert tags[name]["value"] >> 16 not in (0, tags[name]["value"] & 0xFFFF)
    assert tags["mode"]["value"] == regs[110] and tags["mode"]["label"] == state["state"]
    assert tags["spindle_temp"]["value"] == pytest.approx(float(floats_little[120]), rel=1e-5)
    assert tags["cycle_time"]["value"] == pytest.approx(float(floats_big[122]), rel=1e-5)
    assert tags["cycle_time"]["value"] > 0 and tags["spindle_temp"]["value"] > 0
