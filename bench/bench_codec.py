"""Codec CPU cost and planner request counts (pure; no PLC, no network).

- ``codec.decode``: CPU seconds per 10,000 decoded tag values of mixed types and orders,
  beside pymodbus's ``convert_from_registers`` doing the same values (the naive way:
  registers as ints, one call per value, bytes swapped by hand for byte_order little).
- ``plan.slice_tags``: the same 10,000 values cut out of read blocks and decoded, the
  whole per-poll CPU path after the driver returns.
- ``plan.requests``: requests per poll of a 1,000-tag map spread over a realistic address
  space, against one request per tag and against the theoretical minimum the
  125-register limit allows (an independent dynamic program with no gap limit).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from pymodbus.client.mixin import ModbusClientMixin

from protocols import DataType, Order, PlanLimits, TagSpec
from protocols.address import parse_address, tag_extent
from protocols.codec import decode, encode
from protocols.plan import plan_reads, slice_tags

Report = Callable[[str, float, float | None, str], None]
N_VALUES = 10_000
DT = ModbusClientMixin.DATATYPE
_PYMODBUS_TYPE = {
    DataType.INT16: DT.INT16, DataType.UINT16: DT.UINT16, DataType.INT32: DT.INT32,
    DataType.UINT32: DT.UINT32, DataType.INT64: DT.INT64, DataType.UINT64: DT.UINT64,
    DataType.FLOAT32: DT.FLOAT32, DataType.FLOAT64: DT.FLOAT64, DataType.STRING: DT.STRING,
}
_MIX = [  # (type, byte order, word order, weight) roughly as in the map library
    (DataType.UINT16, Order.BIG, Order.BIG, 25), (DataType.INT16, Order.BIG, Order.BIG, 10),
    (DataType.UINT32, Order.BIG, Order.BIG, 10), (DataType.UINT32, Order.BIG, Order.LITTLE, 5),
    (DataType.INT32, Order.BIG, Order.BIG, 5), (DataType.FLOAT32, Order.BIG, Order.BIG, 15),
    (DataType.FLOAT32, Order.BIG, Order.LITTLE, 10),
    (DataType.FLOAT32, Order.LITTLE, Order.LITTLE, 3), (DataType.FLOAT64, Order.BIG, Order.BIG, 2),
    (DataType.BOOL, Order.BIG, Order.BIG, 12), (DataType.STRING, Order.BIG, Order.BIG, 3),
]


def realistic_map(n: int, rng: random.Random) -> list[TagSpec]:
    """``n`` Modbus tags in blocks the way PLC programmers lay them out: a status block,
    counters, process values and parameters in separate register ranges with small
    holes inside a block and large ones between blocks; some coils and input registers."""
    kinds = [(t, b, w) for t, b, w, weight in _MIX for _ in range(weight)]
    tags: list[TagSpec] = []
    block_starts = [0, 1000, 2000, 3000, 4000, 5000, 8000, 12000, 20000, 40000]
    area, at, block, coil_at = "HR", 0, 0, 0
    for i in range(n):
        if i % (n // len(block_starts)) == 0 and block < len(block_starts):
            area = "IR" if block in (3, 7) else "HR"
            at = block_starts[block]
            block += 1
        type_, byte, word = rng.choice(kinds)
        if i % 20 == 0:
            tags.append(TagSpec(f"coil{i}", parse_address(f"CO{coil_at}", "modbus-tcp"),
                                DataType.BOOL))
            coil_at += rng.choice([1, 1, 2, 3, 8])
            continue
        if type_ is DataType.BOOL:
            address = f"{area}{at}.{rng.randrange(16)}"
            at += 1
        else:
            address = f"{area}{at}"
        spec = TagSpec(f"t{i}", parse_address(address, "modbus-tcp"), type_,
                       length=16 if type_ is DataType.STRING else None,
                       byte_order=byte, word_order=word)
        tags.append(spec)
        at += tag_extent(spec)[3] if type_ is not DataType.BOOL else 0
        at += rng.choice([0, 0, 0, 0, 1, 2, 4, 8])
    return tags


def sample_value(spec: TagSpec, rng: random.Random) -> Any:
    t = spec.type
    if t is DataType.BOOL:
        return rng.random() < 0.5
    if t is DataType.STRING:
        return f"PRG-{rng.randrange(10000):04d}"
    if t in (DataType.FLOAT32, DataType.FLOAT64):
        return round(rng.uniform(-50, 400), 2)
    return rng.randrange(0, 30000)


def cpu(fn: Callable[[], object], repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def pymodbus_decode(spec: TagSpec, regs: list[int]) -> object:
    """The naive path: pymodbus's converter, with hand-made byte swaps and bit picks."""
    if spec.byte_order is Order.LITTLE:
        regs = [((r & 0xFF) << 8) | (r >> 8) for r in regs]
    if spec.type is DataType.BOOL:
        bit = getattr(spec.address, "bit", None)
        return bool((regs[0] >> bit) & 1) if bit is not None else bool(regs[0])
    value = ModbusClientMixin.convert_from_registers(
        regs, _PYMODBUS_TYPE[spec.type], word_order=spec.word_order.value)
    return value.rstrip("\x00 ") if isinstance(value, str) else value


