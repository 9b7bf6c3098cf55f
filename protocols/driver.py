"""The one driver interface (the drivers that implement it: protocols/drivers.py).

A driver connects, executes spans, and closes. It does not retry, reconnect or back
off: that loop lives in the caller (``edge``), so one policy governs every device.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from protocols.errors import DeviceException
from protocols.model import Span


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to reach one device."""

    protocol: str                  # "modbus-tcp" | "modbus-rtu" | "s7"
    name: str                      # device name, for error messages
    host: str = "127.0.0.1"
    port: int = 502
    unit: int = 1                  # Modbus unit / device id
    serial_port: str | None = None  # RTU: /dev/ttyUSB0
    baudrate: int = 19200
    parity: str = "E"
    stopbits: int = 1
    rack: int = 0                  # S7
    slot: int = 1                  # S7
    timeout_s: float = 1.0


class Driver(abc.ABC):
    """A connection to one PLC. Use as ``async with make_driver(endpoint) as drv:``."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    @abc.abstractmethod
    async def connect(self) -> None:
        """Open the connection. Raises DriverConnectError or DriverTimeout.
        Idempotent: a connected driver stays connected."""

    @abc.abstractmethod
    async def read(self, span: Span) -> bytes:
        """Read one span and return its bytes in the form ``TagReading.raw`` documents.

        Raises DriverTimeout, DriverConnectError (link lost; the driver is then closed),
        DriverGarbage, IllegalAddress or another DeviceException. Never returns partial data.
        """

    async def read_many(self, spans: tuple[Span, ...]) -> list[bytes | Exception]:
        """Read several spans in as few round trips as the protocol allows (S7 multi-var).

        Per-span device errors come back in place; a lost link or a timeout raises.
        The default reads them one at a time.
        """
        out: list[bytes | Exception] = []
        for span in spans:
            try:
                out.append(await self.read(span))
            except DeviceException as exc:
                out.append(exc)
        return out

    @property
    def pdu_size(self) -> int | None:
        """The negotiated PDU size once connected (S7), else None."""
        return None

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the connection. Idempotent; never raises."""

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
