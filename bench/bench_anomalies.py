"""Anomaly linking on ingest: records/s of ingest with full processing plus the anomaly
engine (cloud/anomalies/ ``apply_anomalies``), beside the same ingest without it
(attribution, backflush and the machine timeline in both), into SQLite, in-process
(ingest_batch, no HTTP), 5 gateways x 10 machines = 50 machines, each with an order
dispatched, gateways ingesting concurrently in batches of 1000.

Two mixes per gateway (seeded, so every run is the same), each beside its own baseline:
- typical: 70 % samples, 27.5 % good counts, 1.5 % scrap counts, 0.8 % state changes
  (idle/running), 0.15 % alarms (raised and cleared), 0.05 % link changes;
- heavy: 70 % samples, 24 % good, 2 % scrap, 3 % state changes, 0.8 % alarms (about 4
  anomalies raised per batch of 1000, each linked to its order), 0.2 % link changes:
  far more alarms than a healthy plant makes, an upper bound of the engine's cost.
Also: the applier alone on a batch of 1000 samples (it should cost about nothing).
"""

from __future__ import annotations

import asyncio
import os
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from buffer.records import Batch, Record

GATEWAYS = 5
DEVICES = 10
PER_GATEWAY = int(os.environ.get("BENCH_ANOMALY_RECORDS", "12000"))
BATCH = 1000
T0 = 1_700_000_000_000
U = 1_000_000
Report = Callable[[str, float, float | None, str], None]
# cumulative shares: sample, good, scrap, state, alarm (the rest: link changes)
MIXES = {"typical": (0.70, 0.975, 0.99, 0.998, 0.9995),
         "heavy": (0.70, 0.94, 0.96, 0.99, 0.998)}


def _records(gw_index: int, mix: str) -> list[Record]:
    rng = random.Random(gw_index)
    p_sample, p_good, p_scrap, p_state, p_alarm = MIXES[mix]
    devices = [f"dev-{d}" for d in range(DEVICES)]
    good = dict.fromkeys(devices, 0)
    scrap = dict.fromkeys(devices, 0)
    running = dict.fromkeys(devices, True)
    alarm_on = dict.fromkeys(devices, False)
    online = dict.fromkeys(devices, True)
    out = []
    for seq in range(1, PER_GATEWAY + 1):
        ts, dev, x = T0 + seq * 100, rng.choice(devices), rng.random()
        if x < p_sample:
            out.append(Record(seq, ts, dev, "sample", {"values": {"spindle_temp": 41.5}}))
        elif x < p_good:
            good[dev] += 1
            out.append(Record(seq, ts, dev, "count", {
                "tag": "good", "counts": "good", "delta": 1, "raw_before": good[dev] - 1,
                "raw_after": good[dev], "reset": False}))
        elif x < p_scrap:
            scrap[dev] += 1
            out.append(Record(seq, ts, dev, "count", {
                "tag": "scrap", "counts": "scrap", "delta": 1, "raw_before": scrap[dev] - 1,
                "raw_after": scrap[dev], "reset": False}))
        elif x < p_state:
            running[dev] = not running[dev]
            out.append(Record(seq, ts, dev, "state", {
                "state": "running" if running[dev] else "idle", "prev": None, "code": None}))
        elif x < p_alarm:
            alarm_on[dev] = not alarm_on[dev]
            code = 1000 + rng.randrange(5) if alarm_on[dev] else 0
            out.append(Record(seq, ts, dev, "alarm", {"code": code, "text": "overload",
                                                      "active": alarm_on[dev]}))
        else:
            online[dev] = not online[dev]
            out.append(Record(seq, ts, dev, "link", {"online": online[dev],
                                                     "error": None if online[dev] else "t/o"}))
    # a clear names the code it clears: give each clear the code of the raise before it
    last: dict[str, int] = {}
    fixed = []
    for r in out:
        if r.kind == "alarm":
            if r.body["active"]:
                last[r.device] = int(r.body["code"])
            else:
                r = Record(r.seq, r.ts, r.device, "alarm", {**r.body,
                                                             "code": last.get(r.device, 0)})
        fixed.append(r)
    return fixed


