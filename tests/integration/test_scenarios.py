"""Attribution, progress, backflush and the ledger through real ingest, on SQLite and
PostgreSQL (Alembic-migrated). Every scenario ends with progress, statuses, ledger and
balances as the hand calculation in its docstring says, and ledger sum == balances.

Plant: machine M (gw-a/cnc-03), order WO1 for 10 pieces of P, one operation; BOM:
RESIN 2.0 kg per piece with 5 % scrap factor, consumed by scrap too -> 2.1 kg/piece;
LABEL 1 per piece, good only.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from sqlalchemy import select, update

from buffer.records import Batch, Record
from cloud import production
from cloud.auth import create_gateway
from cloud.core import clock
from cloud.core.db import Database
from cloud.core.models import (
    AuditEntry,
    attributions,
    dispatches,
    gateways,
    materials,
    records,
    stock_balances,
    stock_moves,
    wo_operations,
    work_orders,
)
from cloud.ingest import ingest_batch
from cloud.inventory import balance_u, ledger_mismatches, stock, stock_count
from cloud.production import apply_counts, dispatch

pytestmark = pytest.mark.needs_service("postgresql")
T0 = 1_700_000_000_000
H = 3_600_000
U = 1_000_000


def cnt(seq: int, ts: int, delta: int, counts: str = "good", device: str = "cnc-03",
        reset: bool = False) -> Record:
    return Record(seq, ts, device, "count", {"tag": f"c_{counts}", "counts": counts,
                                             "delta": delta, "raw_before": 0,
                                             "raw_after": delta, "reset": reset})


async def ingest(db: Database, gw: str, recs: list[Record], received_ms: int = T0) -> None:
    await ingest_batch(db, gw, Batch(gw, recs), received_ms=received_ms,
                       appliers=[apply_counts])


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
            await production.create_routing(s, "t", "P", [
                production.RoutingOpIn(10, "mold", work_center="WC")])
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


def at(ts: int) -> datetime:
    return datetime.fromtimestamp(ts / 1000, UTC)


async def times(db: Database, number: str) -> tuple[datetime | None, ...]:
    """(operation started_at, completed_at, order started_at, completed_at)"""
    async with db.sessions() as s:
        r = (await s.execute(select(wo_operations.c.started_at, wo_operations.c.completed_at,
                                    work_orders.c.started_at, work_orders.c.completed_at)
                             .join(work_orders).where(work_orders.c.number == number))).one()
        return tuple(r)


async def ledger(db: Database) -> set[tuple[int, str, str | None, int]]:
    """Backflush lines as (seq, material, work order, qty_u)."""
    async with db.sessions() as s:
        rows = (await s.execute(
            select(stock_moves.c.seq, materials.c.code, work_orders.c.number, stock_moves.c.qty_u)
            .select_from(stock_moves.join(materials).outerjoin(
                work_orders, work_orders.c.id == stock_moves.c.work_order_id))
            .where(stock_moves.c.kind == "backflush"))).all()
    return {tuple(r) for r in rows}  # type: ignore[misc]


async def test_counts_before_the_machine_is_registered_join_a_back_dated_dispatch(plant):
    """A device sends 3 + 2 pieces at T0+1h/T0+2h before any machine exists for it (kept
    under gateway and device). Registering the machine makes them its unassigned
    production at once; a dispatch back-dated to T0 gives WO1 all 5, with backflush."""
    db = plant
    await ingest(db, "gw-a", [cnt(1, T0 + H, 3, device="lathe-9"),
                              cnt(2, T0 + 2 * H, 2, device="lathe-9")])
    async with db.sessions() as s, s.begin():
        m = await production.create_machine(s, "t", "gw-a", "lathe-9", "Lathe 9")
    async with db.sessions() as s:
        un = await dispatch.unassigned(s, m.id)
    assert [(u["machine_id"], u["good"], u["records"]) for u in un] == [(m.id, 5, 2)]
    async with db.sessions() as s, s.begin():
        await dispatch.start(s, "planner", m.id, db.ops["WO1"], T0)
    assert await state(db, "WO1") == (5, 0, "in_progress", "in_progress")
    assert await balances(db) == {"RESIN": -5 * 2_100_000, "LABEL": -5 * U}
    async with db.sessions() as s:
        assert await dispatch.unassigned(s) == []


async def test_a_day_late_batch_moves_status_times_as_if_on_time(plant):
    """WO1 (10 pieces) runs from T0; its counts arrive 24 h late, in two batches, the
    later counts first: 6 at T0+20min (received T0+24h), then 4 at T0+10min and 2 at
    T0+30min (received T0+25h). By the records: started T0+10min; in ts order 4, 6 -> 10
    at T0+20min: completed then (not at arrival), over-produced by 2."""
    db = plant
    async with db.sessions() as s, s.begin():
        await dispatch.start(s, "planner", db.machine, db.ops["WO1"], T0)
    m10, m20, m30 = T0 + 10 * 60_000, T0 + 20 * 60_000, T0 + 30 * 60_000
    await ingest(db, "gw-a", [cnt(2, m20, 6)], received_ms=T0 + 24 * H)
    assert await state(db, "WO1") == (6, 0, "in_progress", "in_progress")
    assert await times(db, "WO1") == (at(m20), None, at(m20), None)
    await ingest(db, "gw-a", [cnt(1, m10, 4), cnt(3, m30, 2)], received_ms=T0 + 25 * H)
    assert await state(db, "WO1") == (12, 0, "completed", "completed")
    assert await times(db, "WO1") == (at(m10), at(m20), at(m10), at(m20))
    assert await balances(db) == {"RESIN": -12 * 2_100_000, "LABEL": -12 * U}


async def test_backflush_moves_with_a_reattributed_count_between_different_boms(plant):
    """WO1 (P: RESIN 2.1, LABEL 1 per piece) runs [T0, T0+2h), WOQ (Q: STEEL 3 per piece)
    from T0+2h. 2 pieces at T0+1h, 4 at T0+3h. Then WO1 really ran until T0+4h: the
    4 pieces and their backflush move to WO1 (RESIN and LABEL lines, STEEL line gone);
    and back."""
    db = plant
    async with db.sessions() as s, s.begin():
        await production.upsert_material(s, "t", "STEEL", "steel", "kg")
        await production.upsert_product(s, "t", "Q", "other part")
        await production.create_bom(s, "t", "Q", [production.BomLineIn("STEEL", 3 * U)])
        await production.create_routing(s, "t", "Q", [
            production.RoutingOpIn(10, "stamp", work_center="WC")])
        await production.create_work_order(s, "t", "WOQ", "Q", 100)
        await production.release_work_order(s, "t", "WOQ")
        opq = (await s.execute(select(wo_operations.c.id).join(work_orders).where(
            work_orders.c.number == "WOQ"))).scalar_one()
        d1 = await dispatch.start(s, "planner", db.machine, db.ops["WO1"], T0, T0 + 2 * H)
        dq = await dispatch.start(s, "planner", db.machine, opq, T0 + 2 * H)
    await ingest(db, "gw-a", [cnt(1, T0 + H, 2), cnt(2, T0 + 3 * H, 4)])
    before = {(1, "RESIN", "WO1", -2 * 2_100_000), (1, "LABEL", "WO1", -2 * U),
              (2, "STEEL", "WOQ", -4 * 3 * U)}
    assert await ledger(db) == before
    async with db.sessions() as s, s.begin():
        await dispatch.edit(s, "planner", dq, start_ts=T0 + 4 * H)
        await dispatch.edit(s, "planner", d1, end_ts=T0 + 4 * H)
    assert await ledger(db) == {(1, "RESIN", "WO1", -2 * 2_100_000), (1, "LABEL", "WO1", -2 * U),
                                (2, "RESIN", "WO1", -4 * 2_100_000), (2, "LABEL", "WO1", -4 * U)}
    assert (await state(db, "WO1"))[0] == 6 and (await state(db, "WOQ"))[0] == 0
    async with db.sessions() as s:
        assert (await stock(s, "STEEL", now=T0 + 48 * H))["balance_u"] == 0
    async with db.sessions() as s, s.begin():
        await dispatch.edit(s, "planner", d1, end_ts=T0 + 2 * H)
        await dispatch.edit(s, "planner", dq, start_ts=T0 + 2 * H)
    assert await ledger(db) == before
    assert await balances(db) == {"RESIN": -2 * 2_100_000, "LABEL": -2 * U}


async def test_a_batch_whose_apply_failed_is_rolled_back_and_the_retry_backflushes_once(plant):
    """The real applier runs, then the next applier fails (a crash between storing and
    applying): nothing of the batch stays (records, attributions, progress, ledger,
    balances, the gateway's last seq). The gateway's retry applies it once; a replay
    changes nothing."""
    db = plant
    async with db.sessions() as s, s.begin():
        await dispatch.start(s, "planner", db.machine, db.ops["WO1"], T0)

    async def crash(*_args: object) -> None:
        raise RuntimeError("power cut")

    batch = Batch("gw-a", [cnt(1, T0 + 1, 3), cnt(2, T0 + 2, 1, "scrap")])
    with pytest.raises(RuntimeError, match="power cut"):
        await ingest_batch(db, "gw-a", batch, received_ms=T0, appliers=[apply_counts, crash])
    async with db.sessions() as s:
        for table in (records, attributions, stock_moves):
            assert (await s.execute(select(table))).all() == []
        assert (await s.execute(select(gateways.c.last_seq).where(
            gateways.c.id == "gw-a"))).scalar_one() == 0
    assert await state(db, "WO1") == (0, 0, "pending", "released")
    assert await balances(db) == {"RESIN": 0, "LABEL": 0}
    for _ in range(2):  # the retry, then a replay
        await ingest_batch(db, "gw-a", batch, received_ms=T0, appliers=[apply_counts])
        assert await state(db, "WO1") == (3, 1, "in_progress", "in_progress")
        assert await balances(db) == {"RESIN": -4 * 2_100_000, "LABEL": -3 * U}
        assert len(await ledger(db)) == 3  # RESIN for both records, LABEL for the good one


async def dispatch_row(db: Database, dispatch_id: int) -> tuple[int, int | None]:
    async with db.sessions() as s:
        r = (await s.execute(select(dispatches.c.start_ts, dispatches.c.end_ts)
                             .where(dispatches.c.id == dispatch_id))).one()
        return r.start_ts, r.end_ts


async def test_cancel_ends_the_dispatch_and_later_counts_are_unassigned(plant):
    """WO1 dispatched on M from 2 h ago, nothing counted; the planner cancels it. The
    dispatch ends at the cancel; a late count from 1 h ago still lands on WO1 by its
    time (audited, it ran then), a count 1 min after the cancel is unassigned and
    backflushes nothing. The planner then moves the late count off the cancelled order
    by editing its dispatch."""
    db = plant
    now = clock.now_ms()
    async with db.sessions() as s, s.begin():
        d = await dispatch.start(s, "planner", db.machine, db.ops["WO1"], now - 2 * H)
    async with db.sessions() as s, s.begin():
        order = await production.cancel_work_order(s, "pat", "WO1")
        cancelled = int(order.cancelled_at.timestamp() * 1000)
    assert await dispatch_row(db, d) == (now - 2 * H, cancelled)
    await ingest(db, "gw-a", [cnt(1, now - H, 2), cnt(2, cancelled + 60_000, 5)])
    assert await state(db, "WO1") == (2, 0, "pending", "cancelled")
    async with db.sessions() as s:
        un = await dispatch.unassigned(s, db.machine)
        audit = (await s.execute(select(AuditEntry.actor, AuditEntry.action, AuditEntry.detail)
                                 .where(AuditEntry.entity_id == str(d),
                                        AuditEntry.action == "dispatch.stop"))).one()
    assert [(u["good"], u["records"]) for u in un] == [(5, 1)]
    assert audit.actor == "pat" and audit.detail["reason"] == "work_order.cancel"
    assert await balances(db) == {"RESIN": -2 * 2_100_000, "LABEL": -2 * U}
    async with db.sessions() as s, s.begin():
        await dispatch.edit(s, "pat", d, end_ts=now - 90 * 60_000)
    assert await state(db, "WO1") == (0, 0, "pending", "cancelled")
    assert await balances(db) == {"RESIN": 0, "LABEL": 0}


async def test_complete_and_close_end_running_dispatches(plant):
    """WO1 (10) runs on M from 2 h ago: 3 pieces 1 h ago, 4 pieces stamped 5 min in the
    future (a gateway clock ahead). The planner completes it short: the dispatch ends
    then, the future count leaves WO1 in the same transaction (unassigned, backflush
    gone). WO2 (10) on M2 is completed by its counts (12: over-production keeps
    counting) and its dispatch runs on until the planner closes it; a count after the
    close is unassigned and the closed order keeps its 12."""
    db = plant
    now = clock.now_ms()
    async with db.sessions() as s, s.begin():
        d1 = await dispatch.start(s, "planner", db.machine, db.ops["WO1"], now - 2 * H)
        d2 = await dispatch.start(s, "planner", db.machine2, db.ops["WO2"], now - 2 * H)
    await ingest(db, "gw-a", [cnt(1, now - H, 3), cnt(2, now + 5 * 60_000, 4)])
    await ingest(db, "gw-b", [cnt(1, now - H, 10, device="imm-07"),
                              cnt(2, now - H + 1, 2, device="imm-07")])
    assert await state(db, "WO1") == (7, 0, "in_progress", "in_progress")
    assert await state(db, "WO2") == (12, 0, "completed", "completed")
    assert (await dispatch_row(db, d2))[1] is None
    async with db.sessions() as s, s.begin():
        order = await production.complete_work_order(s, "pat", "WO1")
        completed = int(order.completed_at.timestamp() * 1000)
    assert await dispatch_row(db, d1) == (now - 2 * H, completed)
    assert await state(db, "WO1") == (3, 0, "in_progress", "completed")
    async with db.sessions() as s:
        assert [(u["good"], u["records"]) for u in await dispatch.unassigned(s)] == [(4, 1)]
    async with db.sessions() as s, s.begin():
        order = await production.close_work_order(s, "pat", "WO2")
        closed = int(order.closed_at.timestamp() * 1000)
    assert await dispatch_row(db, d2) == (now - 2 * H, closed)
    await ingest(db, "gw-b", [cnt(3, closed + 1000, 6, device="imm-07")])
    assert await state(db, "WO2") == (12, 0, "completed", "closed")
    async with db.sessions() as s:
        un = {u["machine_id"]: u["good"] for u in await dispatch.unassigned(s)}
    assert un == {db.machine: 4, db.machine2: 6}
    assert await balances(db) == {"RESIN": -15 * 2_100_000, "LABEL": -15 * U}


async def test_stopping_a_closed_orders_running_dispatch_keeps_its_quantities(plant):
    """Rule: a closed order's running dispatch (left running before closing ended them)
    can be stopped only at or after its last attributed count, so the closed order's
    numbers never change; an earlier stop is refused naming the earliest end."""
    db = plant
    async with db.sessions() as s, s.begin():
        d = await dispatch.start(s, "planner", db.machine, db.ops["WO1"], T0)
    await ingest(db, "gw-a", [cnt(1, T0 + H, 4), cnt(2, T0 + 2 * H, 1)])
    async with db.sessions() as s, s.begin():
        await production.complete_work_order(s, "pat", "WO1")
        await production.close_work_order(s, "pat", "WO1")
        await s.execute(update(dispatches).where(dispatches.c.id == d).values(end_ts=None))
    async with db.sessions() as s, s.begin():
        with pytest.raises(dispatch.DispatchConflict, match=f"stop it at {T0 + 2 * H + 1}"):
            await dispatch.stop(s, "pat", d, T0 + 90 * 60_000)
    async with db.sessions() as s, s.begin():
        with pytest.raises(dispatch.DispatchConflict, match="can no longer be edited"):
            await dispatch.edit(s, "pat", d, start_ts=T0 + H)
    assert await state(db, "WO1") == (5, 0, "in_progress", "closed")
    async with db.sessions() as s, s.begin():
        await dispatch.stop(s, "pat", d, T0 + 2 * H + 1)
    assert await dispatch_row(db, d) == (T0, T0 + 2 * H + 1)
    assert await state(db, "WO1") == (5, 0, "in_progress", "closed")
    assert await balances(db) == {"RESIN": -5 * 2_100_000, "LABEL": -5 * U}


async def test_a_stock_count_holds_the_balance_until_it_commits(plant):
    """A stock count reads RESIN's balance with the row locked; a backflush arriving
    meanwhile (ingest, 2 pieces = -4.2 kg) waits for the count's commit instead of
    slipping between its read and its booking. After the count the balance is exactly
    the counted 100 kg, then the backflush applies on top: 95.8 kg."""
    db = plant
    async with db.sessions() as s, s.begin():
        await dispatch.start(s, "planner", db.machine, db.ops["WO1"], T0)
    async with db.sessions() as s:
        mid = (await s.execute(select(materials.c.id).where(materials.c.code == "RESIN"))
               ).scalar_one()
    async with db.sessions() as s, s.begin():
        assert await balance_u(s, mid, lock=True) == 0
        backflush = asyncio.create_task(ingest(db, "gw-a", [cnt(1, T0 + 1, 2)]))
        await asyncio.sleep(0.5)  # time for it to reach the lock (it must still wait)
        assert not backflush.done()
        res = await stock_count(s, "pat", "RESIN", 100 * U)
        assert res["balance_u"] == 100 * U and res["qty_u"] == 100 * U
    await backflush
    assert (await balances(db))["RESIN"] == 100 * U - 2 * 2_100_000


async def test_completion_time_follows_late_data_and_dispatch_edits(plant):
    """WOL (1000 pieces) runs on M in two dispatches, [11:00, 11:30) and from 11:30.
    On time: 500 at 11:00 and 500 at 11:45 -> completed 11:45. A late batch holds 500
    at 11:10: in ts order the 1000th piece is at 11:10 -> completed 11:10 (over-produced
    1500/1000). The first dispatch is edited to end at 11:08: the 11:10 count leaves
    (and joins WO2's dispatch [11:08, 11:30)) -> completed 11:45 again, never WO2's
    count. Its start moved to 11:01: the 11:00 count leaves too -> 500, reopened,
    started 11:45 (the first count it still has)."""
    db = plant
    day = int(datetime(2026, 11, 2, 11, tzinfo=UTC).timestamp() * 1000)
    mn = 60_000
    async with db.sessions() as s, s.begin():
        await production.create_work_order(s, "t", "WOL", "P", 1000)
        await production.release_work_order(s, "t", "WOL")
        op = (await s.execute(select(wo_operations.c.id).join(work_orders).where(
            work_orders.c.number == "WOL"))).scalar_one()
        d_a = await dispatch.start(s, "planner", db.machine, op, day, day + 30 * mn)
        await dispatch.start(s, "planner", db.machine, op, day + 30 * mn)
    await ingest(db, "gw-a", [cnt(1, day, 500), cnt(3, day + 45 * mn, 500)])
    assert await state(db, "WOL") == (1000, 0, "completed", "completed")
    assert await times(db, "WOL") == (at(day), at(day + 45 * mn), at(day),
                                      at(day + 45 * mn))
    await ingest(db, "gw-a", [cnt(2, day + 10 * mn, 500)], received_ms=day + 2 * H)
    assert await state(db, "WOL") == (1500, 0, "completed", "completed")
    assert await times(db, "WOL") == (at(day), at(day + 10 * mn), at(day),
                                      at(day + 10 * mn))
    async with db.sessions() as s, s.begin():
        await dispatch.edit(s, "planner", d_a, end_ts=day + 8 * mn)
        await dispatch.start(s, "planner", db.machine, db.ops["WO2"], day + 8 * mn,
                             day + 30 * mn)
    assert await state(db, "WOL") == (1000, 0, "completed", "completed")
    assert (await state(db, "WO2"))[0] == 500
    assert await times(db, "WOL") == (at(day), at(day + 45 * mn), at(day),
                                      at(day + 45 * mn))
    async with db.sessions() as s, s.begin():
        await dispatch.edit(s, "planner", d_a, start_ts=day + mn)
    assert await state(db, "WOL") == (500, 0, "in_progress", "in_progress")
    assert await times(db, "WOL") == (at(day + 45 * mn), None, at(day + 45 * mn), None)
