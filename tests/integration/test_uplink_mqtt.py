"""MqttUplink + Forwarder -> Mosquitto -> cloud mqtt-ingest -> the cloud database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from buffer.uplink import Forwarder, MqttUplink, UplinkUnavailable
from cloud.mqtt_ingest import run_mqtt_ingest
from tests.fixtures.mosquitto import Mosquitto
from tests.integration.uplink_helpers import GATEWAY, fill, make_cloud_db, open_outbox, wait_for

pytestmark = pytest.mark.needs_service("mosquitto")


@asynccontextmanager
async def ingest(broker: Mosquitto, db_url: str) -> AsyncIterator[asyncio.Task[None]]:
    ready = asyncio.Event()
    task = asyncio.create_task(run_mqtt_ingest(broker.url, db_url, client_id="ingest-test",
                                               ready=ready))
    await asyncio.wait_for(ready.wait(), 30)
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def uplink(broker: Mosquitto, **kw: Any) -> MqttUplink:
    kw.setdefault("connect_timeout", 5.0)
    kw.setdefault("puback_timeout", 5.0)
    kw.setdefault("confirm_timeout", 5.0)
    return MqttUplink(broker.url, gateway=GATEWAY, **kw)


def forwarder(outbox: Any, up: MqttUplink, **kw: Any) -> Forwarder:
    return Forwarder(outbox, up, gateway=GATEWAY, backoff_base=0.05, backoff_cap=0.5,
                     idle_interval=0.05, **kw)


def stored(db_file: Path) -> list[int]:
    import sqlite3

    with sqlite3.connect(db_file) as conn:
        return [int(r[0]) for r in conn.execute(
            "SELECT seq FROM records WHERE gateway_id = ? ORDER BY seq", (GATEWAY,))]


async def test_drain_via_mqtt_into_the_cloud(tmp_path: Path, mosquitto: Mosquitto) -> None:
    db_url, db_file, _ = await make_cloud_db(tmp_path)
    async with ingest(mosquitto, db_url), open_outbox(tmp_path / "buf.db") as outbox:
        seqs = await fill(outbox, 3_000)
        async with uplink(mosquitto, max_in_flight=4) as up:
            fw = forwarder(outbox, up, max_records=200)
            assert await fw.drain() == seqs[-1]
        assert (await outbox.stats()).backlog == 0
        assert stored(db_file) == seqs
        assert fw.stats().batches_sent == 15


async def test_no_consumer_means_no_ack_and_nothing_deleted(tmp_path: Path,
                                                           mosquitto: Mosquitto) -> None:
    """PUBACK alone does not delete: only the cloud's confirmation does."""
    async with open_outbox(tmp_path / "buf.db") as outbox:
        await fill(outbox, 100)
        async with uplink(mosquitto, confirm_timeout=0.5) as up:
            with pytest.raises(UplinkUnavailable, match="confirmed nothing"):
                await forwarder(outbox, up, max_records=50).drain()
        assert (await outbox.stats()).backlog == 100


@pytest.mark.slow
@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "kill9"])
async def test_broker_restart_mid_drain(tmp_path: Path, mosquitto: Mosquitto,
                                        kill: bool) -> None:
    db_url, db_file, _ = await make_cloud_db(tmp_path)
    async with ingest(mosquitto, db_url), open_outbox(tmp_path / "buf.db") as outbox:
        seqs = await fill(outbox, 20_000)
        async with uplink(mosquitto, max_in_flight=4) as up:
            fw = forwarder(outbox, up, max_records=100)
            task = asyncio.create_task(fw.run())
            try:
                await wait_for(lambda: (fw.stats().last_ack_seq or 0) >= 2_000,
                               what="drain under way")
                await asyncio.to_thread(mosquitto.restart, kill=kill)
                await wait_for(lambda: fw.stats().last_ack_seq == seqs[-1], timeout=180,
                               what="drain complete after the broker restart")
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        assert stored(db_file) == seqs  # nothing lost, nothing twice
        assert (await outbox.stats()).backlog == 0
        assert up.connections >= 2  # it did lose the broker and reconnect