def min_requests(extents: list[tuple[int, int]], limit: int) -> int:
    """Fewest windows of ``limit`` covering non-overlapping extents, by DP (no gap rule)."""
    extents = sorted(set(extents))
    best = [0] * (len(extents) + 1)
    for i in range(len(extents) - 1, -1, -1):
        options = []
        for j in range(i, len(extents)):
            if extents[j][1] - extents[i][0] > limit:
                break
            options.append(1 + best[j + 1])
        best[i] = min(options)
    return best[0]


def run(report: Report) -> None:
    rng = random.Random(7)
    tags = realistic_map(1000, rng)
    raws = {t.name: encode(t, sample_value(t, rng)) for t in tags}

    # 10,000 values: the 1,000-tag map decoded ten times.
    work = [(t, raws[t.name]) for t in tags] * (N_VALUES // len(tags))
    work_regs = [
        (t, [int.from_bytes(r[i:i + 2], "big") for i in range(0, len(r), 2)] or [r[0]])
        for t, r in work
    ]
    for (t, r), (_, regs) in zip(work[:1000], work_regs[:1000], strict=True):
        if t.address.area in ("CO", "DI"):  # type: ignore[union-attr]
            continue
        ours, theirs = decode(t, r), pymodbus_decode(t, regs)
        assert ours == theirs, (t, ours, theirs)
    ours = cpu(lambda: [decode(t, r) for t, r in work])
    theirs = cpu(lambda: [pymodbus_decode(t, regs) for t, regs in work_regs])
    report("codec.decode (10k mixed values)", ours, theirs, "cpu s")

    plan = plan_reads("modbus-tcp", tags)
    specs = {t.name: t for t in tags}
    blocks = []
    for request in plan.requests:
        span = request.spans[0]
        unit = 1 if span.area in ("CO", "DI") else 2
        block = bytearray(span.count * unit)
        for name in span.tags:
            _, _, start, _ = tag_extent(specs[name])
            at = (start - span.start) * unit
            block[at:at + len(raws[name])] = raws[name]
        blocks.append((span, bytes(block)))
    sliced = cpu(lambda: [slice_tags(plan, s, b) for _ in range(10) for s, b in blocks])
    report("plan.slice_tags+decode (10k values)", sliced, theirs, "cpu s")

    by_area: dict[str, list[tuple[int, int]]] = {}
    for t in tags:
        area, _, start, count = tag_extent(t)
        by_area.setdefault(area, []).append((start, start + count))
    minimum = sum(min_requests(ext, 2000 if a in ("CO", "DI") else 125)
                  for a, ext in by_area.items())
    report("plan.requests 1000 tags vs one-per-tag", len(plan.requests), plan.one_per_tag,
           "requests")
    report("plan.requests 1000 tags vs 125-limit minimum", len(plan.requests), minimum,
           "requests")
    no_gap_limit = plan_reads("modbus-tcp", tags, PlanLimits(max_gap=65536))
    report("plan.requests (no gap limit) vs minimum", len(no_gap_limit.requests), minimum,
           "requests")
    t0 = time.process_time()
    for _ in range(10):
        plan_reads("modbus-tcp", tags)
    report("plan_reads 1000 tags", (time.process_time() - t0) / 10, None, "cpu s")
