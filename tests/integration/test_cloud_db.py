"""The cloud database through Alembic, on SQLite and PostgreSQL: the migrated schema is
the models' schema, records are append-only, and ingest's hook and edge cases in-process
(httpx over ASGI, no socket)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import msgpack
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from buffer.records import Record
from cloud.db import Database
from cloud.migrate import current_revision, head_revision, upgrade
from cloud.models import Base, records
from tests.fixtures.cloud import batch_bytes, count_record, record

pytestmark = pytest.mark.needs_service("postgresql")
MSGPACK = {"Content-Type": "application/msgpack", "Accept": "application/json"}


async def test_migrated_schema_matches_models(cloud_db_url: str):
    assert await current_revision(cloud_db_url) == head_revision()
    assert await upgrade(cloud_db_url) == head_revision()  # idempotent
    async with Database(cloud_db_url) as db, db.engine.connect() as conn:
        diffs = await conn.run_sync(
            lambda c: compare_metadata(MigrationContext.configure(c, opts={"compare_type": True}),
                                       Base.metadata))
    assert diffs == []


async def test_records_are_append_only(cloud_db_url: str, cloud_client):
    res = await cloud_client.post("/api/v1/ingest", headers=MSGPACK,
                                  content=batch_bytes("gw-test", [record(1)]))
    assert res.status_code == 200
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
    body = batch_bytes("gw-test", [record(1), record(2)])
    assert (await cloud_client.post("/api/v1/ingest", headers=MSGPACK, content=body)).json()[
        "acked_through"] == 2
    body = batch_bytes("gw-test", [record(2), record(3)])
    assert (await cloud_client.post("/api/v1/ingest", headers=MSGPACK, content=body)).json()[
        "stored"] == 1
    assert seen == [[1, 2], [3]]


async def test_a_failing_applier_rolls_the_batch_back(cloud_client):
    async def broken(session, gateway_id, new) -> None:
        raise RuntimeError("backflush blew up")

    cloud_client.app.state.appliers.append(broken)
    with pytest.raises(RuntimeError, match="backflush"):  # ASGITransport re-raises
        await cloud_client.post("/api/v1/ingest", headers=MSGPACK,
                                content=batch_bytes("gw-test", [record(1)]))
    cloud_client.app.state.appliers.clear()
    res = await cloud_client.get("/api/v1/gateways/gw-test")
    assert res.json()["records_stored"] == 0 and res.json()["last_seq"] == 0


async def test_non_finite_floats_are_stored_as_null(cloud_client):
    body = batch_bytes("gw-test", [record(1, body={"values": {"t": math.nan, "u": math.inf,
                                                              "v": 1.5}})])
    res = await cloud_client.post("/api/v1/ingest", headers=MSGPACK, content=body)
    assert res.status_code == 200, res.text
    db = cloud_client.app.state.db
    async with db.engine.connect() as conn:
        stored = (await conn.execute(select(records.c.body))).scalar_one()
    assert stored == {"values": {"t": None, "u": None, "v": 1.5}}


async def test_body_cap_and_msgpack_answer_in_process(cloud_client):
    # this app was created with max_body_bytes=64 KiB
    many = [count_record(s, "part_count", s - 1, s) for s in range(1, 2001)]
    res = await cloud_client.post("/api/v1/ingest", headers=MSGPACK,
                                  content=batch_bytes("gw-test", many))
    assert res.status_code == 413
    res = await cloud_client.post("/api/v1/ingest", headers={
        "Content-Type": "application/msgpack", "Accept": "application/json;q=0.5, "
        "application/msgpack"}, content=batch_bytes("gw-test", many[:10]))
    assert msgpack.unpackb(res.content) == {"acked_through": 10, "stored": 10, "duplicates": 0}
