"""``plantsync-cloud mqtt-ingest``: the cloud's MQTT consumer, feeding the same ingest as HTTP.

Subscribes ``$share/<group>/plantsync/v1/+/records`` with QoS 1 and a persistent session
(fixed client id, clean_session False), so the broker keeps queueing while the consumer is
down and several consumers may share the load. Each message is one msgpack batch, stored by
``cloud.ingest.ingest_batch`` in one transaction with the same domain processing as HTTP
(cloud/ingest/appliers.py: attribution, timeline, anomalies); only after that commit is the message
acknowledged to the broker (paho manual ack), so a crash between receive and commit makes
the broker deliver it again (the (gateway, seq) dedupe makes that harmless). Then the
consumer publishes ``{"acked_through", "first_seq", "last_seq"}`` (msgpack, QoS 1, retained)
on ``plantsync/v1/<gateway>/acks``; the gateway deletes from its buffer by these batch
confirmations, not by the broker's PUBACK (a broker killed with -9 loses what it had only
in memory). A batch the ingest refuses with ``seq_conflict`` (a gateway that lost its
buffer, cloud/ingest/store.py) gets the refusal's map instead, not retained and without
``first_seq``/``last_seq``; the gateway rebases and resends.

A poison batch (storing it raises on every try, e.g. an applier's bug) must not stall every
gateway behind it: after ``MAX_ATTEMPTS`` tries it is parked in ``ingest_dead_letters``
(cloud/ingest/dead_letters.py; the API's ``GET /api/v1/ingest/dead-letters`` and the
completeness page show it), acknowledged to the broker, and the consumer goes on. It is
not confirmed to the gateway, which keeps the records and sends them again (another
attempt counted on the same row). Only when even parking fails (the database is down) does
the consumer keep retrying the one message, as before.

Trust: the gateway id comes from the topic. Over MQTT the broker's authentication vouches for
it, so a production broker MUST restrict each gateway (username = gateway id, password = its
token) to publishing on its own ``plantsync/v1/<id>/records`` and reading its own
``plantsync/v1/<id>/acks`` (mosquitto: ``pattern write plantsync/v1/%u/records``), and only
the ingest user may read all records topics and write acks. See config/mosquitto/.
"""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import dataclass
from typing import Any

import msgpack
import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion

from buffer.backoff import Backoff
from buffer.records import (
    RECORDS_TOPIC_FILTER,
    Batch,
    RecordError,
    acks_topic,
    decode_batch,
    gateway_from_topic,
    parse_broker_url,
)
from cloud.core import clock
from cloud.core.db import Database, resolve_url
from cloud.ingest.appliers import default_appliers
from cloud.ingest.dead_letters import park
from cloud.ingest.store import GatewayGone, SeqConflict, ingest_batch

__all__ = ["parse_broker_url", "run_mqtt_ingest"]

log = structlog.get_logger(__name__)

TOPIC_FILTER = RECORDS_TOPIC_FILTER
USERNAME_ENV = "PLANTSYNC_MQTT_USERNAME"
PASSWORD_ENV = "PLANTSYNC_MQTT_PASSWORD"
# the same domain processing as HTTP ingest: attribution, timeline, anomalies
APPLIERS = default_appliers()
#: Tries to store one batch before it is parked (the retry delays double from
#: RETRY_BASE_S: about 7 s in all).
MAX_ATTEMPTS = 5
RETRY_BASE_S = 0.5


@dataclass(frozen=True, slots=True)
class _Message:
    generation: int
    mid: int
    qos: int
    topic: str
    payload: bytes


