"""Modbus TCP and Modbus RTU drivers on pymodbus's async clients.

Both drivers execute one span per round trip: HR -> FC3, IR -> FC4, CO -> FC1,
DI -> FC2. Registers come back as big-endian two-byte words, bits as one byte 0/1 each,
exactly ``span.count`` of them (the ``TagReading.raw`` form).

pymodbus's own retries and reconnect are switched off (``retries=0``,
``reconnect_delay=0``): the caller in ``edge`` owns the retry policy. Errors are
translated here, where they enter:

- connection refused / unreachable / serial port missing -> DriverConnectError
- the link lost while a request waits for its answer     -> DriverConnectError
- no answer within ``endpoint.timeout_s``                 -> DriverTimeout
- bytes that are no answer, a short or wrong-function one  -> DriverGarbage
- a Modbus exception response                              -> DeviceException with the
  code's name (exception 2 -> IllegalAddress)

After a timeout or garbage on TCP the connection is dropped, because the transaction ids
may be out of step; the next ``read`` raises DriverConnectError until ``connect``.

RTU: several devices share one serial bus. Every ``ModbusRtuDriver`` on the same serial
port shares one client and one lock (``_SerialBus``) so requests never interleave on the
wire; the bus is opened by the first driver that connects and closed with the last.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from struct import error as struct_error
from typing import ClassVar

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu import ExceptionResponse, ModbusPDU

from protocols.driver import Driver, Endpoint
from protocols.errors import (
    DeviceException,
    DriverConnectError,
    DriverError,
    DriverGarbage,
    DriverTimeout,
    IllegalAddress,
)
from protocols.model import Span

__all__ = ["EXCEPTION_NAMES", "ModbusRtuDriver", "ModbusTcpDriver"]

#: Modbus exception codes by the names the specification gives them.
EXCEPTION_NAMES: dict[int, str] = {
    1: "ILLEGAL FUNCTION",
    2: "ILLEGAL DATA ADDRESS",
    3: "ILLEGAL DATA VALUE",
    4: "SERVER DEVICE FAILURE",
    5: "ACKNOWLEDGE",
    6: "SERVER DEVICE BUSY",
    7: "NEGATIVE ACKNOWLEDGE",
    8: "MEMORY PARITY ERROR",
    10: "GATEWAY PATH UNAVAILABLE",
    11: "GATEWAY TARGET DEVICE FAILED TO RESPOND",
}

_FUNCTION_CODES = {"CO": 1, "DI": 2, "HR": 3, "IR": 4}
_MAX_COUNT = {"CO": 2000, "DI": 2000, "HR": 125, "IR": 125}

_Client = AsyncModbusTcpClient | AsyncModbusSerialClient


@dataclass
class _Wire:
    """What the client's trace hook saw since the last request was sent."""

    received: bytearray = field(default_factory=bytearray)

    def trace(self, sending: bool, data: bytes) -> bytes:
        if sending:
            self.received.clear()
        else:
            self.received.extend(data)
        return data


def _describe(endpoint: Endpoint, span: Span) -> str:
    return f"{endpoint.name}: {span.area}{span.start} count {span.count}"


async def _execute(client: _Client, wire: _Wire, endpoint: Endpoint, span: Span) -> bytes:
    """One request on a connected client; returns the span's bytes or raises DriverError."""
    where = _describe(endpoint, span)
    fc = _FUNCTION_CODES.get(span.area)
    if fc is None:
        raise DriverGarbage(f"{where}: {span.area!r} is not a Modbus area (HR, IR, CO, DI)",
                            device=endpoint.name)
    if not 1 <= span.count <= _MAX_COUNT[span.area] or not 0 <= span.start <= 0xFFFF:
        # Would be a Modbus ILLEGAL DATA VALUE at best; say so without a round trip.
        raise DeviceException(f"{where}: count must be 1..{_MAX_COUNT[span.area]} "
                              f"and start 0..65535", code=3, name=EXCEPTION_NAMES[3],
                              device=endpoint.name)
    call: Callable[..., Awaitable[ModbusPDU]] = {
        1: client.read_coils, 2: client.read_discrete_inputs,
        3: client.read_holding_registers, 4: client.read_input_registers,
    }[fc]
    try:
        # pymodbus applies endpoint.timeout_s itself; the outer wait_for is a backstop
        # against a hang inside the library (it must never block the poller forever).
        response = await asyncio.wait_for(
            call(span.start, count=span.count, device_id=endpoint.unit),
            timeout=endpoint.timeout_s * 2 + 1)
    except ConnectionException as exc:
        raise DriverConnectError(f"{where}: not connected ({exc})", device=endpoint.name) from exc
    except ModbusIOException as exc:
        text = str(exc)
        if "No response" in text:
            if wire.received:
                raise DriverGarbage(
                    f"{where}: answer is not a Modbus response to this request: "
                    f"{bytes(wire.received[:32]).hex(' ')}", device=endpoint.name) from exc
            if not client.connected:
                # The link went down under the request (peer reset, serial port gone):
                # pymodbus lets the request wait out its timeout and then says "No
                # response", but the device is unreachable, not slow.
                raise DriverConnectError(f"{where}: link lost while waiting for the answer",
                                         device=endpoint.name) from exc
            raise DriverTimeout(f"{where}: no answer within {endpoint.timeout_s:g} s",
                                device=endpoint.name) from exc
        raise DriverGarbage(f"{where}: {text}", device=endpoint.name) from exc
    except TimeoutError as exc:
        raise DriverTimeout(f"{where}: no answer within {endpoint.timeout_s:g} s",
                            device=endpoint.name) from exc
    except (ModbusException, ValueError, struct_error) as exc:
        raise DriverGarbage(f"{where}: {exc}", device=endpoint.name) from exc
    except OSError as exc:
        raise DriverConnectError(f"{where}: link lost ({exc})", device=endpoint.name) from exc
    return _response_bytes(response, fc, endpoint, span)


