"""Requests per poll and polls per second for a 1,000-tag Modbus map spread over a
realistic address space, read from the simulator on loopback: the read planner versus
one request per tag (what ThingsBoard's gateway does). Also prints the minimum number of
requests the 125-register / 2000-bit limits allow for those addresses."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Callable

from protocols.address import tag_extent
from protocols.driver import Endpoint
from protocols.drivers import make_driver
from protocols.model import DataType, ModbusAddress, PlanLimits, ReadPlan, Request, Span, TagSpec
from protocols.plan import plan_reads
from protocols.read import read_plan
from protocols.sim import SimPoint, SimulatedPlant

Report = Callable[[str, float, float | None, str], None]
_TYPES = [DataType.UINT16] * 5 + [DataType.INT16] * 2 + [DataType.UINT32] * 2 + \
    [DataType.FLOAT32] * 3 + [DataType.INT32]


def thousand_tags(seed: int = 1) -> list[TagSpec]:
    """1,000 tags the way PLC maps look: sections (status, counters, process values,
    recipes, diagnostics) at round addresses, groups of tags with small gaps between,
    some input registers, coils and discrete inputs."""
    rng = random.Random(seed)
    tags: list[TagSpec] = []

    def add(area: str, offset: int, t: DataType) -> None:
        tags.append(TagSpec(name=f"t{len(tags):04d}", address=ModbusAddress(area, offset),  # type: ignore[arg-type]
                            type=t))

    for base in (0, 1000, 2000, 3000, 4000, 6000, 8000, 10000):       # HR sections
        pos = base
        for _ in range(100):
            t = rng.choice(_TYPES)
            add("HR", pos, t)
            pos += (2 if t.size_bytes == 4 else 1) + (rng.choice([0, 0, 0, 1, 2, 6, 20])
                                                      if rng.random() < 0.3 else 0)
    pos = 0
    for _ in range(100):                                                # input registers
        t = rng.choice(_TYPES)
        add("IR", pos, t)
        pos += (2 if t.size_bytes == 4 else 1) + rng.choice([0, 0, 1, 3])
    for area, start in (("CO", 0), ("DI", 0)):                          # bits
        pos = start
        for _ in range(50):
            add(area, pos, DataType.BOOL)
            pos += rng.choice([1, 1, 1, 2, 9, 40])
    return tags


def minimum_requests(tags: list[TagSpec], limits: PlanLimits) -> int:
    """The fewest requests that can cover every tag whole within the per-request limits
    (greedy from the left is optimal for windows of fixed maximum length)."""
    by_area: dict[str, list[tuple[int, int]]] = {}
    for t in tags:
        area, _, start, count = tag_extent(t)
        by_area.setdefault(area, []).append((start, start + count))
    total = 0
    for area, extents in by_area.items():
        limit = limits.max_bits if area in ("CO", "DI") else limits.max_registers
        window_start: int | None = None
        for start, end in sorted(extents):
            if window_start is None or end - window_start > limit:
                total += 1
                window_start = start
    return total


def one_per_tag_plan(tags: list[TagSpec]) -> ReadPlan:
    requests = []
    for t in tags:
        area, db, start, count = tag_extent(t)
        requests.append(Request((Span(area, db, start, count, (t.name,)),)))
    return ReadPlan("modbus-tcp", tuple(tags), tuple(requests))


async def _polls_per_second(endpoint: Endpoint, plan: ReadPlan, polls: int) -> float:
    async with make_driver(endpoint) as driver:
        await read_plan(driver, plan)                   # warm-up
        started = time.perf_counter()
        for _ in range(polls):
            plan, readings = await read_plan(driver, plan)
            assert all(r.good for r in readings)
        return polls / (time.perf_counter() - started)


async def _run(report: Report) -> None:
    tags = thousand_tags()
    limits = PlanLimits()
    plan = plan_reads("modbus-tcp", tags, limits)
    naive = one_per_tag_plan(tags)
    report("polling.requests_per_poll (planner vs one per tag)", len(plan.requests),
           len(naive.requests), "requests")
    # The default max_gap (125, one request's worth) bridges any gap that fits a request,
    # so the planner needs the fewest requests the 125-register / 2000-bit limits allow.
    report("polling.requests_per_poll (planner, default max_gap=125, vs limit minimum)",
           len(plan.requests), minimum_requests(tags, limits), "requests")

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    plant = SimulatedPlant(seed=1)
    points = [SimPoint(spec=t, role="sample") for t in tags]
    endpoint = Endpoint("modbus-tcp", "bench", port=port, unit=1, timeout_s=5.0)
    plant.add("bench", "cnc", points, endpoint)
    async with plant:
        plant.step(600)
        fast = await _polls_per_second(endpoint, plan, 50)
        slow = await _polls_per_second(endpoint, naive, 3)
    report("polling.polls_per_second (planner vs one per tag)", fast, slow, "polls/s")


def run(report: Report) -> None:
    asyncio.run(_run(report))
