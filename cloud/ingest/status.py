"""What the cloud holds for a gateway: seq gaps and their explanations, counter sums
and continuity, and whether its data is still arriving. Read-only queries shared by the
API, the web UI and the ingest ack.

Provisional reports (``gateway_freshness``): a gateway's data is still arriving when its
last batch said more than ``BACKLOG_LIVE`` records were still queued behind it (the
batch's ``backlog``, kept on the gateway row), or, for gateways that do not report a
backlog, when the newest record it sent reached the cloud more than ``CATCHING_UP_MS``
(5 min) after it was made (``received_at`` minus ``ts`` corrected by the clock skew). A
gateway not seen for ``SILENT_MS`` (10 min) holds back whatever it buffered meanwhile.
Either way every report built from its machines may still change: the report pages say
so, and ``GET /api/v1/gateways`` answers it per gateway (``provisional``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import and_, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.core import clock
from cloud.core.models import gateways, records

# A status page lists at most this many gap ranges (first ones); it says when it cut.
MAX_GAPS: Final = 1000
# ... and the most recent wall-clock jumps the gateway reported.
MAX_CLOCK_JUMPS: Final = 50
CATCHING_UP_MS: Final = 5 * 60_000
SILENT_MS: Final = 10 * 60_000
# a live gateway's batches leave at most a poll cycle or two behind them
BACKLOG_LIVE: Final = 1000
FRESHNESS_STATES: Final = ("live", "catching_up", "silent", "never")


@dataclass(slots=True)
class SeqGap:
    """Seqs ``first_seq..last_seq`` (inclusive) the cloud does not hold."""

    first_seq: int
    last_seq: int
    before_first_record: bool = False  # below the gateway's first stored record
    explained_by: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"first_seq": self.first_seq, "last_seq": self.last_seq,
                "missing": self.last_seq - self.first_seq + 1,
                "before_first_record": self.before_first_record,
                "explained": bool(self.explained_by), "explained_by": self.explained_by}


async def seq_gaps(session: AsyncSession, gateway_id: str,
                   limit: int = MAX_GAPS) -> tuple[list[SeqGap], bool]:
    """Missing seq ranges in 1..(highest stored seq), oldest first, each with the
    ``gap`` records that explain it; and whether the list was cut at ``limit``.

    A gap record explains a missing range its ``first_seq..last_seq`` overlaps; one
    without a range (e.g. a buffer file that had to be moved aside) explains the
    missing range just before its own seq.
    """
    ordered = select(
        records.c.seq,
        func.lag(records.c.seq, 1, 0).over(order_by=records.c.seq).label("prev"),
    ).where(records.c.gateway_id == gateway_id).subquery()
    rows = (await session.execute(
        select(ordered.c.prev, ordered.c.seq).where(ordered.c.seq - ordered.c.prev > 1)
        .order_by(ordered.c.seq).limit(limit + 1)
    )).all()
    cut = len(rows) > limit
    gaps = [SeqGap(int(r.prev) + 1, int(r.seq) - 1, before_first_record=r.prev == 0)
            for r in rows[:limit]]
    if not gaps:
        return gaps, cut
    gap_rows = (await session.execute(
        select(records.c.seq, records.c.ts, records.c.device, records.c.body)
        .where(records.c.gateway_id == gateway_id, records.c.kind == "gap")
        .order_by(records.c.seq)
    )).all()
    for g in gap_rows:
        body = g.body
        info = {"seq": g.seq, "ts": g.ts, "device": g.device, **body}
        first, last = body.get("first_seq"), body.get("last_seq")
        if first is not None or last is not None:
            first = first if first is not None else last
            last = last if last is not None else first
            for gap in gaps:
                if gap.first_seq <= last and first <= gap.last_seq:
                    gap.explained_by.append(info)
        else:
            before = [gap for gap in gaps if gap.last_seq < g.seq]
            if before:
                before[-1].explained_by.append(info)
    return gaps, cut


async def acked_frontier(session: AsyncSession, gateway_id: str, last_seq: int) -> int:
    """The highest seq below which every missing seq is explained by a gap record or
    lies below the gateway's first stored record (the answer to an empty batch)."""
    # No cut here: an unexplained hole after the first MAX_GAPS must still stop the ack.
    gaps, _ = await seq_gaps(session, gateway_id, limit=2**62)
    for gap in gaps:
        if not gap.before_first_record and not gap.explained_by:
            return gap.first_seq - 1
    return last_seq


async def gateway_exists(session: AsyncSession, gateway_id: str) -> bool:
    return (await session.execute(
        select(gateways.c.id).where(gateways.c.id == gateway_id))).first() is not None


