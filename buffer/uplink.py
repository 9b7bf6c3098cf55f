"""Uplinks: how stored records leave the gateway, over HTTP or MQTT, one attempt per call.

Errors (translated where httpx and paho enter our code)::

    UplinkError                 root; ``kind`` names it in the sync loop's stats
    ├── UplinkAuthError         401/403, bad MQTT credentials, unreadable token file:
    │                           retrying cannot help until the token changes
    ├── UplinkTooLarge          413: send fewer records
    ├── UplinkUnavailable       5xx, 408/429, network errors, timeouts, broker gone: retry
    ├── UplinkSeqConflict       409 ``seq_conflict`` (or the same on the MQTT acks topic): the
    │                           cloud holds these seqs from an earlier buffer; rebase above
    │                           ``cloud_last_seq`` (``Outbox.rebase``) and resend
    └── UplinkRejected          another 4xx or an answer we cannot read: retry with backoff,
                                logged as a bug (records are never dropped)

An ``Uplink`` hands a batch to the far side and tells what the *cloud* has durably stored
(``acked_through``: the highest seq stored with all lower ones). It never retries: the sync
loop that drains the Outbox through an uplink, and decides what each error means, is the
gateway's (``edge/forwarder.py``: STYLE.md puts the retry loop in the caller, in ``edge/``).

Why MQTT does not ack the Outbox on PUBACK: a PUBACK only says the broker has the message in
memory. Mosquitto writes its persistence file at intervals, so a ``kill -9`` of the broker
loses messages it already PUBACKed. The cloud's ``mqtt-ingest`` therefore publishes
``{"acked_through", "first_seq", "last_seq"}`` (retained, QoS 1) on
``plantsync/v1/<gateway>/acks`` after each batch's database commit, and the gateway acks its
Outbox through the longest run of confirmed batches from its oldest unacked record. Per
batch, not by the cumulative ``acked_through``: with several batches in flight a broker
restart can lose batch 3 and deliver batch 4, and the cloud (which assumes in-order,
stop-and-wait senders) would then acknowledge through batch 4 -- a test caught exactly
that losing records. Every reconnect republishes everything unacked.
"""

from __future__ import annotations

import abc
import asyncio
import json
import ssl
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self

import httpx
import msgpack
import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from buffer.records import acks_topic, parse_broker_url, records_topic

log = structlog.get_logger(__name__)


# --------------------------------------------------------------------------- errors


class UplinkError(Exception):
    """Root of the uplink errors. ``kind`` is the key in the sync loop's error counts
    (``edge.forwarder.ForwarderStats.errors``)."""

    kind: ClassVar[str] = "error"


class UplinkAuthError(UplinkError):
    """The cloud or broker refused our credentials (or the token file cannot be read).
    Retrying cannot help until the token changes."""

    kind = "auth"


class UplinkTooLarge(UplinkError):
    """The far side refused the batch as too large (HTTP 413). Send fewer records."""

    kind = "too_large"


class UplinkUnavailable(UplinkError):
    """The far side is not reachable or not answering now (5xx, network, timeout). Retry."""

    kind = "unavailable"


class UplinkSeqConflict(UplinkError):
    """The cloud refused the batch: its seqs belong to a numbering (incarnation) the cloud
    does not accept, because it already holds seqs through ``cloud_last_seq`` of this
    gateway from an earlier buffer (a lost or replaced buffer), or a seq it holds came
    with other content. ``incarnation`` is the one the refused batch carried."""

    kind = "seq_conflict"

    def __init__(self, message: str, *, cloud_last_seq: int, incarnation: str | None) -> None:
        super().__init__(message)
        self.cloud_last_seq = cloud_last_seq
        self.incarnation = incarnation


def _seq_conflict(doc: Any, where: str) -> UplinkSeqConflict | None:
    """The conflict an answer or confirmation describes, or None when it is not one."""
    if not isinstance(doc, dict) or doc.get("error") != "seq_conflict":
        return None
    top, inc = doc.get("cloud_last_seq"), doc.get("incarnation")
    if type(top) is not int or top < 0 or not (inc is None or isinstance(inc, str)):
        raise UplinkRejected(f"{where}: seq_conflict without cloud_last_seq (got {doc!r:.200})")
    return UplinkSeqConflict(f"{where}: {doc.get('detail') or 'seq_conflict'}",
                             cloud_last_seq=top, incarnation=inc)


class UplinkRejected(UplinkError):
    """The far side answered something we did not expect (another 4xx, an unreadable
    answer, an acknowledgement that does not move). A bug somewhere: retried with backoff."""

    kind = "rejected"


# --------------------------------------------------------------------------- interface


