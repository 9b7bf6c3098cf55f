"""Batches the MQTT consumer parked (table ``ingest_dead_letters``): a batch whose storing
raised on every one of its attempts (an applier's bug, a record the domain cannot take)
is kept here with its payload, and the consumer goes on with the other messages, instead
of retrying it forever while every gateway's records wait behind it.

- ``park``: record one (or count one more attempt on the same gateway and seq range; the
  gateway sends an unconfirmed batch again). Idempotent per range.
- ``list_dead_letters``: the parked batches, newest first, for the API and the
  completeness page (without payloads).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from buffer.records import Batch
from cloud.core import clock
from cloud.core.db import Database
from cloud.core.models import ingest_dead_letters

__all__ = ["list_dead_letters", "park"]

_ERROR_LEN = 1000


async def park(db: Database, batch: Batch, payload: bytes, error: str, attempts: int) -> None:
    """Keep ``batch`` (its ``payload`` as received) with the last ``error``; ``attempts``
    are added to the row's count when the range was parked before."""
    first = batch.records[0].seq if batch.records else 0
    last = batch.records[-1].seq if batch.records else 0
    now = clock.now()
    t = ingest_dead_letters
    async with db.sessions() as session, session.begin():
        row = (await session.execute(select(t.c.id).where(
            t.c.gateway_id == batch.gateway, t.c.first_seq == first,
            t.c.last_seq == last))).first()
        if row is None:
            await session.execute(t.insert().values(
                gateway_id=batch.gateway, first_seq=first, last_seq=last,
                records=len(batch.records), payload=payload, error=error[:_ERROR_LEN],
                attempts=attempts, first_at=now, last_at=now))
        else:
            await session.execute(update(t).where(t.c.id == row.id).values(
                error=error[:_ERROR_LEN], attempts=t.c.attempts + attempts, last_at=now))


async def list_dead_letters(session: AsyncSession, *, limit: int, offset: int
                            ) -> tuple[list[dict[str, Any]], int]:
    """One page of parked batches (newest first) and how many there are in all."""
    t = ingest_dead_letters
    total = int(await session.scalar(select(func.count()).select_from(t)) or 0)
    rows = (await session.execute(
        select(t.c.id, t.c.gateway_id, t.c.first_seq, t.c.last_seq, t.c.records, t.c.error,
               t.c.attempts, t.c.first_at, t.c.last_at)
        .order_by(t.c.last_at.desc(), t.c.id.desc()).limit(limit).offset(offset))).mappings()
    return [dict(r) for r in rows], total
