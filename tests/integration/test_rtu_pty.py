"""Modbus RTU over a real pseudo-terminal pair (socat): the simulator serves two units on
one bus, two drivers share the client side of the bus."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from protocols.codec import decode
from protocols.driver import Endpoint
from protocols.drivers import make_driver
from protocols.errors import DriverTimeout, IllegalAddress
from protocols.modbus import ModbusRtuDriver
from protocols.model import Span
from protocols.sim import SimulatedPlant, demo_points
from tests.fixtures.waiting import wait_for_async
from tests.services import require_binary

pytestmark = pytest.mark.needs_service("socat")


@pytest.fixture
async def pty_pair(tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    socat = require_binary("socat")
    a, b = str(tmp_path / "ttyA"), str(tmp_path / "ttyB")
    proc = await asyncio.create_subprocess_exec(
        socat, f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        await wait_for_async(lambda: {p: os.path.exists(p) for p in (a, b)},
                             "socat creating the pty pair", until=lambda made: all(made.values()))
    except AssertionError:
        proc.kill()
        await proc.wait()
        raise
    try:
        yield a, b
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        await proc.wait()


def _ep(name: str, port: str, unit: int, timeout_s: float = 1.0) -> Endpoint:
    return Endpoint("modbus-rtu", name, serial_port=port, unit=unit, baudrate=19200,
                    parity="N", timeout_s=timeout_s)  # a pty refuses parity settings


async def test_two_units_on_one_bus(pty_pair: tuple[str, str]) -> None:
    server_side, client_side = pty_pair
    plant = SimulatedPlant(seed=3)
    plant.add("cnc-11", "cnc", demo_points("cnc", "modbus-rtu"), _ep("cnc-11", server_side, 1))
    plant.add("imm-12", "imm", demo_points("imm", "modbus-rtu"), _ep("imm-12", server_side, 2))
    async with plant:
        plant.step(3000)
        cnc = make_driver(_ep("cnc-11", client_side, 1))
        imm = make_driver(_ep("imm-12", client_side, 2, timeout_s=0.5))
        assert isinstance(cnc, ModbusRtuDriver)
        async with cnc, imm:
            # Concurrent requests from two devices must not interleave on the wire.
            results = await asyncio.gather(*(
                d.read(Span("HR", 0, start, 2, ()))
                for _ in range(5) for d, start in ((cnc, 100), (imm, 0))))
            state = plant.state()
            assert {int.from_bytes(r, "big") for r in results[0::2]} == {state["cnc-11"]["good"]}
            assert {int.from_bytes(r, "big") for r in results[1::2]} == {state["imm-12"]["total"]}

            points = {p.name: p for p in plant.devices["cnc-11"].points}
            raw = await cnc.read(Span("HR", 0, 130, 8, ()))
            assert decode(points["program"].spec, raw) == plant.devices["cnc-11"].machine.program
            assert await cnc.read(Span("DI", 0, 0, 1, ())) in (b"\x00", b"\x01")

            plant.inject("imm-12", "illegal", area="HR", start=10, count=2)
            with pytest.raises(IllegalAddress):
                await imm.read(Span("HR", 0, 0, 12, ()))
            # A unit that stops answering times out; the other unit on the bus still reads.
            plant.inject("imm-12", "disconnect", seconds=60)
            with pytest.raises(DriverTimeout):
                await imm.read(Span("HR", 0, 0, 2, ()))
            assert int.from_bytes(await cnc.read(Span("HR", 0, 100, 2, ())), "big") == \
                state["cnc-11"]["good"]
