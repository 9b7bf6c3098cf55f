"""Machine behaviour models: a CNC lathe and an injection-molding machine.

A machine lives on a virtual clock: ``step(seconds)`` advances it, nothing else does.
Everything random comes from one ``random.Random`` seeded with ``(seed, name)``, so the
same seed and the same steps give the same history, to the piece.

What a machine does (per profile, see ``CNC_LATHE`` / ``INJECTION_MOLDER``):

- states ``off``, ``idle``, ``running``, ``alarm``, ``setup``; it starts ``idle`` and
  begins running after a short while;
- while running, cycles of ``cycle_s`` (sampled per cycle) end in a good part or, with
  ``scrap_rate``, a scrap part (an IMM shot makes ``cavities`` parts);
- alarms come at ``alarm_per_h`` and clear after a while (state ``alarm`` meanwhile);
  setups change the program (state ``setup``); short idle gaps; rarely ``off``;
- parameters drift around a nominal value and now and then leave their limits for a while.

The true totals (``good``, ``scrap``, ``total``) never go back; the counter *registers*
of a device may (faults), see ``protocols.sim.plant``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from protocols.model import DataType, TagSpec

__all__ = [
    "CNC_LATHE",
    "INJECTION_MOLDER",
    "STATES",
    "Machine",
    "MachineProfile",
    "SimPoint",
    "make_machine",
]

STATES = ("off", "idle", "running", "alarm", "setup")


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
class MachineProfile:
    kind: str
    cycle_s: tuple[float, float]
    scrap_rate: float
    cavities: int
    alarm_per_h: float
    alarm_s: tuple[float, float]
    setup_per_h: float
    setup_s: tuple[float, float]
    idle_per_h: float
    idle_s: tuple[float, float]
    off_per_h: float
    off_s: tuple[float, float]
    alarms: dict[int, str]
    programs: tuple[str, ...]


CNC_LATHE = MachineProfile(
    kind="cnc", cycle_s=(20.0, 40.0), scrap_rate=0.03, cavities=1,
    alarm_per_h=2.0, alarm_s=(30.0, 240.0), setup_per_h=0.3, setup_s=(120.0, 600.0),
    idle_per_h=3.0, idle_s=(10.0, 120.0), off_per_h=0.05, off_s=(300.0, 900.0),
    alarms={1001: "Spindle overload", 2002: "Coolant low", 3003: "Tool wear limit",
            4004: "Door open", 5005: "Chuck pressure low"},
    programs=("O1001-SHAFT", "O1002-FLANGE", "O2040-BUSHING", "O3300-PIN"),
)

INJECTION_MOLDER = MachineProfile(
    kind="imm", cycle_s=(15.0, 35.0), scrap_rate=0.02, cavities=1,
    alarm_per_h=1.5, alarm_s=(30.0, 300.0), setup_per_h=0.2, setup_s=(300.0, 900.0),
    idle_per_h=2.0, idle_s=(10.0, 90.0), off_per_h=0.03, off_s=(300.0, 900.0),
    alarms={101: "Barrel zone overtemperature", 102: "Hydraulic oil temperature high",
            201: "Mold protection tripped", 202: "Ejector fault", 301: "Hopper empty"},
    programs=("MOLD-A17-HOUSING", "MOLD-B02-CAP", "MOLD-C33-CLIP"),
)

_PROFILES = {"cnc": CNC_LATHE, "cnc-lathe": CNC_LATHE, "lathe": CNC_LATHE,
             "imm": INJECTION_MOLDER, "injection-molding": INJECTION_MOLDER,
             "injection-molder": INJECTION_MOLDER}


@dataclass
class _Drift:
    """An Ornstein-Uhlenbeck walk around ``nominal``; during an excursion the target is
    beyond a limit. ``idle_target`` is where it settles when the machine is not running."""

    nominal: float
    sigma: float
    lo: float | None
    hi: float | None
    idle_target: float
    theta: float = 0.02
    excursion_per_h: float = 1.0
    value: float = 0.0
    excursion_left: float = 0.0
    excursion_target: float = 0.0

    def step(self, rng: random.Random, dt: float, running: bool) -> None:
        if self.excursion_left > 0:
            self.excursion_left -= dt
            target = self.excursion_target
        elif running and self.lo is not None and self.hi is not None and \
                rng.random() < self.excursion_per_h * dt / 3600.0:
            span = self.hi - self.lo
            self.excursion_left = rng.uniform(20.0, 120.0)
            self.excursion_target = (self.hi + 0.15 * span if rng.random() < 0.6
                                     else self.lo - 0.15 * span)
            target = self.excursion_target
        else:
            target = self.nominal if running else self.idle_target
        theta = 0.1 if self.excursion_left > 0 else self.theta
        self.value += theta * (target - self.value) * dt
        self.value += self.sigma * math.sqrt(dt) * rng.gauss(0.0, 1.0) * 0.1


@dataclass
class Machine:
    """One simulated machine on a virtual clock. Build with ``make_machine``."""

    name: str
    profile: MachineProfile
    points: tuple[SimPoint, ...]
    seed: int = 0
    clock: float = 0.0
    state: str = "idle"
    good: int = 0
    scrap: int = 0
    alarm_code: int = 0          # index into a point's own table via _alarm_pick; 0 = none
    alarm_pick: int = 0
    program: str = ""
    last_cycle_s: float = 0.0
    _state_left: float = 0.0
    _cycle_left: float = 0.0
    _cycle_len: float = 0.0
    _rng: random.Random = field(default_factory=random.Random)
    _drifts: dict[str, _Drift] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._rng = random.Random(f"{self.seed}:{self.name}")
        self.program = self._rng.choice(self.profile.programs)
        self._state_left = self._rng.uniform(1.0, 5.0)
        for p in self.points:
            if p.role in ("parameter", "sample") and p.spec.type not in (
                    DataType.STRING, DataType.BOOL):
                self._drifts[p.name] = _drift_for(p, self.profile)
        self.last_cycle_s = sum(self.profile.cycle_s) / 2

    # ------------------------------------------------------------------ clock

    @property
    def total(self) -> int:
        return self.good + self.scrap

    def step(self, seconds: float) -> None:
        """Advance the virtual clock by ``seconds`` (in ticks of at most one second)."""
        left = seconds
        while left > 1e-9:
            dt = min(1.0, left)
            self._tick(dt)
            left -= dt

    def _tick(self, dt: float) -> None:
        rng = self._rng
        self.clock += dt
        running = self.state == "running"
        for drift in self._drifts.values():
            drift.step(rng, dt, running)
        if self.state == "running":
            self._cycle_left -= dt
            if self._cycle_left <= 0:
                self._finish_cycle()
            self._maybe_interrupt(dt)
        else:
            self._state_left -= dt
            if self._state_left <= 0:
                self._resume()

    def _start_cycle(self) -> None:
        self._cycle_len = self._rng.uniform(*self.profile.cycle_s)
        self._cycle_left = self._cycle_len

    def _finish_cycle(self) -> None:
        for _ in range(self.profile.cavities):
            if self._rng.random() < self.profile.scrap_rate:
                self.scrap += 1
            else:
                self.good += 1
        self.last_cycle_s = self._cycle_len
        self._start_cycle()

    def _maybe_interrupt(self, dt: float) -> None:
        rng, p = self._rng, self.profile
        roll = rng.random() * 3600.0 / dt
        if roll < p.alarm_per_h:
            self.state = "alarm"
            self.alarm_pick = rng.randrange(1 << 16)
            self.alarm_code = 1 + self.alarm_pick % 0xFFFF
            self._state_left = rng.uniform(*p.alarm_s)
        elif roll < p.alarm_per_h + p.setup_per_h:
            self.state = "setup"
            others = [x for x in p.programs if x != self.program] or list(p.programs)
            self.program = rng.choice(others)
            self._state_left = rng.uniform(*p.setup_s)
        elif roll < p.alarm_per_h + p.setup_per_h + p.idle_per_h:
            self.state = "idle"
            self._state_left = rng.uniform(*p.idle_s)
        elif roll < p.alarm_per_h + p.setup_per_h + p.idle_per_h + p.off_per_h:
            self.state = "off"
            self._state_left = rng.uniform(*p.off_s)

    def _resume(self) -> None:
        if self.state == "alarm":
            self.alarm_code = 0
            self.state = "idle"   # an operator acknowledges, then restarts
            self._state_left = self._rng.uniform(5.0, 30.0)
            return
        self.state = "running"
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
            return self.state == "running"
        if _matches(point.name, ("cycle",)):
            value = self.last_cycle_s
        else:
            drift = self._drifts.get(point.name)
            value = drift.value if drift else 0.0
        if t.is_integer:
            ivalue = round(value)
            if t.is_unsigned_int:
                ivalue = max(0, ivalue)
            return min(ivalue, t.max_value)
        return value

    def _state_code(self, point: SimPoint) -> int:
        table = point.states or {i: s for i, s in enumerate(STATES)}
        wanted = _STATE_WORDS[self.state]
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
        codes = sorted(point.alarms or self.profile.alarms)
        return codes[self.alarm_pick % len(codes)] if codes else self.alarm_code

    def alarm_text(self) -> str | None:
        if not self.alarm_code:
            return None
        codes = sorted(self.profile.alarms)
        return self.profile.alarms[codes[self.alarm_pick % len(codes)]]


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


def _drift_for(point: SimPoint, profile: MachineProfile) -> _Drift:
    """Pick a behaviour for a parameter by its name, else by its limits' midpoint."""
    name, lim = point.name, point.limits
    lo, hi = (lim if lim else (None, None))
    mid = (lo + hi) / 2 if lo is not None and hi is not None else None
    if _matches(name, ("barrel", "zone", "nozzle")):
        nominal, sigma, idle = mid or 220.0, 2.0, 25.0
    elif _matches(name, ("mold", "mould")) and _matches(name, ("temp",)):
        nominal, sigma, idle = mid or 45.0, 0.8, 22.0
    elif _matches(name, ("temp",)):
        nominal, sigma, idle = mid or (40.0 if profile.kind == "cnc" else 50.0), 0.8, 22.0
    elif _matches(name, ("pressure",)):
        nominal, sigma, idle = mid or 900.0, 15.0, 0.0
    elif _matches(name, ("load",)):
        nominal, sigma, idle = mid or 55.0, 4.0, 0.0
    elif _matches(name, ("speed", "rpm")):
        nominal, sigma, idle = mid or 2400.0, 30.0, 0.0
    elif _matches(name, ("cycle",)):
        nominal, sigma, idle = sum(profile.cycle_s) / 2, 0.0, 0.0
    else:
        nominal, sigma, idle = mid if mid is not None else 50.0, 1.0, mid or 0.0
    if lo is not None and hi is not None:
        sigma = max(sigma, (hi - lo) * 0.01)
    drift = _Drift(nominal=nominal, sigma=sigma, lo=lo, hi=hi, idle_target=idle)
    drift.value = idle
    return drift


def make_machine(kind: str | MachineProfile, name: str, points: Sequence[SimPoint], *,
                 seed: int = 0) -> Machine:
    """A machine of ``kind`` ("cnc" | "imm", or a MachineProfile) serving ``points``."""
    if isinstance(kind, MachineProfile):
        profile = kind
    else:
        try:
            profile = _PROFILES[kind.lower()]
        except KeyError:
            raise ValueError(f"unknown machine kind {kind!r} (one of cnc, imm)") from None
    return Machine(name=name, profile=profile, points=tuple(points), seed=seed)
