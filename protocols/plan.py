"""The read planner: a device's tags compiled into as few requests as the protocol allows.

Pure, no I/O. ``plan_reads`` runs once per map (and again after the S7 driver reports
its negotiated PDU); drivers only execute the resulting ``ReadPlan``.

Modbus: one span per request, one area per span, at most ``max_registers`` registers
(HR/IR) or ``max_bits`` bits (CO/DI); a span bridges an unused gap of at most ``max_gap``
registers (``8 * max_gap`` bits) because a gap is often unmapped on the PLC and costs
bytes. Within those rules the number of requests is minimal (see ``_coalesce``).

S7: spans per (area, DB) in bytes, each at most ``pdu_size - 18`` bytes (the answer to a
single read must fit the PDU), bridging at most ``max_gap`` bytes; spans are then packed
first-fit-decreasing into multi-variable reads whose request (19 + 12 per item bytes) and
answer (14 + per item 4 + data padded to even) both fit the PDU, at most ``max_vars``
items each.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from protocols.address import tag_extent
from protocols.codec import decode, raw_size
from protocols.errors import AddressError, CodecError
from protocols.model import (
    ModbusAddress,
    PlanLimits,
    Protocol,
    ReadPlan,
    Request,
    S7Address,
    Span,
    TagReading,
    TagSpec,
)

S7_SINGLE_READ_OVERHEAD = 18   # answer header + item header of one read_area
S7_ANSWER_HEADER = 14          # S7 header with error fields + function + item count
S7_ANSWER_ITEM = 4             # return code, transport size, length
S7_REQUEST_HEADER = 19
S7_REQUEST_ITEM = 12
DEFAULT_LIMITS = PlanLimits()


@dataclass(frozen=True, slots=True)
class _Unit:
    """Tags that must travel together (they overlap) as one interval [start, end)."""

    start: int
    end: int
    tags: tuple[tuple[int, str], ...]   # (start, name), for ordering inside a span


def plan_reads(
    protocol: Protocol, tags: Sequence[TagSpec], limits: PlanLimits = DEFAULT_LIMITS,
) -> ReadPlan:
    """Compile ``tags`` into a ReadPlan for ``protocol`` within ``limits``.

    Pure and deterministic (same tags, same plan). Raises AddressError when a tag's
    address is of the other protocol, when a single tag is larger than one request may
    be, or when two tags share a name. Assumes ``check_fits`` passed for every tag.
    """
    names = [t.name for t in tags]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise AddressError(f"tag names must be unique: {', '.join(dupes)}")
    is_s7 = protocol == "s7"
    groups: dict[tuple[str, int], list[tuple[int, int, str]]] = {}
    for t in tags:
        if isinstance(t.address, S7Address) != is_s7:
            raise AddressError(
                f"tag {t.name}: '{t.address}' is not an address for {protocol}",
                example="DB1.DBW4" if is_s7 else "HR100",
            )
        area, db, start, count = tag_extent(t)
        limit = _max_len(area, limits, is_s7)
        if count > limit:
            unit = "bytes" if is_s7 else ("bits" if area in ("CO", "DI") else "registers")
            raise AddressError(
                f"tag {t.name}: '{t.address}' takes {count} {unit}, more than one request "
                f"may read ({limit})"
            )
        groups.setdefault((area, db), []).append((start, start + count, t.name))
    spans: list[Span] = []
    for (area, db), items in sorted(groups.items()):
        limit = _max_len(area, limits, is_s7)
        gap = limits.max_gap * 8 if area in ("CO", "DI") else limits.max_gap
        for start, end, tag_names in _coalesce(items, limit, gap):
            spans.append(Span(area, db, start, end - start, tag_names))
    if is_s7:
        requests = _pack_s7(spans, limits)
    else:
        requests = [Request((s,)) for s in spans]
    return ReadPlan(protocol, tuple(tags), tuple(requests), limits)


def _max_len(area: str, limits: PlanLimits, is_s7: bool) -> int:
    if is_s7:
        return limits.pdu_size - S7_SINGLE_READ_OVERHEAD
    return limits.max_bits if area in ("CO", "DI") else limits.max_registers


def _units(items: list[tuple[int, int, str]], limit: int) -> list[_Unit]:
    """Group overlapping tags (bits of one register, or a genuine overlap).

    Tags that touch without overlapping stay separate. An overlap chain longer than
    ``limit`` is cut by interval stabbing (take every tag that fits in a window opened at
    the leftmost start; repeat), so every tag still lands whole in one request.
    """
    items = sorted(items)
    chains: list[list[tuple[int, int, str]]] = []
    chain_end = -1
    for item in items:
        if chains and item[0] < chain_end:
            chains[-1].append(item)
            chain_end = max(chain_end, item[1])
        else:
            chains.append([item])
            chain_end = item[1]
    units: list[_Unit] = []
    for chain in chains:
        rest = chain
        while rest:
            lo = rest[0][0]
            take = [it for it in rest if it[1] <= lo + limit]
            rest = [it for it in rest if it[1] > lo + limit]
            units.append(_Unit(lo, max(it[1] for it in take),
                               tuple((it[0], it[2]) for it in take)))
    units.sort(key=lambda u: (u.start, u.end))
    return units


def _coalesce(
    items: list[tuple[int, int, str]], limit: int, max_gap: int,
) -> list[tuple[int, int, tuple[str, ...]]]:
    """Cover the intervals with as few windows of at most ``limit`` as possible, never
    bridging more than ``max_gap`` unused units. Returns (start, end, tag names).

    Why a left-to-right greedy is minimal: once overlapping tags are merged into units,
    units sorted by start are also sorted by end, and a request reads a contiguous run of
    them. A run is feasible when its length is <= limit and each gap inside is <= max_gap;
    any sub-run of a feasible run is feasible. Let the greedy take runs g1, g2, ... each as
    long as possible, and let an optimal plan take o1, o2, ... Induction: after k runs the
    greedy has covered at least as many units as the optimum (if o_k starts within the
    greedy's coverage, the part of o_k beyond it is a feasible run the greedy's k-th run
    could have extended to). So the greedy never needs more runs. tests/unit/test_plan.py
    checks this against a brute force over all partitions.
    """
    out: list[tuple[int, int, tuple[str, ...]]] = []
    cur: _Unit | None = None
    members: list[tuple[int, str]] = []
    for u in _units(items, limit):
        if cur is not None and u.start - cur.end <= max_gap and \
                max(cur.end, u.end) - cur.start <= limit:
            cur = _Unit(cur.start, max(cur.end, u.end), ())
            members.extend(u.tags)
            continue
        if cur is not None:
            out.append((cur.start, cur.end, tuple(n for _, n in sorted(members))))
        cur = u
        members = list(u.tags)
    if cur is not None:
        out.append((cur.start, cur.end, tuple(n for _, n in sorted(members))))
    return out


def _answer_bytes(spans: Iterable[Span]) -> int:
    return S7_ANSWER_HEADER + sum(S7_ANSWER_ITEM + s.count + s.count % 2 for s in spans)


def s7_request_fits(spans: Sequence[Span], limits: PlanLimits) -> bool:
    """Whether one S7 request may carry ``spans``: a single span needs its data within
    ``pdu_size - 18``; a multi-variable read needs request and answer within the PDU and
    at most ``max_vars`` items."""
    if len(spans) == 1:
        return spans[0].count <= limits.pdu_size - S7_SINGLE_READ_OVERHEAD
    return (
        len(spans) <= limits.max_vars
        and S7_REQUEST_HEADER + S7_REQUEST_ITEM * len(spans) <= limits.pdu_size
        and _answer_bytes(spans) <= limits.pdu_size
    )


def _pack_s7(spans: Sequence[Span], limits: PlanLimits) -> list[Request]:
    """First-fit decreasing; spans inside a request and the requests in address order."""
    bins: list[list[Span]] = []
    for span in sorted(spans, key=lambda s: (-s.count, s.area, s.db, s.start)):
        for b in bins:
            if s7_request_fits([*b, span], limits):
                b.append(span)
                break
        else:
            bins.append([span])
    key = _span_key
    return sorted((Request(tuple(sorted(b, key=key))) for b in bins),
                  key=lambda r: key(r.spans[0]))


def _span_key(s: Span) -> tuple[str, int, int, int]:
    return (s.area, s.db, s.start, s.count)


def per_tag_spans(plan: ReadPlan, span: Span) -> list[Span]:
    """The spans ``split_span`` puts in place of ``span``: one per tag, in tag order."""
    specs = {t.name: t for t in plan.tags}
    out = []
    for name in span.tags:
        area, db, start, count = tag_extent(specs[name])
        out.append(Span(area, db, start, count, (name,)))
    return out


def split_span(plan: ReadPlan, span: Span) -> ReadPlan:
    """A new plan where ``span`` is replaced by one span per tag it serves.

    Used when the PLC answers "illegal data address" for a coalesced block: each tag is
    then read alone so only the bad one fails. Modbus pieces get a request each; S7
    pieces are packed into multi-variable reads of their own, and the other spans of the
    original request stay together. A span with one tag gives the plan back unchanged.
    Raises ValueError when ``span`` is not in ``plan``.
    """
    index = next((i for i, r in enumerate(plan.requests) if span in r.spans), None)
    if index is None:
        raise ValueError(f"span {span} is not in the plan")
    if len(span.tags) <= 1:
        return plan
    pieces = per_tag_spans(plan, span)
    request = plan.requests[index]
    if plan.protocol == "s7":
        kept = tuple(s for s in request.spans if s != span)
        new = ([Request(kept)] if kept else []) + _pack_s7(pieces, plan.limits)
    else:
        new = [Request((p,)) for p in pieces]
    requests = (*plan.requests[:index], *new, *plan.requests[index + 1:])
    return replace(plan, requests=requests)


def slice_tags(plan: ReadPlan, span: Span, raw: bytes) -> list[TagReading]:
    """Cut the raw bytes of ``span`` into one TagReading per tag it serves.

    Each reading carries the tag's own raw bytes and its decoded value; a tag whose bytes
    do not decode (or that the raw block is too short for) carries a CodecError instead.
    Never raises for bad data.
    """
    layout = _layout(plan)
    out = []
    for name in span.tags:
        spec, start, per_unit, size = layout[name]
        at = (start - span.start) * per_unit
        piece = raw[at:at + size]
        try:
            out.append(TagReading(name, piece, decode(spec, piece)))
        except CodecError as exc:
            out.append(TagReading(name, piece, None, exc))
    return out


# Per-plan slicing layout, computed once per plan and poll loop rather than per span.
# Keyed by id() with the plan kept alive beside it, so an id is never reused while cached.
_LAYOUTS: dict[int, tuple[ReadPlan, dict[str, tuple[TagSpec, int, int, int]]]] = {}
_LAYOUT_CACHE_SIZE = 256


def _layout(plan: ReadPlan) -> dict[str, tuple[TagSpec, int, int, int]]:
    cached = _LAYOUTS.get(id(plan))
    if cached is not None and cached[0] is plan:
        return cached[1]
    layout = {}
    for spec in plan.tags:
        _, _, start, _ = tag_extent(spec)
        per_unit = 2 if isinstance(spec.address, ModbusAddress) and \
            spec.address.area in ("HR", "IR") else 1
        layout[spec.name] = (spec, start, per_unit, raw_size(spec))
    if len(_LAYOUTS) >= _LAYOUT_CACHE_SIZE:
        _LAYOUTS.pop(next(iter(_LAYOUTS)))
    _LAYOUTS[id(plan)] = (plan, layout)
    return layout
