"""PLC drivers behind one interface, the read planner and the codec.

Depends on nothing else of plantsync.
"""

from protocols.address import check_fits, parse_address, tag_extent
from protocols.codec import decode, encode, plausible_orders
from protocols.driver import Driver, Endpoint
from protocols.drivers import make_driver
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
from protocols.plan import plan_reads, split_span
from protocols.read import read_plan

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
    "check_fits",
    "decode",
    "encode",
    "make_driver",
    "parse_address",
    "plan_reads",
    "plausible_orders",
    "read_plan",
    "split_span",
    "tag_extent",
]
