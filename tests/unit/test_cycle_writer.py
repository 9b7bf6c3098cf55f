"""The daemon's group-commit writer over a real Outbox: several pollers' records land in
one transaction, a stalled buffer makes submitters wait (bounded queue, no unbounded
memory), and a failed commit reports to every submitter with nothing stored."""

from __future__ import annotations

import asyncio
from pathlib import Path

from buffer import Outbox, Record
from buffer.store import BufferWriteError, Cycle
from edge.daemon import CycleWriter


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
    ob.release.set()
    await asyncio.gather(*submits)
    assert sum(len(c.records) for c in ob.cycles) == 6
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
