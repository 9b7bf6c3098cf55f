"""MqttUplink + Forwarder -> Mosquitto -> cloud mqtt-ingest -> the cloud database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from buffer.uplink import MqttUplink, UplinkUnavailable
from cloud.ingest import run_mqtt_ingest
from edge.forwarder import Forwarder
from tests.fixtures.mosquitto import Mosquitto
from tests.fixtures.waiting import wait_for_async
from tests.integration.uplink_helpers import GATEWAY, fill, make_cloud_db, open_outbox

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
    import sqlite3

    with sqlite3.connect(db_file) as conn:   # the consumer ran the domain appliers too
        assert conn.execute("SELECT count(*) FROM machine_events").fetchone()[0] == len(seqs)


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
                await wait_for_async(fw.stats, "drain under way",
                                     until=lambda s: (s.last_ack_seq or 0) >= 2_000)
                await asyncio.to_thread(mosquitto.restart, kill=kill)
                await wait_for_async(fw.stats, "drain complete after the broker restart",
                                     until=lambda s: s.last_ack_seq == seqs[-1], timeout=180)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        assert stored(db_file) == seqs  # nothing lost, nothing twice
        assert (await outbox.stats()).backlog == 0
        assert up.connections >= 2  # it did lose the broker and reconnect


CONFIG = Path(__file__).resolve().parents[2] / "config" / "mosquitto"


@pytest.fixture
def secured_broker(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A broker with passwords and the shipped ACL (config/mosquitto/acl.conf)."""
    import subprocess

    from tests.services import free_port, require_binary

    d = tmp_path_factory.mktemp("secured")
    passwd = d / "passwd"
    tool = require_binary("mosquitto_passwd", "mosquitto")
    subprocess.run([tool, "-c", "-b", str(passwd), GATEWAY, "psg_right"], check=True)
    subprocess.run([tool, "-b", str(passwd), "plantsync-ingest", "ingest-pw"], check=True)
    broker = Mosquitto(require_binary("mosquitto"), d, free_port(), anonymous=False,
                       extra_config=f"password_file {passwd}\nacl_file {CONFIG / 'acl.conf'}\n")
    broker.start()
    yield broker
    broker.stop()


async def test_bad_credentials_stop_until_resume_and_acl_allows_own_topics(
        tmp_path: Path, secured_broker: Mosquitto) -> None:
    db_url, db_file, _ = await make_cloud_db(tmp_path)
    token = tmp_path / "token"
    token.write_text("psg_wrong\n")
    ready = asyncio.Event()
    consumer = asyncio.create_task(run_mqtt_ingest(
        secured_broker.url, db_url, client_id="ingest-acl", username="plantsync-ingest",
        password="ingest-pw", ready=ready))
    try:
        await asyncio.wait_for(ready.wait(), 30)
        async with open_outbox(tmp_path / "buf.db") as outbox:
            seqs = await fill(outbox, 500)
            async with uplink(secured_broker, token_file=token) as up:
                fw = forwarder(outbox, up, max_records=100)
                task = asyncio.create_task(fw.run())
                try:
                    await wait_for_async(lambda: fw.state, "auth_failed",
                                         until=lambda state: state == "auth_failed")
                    await asyncio.sleep(0.5)
                    s = fw.stats()
                    assert s.state == "auth_failed" and s.errors == {"auth": 1}
                    assert "psg_wrong" not in (s.last_error or "")
                    assert up.connections == 0
                    token.write_text("psg_right\n")
                    fw.resume()
                    await wait_for_async(fw.stats, "drained",
                                         until=lambda s: s.last_ack_seq == seqs[-1])
                finally:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
        assert stored(db_file) == seqs
    finally:
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)


async def test_consumer_down_then_up_gets_the_queued_batches(tmp_path: Path,
                                                             mosquitto: Mosquitto) -> None:
    """The consumer's persistent session: the broker queues while mqtt-ingest is down."""
    db_url, db_file, _ = await make_cloud_db(tmp_path)
    async with ingest(mosquitto, db_url):
        pass  # creates the session and its shared subscription, then goes away
    async with open_outbox(tmp_path / "buf.db") as outbox:
        seqs = await fill(outbox, 1_000)
        async with uplink(mosquitto, max_in_flight=20, confirm_timeout=60) as up:
            fw = forwarder(outbox, up, max_records=100)
            drain = asyncio.create_task(fw.drain())
            await wait_for_async(fw.stats, "all published",
                                 until=lambda s: s.batches_sent == 10)
            assert (await outbox.stats()).backlog == 1_000  # nothing confirmed yet
            async with ingest(mosquitto, db_url):
                assert await asyncio.wait_for(drain, 60) == seqs[-1]
    assert stored(db_file) == seqs


async def test_in_flight_window_bounds_what_is_published(tmp_path: Path,
                                                        mosquitto: Mosquitto) -> None:
    """Window 4 and no consumer: four batches reach the broker, then the Forwarder waits
    for the oldest one's confirmation instead of publishing the rest of the backlog."""
    import threading

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from buffer.records import decode_batch, records_topic

    seen: list[tuple[int, int]] = []
    subscribed = threading.Event()
    watcher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="window-watcher")
    watcher.on_connect = lambda c, u, f, rc, p: c.subscribe(records_topic(GATEWAY), qos=1)
    watcher.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()

    def on_message(c: Any, u: Any, msg: Any) -> None:
        b = decode_batch(msg.payload)
        seen.append((b.records[0].seq, b.records[-1].seq))

    watcher.on_message = on_message
    watcher.connect("127.0.0.1", mosquitto.port)
    watcher.loop_start()
    try:
        assert await asyncio.to_thread(subscribed.wait, 30)
        async with open_outbox(tmp_path / "buf.db") as outbox:
            await fill(outbox, 2_000)
            async with uplink(mosquitto, max_in_flight=4, confirm_timeout=60) as up:
                fw = forwarder(outbox, up, max_records=100)
                waits: list[tuple[int, int]] = []
                real_confirmed = up.confirmed

                async def spy(first: int, last: int) -> bool:
                    waits.append((first, last))
                    return await real_confirmed(first, last)

                up.confirmed = spy  # type: ignore[method-assign]
                drain = asyncio.create_task(fw.drain())
                try:
                    # blocked on the oldest batch's confirmation, four out
                    await wait_for_async(lambda: (list(waits), list(seen)), "window full",
                                         until=lambda ws: ws[0] and len(ws[1]) >= 4)
                    await asyncio.sleep(0.5)  # it stays blocked: nothing more goes out
                    assert waits == [(1, 100)]
                    assert seen == [(1, 100), (101, 200), (201, 300), (301, 400)]
                    s = fw.stats()
                    assert s.batches_sent == 4 and s.in_flight == 4
                    assert (await outbox.stats()).backlog == 2_000
                finally:
                    drain.cancel()
                    await asyncio.gather(drain, return_exceptions=True)
    finally:
        watcher.loop_stop()
        watcher.disconnect()
