"""Simulated machines for a gateway config: the device engineer's test bench.

Each device of a config becomes a simulated machine (``protocols.sim``) that serves the
points of its register map on the device's host and port, so ``plantsync-edge probe`` and
the daemon read it like the real PLC. Without a config the demo plant is
``config/gateway.example.toml``: two CNCs over Modbus TCP and two injection-molding
machines over S7 on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import TextIO

import structlog

from edge.config import ConfigError, LoadedGateway, LoadedMap, Problem, display_path, load_gateway
from protocols.sim import SimPoint, SimulatedPlant

__all__ = ["DEMO_CONFIG", "build_plant", "demo_gateway", "machine_kind", "run_simulation",
           "sim_points"]

log = structlog.get_logger(__name__)

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "config" / "gateway.example.toml"


def demo_gateway() -> LoadedGateway:
    """The built-in demo plant: config/gateway.example.toml and its maps."""
    if not DEMO_CONFIG.is_file():
        raise ConfigError([Problem(display_path(DEMO_CONFIG), "",
                                   "the demo plant's config is not installed here",
                                   "pass --config gateway.toml")])
    return load_gateway(DEMO_CONFIG)


def machine_kind(lm: LoadedMap) -> str:
    """"imm" for injection-molding maps, else "cnc" (the behaviour the simulator plays)."""
    text = f"{lm.path.stem} {lm.config.model} {lm.config.description or ''}".lower()
    if any(w in text for w in ("imm", "inject", "molding", "moulding")):
        return "imm"
    return "cnc"


def sim_points(lm: LoadedMap) -> list[SimPoint]:
    """The map's tags as simulator points (spec plus meaning)."""
    points = []
    for spec in lm.specs:
        tag = lm.tags[spec.name]
        points.append(SimPoint(spec=spec, role=tag.role, counts=tag.counts,
                               states=dict(tag.states) if tag.states else None,
                               alarms=dict(tag.alarms) if tag.alarms else None,
                               limits=tuple(tag.limits) if tag.limits else None))  # type: ignore[arg-type]
    return points


def build_plant(gw: LoadedGateway, *, seed: int = 1, speed: float = 1.0,
                control_port: int | None = None) -> SimulatedPlant:
    """A SimulatedPlant with one machine per device of ``gw`` (not started)."""
    plant = SimulatedPlant(seed=seed, speed=speed, control_port=control_port)
    for dev in gw.devices:
        plant.add(dev.name, machine_kind(dev.map), sim_points(dev.map), dev.endpoint)
    return plant


def describe(gw: LoadedGateway) -> list[str]:
    """One line per device: where it is served."""
    lines = []
    for dev in gw.devices:
        c = dev.config
        where = (f"{c.serial_port} unit {c.unit}" if c.protocol == "modbus-rtu"
                 else f"{c.host}:{c.effective_port}"
                 + (f" unit {c.unit}" if c.protocol == "modbus-tcp" else ""))
        lines.append(f"  {dev.name:<12} {c.protocol:<11} {where:<24} "
                     f"{machine_kind(dev.map)}, map {display_path(dev.map.path)}")
    return lines


async def run_simulation(gw: LoadedGateway, *, seed: int = 1, speed: float = 1.0,
                         control_port: int | None = None, out: TextIO,
                         stop: asyncio.Event | None = None) -> None:
    """Serve ``gw``'s devices until ``stop`` is set or SIGINT/SIGTERM arrives.

    Prints where each machine listens, then ``ready`` on a line of its own (scripts wait
    for it). Raises OSError when a port is taken (nothing stays open then).
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    plant = build_plant(gw, seed=seed, speed=speed, control_port=control_port)
    await plant.start(live=True)
    try:
        print(f"simulating {len(gw.devices)} machines of {display_path(gw.path)} "
              f"(seed {seed}, speed {speed:g}x):", file=out)
        for line in describe(gw):
            print(line, file=out)
        control = plant.control_address
        if control is not None:
            print(f"  control channel (line JSON) on {control[0]}:{control[1]}", file=out)
        print("ready; Ctrl-C to stop", file=out, flush=True)
        log.info("simulation_started", devices=len(gw.devices), seed=seed)
        await stop.wait()
    finally:
        await plant.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        log.info("simulation_stopped")
