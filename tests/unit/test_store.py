"""The outbox contract (buffer/store.py) against real SQLite files in tmp_path."""

from __future__ import annotations

import itertools
import shutil
import sqlite3
from pathlib import Path

import msgpack
import pytest
import structlog

from buffer import (
    BufferAckError,
    BufferGatewayMismatch,
    BufferLocked,
    Cycle,
    Outbox,
    Record,
    RecordError,
)
from buffer.records import decode_batch, encode_batch_raw
from buffer.store import Synchronous

MB = 2**20


def count(device: str, before: int | None, after: int, ts: int = 1_700_000_000_000) -> Record:
    return Record(0, ts, device, "count", {"tag": "part_count", "counts": "good",
                                            "delta": after - (before or 0), "raw_before": before,
                                            "raw_after": after, "reset": False})


def sample(device: str, i: int, pad: int = 0) -> Record:
    return Record(0, 1_700_000_000_000 + i, device, "sample",
                  {"values": {"program": "P" * pad, "i": i}})


def bodies(rows: list) -> list[dict]:
    return [msgpack.unpackb(r.body) for r in rows]


async def test_append_peek_ack_contract(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "b.db", gateway="gw-1", max_bytes=64 * MB) as ob:
        seqs = await ob.append(Cycle([count("cnc-1", 0, 3), count("cnc-2", 5, 6)],
                                     {("cnc-1", "part_count"): 3, ("cnc-2", "part_count"): 6}))
        assert seqs == [1, 2]
        assert await ob.append(Cycle([sample("cnc-1", i) for i in range(10)])) == list(range(3, 13))
        rows = await ob.peek(max_records=5)
        assert [r.seq for r in rows] == [1, 2, 3, 4, 5]
        assert rows[0].kind == "count" and rows[0].device == "cnc-1"
        assert bodies(rows)[0]["raw_after"] == 3
        nxt = await ob.peek(after_seq=rows[-1].seq, max_records=100)
        assert [r.seq for r in nxt] == list(range(6, 13))
        # max_bytes: the first row always comes, then stop before passing the limit
        assert len(await ob.peek(max_records=100, max_bytes=1)) == 1
        small = await ob.peek(max_records=100, max_bytes=300)
        assert 1 < len(small) < 12
        # the stored bodies go on the wire as they are, and the cloud's decoder accepts them
        batch = decode_batch(encode_batch_raw("gw-1", [(r.seq, r.ts, r.device, r.kind, r.body)
                                                       for r in nxt]))
        assert [r.seq for r in batch.records] == list(range(6, 13))
        assert batch.backlog is None
        rows = [(r.seq, r.ts, r.device, r.kind, r.body) for r in nxt]
        assert decode_batch(encode_batch_raw("gw-1", rows, backlog=4242)).backlog == 4242
        import msgpack

        for bad in (-1, "7", 1.5):
            doc = msgpack.unpackb(encode_batch_raw("gw-1", rows), raw=False)
            with pytest.raises(RecordError, match="backlog"):
                decode_batch(msgpack.packb({**doc, "backlog": bad}, use_bin_type=True))

        assert await ob.ack_through(5) == 5
        assert await ob.ack_through(5) == 0          # idempotent
        assert await ob.ack_through(3) == 0          # older ack: nothing to do
        st = await ob.stats()
        assert (st.backlog, st.first_seq, st.last_seq, st.acked_through) == (7, 6, 12, 5)
        with pytest.raises(BufferAckError, match="last seq this buffer stored is 12"):
            await ob.ack_through(13)
        assert await ob.ack_through(12) == 7
        st = await ob.stats()
        assert (st.backlog, st.first_seq, st.oldest_ts, st.last_seq) == (0, None, None, 12)
        assert await ob.peek(max_records=10) == []
        assert await ob.integrity_check() == []


