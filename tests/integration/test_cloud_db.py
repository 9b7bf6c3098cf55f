"""The cloud database through Alembic, on SQLite and PostgreSQL: the migrated schema is
the models' schema, records are append-only, and ingest's hook and edge cases in-process
(httpx over ASGI, no socket)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence

import msgpack
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import DBAPIError

from buffer.records import Record
from cloud.core.db import Database
from cloud.core.migrate import current_revision, head_revision, upgrade
from cloud.core.models import Base, records
from tests.fixtures.ingest import count_record, ingest, post_ingest, record

pytestmark = pytest.mark.needs_service("postgresql")


async def test_migrated_schema_matches_models(cloud_db_url: str):
    assert await current_revision(cloud_db_url) == head_revision()
    assert await upgrade(cloud_db_url) == head_revision()  # idempotent
    async with Database(cloud_db_url) as db, db.engine.connect() as conn:
        diffs = await conn.run_sync(
            lambda c: compare_metadata(MigrationContext.configure(c, opts={"compare_type": True}),
                                       Base.metadata))
    assert diffs == []


async def test_records_are_append_only(cloud_db_url: str, cloud_client):
    await ingest(cloud_client, [record(1)])
    async with Database(cloud_db_url) as db:
        for stmt in ("UPDATE records SET kind = 'link'", "DELETE FROM records"):
            with pytest.raises(DBAPIError, match="append-only"):
                async with db.engine.begin() as conn:
                    await conn.execute(text(stmt))
        async with db.engine.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM records"))).scalar() == 1


async def test_appliers_see_only_new_records_in_the_same_transaction(cloud_client):
    seen: list[list[int]] = []

    async def applier(session, gateway_id: str, new: Sequence[Record]) -> None:
        assert gateway_id == "gw-test"
        # the records are already inserted in this transaction
        stored = (await session.execute(select(records.c.seq).where(
            records.c.gateway_id == gateway_id))).scalars().all()
        assert {r.seq for r in new} <= set(stored)
        seen.append([r.seq for r in new])

    cloud_client.app.state.appliers.append(applier)
    assert (await ingest(cloud_client, [record(1), record(2)]))["acked_through"] == 2
    assert (await ingest(cloud_client, [record(2), record(3)]))["stored"] == 1
    assert seen == [[1, 2], [3]]


async def test_a_failing_applier_rolls_the_batch_back(cloud_client):
    async def broken(session, gateway_id, new) -> None:
        raise RuntimeError("backflush blew up")

    cloud_client.app.state.appliers.append(broken)
    res = await post_ingest(cloud_client, [record(1)])
    # the catch-all answers JSON (and logs the traceback); the gateway will retry
    assert res.status_code == 500 and res.json()["error"] == "internal_error", res.text
    cloud_client.app.state.appliers.clear()
    res = await cloud_client.get("/api/v1/gateways/gw-test")
    assert res.json()["records_stored"] == 0 and res.json()["last_seq"] == 0


async def test_non_finite_floats_are_stored_as_null(cloud_client):
    await ingest(cloud_client, [record(1, body={"values": {"t": math.nan, "u": math.inf,
                                                           "v": 1.5}})])
    db = cloud_client.app.state.db
    async with db.engine.connect() as conn:
        stored = (await conn.execute(select(records.c.body))).scalar_one()
    assert stored == {"values": {"t": None, "u": None, "v": 1.5}}


async def test_body_cap_and_msgpack_answer_in_process(cloud_client):
    # this app was created with max_body_bytes=64 KiB
    many = [count_record(s, "part_count", s - 1, s) for s in range(1, 2001)]
    res = await post_ingest(cloud_client, many)
    assert res.status_code == 413
    res = await post_ingest(cloud_client, many[:10], headers={
        "Accept": "application/json;q=0.5, application/msgpack"})
    assert msgpack.unpackb(res.content) == {"acked_through": 10, "stored": 10, "duplicates": 0}


async def test_writers_queue_and_readers_do_not_wait(cloud_db_url: str,
                                                     monkeypatch: pytest.MonkeyPatch):
    """SQLite's busy wait cut to 50 ms: a write transaction holds the database for
    1 s (20 times that) while 20 gateways ingest, a planner writes master data and an
    autobegin session writes a gateway row. All of them queue for the writer (first
    come first served) and succeed; on SQLite's busy wait alone they would fail
    "database is locked". Meanwhile a read transaction and a plain session read
    without waiting for the writer. PostgreSQL runs the same (row locks)."""
    import cloud.core.db
    from buffer.records import Batch, Record
    from cloud import production
    from cloud.auth import create_gateway
    from cloud.core.models import gateways
    from cloud.ingest import ingest_batch
    from cloud.production import apply_counts

    monkeypatch.setattr(cloud.core.db, "SQLITE_BUSY_TIMEOUT_MS", 50)
    async with Database(cloud_db_url) as db:
        gws = [f"gw-q{i}" for i in range(20)]
        for gw in gws:
            await create_gateway(db, gw)
        holding, reads_done = asyncio.Event(), asyncio.Event()

        async def hold() -> None:
            async with db.sessions() as s, s.begin():
                await production.upsert_material(s, "t", "HOLD", "held", "kg")
                holding.set()
                await asyncio.wait_for(reads_done.wait(), 30)  # readers pass the writer
                await asyncio.sleep(1.0)

        async def ingest(gw: str) -> None:
            await holding.wait()
            recs = [Record(i, 1_700_000_000_000 + i, "press", "count",
                           {"tag": "c", "counts": "good", "delta": 1, "raw_before": 0,
                            "raw_after": 1, "reset": False}) for i in range(1, 201)]
            await ingest_batch(db, gw, Batch(gw, recs), received_ms=1_700_000_000_000,
                               appliers=[apply_counts])

        async def planner(i: int) -> None:
            await holding.wait()
            async with db.sessions() as s, s.begin():
                await production.upsert_material(s, "t", f"M{i}", "m", "kg")

        async def autobegin_writer() -> None:
            await holding.wait()
            async with db.sessions() as s:
                await s.execute(select(gateways.c.id))
                await s.execute(update(gateways).where(gateways.c.id == "gw-q0")
                                .values(backlog=7))
                await s.commit()

        async def readers() -> None:
            await holding.wait()
            async with db.transaction(write=False) as s:
                assert len((await s.execute(select(gateways.c.id))).all()) >= 20
            async with db.sessions() as s:
                assert len((await s.execute(select(gateways.c.id))).all()) >= 20
            reads_done.set()

        await asyncio.gather(hold(), readers(), autobegin_writer(), *(ingest(g) for g in gws),
                             *(planner(i) for i in range(5)))
        async with db.sessions() as s:
            assert (await s.execute(select(func.count()).select_from(records))).scalar() == 4000
            assert (await s.execute(select(gateways.c.backlog).where(
                gateways.c.id == "gw-q0"))).scalar() == 7


async def test_gateway_create_rotate_revoke_are_audited(cloud_db_url: str):
    from cloud.auth import create_gateway, revoke_gateway
    from cloud.core.models import AuditEntry

    async with Database(cloud_db_url) as db:
        await create_gateway(db, "gw-x")
        await create_gateway(db, "gw-x", rotate=True, actor="alice")
        await revoke_gateway(db, "gw-x")
        await revoke_gateway(db, "gw-x")  # twice keeps the first: no second entry
        async with db.sessions() as s:
            rows = (await s.execute(select(AuditEntry.actor, AuditEntry.action,
                                           AuditEntry.entity, AuditEntry.entity_id)
                                    .where(AuditEntry.entity_id == "gw-x")
                                    .order_by(AuditEntry.id))).all()
    assert [tuple(r) for r in rows] == [("cli", "gateway.create", "gateway", "gw-x"),
                                        ("alice", "gateway.rotate", "gateway", "gw-x"),
                                        ("cli", "gateway.revoke", "gateway", "gw-x")]
