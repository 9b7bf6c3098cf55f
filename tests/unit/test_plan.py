"""The read planner: minimality against a brute force, protocol limits, gaps, S7 PDU fit,
multi-variable packing, split_span and slice_tags."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.bench_polling import minimum_requests, thousand_tags
from protocols import AddressError, DataType, PlanLimits, ReadPlan, Span, TagSpec
from protocols.address import parse_address, tag_extent
from protocols.codec import encode
from protocols.plan import plan_reads, s7_request_fits, slice_tags, split_span

U16, F32, F64 = DataType.UINT16, DataType.FLOAT32, DataType.FLOAT64


def mb(name: str, address: str, type_: DataType = U16, length: int | None = None) -> TagSpec:
    return TagSpec(name, parse_address(address, "modbus-tcp"), type_, length=length)


def s7(name: str, address: str, type_: DataType) -> TagSpec:
    return TagSpec(name, parse_address(address, "s7"), type_)


def spans(plan: ReadPlan) -> list[Span]:
    return [s for r in plan.requests for s in r.spans]


def check_valid(plan: ReadPlan, max_len: dict[str, int], max_gap: dict[str, int]) -> None:
    """Every tag whole in exactly one span of its area; limits and gaps respected."""
    specs = {t.name: t for t in plan.tags}
    seen: list[str] = []
    for span in spans(plan):
        assert span.count <= max_len[span.area]
        covered: list[tuple[int, int]] = []
        for name in span.tags:
            area, db, start, count = tag_extent(specs[name])
            assert (area, db) == (span.area, span.db)
            assert span.start <= start and start + count <= span.start + span.count
            covered.append((start, start + count))
            seen.append(name)
        covered.sort()
        assert covered[0][0] == span.start
        assert max(e for _, e in covered) == span.start + span.count
        reach = covered[0][1]
        for s, e in covered[1:]:
            assert s - reach <= max_gap[span.area]
            reach = max(reach, e)
    assert sorted(seen) == sorted(specs)


# -- minimality -----------------------------------------------------------------------


def partitions(items: list[int]) -> Iterator[list[list[int]]]:
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in partitions(rest):
        for i in range(len(part)):
            yield [*part[:i], [first, *part[i]], *part[i + 1:]]
        yield [[first], *part]


def feasible(block: Sequence[tuple[int, int]], limit: int, gap: int) -> bool:
    block = sorted(block)
    if max(e for _, e in block) - block[0][0] > limit:
        return False
    reach = block[0][1]
    for s, e in block[1:]:
        if s - reach > gap:
            return False
        reach = max(reach, e)
    return True


def brute_force(extents: list[tuple[int, int]], limit: int, gap: int) -> int:
    """The fewest requests over every partition of the tags into feasible blocks."""
    best = len(extents)
    for part in partitions(list(range(len(extents)))):
        if len(part) < best and all(
                feasible([extents[i] for i in block], limit, gap) for block in part):
            best = len(part)
    return best


@st.composite
def register_maps(draw: st.DrawFn) -> list[TagSpec]:
    """Up to 7 non-overlapping HR tags of 1, 2 or 4 registers, sometimes several bits
    of one register; random gaps. (7 keeps the brute force at Bell(7) = 877 partitions.)"""
    tags: list[TagSpec] = []
    at = draw(st.integers(0, 5))
    for i in range(draw(st.integers(1, 7))):
        if len(tags) >= 7:
            break
        kind = draw(st.sampled_from(["u16", "f32", "f64", "bits"]))
        if kind == "bits":
            for b in range(min(draw(st.integers(1, 3)), 7 - len(tags))):
                tags.append(mb(f"t{i}_{b}", f"HR{at}.{b}", DataType.BOOL))
            at += 1
        else:
            type_ = {"u16": U16, "f32": F32, "f64": F64}[kind]
            tags.append(mb(f"t{i}", f"HR{at}", type_))
            at += max(1, type_.size_bytes // 2)
        at += draw(st.integers(0, 8))
    return tags


@settings(max_examples=200, deadline=None)
@given(tags=register_maps(), limit=st.integers(4, 20), gap=st.integers(0, 6))
def test_modbus_plan_is_minimal(tags: list[TagSpec], limit: int, gap: int) -> None:
    limits = PlanLimits(max_registers=limit, max_gap=gap)
    plan = plan_reads("modbus-tcp", tags, limits)
    check_valid(plan, {"HR": limit}, {"HR": gap})
    extents = [(s, s + c) for _, _, s, c in map(tag_extent, tags)]
    assert len(plan.requests) == brute_force(extents, limit, gap)


def test_partitions_helper_enumerates_bell_numbers() -> None:
    assert [sum(1 for _ in partitions(list(range(n)))) for n in range(6)] == \
        [1, 1, 2, 5, 15, 52]


# -- Modbus limits ------------------------------------------------------------------


def test_125_registers_per_request() -> None:
    tags = [mb(f"r{i}", f"HR{i}") for i in range(200)]
    plan = plan_reads("modbus-tcp", tags)
    assert [(s.start, s.count) for s in spans(plan)] == [(0, 125), (125, 75)]
    assert plan.one_per_tag == 200


def test_a_float_never_straddles_two_requests() -> None:
    tags = [mb(f"f{i}", f"HR{2 * i}", F32) for i in range(70)]
    plan = plan_reads("modbus-tcp", tags)
    assert [(s.start, s.count) for s in spans(plan)] == [(0, 124), (124, 16)]


def test_2000_bits_per_request_and_one_area_each() -> None:
    tags = [mb(f"c{i}", f"CO{i}", DataType.BOOL) for i in range(2500)]
    tags += [mb("d0", "DI0", DataType.BOOL), mb("h0", "HR0"), mb("i0", "IR0")]
    plan = plan_reads("modbus-rtu", tags)
    got = sorted((s.area, s.start, s.count) for s in spans(plan))
    assert got == [("CO", 0, 2000), ("CO", 2000, 500), ("DI", 0, 1), ("HR", 0, 1),
                   ("IR", 0, 1)]
    assert all(len(r.spans) == 1 for r in plan.requests)


def test_gaps_are_bridged_up_to_max_gap() -> None:
    ten = PlanLimits(max_gap=10)
    near = [mb("a", "HR0"), mb("b", "HR11")]       # 10 unused registers between
    far = [mb("a", "HR0"), mb("b", "HR12")]        # 11
    assert len(plan_reads("modbus-tcp", near, ten).requests) == 1
    assert len(plan_reads("modbus-tcp", far, ten).requests) == 2
    assert len(plan_reads("modbus-tcp", near, PlanLimits(max_gap=0)).requests) == 2
    coils = [mb("a", "CO0", DataType.BOOL), mb("b", "CO81", DataType.BOOL)]
    assert len(plan_reads("modbus-tcp", coils, ten).requests) == 1   # 80 bits = 10 * 8
    coils = [mb("a", "CO0", DataType.BOOL), mb("b", "CO82", DataType.BOOL)]
    assert len(plan_reads("modbus-tcp", coils, ten).requests) == 2


def test_default_limits_need_the_fewest_requests_the_125_limit_allows() -> None:
    """The default bridges any gap that fits one request: sparse tags 100 registers apart
    need one request per 125-register window, not one per tag."""
    tags = [mb(f"t{i}", f"HR{i * 60}") for i in range(10)]   # HR0..HR540
    assert len(plan_reads("modbus-tcp", tags).requests) == 4   # {0,60,120} {180,240,300} {360,420,480} {540}


def test_the_bench_map_needs_only_the_limit_minimum() -> None:
    """The bench's 1,000-tag map (make bench): with the default limits the planner needs
    exactly the fewest requests the 125-register / 2000-bit limits allow, far fewer than
    one per tag; a lower max_gap costs requests."""
    tags = thousand_tags()
    plan = plan_reads("modbus-tcp", tags)
    assert len(tags) == 1000
    assert len(plan.requests) == minimum_requests(tags, PlanLimits()) == 24
    check_valid(plan, {"HR": 125, "IR": 125, "CO": 2000, "DI": 2000},
                {"HR": 125, "IR": 125, "CO": 1000, "DI": 1000})
    assert len(plan_reads("modbus-tcp", tags, PlanLimits(max_gap=10)).requests) > 24


def test_per_device_lower_limit() -> None:
    tags = [mb(f"r{i}", f"HR{i}") for i in range(100)]
    plan = plan_reads("modbus-tcp", tags, PlanLimits(max_registers=16))
    assert len(plan.requests) == 7
    assert max(s.count for s in spans(plan)) == 16


def test_bits_of_one_register_share_a_span() -> None:
    tags = [mb(f"b{i}", f"HR5.{i}", DataType.BOOL) for i in range(16)] + [mb("w", "HR6")]
    plan = plan_reads("modbus-tcp", tags)
    assert len(plan.requests) == 1
    assert (spans(plan)[0].start, spans(plan)[0].count) == (5, 2)
    assert len(spans(plan)[0].tags) == 17


def test_overlapping_tags_are_still_all_read() -> None:
    # Validation rejects overlaps; the planner still gives a correct plan for them.
    tags = [mb("long", "HR0", F64), mb("inner", "HR1"), mb("next", "HR2", F32)]
    plan = plan_reads("modbus-tcp", tags, PlanLimits(max_registers=4, max_gap=0))
    check_valid(plan, {"HR": 4}, {"HR": 0})


def test_planner_rejects_what_it_cannot_plan() -> None:
    with pytest.raises(AddressError, match="more than one request may read"):
        plan_reads("modbus-tcp", [mb("s", "HR0", DataType.STRING, length=252)])
    with pytest.raises(AddressError, match="not an address for modbus-tcp"):
        plan_reads("modbus-tcp", [s7("x", "DB1.DBW0", DataType.INT16)])
    with pytest.raises(AddressError, match="unique: a"):
        plan_reads("modbus-tcp", [mb("a", "HR0"), mb("a", "HR1")])


def test_plan_is_deterministic_and_order_independent() -> None:
    tags = [mb(f"r{i}", f"HR{(i * 37) % 500}") for i in range(100)]
    a = plan_reads("modbus-tcp", tags)
    b = plan_reads("modbus-tcp", list(reversed(tags)))
    assert a.requests == b.requests


# -- S7 -----------------------------------------------------------------------------


@st.composite
def s7_maps(draw: st.DrawFn) -> list[TagSpec]:
    tags: list[TagSpec] = []
    for i in range(draw(st.integers(1, 40))):
        db = draw(st.integers(1, 4))
        byte = draw(st.integers(0, 1200))
        kind = draw(st.sampled_from(["X", "B", "W", "D", "L", "S"]))
        if kind == "X":
            tags.append(s7(f"t{i}", f"DB{db}.DBX{byte}.{draw(st.integers(0, 7))}",
                           DataType.BOOL))
        elif kind == "S":
            tags.append(s7(f"t{i}", f"DB{db}.STRING{byte}.{draw(st.integers(1, 80))}",
                           DataType.STRING))
        else:
            type_ = {"B": DataType.UINT8, "W": DataType.INT16, "D": F32, "L": F64}[kind]
            width = "B" if kind == "L" else kind
            tags.append(s7(f"t{i}", f"DB{db}.DB{width}{byte}", type_))
    return tags


@pytest.mark.parametrize("pdu", [240, 480, 960])
@given(tags=s7_maps(), max_vars=st.integers(1, 20))
def test_s7_requests_fit_the_pdu(pdu: int, tags: list[TagSpec], max_vars: int) -> None:
    limits = PlanLimits(pdu_size=pdu, max_vars=max_vars, max_gap=10)
    plan = plan_reads("s7", tags, limits)
    check_valid(plan, {"DB": pdu - 18}, {"DB": 10})
    for request in plan.requests:
        assert s7_request_fits(request.spans, limits)
        assert len(request.spans) <= max_vars
        if len(request.spans) > 1:
            assert 19 + 12 * len(request.spans) <= pdu
            assert 14 + sum(4 + s.count + s.count % 2 for s in request.spans) <= pdu


def test_s7_pdu_240_versus_480() -> None:
    tags = [s7(f"w{i}", f"DB5.DBW{2 * i}", DataType.INT16) for i in range(200)]  # 400 bytes
    small = plan_reads("s7", tags, PlanLimits(pdu_size=240))
    assert [(s.start, s.count) for s in spans(small)] == [(0, 222), (222, 178)]
    assert len(small.requests) == 2        # together they would not fit one answer
    big = plan_reads("s7", tags, PlanLimits(pdu_size=480))
    assert [(s.start, s.count) for s in spans(big)] == [(0, 400)]


def test_s7_multi_var_packs_small_spans_into_one_request() -> None:
    tags = [s7(f"t{db}", f"DB{db}.DBW0", DataType.INT16) for db in range(1, 11)]
    tags += [s7("m", "MW10", DataType.UINT16), s7("i", "I0.1", DataType.BOOL)]
    plan = plan_reads("s7", tags)
    assert len(plan.requests) == 1
    assert len(plan.requests[0].spans) == 12
    limited = plan_reads("s7", tags, PlanLimits(max_vars=5))
    assert [len(r.spans) for r in limited.requests] == [5, 5, 2]


def test_s7_string_takes_its_header() -> None:
    plan = plan_reads("s7", [s7("s", "DB1.STRING10.20", DataType.STRING)])
    assert (spans(plan)[0].start, spans(plan)[0].count) == (10, 22)


# -- split_span and slice_tags ------------------------------------------------------


def test_split_span_modbus() -> None:
    tags = [mb("a", "HR0"), mb("b", "HR1", F32), mb("c", "HR5"), mb("far", "HR500")]
    plan = plan_reads("modbus-tcp", tags)
    block = plan.requests[0].spans[0]
    assert block.tags == ("a", "b", "c")
    split = split_span(plan, block)
    assert [r.spans for r in split.requests] == [
        (Span("HR", 0, 0, 1, ("a",)),), (Span("HR", 0, 1, 2, ("b",)),),
        (Span("HR", 0, 5, 1, ("c",)),), plan.requests[1].spans,
    ]
    assert split.tags == plan.tags and split.limits == plan.limits
    single = split.requests[0].spans[0]
    assert split_span(split, single) is split
    with pytest.raises(ValueError, match="not in the plan"):
        split_span(plan, Span("HR", 0, 9, 1, ("x",)))


def test_split_span_s7_keeps_the_other_items_together() -> None:
    tags = [s7("a", "DB1.DBW0", DataType.INT16), s7("b", "DB1.DBD2", F32),
            s7("m", "MW0", DataType.INT16)]
    plan = plan_reads("s7", tags)
    assert len(plan.requests) == 1
    db_span = next(s for s in spans(plan) if s.area == "DB")
    split = split_span(plan, db_span)
    assert split.requests[0].spans == (Span("M", 0, 0, 2, ("m",)),)
    assert sorted(s.tags for s in spans(split)) == [("a",), ("b",), ("m",)]
    for r in split.requests:
        assert s7_request_fits(r.spans, split.limits)


def test_slice_tags_cuts_and_decodes() -> None:
    tags = [mb("count", "HR0", DataType.UINT32), mb("flag", "HR3.2", DataType.BOOL),
            mb("temp", "HR4", F32), mb("prog", "HR6", DataType.STRING, length=4)]
    plan = plan_reads("modbus-tcp", tags)
    span = spans(plan)[0]
    raw = (encode(tags[0], 70000) + b"\x00\x00" + encode(tags[1], True)
           + encode(tags[2], 23.5) + encode(tags[3], "P7"))
    readings = {r.name: r for r in slice_tags(plan, span, raw)}
    assert readings["count"].value == 70000
    assert readings["count"].raw == bytes.fromhex("00011170")
    assert readings["flag"].value is True
    assert readings["temp"].value == 23.5
    assert readings["prog"].value == "P7"
    assert all(r.good for r in readings.values())
    short = {r.name: r for r in slice_tags(plan, span, raw[:10])}
    assert short["count"].good and not short["temp"].good
    assert short["temp"].value is None and "raw bytes" in str(short["temp"].error)


def test_slice_tags_bits_and_s7() -> None:
    coils = [mb("c0", "CO0", DataType.BOOL), mb("c3", "CO3", DataType.BOOL)]
    plan = plan_reads("modbus-tcp", coils)
    got = [(r.name, r.value) for r in slice_tags(plan, spans(plan)[0], b"\x01\x00\x00\x00")]
    assert got == [("c0", True), ("c3", False)]
    tags = [s7("x", "DB1.DBX2.1", DataType.BOOL), s7("w", "DB1.DBW4", DataType.INT16)]
    plan = plan_reads("s7", tags)
    got = [(r.name, r.value)
           for r in slice_tags(plan, spans(plan)[0], b"\x02\x00\xff\xfe")]
    assert got == [("x", True), ("w", -2)]