async def test_seq_never_reused_after_acks_and_restarts(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    seen: list[int] = []
    for _ in range(3):
        async with Outbox(path, gateway="gw-1", max_bytes=64 * MB) as ob:
            seen += await ob.append(Cycle([count("d", None, 1)] * 3))
            await ob.ack_through(seen[-1])            # everything deleted
            assert (await ob.stats()).backlog == 0
    assert seen == list(range(1, 10))
    async with Outbox(path, gateway="gw-1", max_bytes=64 * MB) as ob:
        assert await ob.append(Cycle([count("d", None, 1)])) == [10]


async def test_baselines_change_with_the_cycle(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    u64max = 2**64 - 1
    async with Outbox(path, gateway="gw-1", max_bytes=64 * MB) as ob:
        assert await ob.baselines() == {}
        await ob.append(Cycle([], {("cnc-1", "good"): 10, ("cnc-1", "u64"): u64max}))
        await ob.append(Cycle([count("cnc-1", 10, 12)], {("cnc-1", "good"): 12}))
    async with Outbox(path, gateway="gw-1", max_bytes=64 * MB) as ob:
        assert await ob.baselines() == {("cnc-1", "good"): 12, ("cnc-1", "u64"): u64max}
        assert await ob.append(Cycle()) == []


async def test_a_record_the_cloud_would_reject_is_refused_whole(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "b.db", gateway="gw-1", max_bytes=64 * MB) as ob:
        bad = Record(0, 1, "cnc-1", "count", {"tag": "x", "counts": "good", "delta": -1,
                                              "raw_before": 0, "raw_after": 1})
        with pytest.raises(RecordError, match=r"cycle.records\[1\].body.delta"):
            await ob.append(Cycle([count("cnc-1", 0, 1), bad], {("cnc-1", "x"): 1}))
        with pytest.raises(RecordError, match="kind"):
            await ob.append(Cycle([Record(0, 1, "d", "nope", {})]))
        # past the cloud's columns: refused here, not a 5xx the uplink would retry forever
        ok = count("cnc-1", 0, 1)
        for bad, field in ((Record(0, 2**63, "d", ok.kind, ok.body), "ts"),
                           (Record(0, 1, "d" * 129, ok.kind, ok.body), "device"),
                           (Record(0, 1, "d", ok.kind, {**ok.body, "delta": 2**63}),
                            "body.delta")):
            with pytest.raises(RecordError, match=rf"cycle.records\[1\].{field}: "):
                await ob.append(Cycle([ok, bad], {("cnc-1", "x"): 1}))
        assert await ob.peek(max_records=10) == []
        assert await ob.baselines() == {}
        assert await ob.append(Cycle([count("cnc-1", 0, 1)])) == [1]
        # a PLC string with NUL inside is kept, its NUL shown as U+FFFD (the cloud's text
        # columns cannot hold NUL), rather than refusing the device's cycle
        await ob.append(Cycle([Record(0, 1, "cnc-1", "sample", {"values": {"prog": "O1\x0023"}})]))
        assert bodies(await ob.peek(max_records=10))[1] == {"values": {"prog": "O1\ufffd23"}}


def on_disk(path: Path) -> int:
    """Every byte the buffer holds on disk: database, WAL, -shm, sidecar and lock file."""
    return sum(f.stat().st_size for f in path.parent.glob(path.name + "*"))


async def test_quota_drops_oldest_samples_only_and_writes_a_gap(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    peak, cycle_bytes = 0, 0
    async with Outbox(path, gateway="gw-1", max_bytes=2 * MB) as ob:
        raw = 0
        for i in range(1000):  # ~3 MB of samples, one count per cycle
            recs = [sample("cnc-1", i * 10 + j, pad=250) for j in range(10)]
            recs.append(count("cnc-1", raw, raw + 1))
            cycle_bytes = max(cycle_bytes, sum(len(msgpack.packb(dict(r.body))) for r in recs))
            await ob.append(Cycle(recs, {("cnc-1", "part_count"): raw + 1}))
            raw += 1
            peak = max(peak, on_disk(path))
        st = await ob.stats()
        # the disk limit is honest at the smallest quota: db + WAL + -shm + sidecar + lock
        # stay within max_bytes plus one cycle (its records' bytes, page-rounded)
        one_cycle = (cycle_bytes // 4096 + 1) * 4096
        assert peak <= 2 * MB + one_cycle, (peak, one_cycle)
        assert st.dropped_samples_total > 0
        assert not st.over_quota
        assert st.content_bytes <= st.content_budget
        # it drops only about what it must: what is kept fills the budget to >= 90 %
        assert st.content_bytes >= 0.9 * st.content_budget
        rows = await ob.peek(max_records=100_000, max_bytes=1 << 30)
        kinds = [r.kind for r in rows]
        assert kinds.count("count") == 1000           # never dropped
        gaps = [b for r, b in zip(rows, bodies(rows), strict=True) if r.kind == "gap"]
        assert gaps and all(g["reason"] == "quota" for g in gaps)
        assert sum(g["dropped"] for g in gaps) == st.dropped_samples_total
        assert kinds.count("sample") + st.dropped_samples_total == 10_000
        # the oldest samples went: every kept sample is newer than every dropped one
        kept = [r.seq for r in rows if r.kind == "sample"]
        assert min(kept) > max(g["last_seq"] for g in gaps)
        # continuity of the kept counts
        counts = [b for r, b in zip(rows, bodies(rows), strict=True) if r.kind == "count"]
        assert all(a["raw_after"] == b["raw_before"] for a, b in itertools.pairwise(counts))
        # every dropped seq lies inside a gap's range
        stored = {r.seq for r in rows}
        missing = set(range(1, st.last_seq + 1)) - stored
        assert all(any(g["first_seq"] <= s <= g["last_seq"] for g in gaps) for s in missing)
        assert await ob.integrity_check() == []


async def test_over_quota_with_only_non_droppable_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    async with Outbox(path, gateway="gw-1", max_bytes=2 * MB) as ob:
        n = 0
        with structlog.testing.capture_logs() as logs:
            while not (await ob.stats()).over_quota:
                await ob.append(Cycle([count(f"cnc-{i}", n, n + 1) for i in range(100)]))
                n += 1
                assert n < 1000
            await ob.append(Cycle([count("cnc-x", 0, 1)]))
        # loud, once: an error naming the file, the sizes and what happens next
        over = [e for e in logs if e["event"] == "buffer_over_quota"]
        assert len(over) == 1 and over[0]["log_level"] == "error"
        assert over[0]["path"] == str(path)
        assert over[0]["content_bytes"] > over[0]["content_budget"] == ob.content_budget
        assert "buffer_max_mb" in over[0]["detail"]
        st = await ob.stats()
        assert st.over_quota and st.dropped_samples_total == 0
        assert st.content_bytes > st.content_budget
        assert st.backlog == n * 100 + 1
        assert all(r.kind == "count" for r in await ob.peek(max_records=100_000))
        with structlog.testing.capture_logs() as logs:
            await ob.ack_through(st.last_seq)
            assert not (await ob.stats()).over_quota
        assert [e["event"] for e in logs if e["event"].startswith("buffer_back")] == [
            "buffer_back_under_quota"]


@pytest.mark.parametrize(("synchronous", "level"), [("FULL", 2), ("NORMAL", 1)])
async def test_the_live_connection_has_the_promised_pragmas(
        tmp_path: Path, synchronous: Synchronous, level: int) -> None:
    async with Outbox(tmp_path / "b.db", gateway="gw-1", max_bytes=64 * MB,
                      synchronous=synchronous) as ob:
        st = await ob.stats()
        # read back from the outbox's own connection, not the configured value
        assert st.synchronous == synchronous
        assert st.journal_size_limit == ob.wal_limit == 8 * MB
        assert {"FULL": 2, "NORMAL": 1}[st.synchronous] == level
    # an independent connection agrees the file is in WAL mode (synchronous is per connection)
    con = sqlite3.connect(tmp_path / "b.db")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()


async def test_normal_peek_hands_out_only_rows_that_survive_a_power_cut(tmp_path: Path) -> None:
    """NORMAL does not fsync commits. A row the uplink sent and a power cut then rolled back
    (with its counter baseline) would make the next poll count the same movement again, so
    peek first checkpoints: only the main database file, fsynced, has to hold what it
    returned. The power cut is simulated by copying only that file (no -wal, no -shm)."""
    path = tmp_path / "b.db"
    raw = 0

    async def cycles(ob: Outbox, n: int) -> None:
        nonlocal raw
        for _ in range(n):
            await ob.append(Cycle([count("cnc-1", raw, raw + 3), sample("cnc-1", raw)],
                                  {("cnc-1", "part_count"): raw + 3}))
            raw += 3

    async with Outbox(path, gateway="gw-1", max_bytes=64 * MB, synchronous="NORMAL") as ob:
        await cycles(ob, 20)
        assert (await ob.stats()).durable_through == 0   # nothing fsynced yet
        sent = await ob.peek(max_records=10_000)
        sent_raw = raw
        assert [r.seq for r in sent] == list(range(1, 41))
        assert (await ob.stats()).durable_through == 40
        await cycles(ob, 20)                             # committed, not peeked, not fsynced
        # within the durable mark, or past the last seq: no checkpoint, no new row handed out
        assert [r.seq for r in await ob.peek(max_records=10)] == list(range(1, 11))
        assert await ob.peek(max_records=10, after_seq=80) == []
        assert (await ob.stats()).durable_through == 40
        shutil.copyfile(path, tmp_path / "after_power_cut.db")
        con = sqlite3.connect(tmp_path / "after_power_cut.db")
        seqs = [int(r[0]) for r in con.execute("SELECT seq FROM records ORDER BY seq")]
        base = con.execute("SELECT raw FROM baselines WHERE device = 'cnc-1'").fetchone()[0]
        con.close()
        # every row that was handed out, and the baseline of the last of their cycles
        assert seqs[:40] == [r.seq for r in sent]
        assert base >= sent_raw
        # the copy really is what a power cut leaves: the unpeeked cycles were only in the WAL
        assert seqs == list(range(1, 41)) and base == sent_raw
        # a reader in another connection pins the WAL: the checkpoint cannot complete, so
        # the mark stays and peek hands out nothing beyond it
        reader = sqlite3.connect(path, isolation_level=None)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM records").fetchone()
        await cycles(ob, 1)
        assert [r.seq for r in await ob.peek(max_records=100, after_seq=38)] == [39, 40]
        assert (await ob.stats()).durable_through == 40
        reader.execute("COMMIT")
        reader.close()
        assert [r.seq for r in await ob.peek(max_records=100, after_seq=38)][-1] == 82
        assert (await ob.stats()).durable_through == 82


async def test_full_peek_hands_out_every_committed_row(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "b.db", gateway="gw-1", max_bytes=64 * MB) as ob:
        await ob.append(Cycle([count("d", 0, 1)] * 3))
        assert [r.seq for r in await ob.peek(max_records=10)] == [1, 2, 3]
        assert (await ob.stats()).durable_through == 3


async def test_gateway_mismatch_is_refused_and_the_file_kept(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    async with Outbox(path, gateway="gw-a", max_bytes=64 * MB) as ob:
        await ob.append(Cycle([count("d", 0, 1)]))
    before = path.read_bytes()
    with pytest.raises(BufferGatewayMismatch, match=r"'gw-a'.*'gw-b'"):
        async with Outbox(path, gateway="gw-b", max_bytes=64 * MB):
            pass
    assert path.read_bytes() == before
    assert not list(tmp_path.glob("*.corrupt-*"))
    async with Outbox(path, gateway="gw-a", max_bytes=64 * MB) as ob:  # still usable
        assert (await ob.stats()).backlog == 1


async def test_a_second_outbox_on_the_same_file_is_refused(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "b.db", gateway="gw-1", max_bytes=64 * MB):
        with pytest.raises(BufferLocked, match="already open"):
            async with Outbox(tmp_path / "b.db", gateway="gw-1", max_bytes=64 * MB):
                pass


async def test_a_deleted_buffer_restarts_above_every_seq_used(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    async with Outbox(path, gateway="gw-1", max_bytes=64 * MB) as ob:
        last = (await ob.append(Cycle([count("d", 0, 1)] * 5)))[-1]
    for f in tmp_path.glob("b.db*"):
        if not f.name.endswith((".seq", ".lock")):
            f.unlink()
    async with Outbox(path, gateway="gw-1", max_bytes=64 * MB) as ob:
        rows = await ob.peek(max_records=10)
        assert rows[0].kind == "gap" and rows[0].seq > last
        assert bodies(rows)[0]["reason"].startswith("buffer_lost")
        assert (await ob.append(Cycle([count("d", 0, 1)])))[0] > rows[0].seq


async def test_a_removed_buffer_and_garbage_sidecar_say_so_and_rebase_above_the_cloud(
        tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    async with Outbox(path, gateway="gw-1", max_bytes=64 * MB) as ob:
        await ob.append(Cycle([count("d", 0, 1)] * 5))
        first = ob.incarnation
        assert first.since == 1 and first.id
    for f in tmp_path.glob("b.db*"):
        f.unlink()
    (tmp_path / "b.db.seq").write_bytes(b"\x00 not json")
    with structlog.testing.capture_logs() as logs:
        async with Outbox(path, gateway="gw-1", max_bytes=64 * MB) as ob:
            assert ob.incarnation.id != first.id and ob.incarnation.since == 1
            await ob.append(Cycle([count("d", 0, 7), sample("d", 1)], {("d", "part_count"): 7}))
            rows = await ob.peek(max_records=10)
            assert [r.kind for r in rows] == ["gap", "count", "sample"]
            assert "sidecar unreadable" in bodies(rows)[0]["reason"]
            # a late refusal of another numbering changes nothing
            assert not await ob.rebase(40, "someone-else")
            # the cloud holds seqs through 40 of an earlier buffer: renumber above it
            assert await ob.rebase(40, ob.incarnation.id)
            assert ob.incarnation.since == 41
            rows = await ob.peek(max_records=10)
            assert [(r.seq, r.kind) for r in rows] == [(41, "gap"), (42, "gap"), (43, "count"),
                                                       (44, "sample")]
            assert bodies(rows)[0]["reason"].startswith("buffer_lost: the cloud already held "
                                                        "seqs through 40")
            assert bodies(rows)[2]["raw_after"] == 7          # content and order kept
            assert await ob.baselines() == {("d", "part_count"): 7}
            st = await ob.stats()
            assert (st.backlog, st.last_seq) == (4, 44)
            assert await ob.append(Cycle([count("d", 7, 8)])) == [45]
            await ob.ack_through(43)
            assert [r.seq for r in await ob.peek(max_records=10)] == [44, 45]
            inc = ob.incarnation
    events = {e["event"]: e for e in logs}
    assert events["buffer_sidecar_unreadable"]["log_level"] == "error"
    assert events["buffer_lost"]["log_level"] == "error"
    assert events["buffer_rebased"]["log_level"] == "warning"
    # the new numbering survives a restart, and seqs go on above it
    async with Outbox(path, gateway="gw-1", max_bytes=64 * MB) as ob:
        assert ob.incarnation == inc
        assert await ob.append(Cycle([count("d", 8, 9)])) == [46]


async def test_a_buffer_from_before_incarnations_continues_its_numbering(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    async with Outbox(path, gateway="gw-1", max_bytes=64 * MB) as ob:
        await ob.append(Cycle([count("d", 0, 1)] * 3))
    con = sqlite3.connect(path)
    con.execute("DELETE FROM meta WHERE key IN ('incarnation', 'incarnation_since')")
    con.commit()
    con.close()
    async with Outbox(path, gateway="gw-1", max_bytes=64 * MB) as ob:
        assert ob.incarnation.since == 0
        rows = await ob.peek(max_records=10)
        wire = decode_batch(encode_batch_raw(
            "gw-1", [(r.seq, r.ts, r.device, r.kind, r.body) for r in rows],
            incarnation=(ob.incarnation.id, ob.incarnation.since)))
        assert (wire.incarnation, wire.since) == (ob.incarnation.id, 0)


def test_schema_on_disk(tmp_path: Path) -> None:
    import asyncio

    async def make() -> None:
        async with Outbox(tmp_path / "b.db", gateway="gw-1", max_bytes=64 * MB) as ob:
            await ob.append(Cycle([count("d", 0, 1)], {("d", "part_count"): 1}))

    asyncio.run(make())
    con = sqlite3.connect(tmp_path / "b.db")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert dict(con.execute("SELECT key, value FROM meta"))["gateway"] == "gw-1"
    assert con.execute("SELECT seq, device, kind FROM records").fetchall() == [(1, "d", "count")]
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
