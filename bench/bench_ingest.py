"""Cloud ingest throughput: records/s over loopback HTTP into SQLite (a real
``plantsync-cloud serve`` process, one gateway draining batches oldest-first, the way the
uplink does), beside a raw ``executemany`` insert of the same rows into the same database
(same pragmas, one transaction per batch): the ratio is what HTTP, decoding, validation
and the dedupe bookkeeping cost. Target: >= 20,000 records/s (issue 3).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from buffer.records import Record, encode_batch

RECORDS = int(os.environ.get("BENCH_INGEST_RECORDS", "200000"))
BATCH = int(os.environ.get("BENCH_INGEST_BATCH", "2000"))
TARGET = 20_000.0

from tests.services import wait_port  # noqa: E402

Report = Callable[[str, float, float, str], None]


def _records(start: int, n: int) -> list[Record]:
    base = 1_700_000_000_000
    out = []
    for seq in range(start, start + n):
        if seq % 4 == 0:
            body = {"tag": "part_count", "counts": "good", "delta": 1, "raw_before": seq - 1,
                    "raw_after": seq, "reset": False}
            out.append(Record(seq, base + seq * 100, "cnc-03", "count", body))
        else:
            out.append(Record(seq, base + seq * 100, "cnc-03", "sample",
                              {"values": {"spindle_temp": 41.5, "program": "O1234"}}))
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])




def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cloud.cli", *args], capture_output=True,
                          text=True, check=True, timeout=120)


def _http_ingest(db: Path) -> float:
    url = f"sqlite+aiosqlite:///{db}"
    _cli("migrate", "--db", url)
    token = _cli("admin", "create-gateway", "gw-bench", "--db", url).stdout.strip().split("\n")[-1]
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "cloud.cli", "serve", "--db", url, "--port",
                             str(port), "--log-level", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, timeout=30.0, proc=proc)
        bodies = [encode_batch("gw-bench", _records(s, min(BATCH, RECORDS - s + 1)))
                  for s in range(1, RECORDS + 1, BATCH)]
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/msgpack",
                   "Accept": "application/json"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers,
                          timeout=120) as client:
            client.post("/api/v1/ingest", content=encode_batch("gw-bench", []))  # warm up
            t0 = time.perf_counter()
            for body in bodies:
                res = client.post("/api/v1/ingest", content=body)
                res.raise_for_status()
            elapsed = time.perf_counter() - t0
        if res.json()["acked_through"] != RECORDS:
            raise RuntimeError(f"drain ended at {res.json()}, expected {RECORDS}")
        return RECORDS / elapsed
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _raw_insert(db: Path) -> float:
    """The same rows straight into the same table with sqlite3.executemany."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON"):
            conn.execute(f"PRAGMA {pragma}")
        conn.execute("INSERT INTO gateways (id, token_hash, created, last_seq) "
                     "VALUES ('gw-raw', 'raw', '2026-01-01 00:00:00', 0)")
        batches = [_records(s, min(BATCH, RECORDS - s + 1)) for s in range(1, RECORDS + 1, BATCH)]
        received = int(time.time() * 1000)
        t0 = time.perf_counter()
        for recs in batches:
            conn.execute("BEGIN")
            conn.executemany(
                "INSERT INTO records (gateway_id, seq, ts, device, kind, body, received_at) "
                "VALUES ('gw-raw', ?, ?, ?, ?, ?, ?) ON CONFLICT (gateway_id, seq) DO NOTHING",
                [(r.seq, r.ts, r.device, r.kind, json.dumps(dict(r.body)), received)
                 for r in recs])
            conn.execute("COMMIT")
        return RECORDS / (time.perf_counter() - t0)
    finally:
        conn.close()


def run(report: Report) -> None:
    with tempfile.TemporaryDirectory(prefix="plantsync-bench-ingest-") as tmp:
        db = Path(tmp) / "cloud.db"
        http_rate = _http_ingest(db)
        raw_rate = _raw_insert(db)
    report("cloud ingest over HTTP, SQLite (vs raw executemany)", http_rate, raw_rate,
           "records/s")
    report("cloud ingest over HTTP, SQLite (vs target)", http_rate, TARGET, "records/s")


if __name__ == "__main__":
    def _print(name: str, value: float, baseline: float, unit: str) -> None:
        print(f"{name}: {value:,.0f} {unit} (baseline {baseline:,.0f}, "
              f"ratio {value / baseline:.2f})")

    run(_print)
