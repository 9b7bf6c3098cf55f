"""Outbox benchmarks: durable append (group commit vs a commit per record, both
synchronous=FULL), start-up with a 1,000,000-record backlog, peak RSS while streaming that
backlog through peek/ack.

``run(report)`` calls ``report(name, value, baseline, unit)`` once per figure; ``baseline``
is the target from issue 3 (append >= 50,000 records/s, start-up < 2 s, RSS < 100 MB), and
for the commit-per-record line the group-commit figure, so the ratio is printed beside it.
Standalone: ``python bench/bench_buffer.py``. Figures depend on the disk's fsync latency;
on a shared VM they vary by 2x from run to run.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from buffer import Cycle, Outbox, Record  # noqa: E402

Report = Callable[[str, float, float, str], None]
MB = 2**20
BACKLOG = 1_000_000


def _count(i: int, device: str) -> Record:
    return Record(0, 1_700_000_000_000 + i, device, "count",
                  {"tag": "part_count", "counts": "good", "delta": 1, "raw_before": i,
                   "raw_after": i + 1, "reset": False})


def _cycle(i: int, n: int) -> Cycle:
    return Cycle([_count(i, f"cnc-{j % 20:02d}") for j in range(n)],
                 {(f"cnc-{j:02d}", "part_count"): i + 1 for j in range(min(n, 20))})


async def _append_rate(path: Path, per_cycle: int, records: int) -> float:
    async with Outbox(path, gateway="gw-bench", max_bytes=1024 * MB) as ob:
        await ob.append(_cycle(0, per_cycle))  # warm
        cycles = [_cycle(i, per_cycle) for i in range(records // per_cycle)]
        t0 = time.perf_counter()
        for c in cycles:
            await ob.append(c)
        return records / (time.perf_counter() - t0)


async def _build_backlog(path: Path) -> None:
    async with Outbox(path, gateway="gw-bench", max_bytes=1024 * MB, synchronous="NORMAL") as ob:
        for i in range(BACKLOG // 5000):
            await ob.append(Cycle([_count(i * 5000 + j, f"cnc-{j % 20:02d}")
                                   for j in range(5000)]))


async def _startup(path: Path) -> float:
    ob = Outbox(path, gateway="gw-bench", max_bytes=1024 * MB)
    t0 = time.perf_counter()
    await ob.open()
    took = time.perf_counter() - t0
    assert (await ob.stats()).backlog == BACKLOG
    await ob.close()
    return took


async def _drain(path: Path) -> dict[str, float]:
    """Child process: stream the whole backlog through peek/ack; report peak RSS."""
    t0 = time.perf_counter()
    n = 0
    async with Outbox(path, gateway="gw-bench", max_bytes=1024 * MB) as ob:
        while rows := await ob.peek(max_records=5000, max_bytes=4 * MB):
            n += len(rows)
            await ob.ack_through(rows[-1].seq)
    took = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"records": n, "seconds": took, "peak_rss_mb": rss_mb}


def run(report: Report) -> None:
    with tempfile.TemporaryDirectory(prefix="plantsync-bench-", dir=ROOT / ".bench-tmp"
                                     if (ROOT / ".bench-tmp").is_dir() else None) as tmp:
        d = Path(tmp)
        grouped = asyncio.run(_append_rate(d / "g.db", 50, 50_000))
        single = asyncio.run(_append_rate(d / "s.db", 1, 2_000))
        report("buffer append, group commit 50 records/cycle, FULL", grouped, 50_000,
               "records/s")
        report("buffer append, commit per record, FULL (baseline: group commit)", single,
               grouped, "records/s")
        big = asyncio.run(_append_rate(d / "b.db", 500, 100_000))
        report("buffer append, group commit 500 records/cycle, FULL", big, 50_000, "records/s")

        backlog = d / "backlog.db"
        asyncio.run(_build_backlog(backlog))
        report("buffer start-up with 1,000,000 records on disk", asyncio.run(_startup(backlog)),
               2.0, "s")
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        out = subprocess.run([sys.executable, __file__, "--drain", str(backlog)], env=env,
                             capture_output=True, text=True, check=True)
        res = json.loads(out.stdout.strip().splitlines()[-1])
        assert res["records"] == BACKLOG, res
        report("buffer peek/ack stream of 1,000,000 records: peak RSS", res["peak_rss_mb"],
               100.0, "MB")
        report("buffer peek/ack stream of 1,000,000 records (no network)",
               res["records"] / res["seconds"], 20_000, "records/s")


def _print(name: str, value: float, baseline: float, unit: str) -> None:
    print(f"{name:<72} {value:>12,.2f} {unit:<10} (vs {baseline:,.2f})", flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--drain":
        import structlog

        structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
        print(json.dumps(asyncio.run(_drain(Path(sys.argv[2])))))
    else:
        import structlog

        structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
        run(_print)
