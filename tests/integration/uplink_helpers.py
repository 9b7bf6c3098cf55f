"""Shared by the uplink tests: the real cloud app in-process (uvicorn on a free port), a
real Outbox, and queries on the cloud database."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from buffer.records import Record
from buffer.store import Cycle, Outbox
from cloud.app import create_app
from cloud.auth import create_gateway
from cloud.core.db import Database
from cloud.core.migrate import upgrade
from tests.fixtures.waiting import wait_for_async
from tests.services import free_port

GATEWAY = "gw-test"


@dataclass
class Cloud:
    url: str
    db_url: str
    db_file: Path
    token: str
    gateway: str

    def seqs(self, gateway: str | None = None) -> list[int]:
        """Every stored seq of the gateway, with repeats if the cloud ever stored one twice."""
        with sqlite3.connect(self.db_file) as conn:
            rows = conn.execute("SELECT seq FROM records WHERE gateway_id = ? ORDER BY seq",
                                (gateway or self.gateway,)).fetchall()
        return [int(r[0]) for r in rows]


async def make_cloud_db(tmp_path: Path, gateway: str = GATEWAY) -> tuple[str, Path, str]:
    db_file = tmp_path / "cloud.db"
    url = f"sqlite+aiosqlite:///{db_file}"
    await upgrade(url)
    async with Database(url) as db:
        token = await create_gateway(db, gateway)
    return url, db_file, token


@asynccontextmanager
async def running_cloud(tmp_path: Path, *, max_body_bytes: int = 8 << 20,
                        appliers: Sequence[Any] = (), port: int | None = None,
                        gateway: str = GATEWAY) -> AsyncIterator[Cloud]:
    """The real cloud app (cloud.app.create_app) on 127.0.0.1 over real HTTP."""
    url, db_file, token = await make_cloud_db(tmp_path, gateway)
    app = create_app(url, max_body_bytes=max_body_bytes, appliers=appliers)
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                           access_log=False, lifespan="on"))
    task = asyncio.create_task(server.serve())
    await wait_for_async(lambda: server.started, "uvicorn serving the cloud app")
    try:
        yield Cloud(f"http://127.0.0.1:{port}", url, db_file, token, gateway)
    finally:
        server.should_exit = True
        await task


def state_record(i: int, pad: int = 0) -> Record:
    return Record(seq=0, ts=1_700_000_000_000 + i, device="cnc-03", kind="state",
                  body={"state": "running" + "x" * pad, "prev": "idle", "code": i})


async def fill(outbox: Outbox, n: int, *, per_cycle: int = 500, pad: int = 0) -> list[int]:
    seqs: list[int] = []
    for start in range(0, n, per_cycle):
        recs = [state_record(i, pad) for i in range(start, min(n, start + per_cycle))]
        seqs += await outbox.append(Cycle(records=recs))
    return seqs


class CountingTransport(httpx.AsyncHTTPTransport):
    """Counts requests the uplink really made."""

    def __init__(self) -> None:
        super().__init__()
        self.requests = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        return await super().handle_async_request(request)


def open_outbox(path: Path, gateway: str = GATEWAY) -> Outbox:
    return Outbox(path, gateway=gateway, max_bytes=64 << 20)
