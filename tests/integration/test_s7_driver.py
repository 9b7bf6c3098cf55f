"""S7 driver against a plain snap7 server set up here and the simulated plant."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from snap7.server import Server
from snap7.type import SrvArea

from protocols.address import tag_extent
from protocols.codec import decode
from protocols.driver import Endpoint
from protocols.drivers import make_driver
from protocols.errors import (
    DriverConnectError,
    DriverGarbage,
    DriverTimeout,
    IllegalAddress,
)
from protocols.model import Span
from protocols.s7 import S7Driver
from protocols.sim import SimulatedPlant
from tests.fixtures.plc import endpoint_of
from tests.services import free_port

DB1 = bytearray(range(100))
MK = bytearray(b"\x00" * 10 + b"\xde\xad\xbe\xef" + b"\x00" * 18)
PE = bytearray(b"\x05\x00\x81\x00")
PA = bytearray(b"\x01\x02")


@pytest.fixture
def plain_s7() -> Iterator[int]:
    port = free_port()
    server = Server(log=False)
    server.register_area(SrvArea.DB, 1, DB1)
    server.register_area(SrvArea.MK, 0, MK)
    server.register_area(SrvArea.PE, 0, PE)
    server.register_area(SrvArea.PA, 0, PA)
    server.start(tcp_port=port)
    try:
        yield port
    finally:
        server.stop()
        server.destroy()


def _ep(port: int) -> Endpoint:
    return Endpoint("s7", "imm-9", port=port, rack=0, slot=1, timeout_s=2.0)


async def test_every_area_and_pdu(plain_s7: int) -> None:
    drv = make_driver(_ep(plain_s7))
    assert isinstance(drv, S7Driver)
    assert drv.pdu_size is None
    async with drv:
        assert drv.pdu_size is not None and drv.pdu_size >= 240
        assert await drv.read(Span("DB", 1, 10, 20, ())) == bytes(range(10, 30))
        assert await drv.read(Span("M", 0, 10, 4, ())) == b"\xde\xad\xbe\xef"
        assert await drv.read(Span("I", 0, 0, 3, ())) == b"\x05\x00\x81"
        assert await drv.read(Span("Q", 0, 1, 1, ())) == b"\x02"


async def test_illegal_address(plain_s7: int) -> None:
    async with make_driver(_ep(plain_s7)) as drv:
        with pytest.raises(IllegalAddress, match="imm-9: DB1 byte 95 count 10"):
            await drv.read(Span("DB", 1, 95, 10, ()))
        with pytest.raises(IllegalAddress):
            await drv.read(Span("DB", 7, 0, 2, ()))    # no DB7
        assert await drv.read(Span("DB", 1, 0, 2, ())) == b"\x00\x01"


async def test_multi_var_read_returns_item_errors_in_place(plain_s7: int) -> None:
    async with make_driver(_ep(plain_s7)) as drv:
        out = await drv.read_many((
            Span("DB", 1, 0, 3, ()), Span("DB", 1, 98, 5, ()), Span("M", 0, 10, 4, ()),
            Span("DB", 3, 0, 1, ()), Span("I", 0, 2, 1, ()),
        ))
    assert out[0] == b"\x00\x01\x02"
    assert isinstance(out[1], IllegalAddress) and out[1].code == 0x05
    assert out[2] == b"\xde\xad\xbe\xef"
    assert isinstance(out[3], IllegalAddress) and out[3].code == 0x0A
    assert out[4] == b"\x81"


async def test_refused() -> None:
    drv = make_driver(_ep(free_port()))
    with pytest.raises(DriverConnectError, match="refused") as err:
        await drv.connect()
    assert err.value.kind == "connect"
    await drv.close()


@pytest.fixture
async def junk_server() -> AsyncIterator[int]:
    """A TCP peer that is not an S7 CPU: it answers an HTTP error to whatever it gets
    and keeps the connection open (the client must judge the bytes, not a close)."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(64)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await reader.read()          # until the client hangs up
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", free_port())
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def test_a_peer_answering_junk_is_garbage_not_a_connect_error(junk_server: int) -> None:
    drv = make_driver(_ep(junk_server))
    with pytest.raises(DriverGarbage, match=r"imm-9: 127\.0\.0\.1:\d+ rack 0 slot 1: the "
                                            r"peer's answer is not S7 \(Invalid TPKT") as err:
        await drv.connect()
    assert err.value.kind == "garbage" and err.value.device == "imm-9"
    assert not drv.connected
    await drv.close()


async def test_slow_answer_is_a_timeout(sim_plant: SimulatedPlant) -> None:
    async with make_driver(endpoint_of(sim_plant, "imm-07", timeout_s=0.3)) as drv:
        assert len(await drv.read(Span("DB", 1, 0, 4, ()))) == 4
        sim_plant.inject("imm-07", "slow", delay_s=1.0, seconds=0)
        with pytest.raises(DriverTimeout, match=r"imm-07: DB1 byte 0 count 4: no answer "
                                                r"within 0\.3 s") as err:
            await drv.read(Span("DB", 1, 0, 4, ()))
        assert err.value.kind == "timeout"
        assert not drv.connected         # the late answer must not be taken for the next
        sim_plant.inject("imm-07", "clear")
        await drv.connect()
        assert len(await drv.read(Span("DB", 1, 0, 4, ()))) == 4


async def test_simulator_values(sim_plant: SimulatedPlant) -> None:
    sim_plant.step(1200)
    dev = sim_plant.devices["imm-07"]
    async with make_driver(endpoint_of(sim_plant, "imm-07")) as drv:
        spans = []
        for p in dev.points:
            area, db, start, count = tag_extent(p.spec)
            spans.append(Span(area, db, start, count, (p.name,)))
        out = await drv.read_many(tuple(spans))
    for p, raw in zip(dev.points, out, strict=True):
        assert isinstance(raw, bytes), raw
        want = dev.counter_raw(p) if p.role == "counter" else dev.machine.value_of(p)
        got = decode(p.spec, raw)
        if isinstance(want, float):
            assert got == pytest.approx(want, rel=1e-5), p.name
        else:
            assert got == want, p.name


async def test_simulator_faults(sim_plant: SimulatedPlant) -> None:
    sim_plant.step(3600)
    async with make_driver(endpoint_of(sim_plant, "imm-07")) as drv:
        good = int.from_bytes(await drv.read(Span("DB", 1, 0, 4, ())), "big")
        assert good == sim_plant.state()["imm-07"]["good"] > 0
        sim_plant.inject("imm-07", "illegal", area="DB", db=1, start=12, count=4)
        out = await drv.read_many((Span("DB", 1, 0, 8, ()), Span("DB", 1, 12, 8, ())))
        assert isinstance(out[0], bytes) and isinstance(out[1], IllegalAddress)
        sim_plant.inject("imm-07", "reset")
        assert await drv.read(Span("DB", 1, 0, 4, ())) == b"\0\0\0\0"
        sim_plant.inject("imm-07", "wrap", tag="shots")
        assert int.from_bytes(await drv.read(Span("M", 0, 10, 4, ())), "big") == 2**32 - 4
