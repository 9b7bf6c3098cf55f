"""Built-in register layouts for a plant without a config (``plantsync-edge simulate``
with no ``--config``) and for tests: a CNC lathe and an injection-molding machine over
Modbus, an injection-molding machine over S7. They match ``config/maps/*generic*``
in spirit (same roles and types), not byte for byte."""

from __future__ import annotations

from protocols.address import parse_address
from protocols.driver import Endpoint
from protocols.model import DataType, Order, TagSpec
from protocols.sim.machines import CNC_LATHE, INJECTION_MOLDER, STATES, SimPoint

__all__ = ["demo_plant", "demo_points"]

_STATES = dict(enumerate(STATES))

# name, address, type, role, extra
_CNC_MODBUS: list[tuple[str, str, str, str, dict[str, object]]] = [
    ("part_count", "HR100", "uint32", "counter", {"counts": "good"}),
    ("scrap_count", "HR102", "uint32", "counter", {"counts": "scrap"}),
    ("mode", "HR110", "uint16", "state", {"states": _STATES}),
    ("alarm_code", "HR111", "uint16", "alarm", {"alarms": CNC_LATHE.alarms}),
    ("spindle_load", "HR112", "uint16", "parameter", {"limits": (0.0, 95.0)}),
    ("spindle_speed", "HR113", "uint16", "sample", {}),
    ("spindle_temp", "HR120", "float32", "parameter",
     {"limits": (10.0, 65.0), "word_order": Order.LITTLE}),
    ("cycle_time", "HR122", "float32", "sample", {}),
    ("program", "HR130", "string", "sample", {"length": 16}),
    ("running", "DI0", "bool", "sample", {}),
    ("door_closed", "CO0", "bool", "sample", {}),
    ("coolant_temp", "IR0", "int16", "parameter", {"limits": (15.0, 35.0), "scale": 0.1}),
]

_IMM_MODBUS: list[tuple[str, str, str, str, dict[str, object]]] = [
    ("shot_count", "HR0", "uint32", "counter", {"counts": "total"}),
    ("good_parts", "HR2", "uint32", "counter", {"counts": "good"}),
    ("scrap_parts", "HR4", "uint16", "counter", {"counts": "scrap"}),
    ("machine_state", "HR10", "uint16", "state", {"states": _STATES}),
    ("alarm_code", "HR11", "uint16", "alarm", {"alarms": INJECTION_MOLDER.alarms}),
    ("zone1_temp", "HR20", "float32", "parameter", {"limits": (210.0, 240.0)}),
    ("zone2_temp", "HR22", "float32", "parameter", {"limits": (220.0, 250.0)}),
    ("zone3_temp", "HR24", "float32", "parameter", {"limits": (225.0, 255.0)}),
    ("injection_pressure", "HR30", "float32", "parameter", {"limits": (600.0, 1400.0)}),
    ("mold_temp", "HR32", "float32", "parameter", {"limits": (35.0, 60.0)}),
    ("cycle_time", "HR34", "float32", "sample", {}),
    ("mold_name", "HR40", "string", "sample", {"length": 20}),
]

_IMM_S7: list[tuple[str, str, str, str, dict[str, object]]] = [
    ("good_parts", "DB1.DBD0", "uint32", "counter", {"counts": "good"}),
    ("scrap_parts", "DB1.DBD4", "uint32", "counter", {"counts": "scrap"}),
    ("machine_state", "DB1.DBW8", "uint16", "state", {"states": _STATES}),
    ("alarm_code", "DB1.DBW10", "uint16", "alarm", {"alarms": INJECTION_MOLDER.alarms}),
    ("zone1_temp", "DB1.DBD12", "float32", "parameter", {"limits": (210.0, 240.0)}),
    ("zone2_temp", "DB1.DBD16", "float32", "parameter", {"limits": (220.0, 250.0)}),
    ("zone3_temp", "DB1.DBD20", "float32", "parameter", {"limits": (225.0, 255.0)}),
    ("injection_pressure", "DB1.DBD28", "float32", "parameter", {"limits": (600.0, 1400.0)}),
    ("mold_temp", "DB1.DBD36", "float32", "parameter", {"limits": (35.0, 60.0)}),
    ("cycle_time", "DB1.DBD40", "float32", "sample", {}),
    ("mold_name", "DB1.STRING44.20", "string", "sample", {}),
    ("running", "DB1.DBX66.0", "bool", "sample", {}),
    ("shots", "MD10", "uint32", "counter", {"counts": "total"}),
]

_LAYOUTS = {("cnc", "modbus"): _CNC_MODBUS, ("imm", "modbus"): _IMM_MODBUS,
            ("imm", "s7"): _IMM_S7}


def demo_points(kind: str, protocol: str) -> list[SimPoint]:
    """The built-in points of a ``kind`` ("cnc" | "imm") machine over ``protocol``
    ("modbus-tcp", "modbus-rtu" or "s7"; cnc has no S7 layout)."""
    family = "s7" if protocol == "s7" else "modbus"
    try:
        rows = _LAYOUTS[(kind, family)]
    except KeyError:
        raise ValueError(f"no demo layout for {kind} over {protocol}") from None
    points = []
    for name, address, type_, role, extra in rows:
        spec_kw = {k: extra[k] for k in ("length", "word_order", "scale") if k in extra}
        spec = TagSpec(name=name, address=parse_address(address, protocol),
                       type=DataType(type_), **spec_kw)  # type: ignore[arg-type]
        points.append(SimPoint(
            spec=spec, role=role, counts=extra.get("counts"),  # type: ignore[arg-type]
            states=extra.get("states"), alarms=extra.get("alarms"),  # type: ignore[arg-type]
            limits=extra.get("limits")))  # type: ignore[arg-type]
    return points


def demo_plant(*, modbus_port: int = 5020, s7_port: int = 10102,
               host: str = "127.0.0.1") -> list[tuple[str, str, list[SimPoint], Endpoint]]:
    """A small plant: two CNC lathes (units 1 and 2) and a Modbus IMM (unit 3) behind one
    Modbus TCP port, one S7 IMM. Feed each tuple to ``SimulatedPlant.add(*row)``."""
    return [
        ("cnc-01", "cnc", demo_points("cnc", "modbus-tcp"),
         Endpoint("modbus-tcp", "cnc-01", host=host, port=modbus_port, unit=1)),
        ("cnc-02", "cnc", demo_points("cnc", "modbus-tcp"),
         Endpoint("modbus-tcp", "cnc-02", host=host, port=modbus_port, unit=2)),
        ("imm-03", "imm", demo_points("imm", "modbus-tcp"),
         Endpoint("modbus-tcp", "imm-03", host=host, port=modbus_port, unit=3)),
        ("imm-07", "imm", demo_points("imm", "s7"),
         Endpoint("s7", "imm-07", host=host, port=s7_port)),
    ]
