"""Debian's mbpoll, an independent Modbus master, reading the simulator agrees with our
driver + codec (registers in hex, a big-word-order uint32, a little-word-order float)."""

from __future__ import annotations

import asyncio
import re

import pytest

from protocols.codec import decode
from protocols.driver import make_driver
from protocols.model import Span
from protocols.sim import SimulatedPlant
from tests.fixtures.plc import endpoint_of
from tests.services import require_binary

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
