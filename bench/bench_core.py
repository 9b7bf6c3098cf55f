"""Cloud core: ingest with full domain processing (attribution, progress, backflush) from
20 concurrent gateways, records/s, beside storing the same records without processing
(appliers off) into the same kind of database; and the time to re-attribute one day of
one machine's counts (86,400 count records, one per second) by editing a dispatch.
In-process (ingest_batch, no HTTP: bench_ingest measures the HTTP path). One record in
four is a count, as in bench_ingest. Measured on SQLite (a temp file) and on PostgreSQL
(a private server started for the run, fsync on, as in production; a new database per
measurement). ``BENCH_CORE_RECORDS`` sets the records per gateway (default 10,000).
Target: >= 20,000 records/s with processing on SQLite (the "vs target" row's ratio).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from buffer.records import Batch, Record

GATEWAYS = 20
PER_GATEWAY = int(os.environ.get("BENCH_CORE_RECORDS", "10000"))
BATCH = 1000
T0 = 1_700_000_000_000
U = 1_000_000
Report = Callable[[str, float, float | None, str], None]


def _records(start: int, n: int) -> list[Record]:
    out = []
    for seq in range(start, start + n):
        if seq % 4 == 0:
            out.append(Record(seq, T0 + seq * 100, "cnc-03", "count",
                              {"tag": "part_count", "counts": "good", "delta": 1,
                               "raw_before": seq - 1, "raw_after": seq, "reset": False}))
        else:
            out.append(Record(seq, T0 + seq * 100, "cnc-03", "sample",
                              {"values": {"spindle_temp": 41.5, "program": "O1234"}}))
    return out


async def _setup(url: str) -> tuple[object, list[str], list[int], list[int]]:
    from cloud import production
    from cloud.auth import create_gateway
    from cloud.core.db import Database
    from cloud.core.migrate import upgrade
    from cloud.core.models import wo_operations, work_orders
    from cloud.production import dispatch

    await upgrade(url)
    db = Database(url)
    gws = [f"gw-{i:02d}" for i in range(GATEWAYS)]
    machines, ops = [], []
    for gw in gws:
        await create_gateway(db, gw)
    async with db.sessions() as s, s.begin():
        await production.upsert_material(s, "bench", "RESIN", "resin", "kg")
        await production.upsert_material(s, "bench", "LABEL", "label", "pcs")
        await production.upsert_product(s, "bench", "P", "part")
        await production.create_bom(s, "bench", "P", [
            production.BomLineIn("RESIN", 2 * U, 0.05, True), production.BomLineIn("LABEL", U)])
        await production.create_routing(s, "bench", "P", [
            production.RoutingOpIn(10, "mold", work_center="WC")])
        for i, gw in enumerate(gws):
            m = await production.create_machine(s, "bench", gw, "cnc-03", f"M{i}")
            await production.create_work_order(s, "bench", f"WO{i}", "P", 10**9)
            await production.release_work_order(s, "bench", f"WO{i}")
            op = (await s.execute(select(wo_operations.c.id).join(work_orders).where(
                work_orders.c.number == f"WO{i}"))).scalar_one()
            await dispatch.start(s, "bench", m.id, op, T0)
            machines.append(m.id)
            ops.append(op)
    return db, gws, machines, ops


async def _ingest(url: str, processing: bool) -> float:
    from cloud.ingest import ingest_batch
    from cloud.production import apply_counts

    db, gws, _, _ = await _setup(url)
    appliers = [apply_counts] if processing else []

    async def gateway(gw: str) -> None:
        for start in range(1, PER_GATEWAY + 1, BATCH):
            n = min(BATCH, PER_GATEWAY + 1 - start)
            await ingest_batch(db, gw, Batch(gw, _records(start, n)),  # type: ignore[arg-type]
                               received_ms=T0, appliers=appliers)

    t = time.perf_counter()
    await asyncio.gather(*(gateway(g) for g in gws))
    elapsed = time.perf_counter() - t
    await db.dispose()  # type: ignore[attr-defined]
    return GATEWAYS * PER_GATEWAY / elapsed


async def _reattribute(url: str) -> float:
    from cloud.ingest import ingest_batch
    from cloud.production import apply_counts, dispatch

    db, gws, machines, ops = await _setup(url)
    day = [Record(seq, T0 + seq * 1000, "cnc-03", "count",
                  {"tag": "part_count", "counts": "good", "delta": 1, "raw_before": seq - 1,
                   "raw_after": seq, "reset": False}) for seq in range(1, 86_401)]
    for i in range(0, len(day), 5000):
        await ingest_batch(db, gws[0], Batch(gws[0], day[i:i + 5000]),  # type: ignore[arg-type]
                           received_ms=T0, appliers=[apply_counts])
    async with db.sessions() as s, s.begin():  # type: ignore[attr-defined]
        d = await dispatch.start(s, "bench", machines[0], ops[1], T0 + 86_401_000)
    from cloud.core.models import dispatches
    async with db.sessions() as s:  # type: ignore[attr-defined]
        first = (await s.execute(select(dispatches.c.id).where(
            dispatches.c.machine_id == machines[0], dispatches.c.start_ts == T0))).scalar_one()
    t = time.perf_counter()
    async with db.sessions() as s, s.begin():  # type: ignore[attr-defined]
        # the other order really ran the whole day: every count moves, with its backflush
        await dispatch.edit(s, "bench", first, end_ts=T0 + 1)
        await dispatch.edit(s, "bench", d, start_ts=T0 + 1)
    elapsed = time.perf_counter() - t
    await db.dispose()  # type: ignore[attr-defined]
    return elapsed


def run(report: Report) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'a.db'}"
        full = asyncio.run(_ingest(url, True))
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'b.db'}"
        raw = asyncio.run(_ingest(url, False))
        report("core ingest+attribution+backflush, 20 gateways, SQLite", full, raw, "records/s")
        report("core ingest+attribution+backflush, SQLite (vs target)", full, 20_000,
               "records/s")
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'c.db'}"
        report("re-attribute one machine-day (86,400 counts), SQLite",
               asyncio.run(_reattribute(url)), None, "s")
    # PostgreSQL: a private server with its default durability (fsync on), as in production.
    from tests.fixtures.postgres import running_postgres

    with running_postgres(durable=True) as pg:
        full = asyncio.run(_ingest(pg.url(pg.create_database()), True))
        raw = asyncio.run(_ingest(pg.url(pg.create_database()), False))
        report("core ingest+attribution+backflush, 20 gateways, PostgreSQL", full, raw,
               "records/s")
