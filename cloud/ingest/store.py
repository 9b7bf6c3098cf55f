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

Replays store nothing new and get the same answer. A replay is a seq the cloud holds with
the *same* content (ts, device, kind, body); a seq it holds with other content is a seq
reused by a gateway that lost its buffer, and is never acked as a duplicate: the whole
batch is refused, 409 ``seq_conflict`` (``SeqConflict``) with ``cloud_last_seq`` (the
highest seq the cloud holds of that gateway), and nothing of it is stored.

Incarnations (the lost-buffer fix, ARCHITECTURE.md "Sync"): a batch may carry the
buffer's ``incarnation`` (a random id made when the buffer began its numbering) and
``since`` (that numbering's first seq; 0 for a buffer older than incarnations, whose
numbering continues what the cloud knows). The gateway row keeps the incarnation its
records are stored under. A batch of another incarnation is accepted, and the row moves
to it, only when its numbering starts above everything the cloud holds (``since >
last_seq``: a buffer that resumed above the cloud after a rebase, or above its
reservation) or, for a row that never heard of incarnations, when ``since`` is 0 (an
upgraded gateway). Otherwise it is refused with ``seq_conflict``: the gateway renumbers its
records above ``cloud_last_seq`` behind a ``gap`` record (reason ``buffer_lost``) under a new
incarnation and resends, so each of its records is stored exactly once. Batches of a
refused numbering still in flight (MQTT) are refused too, since their ``since`` can never
pass ``last_seq`` again. Batches without an incarnation (older gateways) get the content
check only.

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
from cloud.core.errors import Conflict, Unauthorized
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


class SeqConflict(Conflict):
    """409 ``seq_conflict``: the batch's seqs belong to a numbering the cloud does not
    accept (a gateway that lost its buffer), or a seq the cloud holds came with other
    content. ``cloud_last_seq``: the highest seq the cloud holds of the gateway (resume
    above it); ``incarnation``: the batch's. Nothing of the batch was stored."""

    code = "seq_conflict"

    def __init__(self, detail: str, *, cloud_last_seq: int, incarnation: str | None) -> None:
        super().__init__(detail, cloud_last_seq=cloud_last_seq, incarnation=incarnation)
        self.cloud_last_seq = cloud_last_seq
        self.incarnation = incarnation


async def ingest_batch(db: Database, gateway_id: str, batch: Batch, *, received_ms: int,
                       sent_at_ms: int | None = None,
                       appliers: Sequence[Applier] = ()) -> IngestResult:
    """Store ``batch`` for ``gateway_id`` (already authenticated; the batch's own gateway
    field is the caller's business) in one transaction and return the ack.

    Idempotent: a replay stores nothing and returns the same acked_through. Raises
    GatewayGone when the gateway was revoked meanwhile, SeqConflict when the batch reuses
    seqs the cloud holds (see the module doc); database errors propagate and nothing is
    stored.
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
            .returning(gateways.c.last_seq, gateways.c.clock_skew_ms, gateways.c.clock_skew_exact,
                       gateways.c.incarnation, gateways.c.backlog)
        )).first()
        if row is None:
            raise GatewayGone(gateway_id)
        prev_last = int(row.last_seq)
        values: dict[str, Any] = {}
        if batch.incarnation is not None and batch.incarnation != row.incarnation:
            _check_new_incarnation(gateway_id, batch, row.incarnation, prev_last, row.backlog)
            values["incarnation"] = batch.incarnation
        new: list[Record] = []
        if recs:
            lo, hi = recs[0].seq, recs[-1].seq  # decode_batch guarantees increasing seqs
            held = {int(r.seq): r for r in (await session.execute(
                select(records.c.seq, records.c.ts, records.c.device, records.c.kind,
                       records.c.body)
                .where(records.c.gateway_id == gateway_id, records.c.seq.between(lo, hi))
            ))}
            if held:
                _check_replays(gateway_id, batch, held, prev_last)
            new = [r for r in recs if r.seq not in held]
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
        values |= {"last_seq": last_seq, "clock_skew_ms": skew, "clock_skew_exact": exact}
        if batch.backlog is not None:   # what is still queued behind this batch
            values |= {"backlog": max(0, batch.backlog - len(recs)), "backlog_at": now}
        await session.execute(update(gateways).where(gateways.c.id == gateway_id).values(**values))
    result = IngestResult(acked, len(new), len(recs) - len(new), skew)
    log.debug("batch_stored", gateway=gateway_id, records=len(recs), new=len(new),
              acked_through=acked)
    return result


def _check_new_incarnation(gateway_id: str, batch: Batch, stored: str | None,
                           prev_last: int, prev_backlog: int | None) -> None:
    """A batch of an incarnation the row does not have: accept it (return) or refuse it."""
    since = batch.since or 0
    recs = batch.records
    starts_above = since > prev_last and (not recs or recs[0].seq >= since)
    if starts_above or (stored is None and since == 0):
        if stored is not None:
            log.warning("gateway_new_incarnation", gateway=gateway_id, incarnation=batch.incarnation,
                        previous=stored, since=since, cloud_last_seq=prev_last,
                        detail="the gateway's buffer was replaced; it resumes above the cloud")
        return
    log.warning("ingest_seq_conflict", gateway=gateway_id, reason="buffer_lost",
                incarnation=batch.incarnation, stored_incarnation=stored, since=since,
                cloud_last_seq=prev_last,
                first_seq=recs[0].seq if recs else None, last_seq=recs[-1].seq if recs else None,
                previous_backlog=prev_backlog,
                detail="a new buffer reuses seqs the cloud holds; refused, the gateway resumes "
                       "above cloud_last_seq (previous_backlog: records its old buffer still "
                       "held unsent at its last batch, now lost)")
    raise SeqConflict(
        f"gateway {gateway_id!r}: this buffer's numbering (incarnation {batch.incarnation!r}, "
        f"from seq {since}) reuses seqs the cloud already holds through {prev_last}; resume "
        "above cloud_last_seq; nothing was stored",
        cloud_last_seq=prev_last, incarnation=batch.incarnation)


def _check_replays(gateway_id: str, batch: Batch, held: dict[int, Any], prev_last: int) -> None:
    """Every record of the batch the cloud holds must be the same record (a replay)."""
    for r in batch.records:
        old = held.get(r.seq)
        if old is None or (old.ts == r.ts and old.device == r.device and old.kind == r.kind
                           and _same(old.body, dict(r.body))):
            continue
        log.warning("ingest_seq_conflict", gateway=gateway_id, reason="seq_reused",
                    seq=r.seq, incarnation=batch.incarnation, cloud_last_seq=prev_last,
                    held={"ts": old.ts, "device": old.device, "kind": old.kind},
                    sent={"ts": r.ts, "device": r.device, "kind": r.kind},
                    detail="a seq the cloud holds came with other content; the batch is "
                           "refused, not acked as a duplicate")
        raise SeqConflict(
            f"gateway {gateway_id!r}: seq {r.seq} is held with other content (a buffer that "
            f"lost its records restarted its numbering?); the cloud holds seqs through "
            f"{prev_last}; resume above cloud_last_seq; nothing was stored",
            cloud_last_seq=prev_last, incarnation=batch.incarnation)


def _same(a: Any, b: Any) -> bool:
    """JSON values equal as stored: numbers by value (20 == 20.0), NaN equal to NaN."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    return bool(a == b) and isinstance(a, bool) == isinstance(b, bool)


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
