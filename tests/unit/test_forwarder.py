"""Forwarder logic against an in-memory outbox and scripted uplinks (no I/O)."""

from __future__ import annotations

import asyncio
import random
import types
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest

from buffer.uplink import (
    Uplink,
    UplinkAuthError,
    UplinkRejected,
    UplinkTooLarge,
    UplinkUnavailable,
)
from edge.forwarder import Forwarder
from tests.fixtures.waiting import wait_for_async


@dataclass(frozen=True)
class Row:
    seq: int
    ts: int
    device: str
    kind: str
    body: bytes


class MemOutbox:
    def __init__(self, n: int) -> None:
        body = msgpack.packb({"state": "running", "prev": None, "code": None})
        self.rows = [Row(i, 1_700_000_000_000 + i, "cnc-03", "state", body)
                     for i in range(1, n + 1)]
        self.acks: list[int] = []

    async def peek(self, max_records: int, max_bytes: int = 1 << 20,
                   after_seq: int | None = None) -> list[Row]:
        return [r for r in self.rows if r.seq > (after_seq or 0)][:max_records]

    async def ack_through(self, seq: int) -> int:
        assert seq <= self.rows[-1].seq if self.rows else True
        self.acks.append(seq)
        before = len(self.rows)
        self.rows = [r for r in self.rows if r.seq > seq]
        return before - len(self.rows)

    async def stats(self) -> Any:
        return types.SimpleNamespace(backlog=len(self.rows))


class Scripted(Uplink):
    """Answers from a script: each entry is an exception to raise or a function of the
    batch's seqs returning acked_through."""

    def __init__(self, script: list[Any], *, window: int = 1) -> None:
        self.script = script
        self.max_in_flight = window
        self.sent: list[list[int]] = []
        self.reloads = 0

    async def open(self) -> None: ...
    async def close(self) -> None: ...

    async def reload(self) -> None:
        self.reloads += 1

    async def send(self, payload: bytes, *, last_seq: int) -> int:
        seqs = [r["seq"] for r in msgpack.unpackb(payload)["records"]]
        assert seqs[-1] == last_seq
        step = self.script.pop(0) if self.script else (lambda s: s[-1])
        if isinstance(step, BaseException):
            raise step
        self.sent.append(seqs)
        acked = step(seqs)
        self.last_acked_through = acked
        return int(acked)

    async def confirmed(self, first_seq: int, last_seq: int) -> bool:
        return self.last_acked_through >= last_seq


def fw(outbox: MemOutbox, up: Uplink, **kw: Any) -> Forwarder:
    kw.setdefault("backoff_base", 0.001)
    kw.setdefault("backoff_cap", 0.002)
    kw.setdefault("idle_interval", 0.01)
    return Forwarder(outbox, up, gateway="gw-1", **kw)


def _empty(rows: list[Any]) -> bool:
    return not rows


