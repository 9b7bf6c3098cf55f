"""Modbus TCP driver against real servers on 127.0.0.1: a plain pymodbus server set up
here, raw asyncio servers that misbehave, and the simulated plant."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice

from protocols.address import parse_address
from protocols.codec import decode
from protocols.driver import Endpoint
from protocols.drivers import make_driver
from protocols.errors import (
    DeviceException,
    DriverConnectError,
    DriverGarbage,
    DriverTimeout,
    IllegalAddress,
)
from protocols.modbus import ModbusTcpDriver
from protocols.model import DataType, Span, TagSpec
from protocols.plan import plan_reads
from protocols.read import read_plan
from protocols.sim import SimulatedPlant
from tests.fixtures.plc import endpoint_of
from tests.fixtures.waiting import wait_for_async
from tests.services import free_port

HR = [(i * 257) & 0xFFFF for i in range(200)]
IR = [1000 + i for i in range(50)]
CO = [i % 3 == 0 for i in range(64)]
DI = [i % 2 == 1 for i in range(32)]
# HR addresses where the test server answers with an exception code.
EXCEPTIONS = {150: ExcCodes.ILLEGAL_FUNCTION, 151: ExcCodes.ILLEGAL_VALUE,
              152: ExcCodes.DEVICE_FAILURE, 153: ExcCodes.DEVICE_BUSY,
              154: ExcCodes.GATEWAY_PATH_UNAVIABLE, 155: ExcCodes.GATEWAY_NO_RESPONSE}


async def _action(fc: int, start: int, address: int, count: int, regs: list[int],
                  values: list[int] | list[bool] | None) -> ExcCodes | None:
    if fc == 3:
        for a in range(address, address + count):
            if a in EXCEPTIONS:
                return EXCEPTIONS[a]
    return None


@pytest.fixture
async def plain_server() -> AsyncIterator[int]:
    port = free_port()
    device = SimDevice(id=1, simdata=(
        [SimData(0, values=CO, datatype=SimType.BITS)],
        [SimData(0, values=DI, datatype=SimType.BITS)],
        [SimData(0, values=HR, datatype=SimType.REGISTERS)],
        [SimData(0, values=IR, datatype=SimType.REGISTERS)],
    ), action=_action)
    server = ModbusTcpServer(device, address=("127.0.0.1", port))
    await server.serve_forever(background=True)
    try:
        yield port
    finally:
        await server.shutdown()


def _ep(port: int, timeout_s: float = 1.0) -> Endpoint:
    return Endpoint("modbus-tcp", "press-1", port=port, unit=1, timeout_s=timeout_s)


def _words(raw: bytes) -> list[int]:
    return [int.from_bytes(raw[i:i + 2], "big") for i in range(0, len(raw), 2)]


async def test_make_driver_builds_tcp_driver() -> None:
    assert isinstance(make_driver(_ep(1)), ModbusTcpDriver)


async def test_every_area(plain_server: int) -> None:
    async with make_driver(_ep(plain_server)) as drv:
        assert _words(await drv.read(Span("HR", 0, 10, 125, ()))) == HR[10:135]
        assert _words(await drv.read(Span("IR", 0, 0, 50, ()))) == IR
        co = await drv.read(Span("CO", 0, 3, 21, ()))
        assert co == bytes(int(b) for b in CO[3:24])
        di = await drv.read(Span("DI", 0, 0, 9, ()))
        assert di == bytes(int(b) for b in DI[:9])


async def test_illegal_address_names_device_area_start_count(plain_server: int) -> None:
    async with make_driver(_ep(plain_server)) as drv:
        with pytest.raises(IllegalAddress) as info:
            await drv.read(Span("HR", 0, 190, 20, ()))
        assert info.value.code == 2
        assert info.value.name == "ILLEGAL DATA ADDRESS"
        assert "press-1" in str(info.value) and "HR190" in str(info.value)
        assert "count 20" in str(info.value)
        # The connection survives an exception answer.
        assert _words(await drv.read(Span("HR", 0, 0, 2, ()))) == HR[:2]


@pytest.mark.parametrize(("address", "code", "name"), [
    (150, 1, "ILLEGAL FUNCTION"), (151, 3, "ILLEGAL DATA VALUE"),
    (152, 4, "SERVER DEVICE FAILURE"), (153, 6, "SERVER DEVICE BUSY"),
    (154, 10, "GATEWAY PATH UNAVAILABLE"),
    (155, 11, "GATEWAY TARGET DEVICE FAILED TO RESPOND"),
])
async def test_exception_codes_by_name(plain_server: int, address: int, code: int,
                                       name: str) -> None:
    async with make_driver(_ep(plain_server)) as drv:
        with pytest.raises(DeviceException) as info:
            await drv.read(Span("HR", 0, address, 1, ()))
        assert not isinstance(info.value, IllegalAddress)
        assert (info.value.code, info.value.name) == (code, name)
        assert name in str(info.value)


def _tag(name: str, address: str, type_: DataType = DataType.UINT16) -> TagSpec:
    return TagSpec(name, parse_address(address, "modbus-tcp"), type_)


async def test_read_plan_names_the_tag_and_address_of_an_exception(plain_server: int) -> None:
    """The server has HR0..HR199: a uint32 at HR199 runs past the end. read_plan splits
    its block and only that tag is bad; another exception marks its block's tags bad, each
    error naming its tag, its address and the exception by name."""
    tags = [_tag("speed", "HR10"), _tag("total", "HR195", DataType.UINT32),
            _tag("beyond", "HR199", DataType.UINT32)]
    plan = plan_reads("modbus-tcp", tags)
    assert [s.tags for r in plan.requests for s in r.spans] == \
        [("speed",), ("total", "beyond")]
    async with make_driver(_ep(plain_server)) as drv:
        refined, readings = await read_plan(drv, plan)
    got = {r.name: r for r in readings}
    assert got["speed"].value == HR[10]
    assert got["total"].value == (HR[195] << 16) | HR[196]
    err = got["beyond"].error
    assert isinstance(err, IllegalAddress) and err.name == "ILLEGAL DATA ADDRESS"
    assert str(err) == ("tag beyond at 'HR199': press-1: HR199 count 2: device answered "
                        "exception 2 ILLEGAL DATA ADDRESS")
    assert len(refined.requests) == 3

    busy = plan_reads("modbus-tcp", [_tag("load", "HR149"), _tag("feed", "HR153")])
    async with make_driver(_ep(plain_server)) as drv:
        _, readings = await read_plan(drv, busy)
    for r, address in zip(readings, ("HR149", "HR153"), strict=True):
        assert isinstance(r.error, DeviceException) and r.error.code == 1
        assert str(r.error).startswith(f"tag {r.name} at '{address}': press-1: HR149 count 5:")
        assert str(r.error).endswith("exception 1 ILLEGAL FUNCTION")


async def test_refused_is_a_connect_error() -> None:
    drv = make_driver(_ep(free_port()))
    with pytest.raises(DriverConnectError, match="refused"):
        await drv.connect()
    await drv.close()


# -- misbehaving peers ------------------------------------------------------------------

Handler = Callable[[bytes], Awaitable[bytes | None]]


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[Handler], Awaitable[int]]]:
    """Start a TCP server whose answer to each request frame ``handler`` decides
    (None: no answer)."""
    servers: list[asyncio.Server] = []
    writers: list[asyncio.StreamWriter] = []

    async def start(handler: Handler) -> int:
        async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            try:
                while True:
                    head = await reader.readexactly(7)
                    body = await reader.readexactly(struct.unpack(">H", head[4:6])[0] - 1)
                    answer = await handler(head + body)
                    if answer is not None:
                        writer.write(answer)
                        await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass

        server = await asyncio.start_server(client, "127.0.0.1", 0)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield start
    for w in writers:
        w.close()
    for s in servers:
        s.close()
        await s.wait_closed()


async def test_no_answer_is_a_timeout_and_drops_the_connection(raw_server) -> None:  # type: ignore[no-untyped-def]
    async def silent(frame: bytes) -> None:
        return None

    port = await raw_server(silent)
    drv = ModbusTcpDriver(_ep(port, timeout_s=0.3))
    await drv.connect()
    with pytest.raises(DriverTimeout, match=r"no answer within 0\.3 s"):
        await drv.read(Span("HR", 0, 0, 1, ()))
    assert not drv.connected
    with pytest.raises(DriverConnectError):
        await drv.read(Span("HR", 0, 0, 1, ()))
    await drv.close()


async def test_nonsense_answer_is_garbage(raw_server) -> None:  # type: ignore[no-untyped-def]
    async def nonsense(frame: bytes) -> bytes:
        return b"HTTP/1.1 400 Bad Request\r\n\r\n"

    port = await raw_server(nonsense)
    drv = ModbusTcpDriver(_ep(port, timeout_s=0.3))
    await drv.connect()
    with pytest.raises(DriverGarbage, match="not a Modbus response"):
        await drv.read(Span("HR", 0, 0, 1, ()))
    assert not drv.connected
    await drv.close()


async def test_wrong_function_answer_is_garbage(raw_server) -> None:  # type: ignore[no-untyped-def]
    async def wrong_function(frame: bytes) -> bytes:
        tid = frame[:2]
        pdu = bytes([4, 2, 0, 42])  # an FC4 answer to an FC3 request
        return tid + b"\x00\x00" + struct.pack(">H", len(pdu) + 1) + frame[6:7] + pdu

    port = await raw_server(wrong_function)
    drv = ModbusTcpDriver(_ep(port, timeout_s=0.3))
    await drv.connect()
    with pytest.raises(DriverGarbage):
        await drv.read(Span("HR", 0, 0, 1, ()))
    await drv.close()


async def test_short_answer_is_garbage(raw_server) -> None:  # type: ignore[no-untyped-def]
    async def short(frame: bytes) -> bytes:
        tid = frame[:2]
        pdu = bytes([3, 2, 0, 42])  # one register where three were asked
        return tid + b"\x00\x00" + struct.pack(">H", len(pdu) + 1) + frame[6:7] + pdu

    port = await raw_server(short)
    drv = ModbusTcpDriver(_ep(port, timeout_s=0.3))
    await drv.connect()
    with pytest.raises(DriverGarbage, match="1 registers, asked 3"):
        await drv.read(Span("HR", 0, 0, 3, ()))
    await drv.close()


# -- the simulator ----------------------------------------------------------------------

async def test_simulator_values_decode_to_the_machine_values(sim_plant: SimulatedPlant) -> None:
    sim_plant.step(1800)
    for name in ("cnc-01", "imm-03"):
        dev = sim_plant.devices[name]
        async with make_driver(endpoint_of(sim_plant, name)) as drv:
            for p in dev.points:
                addr = p.spec.address
                from protocols.address import tag_extent
                area, _, start, count = tag_extent(p.spec)
                raw = await drv.read(Span(area, 0, start, count, (p.name,)))
                value = decode(p.spec, raw)
                want = dev.counter_raw(p) if p.role == "counter" else dev.machine.value_of(p)
                if isinstance(want, float):
                    assert value == pytest.approx(want, rel=1e-5, abs=0.051), (p.name, addr)
                else:
                    assert value == want, (p.name, addr)
        assert sim_plant.state()[name]["total"] > 0


async def test_simulator_units_share_a_port(sim_plant: SimulatedPlant) -> None:
    async with make_driver(endpoint_of(sim_plant, "cnc-01")) as a, \
            make_driver(endpoint_of(sim_plant, "imm-03")) as b:
        good = await a.read(Span("HR", 0, 100, 2, ()))
        shots = await b.read(Span("HR", 0, 0, 2, ()))
    st = sim_plant.state()
    assert int.from_bytes(good, "big") == st["cnc-01"]["counters"]["part_count"]
    assert int.from_bytes(shots, "big") == st["imm-03"]["total"]


async def test_simulator_faults_reset_wrap_illegal_slow(sim_plant: SimulatedPlant) -> None:
    sim_plant.step(3600)
    async with make_driver(endpoint_of(sim_plant, "cnc-01", timeout_s=0.3)) as drv:
        before = int.from_bytes(await drv.read(Span("HR", 0, 100, 2, ())), "big")
        assert before == sim_plant.state()["cnc-01"]["good"] > 0
        sim_plant.inject("cnc-01", "reset")
        assert await drv.read(Span("HR", 0, 100, 2, ())) == b"\0\0\0\0"
        sim_plant.inject("cnc-01", "wrap", margin=2)
        assert int.from_bytes(await drv.read(Span("HR", 0, 100, 2, ())), "big") == 2**32 - 3
        sim_plant.inject("cnc-01", "illegal", area="HR", start=111, count=1)
        with pytest.raises(IllegalAddress):
            await drv.read(Span("HR", 0, 100, 12, ()))
        await drv.read(Span("HR", 0, 100, 11, ()))   # the rest of the block still reads
        sim_plant.inject("cnc-01", "slow", delay_s=1.0, seconds=0)
        with pytest.raises(DriverTimeout):
            await drv.read(Span("HR", 0, 100, 2, ()))
        sim_plant.inject("cnc-01", "clear")
    # the true totals never went back
    assert sim_plant.state()["cnc-01"]["good"] >= before


async def test_simulator_disconnect(sim_plant: SimulatedPlant) -> None:
    ep = endpoint_of(sim_plant, "cnc-01", timeout_s=0.5)
    async def connects() -> bool:
        drv = make_driver(ep)
        try:
            await drv.connect()
        except (DriverConnectError, DriverTimeout):
            return False
        finally:
            await drv.close()
        return True

    sim_plant.inject("cnc-01", "disconnect", seconds=30)
    await wait_for_async(connects, "the simulator refusing connections during a disconnect",
                         until=lambda ok: not ok)
    sim_plant.inject("cnc-01", "clear")
    await wait_for_async(connects, "the simulator accepting connections after clear")
    async with make_driver(ep) as drv:
        await drv.read(Span("HR", 0, 100, 2, ()))
