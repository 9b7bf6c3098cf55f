"""Machine behaviour models: a CNC lathe and an injection-molding machine.

A machine lives on a virtual clock: ``step(seconds)`` advances it, nothing else does.
Everything random comes from one ``random.Random`` seeded with ``(seed, name)``, so the
same seed and the same steps give the same history, to the piece.

What a machine does (per profile, see ``CNC_LATHE`` / ``INJECTION_MOLDER``), following
physics its register map can check:

- states ``off``, ``idle``, ``running``, ``alarm``, ``setup``; every stop has a reason
  (``reason``: a code of ``REASONS``, e.g. ``heating``, ``changeover``, ``heater_fault``);
- heated machines (an IMM's barrel zones and nozzle) heat up towards their setpoint
  whenever the machine is powered and cool towards the room when it is off; the machine
  starts running only when every heated zone is inside its band (state ``idle``, reason
  ``heating``, meanwhile). The first shots after a heat-up are scrap;
- while running, cycles scatter around the program's ideal cycle (``programs``: program
  -> ideal seconds): a few percent slower as a rule, now and then a slow cycle, never
  faster than the ideal and always inside the cycle-time tag's limits. A cycle ends in a
  good part or, with ``scrap_rate``, a scrap part (an IMM shot makes ``cavities`` parts);
- alarms have a cause (``Cause``): a heater fault lets a zone cool until the controller
  sees it out of band for ``band_delay_s`` and raises the alarm; tool wear drives the
  spindle load up to an overload; some alarms come without a warning. A repaired cause
  often comes back within minutes (``burst``), so alarms arrive in bursts;
- short stops without an alarm (waiting for material, no operator) and, when
  ``auto_setup`` is on, changeovers to another program (state ``setup``);
- parameters hold their nominal value with noise; a few wander out of their limits now
  and then (``excursion_per_h``); speeds stay inside their limits;
- ``schedule`` (optional): a function of the machine's epoch time (``epoch0 + clock``)
  answering ``"work"``, ``"break"`` or ``"off"``; a machine stops for breaks (idle,
  reason ``break``) and is switched off outside the shifts (reason ``no_shift``);
- ``wait_scale`` > 1 shortens every wait (stops, repairs, heating), never a cycle: a
  faster demo without faster parts.

The true totals (``good``, ``scrap``, ``total``) never go back; the counter *registers*
of a device may (faults), see ``protocols.sim.plant``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from protocols.model import DataType, TagSpec

__all__ = [
    "CNC_LATHE",
    "INJECTION_MOLDER",
    "REASONS",
    "STATES",
    "Cause",
    "Machine",
    "MachineProfile",
    "SimPoint",
    "make_machine",
]

STATES = ("off", "idle", "running", "alarm", "setup")

#: Stop reasons a machine gives (code -> words people use, Chinese first).
REASONS: dict[str, str] = {
    "heating": "升温 heating up",
    "break": "休息 break",
    "no_shift": "非班次 no shift",
    "changeover": "换型 changeover",
    "waiting_material": "待料 waiting for material",
    "no_operator": "缺操作工 no operator",
    "quality_check": "首检 quality check",
    "alarm_reset": "报警复位 alarm reset",
    "heater_fault": "加热器故障 heater fault",
    "temp_control": "温控故障 temperature control fault",
    "mold_protection": "模具保护 mold protection",
    "hydraulic_temp": "液压油温高 hydraulic oil hot",
    "ejector_fault": "顶针故障 ejector fault",
    "spindle_overload": "主轴过载 spindle overload",
    "tool_breakage": "断刀 tool breakage",
    "coolant_low": "冷却液不足 coolant low",
    "door_open": "安全门打开 door opened",
}


@dataclass(frozen=True, slots=True)
class SimPoint:
    """One protocol-level point of a simulated machine: where it lives (``spec``) and
    what it means (``role``: counter | state | alarm | parameter | sample), with the
    register map's ``counts`` (good | scrap | total), ``states`` / ``alarms`` tables and
    ``limits``. The edge CLI builds these from a register map."""

    spec: TagSpec
    role: str
    counts: str | None = None
    states: dict[int, str] | None = None
    alarms: dict[int, str] | None = None
    limits: tuple[float, float] | None = None

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True, slots=True)
class Cause:
    """Why an alarm comes. ``words`` find the alarm in a map's table (its text); ``tag``
    words name the parameter it drives (``push``: "down" = towards the room, e.g. a
    heater off; "up" = past its upper limit, e.g. a worn tool's spindle load), else the
    alarm comes at once. ``repair_s``: how long it takes to fix; ``burst``: the chance it
    comes back within ``burst_s`` after a repair."""

    reason: str
    per_h: float
    words: tuple[str, ...]
    tag: tuple[str, ...] = ()
    push: str = ""
    repair_s: tuple[float, float] = (120.0, 600.0)
    burst: float = 0.0
    burst_s: tuple[float, float] = (120.0, 600.0)


@dataclass(frozen=True, slots=True)
class MachineProfile:
    kind: str
    cycle_s: tuple[float, float]           # the range of ideal cycles (programs' ideals)
    scrap_rate: float
    cavities: int
    alarm_per_h: float                     # alarms without a cause of their own
    alarm_s: tuple[float, float]
    setup_per_h: float
    setup_s: tuple[float, float]
    idle_per_h: float
    idle_s: tuple[float, float]
    off_per_h: float
    off_s: tuple[float, float]
    alarms: dict[int, str]
    programs: tuple[str, ...]
    ideal_s: dict[str, float] = field(default_factory=dict)   # program -> ideal cycle
    causes: tuple[Cause, ...] = ()
    heated: tuple[str, ...] = ()           # tag words of zones that must be in band
    slow_cycle_rate: float = 0.04

    def ideal_cycle_s(self, program: str) -> float:
        return self.ideal_s.get(program, sum(self.cycle_s) / 2)


CNC_LATHE = MachineProfile(
    kind="cnc", cycle_s=(22.0, 45.0), scrap_rate=0.025, cavities=1,
    alarm_per_h=0.0, alarm_s=(60.0, 300.0), setup_per_h=0.15, setup_s=(600.0, 1500.0),
    idle_per_h=0.45, idle_s=(60.0, 600.0), off_per_h=0.0, off_s=(300.0, 900.0),
    alarms={1001: "Spindle overload", 2002: "Coolant low", 3003: "Tool wear limit",
            4004: "Door open", 5005: "Chuck pressure low"},
    programs=("O1001-SHAFT", "O1002-FLANGE", "O2040-BUSHING", "O3300-PIN"),
    ideal_s={"O1001-SHAFT": 32.0, "O1002-FLANGE": 45.0, "O2040-BUSHING": 26.0,
             "O3300-PIN": 22.0},
    causes=(
        Cause("spindle_overload", 0.06, ("overload", "load"), ("load",), "up",
              (300.0, 1200.0), burst=0.35),
        Cause("tool_breakage", 0.04, ("tool",), repair_s=(600.0, 1800.0)),
        Cause("coolant_low", 0.03, ("coolant",), ("spindle_temp", "coolant"), "up",
              (300.0, 900.0), burst=0.2),
        Cause("door_open", 0.05, ("door",), repair_s=(30.0, 120.0), burst=0.4,
              burst_s=(60.0, 300.0)),
    ),
)

INJECTION_MOLDER = MachineProfile(
    kind="imm", cycle_s=(20.0, 28.0), scrap_rate=0.02, cavities=1,
    alarm_per_h=0.0, alarm_s=(60.0, 300.0), setup_per_h=0.1, setup_s=(900.0, 2400.0),
    idle_per_h=0.35, idle_s=(60.0, 600.0), off_per_h=0.0, off_s=(300.0, 900.0),
    alarms={101: "Barrel zone overtemperature", 102: "Hydraulic oil temperature high",
            201: "Mold protection tripped", 202: "Ejector fault", 301: "Hopper empty"},
    programs=("MOLD-A17-HOUSING", "MOLD-B02-CAP", "MOLD-C33-CLIP"),
    ideal_s={"MOLD-A17-HOUSING": 28.0, "MOLD-B02-CAP": 20.0, "MOLD-C33-CLIP": 24.0},
    causes=(
        Cause("heater_fault", 0.06, ("barrel", "zone", "heater"), ("zone", "nozzle"), "down",
              (600.0, 1800.0), burst=0.4, burst_s=(300.0, 1200.0)),
        Cause("temp_control", 0.04, ("overtemp", "out of band", "barrel"), ("zone", "nozzle"),
              "up", (300.0, 900.0), burst=0.3),
        Cause("mold_protection", 0.05, ("mold protection", "mold"), repair_s=(120.0, 600.0),
              burst=0.3, burst_s=(60.0, 400.0)),
        Cause("hydraulic_temp", 0.02, ("hydraulic",), repair_s=(600.0, 1500.0)),
        Cause("ejector_fault", 0.025, ("ejector",), repair_s=(300.0, 900.0)),
    ),
    heated=("zone", "nozzle", "barrel"),
)

_PROFILES = {"cnc": CNC_LATHE, "cnc-lathe": CNC_LATHE, "lathe": CNC_LATHE,
             "imm": INJECTION_MOLDER, "injection-molding": INJECTION_MOLDER,
             "injection-molder": INJECTION_MOLDER}

ROOM_C = 24.0
HEAT_THETA = 1 / 400.0      # barrel heating/cooling: about 17 minutes from cold to band
BAND_DELAY_S = 45.0         # a controller raises "out of band" after this long outside


@dataclass
class _Drift:
    """An Ornstein-Uhlenbeck walk around ``nominal``; during an excursion or a forced
    push the target is beyond a limit. ``idle_target`` is where it settles when the
    machine is not running; ``heated`` ones follow power, not production."""

    nominal: float
    sigma: float
    lo: float | None
    hi: float | None
    idle_target: float
    theta: float = 0.02
    excursion_per_h: float = 0.0
    heated: bool = False
    clamp: bool = False          # speeds: a drive never exceeds its limits
    value: float = 0.0
    excursion_left: float = 0.0
    excursion_target: float = 0.0
    forced: float | None = None  # a cause's push: the target until repaired

    def step(self, rng: random.Random, dt: float, running: bool, powered: bool) -> None:
        theta = self.theta
        if self.forced is not None:
            target = self.forced
        elif self.excursion_left > 0:
            self.excursion_left -= dt
            target, theta = self.excursion_target, 0.1
        elif running and self.excursion_per_h and self.lo is not None and \
                self.hi is not None and rng.random() < self.excursion_per_h * dt / 3600.0:
            span = self.hi - self.lo
            self.excursion_left = rng.uniform(30.0, 120.0)
            self.excursion_target = (self.hi + 0.15 * span if rng.random() < 0.6
                                     else self.lo - 0.15 * span)
            target, theta = self.excursion_target, 0.1
        elif self.heated:
            target, theta = (self.nominal if powered else ROOM_C), HEAT_THETA
        elif running or not math.isnan(self.idle_target):
            target = self.nominal if running else self.idle_target
        else:
            return   # holds its last value
        self.value += min(1.0, theta * dt) * (target - self.value)
        self.value += self.sigma * math.sqrt(dt) * rng.gauss(0.0, 1.0) * 0.1
        if self.clamp and self.lo is not None and self.hi is not None:
            self.value = min(self.hi, max(self.lo, self.value))

    def in_band(self, margin: float = 0.0) -> bool:
        if self.lo is None or self.hi is None:
            return True
        return self.lo + margin <= self.value <= self.hi - margin


@dataclass
class _Fault:
    cause: Cause
    drift: str | None            # the parameter it pushes
    since: float                 # clock when the cause began
    out_since: float | None = None   # since when its tag is out of band


@dataclass
class Machine:
    """One simulated machine on a virtual clock. Build with ``make_machine``."""

    name: str
    profile: MachineProfile
    points: tuple[SimPoint, ...]
    seed: int = 0
    clock: float = 0.0
    state: str = "idle"
    reason: str = "heating"
    good: int = 0
    scrap: int = 0
    alarm_code: int = 0          # 0 = none; else 1 + alarm_pick (see _alarm_value)
    alarm_pick: int = 0
    alarm_words: tuple[str, ...] = ()
    program: str = ""
    last_cycle_s: float = 0.0
    auto_setup: bool = True      # off: only ``changeover`` changes the program
    wait_scale: float = 1.0
    epoch0: float = 0.0          # epoch seconds at clock 0 (for ``schedule``)
    schedule: Callable[[float], str] | None = None
    warm: bool = True            # start with heated zones at their setpoint
    _state_left: float = 0.0
    _cycle_left: float = 0.0
    _cycle_len: float = 0.0
    _scrap_next: int = 0
    _fault: _Fault | None = None
    _bursts: list[tuple[float, Cause]] = field(default_factory=list)
    _rng: random.Random = field(default_factory=random.Random)
    _drifts: dict[str, _Drift] = field(default_factory=dict)
    _cycle_limits: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        self._rng = random.Random(f"{self.seed}:{self.name}")
        self.program = self.program or self._rng.choice(self.profile.programs)
        self._state_left = self._rng.uniform(1.0, 5.0)
        for p in self.points:
            if p.role in ("parameter", "sample") and p.spec.type not in (
                    DataType.STRING, DataType.BOOL):
                if _matches(p.name, ("cycle",)):
                    if p.limits:
                        self._cycle_limits = p.limits
                    continue
                drift = _drift_for(p, self.profile, self._rng)
                if drift.heated and self.warm:
                    drift.value = drift.nominal
                self._drifts[p.name] = drift
        self.last_cycle_s = self._ideal()
        self.reason = "heating" if not self._heated_ok() else "waiting_material"

    # ------------------------------------------------------------------ clock

    @property
    def total(self) -> int:
        return self.good + self.scrap

    @property
    def epoch(self) -> float:
        """Where the machine is on the epoch clock (``epoch0 + clock``)."""
        return self.epoch0 + self.clock

    def ideal_cycle_s(self, program: str | None = None) -> float:
        """The ideal cycle of ``program`` (default: the current one), in seconds, inside
        the cycle-time tag's limits: what a routing should say."""
        return self._ideal(program)

    def step(self, seconds: float, *, max_tick: float = 1.0) -> None:
        """Advance the virtual clock by ``seconds`` (in ticks of at most ``max_tick``)."""
        left = seconds
        while left > 1e-9:
            dt = min(max_tick, left)
            self._tick(dt)
            left -= dt

    def changeover(self, program: str, setup_s: float | None = None) -> None:
        """Change to ``program``: state ``setup`` (reason ``changeover``) for ``setup_s``
        (default: the profile's), then back to production."""
        if program == self.program:
            return
        self.program = program
        self.alarm_code = 0
        self._fault_clear()
        self._enter("setup", "changeover",
                    self._rng.uniform(*self.profile.setup_s) if setup_s is None else setup_s)

    def _enter(self, state: str, reason: str, seconds: float) -> None:
        self.state, self.reason = state, reason
        self._state_left = seconds / max(self.wait_scale, 1e-9)

    def _tick(self, dt: float) -> None:
        rng = self._rng
        self.clock += dt
        plan = self.schedule(self.epoch) if self.schedule is not None else "work"
        if plan != "work":
            want = ("off", "no_shift") if plan == "off" else ("idle", "break")
            if self.state != "alarm" and (self.state, self.reason) != want:
                self.state, self.reason = want
                self._fault_clear()
        elif self.reason in ("break", "no_shift"):
            self._state_left = 0.0
        running = self.state == "running"
        powered = self.state != "off"
        for drift in self._drifts.values():
            drift.step(rng, dt, running, powered)
        self._fault_tick()
        if self.state == "running":
            self._cycle_left -= dt
            while self._cycle_left <= 0 and self.state == "running":
                self._finish_cycle()
            if self.state == "running":
                self._maybe_interrupt(dt)
        else:
            self._state_left -= dt
            if self._state_left <= 0 and plan == "work":
                self._resume()

    def _ideal(self, program: str | None = None) -> float:
        ideal = self.profile.ideal_cycle_s(program or self.program)
        if self._cycle_limits:
            ideal = max(ideal, self._cycle_limits[0])
        return ideal

    def _start_cycle(self, carry: float = 0.0) -> None:
        ideal = self._ideal()
        rng = self._rng
        if rng.random() < self.profile.slow_cycle_rate:
            length = ideal * rng.uniform(1.2, 1.5)
        else:
            length = ideal * (1.02 + abs(rng.gauss(0.0, 0.03)))
        if self._cycle_limits:
            length = min(length, self._cycle_limits[1])
        self._cycle_len = max(length, ideal)
        self._cycle_left = self._cycle_len + carry

    def _finish_cycle(self) -> None:
        for _ in range(self.profile.cavities):
            if self._scrap_next > 0 or self._rng.random() < self.profile.scrap_rate:
                self.scrap += 1
            else:
                self.good += 1
        self._scrap_next = max(0, self._scrap_next - 1)
        self.last_cycle_s = self._cycle_len
        self._start_cycle(self._cycle_left)

    def _maybe_interrupt(self, dt: float) -> None:
        rng, p = self._rng, self.profile
        per_s = dt / 3600.0
        for when, cause in list(self._bursts):
            if self.clock >= when:
                self._bursts.remove((when, cause))
                if self._fault is None:
                    self._start_fault(cause)
                    return
        if self._fault is not None:
            return
        roll = rng.random()
        for cause in p.causes:
            if roll < cause.per_h * per_s:
                self._start_fault(cause)
                return
            roll -= cause.per_h * per_s
        if roll < p.alarm_per_h * per_s:
            self._alarm(("",), "alarm_reset", rng.uniform(*p.alarm_s))
        elif roll < (p.alarm_per_h + p.setup_per_h) * per_s:
            if self.auto_setup:
                others = [x for x in p.programs if x != self.program] or list(p.programs)
                self.program = rng.choice(others)
                self._enter("setup", "changeover", rng.uniform(*p.setup_s))
        elif roll < (p.alarm_per_h + p.setup_per_h + p.idle_per_h) * per_s:
            reason = rng.choice(("waiting_material", "no_operator", "quality_check"))
            self._enter("idle", reason, rng.uniform(*p.idle_s))
        elif roll < (p.alarm_per_h + p.setup_per_h + p.idle_per_h + p.off_per_h) * per_s:
            self._enter("off", "no_operator", rng.uniform(*p.off_s))

    # ------------------------------------------------------------------ causes

    def _start_fault(self, cause: Cause) -> None:
        drift_name = None
        if cause.tag:
            names = [n for n in self._drifts if _matches(n, cause.tag)]
            if names:
                drift_name = self._rng.choice(sorted(names))
        if drift_name is None:
            self._fault = _Fault(cause, None, self.clock)
            self._alarm(cause.words, cause.reason, self._rng.uniform(*cause.repair_s))
            return
        drift = self._drifts[drift_name]
        span = (drift.hi - drift.lo) if drift.lo is not None and drift.hi is not None else 10.0
        if cause.push == "down":
            drift.forced = ROOM_C if drift.heated else (drift.lo or 0.0) - 0.3 * span
        else:
            drift.forced = (drift.hi if drift.hi is not None else drift.nominal) + 0.3 * span
        self._fault = _Fault(cause, drift_name, self.clock)

    def _fault_tick(self) -> None:
        f = self._fault
        if f is None or self.state == "alarm":
            return
        if f.drift is not None and self.state == "running":
            drift = self._drifts[f.drift]
            if drift.in_band():
                f.out_since = None
            elif f.out_since is None:
                f.out_since = self.clock
            elif self.clock - f.out_since >= BAND_DELAY_S:
                self._alarm(f.cause.words, f.cause.reason,
                            self._rng.uniform(*f.cause.repair_s))
        elif self.state != "running" and self.clock - f.since > 900:
            self._fault_clear()   # found and fixed while the machine stood anyway

    def _alarm(self, words: tuple[str, ...], reason: str, repair_s: float) -> None:
        self.alarm_words = words
        self.alarm_pick = self._rng.randrange(1 << 16)
        self.alarm_code = 1 + self.alarm_pick % 0xFFFF
        self._enter("alarm", reason, repair_s)

    def _fault_clear(self) -> None:
        f, self._fault = self._fault, None
        if f is not None and f.drift is not None:
            self._drifts[f.drift].forced = None

    def _heated_ok(self) -> bool:
        return all(d.in_band(margin=0.5) for d in self._drifts.values() if d.heated)

    def _resume(self) -> None:
        if self.state == "alarm":
            f = self._fault
            self._fault_clear()
            if f is not None and f.cause.burst and self._rng.random() < f.cause.burst:
                self._bursts.append((self.clock + self._rng.uniform(*f.cause.burst_s),
                                     f.cause))
            self.alarm_code = 0
            self._enter("idle", "alarm_reset", self._rng.uniform(20.0, 90.0))
            return
        if not self._heated_ok():
            self.state, self.reason = "idle", "heating"
            self._state_left = 10.0 / max(self.wait_scale, 1e-9)
            if self.wait_scale > 1:
                for d in self._drifts.values():
                    if d.heated:   # a faster demo heats faster, it does not run faster
                        d.value += min(1.0, HEAT_THETA * 10 * self.wait_scale) * (
                            d.nominal - d.value)
            return
        if self.reason == "heating":
            self._scrap_next = self._rng.randint(2, 4)   # purge shots after a heat-up
        self.state, self.reason = "running", ""
        self._start_cycle()

    # ------------------------------------------------------------------ values

    def value_of(self, point: SimPoint) -> bool | int | float | str:
        """The engineering value a point shows now (counters: the true total;
        a device applies its counter faults on top)."""
        t = point.spec.type
        if point.role == "counter":
            return {"good": self.good, "scrap": self.scrap}.get(point.counts or "total",
                                                               self.total)
        if point.role == "state":
            return self._state_code(point) if t is not DataType.BOOL else self.state == "running"
        if point.role == "alarm":
            if t is DataType.BOOL:
                return self.alarm_code != 0
            return self._alarm_value(point)
        if t is DataType.STRING:
            return self.program[: point.spec.length] if point.spec.length else self.program
        if t is DataType.BOOL:
            if _matches(point.name, ("door", "gate")):
                return not (self.state == "alarm" and self.reason == "door_open")
            return self.state == "running" or (
                self.state != "off" and _matches(point.name, ("motor",)))
        if _matches(point.name, ("cycle",)):
            value = self.last_cycle_s
        elif _matches(point.name, ("feed", "override")):
            value = 100.0
        else:
            drift = self._drifts.get(point.name)
            value = drift.value if drift else 0.0
        if t.is_integer:
            if point.spec.scale != 1.0 or point.spec.offset != 0.0:
                return max(value, 0.0) if t.is_unsigned_int else value  # encode rounds
            ivalue = round(value)
            if t.is_unsigned_int:
                ivalue = max(0, ivalue)
            return min(ivalue, t.max_value)
        return value

    def _state_code(self, point: SimPoint) -> int:
        table = point.states or {i: s for i, s in enumerate(STATES)}
        wanted = _STATE_WORDS[self.state]
        if self.state == "setup" and self.reason == "changeover" and self.profile.kind == "imm":
            for code, label in table.items():
                if "mold" in label.lower() or "change" in label.lower():
                    return code
        for code, label in table.items():
            if label.lower() == self.state:
                return code
        for code, label in table.items():
            if any(w in label.lower() for w in wanted):
                return code
        return min(table) if table else 0

    def _alarm_value(self, point: SimPoint) -> int:
        if not self.alarm_code:
            return 0
        return self._alarm_in(point.alarms or self.profile.alarms)

    def _alarm_in(self, table: dict[int, str]) -> int:
        """The code of the current alarm in ``table``: one whose text names the cause
        (``alarm_words``), else one picked by ``alarm_pick``."""
        codes = sorted(table)
        for w in self.alarm_words:
            hits = [c for c in codes if w and w in table[c].lower()]
            if hits:
                return hits[self.alarm_pick % len(hits)]
        return codes[self.alarm_pick % len(codes)] if codes else self.alarm_code

    def alarm_text(self) -> str | None:
        if not self.alarm_code:
            return None
        return self.profile.alarms[self._alarm_in(self.profile.alarms)]


_STATE_WORDS = {
    "off": ("off", "power", "stop"),
    "idle": ("idle", "ready", "wait", "standby"),
    "running": ("run", "auto", "produc", "cycle"),
    "alarm": ("alarm", "fault", "error"),
    "setup": ("setup", "set-up", "manual", "changeover"),
}


def _matches(name: str, words: Sequence[str]) -> bool:
    low = name.lower()
    return any(w in low for w in words)


def _drift_for(point: SimPoint, profile: MachineProfile, rng: random.Random) -> _Drift:
    """Pick a behaviour for a parameter by its name, else by its limits' midpoint."""
    name, lim = point.name, point.limits
    lo, hi = (lim if lim else (None, None))
    mid = (lo + hi) / 2 if lo is not None and hi is not None else None
    heated = clamp = False
    excursions = 0.0
    if _matches(name, ("barrel", "zone", "nozzle")):
        nominal, sigma, idle, heated = mid or 220.0, 0.6, ROOM_C, True
    elif _matches(name, ("mold", "mould")) and _matches(name, ("temp",)):
        # a mold temperature controller: on while the machine is powered
        nominal, sigma, idle, excursions = mid or 45.0, 0.8, ROOM_C, 0.03
        heated = True
    elif _matches(name, ("temp",)):
        nominal = (lo + 0.4 * (hi - lo)) if lo is not None and hi is not None else (
            40.0 if profile.kind == "cnc" else 50.0)
        sigma, idle, excursions = 0.8, ROOM_C, 0.02
    elif _matches(name, ("pressure",)):
        # the last shot's pressure: it holds while the machine stands
        nominal, sigma, idle, excursions = mid or 900.0, 10.0, math.nan, 0.03
    elif _matches(name, ("load",)):
        nominal = (lo + 0.5 * (hi - lo)) if lo is not None and hi is not None else 55.0
        sigma, idle = 3.0, 0.0
    elif _matches(name, ("speed", "rpm")):
        top = hi if hi is not None else 4000.0
        nominal, sigma, idle, clamp = round(top * rng.uniform(0.2, 0.35), -1), 20.0, 0.0, True
    else:
        nominal, sigma, idle = mid if mid is not None else 50.0, 1.0, mid or 0.0
    if lo is not None and hi is not None:
        sigma = min(max(sigma, (hi - lo) * 0.01), (hi - lo) * 0.03)
    drift = _Drift(nominal=nominal, sigma=sigma, lo=lo, hi=hi, idle_target=idle,
                   excursion_per_h=excursions, heated=heated, clamp=clamp)
    drift.value = nominal if math.isnan(idle) else idle
    return drift


def make_machine(kind: str | MachineProfile, name: str, points: Sequence[SimPoint], *,
                 seed: int = 0, warm: bool = True) -> Machine:
    """A machine of ``kind`` ("cnc" | "imm", or a MachineProfile) serving ``points``;
    ``warm``: heated zones start at their setpoint (False: cold, it heats up first)."""
    if isinstance(kind, MachineProfile):
        profile = kind
    else:
        try:
            profile = _PROFILES[kind.lower()]
        except KeyError:
            raise ValueError(f"unknown machine kind {kind!r} (one of cnc, imm)") from None
    return Machine(name=name, profile=profile, points=tuple(points), seed=seed, warm=warm)
