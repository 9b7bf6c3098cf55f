"""Storing a gateway's batch: append-only, deduplicated, one transaction, then the ack.

``acked_through`` (the number the gateway deletes by) is, for a non-empty batch, the
highest seq of the batch, raised to the gateway's highest stored seq when every seq
between the two is stored too. Why the batch maximum is right: a gateway sends its
buffer oldest-first and deletes only what was acked, so every record it still holds
below the batch's top is *in* the batch. A seq missing between two records of a batch
was dropped by the gateway's quota (a ``gap`` record, sent in order, says so) and will
never come; a seq missing below the batch was already acked or dropped. Neither may
block acking, or the gateway would resend forever. Once the transaction commits the
cloud durably holds all of it, so the gateway may delete through that seq.

An empty batch asks "where are we?" (a gateway after a restart or a sync error): the
answer is the highest seq below which every missing seq is explained, either by a
``gap`` record or by lying below the gateway's first stored record (cloud/ingest/status.py).

Replays store nothing new and get the same answer.

Clock skew (cloud minus gateway, ms): exact from the ``X-Plantsync-Sent-At`` header (the
gateway's clock at send time; one-way latency is the error). Without it, estimated from
the batch's newest record only when the batch looks live: its newest ts is at most
LIVE_WINDOW_MS old, or lies in the future (a backlog only makes records older, so a
future ts is always the gateway's clock). A batch older than the window is most likely a
drained backlog and says nothing about the clock: the previous estimate stays. A gateway
whose clock is slow by more than the window therefore needs the header to be seen.

Backlog: a batch may say how many records its gateway still held unacknowledged when it
was sent (``backlog``, this batch included). The records still queued behind it (backlog
minus the batch) and the batch's arrival time are kept on the gateway row, so reports can
say they are provisional while a backlog is arriving.

Domain processing (attribution, backflush: the cloud-core issue) hooks in through
``appliers``: each is awaited with (session, gateway_id, new_records) inside the same
transaction, after the insert, with only the records that were new, in seq order. An
applier that raises rolls the whole batch back (the gateway gets a 500 and retries).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import structlog
from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from buffer.records import Batch, Record
from cloud.core.db import Database
from cloud.core.errors import Unauthorized
from cloud.core.models import gateways, records
from cloud.ingest.status import acked_frontier

log = structlog.get_logger(__name__)

LIVE_WINDOW_MS: Final = 10 * 60 * 1000

Applier = Callable[[AsyncSession, str, Sequence[Record]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class IngestResult:
    acked_through: int
    stored: int          # records new in this batch
    duplicates: int      # records the cloud already had (replays)
    clock_skew_ms: int | None


class GatewayGone(Unauthorized):
    """The gateway row vanished or was revoked between authentication and storing
    (401 ``revoked_token``: the gateway must stop retrying)."""

    code = "revoked_token"

    def __init__(self, gateway_id: str) -> None:
        super().__init__(f"gateway {gateway_id!r} was revoked", headers={"WWW-Authenticate": "Bearer"})
        self.gateway_id = gateway_id


async def ingest_batch(db: Database, gateway_id: str, batch: Batch, *, received_ms: int,
                       sent_at_ms: int | None = None,
                       appliers: Sequence[Applier] = ()) -> IngestResult:
    """Store ``batch`` for ``gateway_id`` (already authenticated; the batch's own gateway
    field is the caller's business) in one transaction and return the ack.

    Idempotent: a replay stores nothing and returns the same acked_through. Raises
    GatewayGone when the gateway was revoked meanwhile; database errors propagate and
    nothing is stored.
    """
    recs = batch.records
    now = datetime.fromtimestamp(received_ms / 1000, UTC)
    async with db.sessions() as session, session.begin():
        # Write the gateway row first: on PostgreSQL it row-locks the gateway, so two
        # batches of one gateway never interleave (and create_machine, which locks it too,
        # never misses a batch's counts). On SQLite this transaction is already the only
        # writer (cloud/core/db.py: begin() queues for the write gate, then BEGIN IMMEDIATE).
        row = (await session.execute(
            update(gateways).where(gateways.c.id == gateway_id, gateways.c.revoked_at.is_(None))
            .values(last_seen=now)
            .returning(gateways.c.last_seq, gateways.c.clock_skew_ms, gateways.c.clock_skew_exact)
        )).first()
        if row is None:
            raise GatewayGone(gateway_id)
        prev_last = int(row.last_seq)
        new: list[Record] = []
        if recs:
            lo, hi = recs[0].seq, recs[-1].seq  # decode_batch guarantees increasing seqs
            have = set((await session.execute(
                select(records.c.seq).where(records.c.gateway_id == gateway_id,
                                            records.c.seq.between(lo, hi))
            )).scalars())
            new = [r for r in recs if r.seq not in have]
            if new:
                await session.execute(_insert(db.dialect), [
                    {"gateway_id": gateway_id, "seq": r.seq, "ts": r.ts, "device": r.device,
                     "kind": r.kind, "body": r.body, "received_at": received_ms}
                    for r in new
                ])
            for apply in appliers:
                await apply(session, gateway_id, new)
            last_seq = max(prev_last, hi)
            acked = hi
            if prev_last > hi:
                above = (await session.execute(
                    select(func.count()).select_from(records).where(
                        records.c.gateway_id == gateway_id, records.c.seq > hi,
                        records.c.seq <= prev_last)
                )).scalar_one()
                if above == prev_last - hi:
                    acked = prev_last
        else:
            last_seq = prev_last
            acked = await acked_frontier(session, gateway_id, last_seq)
        skew, exact = _skew(recs, received_ms, sent_at_ms)
        if skew is None:
            skew, exact = row.clock_skew_ms, row.clock_skew_exact
        values: dict[str, Any] = {"last_seq": last_seq, "clock_skew_ms": skew,
                                  "clock_skew_exact": exact}
        if batch.backlog is not None:   # what is still queued behind this batch
            values |= {"backlog": max(0, batch.backlog - len(recs)), "backlog_at": now}
        await session.execute(update(gateways).where(gateways.c.id == gateway_id).values(**values))
    result = IngestResult(acked, len(new), len(recs) - len(new), skew)
    log.debug("batch_stored", gateway=gateway_id, records=len(recs), new=len(new),
              acked_through=acked)
    return result


def _skew(recs: Sequence[Record], received_ms: int,
          sent_at_ms: int | None) -> tuple[int | None, bool | None]:
    if sent_at_ms is not None:
        return received_ms - sent_at_ms, True
    if not recs:
        return None, None
    estimate = received_ms - max(r.ts for r in recs)
    if estimate <= LIVE_WINDOW_MS:  # includes the future (negative): always the clock
        return estimate, False
    return None, None


_INSERTS: dict[str, Any] = {}


def _insert(dialect: str) -> Any:
    """INSERT .. ON CONFLICT (gateway_id, seq) DO NOTHING for this dialect, built once.
    The conflict clause guards the (rare) race the gateway-row lock does not cover:
    two cloud processes on one SQLite file are serialized by SQLite itself anyway."""
    stmt = _INSERTS.get(dialect)
    if stmt is None:
        mod = postgresql if dialect == "postgresql" else sqlite
        stmt = mod.insert(records).on_conflict_do_nothing(index_elements=["gateway_id", "seq"])
        _INSERTS[dialect] = stmt
    return stmt