async def test_backoff_is_full_jitter_capped_and_reset_by_success(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The Forwarder waits with buffer.backoff.Backoff (the pollers' one): each wait after an
    error is at most min(cap, base * 2**(n-1)), jittered (not a fixed ladder), and the
    ladder starts again after a success."""
    sleeps: list[float] = []
    real_sleep = asyncio.sleep

    async def recorded(delay: float, *a: Any, **kw: Any) -> None:
        sleeps.append(delay)
        await real_sleep(0)

    out = MemOutbox(3)
    errors: list[Any] = [UplinkUnavailable("503")] * 12
    up = Scripted([*errors, lambda s: s[-1], *errors[:2], lambda s: s[-1]])
    f = fw(out, up, backoff_base=0.5, backoff_cap=8.0, rng=random.Random(7))
    # asyncio.sleep is only the Forwarder's back-off wait here (its idle wait is wait_for)
    monkeypatch.setattr("edge.forwarder.asyncio.sleep", recorded)
    task = asyncio.create_task(f.run())
    await wait_for_async(lambda: out.rows, "the first rows sent", until=_empty, interval=0)
    row = MemOutbox(1).rows[0]
    out.rows = [Row(4, row.ts, row.device, row.kind, row.body)]  # more work: two errors again
    f.notify()
    await wait_for_async(lambda: out.rows, "the new row sent", until=_empty, interval=0)
    task.cancel()
    assert len(sleeps) == 14
    bounds = [min(8.0, 0.5 * 2 ** n) for n in range(12)] + [0.5, 1.0]
    assert all(0.0 <= d <= b for d, b in zip(sleeps, bounds, strict=True)), sleeps
    assert len(set(sleeps)) == len(sleeps)          # jittered
    assert max(sleeps[:12]) <= 8.0 and max(sleeps[:12]) > 4.0   # capped, and it got there
    assert sleeps[12] <= 0.5 and sleeps[13] <= 1.0  # reset after the success


async def test_never_acks_more_than_sent() -> None:
    out = MemOutbox(250)
    up = Scripted([lambda s: 10_000] * 3)  # a confused cloud claims far more
    f = fw(out, up, max_records=100)
    assert await f.drain() == 250
    assert out.acks == [100, 200, 250]
    assert f.stats().records_acked == 250


async def test_partial_ack_resends_from_oldest_unacked() -> None:
    out = MemOutbox(200)
    up = Scripted([lambda s: 50])  # the cloud took half of the first batch
    await fw(out, up, max_records=100).drain()
    assert up.sent[0] == list(range(1, 101)) and up.sent[1][0] == 51
    assert out.rows == []


async def test_no_progress_is_an_error() -> None:
    out = MemOutbox(10)
    up = Scripted([lambda s: 0])
    with pytest.raises(UplinkRejected, match=r"did not acknowledge 1\.\.10"):
        await fw(out, up).drain()
    assert len(out.rows) == 10


async def test_413_halves_until_it_fits_and_nothing_is_skipped() -> None:
    out = MemOutbox(100)
    too_large = UplinkTooLarge("413")
    up = Scripted([too_large, too_large, too_large])
    f = fw(out, up, max_records=100)
    task = asyncio.create_task(f.run())
    await wait_for_async(lambda: out.rows, "everything sent", until=_empty, interval=0.005)
    task.cancel()
    assert [len(b) for b in up.sent[:2]] == [12, 12]  # 100 -> 50 -> 25 -> 12
    assert sorted(s for b in up.sent for s in b) == list(range(1, 101))
    assert f.stats().errors == {"too_large": 3}


async def test_auth_error_waits_for_resume() -> None:
    out = MemOutbox(5)
    up = Scripted([UplinkAuthError("401")])
    f = fw(out, up)
    task = asyncio.create_task(f.run())
    await wait_for_async(lambda: f.state, "auth_failed", until=lambda s: s == "auth_failed",
                         interval=0.005)
    await asyncio.sleep(0.05)
    assert up.sent == [] and len(out.rows) == 5 and up.reloads == 0
    f.resume()
    await wait_for_async(lambda: out.rows, "everything sent", until=_empty, interval=0.005)
    task.cancel()
    assert up.reloads == 1 and f.stats().errors == {"auth": 1}


async def test_errors_back_off_and_count_then_recover() -> None:
    out = MemOutbox(5)
    up = Scripted([UplinkUnavailable("503"), UplinkUnavailable("503"), UplinkRejected("400")])
    f = fw(out, up)
    task = asyncio.create_task(f.run())
    await wait_for_async(lambda: out.rows, "everything sent", until=_empty, interval=0.005)
    task.cancel()
    s = f.stats()
    assert s.errors == {"unavailable": 2, "rejected": 1} and s.consecutive_failures == 0
    assert s.last_ack_seq == 5


async def test_the_first_acknowledged_batch_ends_the_failure_run_mid_pass() -> None:
    """After two failures the cloud takes the first batch of a three-batch backlog: while
    the second one is sent, the Forwarder no longer counts consecutive failures (the link
    works), though the pass through the backlog has not ended."""
    out = MemOutbox(30)
    failures_seen: list[int] = []

    def second_batch(seqs: list[int]) -> int:
        failures_seen.append(f.stats().consecutive_failures)
        return seqs[-1]

    up = Scripted([UplinkUnavailable("503"), UplinkUnavailable("503"), lambda s: s[-1],
                   second_batch])
    f = fw(out, up, max_records=10)
    task = asyncio.create_task(f.run())
    await wait_for_async(lambda: out.rows, "everything sent", until=_empty, interval=0.005)
    task.cancel()
    assert failures_seen == [0]
    assert f.stats().errors == {"unavailable": 2} and f.stats().consecutive_failures == 0


class Pipelined(Scripted):
    """Confirms batches out of order, as an MQTT consumer may."""

    def __init__(self) -> None:
        super().__init__([], window=4)
        self.confirmed_batches: set[tuple[int, int]] = set()
        self.pending: list[tuple[int, int]] = []

    async def send(self, payload: bytes, *, last_seq: int) -> int:
        seqs = [r["seq"] for r in msgpack.unpackb(payload)["records"]]
        self.sent.append(seqs)
        self.pending.append((seqs[0], seqs[-1]))
        if len(self.pending) == 2:  # confirm the second before the first
            self.confirmed_batches.add(self.pending[1])
        return 0

    async def confirmed(self, first_seq: int, last_seq: int) -> bool:
        self.confirmed_batches.update(self.pending)
        return (first_seq, last_seq) in self.confirmed_batches


async def test_window_acks_only_the_confirmed_prefix() -> None:
    out = MemOutbox(1000)
    up = Pipelined()
    assert await fw(out, up, max_records=100).drain() == 1000
    assert out.acks == list(range(100, 1001, 100))  # in order, batch by batch


async def test_a_seq_conflict_rebases_the_outbox_and_resends_above_the_cloud(
        tmp_path: Any) -> None:
    """A lost buffer: the cloud refuses the new numbering with its highest seq; the
    Forwarder has the Outbox renumber above it (behind a gap record) and resends at once,
    every batch carrying the Outbox's incarnation."""
    from buffer import Cycle, Outbox, Record
    from buffer.uplink import UplinkSeqConflict

    class Cloud(Scripted):
        def __init__(self) -> None:
            super().__init__([])
            self.batches: list[dict[str, Any]] = []

        async def send(self, payload: bytes, *, last_seq: int) -> int:
            doc = msgpack.unpackb(payload)
            self.batches.append(doc)
            if doc["since"] <= 90:
                raise UplinkSeqConflict("seq_conflict", cloud_last_seq=90,
                                        incarnation=doc["incarnation"])
            self.last_acked_through = last_seq
            return last_seq

    async with Outbox(tmp_path / "b.db", gateway="gw-1", max_bytes=8 * 2**20) as ob:
        await ob.append(Cycle([Record(0, 1_700_000_000_000, "cnc-03", "link",
                                      {"online": True, "error": None})] * 3))
        before = ob.incarnation
        up = Cloud()
        f = Forwarder(ob, up, gateway="gw-1", backoff_base=0.001, backoff_cap=0.002,
                      idle_interval=0.01)
        task = asyncio.create_task(f.run())
        try:
            async def backlog() -> int:
                return (await ob.stats()).backlog

            def drained(n: int) -> bool:
                return n == 0

            await wait_for_async(backlog, "drained", until=drained)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        refused, accepted = up.batches[0], up.batches[-1]
        assert (refused["incarnation"], refused["since"]) == (before.id, 1)
        assert [r["seq"] for r in refused["records"]] == [1, 2, 3]
        assert (accepted["incarnation"], accepted["since"]) == (ob.incarnation.id, 91)
        assert [(r["seq"], r["kind"]) for r in accepted["records"]] == [
            (91, "gap"), (92, "link"), (93, "link"), (94, "link")]
        assert f.stats().errors == {"seq_conflict": 1}
