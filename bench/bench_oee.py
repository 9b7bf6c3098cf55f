"""OEE: the 30-day report for 50 machines (group_by machine) and the per-day trend, on
SQLite, computed at query time from the timeline, the count attributions and the
dispatches (cloud/oee/). Seeded directly into the tables (sqlite3 executemany, not HTTP):
per machine a shift calendar of two 8-hour shifts with breaks (Mon-Sat), three orders of
ten days each with different cycle times and cavities, running stretches of 10-90 min
with a count record per minute while running (1-4 pieces, some scrap), stops of 30 s to
40 min (idle, alarm, setup) and now and then an hour offline: about 1.7 million count
records and 110,000 state/link events in all.

Baseline: reading the window's count rows into Python (what an OEE computed per record
instead of summed in SQL would cost at least, before doing anything with them).
``BENCH_OEE_MACHINES`` / ``BENCH_OEE_DAYS`` shrink it.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

MACHINES = int(os.environ.get("BENCH_OEE_MACHINES", "50"))
DAYS = int(os.environ.get("BENCH_OEE_DAYS", "30"))
TZ = ZoneInfo("Asia/Shanghai")
START = int(datetime(2025, 3, 1, tzinfo=TZ).timestamp() * 1000)
END = START + DAYS * 86_400_000
GATEWAY = "gw-bench"
Report = Callable[[str, float, float | None, str], None]
CALENDAR = {"shifts": [
    {"name": "A", "start": "06:00", "end": "14:00", "days": [1, 2, 3, 4, 5, 6],
     "breaks": [["10:00", "10:30"]]},
    {"name": "B", "start": "14:00", "end": "22:00", "days": [1, 2, 3, 4, 5, 6],
     "breaks": [["18:00", "18:30"]]}], "non_working_dates": []}


def _timeline(rng: random.Random, machine: int, device: str, ops: list[tuple[int, int, int]],
              seq: list[int]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """(machine_events rows, attributions rows) of one machine over the window."""
    events: list[tuple[Any, ...]] = []
    counts: list[tuple[Any, ...]] = []
    t = START
    per_order = (END - START) // len(ops)

    def next_seq() -> int:
        seq[0] += 1
        return seq[0]

    events.append((GATEWAY, next_seq(), device, t, "link", None, None, True, None))
    while t < END:
        run_end = min(t + rng.randint(10, 90) * 60_000, END)
        events.append((GATEWAY, next_seq(), device, t, "state", "running", 0, None, None))
        c = t + 60_000
        while c < run_end:
            dispatch_id, op_id, cavities = ops[min((c - START) // per_order, len(ops) - 1)]
            scrap = 1 if rng.random() < 0.02 else 0
            counts.append((GATEWAY, next_seq(), device, machine, c, "good", cavities,
                           cavities - scrap, scrap, dispatch_id, op_id))
            c += 60_000
        t = run_end
        if t >= END:
            break
        roll = rng.random()
        if roll < 0.02:       # an hour offline
            events.append((GATEWAY, next_seq(), device, t, "link", None, None, False,
                           "timeout"))
            t += 3_600_000
            events.append((GATEWAY, next_seq(), device, t, "link", None, None, True, None))
            continue
        if roll < 0.5:
            state, length = "idle", rng.randint(30, 110) * 1000          # micro-stop
        elif roll < 0.8:
            state, length = "idle", rng.randint(3, 20) * 60_000
        elif roll < 0.93:
            state, length = "alarm", rng.randint(5, 40) * 60_000
        else:
            state, length = "setup", rng.randint(15, 40) * 60_000
        events.append((GATEWAY, next_seq(), device, t, "state", state,
                       1001 if state == "alarm" else 0, None, None))
        t += length
    return events, counts


async def _migrate_and_master(url: str) -> None:
    from cloud.auth import create_gateway
    from cloud.core.db import Database
    from cloud.core.migrate import upgrade

    await upgrade(url)
    async with Database(url) as db:
        await create_gateway(db, GATEWAY)


def _seed(path: Path) -> int:
    """Master data, dispatches and the big tables; returns the number of count rows."""
    import json

    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=OFF")
    cur = con.cursor()
    cur.execute("INSERT INTO products (code, name, unit) VALUES ('P', 'part', 'pcs')")
    product = cur.lastrowid
    cur.execute("INSERT INTO shift_calendars (name, timezone, definition, created, updated) "
                "VALUES ('default', 'Asia/Shanghai', ?, ?, ?)", (json.dumps(CALENDAR), now, now))
    rng = random.Random(7)
    seq = [0]
    total = 0
    per_order = (END - START) // 3
    for m in range(MACHINES):
        device = f"m{m:02d}"
        cur.execute("INSERT INTO machines (gateway_id, device, name) VALUES (?, ?, ?)",
                    (GATEWAY, device, f"Machine {m}"))
        machine = cur.lastrowid
        ops = []
        for k in range(3):
            cur.execute(
                "INSERT INTO work_orders (number, product_id, quantity, status, completion_mode,"
                " priority, created, updated) VALUES (?, ?, ?, 'in_progress', 'auto', 0, ?, ?)",
                (f"WO-{m}-{k}", product, 10**7, now, now))
            wo = cur.lastrowid
            cavities = 1 + (m + k) % 4
            cur.execute(
                "INSERT INTO wo_operations (work_order_id, step, name, machine_id, "
                "ideal_cycle_ms, cavities, status, good, scrap) "
                "VALUES (?, 10, 'mold', ?, ?, ?, 'in_progress', 0, 0)",
                (wo, machine, 45_000 + 5_000 * k, cavities))
            op = cur.lastrowid
            cur.execute(
                "INSERT INTO dispatches (machine_id, wo_operation_id, start_ts, end_ts, created,"
                " created_by) VALUES (?, ?, ?, ?, ?, 'bench')",
                (machine, op, START + k * per_order,
                 None if k == 2 else START + (k + 1) * per_order, now))
            ops.append((cur.lastrowid, op, cavities))
        events, counts = _timeline(rng, machine, device, ops, seq)
        cur.executemany("INSERT INTO machine_events (gateway_id, seq, device, ts, kind, state, "
                        "code, online, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", events)
        cur.executemany("INSERT INTO attributions (gateway_id, seq, device, machine_id, ts, "
                        "counts, delta, good, scrap, dispatch_id, wo_operation_id) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", counts)
        total += len(counts)
    con.commit()
    con.execute("ANALYZE")
    con.close()
    return total


async def _time_reports(url: str) -> tuple[float, float, float, int]:
    from sqlalchemy import select

    from cloud.core.db import Database
    from cloud.core.models import attributions
    from cloud.oee import oee_report, oee_trend

    async with Database(url) as db:
        best_report = best_trend = best_rows = float("inf")
        n = 0
        for _ in range(3):
            async with db.sessions() as s:
                t = time.perf_counter()
                rows = await oee_report(s, start_ms=START, end_ms=END, now_ms=END)
                best_report = min(best_report, time.perf_counter() - t)
                n = len(rows)
                t = time.perf_counter()
                await oee_trend(s, start_ms=START, end_ms=END, now_ms=END)
                best_trend = min(best_trend, time.perf_counter() - t)
                t = time.perf_counter()
                a = attributions.c
                for m in range(1, MACHINES + 1):
                    (await s.execute(select(a.ts, a.wo_operation_id, a.good, a.scrap).where(
                        a.machine_id == m, a.ts >= START, a.ts < END))).all()
                best_rows = min(best_rows, time.perf_counter() - t)
    assert n == MACHINES, n
    return best_report, best_trend, best_rows, n


def run(report: Report) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "oee.db"
        url = f"sqlite+aiosqlite:///{path}"
        t = time.perf_counter()
        asyncio.run(_migrate_and_master(url))
        counts = _seed(path)
        seeded = time.perf_counter() - t
        print(f"  seeded {MACHINES} machines x {DAYS} days: {counts} count records in "
              f"{seeded:.1f} s", flush=True)
        rep, trend, rows, _ = asyncio.run(_time_reports(url))
        report(f"OEE report, {MACHINES} machines x {DAYS} days by machine, SQLite "
               f"(baseline: reading the count rows)", rep, rows, "s")
        report(f"OEE trend per day, {MACHINES} machines x {DAYS} days, SQLite", trend, None,
               "s")