def _response_bytes(response: ModbusPDU, fc: int, endpoint: Endpoint, span: Span) -> bytes:
    where = _describe(endpoint, span)
    if isinstance(response, ExceptionResponse) or response.isError():
        code = int(getattr(response, "exception_code", 0))
        if (response.function_code & 0x7F) != fc:
            raise DriverGarbage(f"{where}: exception answer for function "
                                f"{response.function_code & 0x7F}, asked {fc}",
                                device=endpoint.name)
        name = EXCEPTION_NAMES.get(code, f"EXCEPTION {code}")
        message = f"{where}: device answered exception {code} {name}"
        if code == 2:
            raise IllegalAddress(message, code=code, name=name, device=endpoint.name)
        raise DeviceException(message, code=code, name=name, device=endpoint.name)
    if response.function_code != fc:
        raise DriverGarbage(f"{where}: answer is function {response.function_code}, "
                            f"asked {fc}", device=endpoint.name)
    if fc in (1, 2):
        bits = list(response.bits)
        # The wire carries whole bytes; pymodbus pads to a multiple of 8.
        if len(bits) < span.count:
            raise DriverGarbage(f"{where}: answer has {len(bits)} bits, asked {span.count}",
                                device=endpoint.name)
        return bytes(1 if b else 0 for b in bits[: span.count])
    registers = list(response.registers)
    if len(registers) != span.count:
        raise DriverGarbage(f"{where}: answer has {len(registers)} registers, "
                            f"asked {span.count}", device=endpoint.name)
    try:
        return b"".join(int(r).to_bytes(2, "big") for r in registers)
    except OverflowError as exc:
        raise DriverGarbage(f"{where}: register out of range", device=endpoint.name) from exc


async def _diagnose_connect(endpoint: Endpoint) -> DriverError:
    """pymodbus's connect() only says False; find out why with one plain TCP attempt."""
    error: DriverError
    where = f"{endpoint.name}: {endpoint.host}:{endpoint.port}"
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(endpoint.host, endpoint.port), timeout=endpoint.timeout_s)
    except ConnectionRefusedError as exc:
        error = DriverConnectError(f"{where}: connection refused (is the device on, "
                                   f"is the port right?)", device=endpoint.name)
        error.__cause__ = exc
        return error
    except TimeoutError as exc:
        error = DriverTimeout(f"{where}: no answer to connect within {endpoint.timeout_s:g} s",
                              device=endpoint.name)
        error.__cause__ = exc
        return error
    except OSError as exc:
        error = DriverConnectError(f"{where}: cannot connect ({exc})", device=endpoint.name)
        error.__cause__ = exc
        return error
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return DriverConnectError(f"{where}: connect failed (the port accepts now; try again)",
                              device=endpoint.name)


class ModbusTcpDriver(Driver):
    """Modbus TCP: one connection per device (``endpoint.host``, ``port``, ``unit``)."""

    def __init__(self, endpoint: Endpoint) -> None:
        super().__init__(endpoint)
        self._client: AsyncModbusTcpClient | None = None
        self._wire = _Wire()

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    async def connect(self) -> None:
        """Open the TCP connection. Raises DriverConnectError (refused, unreachable) or
        DriverTimeout (no answer to the connect). Idempotent."""
        if self.connected:
            return
        await self.close()
        client = AsyncModbusTcpClient(
            self.endpoint.host, port=self.endpoint.port, timeout=self.endpoint.timeout_s,
            retries=0, reconnect_delay=0, reconnect_delay_max=0,
            trace_packet=self._wire.trace, name=self.endpoint.name)
        ok = False
        with contextlib.suppress(OSError):
            ok = await client.connect()
        if not ok or not client.connected:
            client.close()
            raise await _diagnose_connect(self.endpoint)
        self._client = client

    async def read(self, span: Span) -> bytes:
        """Read one span (see the module docstring for the error mapping).
        After DriverTimeout or DriverGarbage the connection is closed."""
        client = self._client
        if client is None or not client.connected:
            await self.close()
            raise DriverConnectError(f"{self.endpoint.name}: not connected",
                                     device=self.endpoint.name)
        try:
            return await _execute(client, self._wire, self.endpoint, span)
        except (DriverTimeout, DriverGarbage, DriverConnectError):
            # Transaction ids may be out of step with the device; start over.
            await self.close()
            raise

    async def close(self) -> None:
        """Close the connection. Idempotent; never raises."""
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()


