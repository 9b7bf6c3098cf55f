"""The daemon's group-commit writer over a real Outbox: several pollers' records land in
one transaction, a stalled buffer makes submitters wait (bounded queue, no unbounded
memory) and shows as a stall, a failed commit reports to every submitter with nothing
stored, a refused record fails only its own submitter, and a damaged buffer ends the
writer with every submitter told (nobody waits forever)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from buffer import Outbox, Record
from buffer.store import BufferCorrupt, BufferWriteError, Cycle
from edge.daemon import CycleWriter, WriterFailed


def rec(device: str, n: int) -> Record:
    return Record(seq=0, ts=1_700_000_000_000 + n, device=device, kind="sample",
                  body={"values": {"x": n}})


async def test_group_commit_across_devices(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "b.db", gateway="gw", max_bytes=64 << 20) as ob:
        writer = CycleWriter(ob, capacity=8)
        task = asyncio.create_task(writer.run())
        # Eight pollers submit at the same moment: fewer transactions than submits.
        results = await asyncio.gather(*(writer.submit([rec(f"d{i}", i)], {(f"d{i}", "c"): i})
                                         for i in range(8)))
        assert sorted(s for seqs in results for s in seqs) == list(range(1, 9))
        assert writer.commits < 8
        assert (await ob.baselines())[("d3", "c")] == 3
        task.cancel()


class StalledOutbox:
    """Stands in for a buffer whose disk has stalled (we cannot make a real disk hang
    on cue); append waits until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.cycles: list[Cycle] = []

    async def append(self, cycle: Cycle) -> list[int]:
        await self.release.wait()
        self.cycles.append(cycle)
        start = sum(len(c.records) for c in self.cycles[:-1])
        return list(range(start + 1, start + 1 + len(cycle.records)))


async def test_stalled_buffer_makes_pollers_wait_with_bounded_queue() -> None:
    ob = StalledOutbox()
    writer = CycleWriter(ob, capacity=2)  # type: ignore[arg-type]
    task = asyncio.create_task(writer.run())
    submits = [asyncio.create_task(writer.submit([rec("d", i)])) for i in range(6)]
    await asyncio.sleep(0.05)
    assert writer.queue.qsize() <= writer.queue.maxsize == 2
    assert not any(s.done() for s in submits)       # everybody waits: back-pressure
    # The watchdog's view: submitters wait and no append has finished.
    assert writer.waiting == 6
    assert writer.stalled_for(time.monotonic() + 120) >= 120
    ob.release.set()
    await asyncio.gather(*submits)
    assert sum(len(c.records) for c in ob.cycles) == 6
    assert writer.waiting == 0 and writer.stalled_for(time.monotonic() + 120) == 0.0
    task.cancel()


class FailingOutbox:
    async def append(self, cycle: Cycle) -> list[int]:
        raise BufferWriteError("disk full (SQLITE_FULL)")


async def test_failed_commit_reaches_every_submitter() -> None:
    writer = CycleWriter(FailingOutbox(), capacity=4)  # type: ignore[arg-type]
    task = asyncio.create_task(writer.run())
    results = await asyncio.gather(writer.submit([rec("a", 1)]), writer.submit([rec("b", 2)]),
                                   return_exceptions=True)
    assert all(isinstance(r, BufferWriteError) for r in results)
    assert writer.last_error and "disk full" in writer.last_error
    task.cancel()


async def test_empty_submit_is_free() -> None:
    writer = CycleWriter(FailingOutbox(), capacity=2)  # type: ignore[arg-type]
    assert await writer.submit([]) == []


async def test_failing_appends_are_not_a_stall() -> None:
    """A disk that answers with errors is retried and reported, not a hung one: the
    watchdog must not restart the gateway for it (a restart would not mend a full disk)."""
    writer = CycleWriter(FailingOutbox(), capacity=2)  # type: ignore[arg-type]
    task = asyncio.create_task(writer.run())
    with pytest.raises(BufferWriteError):
        await writer.submit([rec("a", 1)])
    assert writer.stalled_for() == 0.0
    task.cancel()


class CorruptOutbox:
    """A buffer found damaged while running: every append raises BufferCorrupt."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def append(self, cycle: Cycle) -> list[int]:
        await self.release.wait()
        raise BufferCorrupt("b.db: damaged while appending: database disk image is malformed")


@pytest.mark.parametrize("found", ["at_once", "mid_commit"])
async def test_damaged_buffer_ends_the_writer_and_nobody_waits_forever(found: str) -> None:
    ob = CorruptOutbox()
    writer = CycleWriter(ob, capacity=2)  # type: ignore[arg-type]
    task = asyncio.create_task(writer.run())
    if found == "at_once":
        ob.release.set()
    # More submitters than the queue holds: some wait in the commit, some in the queue,
    # some for room in the queue.
    submits = [asyncio.create_task(writer.submit([rec("d", i)])) for i in range(6)]
    for _ in range(5):
        await asyncio.sleep(0)
    ob.release.set()
    results = await asyncio.wait_for(asyncio.gather(*submits, return_exceptions=True), 10)
    assert all(isinstance(r, WriterFailed) for r in results), results
    assert isinstance(results[0].__cause__, BufferCorrupt)
    assert "BufferCorrupt" in str(results[0]) and "malformed" in str(results[0])
    with pytest.raises(BufferCorrupt):
        await asyncio.wait_for(task, 10)        # the supervisor sees why the writer ended
    with pytest.raises(WriterFailed):
        await writer.submit([rec("late", 1)])   # at once, not queued for nobody
    await writer.drain()                        # nothing to commit, nothing raised
    assert writer.last_error and "BufferCorrupt" in writer.last_error


async def test_unexpected_append_error_is_fatal_too() -> None:
    class Broken:
        async def append(self, cycle: Cycle) -> list[int]:
            raise RuntimeError("executor shut down")

    writer = CycleWriter(Broken(), capacity=2)  # type: ignore[arg-type]
    task = asyncio.create_task(writer.run())
    with pytest.raises(WriterFailed):
        await asyncio.wait_for(writer.submit([rec("a", 1)]), 10)
    with pytest.raises(RuntimeError):
        await asyncio.wait_for(task, 10)


async def test_a_refused_record_fails_only_its_submitter(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "b.db", gateway="gw", max_bytes=64 << 20) as ob:
        writer = CycleWriter(ob, capacity=8)
        task = asyncio.create_task(writer.run())
        bad = Record(seq=0, ts=-5, device="bad", kind="sample", body={"values": {"x": 1}})
        results = await asyncio.gather(writer.submit([rec("a", 1)]), writer.submit([bad]),
                                       writer.submit([rec("b", 2)]), return_exceptions=True)
        assert isinstance(results[1], ValueError) and "ts" in str(results[1])
        assert results[0] == [1] and results[2] == [2]
        assert not task.done()                  # the writer goes on
        assert await writer.submit([rec("c", 3)]) == [3]
        task.cancel()