async def gateway_status(session: AsyncSession, gateway_id: str) -> dict[str, Any] | None:
    """The status document of ``GET /api/v1/gateways/{id}``; None for an unknown id."""
    gw = (await session.execute(select(gateways).where(gateways.c.id == gateway_id))).first()
    if gw is None:
        return None
    stored = (await session.execute(
        select(func.count()).select_from(records).where(records.c.gateway_id == gateway_id)
    )).scalar_one()
    gaps, cut = await seq_gaps(session, gateway_id)
    # Wall-clock jumps the gateway saw (NTP after boot, a reset RTC): records near one of
    # these carry timestamps from the clock before or after the jump.
    jumps = (await session.execute(
        select(records.c.seq, records.c.ts, records.c.body)
        .where(records.c.gateway_id == gateway_id, records.c.kind == "clock")
        .order_by(records.c.seq.desc()).limit(MAX_CLOCK_JUMPS))).all()
    return {
        "id": gw.id,
        "created": clock.iso(gw.created),
        "revoked_at": clock.iso(gw.revoked_at),
        "last_seen": clock.iso(gw.last_seen),
        "last_seq": gw.last_seq,
        "records_stored": stored,
        "missing": sum(g.last_seq - g.first_seq + 1 for g in gaps),
        "gaps": [g.to_json() for g in gaps],
        "gaps_truncated": cut,
        "clock_skew_ms": gw.clock_skew_ms,
        "clock_skew_exact": gw.clock_skew_exact,
        # records still queued at the gateway behind its last batch (None: never said)
        "backlog": gw.backlog,
        "backlog_at": clock.iso(gw.backlog_at),
        "clock_jumps": [{"seq": j.seq, "ts": j.ts, "jump_ms": j.body.get("jump_ms"),
                         "reason": j.body.get("reason")} for j in reversed(jumps)],
    }


async def device_counters(session: AsyncSession, gateway_id: str,
                          device: str) -> dict[str, Any]:
    """Per counter tag of ``device``: sums of good, scrap and total deltas (by each
    record's ``counts``), first and last raw value, resets, and continuity breaks (a
    count record whose raw_before is not the previous raw_after of its tag and that is
    not a reset), in the gateway's seq order."""
    rows = (await session.execute(
        select(records.c.seq, records.c.ts, records.c.body)
        .where(records.c.gateway_id == gateway_id, records.c.device == device,
               records.c.kind == "count")
        .order_by(records.c.seq)
    )).all()
    tags: dict[str, dict[str, Any]] = {}
    for r in rows:
        b = r.body
        t = tags.get(b["tag"])
        if t is None:
            t = tags[b["tag"]] = {
                "tag": b["tag"], "counts": b["counts"], "good": 0, "scrap": 0, "total": 0,
                "records": 0, "first_seq": r.seq, "first_raw": _first_raw(b),
                "last_seq": r.seq, "last_raw": b["raw_after"], "resets": 0, "breaks": [],
            }
        else:
            expected = t["last_raw"]
            if not b.get("reset") and b.get("raw_before") != expected:
                t["breaks"].append({"seq": r.seq, "ts": r.ts, "after_seq": t["last_seq"],
                                    "expected_raw_before": expected,
                                    "raw_before": b.get("raw_before"),
                                    "raw_after": b["raw_after"]})
        t[b["counts"]] += b["delta"]
        t["records"] += 1
        t["resets"] += 1 if b.get("reset") else 0
        t["last_seq"], t["last_raw"] = r.seq, b["raw_after"]
    totals = {k: sum(t[k] for t in tags.values()) for k in ("good", "scrap", "total")}
    return {"gateway": gateway_id, "device": device, "totals": totals,
            "tags": sorted(tags.values(), key=lambda t: t["tag"])}


def _first_raw(body: dict[str, Any]) -> int:
    raw_before = body.get("raw_before")
    return int(raw_before if raw_before is not None else body["raw_after"])


async def gateway_freshness(session: AsyncSession, now_ms: int) -> list[dict[str, Any]]:
    """Per gateway (not revoked), by id: ``id``, ``last_seen`` (aware UTC datetime, None
    when never) and ``last_seen_ms`` (the same in epoch ms), ``last_seq``, ``newest_ts``
    (the newest record's time, epoch ms on the gateway's clock), ``lag_ms`` (how late
    that record reached the cloud), ``clock_skew_ms``, ``backlog`` (records its last batch
    said were still queued) and ``state`` live / catching_up / silent / never;
    ``provisional`` for catching_up and silent, not for never (a gateway that never sent
    has nothing to hold back that we know of)."""
    newest = records.alias("newest")
    rows = (await session.execute(
        select(gateways.c.id, gateways.c.last_seen, gateways.c.last_seq,
               gateways.c.clock_skew_ms, gateways.c.backlog, newest.c.ts,
               newest.c.received_at)
        .select_from(gateways.outerjoin(newest, and_(newest.c.gateway_id == gateways.c.id,
                                                     newest.c.seq == gateways.c.last_seq)))
        .where(gateways.c.revoked_at.is_(None)).order_by(gateways.c.id))).all()
    out: list[dict[str, Any]] = []
    for r in rows:
        seen_ms = int(r.last_seen.timestamp() * 1000) if r.last_seen else None
        lag = None
        if r.ts is not None and r.received_at is not None:
            lag = max(0, int(r.received_at) - (int(r.ts) + int(r.clock_skew_ms or 0)))
        if seen_ms is None:
            state = "never"
        elif now_ms - seen_ms > SILENT_MS:
            state = "silent"
        elif r.backlog is not None:
            state = "catching_up" if r.backlog > BACKLOG_LIVE else "live"
        elif lag is not None and lag > CATCHING_UP_MS:
            state = "catching_up"
        else:
            state = "live"
        out.append({"id": r.id, "last_seen": r.last_seen, "last_seen_ms": seen_ms,
                    "last_seq": r.last_seq,
                    "newest_ts": r.ts, "lag_ms": lag, "clock_skew_ms": r.clock_skew_ms,
                    "backlog": r.backlog,
                    "state": state, "provisional": state in ("silent", "catching_up")})
    return out
