"""The driver contract (``protocols/driver.py``), one suite run against every driver.

Each driver talks to a real peer on this machine: pymodbus's TCP server, pymodbus's serial
server on a socat pseudo-terminal pair, python-snap7's server. Between driver and peer sits
a *line* the test can spoil (``Line.set``): a TCP relay (``peers.Relay``) for the TCP
drivers, the pty pair with a swappable device end (``peers.PtyPair``/``PtyPeer``) for RTU.
The line's modes are the situations of the contract:

==========  ===========================================  ==================================
situation   how                                          the driver raises
==========  ===========================================  ==================================
pass        the real server answers                      nothing: the plan's values
refuse      nothing listens (TCP) / no such pty (RTU)    DriverConnectError, at once
junk        junk bytes answer every request              DriverGarbage (at connect or read)
silent      accepted, never answered                     DriverTimeout
drop        the link goes (TCP reset / the pty pair is   DriverConnectError; after
            cut) while a request waits for its answer    ``connect()`` the same driver reads
                                                         again once the peer is back
==========  ===========================================  ==================================

Every driver can be put in every situation, so no case is left out; the ids say how each
driver meets it (``modbus-rtu/no-such-pty``). Each driver is used the way the poller uses it
(``edge/daemon.py``): ``connect()`` (idempotent) then ``read_plan``; after an error the
caller calls ``connect()`` again on the same object. Nothing may hang: every call is bounded
by ``HANG_S``, far above the configured ``TIMEOUT_S`` (a generous bound, not a stopwatch).
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator, Awaitable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar, TypeVar, get_args

import pytest
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice
from snap7.server import Server as S7Server
from snap7.type import SrvArea

from protocols.address import parse_address
from protocols.driver import Driver, Endpoint
from protocols.drivers import make_driver
from protocols.errors import DriverConnectError, DriverGarbage, DriverTimeout
from protocols.model import DataType, Protocol, ReadPlan, TagReading, TagSpec
from protocols.plan import plan_reads
from protocols.read import read_plan
from tests.contract.peers import JUNK, Mode, PtyPair, PtyPeer, Relay
from tests.services import free_port

TIMEOUT_S = 3.0     # the endpoint's timeout_s here: above the 1 s default, so a loaded box does
                    # not time out a good read (the contract is the bound, not its value)
HANG_S = 15.0       # longer than this is a hang
DEVICE = "contract-dev"
T = TypeVar("T")

# The same three tags on every driver: a word, a double word across two registers (bytes),
# a bit. Modbus: two requests (HR block, coil); S7: one multi-variable request (DB1, M0).
EXPECTED = {"speed": 1234, "total": 123456, "running": True}
_TAGS = {
    "modbus": [("speed", "HR10", DataType.UINT16), ("total", "HR20", DataType.UINT32),
               ("running", "CO3", DataType.BOOL)],
    "s7": [("speed", "DB1.DBW10", DataType.UINT16), ("total", "DB1.DBD20", DataType.UINT32),
           ("running", "M0.3", DataType.BOOL)],
}

# Junk a wrong peer may answer: text (an HTTP error: a wrong port), noise, and a frame
# header whose length is shorter than the header itself (03 00 00 02 is TPKT-shaped).
JUNKS = {
    "text": JUNK,
    "noise": bytes((i * 73 + 41) % 256 for i in range(48)),
    "short-frame": b"\x03\x00\x00\x02",
}


def _plan(protocol: Protocol) -> ReadPlan:
    family = "s7" if protocol == "s7" else "modbus"
    return plan_reads(protocol, [TagSpec(n, parse_address(a, protocol), t)
                                 for n, a, t in _TAGS[family]])


def _modbus_device() -> SimDevice:
    hr = [0] * 40
    hr[10] = 1234
    hr[20], hr[21] = divmod(123456, 1 << 16)
    coils = [i == 3 for i in range(16)]
    return SimDevice(id=1, simdata=(
        [SimData(0, values=coils, datatype=SimType.BITS)],
        [SimData(0, values=[False] * 16, datatype=SimType.BITS)],
        [SimData(0, values=hr, datatype=SimType.REGISTERS)],
        [SimData(0, values=[0] * 16, datatype=SimType.REGISTERS)],
    ))


@asynccontextmanager
async def _modbus_tcp_server() -> AsyncIterator[int]:
    port = free_port()
    server = ModbusTcpServer(_modbus_device(), address=("127.0.0.1", port))
    await server.serve_forever(background=True)
    try:
        yield port
    finally:
        await server.shutdown()


@asynccontextmanager
async def _s7_server() -> AsyncIterator[int]:
    db1 = bytearray(64)
    db1[10:12] = (1234).to_bytes(2, "big")
    db1[20:24] = (123456).to_bytes(4, "big")
    marker = bytearray(4)
    marker[0] = 1 << 3
    port = free_port()
    server = S7Server(log=False)
    server.register_area(SrvArea.DB, 1, db1)
    server.register_area(SrvArea.MK, 0, marker)
    server.start(tcp_port=port)
    try:
        yield port
    finally:
        await asyncio.to_thread(server.stop)
        server.destroy()


# --------------------------------------------------------------------------- lines


class Line(abc.ABC):
    """The way from a driver to its real peer, spoilt on demand."""

    endpoint: Endpoint

    @abc.abstractmethod
    async def set(self, mode: Mode) -> None:
        """Put the line in ``mode`` (see the module docstring)."""


class TcpLine(Line):
    def __init__(self, protocol: Protocol, relay: Relay) -> None:
        self.relay = relay
        self.endpoint = Endpoint(protocol, DEVICE, port=relay.port, timeout_s=TIMEOUT_S)

    async def set(self, mode: Mode) -> None:
        await self.relay.set_mode(mode)


class RtuLine(Line):
    """A pty pair; on the device's end either the real serial server (``pass``) or a
    ``PtyPeer``; ``refuse`` cuts the pair, so the gateway's end does not exist."""

    def __init__(self, directory: Path, junk: bytes) -> None:
        self.pair = PtyPair(directory)
        self.junk = junk
        self.endpoint = Endpoint("modbus-rtu", DEVICE, serial_port=self.pair.b, unit=1,
                                 baudrate=19200, parity="N",  # a pty refuses parity
                                 timeout_s=TIMEOUT_S)
        self._server: ModbusSerialServer | None = None
        self._peer: PtyPeer | None = None

    async def set(self, mode: Mode) -> None:
        await self._clear_device_end()
        if mode == "refuse":
            await self.pair.cut()
            return
        await self.pair.start()
        if mode == "pass":
            self._server = ModbusSerialServer(
                _modbus_device(), framer=FramerType.RTU, port=self.pair.a, baudrate=19200,
                parity="N", stopbits=1)
            await self._server.serve_forever(background=True)
        else:
            self._peer = PtyPeer(self.pair, mode, junk=self.junk)
            self._peer.open()

    async def _clear_device_end(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()
        peer, self._peer = self._peer, None
        if peer is not None:
            peer.close()

    async def close(self) -> None:
        await self._clear_device_end()
        await self.pair.cut()


class Rig(abc.ABC):
    """How one driver's situations are made; ``how`` names them for the test ids."""

    protocol: Protocol
    how: ClassVar[dict[str, str]]

    @abc.abstractmethod
    def line(self, mode: Mode, tmp_path: Path, junk: bytes = JUNK
             ) -> AbstractAsyncContextManager[Line]:
        """A line to a fresh real peer, starting in ``mode``."""


class TcpRig(Rig):
    how: ClassVar[dict[str, str]] = {
        "refuse": "nothing-listens", "junk": "tcp-junk", "silent": "tcp-silent",
        "drop": "tcp-reset"}

    def __init__(self, protocol: Protocol, server: Any) -> None:
        self.protocol = protocol
        self._server = server

    @asynccontextmanager
    async def line(self, mode: Mode, tmp_path: Path, junk: bytes = JUNK
                   ) -> AsyncIterator[Line]:
        async with self._server() as port, Relay(port, mode=mode, junk=junk) as relay:
            yield TcpLine(self.protocol, relay)


class RtuRig(Rig):
    protocol = "modbus-rtu"
    how: ClassVar[dict[str, str]] = {
        "refuse": "no-such-pty", "junk": "pty-junk", "silent": "pty-silent",
        "drop": "pty-pair-cut"}

    @asynccontextmanager
    async def line(self, mode: Mode, tmp_path: Path, junk: bytes = JUNK
                   ) -> AsyncIterator[Line]:
        line = RtuLine(tmp_path, junk)
        try:
            await line.set(mode)
            yield line
        finally:
            await line.close()


RIGS: dict[str, Rig] = {
    "modbus-tcp": TcpRig("modbus-tcp", _modbus_tcp_server),
    "modbus-rtu": RtuRig(),
    "s7": TcpRig("s7", _s7_server),
}


def drivers(situation: str | None = None) -> list[Any]:
    """The parameters: every driver, its id saying how it meets ``situation``."""
    return [pytest.param(rig, id=f"{name}/{rig.how[situation]}" if situation else name,
                         marks=[pytest.mark.needs_service("socat")]
                         if name == "modbus-rtu" else [])
            for name, rig in RIGS.items()]


# --------------------------------------------------------------------------- helpers


async def bounded(aw: Awaitable[T], what: str) -> T:
    """Await ``aw``; fail the test as a hang if it takes longer than HANG_S. (A task, not
    wait_for: a TimeoutError leaking from inside must not pass for our own deadline.)"""
    task = asyncio.ensure_future(aw)
    done, _ = await asyncio.wait({task}, timeout=HANG_S)
    if not done:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        pytest.fail(f"{what}: still waiting after {HANG_S} s (timeout_s {TIMEOUT_S}): a hang")
    return task.result()


async def poll_once(drv: Driver, plan: ReadPlan) -> list[TagReading]:
    """One poll as ``edge.daemon.BusPoller`` does it: connect (idempotent), read the plan."""
    async def go() -> list[TagReading]:
        await drv.connect()
        _, readings = await read_plan(drv, plan)
        return readings
    return await bounded(go(), f"poll of {drv.endpoint.protocol}")


def values(readings: list[TagReading]) -> dict[str, Any]:
    assert all(r.good for r in readings), [r.error for r in readings if not r.good]
    return {r.name: r.value for r in readings}


@asynccontextmanager
async def driver_for(line: Line) -> AsyncIterator[Driver]:
    drv = make_driver(line.endpoint)
    try:
        yield drv
    finally:
        await drv.close()
        await drv.close()       # idempotent, never raises


# --------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("rig", drivers())
async def test_a_good_read_returns_the_values(rig: Rig, tmp_path: Path) -> None:
    plan = _plan(rig.protocol)
    async with rig.line("pass", tmp_path) as line, driver_for(line) as drv:
        assert values(await poll_once(drv, plan)) == EXPECTED
        # connect() is idempotent: a second poll on the same connection reads the same
        assert values(await poll_once(drv, plan)) == EXPECTED


@pytest.mark.parametrize("rig", drivers("refuse"))
async def test_refused_is_a_connect_error_at_once(rig: Rig, tmp_path: Path) -> None:
    plan = _plan(rig.protocol)
    async with rig.line("refuse", tmp_path) as line, driver_for(line) as drv:
        with pytest.raises(DriverConnectError) as err:
            await bounded(drv.connect(), "connect")
        assert err.value.device == DEVICE and err.value.kind == "connect"
        # reading without a connection is the same error, not an AttributeError
        with pytest.raises(DriverConnectError):
            await bounded(read_plan(drv, plan), "read_plan unconnected")


@pytest.mark.parametrize("junk", list(JUNKS), ids=list(JUNKS))
@pytest.mark.parametrize("rig", drivers("junk"))
async def test_a_peer_answering_junk_is_garbage(rig: Rig, junk: str, tmp_path: Path) -> None:
    """From the first byte (S7 hears it at connect, Modbus at the first read)."""
    async with rig.line("junk", tmp_path, JUNKS[junk]) as line, driver_for(line) as drv:
        with pytest.raises(DriverGarbage) as err:
            await poll_once(drv, _plan(rig.protocol))
        assert err.value.device == DEVICE and err.value.kind == "garbage"


@pytest.mark.parametrize("junk", list(JUNKS), ids=list(JUNKS))
@pytest.mark.parametrize("rig", drivers("junk"))
async def test_junk_mid_session_is_garbage_then_reads_again(rig: Rig, junk: str,
                                                            tmp_path: Path) -> None:
    plan = _plan(rig.protocol)
    async with rig.line("pass", tmp_path, JUNKS[junk]) as line, driver_for(line) as drv:
        assert values(await poll_once(drv, plan)) == EXPECTED
        await line.set("junk")
        with pytest.raises(DriverGarbage):
            await poll_once(drv, plan)
        await line.set("pass")
        assert values(await poll_once(drv, plan)) == EXPECTED


@pytest.mark.parametrize("rig", drivers("silent"))
async def test_a_silent_peer_is_a_timeout(rig: Rig, tmp_path: Path) -> None:
    """Accepted, never answered: DriverTimeout within the configured timeout (S7 at the
    connect handshake, Modbus at the first read), never a hang."""
    async with rig.line("silent", tmp_path) as line, driver_for(line) as drv:
        with pytest.raises(DriverTimeout) as err:
            await poll_once(drv, _plan(rig.protocol))
        assert err.value.device == DEVICE and err.value.kind == "timeout"
        assert f"within {TIMEOUT_S:g} s" in str(err.value)


@pytest.mark.parametrize("rig", drivers("silent"))
async def test_silence_mid_session_is_a_timeout_then_reads_again(rig: Rig,
                                                                 tmp_path: Path) -> None:
    plan = _plan(rig.protocol)
    async with rig.line("pass", tmp_path) as line, driver_for(line) as drv:
        assert values(await poll_once(drv, plan)) == EXPECTED
        await line.set("silent")
        with pytest.raises(DriverTimeout):
            await poll_once(drv, plan)
        await line.set("pass")
        assert values(await poll_once(drv, plan)) == EXPECTED


@pytest.mark.parametrize("rig", drivers("drop"))
async def test_a_dropped_link_is_a_connect_error_and_the_driver_reads_once_back(
        rig: Rig, tmp_path: Path) -> None:
    """The link goes while a read waits for its answer: DriverConnectError (a lost link,
    not a slow device). While the peer is gone, connect() says so; once it is back, the
    same driver object connects and reads again."""
    plan = _plan(rig.protocol)
    async with rig.line("pass", tmp_path) as line, driver_for(line) as drv:
        assert values(await poll_once(drv, plan)) == EXPECTED
        await line.set("drop")
        with pytest.raises(DriverConnectError) as err:
            await poll_once(drv, plan)
        assert err.value.device == DEVICE
        await line.set("refuse")
        with pytest.raises(DriverConnectError):
            await poll_once(drv, plan)
        await line.set("pass")
        assert values(await poll_once(drv, plan)) == EXPECTED


def test_every_protocol_is_in_the_suite() -> None:
    """A protocol added without joining this suite fails here."""
    assert set(get_args(Protocol)) == set(RIGS)
    for protocol in RIGS:
        assert make_driver(Endpoint(protocol, DEVICE)).endpoint.protocol == protocol