class _SerialBus:
    """One serial port: one pymodbus client, one lock, shared by every device on it."""

    _buses: ClassVar[dict[str, _SerialBus]] = {}

    def __init__(self, endpoint: Endpoint) -> None:
        assert endpoint.serial_port is not None
        self.port = endpoint.serial_port
        self.settings = (endpoint.baudrate, endpoint.parity, endpoint.stopbits)
        self.lock = asyncio.Lock()
        self.wire = _Wire()
        self.client: AsyncModbusSerialClient | None = None
        self.users: set[int] = set()
        self.loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def for_endpoint(cls, endpoint: Endpoint) -> _SerialBus:
        port = endpoint.serial_port
        if not port:
            raise DriverConnectError(f"{endpoint.name}: modbus-rtu needs serial_port",
                                     device=endpoint.name)
        bus = cls._buses.get(port)
        loop = asyncio.get_running_loop()
        if bus is None or (bus.loop is not None and bus.loop is not loop):
            bus = cls(endpoint)
            bus.loop = loop
            cls._buses[port] = bus
        elif bus.settings != (endpoint.baudrate, endpoint.parity, endpoint.stopbits):
            raise DriverConnectError(
                f"{endpoint.name}: {port} is already open as {bus.settings[0]} baud, "
                f"parity {bus.settings[1]}, {bus.settings[2]} stop bits; every device on "
                f"one bus needs the same settings", device=endpoint.name)
        return bus

    async def open(self, endpoint: Endpoint) -> None:
        if self.client is not None and self.client.connected:
            return
        if self.client is not None:
            self.client.close()
        client = AsyncModbusSerialClient(
            self.port, framer=FramerType.RTU, baudrate=endpoint.baudrate,
            parity=endpoint.parity, stopbits=endpoint.stopbits, timeout=endpoint.timeout_s,
            retries=0, reconnect_delay=0, reconnect_delay_max=0,
            trace_packet=self.wire.trace, name=self.port)
        ok = False
        with contextlib.suppress(OSError):
            ok = await client.connect()
        if not ok:
            client.close()
            raise DriverConnectError(f"{endpoint.name}: cannot open serial port {self.port}",
                                     device=endpoint.name)
        # RTU has no transaction ids: a late answer after a timeout would be taken for the
        # next one, so never let pymodbus close the port on its own count of failures.
        client.set_max_no_responses(1 << 30)
        self.client = client

    def release(self, user: int) -> None:
        self.users.discard(user)
        if not self.users:
            if self.client is not None:
                with contextlib.suppress(Exception):
                    self.client.close()
            self.client = None
            if _SerialBus._buses.get(self.port) is self:
                del _SerialBus._buses[self.port]


class ModbusRtuDriver(Driver):
    """Modbus RTU on a serial port; devices on the same port share one client and lock,
    so their requests never interleave. Each request uses its own device's timeout."""

    def __init__(self, endpoint: Endpoint) -> None:
        super().__init__(endpoint)
        self._bus: _SerialBus | None = None

    @property
    def connected(self) -> bool:
        bus = self._bus
        return bus is not None and bus.client is not None and bus.client.connected

    async def connect(self) -> None:
        """Open (or join) the serial bus. Raises DriverConnectError when the port cannot be
        opened. Idempotent."""
        if self.connected:
            return
        bus = self._bus or _SerialBus.for_endpoint(self.endpoint)
        async with bus.lock:
            await bus.open(self.endpoint)
        bus.users.add(id(self))
        self._bus = bus

    async def read(self, span: Span) -> bytes:
        """Read one span under the bus lock (see the module docstring for errors)."""
        bus = self._bus
        if bus is None or bus.client is None:
            raise DriverConnectError(f"{self.endpoint.name}: not connected",
                                     device=self.endpoint.name)
        async with bus.lock:
            client = bus.client
            if client is None or not client.connected:
                raise DriverConnectError(f"{self.endpoint.name}: serial port "
                                         f"{bus.port} is closed", device=self.endpoint.name)
            # The per-device timeout applies to this request only.
            client.ctx.comm_params.timeout_connect = self.endpoint.timeout_s
            try:
                return await _execute(client, bus.wire, self.endpoint, span)
            except (DriverTimeout, DriverGarbage):
                # A late or broken frame may still be on the wire; let the line go quiet
                # (RTU's inter-frame silence) so the next device's answer is clean.
                await asyncio.sleep(0.05)
                client.ctx.recv_buffer = b""
                raise

    async def close(self) -> None:
        """Leave the bus; the port closes with its last driver. Idempotent; never raises."""
        bus, self._bus = self._bus, None
        if bus is not None:
            bus.release(id(self))
