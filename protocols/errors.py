"""Errors raised by ``protocols``.

Hierarchy (the one place it is written down)::

    ProtocolError
    ├── AddressError            an address or tag definition that cannot be read
    ├── CodecError              bytes that cannot be decoded as the tag's type
    └── DriverError             anything that went wrong talking to a PLC
        ├── DriverConnectError  TCP refused / unreachable / serial port missing
        ├── DriverTimeout       no answer within the device's timeout
        ├── DriverGarbage       an answer that is malformed or not what was asked
        └── DeviceException     the PLC answered with an exception / error code
            └── IllegalAddress  Modbus exception 2, S7 "address out of range"

Errors from pymodbus and snap7 are translated where they enter our code
(``raise DriverTimeout(...) from exc``); nothing above returns None for failure.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Root of every error raised by ``protocols``."""


class AddressError(ProtocolError, ValueError):
    """An address string that does not parse, or does not fit the tag's type.

    ``example`` is a correct address for the same protocol, shown to the engineer.
    """

    def __init__(self, message: str, *, example: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.example = example

    def __str__(self) -> str:
        if self.example:
            return f"{self.message} (e.g. {self.example})"
        return self.message


class CodecError(ProtocolError, ValueError):
    """Raw bytes that cannot be decoded as the tag's type (wrong length, bad text)."""


class DriverError(ProtocolError):
    """A failure talking to a device. ``device`` names it when known."""

    kind = "error"  # short label used in metrics: errors by kind

    def __init__(self, message: str, *, device: str | None = None) -> None:
        super().__init__(message)
        self.device = device


class DriverConnectError(DriverError):
    """The connection could not be made (refused, unreachable, port missing)."""

    kind = "connect"


class DriverTimeout(DriverError):
    """The device did not answer within its timeout."""

    kind = "timeout"


class DriverGarbage(DriverError):
    """The device answered something malformed or not what was asked."""

    kind = "garbage"


class DeviceException(DriverError):
    """The device answered with a protocol exception (Modbus) or error code (S7)."""

    kind = "exception"

    def __init__(self, message: str, *, code: int, name: str, device: str | None = None) -> None:
        super().__init__(message, device=device)
        self.code = code
        self.name = name


class IllegalAddress(DeviceException):
    """The device says an address in the request does not exist."""

    kind = "illegal_address"
