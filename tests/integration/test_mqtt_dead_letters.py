"""A poison MQTT message (a batch whose storing raises every time) does not stall
``mqtt-ingest`` for every gateway: after ``MAX_ATTEMPTS`` tries it is parked in
``ingest_dead_letters`` with its payload, shown by ``GET /api/v1/ingest/dead-letters``, and
the next gateway's batch is stored (real Mosquitto, SQLite)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, select

from buffer.records import records_topic
from cloud.app import create_app
from cloud.auth import create_gateway
from cloud.core.db import Database
from cloud.core.models import records
from cloud.ingest import mqtt as mqtt_ingest
from tests.fixtures.cloud import ADMIN_HEADERS, add_admin
from tests.fixtures.ingest import batch_bytes, record
from tests.fixtures.mosquitto import Mosquitto
from tests.fixtures.waiting import wait_for_async
from tests.integration.test_uplink_mqtt import ingest
from tests.integration.uplink_helpers import make_cloud_db

pytestmark = pytest.mark.needs_service("mosquitto")


async def test_a_poison_batch_is_parked_and_the_other_gateways_go_on(
        mosquitto: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db_url, _file, _token = await make_cloud_db(tmp_path, "gw-poison")
    async with Database(db_url) as db:
        await create_gateway(db, "gw-good")

    async def breaks_on_poison(_session: Any, gateway_id: str, _new: Any) -> None:
        if gateway_id == "gw-poison":
            raise RuntimeError("an applier's bug")

    monkeypatch.setattr(mqtt_ingest, "APPLIERS", [breaks_on_poison])
    monkeypatch.setattr(mqtt_ingest, "MAX_ATTEMPTS", 2)
    monkeypatch.setattr(mqtt_ingest, "RETRY_BASE_S", 0.01)
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-publisher")
    publisher.connect("127.0.0.1", mosquitto.port)
    publisher.loop_start()
    try:
        async with ingest(mosquitto, db_url):
            for gateway in ("gw-poison", "gw-good"):
                publisher.publish(records_topic(gateway), batch_bytes(
                    gateway, [record(1), record(2)]), qos=1).wait_for_publish(10)

            async def stored_good() -> bool:
                async with Database(db_url) as db, db.sessions() as s:
                    n = await s.scalar(select(func.count()).select_from(records)
                                       .where(records.c.gateway_id == "gw-good"))
                return n == 2
            await wait_for_async(stored_good, "gw-good's batch stored", timeout=30)
    finally:
        publisher.loop_stop()
        publisher.disconnect()

    await add_admin(db_url)
    app = create_app(db_url)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://cloud") as client:
        page = (await client.get("/api/v1/ingest/dead-letters", headers=ADMIN_HEADERS)).json()
    await app.state.db.dispose()
    assert page["total"] == 1
    [parked] = page["items"]
    assert (parked["gateway_id"], parked["first_seq"], parked["last_seq"],
            parked["records"]) == ("gw-poison", 1, 2, 2)
    assert parked["attempts"] == 2 and "an applier's bug" in parked["error"]
