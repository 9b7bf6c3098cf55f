"""Attribution, progress, backflush and the ledger through real ingest, on SQLite and
PostgreSQL (Alembic-migrated). Every scenario ends with progress, statuses, ledger and
balances as the hand calculation in its docstring says, and ledger sum == balances.

Plant: machine M (gw-a/cnc-03), order WO1 for 10 pieces of P, one operation; BOM:
RESIN 2.0 kg per piece with 5 % scrap factor, consumed by scrap too -> 2.1 kg/piece;
LABEL 1 per piece, good only.
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select

from buffer.records import Batch, Record
from cloud import dispatch, production
from cloud.admin import create_gateway
from cloud.attribution import apply_counts
from cloud.db import Database
from cloud.ingest import ingest_batch
from cloud.inventory import ledger_mismatches, stock
from cloud.models import attributions, stock_balances, wo_operations, work_orders

pytestmark = pytest.mark.needs_service("postgresql")
T0 = 1_700_000_000_000
H = 3_600_000
U = 1_000_000


def cnt(seq: int, ts: int, delta: int, counts: str = "good", device: str = "cnc-03",
        reset: bool = False) -> Record:
    return Record(seq, ts, device, "count", {"tag": f"c_{counts}", "counts": counts,
                                             "delta": delta, "raw_before": 0,
                                             "raw_after": delta, "reset": reset})


async def ingest(db: Database, gw: str, recs: list[Record]) -> None:
    await ingest_batch(db, gw, Batch(gw, recs), received_ms=T0, appliers=[apply_counts])


@pytest.fixture
async def plant(cloud_db_url: str):
    async with Database(cloud_db_url) as db:
        for gw in ("gw-a", "gw-b"):
            await create_gateway(db, gw)
        async with db.sessions() as s, s.begin():
            await production.upsert_material(s, "t", "RESIN", "resin", "kg", lead_time_days=2)
            await production.upsert_material(s, "t", "LABEL", "label", "pcs")
            await production.upsert_product(s, "t", "P", "part")
            await production.create_bom(s, "t", "P", [
                production.BomLineIn("RESIN", 2 * U, 0.05, True),
                production.BomLineIn("LABEL", 1 * U)])
            m = await production.create_machine(s, "t", "gw-a", "cnc-03", "M")
            m2 = await production.create_machine(s, "t", "gw-b", "imm-07", "M2")
            await production.create_routing(s, "t", "P", [production.RoutingOpIn(10, "mold")])
            ops = {}
            for number in ("WO1", "WO2"):
                await production.create_work_order(s, "t", number, "P", 10)
                await production.release_work_order(s, "t", number)
                ops[number] = (await s.execute(select(wo_operations.c.id).join(work_orders).where(
                    work_orders.c.number == number))).scalar_one()
        db.machine, db.machine2, db.ops = m.id, m2.id, ops
        yield db
        async with db.sessions() as s:
            assert await ledger_mismatches(s) == []


async def state(db: Database, number: str) -> tuple[int, int, str, str]:
    async with db.sessions() as s:
        r = (await s.execute(select(wo_operations.c.good, wo_operations.c.scrap,
                                    wo_operations.c.status, work_orders.c.status)
                             .join(work_orders).where(work_orders.c.number == number))).one()
        return tuple(r)  # type: ignore[return-value]


async def balances(db: Database) -> dict[str, int]:
    async with db.sessions() as s:
        out = {}
        for code in ("RESIN", "LABEL"):
            out[code] = (await stock(s, code, now=T0 + 48 * H))["balance_u"]
        return out


async def test_late_batch_lands_on_the_order_that_ran_then(plant):
    """Dispatch WO1 on M [T0, T0+1h); records from then arrive 24 h later, after the
    dispatch ended and WO2 runs: 4 good + 1 scrap on WO1 -> resin -(4+1)*2.1, labels -4."""
    db = plant
    async with db.sessions() as s, s.begin():
        await dispatch.start(s, "planner", db.machine, db.ops["WO1"], T0, T0 + H)
        await dispatch.start(s, "planner", db.machine, db.ops["WO2"], T0 + 2 * H)
    await ingest(db, "gw-a", [cnt(1, T0 + 10, 4), cnt(2, T0 + 20, 1, "scrap"),
                              cnt(3, T0 + 2 * H + 5, 3)])
    assert await state(db, "WO1") == (4, 1, "in_progress", "in_progress")
    assert await state(db, "WO2") == (3, 0, "in_progress", "in_progress")
    assert await balances(db) == {"RESIN": -(5 * 2_100_000 + 3 * 2_100_000), "LABEL": -7 * U}


async def test_replayed_batch_changes_nothing(plant):
    db = plant
    async with db.sessions() as s, s.begin():
        await dispatch.start(s, "planner", db.machine, db.ops["WO1"], T0)
    batch = [cnt(1, T0 + 1, 2), cnt(2, T0 + 2, 3)]
    await ingest(db, "gw-a", batch)
    await ingest(db, "gw-a", batch)
    await ingest(db, "gw-a", [*batch, cnt(3, T0 + 3, 1)])
    assert await state(db, "WO1") == (6, 0, "in_progress", "in_progress")
    assert await balances(db) == {"RESIN": -6 * 2_100_000, "LABEL": -6 * U}


async def test_out_of_order_batches_from_two_gateways(plant):
    """M (gw-a) runs WO1, M2 (gw-b) runs WO2; gw-b's later batch arrives first."""
    db = plant
    async with db.sessions() as s, s.begin():
        await dispatch.start(s, "planner", db.machine, db.ops["WO1"], T0)
        await dispatch.start(s, "planner", db.machine2, db.ops["WO2"], T0)
    await ingest(db, "gw-b", [cnt(5, T0 + 50, 2, device="imm-07")])
    await ingest(db, "gw-a", [cnt(1, T0 + 60, 1)])
    await ingest(db, "gw-b", [cnt(1, T0 + 10, 3, device="imm-07")])
    assert await state(db, "WO1") == (1, 0, "in_progress", "in_progress")
    assert await state(db, "WO2") == (5, 0, "in_progress", "in_progress")
    assert await balances(db) == {"RESIN": -6 * 2_100_000, "LABEL": -6 * U}


