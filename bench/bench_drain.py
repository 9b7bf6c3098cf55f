"""Drain of a 1,000,000-record backlog to the cloud on loopback, the way a gateway drains
after a day-long outage: the Outbox on disk, the real Forwarder and HttpUplink (batches of
1000, keep-alive) in a child process, ``plantsync-cloud serve`` on SQLite in another.

Figures, each beside its target from issue 3 (the ``baseline`` column):
- drain rate, records/s (target >= 20,000);
- start-up: opening the Outbox with that backlog on disk (target < 2 s);
- peak RSS of the draining process (target < 100 MB).

Standalone: ``python bench/bench_drain.py``. A loaded 2-core VM shares its cores between
the drainer and the cloud; the rate is what both together manage.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from buffer import Cycle, Outbox, Record  # noqa: E402
from tests.services import wait_port  # noqa: E402

Report = Callable[[str, float, float, str], None]
MB = 2**20
BACKLOG = 1_000_000
GATEWAY = "gw-bench-drain"
TARGET_RATE = 20_000
TARGET_STARTUP_S = 2.0
TARGET_RSS_MB = 100


async def _build_backlog(path: Path) -> None:
    """1,000,000 records: counts and samples of 20 machines, in cycles of 5000."""
    async with Outbox(path, gateway=GATEWAY, max_bytes=1024 * MB, synchronous="NORMAL") as ob:
        raw = 0
        ts = 1_700_000_000_000
        for _ in range(BACKLOG // 5000):
            recs = []
            for j in range(5000):
                dev = f"cnc-{j % 20:02d}"
                if j % 2:
                    recs.append(Record(0, ts, dev, "sample",
                                       {"values": {"spindle_temp": 41.5, "program": "O1234"}}))
                else:
                    recs.append(Record(0, ts, dev, "count", {
                        "tag": "part_count", "counts": "good", "delta": 1, "raw_before": raw,
                        "raw_after": raw + 1, "reset": False}))
                    raw += 1
                ts += 10
            await ob.append(Cycle(recs))


async def _drain(path: Path, url: str, token_file: Path) -> dict[str, float]:
    """Child process: open the Outbox (timed), drain it through Forwarder + HttpUplink."""
    from buffer.uplink import HttpUplink
    from edge.forwarder import Forwarder

    t0 = time.perf_counter()
    ob = Outbox(path, gateway=GATEWAY, max_bytes=1024 * MB)
    await ob.open()
    startup = time.perf_counter() - t0
    try:
        backlog = (await ob.stats()).backlog
        async with HttpUplink(url, token_file=token_file) as uplink:
            fwd = Forwarder(ob, uplink, gateway=GATEWAY)
            t1 = time.perf_counter()
            await fwd.drain()
            took = time.perf_counter() - t1
        left = (await ob.stats()).backlog
    finally:
        await ob.close()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"records": backlog - left, "left": left, "seconds": took, "startup_s": startup,
            "peak_rss_mb": rss_mb}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "cloud.cli", *args], capture_output=True,
                          text=True, check=True, timeout=120, cwd=ROOT).stdout




def measure(tmp: Path) -> dict[str, float]:
    buffer_path = tmp / "buffer.db"
    asyncio.run(_build_backlog(buffer_path))
    db_url = f"sqlite+aiosqlite:///{tmp / 'cloud.db'}"
    _cli("migrate", "--db", db_url)
    token = _cli("admin", "create-gateway", GATEWAY, "--db", db_url).strip().splitlines()[-1]
    token_file = tmp / "token"
    token_file.write_text(token + "\n")
    port = _free_port()
    cloud = subprocess.Popen([sys.executable, "-m", "cloud.cli", "serve", "--db", db_url,
                              "--port", str(port), "--log-level", "warning"], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, timeout=30.0, proc=cloud)
        child = subprocess.run(
            [sys.executable, __file__, "--child", str(buffer_path), f"http://127.0.0.1:{port}",
             str(token_file)], capture_output=True, text=True, timeout=900, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
        if child.returncode != 0:
            raise RuntimeError(f"drain child failed:\n{child.stderr[-3000:]}")
        res: dict[str, float] = json.loads(child.stdout.strip().splitlines()[-1])
    finally:
        cloud.terminate()
        cloud.wait(timeout=30)
    if res["left"]:
        raise RuntimeError(f"drain stopped with {res['left']} records left")
    return res


def run(report: Report) -> None:
    base = ROOT / ".bench-tmp" if (ROOT / ".bench-tmp").is_dir() else None
    with tempfile.TemporaryDirectory(prefix="plantsync-bench-drain-", dir=base) as tmp:
        res = measure(Path(tmp))
    report("drain 1,000,000-record backlog to the cloud over loopback HTTP (vs target)",
           res["records"] / res["seconds"], TARGET_RATE, "records/s")
    report("outbox start-up with 1,000,000 records on disk (vs target)",
           res["startup_s"], TARGET_STARTUP_S, "s")
    report("drain 1,000,000 records: peak RSS of the draining process (vs target)",
           res["peak_rss_mb"], TARGET_RSS_MB, "MB")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        path, url, token_file = sys.argv[2:5]
        print(json.dumps(asyncio.run(_drain(Path(path), url, Path(token_file)))), flush=True)
        sys.exit(0)

    def _print(name: str, value: float, baseline: float, unit: str) -> None:
        print(f"{name}: {value:.4g} {unit} (target {baseline:g})")

    run(_print)
