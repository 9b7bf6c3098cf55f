"""Child processes for tests/faults/test_store_faults.py (run as a script, never imported by
pytest): an edge-like writer that is killed with SIGKILL, a writer under RLIMIT_FSIZE, a
writer under strace's fsync fault injection, and a NORMAL-mode writer that dies uncleanly."""

from __future__ import annotations

import asyncio
import json
import os
import random
import resource
import signal
import sys

from buffer import BufferWriteError, Cycle, Outbox, Record

GW = "gw-faults"
MB = 2**20
DEVICES = ("cnc-1", "cnc-2", "imm-7")
TAGS = ("good", "scrap")


def next_cycle(base: dict[tuple[str, str], int], rng: random.Random, ts: int) -> Cycle:
    """Counts derived from the stored baselines, the way the daemon derives them."""
    records: list[Record] = []
    new: dict[tuple[str, str], int] = {}
    for device in DEVICES:
        for tag in TAGS:
            before = base.get((device, tag))
            after = (before or 0) + rng.randint(0, 3)
            if before is not None and after == before:
                continue
            records.append(Record(0, ts, device, "count", {
                "tag": tag, "counts": tag, "delta": after - (before or 0),
                "raw_before": before, "raw_after": after, "reset": False}))
            new[(device, tag)] = after
        records.append(Record(0, ts, device, "sample", {"values": {"spindle": rng.random()}}))
    return Cycle(records, new)


async def writer(path: str) -> None:
    rng = random.Random(os.getpid())
    async with Outbox(path, gateway=GW, max_bytes=256 * MB) as ob:
        base = await ob.baselines()
        print("ready", flush=True)
        ts = 1_700_000_000_000
        while True:
            cycle = next_cycle(base, rng, ts)
            await ob.append(cycle)
            base.update(cycle.baselines)
            ts += 1


async def disk_full(path: str) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    out: dict[str, object] = {}
    rng = random.Random(1)
    async with Outbox(path, gateway=GW, max_bytes=256 * MB) as ob:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 * MB, hard))
        base = await ob.baselines()
        stored: list[int] = []
        cycle = next_cycle(base, rng, 1)
        for _ in range(100_000):
            try:
                stored += await ob.append(cycle)
            except BufferWriteError as exc:
                out["error"] = str(exc)
                break
            base.update(cycle.baselines)
            cycle = next_cycle(base, rng, 1)
        out["stats_error"] = (await ob.stats()).last_error
        # a second try while still full fails the same way, and the outbox stays usable
        try:
            await ob.append(cycle)
            out["second_try"] = "stored"
        except BufferWriteError:
            out["second_try"] = "failed"
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # "free space"
        out["last_ok"] = stored[-1] if stored else 0
        out["retry_seqs"] = await ob.append(cycle)
        base.update(cycle.baselines)
        out["after_seqs"] = await ob.append(next_cycle(base, rng, 2))
        out["stats_after"] = (await ob.stats()).last_error
    print(json.dumps(out), flush=True)


async def fsync_fault(path: str) -> None:
    rng = random.Random(2)
    errors: list[str] = []
    seqs: list[int] = []
    async with Outbox(path, gateway=GW, max_bytes=256 * MB) as ob:
        base = await ob.baselines()
        for _ in range(60):
            cycle = next_cycle(base, rng, 1)
            for _attempt in range(5):
                try:
                    seqs += await ob.append(cycle)
                    break
                except BufferWriteError as exc:
                    errors.append(str(exc))
            base.update(cycle.baselines)
    print(json.dumps({"errors": errors, "seqs": seqs}), flush=True)


async def normal_crash(path: str) -> None:
    rng = random.Random(3)
    async with Outbox(path, gateway=GW, max_bytes=256 * MB, synchronous="NORMAL") as ob:
        base = await ob.baselines()
        last = 0
        for _ in range(20):
            cycle = next_cycle(base, rng, 1)
            last = (await ob.append(cycle))[-1]
            base.update(cycle.baselines)
        print(json.dumps({"last": last}), flush=True)
        os._exit(0)  # no close: as after a power cut, the run never says it ended cleanly


if __name__ == "__main__":
    import structlog

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    mode, target = sys.argv[1], sys.argv[2]
    fn = {"writer": writer, "disk_full": disk_full, "fsync_fault": fsync_fault,
          "normal_crash": normal_crash}[mode]
    asyncio.run(fn(target))
