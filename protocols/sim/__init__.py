"""Simulated machines serving real Modbus TCP, Modbus RTU and S7 (see ``plant``).

Public surface: ``SimPoint`` (a point of a register map, built by the edge CLI),
``make_machine`` and the profiles, ``SimulatedPlant`` with ``Fault``, ``serve_plant`` for
``plantsync-edge simulate``, and ``demo_points``/``demo_plant`` for a plant without a
config.
"""

from protocols.sim.demo import demo_plant, demo_points
from protocols.sim.machines import (
    CNC_LATHE,
    INJECTION_MOLDER,
    REASONS,
    STATES,
    Machine,
    MachineProfile,
    SimPoint,
    make_machine,
)
from protocols.sim.plant import FAULT_KINDS, DeviceSim, Fault, SimulatedPlant, serve_plant

__all__ = [
    "CNC_LATHE",
    "FAULT_KINDS",
    "INJECTION_MOLDER",
    "REASONS",
    "STATES",
    "DeviceSim",
    "Fault",
    "Machine",
    "MachineProfile",
    "SimPoint",
    "SimulatedPlant",
    "demo_plant",
    "demo_points",
    "make_machine",
    "serve_plant",
]
