"""Periodic cloud work (the anomaly sweep, notification delivery, maintenance checks):
jobs registered on ``app.state.jobs`` run in the ``serve`` process while it is up.

A job is ``async def job(db: Database, now_ms: int) -> None``; it must be idempotent
(several cloud processes on one PostgreSQL may run it at once, and a crash may repeat
it), and it gets the time as an argument so tests can pin it. One failing job is
logged and retried on the next round; it never stops the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import structlog

from cloud.core import clock
from cloud.core.db import Database

log = structlog.get_logger(__name__)

JobFn = Callable[[Database, int], Awaitable[object]]   # what a job returns is ignored


@dataclass(frozen=True, slots=True)
class Job:
    name: str
    fn: JobFn
    every_s: float


async def run_jobs_once(app: Any, now: int | None = None) -> None:
    """Run every registered job once, in order (tests call this with a pinned ``now``)."""
    for job in app.state.jobs:
        await _run(app.state.db, job, clock.now_ms() if now is None else now)


async def _run(db: Database, job: Job, now: int) -> None:
    try:
        await job.fn(db, now)
    except asyncio.CancelledError:
        raise
    except Exception:  # one broken job must not stop the others
        log.exception("job_failed", job=job.name)


@asynccontextmanager
async def job_runner(app: Any) -> AsyncIterator[None]:
    """A lifespan hook: run each job every ``every_s`` seconds until shutdown."""

    async def loop(job: Job) -> None:
        while True:
            await asyncio.sleep(job.every_s)
            await _run(app.state.db, job, clock.now_ms())

    tasks = [asyncio.create_task(loop(j), name=f"job:{j.name}") for j in app.state.jobs]
    try:
        yield
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
