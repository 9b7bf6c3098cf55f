"""``protocols.read.read_plan`` (what the daemon and ``probe`` run) against the simulated
plant, with an illegal-address fault injected through the simulator's control channel:
the planner's coalesced block is split, only the tag the PLC rejects comes back bad (its
error naming the tag, its address and the PLC's answer), the others keep reading, and the
refined plan is kept for the next poll."""

from __future__ import annotations

import pytest

from protocols.drivers import make_driver
from protocols.errors import IllegalAddress
from protocols.model import Protocol, ReadPlan, Span, TagReading
from protocols.plan import plan_reads
from protocols.read import read_plan
from protocols.sim import SimulatedPlant
from tests.fixtures.plc import endpoint_of, sim_control

# device, the bad tag, its address, the fault's area/db/start, the PLC's words for it
CASES = [
    ("cnc-01", "alarm_code", "HR111", {"area": "HR", "start": 111},
     "device answered exception 2 ILLEGAL DATA ADDRESS"),
    ("imm-03", "zone2_temp", "HR22", {"area": "HR", "start": 23},
     "device answered exception 2 ILLEGAL DATA ADDRESS"),
    ("imm-07", "alarm_code", "DB1.DBW10", {"area": "DB", "db": 1, "start": 10, "count": 2},
     "PLC answered item error 0x05 Invalid address"),
]


def _spans(plan: ReadPlan) -> list[Span]:
    return [s for r in plan.requests for s in r.spans]


def _by_name(readings: list[TagReading]) -> dict[str, TagReading]:
    return {r.name: r for r in readings}


@pytest.mark.parametrize(("device", "bad", "address", "where", "words"), CASES,
                         ids=[c[0] for c in CASES])
async def test_illegal_address_marks_only_the_bad_tag(
        sim_plant: SimulatedPlant, device: str, bad: str, address: str,
        where: dict[str, object], words: str) -> None:
    specs = [p.spec for p in sim_plant.devices[device].points]
    protocol: Protocol = "s7" if where["area"] == "DB" else "modbus-tcp"
    assert endpoint_of(sim_plant, device).protocol == protocol
    plan = plan_reads(protocol, specs)
    block = next(s for s in _spans(plan) if bad in s.tags)
    assert len(block.tags) > 1, "the bad tag must share a coalesced block"

    async with make_driver(endpoint_of(sim_plant, device)) as drv:
        same, readings = await read_plan(drv, plan)
        assert same == plan and all(r.good for r in readings)

        await sim_control(sim_plant, {"cmd": "fault", "device": device, "fault": "illegal",
                                      **where})
        refined, readings = await read_plan(drv, plan)
        got = _by_name(readings)
        assert [r.name for r in readings] == [t.name for t in specs]
        assert [n for n, r in got.items() if not r.good] == [bad]
        err = got[bad].error
        assert isinstance(err, IllegalAddress)
        assert str(err).startswith(f"tag {bad} at '{address}': {device}: ")
        assert words in str(err)
        for name in block.tags:
            if name != bad:
                assert got[name].good and got[name].value is not None, got[name]

        # The refined plan reads the block's tags one by one, the rest as before ...
        spans = _spans(refined)
        assert block not in spans
        assert [s.tags for s in spans if set(s.tags) <= set(block.tags)] == \
            [(name,) for name in block.tags]
        assert [s for s in spans if not set(s.tags) & set(block.tags)] == \
            [s for s in _spans(plan) if s != block]
        # ... and is kept: the next poll does not split again, and reads the same.
        again, readings = await read_plan(drv, refined)
        assert again == refined
        assert [r.name for r in readings if not r.good] == [bad]

        await sim_control(sim_plant, {"cmd": "fault", "device": device, "fault": "clear"})
        _, readings = await read_plan(drv, refined)
        assert all(r.good for r in readings)