async def test_dispatch_edited_after_the_fact_both_ways(plant):
    """WO1 [T0+1h, T0+3h), WO2 from T0+3h; counts at T0+30min (unassigned), T0+2h, T0+4h.
    Start of WO1 moved to T0: the 30-min count joins WO1. Then WO1's end moved to
    T0+5h: the 4-h count leaves WO2 for WO1 (WO2's start follows, else overlap)."""
    db = plant
    async with db.sessions() as s, s.begin():
        d1 = await dispatch.start(s, "planner", db.machine, db.ops["WO1"], T0 + H, T0 + 3 * H)
        d2 = await dispatch.start(s, "planner", db.machine, db.ops["WO2"], T0 + 3 * H)
    await ingest(db, "gw-a", [cnt(1, T0 + H // 2, 2), cnt(2, T0 + 2 * H, 3), cnt(3, T0 + 4 * H, 4)])
    assert (await state(db, "WO1"))[:2] == (3, 0)
    assert (await state(db, "WO2"))[:2] == (4, 0)
    async with db.sessions() as s, s.begin():
        await dispatch.edit(s, "planner", d1, start_ts=T0)
    assert (await state(db, "WO1"))[:2] == (5, 0)
    async with db.sessions() as s, s.begin():
        with pytest.raises(dispatch.DispatchConflict):
            await dispatch.edit(s, "planner", d1, end_ts=T0 + 5 * H)
    async with db.sessions() as s, s.begin():
        await dispatch.edit(s, "planner", d2, start_ts=T0 + 5 * H)
        await dispatch.edit(s, "planner", d1, end_ts=T0 + 5 * H)
    assert await state(db, "WO1") == (9, 0, "in_progress", "in_progress")
    assert (await state(db, "WO2"))[:2] == (0, 0)
    async with db.sessions() as s, s.begin():  # and back: WO1 ends at 3 h again
        await dispatch.edit(s, "planner", d1, end_ts=T0 + 3 * H)
        await dispatch.edit(s, "planner", d2, start_ts=T0 + 3 * H)
    assert (await state(db, "WO1"))[:2] == (5, 0)
    assert (await state(db, "WO2"))[:2] == (4, 0)
    assert await balances(db) == {"RESIN": -9 * 2_100_000, "LABEL": -9 * U}


async def test_counter_reset_and_over_production(plant):
    """A reset mid-order (delta = new raw value 3) counts; 12 > 10 completes the order
    and keeps counting (over-produced by 2), backflushing all 12."""
    db = plant
    async with db.sessions() as s, s.begin():
        await dispatch.start(s, "planner", db.machine, db.ops["WO1"], T0)
    await ingest(db, "gw-a", [cnt(1, T0 + 1, 5), cnt(2, T0 + 2, 3, reset=True)])
    assert await state(db, "WO1") == (8, 0, "in_progress", "in_progress")
    await ingest(db, "gw-a", [cnt(3, T0 + 3, 4)])
    assert await state(db, "WO1") == (12, 0, "completed", "completed")
    assert await balances(db) == {"RESIN": -12 * 2_100_000, "LABEL": -12 * U}


async def test_unassigned_production_then_assigned(plant):
    """Counts with no dispatch are kept (unassigned); assigning the range moves them,
    with backflush, onto WO1. A device without a machine is kept too."""
    db = plant
    await ingest(db, "gw-a", [cnt(1, T0 + 1, 2), cnt(2, T0 + 2, 1, "scrap"),
                              cnt(3, T0 + 3, 7, device="unknown-dev")])
    async with db.sessions() as s:
        un = {(u["device"]): u for u in await dispatch.unassigned(s)}
    assert un["cnc-03"]["good"] == 2 and un["cnc-03"]["scrap"] == 1
    assert un["unknown-dev"]["machine_id"] is None and un["unknown-dev"]["good"] == 7
    assert await balances(db) == {"RESIN": 0, "LABEL": 0}
    async with db.sessions() as s, s.begin():
        await dispatch.assign(s, "planner", db.machine, db.ops["WO1"], T0, T0 + 10)
    assert await state(db, "WO1") == (2, 1, "in_progress", "in_progress")
    assert await balances(db) == {"RESIN": -3 * 2_100_000, "LABEL": -2 * U}


async def test_concurrent_ingest_from_20_gateways_while_a_planner_edits(plant):
    """20 gateways (gw-a is machine M) each send 5 batches of 20 good counts of 1 at
    T0+i; meanwhile a planner flips WO1's end between T0+50 and open. Final state:
    WO1 open from T0 -> all of M's 100 pieces on WO1; other devices unassigned."""
    db = plant
    gws = ["gw-a"] + [f"gw-c{i}" for i in range(19)]
    for gw in gws[1:]:
        await create_gateway(db, gw)
    async with db.sessions() as s, s.begin():
        d1 = await dispatch.start(s, "planner", db.machine, db.ops["WO1"], T0)

    async def gateway(gw: str) -> None:
        for b in range(5):
            await ingest(db, gw, [cnt(b * 20 + i + 1, T0 + b * 20 + i, 1) for i in range(20)])

    async def planner() -> None:
        for _ in range(5):
            async with db.sessions() as s, s.begin():
                await dispatch.edit(s, "planner", d1, end_ts=T0 + 50)
            async with db.sessions() as s, s.begin():
                await dispatch.edit(s, "planner", d1, clear_end=True)

    await asyncio.gather(planner(), *(gateway(g) for g in gws))
    assert await state(db, "WO1") == (100, 0, "completed", "completed")
    async with db.sessions() as s:
        n = (await s.execute(select(attributions.c.seq).where(
            attributions.c.wo_operation_id.is_(None)))).all()
        assert len(n) == 19 * 100
        bal = dict((await s.execute(select(stock_balances.c.material_id,
                                           stock_balances.c.qty_u))).tuples().all())
    assert sorted(bal.values()) == [-100 * 2_100_000, -100 * U]
