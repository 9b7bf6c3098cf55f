"""A simulated plant: machines laid out onto addresses and served over real protocols.

Usage (tests step the virtual clock explicitly; the live server advances it)::

    plant = SimulatedPlant(seed=7)
    plant.add("cnc-03", "cnc", points, Endpoint("modbus-tcp", "cnc-03", port=15020, unit=1))
    plant.add("imm-07", "imm", s7_points, Endpoint("s7", "imm-07", port=11102))
    async with plant:                    # start(): servers listen on 127.0.0.1
        plant.step(600)                  # ten virtual minutes
        plant.inject("cnc-03", Fault("reset"))
        plant.state()["cnc-03"]["good"]  # the true total of good parts

``Endpoint`` (from ``protocols.driver``) says where a device is served: ``modbus-tcp``
(``host``, ``port``, ``unit``; devices sharing a port are units behind one server, like a
gateway), ``modbus-rtu`` (``serial_port``, ``unit``, ``baudrate``, ``parity``,
``stopbits``; devices sharing a port are on one bus) or ``s7`` (``host``, ``port``).

Faults (``Fault.kind``), per device:

- ``reset``      counter registers restart at 0 (PLC reboot); ``tag`` limits it to one.
                 The machine stands still for ``reboot_s`` wall seconds (a rebooting PLC
                 runs nothing), so a poller sees the zero before production resumes
- ``wrap``       counter registers jump to ``max - margin`` of their type, then roll over
- ``disconnect`` stop serving for ``seconds`` (TCP/S7: the listener and its connections
                 close; RTU: the unit stops answering)
- ``slow``       answer every request ``delay_s`` late, for ``seconds`` (0: until cleared)
- ``illegal``    answer "illegal data address" (S7: item error 0x05 address out of range)
                 for requests touching ``area``/``db`` ``start``..``start+count-1``
- ``clear``      end every fault (counter offsets stay: a reset PLC stays reset)

Control channel (``control_port``): line-delimited JSON on 127.0.0.1, one answer line per
request, ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``::

    {"cmd": "state"}                                  -> {"ok": true, "devices": {...}}
    {"cmd": "fault", "device": "cnc-03", "fault": "reset"}
    {"cmd": "fault", "device": "cnc-03", "fault": "slow", "delay_s": 2, "seconds": 30}
    {"cmd": "fault", "device": "imm-07", "fault": "illegal", "area": "DB", "db": 1,
     "start": 10, "count": 4}
    {"cmd": "step", "seconds": 60}

``async def serve_plant(plant, *, stop)`` runs a plant live (virtual time = real time x
``plant.speed``) until ``stop`` is set; that is what ``plantsync-edge simulate`` calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice
from snap7.server import Server as S7Server
from snap7.type import SrvArea

from protocols.address import tag_extent
from protocols.codec import encode
from protocols.driver import Endpoint
from protocols.model import DataType, ModbusAddress, S7Address
from protocols.sim.machines import Machine, MachineProfile, SimPoint, make_machine

__all__ = ["FAULT_KINDS", "DeviceSim", "Fault", "SimulatedPlant", "serve_plant"]

log = logging.getLogger(__name__)

FAULT_KINDS = ("reset", "wrap", "disconnect", "slow", "illegal", "clear")
_SLACK = 8          # valid addresses beyond the last point (a PLC's memory is bigger)
_REG_AREAS = ("HR", "IR")
_BIT_AREAS = ("CO", "DI")
_FC_AREA = {1: "CO", 2: "DI", 3: "HR", 4: "IR"}
_SRV_AREA = {"DB": SrvArea.DB, "M": SrvArea.MK, "I": SrvArea.PE, "Q": SrvArea.PA}
_S7_AREA_CODE = {0x84: "DB", 0x83: "M", 0x81: "I", 0x82: "Q"}


@dataclass(frozen=True, slots=True)
class Fault:
    """A fault to inject into one device (see the module docstring for the kinds)."""

    kind: str
    seconds: float = 10.0        # disconnect / slow: for how long (slow: 0 = until clear)
    delay_s: float = 2.0         # slow: added to every answer
    area: str | None = None      # illegal: HR/IR/CO/DI or DB/M/I/Q
    db: int = 0
    start: int = 0
    count: int = 1
    tag: str | None = None       # reset / wrap: only this counter (default: all)
    margin: int = 3              # wrap: how far below the type's maximum
    reboot_s: float = 1.0        # reset: wall seconds the machine stands still

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {self.kind!r} (one of {', '.join(FAULT_KINDS)})")
        if self.kind == "illegal" and not self.area:
            raise ValueError("an illegal-address fault needs an area (e.g. HR or DB)")

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Fault:
        """From a control-channel request (``fault`` names the kind)."""
        fields = {k: doc[k] for k in ("seconds", "delay_s", "area", "db", "start", "count",
                                      "tag", "margin", "reboot_s") if k in doc}
        return cls(kind=str(doc.get("fault") or doc.get("kind")), **fields)


@dataclass
class _Faults:
    down_until: float = 0.0
    reboot_until: float = 0.0    # reset: the real-time clock holds this machine still
    slow_until: float = 0.0      # 0 with delay set: until cleared
    delay_s: float = 0.0
    illegal: list[tuple[str, int, int, int]] = field(default_factory=list)

    def delay(self, now: float) -> float:
        if self.delay_s and (self.slow_until == 0.0 or now < self.slow_until):
            return self.delay_s
        return 0.0

    def is_illegal(self, area: str, db: int, start: int, count: int) -> bool:
        end = start + count
        return any(a == area and d == db and start < s + n and s < end
                   for a, d, s, n in self.illegal)


class DeviceSim:
    """One simulated device: a machine, its points laid out in memory, its faults."""

    def __init__(self, name: str, machine: Machine, points: Sequence[SimPoint],
                 endpoint: Endpoint) -> None:
        self.name = name
        self.machine = machine
        self.points = tuple(points)
        self.endpoint = endpoint
        self.faults = _Faults()
        self.counter_offsets: dict[str, int] = {}
        self.requests = 0
        self.is_s7 = endpoint.protocol == "s7"
        # Modbus: registers as ints, bits as bools. S7: bytes per (area, db).
        self.words: dict[str, list[int]] = {}
        self.bits: dict[str, list[bool]] = {}
        self.s7: dict[tuple[str, int], bytearray] = {}
        self._layout()
        self.refresh()

    def _layout(self) -> None:
        ends: dict[tuple[str, int], int] = {}
        for p in self.points:
            addr = p.spec.address
            if self.is_s7 != isinstance(addr, S7Address):
                raise ValueError(f"{self.name}: {p.name} at {addr} does not fit protocol "
                                 f"{self.endpoint.protocol}")
            area, db, start, count = tag_extent(p.spec)
            ends[(area, db)] = max(ends.get((area, db), 0), start + count)
        if self.is_s7:
            for (area, db), end in ends.items():
                self.s7[(area, db)] = bytearray(end + _SLACK)
            return
        for area in _REG_AREAS:
            if (area, 0) in ends:
                self.words[area] = [0] * min(ends[(area, 0)] + _SLACK, 65536)
        for area in _BIT_AREAS:
            if (area, 0) in ends:
                size = ends[(area, 0)] + _SLACK
                self.bits[area] = [False] * min(size + (-size) % 16, 65536)

    # ------------------------------------------------------------------ values

    def counter_raw(self, point: SimPoint) -> int:
        total = int(self.machine.value_of(point))
        top = point.spec.type.max_value if point.spec.type.is_integer else (1 << 32) - 1
        return (total + self.counter_offsets.get(point.name, 0)) % (top + 1)

    def refresh(self) -> None:
        """Write every point's current value into the device's memory."""
        for p in self.points:
            value = self.counter_raw(p) if p.role == "counter" else self.machine.value_of(p)
            self._write(p, value)

    def _write(self, point: SimPoint, value: bool | int | float | str) -> None:
        spec = point.spec
        raw = encode(spec, value)
        addr = spec.address
        if isinstance(addr, ModbusAddress):
            if addr.is_bit_area:
                self.bits[addr.area][addr.offset] = raw[0] != 0
            elif spec.type is DataType.BOOL:
                words = self.words[addr.area]
                mask = 1 << (addr.bit or 0)
                on = int.from_bytes(raw, "big") != 0
                words[addr.offset] = (words[addr.offset] | mask) if on else (
                    words[addr.offset] & ~mask)
            else:
                words = self.words[addr.area]
                for i in range(len(raw) // 2):
                    words[addr.offset + i] = (raw[2 * i] << 8) | raw[2 * i + 1]
            return
        mem = self.s7[(addr.area, addr.db)]
        if spec.type is DataType.BOOL:
            mask = 1 << (addr.bit or 0)
            mem[addr.byte] = (mem[addr.byte] | mask) if raw[0] else (mem[addr.byte] & ~mask)
        else:
            mem[addr.byte:addr.byte + len(raw)] = raw

    # ------------------------------------------------------------------ faults

    def apply(self, fault: Fault, now: float) -> None:
        f = self.faults
        counters = [p for p in self.points if p.role == "counter"
                    and (fault.tag is None or p.name == fault.tag)]
        if fault.kind in ("reset", "wrap") and fault.tag and not counters:
            raise ValueError(f"{self.name}: no counter named {fault.tag!r}")
        if fault.kind == "reset":
            for p in counters:
                total = int(self.machine.value_of(p))
                self.counter_offsets[p.name] = -total
            f.reboot_until = now + fault.reboot_s
        elif fault.kind == "wrap":
            for p in counters:
                total = int(self.machine.value_of(p))
                top = p.spec.type.max_value
                self.counter_offsets[p.name] = (top - fault.margin) - total
        elif fault.kind == "disconnect":
            f.down_until = now + fault.seconds
        elif fault.kind == "slow":
            f.delay_s = fault.delay_s
            f.slow_until = now + fault.seconds if fault.seconds > 0 else 0.0
        elif fault.kind == "illegal":
            assert fault.area is not None
            f.illegal.append((fault.area.upper(), fault.db, fault.start, fault.count))
        elif fault.kind == "clear":
            self.faults = _Faults()
        self.refresh()

    def status(self) -> dict[str, Any]:
        m = self.machine
        return {
            "kind": m.profile.kind, "state": m.state, "reason": m.reason or None,
            "alarm": m.alarm_text(),
            "program": m.program, "clock_s": round(m.clock, 3),
            "good": m.good, "scrap": m.scrap, "total": m.total,
            "counters": {p.name: self.counter_raw(p) for p in self.points
                         if p.role == "counter"},
            "requests": self.requests,
        }

    # ------------------------------------------------------------------ Modbus hook

    async def modbus_action(self, function_code: int, start_address: int, address: int,
                            count: int, registers: list[int],
                            set_values: list[int] | list[bool] | None) -> ExcCodes | None:
        """pymodbus SimDevice action: faults, then copy our memory into its block."""
        self.requests += 1
        area = _FC_AREA.get(function_code)
        if area is None:
            return ExcCodes.ILLEGAL_FUNCTION
        if time.monotonic() < self.faults.down_until:
            # RTU (and a TCP server shared with healthy units): this unit is silent.
            await asyncio.sleep(3600)
        delay = self.faults.delay(time.monotonic())
        if delay:
            await asyncio.sleep(delay)
        if area in _BIT_AREAS:
            bit_off = address % 16
            nbits = max(1, count * 16 - bit_off)
            if self.faults.is_illegal(area, 0, address, nbits):
                return ExcCodes.ILLEGAL_ADDRESS
            bits = self.bits.get(area)
            if bits is None:
                return ExcCodes.ILLEGAL_ADDRESS
            first = address // 16
            for r in range(count):
                base = (first + r) * 16
                reg = 0
                for i in range(16):
                    if base + i < len(bits) and bits[base + i]:
                        reg |= 1 << i
                registers[first + r - start_address] = reg
            return None
        if self.faults.is_illegal(area, 0, address, count):
            return ExcCodes.ILLEGAL_ADDRESS
        words = self.words.get(area)
        if words is None:
            return ExcCodes.ILLEGAL_ADDRESS
        lo = address - start_address
        registers[lo:lo + count] = words[address:address + count]
        return None

    def sim_device(self) -> SimDevice:
        """The pymodbus SimDevice serving this device (4 separate blocks; bit addresses
        for coils and discrete inputs)."""
        blocks: list[list[SimData]] = []
        for area in ("CO", "DI", "HR", "IR"):
            if area in self.bits:
                blocks.append([SimData(0, count=len(self.bits[area]), values=False,
                                       datatype=SimType.BITS)])
            elif area in self.words:
                blocks.append([SimData(0, count=len(self.words[area]), values=0,
                                       datatype=SimType.REGISTERS)])
            elif area in _BIT_AREAS:
                # No points here: an area where every address is illegal.
                blocks.append([SimData(0, count=16, values=False, datatype=SimType.BITS,
                                       readonly=True)])
            else:
                blocks.append([SimData(0, count=1, datatype=SimType.INVALID)])
        return SimDevice(id=self.endpoint.unit, simdata=(blocks[0], blocks[1], blocks[2],
                                                          blocks[3]),
                         action=self.modbus_action)


class _PlantS7Server(S7Server):
    """snap7's server with our faults: a late answer and address-out-of-range items.

    Pinned to python-snap7 3.3: overrides the private ``_read_from_memory_area``."""

    def __init__(self, device: DeviceSim, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(log=False)
        self.device = device
        self.loop = loop

    def _read_from_memory_area(self, area: Any, db_number: int, start: int,
                               count: int) -> tuple[int, bytearray]:
        dev = self.device
        dev.requests += 1
        now = time.monotonic()
        delay = dev.faults.delay(now)
        if delay:
            time.sleep(delay)   # this is the server's per-client thread
        name = _S7_AREA_CODE.get(int(area), "?")
        if dev.faults.is_illegal(name, db_number if name == "DB" else 0, start, count):
            return (0x05, bytearray())
        result: tuple[int, bytearray] = super()._read_from_memory_area(
            area, db_number, start, count)
        return result


@dataclass
class _Listener:
    key: tuple[str, str, int]           # protocol, host or serial port, port
    devices: list[DeviceSim]
    server: Any = None


class SimulatedPlant:
    """Machines served over Modbus TCP, Modbus RTU and S7, on one virtual clock.

    ``seed`` makes every machine deterministic; ``speed`` is virtual seconds per real
    second when the plant runs live (``serve_plant`` or ``start(live=True)``);
    ``control_port`` opens the line-JSON control channel on 127.0.0.1 (0: any free
    port, see ``control_address``; None: no channel).
    """

    def __init__(self, *, seed: int = 0, speed: float = 1.0,
                 control_port: int | None = None) -> None:
        self.seed = seed
        self.speed = speed
        self.control_port = control_port
        self.devices: dict[str, DeviceSim] = {}
        self._listeners: dict[tuple[str, str, int], _Listener] = {}
        self._control: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False

    # ------------------------------------------------------------------ building

    def add(self, name: str, machine: str | MachineProfile | Machine,
            points: Sequence[SimPoint], endpoint: Endpoint) -> DeviceSim:
        """Add a device: a machine (``"cnc"``, ``"imm"``, a profile or a built Machine)
        whose ``points`` are served at ``endpoint``. Before ``start`` only."""
        if self._started:
            raise RuntimeError("add devices before start()")
        if name in self.devices:
            raise ValueError(f"device {name!r} is already in the plant")
        if not isinstance(machine, Machine):
            machine = make_machine(machine, name, points, seed=self.seed)
        if endpoint.protocol not in ("modbus-tcp", "modbus-rtu", "s7"):
            raise ValueError(f"{name}: cannot serve protocol {endpoint.protocol!r}")
        dev = DeviceSim(name, machine, points, endpoint)
        key = self._key(endpoint)
        listener = self._listeners.setdefault(key, _Listener(key, []))
        if endpoint.protocol == "s7" and listener.devices:
            raise ValueError(f"{name}: port {endpoint.port} already serves S7 device "
                             f"{listener.devices[0].name}")
        if any(d.endpoint.unit == endpoint.unit for d in listener.devices):
            raise ValueError(f"{name}: unit {endpoint.unit} is taken on {key[1]}:{key[2]}")
        listener.devices.append(dev)
        self.devices[name] = dev
        return dev

    @staticmethod
    def _key(ep: Endpoint) -> tuple[str, str, int]:
        if ep.protocol == "modbus-rtu":
            if not ep.serial_port:
                raise ValueError(f"{ep.name}: modbus-rtu needs serial_port")
            return (ep.protocol, ep.serial_port, 0)
        return (ep.protocol, ep.host, ep.port)

    # ------------------------------------------------------------------ clock

    def step(self, seconds: float) -> None:
        """Advance every machine's virtual clock and refresh what the servers show."""
        for dev in self.devices.values():
            dev.machine.step(seconds)
            dev.refresh()

    def inject(self, device: str, fault: Fault | str, **params: Any) -> None:
        """Inject a fault into one device: ``inject("cnc-03", "reset")`` or
        ``inject("cnc-03", Fault("slow", delay_s=2))``. Raises KeyError / ValueError."""
        try:
            dev = self.devices[device]
        except KeyError:
            raise KeyError(f"no device {device!r} (have {', '.join(self.devices)})") from None
        f = fault if isinstance(fault, Fault) else Fault(kind=fault, **params)
        dev.apply(f, time.monotonic())
        if f.kind in ("disconnect", "clear") and self._started:
            seconds = f.seconds if f.kind == "disconnect" else 0.0
            loop = asyncio.get_running_loop()
            self._tasks.append(loop.create_task(self._outage(dev, seconds)))

    def state(self) -> dict[str, dict[str, Any]]:
        """Each device's true totals (good/scrap/total), state, alarm, counter registers."""
        return {name: dev.status() for name, dev in self.devices.items()}

    # ------------------------------------------------------------------ serving

    async def start(self, *, live: bool = False) -> None:
        """Start every server (and the control channel). ``live``: advance the clock
        from the real one, ``speed`` times faster. Raises OSError when a port is taken."""
        if self._started:
            return
        self._started = True
        try:
            for listener in self._listeners.values():
                await self._open(listener)
            if self.control_port is not None:
                self._control = await asyncio.start_server(
                    self._control_client, "127.0.0.1", self.control_port)
            if live:
                self._tasks.append(asyncio.create_task(self._run_clock()))
        except BaseException:
            await self.stop()
            raise

    @property
    def control_address(self) -> tuple[str, int] | None:
        """Where the control channel listens, once started."""
        if self._control is None or not self._control.sockets:
            return None
        host, port = self._control.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def stop(self) -> None:
        """Stop servers, control channel and clock. Idempotent."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._control is not None:
            self._control.close()
            with contextlib.suppress(Exception):
                await self._control.wait_closed()
            self._control = None
        for listener in self._listeners.values():
            await self._close(listener)
        self._started = False

    async def __aenter__(self) -> SimulatedPlant:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _open(self, listener: _Listener) -> None:
        protocol, where, port = listener.key
        first = listener.devices[0].endpoint
        if protocol == "s7":
            dev = listener.devices[0]
            s7 = _PlantS7Server(dev, asyncio.get_running_loop())
            s7.host = where
            for (area, db), mem in dev.s7.items():
                s7.register_area(_SRV_AREA[area], db, mem)  # the same bytearray
            s7.start(tcp_port=port)
            listener.server = s7
            return
        devices = [d.sim_device() for d in listener.devices]
        server: ModbusTcpServer | ModbusSerialServer
        if protocol == "modbus-tcp":
            server = ModbusTcpServer(devices, address=(where, port))
        else:
            server = ModbusSerialServer(
                devices, framer=FramerType.RTU, port=where, baudrate=first.baudrate,
                parity=first.parity, stopbits=first.stopbits)
        await server.serve_forever(background=True)
        listener.server = server

    async def _close(self, listener: _Listener) -> None:
        server, listener.server = listener.server, None
        if server is None:
            return
        if isinstance(server, S7Server):
            await asyncio.to_thread(server.stop)
            return
        with contextlib.suppress(Exception):
            await server.shutdown()

    async def _outage(self, dev: DeviceSim, seconds: float) -> None:
        """Disconnect: close the device's listener (TCP, S7) for ``seconds``. An RTU bus
        stays open; the unit is silent meanwhile (see ``modbus_action``)."""
        listener = self._listeners[self._key(dev.endpoint)]
        if dev.endpoint.protocol == "modbus-rtu":
            return
        if seconds > 0:
            await self._close(listener)
            await asyncio.sleep(seconds)
        if listener.server is None and self._started:
            for _ in range(50):   # the port may linger a moment after close
                try:
                    await self._open(listener)
                    break
                except (OSError, RuntimeError, Exception):
                    await asyncio.sleep(0.1)

    async def _run_clock(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(0.2)
            now = loop.time()
            wall = time.monotonic()
            for dev in self.devices.values():
                if wall >= dev.faults.reboot_until:
                    dev.machine.step((now - last) * self.speed)
                    dev.refresh()
            last = now

    # ------------------------------------------------------------------ control

    async def _control_client(self, reader: asyncio.StreamReader,
                              writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                if not line.strip():
                    continue
                answer = self.handle_command(line)
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def handle_command(self, line: bytes | str | dict[str, Any]) -> dict[str, Any]:
        """One control-channel request to its answer (never raises)."""
        try:
            doc = line if isinstance(line, dict) else json.loads(line)
            if not isinstance(doc, dict):
                raise ValueError("a request is a JSON object")
            cmd = doc.get("cmd")
            if cmd == "state":
                return {"ok": True, "devices": self.state()}
            if cmd == "fault":
                fault = Fault.from_json(doc)
                self.inject(str(doc.get("device")), fault)
                return {"ok": True, "fault": asdict(fault)}
            if cmd == "step":
                self.step(float(doc.get("seconds", 1.0)))
                return {"ok": True, "devices": self.state()}
            raise ValueError(f"unknown cmd {cmd!r} (state, fault, step)")
        except (ValueError, KeyError, TypeError) as exc:
            return {"ok": False, "error": str(exc).strip("'\"")}


async def serve_plant(plant: SimulatedPlant, *, stop: asyncio.Event) -> None:
    """Serve ``plant`` live until ``stop`` is set: start its servers (and control
    channel), advance its clock from the real one times ``plant.speed``, then stop
    everything. Raises OSError when a port is taken (nothing stays open then)."""
    await plant.start(live=True)
    try:
        await stop.wait()
    finally:
        await plant.stop()
