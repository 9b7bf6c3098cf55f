"""PLC drivers behind one interface, the read planner and the codec.

Depends on nothing else of plantsync.
"""

from protocols.driver import Driver, Endpoint, make_driver
from protocols.errors import (
    AddressError,
    CodecError,
    DeviceException,
    DriverConnectError,
    DriverError,
    DriverGarbage,
    DriverTimeout,
    IllegalAddress,
    ProtocolError,
)
from protocols.model import (
    Address,
    DataType,
    ModbusAddress,
    Order,
    PlanLimits,
    ReadPlan,
    Request,
    S7Address,
    Span,
    TagReading,
    TagSpec,
)

__all__ = [
    "Address",
    "AddressError",
    "CodecError",
    "DataType",
    "DeviceException",
    "Driver",
    "DriverConnectError",
    "DriverError",
    "DriverGarbage",
    "DriverTimeout",
    "Endpoint",
    "IllegalAddress",
    "ModbusAddress",
    "Order",
    "PlanLimits",
    "ProtocolError",
    "ReadPlan",
    "Request",
    "S7Address",
    "Span",
    "TagReading",
    "TagSpec",
    "make_driver",
]
