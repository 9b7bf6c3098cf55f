"""Faults against the outbox with real processes and files: kill -9 mid-append, a full
disk (RLIMIT_FSIZE), a failing fsync (strace fault injection), damaged files, an unclean end
of a synchronous=NORMAL run, and the WAL staying bounded through an outage and its drain."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import msgpack
import pytest

from buffer import Cycle, Outbox, Record
from tests.services import require_binary

ROOT = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("store_child.py")
GW = "gw-faults"
MB = 2**20


def child(mode: str, path: Path, *prefix: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([*prefix, sys.executable, str(CHILD), mode, str(path)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def child_json(mode: str, path: Path, *prefix: str) -> dict:
    proc = child(mode, path, *prefix)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


async def all_rows(path: Path) -> list[tuple[int, str, str, dict]]:
    async with Outbox(path, gateway=GW, max_bytes=256 * MB) as ob:
        rows = await ob.peek(max_records=10**7, max_bytes=1 << 40)
        assert await ob.integrity_check() == []
    return [(r.seq, r.device, r.kind, msgpack.unpackb(r.body)) for r in rows]


def check_counts(rows: list[tuple[int, str, str, dict]],
                 baselines: dict[tuple[str, str], int]) -> int:
    """Every count starts where the previous of its tag ended; the stored baseline is where
    the last one ended. Returns the number of count records."""
    last: dict[tuple[str, str], int | None] = defaultdict(lambda: None)
    n = 0
    for _seq, device, kind, body in rows:
        if kind != "count":
            continue
        key = (device, body["tag"])
        assert body["raw_before"] == last[key], (key, body, last[key])
        assert body["delta"] == body["raw_after"] - (body["raw_before"] or 0)
        last[key] = body["raw_after"]
        n += 1
    assert dict(last) == baselines
    return n


@pytest.mark.slow
async def test_kill_9_mid_append_never_loses_or_doubles_a_count(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    rng = random.Random(42)
    for _ in range(25):
        proc = child("writer", path)
        assert proc.stdout is not None
        line = await asyncio.to_thread(proc.stdout.readline)
        if line.strip() != "ready":
            proc.kill()
            _, err = proc.communicate(timeout=30)
            pytest.fail(f"writer did not start: {line!r} {err[-2000:]}")
        await asyncio.sleep(rng.uniform(0.02, 0.4))  # the kill lands somewhere in the loop
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
    rows = await all_rows(path)
    seqs = [r[0] for r in rows]
    assert seqs == list(range(1, len(seqs) + 1))   # strictly increasing, no hole, no reuse
    async with Outbox(path, gateway=GW, max_bytes=256 * MB) as ob:
        baselines = await ob.baselines()
    assert check_counts(rows, baselines) > 25
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()


def test_disk_full_stores_nothing_then_recovers(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    out = child_json("disk_full", path)
    assert "disk full" in out["error"] and "nothing of it was stored" in out["error"]
    assert out["stats_error"] == out["error"]
    assert out["second_try"] == "failed"
    # the cycle that failed is stored on retry with the next seqs: no hole reported stored
    assert out["retry_seqs"][0] == out["last_ok"] + 1
    assert out["after_seqs"][0] == out["retry_seqs"][-1] + 1
    assert out["stats_after"] is None
    rows = asyncio.run(all_rows(path))
    assert [r[0] for r in rows] == list(range(1, out["after_seqs"][-1] + 1))

    async def base() -> dict[tuple[str, str], int]:
        async with Outbox(path, gateway=GW, max_bytes=256 * MB) as ob:
            return await ob.baselines()

    check_counts(rows, asyncio.run(base()))


def test_failed_fsync_is_a_write_error_and_the_retry_stores_it(tmp_path: Path) -> None:
    strace = require_binary("strace")
    path = tmp_path / "buffer.db"
    # SQLite syncs with fdatasync: fail the 30th (well after open, inside an append's commit).
    out = child_json("fsync_fault", path, strace, "-f", "-qq", "-o", "/dev/null",
                     "-e", "trace=fdatasync", "-e", "inject=fdatasync:error=EIO:when=30")
    assert len(out["errors"]) == 1, out["errors"]
    assert "fsync failed" in out["errors"][0] or "I/O error" in out["errors"][0]
    rows = asyncio.run(all_rows(path))
    assert [r[0] for r in rows] == out["seqs"] == list(range(1, len(out["seqs"]) + 1))

    async def base() -> dict[tuple[str, str], int]:
        async with Outbox(path, gateway=GW, max_bytes=256 * MB) as ob:
            return await ob.baselines()

    check_counts(rows, asyncio.run(base()))


async def _filled(path: Path) -> int:
    async with Outbox(path, gateway=GW, max_bytes=256 * MB) as ob:
        for i in range(200):
            recs = [Record(0, i, f"cnc-{j}", "sample", {"values": {"x": "y" * 100}})
                    for j in range(20)]
            last = (await ob.append(Cycle(recs)))[-1]
    return last


def _garble(path: Path) -> None:
    subprocess.run(["dd", "if=/dev/urandom", f"of={path}", "bs=4096", "seek=3", "count=4",
                    "conv=notrunc"], check=True, capture_output=True)


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2 + 123)


def _not_sqlite(path: Path) -> None:
    path.write_bytes(b"this is not a database\n" * 500)


def _header(path: Path) -> None:
    with path.open("r+b") as f:
        f.write(os.urandom(100))


@pytest.mark.parametrize("damage", [_garble, _truncate, _not_sqlite, _header])
async def test_a_damaged_file_is_moved_aside_and_reported_as_a_gap(tmp_path: Path,
                                                                   damage) -> None:
    path = tmp_path / "buffer.db"
    last = await _filled(path)
    damage(path)
    damaged = path.read_bytes()
    async with Outbox(path, gateway=GW, max_bytes=256 * MB) as ob:
        rows = await ob.peek(max_records=10)
        assert len(rows) == 1 and rows[0].kind == "gap"
        gap = msgpack.unpackb(rows[0].body)
        assert rows[0].seq > last                    # above anything the cloud can have seen
        assert gap["reason"].startswith("buffer_corrupt: moved to buffer.db.corrupt-")
        assert (gap["dropped"], gap["first_seq"], gap["last_seq"]) == (0, None, None)
        nxt = await ob.append(Cycle([Record(0, 1, "d", "link", {"online": True})]))
        assert nxt == [rows[0].seq + 1]
    aside = sorted(tmp_path.glob("buffer.db.corrupt-*"))
    main = [p for p in aside if not p.name.endswith(("-wal", "-shm"))]
    assert len(main) == 1 and main[0].read_bytes()[:100] == damaged[:100]  # kept, not deleted
    # no crash loop: the next start is an ordinary one
    async with Outbox(path, gateway=GW, max_bytes=256 * MB) as ob:
        assert (await ob.stats()).backlog == 2
    assert len([p for p in tmp_path.glob("buffer.db.corrupt-*")
                if not p.name.endswith(("-wal", "-shm"))]) == 1
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()


def test_unclean_end_of_a_normal_run_skips_seqs_instead_of_reusing_them(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    last = child_json("normal_crash", path)["last"]

    async def reopen() -> tuple[list, list[int]]:
        async with Outbox(path, gateway=GW, max_bytes=256 * MB, synchronous="NORMAL") as ob:
            rows = await ob.peek(max_records=10**6, max_bytes=1 << 40)
            new = await ob.append(Cycle([Record(0, 1, "d", "link", {"online": True})]))
        return rows, new

    rows, new = asyncio.run(reopen())
    gap = rows[-1]
    body = msgpack.unpackb(gap.body)
    assert gap.kind == "gap" and body["reason"].startswith("unclean_shutdown")
    assert body["first_seq"] == last + 1 and gap.seq == body["last_seq"] + 1
    assert new == [gap.seq + 1]
    # after a clean close, the next open does not skip
    _rows, new2 = asyncio.run(reopen())
    assert new2 == [new[0] + 1]


@pytest.mark.slow
async def test_wal_stays_bounded_through_a_200k_outage_and_drain(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    wal = Path(f"{path}-wal")
    biggest = 0
    async with Outbox(path, gateway=GW, max_bytes=64 * MB) as ob:
        bound = ob.wal_limit  # autocheckpoint at wal_limit/2 plus one transaction
        for i in range(4000):                        # the outage: 200,000 records
            recs = [Record(0, i, f"cnc-{j % 10}", "count" if j % 5 == 0 else "sample",
                           {"tag": "g", "counts": "good", "delta": 1, "raw_before": i,
                            "raw_after": i + 1, "reset": False} if j % 5 == 0 else
                           {"values": {"t": float(j)}}) for j in range(50)]
            await ob.append(Cycle(recs))
            if i % 50 == 0:
                biggest = max(biggest, wal.stat().st_size)
        assert (await ob.stats()).backlog == 200_000
        drained = 0
        while rows := await ob.peek(max_records=2000, max_bytes=1 << 20):
            drained += len(rows)
            await ob.ack_through(rows[-1].seq)
            biggest = max(biggest, wal.stat().st_size)
        assert drained == 200_000
        st = await ob.stats()
        assert st.backlog == 0 and st.wal_bytes < bound
        assert await ob.integrity_check() == []
    assert biggest <= bound, (biggest, bound)
    assert wal.stat().st_size == 0 if wal.exists() else True


async def test_a_writer_killed_before_its_first_commit_leaves_a_valid_buffer(tmp_path: Path) -> None:
    """A writer killed before its first commit leaves a valid, empty buffer behind."""
    path = tmp_path / "buffer.db"
    proc = child("writer", path)
    assert proc.stdout is not None
    assert (await asyncio.to_thread(proc.stdout.readline)).strip() == "ready"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    async with Outbox(path, gateway=GW, max_bytes=256 * MB) as ob:
        assert (await ob.stats()).last_seq >= 0
    assert not list(tmp_path.glob("*.corrupt-*"))