async def _setup(url: str) -> Any:
    from cloud import production
    from cloud.auth import create_gateway
    from cloud.core.db import Database
    from cloud.core.migrate import upgrade
    from cloud.core.models import wo_operations, work_orders
    from cloud.production import dispatch

    await upgrade(url)
    db = Database(url)
    for g in range(GATEWAYS):
        await create_gateway(db, f"gw-{g}")
    async with db.sessions() as s, s.begin():
        await production.upsert_material(s, "bench", "RESIN", "resin", "kg")
        await production.upsert_product(s, "bench", "P", "part")
        await production.create_bom(s, "bench", "P", [production.BomLineIn("RESIN", 2 * U)])
        await production.create_routing(s, "bench", "P", [production.RoutingOpIn(10, "mold")])
        for g in range(GATEWAYS):
            for d in range(DEVICES):
                m = await production.create_machine(s, "bench", f"gw-{g}", f"dev-{d}",
                                                    f"M{g}-{d}")
                number = f"WO{g}-{d}"
                await production.create_work_order(s, "bench", number, "P", 10**9,
                                                   customer=f"C{d}")
                await production.release_work_order(s, "bench", number)
                op = (await s.execute(select(wo_operations.c.id).join(work_orders).where(
                    work_orders.c.number == number))).scalar_one()
                await dispatch.start(s, "bench", m.id, op, T0)
    return db


async def _ingest(url: str, with_anomalies: bool, mix: str) -> tuple[float, int]:
    from cloud.anomalies import apply_anomalies
    from cloud.core.models import anomalies
    from cloud.ingest import ingest_batch
    from cloud.oee import apply_events
    from cloud.production import apply_counts

    db = await _setup(url)
    appliers = [apply_counts, apply_events] + ([apply_anomalies] if with_anomalies else [])
    streams = {f"gw-{g}": _records(g, mix) for g in range(GATEWAYS)}

    async def gateway(gw: str) -> None:
        recs = streams[gw]
        for i in range(0, len(recs), BATCH):
            await ingest_batch(db, gw, Batch(gw, recs[i:i + BATCH]), received_ms=T0,
                               appliers=appliers)

    t = time.perf_counter()
    await asyncio.gather(*(gateway(g) for g in streams))
    elapsed = time.perf_counter() - t
    async with db.sessions() as s:
        raised = int((await s.execute(select(func.count()).select_from(anomalies))).scalar_one())
    await db.dispose()
    return GATEWAYS * PER_GATEWAY / elapsed, raised


async def _samples_only(url: str) -> float:
    """Seconds per call of the applier on a batch of 1000 samples (no query at all)."""
    from cloud.anomalies import apply_anomalies
    from cloud.core.db import Database

    db = Database(url)
    batch = [Record(s, T0 + s, "dev-0", "sample", {"values": {"t": 1.0}})
             for s in range(1, 1001)]
    async with db.sessions() as s:
        t = time.perf_counter()
        for _ in range(100):
            await apply_anomalies(s, "gw-0", batch)
        elapsed = (time.perf_counter() - t) / 100
    await db.dispose()
    return elapsed


def run(report: Report) -> None:
    with tempfile.TemporaryDirectory(prefix="plantsync-bench-anomalies-") as tmp:
        total = GATEWAYS * PER_GATEWAY
        for mix in MIXES:
            with_url = f"sqlite+aiosqlite:///{Path(tmp) / f'{mix}-a.db'}"
            full, raised = asyncio.run(_ingest(with_url, True, mix))
            base, _ = asyncio.run(_ingest(f"sqlite+aiosqlite:///{Path(tmp) / f'{mix}-b.db'}",
                                          False, mix))
            report(f"ingest + anomaly engine, 50 machines, {mix} mix, SQLite ({raised} "
                   f"anomalies in {total} records)", full, base, "records/s")
        report("anomaly applier on a batch of 1000 samples", asyncio.run(_samples_only(
            with_url)) * 1e6, None, "us")


if __name__ == "__main__":
    def _print(name: str, value: float, baseline: float | None, unit: str) -> None:
        extra = "" if not baseline else f" (baseline {baseline:,.0f}, ratio {value / baseline:.2f})"
        print(f"{name}: {value:,.1f} {unit}{extra}")

    run(_print)