async def run_mqtt_ingest(broker_url: str, db_url: str | None = None, *,
                          group: str = "plantsync", client_id: str | None = None,
                          username: str | None = None, password: str | None = None,
                          ready: asyncio.Event | None = None) -> None:
    """Consume gateway batches from the broker until cancelled.

    ``db_url`` as for ``serve`` (None: $PLANTSYNC_CLOUD_DB or the default file).
    ``username``/``password`` default to $PLANTSYNC_MQTT_USERNAME/$PLANTSYNC_MQTT_PASSWORD.
    ``ready`` is set once the subscription is granted (tests, sd_notify).
    Database errors are retried in place with capped backoff; the message is acked only
    after its batch committed. A batch that can never be stored (malformed, unknown or
    revoked gateway, gateway field not matching the topic) is logged and acked, or the
    broker would redeliver it forever.
    """
    host, port, tls = parse_broker_url(broker_url)
    db = Database(resolve_url(db_url).url)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[_Message] = asyncio.Queue()
    state = {"generation": 0}
    subscribed = asyncio.Event()
    cid = client_id or f"plantsync-ingest-{group}-{socket.gethostname()}"

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, clean_session=False,
                         protocol=mqtt.MQTTv311)
    client.manual_ack_set(True)
    user = username or os.environ.get(USERNAME_ENV)
    if user:
        client.username_pw_set(user, password or os.environ.get(PASSWORD_ENV))
    if tls:
        client.tls_set()
    client.reconnect_delay_set(min_delay=1, max_delay=30)

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            loop.call_soon_threadsafe(_log_refused, str(rc))
            return
        c.subscribe(f"$share/{group}/{TOPIC_FILTER}", qos=1)

    def on_subscribe(_c: mqtt.Client, _u: Any, _mid: int, rcs: Any, _p: Any) -> None:
        if all(not rc.is_failure for rc in rcs):
            loop.call_soon_threadsafe(subscribed.set)

    def on_disconnect(_c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        loop.call_soon_threadsafe(_lost, str(rc))

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        item = (msg.mid, msg.qos, msg.topic, bytes(msg.payload))
        loop.call_soon_threadsafe(_enqueue, item)

    def _enqueue(item: tuple[int, int, str, bytes]) -> None:
        queue.put_nowait(_Message(state["generation"], *item))

    def _lost(why: str) -> None:
        # mids of the old connection mean nothing on the next one: the broker redelivers.
        state["generation"] += 1
        subscribed.clear()
        log.warning("mqtt_ingest_disconnected", broker=broker_url, why=why)

    def _log_refused(why: str) -> None:
        log.error("mqtt_ingest_refused", broker=broker_url, why=why)

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_disconnect = on_disconnect
    client.on_message = on_message
    client.connect_async(host, port, keepalive=30)
    client.loop_start()

    async def announce_ready() -> None:
        await subscribed.wait()
        log.info("mqtt_ingest_subscribed", broker=broker_url, group=group, client_id=cid)
        if ready is not None:
            ready.set()

    ready_task = asyncio.create_task(announce_ready())
    try:
        while True:
            msg = await queue.get()
            await _handle(client, db, msg)
            if msg.generation == state["generation"]:
                client.ack(msg.mid, msg.qos)
    finally:
        ready_task.cancel()
        client.disconnect()
        await asyncio.to_thread(client.loop_stop)
        await db.dispose()


async def _handle(client: mqtt.Client, db: Database, msg: _Message) -> None:
    gateway = gateway_from_topic(msg.topic)
    if gateway is None:
        log.error("mqtt_ingest_bad_topic", topic=msg.topic)
        return
    try:
        batch = decode_batch(msg.payload)
    except RecordError as exc:
        log.error("mqtt_ingest_bad_batch", gateway=gateway, field=exc.field, problem=exc.problem)
        return
    if batch.gateway != gateway:
        log.error("mqtt_ingest_gateway_mismatch", topic=msg.topic, batch_gateway=batch.gateway,
                  fix="the broker ACL must bind each gateway to its own topic")
        return
    backoff = Backoff(base=RETRY_BASE_S, cap=30.0)
    attempts = 0
    while True:
        try:
            result = await ingest_batch(db, gateway, batch, received_ms=clock.now_ms(),
                                        appliers=APPLIERS)
            break
        except GatewayGone:
            log.error("mqtt_ingest_unknown_gateway", gateway=gateway,
                      fix="plantsync-cloud admin create-gateway, or remove it from the broker")
            return
        except SeqConflict as exc:
            # The refusal the HTTP answer's 409 carries. Not retained (a stale refusal must
            # not greet the next connection) and without first_seq/last_seq, so a gateway
            # older than this answer reads it as unreadable and resends, never as a
            # confirmation. store.py logged it.
            client.publish(acks_topic(gateway), msgpack.packb(exc.to_json()), qos=1,
                           retain=False)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the database or a bug: retry, then park the batch
            attempts += 1
            error = f"{type(exc).__name__}: {exc}"
            if attempts >= MAX_ATTEMPTS and await _parked(db, batch, msg.payload, error,
                                                          attempts):
                return
            delay = backoff.next_delay()
            log.error("mqtt_ingest_store_failed", gateway=gateway, error=error,
                      attempt=attempts, retry_in_s=round(delay, 2))
            await asyncio.sleep(delay)
    # The range says which batch was stored: a gateway with several batches in flight
    # must not infer the earlier ones from acked_through (see buffer/uplink.py).
    confirmation = {"acked_through": result.acked_through}
    if batch.records:
        confirmation |= {"first_seq": batch.records[0].seq, "last_seq": batch.records[-1].seq}
    client.publish(acks_topic(gateway), msgpack.packb(confirmation), qos=1,
                   retain=True)


async def _parked(db: Database, batch: Batch, payload: bytes, error: str,
                  attempts: int) -> bool:
    """Park ``batch`` in the dead-letter table; False when that fails too (the database
    is unreachable: the caller keeps retrying the message)."""
    try:
        await park(db, batch, payload, error, attempts)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.error("mqtt_ingest_park_failed", gateway=batch.gateway, error=str(exc))
        return False
    log.error("mqtt_ingest_parked", gateway=batch.gateway, attempts=attempts, error=error,
              first_seq=batch.records[0].seq if batch.records else None,
              last_seq=batch.records[-1].seq if batch.records else None,
              fix="see GET /api/v1/ingest/dead-letters; the gateway sends it again")
    return True