class Uplink(abc.ABC):
    """One way to the cloud. Long-lived: use as an async context manager.

    The caller (``edge.forwarder.Forwarder``) owns retries; an uplink performs one attempt
    per call and raises an ``UplinkError`` subclass on failure, never returns a failure value.
    """

    #: How many batches may be handed over but not yet confirmed by the cloud.
    max_in_flight: int = 1

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    @abc.abstractmethod
    async def open(self) -> None:
        """Prepare the connection and read credentials. Does not fail when the cloud is
        unreachable (the gateway must start offline); raises UplinkAuthError when the token
        file cannot be read."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the connection. Idempotent."""

    @abc.abstractmethod
    async def send(self, payload: bytes, *, last_seq: int) -> int:
        """Hand one wire batch (``buffer.records`` encoding) whose highest seq is ``last_seq``
        to the far side, once. Returns the ``acked_through`` known after the hand-over: the
        highest seq the cloud has durably stored with all lower ones (0 when unknown). It may
        be below ``last_seq`` (the cloud confirms later, see ``confirmed``) or above it.
        Pipelined uplinks (MQTT) return 0 and confirm batch by batch (``confirmed``): a
        cumulative number is only safe when batches cannot overtake or vanish one by one.
        Sending the same batch again is harmless: the cloud dedupes on (gateway, seq).
        Raises UplinkAuthError, UplinkTooLarge, UplinkUnavailable, UplinkRejected."""

    @abc.abstractmethod
    async def confirmed(self, first_seq: int, last_seq: int) -> bool:
        """Wait until the cloud confirmed it stored the batch ``first_seq..last_seq`` that
        was sent. False when the uplink knows it will not be (HTTP: the answer to ``send``
        acknowledged less). Raises UplinkUnavailable when the connection is lost or nothing
        is confirmed for too long (the Forwarder then resends from the oldest unacked
        record), UplinkRejected when the cloud's confirmation cannot be read. Idempotent; a
        confirmation is a fact about the cloud (append-only), so an old one stays valid."""

    #: The cloud's acked_through as last heard (0 when unknown).
    last_acked_through: int = 0

    async def reload(self) -> None:
        """Re-read credentials (token file) after an operator changed them; the Forwarder
        calls this on ``resume()``. Raises UplinkAuthError when the file is unreadable."""
        return None


def _read_token(token_file: Path) -> str:
    try:
        token = token_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UplinkAuthError(f"{token_file}: cannot read the gateway token ({exc.strerror}); "
                              "write the token from `plantsync-cloud admin create-gateway` "
                              "there and reload") from exc
    if not token:
        raise UplinkAuthError(f"{token_file}: the token file is empty; write the token from "
                              "`plantsync-cloud admin create-gateway` there and reload")
    return token


def _parse_acked_through(value: Any, where: str) -> int:
    if isinstance(value, dict):
        value = value.get("acked_through")
    if type(value) is not int or value < 0:
        raise UplinkRejected(f"{where}: answer has no acked_through integer >= 0 "
                             f"(got {value!r})")
    return value


# --------------------------------------------------------------------------- HTTP


