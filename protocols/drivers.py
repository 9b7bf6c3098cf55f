"""Which driver serves which protocol: the registry, written out.

The drivers used to add themselves to a registry in ``protocols/driver.py`` when imported,
which made the interface import its implementations (a cycle hidden in a function-local
import). Here the table names them, so the interface knows none of them and a new
protocol is one line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from protocols.driver import Driver, Endpoint
from protocols.modbus import ModbusRtuDriver, ModbusTcpDriver
from protocols.s7 import S7Driver

DRIVERS: Final[dict[str, Callable[[Endpoint], Driver]]] = {
    "modbus-tcp": ModbusTcpDriver,
    "modbus-rtu": ModbusRtuDriver,
    "s7": S7Driver,
}


def make_driver(endpoint: Endpoint) -> Driver:
    """Build the driver for ``endpoint.protocol``. Raises ValueError for an unknown one."""
    try:
        factory = DRIVERS[endpoint.protocol]
    except KeyError:
        known = ", ".join(sorted(DRIVERS))
        raise ValueError(f"unknown protocol {endpoint.protocol!r} (one of {known})") from None
    return factory(endpoint)