class HttpUplink(Uplink):
    """``POST {url}/api/v1/ingest`` with the msgpack batch and the gateway's bearer token.

    One keep-alive ``httpx.AsyncClient``; the token is read from ``token_file`` at ``open``
    and on ``reload`` and never logged. Every request carries ``X-Plantsync-Sent-At`` (the
    gateway clock, epoch ms) so the cloud can measure clock skew.
    """

    max_in_flight = 1

    def __init__(self, url: str, *, token_file: str | Path, connect_timeout: float = 5.0,
                 read_timeout: float = 30.0, verify: bool | ssl.SSLContext = True,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"cloud.url: {url!r} is not an http(s) URL "
                             "(e.g. https://mes.example.com; resolve 'auto' first)")
        self.url = url.rstrip("/")
        self.ingest_url = f"{self.url}/api/v1/ingest"
        self.token_file = Path(token_file)
        self._timeout = httpx.Timeout(connect=connect_timeout, read=read_timeout,
                                      write=read_timeout, pool=connect_timeout)
        self._verify = verify
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._token: str | None = None
        self.last_acked_through = 0

    async def open(self) -> None:
        self._client = httpx.AsyncClient(timeout=self._timeout, verify=self._verify,
                                         transport=self._transport,
                                         limits=httpx.Limits(max_keepalive_connections=2))
        self._token = _read_token(self.token_file)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def reload(self) -> None:
        self._token = _read_token(self.token_file)

    async def confirmed(self, first_seq: int, last_seq: int) -> bool:
        return self.last_acked_through >= last_seq

    async def send(self, payload: bytes, *, last_seq: int) -> int:
        if self._client is None:
            raise RuntimeError("HttpUplink.send outside `async with`")
        if self._token is None:
            self._token = _read_token(self.token_file)
        headers = {
            "Authorization": f"Bearer {self._token}",
            "Content-Type": "application/msgpack",
            "Accept": "application/msgpack, application/json;q=0.9",
            "X-Plantsync-Sent-At": str(time.time_ns() // 1_000_000),
        }
        try:
            resp = await self._client.post(self.ingest_url, content=payload, headers=headers)
        except httpx.TimeoutException as exc:
            raise UplinkUnavailable(f"{self.ingest_url}: {type(exc).__name__} "
                                    f"(no answer within the timeout)") from exc
        except httpx.TransportError as exc:
            raise UplinkUnavailable(f"{self.ingest_url}: {type(exc).__name__}: {exc}") from exc
        except httpx.DecodingError as exc:  # a body its Content-Encoding cannot decode
            raise UplinkRejected(f"{self.ingest_url}: unreadable answer ({exc})") from exc
        status = resp.status_code
        detail = resp.text[:200].replace("\n", " ")
        if status in (401, 403):
            raise UplinkAuthError(f"{self.ingest_url}: HTTP {status}: the cloud refused the "
                                  f"token in {self.token_file} ({detail}); put a valid token "
                                  "there and reload")
        if status == 413:
            raise UplinkTooLarge(f"{self.ingest_url}: HTTP 413: batch of {len(payload)} bytes "
                                 "is too large")
        if status >= 500 or status in (408, 429):
            raise UplinkUnavailable(f"{self.ingest_url}: HTTP {status} ({detail})")
        if status == 409:
            try:
                doc = json.loads(resp.content)
            except (ValueError, RecursionError):
                doc = None
            conflict = _seq_conflict(doc, self.ingest_url)
            if conflict is not None:
                raise conflict
        if status != 200:
            raise UplinkRejected(f"{self.ingest_url}: HTTP {status} ({detail})")
        try:
            if resp.headers.get("content-type", "").startswith("application/msgpack"):
                answer = msgpack.unpackb(resp.content, raw=False)
            else:
                answer = json.loads(resp.content)
        except (ValueError, RecursionError, msgpack.ExtraData, msgpack.FormatError,
                msgpack.StackError) as exc:  # RecursionError: JSON nested too deep
            raise UplinkRejected(f"{self.ingest_url}: unreadable answer "
                                 f"({type(exc).__name__}: {exc})") from exc
        acked = _parse_acked_through(answer, self.ingest_url)
        self.last_acked_through = acked
        return acked


# --------------------------------------------------------------------------- MQTT

# MQTT 3.1.1 CONNACK 4/5, MQTT 5 0x86/0x87/0x8C: credentials refused.
_AUTH_CODES = frozenset({4, 5, 0x86, 0x87, 0x8C})


def _check_topic_level(gateway: str) -> None:
    if not gateway or any(c in gateway for c in "/+#\0$"):
        raise ValueError(f"gateway.id: {gateway!r} cannot be an MQTT topic level "
                         "(no '/', '+', '#', '$'; e.g. gw-hall1)")


@dataclass
class _AckWaiter:
    first: int
    last: int
    future: asyncio.Future[bool]


def _unpack(payload: bytes) -> Any:
    """msgpack or JSON, None when neither."""
    try:
        return msgpack.unpackb(payload, raw=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
        try:
            return json.loads(payload)
        except (ValueError, RecursionError):
            return None


def _parse_confirmation(payload: bytes, where: str) -> tuple[int, int]:
    """``{"acked_through", "first_seq", "last_seq"}`` (msgpack or JSON) -> (first, last)."""
    try:
        doc = msgpack.unpackb(payload, raw=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
        try:
            doc = json.loads(payload)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
            raise UplinkRejected(f"{where}: unreadable confirmation "
                                 f"({type(exc).__name__}: {exc})") from exc
    if not isinstance(doc, dict):
        raise UplinkRejected(f"{where}: confirmation is not a map")
    first, last = doc.get("first_seq"), doc.get("last_seq")
    if type(first) is not int or type(last) is not int or not 1 <= first <= last:
        raise UplinkRejected(f"{where}: confirmation without a first_seq..last_seq range "
                             f"(got {first!r}..{last!r})")
    return first, last


class MqttUplink(Uplink):
    """Publishes batches QoS 1 to ``plantsync/v1/<gateway>/records`` with a persistent session
    (fixed client id ``plantsync-gw-<gateway>``, clean_session False) and reads the cloud's
    confirmations from ``plantsync/v1/<gateway>/acks``. Username = gateway id, password =
    the token from ``token_file`` (anonymous when None).

    paho runs its network loop in its own thread (``loop_start``); its callbacks only hand
    events to the asyncio loop with ``call_soon_threadsafe``.
    """

    def __init__(self, broker_url: str, *, gateway: str, token_file: str | Path | None = None,
                 max_in_flight: int = 8, connect_timeout: float = 10.0,
                 puback_timeout: float = 30.0, confirm_timeout: float = 15.0,
                 keepalive: int = 30, client_id: str | None = None,
                 tls_context: ssl.SSLContext | None = None) -> None:
        _check_topic_level(gateway)
        self.host, self.port, self._tls = parse_broker_url(broker_url)
        self.broker_url = broker_url
        self.gateway = gateway
        self.topic = records_topic(gateway)
        self.acks_topic = acks_topic(gateway)
        self.token_file = Path(token_file) if token_file is not None else None
        self.max_in_flight = max_in_flight
        self.client_id = client_id or f"plantsync-gw-{gateway}"
        self._connect_timeout = connect_timeout
        self._puback_timeout = puback_timeout
        self._confirm_timeout = confirm_timeout
        self._keepalive = keepalive
        self._tls_context = tls_context
        self._client: mqtt.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected = asyncio.Event()
        self._auth_error: str | None = None
        self._pubacks: dict[int, asyncio.Future[None]] = {}
        self._waiters: list[_AckWaiter] = []
        # Batches the cloud confirmed (first, last); facts, so old ones stay valid.
        self._confirmed: deque[tuple[int, int]] = deque(maxlen=4096)
        # A confirmation we could not read (or a refusal) that nobody waited for: the next
        # confirmed() raises it, unless a readable confirmation arrives first.
        self._unreadable: UplinkRejected | UplinkSeqConflict | None = None
        self.connections = 0  # successful connects (status page: reconnects = this - 1)

    # -- lifecycle

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             clean_session=False, protocol=mqtt.MQTTv311)
        if self._tls:
            client.tls_set_context(self._tls_context or ssl.create_default_context())
        # Our window is smaller; paho's own limit must not hold messages back.
        client.max_inflight_messages_set(max(20, self.max_in_flight * 2))
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        self._client = client
        self._set_credentials()
        self._start()

    def _set_credentials(self) -> None:
        assert self._client is not None
        if self.token_file is not None:
            self._client.username_pw_set(self.gateway, _read_token(self.token_file))

    def _start(self) -> None:
        assert self._client is not None
        self._auth_error = None
        self._connected = asyncio.Event()
        self._client.connect_async(self.host, self.port, keepalive=self._keepalive)
        self._client.loop_start()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        client.disconnect()
        # loop_stop joins the network thread; keep the event loop free meanwhile.
        await asyncio.to_thread(client.loop_stop)
        self._lost("closed")

    async def reload(self) -> None:
        # A fresh client: paho's loop_start after loop_stop leaks its wake-up socket pair,
        # and our Outbox, not paho's memory, is the record of what is unacked anyway.
        await self.close()
        await self.open()

    # -- paho callbacks (network thread): hand over to asyncio, nothing else

    def _post(self, fn: Any, *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:  # loop closing during shutdown
                pass

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any,
                    reason_code: ReasonCode, properties: Any) -> None:
        if not reason_code.is_failure:
            client.subscribe(self.acks_topic, qos=1)
        self._post(self._connected_cb, int(reason_code.value), str(reason_code))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any,
                       reason_code: ReasonCode, properties: Any) -> None:
        self._post(self._lost, f"disconnected ({reason_code})")

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int,
                    reason_code: ReasonCode, properties: Any) -> None:
        self._post(self._puback_cb, mid)

    def _on_message(self, client: mqtt.Client, userdata: Any,
                    message: mqtt.MQTTMessage) -> None:
        self._post(self._cloud_ack_cb, bytes(message.payload))

    # -- the same events on the asyncio loop

    def _connected_cb(self, code: int, text: str) -> None:
        if code == 0:
            self._auth_error = None
            self.connections += 1
            self._connected.set()
            log.info("mqtt_connected", broker=self.broker_url, client_id=self.client_id)
            return
        if code in _AUTH_CODES:
            self._auth_error = (f"{self.broker_url}: the broker refused user {self.gateway!r} "
                                f"({text}); put a valid token in {self.token_file} and reload")
            # Stop paho's reconnect loop: retrying with the same credentials cannot help.
            if self._client is not None:
                self._client.disconnect()
        self._lost(f"connect refused ({text})")

    def _lost(self, why: str) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        exc = UplinkUnavailable(f"{self.broker_url}: {why}")
        for fut in self._pubacks.values():
            if not fut.done():
                fut.set_exception(exc)
        self._pubacks.clear()
        for w in self._waiters:
            if not w.future.done():
                w.future.set_exception(exc)
        self._waiters.clear()
        if was:
            log.warning("mqtt_connection_lost", broker=self.broker_url, why=why)

    def _puback_cb(self, mid: int) -> None:
        fut = self._pubacks.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _cloud_ack_cb(self, payload: bytes) -> None:
        try:
            conflict = _seq_conflict(_unpack(payload), self.acks_topic)
            if conflict is not None:
                self._refused(conflict)
                return
            first, last = _parse_confirmation(payload, self.acks_topic)
        except UplinkRejected as exc:
            log.warning("mqtt_bad_confirmation", topic=self.acks_topic, error=str(exc))
            # Which batch it was about cannot be read either: whoever waits hears it (or,
            # when nobody waits yet, the next to wait), rather than waiting out
            # confirm_timeout and blaming a missing consumer.
            waiting = [w for w in self._waiters if not w.future.done()]
            for w in waiting:
                w.future.set_exception(exc)
            self._waiters.clear()
            self._unreadable = None if waiting else exc
            return
        self._unreadable = None
        self._confirmed.append((first, last))
        keep = []
        for w in self._waiters:
            if first <= w.first and w.last <= last:
                if not w.future.done():
                    w.future.set_result(True)
            else:
                keep.append(w)
        self._waiters = keep

    def _refused(self, conflict: UplinkSeqConflict) -> None:
        """The cloud refused a batch's numbering: every waiter hears it (the Forwarder
        rebases and resends from the oldest record), or the next to wait does."""
        log.warning("mqtt_seq_conflict", topic=self.acks_topic, error=str(conflict),
                    cloud_last_seq=conflict.cloud_last_seq)
        # The numbering changes: confirmations heard so far may name seqs that are reused.
        self._confirmed.clear()
        waiting = [w for w in self._waiters if not w.future.done()]
        for w in waiting:
            w.future.set_exception(conflict)
        self._waiters.clear()
        self._unreadable = None if waiting else conflict

    # -- the interface

    async def _wait_connected(self) -> None:
        if self._client is None:
            raise RuntimeError("MqttUplink.send outside `async with`")
        if self._auth_error:
            raise UplinkAuthError(self._auth_error)
        if self._connected.is_set():
            return
        try:
            await asyncio.wait_for(self._connected.wait(), self._connect_timeout)
        except TimeoutError:
            if self._auth_error:
                raise UplinkAuthError(self._auth_error) from None
            raise UplinkUnavailable(f"{self.broker_url}: not connected after "
                                    f"{self._connect_timeout:g} s") from None

    async def send(self, payload: bytes, *, last_seq: int) -> int:
        await self._wait_connected()
        assert self._client is not None and self._loop is not None
        info = self._client.publish(self.topic, payload, qos=1)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise UplinkUnavailable(f"{self.broker_url}: publish failed "
                                    f"({mqtt.error_string(info.rc)})")
        # No await between publish and registering: the PUBACK callback runs on this loop
        # only after we yield, so it always finds the future.
        fut: asyncio.Future[None] = self._loop.create_future()
        self._pubacks[info.mid] = fut
        try:
            await asyncio.wait_for(fut, self._puback_timeout)
        except TimeoutError:
            raise UplinkUnavailable(f"{self.broker_url}: no PUBACK within "
                                    f"{self._puback_timeout:g} s") from None
        finally:
            if self._pubacks.get(info.mid) is fut:
                del self._pubacks[info.mid]
        return 0  # confirmations come batch by batch, see confirmed()

    async def confirmed(self, first_seq: int, last_seq: int) -> bool:
        if any(f <= first_seq and last_seq <= t for f, t in self._confirmed):
            return True
        unreadable, self._unreadable = self._unreadable, None
        if unreadable is not None:
            raise unreadable
        await self._wait_connected()
        assert self._loop is not None
        waiter = _AckWaiter(first_seq, last_seq, self._loop.create_future())
        self._waiters.append(waiter)
        try:
            return await asyncio.wait_for(waiter.future, self._confirm_timeout)
        except TimeoutError:
            raise UplinkUnavailable(f"{self.acks_topic}: the cloud confirmed nothing for seq "
                                    f"{first_seq}..{last_seq} within {self._confirm_timeout:g} s "
                                    "(is plantsync-cloud mqtt-ingest running?)") from None
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
