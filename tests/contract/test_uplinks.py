"""The uplink contract (``buffer/uplink.py``), one suite run against both uplinks.

The far side is real: for ``http`` the cloud app (``cloud.app.create_app``, what
``plantsync-cloud serve`` runs) over real HTTP; for ``mqtt`` Mosquitto with the cloud's
``mqtt-ingest`` consumer (``cloud.ingest.run_mqtt_ingest``) writing into a real cloud
database. The uplink reaches it through a TCP relay (``peers.Relay``) the test can spoil.
A batch counts as delivered as the Forwarder counts it (``edge/forwarder.py``): ``send``,
then ``confirmed``.

==================================  ==============================  ======================
situation                           how                             the uplink raises
==================================  ==============================  ======================
refused                             nothing listens                 UplinkUnavailable
an answer that cannot be read       http: a 200 with a junk body;   UplinkRejected
                                    mqtt: a junk confirmation on
                                    the acks topic
a peer that speaks another          junk bytes from the first one   UplinkUnavailable
protocol
slow                                accepted, never answered (at    UplinkUnavailable
                                    connect, and mid-session)
dropped mid-send                    the connection is reset with    UplinkUnavailable, and
                                    the request half forwarded      nothing claimed stored
                                                                    that the cloud lacks
credentials refused                 http 401 / 403; mqtt CONNACK    UplinkAuthError, also
                                    "not authorised"                on the next call,
                                                                    until ``reload()``
==================================  ==============================  ======================

After every retryable error the same uplink object delivers once the far side is well
again (retried as the Forwarder would), and the cloud stores each record once. Nothing may
hang: every call is bounded by ``HANG_S`` (a generous bound, not a stopwatch).
"""

from __future__ import annotations

import abc
import asyncio
import sqlite3
import subprocess
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from buffer.records import Record, acks_topic, encode_batch, records_topic
from buffer.uplink import (
    HttpUplink,
    MqttUplink,
    Uplink,
    UplinkAuthError,
    UplinkError,
    UplinkRejected,
    UplinkUnavailable,
)
from cloud.auth import create_api_token, create_user
from cloud.core.db import Database
from cloud.ingest import run_mqtt_ingest
from tests.contract.peers import JUNK, HttpAnswer, Relay
from tests.fixtures.mosquitto import Mosquitto
from tests.integration.uplink_helpers import GATEWAY, make_cloud_db, running_cloud
from tests.services import free_port, require_binary

SHORT_S = 1.5       # connect / answer timeouts of an uplink meant to meet a slow peer
NORMAL_S = 10.0     # the same for an uplink that must get through a loaded machine
HANG_S = 20.0       # longer than this is a hang
T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]

# Bodies a far side may answer that are no answer: noise, a proxy's error page, JSON nested
# deeper than a parser's recursion, and well-formed JSON of the wrong shape.
GARBAGE = {
    "noise": b"\xc1\xc1\xc1\xc1",
    "html": b"<html><body>502 Bad Gateway</body></html>",
    "deep-nesting": b"[" * 100_000,
    "wrong-shape": b'{"ok": true}',
}
HTTP_ONLY_GARBAGE = "undecodable-encoding"


def batch(first: int, last: int) -> bytes:
    return encode_batch(GATEWAY, [
        Record(seq=s, ts=1_700_000_000_000 + s, device="cnc-03", kind="state",
               body={"state": "running", "prev": "idle", "code": s})
        for s in range(first, last + 1)])


async def bounded(aw: Awaitable[T], what: str) -> T:
    """Await ``aw``; fail the test as a hang after HANG_S. (A task, not wait_for: a
    TimeoutError leaking from inside must not pass for our own deadline.)"""
    task = asyncio.ensure_future(aw)
    done, _ = await asyncio.wait({task}, timeout=HANG_S)
    if not done:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        pytest.fail(f"{what}: still waiting after {HANG_S} s: a hang")
    return task.result()


async def deliver(up: Uplink, first: int, last: int) -> bool:
    """One hand-over as the Forwarder makes it: send, then the cloud's confirmation.
    True when the uplink says the cloud stored ``first..last``."""
    async def go() -> bool:
        acked = await up.send(batch(first, last), last_seq=last)
        return acked >= last or await up.confirmed(first, last)
    return await bounded(go(), f"deliver {first}..{last}")


async def deliver_retrying(up: Uplink, first: int, last: int) -> bool:
    """Deliver, retrying what the Forwarder retries (UplinkUnavailable, UplinkRejected)
    until the uplink says the cloud stored it; gives up after HANG_S."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HANG_S
    while True:
        try:
            return await deliver(up, first, last)
        except (UplinkUnavailable, UplinkRejected):
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.1)


async def claims(up: Uplink, first: int, last: int) -> bool:
    """Whether the uplink now says the cloud stored ``first..last``."""
    try:
        return await bounded(up.confirmed(first, last), "confirmed")
    except UplinkError:
        return False


# --------------------------------------------------------------------------- far sides


@dataclass
class Far:
    """The far side as an uplink sees it: where to connect, with which credentials."""

    port: int
    token_file: Path | None
    relay: Relay | None = None
    stored: Callable[[], list[int]] = list     # every stored seq, repeats included
    right_token: str | None = None
    db_url: str | None = None


def write_token(tmp_path: Path, token: str, name: str = "token") -> Path:
    path = tmp_path / name
    path.write_text(token + "\n")
    return path


def _stored(db_file: Path) -> Callable[[], list[int]]:
    def seqs() -> list[int]:
        with sqlite3.connect(db_file) as conn:
            return [int(r[0]) for r in conn.execute(
                "SELECT seq FROM records WHERE gateway_id = ? ORDER BY seq", (GATEWAY,))]
    return seqs


class Rig(abc.ABC):
    """How one uplink's far side is built and spoilt; ``how`` names it in test ids."""

    name: ClassVar[str]
    how: ClassVar[dict[str, str]]
    garbage: ClassVar[tuple[str, ...]]
    auth_variants: ClassVar[tuple[str, ...]]

    @abc.abstractmethod
    def far(self, tmp_path: Path, *, secured: bool = False) -> AbstractAsyncContextManager[Far]:
        """The real far side behind a relay (``secured``: credentials are checked)."""

    @abc.abstractmethod
    def junk_far(self, tmp_path: Path, kind: str) -> AbstractAsyncContextManager[Far]:
        """A far side that answers each batch with the garbage ``kind``."""

    @abc.abstractmethod
    def uplink(self, far: Far, token_file: Path | None, timeout: float) -> Uplink:
        """The uplink under test, its connect/answer timeouts ``timeout``."""

    @abc.abstractmethod
    async def wrong_token(self, far: Far, variant: str) -> str:
        """A token the far side refuses, as ``variant`` says."""

    not_protocol: ClassVar[bytes]   # what a peer speaking another protocol sends


class HttpRig(Rig):
    name = "http"
    how: ClassVar[dict[str, str]] = {
        "refused": "nothing-listens", "garbage": "200-with-junk",
        "not-protocol": "not-http", "slow": "no-answer", "drop": "reset-mid-request",
        "auth": "status"}
    garbage = (*GARBAGE, HTTP_ONLY_GARBAGE)
    auth_variants = ("401-unknown-token", "403-user-api-token")
    not_protocol = b"\x00\xff\x13\x37 this is not HTTP\r\n\r\n"

    @asynccontextmanager
    async def far(self, tmp_path: Path, *, secured: bool = False) -> AsyncIterator[Far]:
        async with running_cloud(tmp_path) as cloud:
            port = int(cloud.url.rsplit(":", 1)[1])
            async with Relay(port) as relay:
                yield Far(relay.port, write_token(tmp_path, cloud.token), relay,
                          cloud.seqs, cloud.token, cloud.db_url)

    @asynccontextmanager
    async def junk_far(self, tmp_path: Path, kind: str) -> AsyncIterator[Far]:
        headers = [b"HTTP/1.1 200 OK"]
        if kind == HTTP_ONLY_GARBAGE:
            body = b"this is not gzip"
            headers += [b"Content-Type: application/json", b"Content-Encoding: gzip"]
        else:
            body = GARBAGE[kind]
            # noise as the msgpack the uplink asks for first; the rest as JSON
            kind_type = b"application/msgpack" if kind == "noise" else b"application/json"
            headers.append(b"Content-Type: " + kind_type)
        headers.append(b"Content-Length: %d" % len(body))
        async with HttpAnswer(b"\r\n".join(headers) + b"\r\n\r\n" + body) as server:
            yield Far(server.port, write_token(tmp_path, "psg_any"))

    def uplink(self, far: Far, token_file: Path | None, timeout: float) -> Uplink:
        assert token_file is not None
        return HttpUplink(f"http://127.0.0.1:{far.port}", token_file=token_file,
                          connect_timeout=timeout, read_timeout=timeout)

    async def wrong_token(self, far: Far, variant: str) -> str:
        if variant == "401-unknown-token":
            return "psg_wrong"
        # a user's API token presented as the gateway's: the cloud answers 403
        assert far.db_url is not None
        async with Database(far.db_url) as db:
            await create_user(db, "erp-sync", "viewer", "a-long-password")
            _, token = await create_api_token(db, "erp-sync", "erp")
        return token


class MqttRig(Rig):
    """MQTT payloads carry no content encoding: no ``undecodable-encoding`` garbage."""

    name = "mqtt"
    how: ClassVar[dict[str, str]] = {
        "refused": "nothing-listens", "garbage": "junk-on-acks-topic",
        "not-protocol": "http-answer", "slow": "no-connack-or-puback",
        "drop": "reset-mid-publish", "auth": "connack-not-authorised"}
    garbage = tuple(GARBAGE)
    auth_variants = ("bad-password",)
    not_protocol = JUNK   # an MQTT client pointed at a web server
    # paho gives up a connection that never got its CONNACK only after ``keepalive``
    # seconds; a short one lets a test see the uplink recover within HANG_S.
    keepalive = 2

    @asynccontextmanager
    async def _broker(self, tmp_path: Path, secured: bool) -> AsyncIterator[Mosquitto]:
        directory = tmp_path / "broker"
        directory.mkdir()
        extra = ""
        if secured:
            passwd = directory / "passwd"
            tool = require_binary("mosquitto_passwd", "mosquitto")
            subprocess.run([tool, "-c", "-b", str(passwd), GATEWAY, "psg_right"], check=True)
            subprocess.run([tool, "-b", str(passwd), "plantsync-ingest", "ingest-pw"],
                           check=True)
            extra = (f"password_file {passwd}\n"
                     f"acl_file {ROOT / 'config' / 'mosquitto' / 'acl.conf'}\n")
        broker = Mosquitto(require_binary("mosquitto"), directory, free_port(),
                           extra_config=extra, anonymous=not secured)
        await asyncio.to_thread(broker.start)
        try:
            yield broker
        finally:
            await asyncio.to_thread(broker.stop)

    @asynccontextmanager
    async def far(self, tmp_path: Path, *, secured: bool = False) -> AsyncIterator[Far]:
        db_url, db_file, _ = await make_cloud_db(tmp_path)
        async with self._broker(tmp_path, secured) as broker:
            ready = asyncio.Event()
            creds = {"username": "plantsync-ingest", "password": "ingest-pw"} if secured else {}
            ingest = asyncio.create_task(run_mqtt_ingest(
                broker.url, db_url, client_id="contract-ingest", ready=ready, **creds))
            try:
                await bounded(ready.wait(), "mqtt-ingest subscribed")
                async with Relay(broker.port) as relay:
                    token = write_token(tmp_path, "psg_right") if secured else None
                    yield Far(relay.port, token, relay, _stored(db_file),
                              "psg_right" if secured else None, db_url)
            finally:
                ingest.cancel()
                await asyncio.gather(ingest, return_exceptions=True)

    @asynccontextmanager
    async def junk_far(self, tmp_path: Path, kind: str) -> AsyncIterator[Far]:
        """A broker and, instead of mqtt-ingest, a consumer that answers every batch with
        ``kind`` on the gateway's acks topic."""
        async with self._broker(tmp_path, secured=False) as broker:
            subscribed = threading.Event()
            cloud = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="junk-cloud")
            cloud.on_connect = lambda c, u, f, rc, p: c.subscribe(records_topic(GATEWAY), qos=1)
            cloud.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()

            def answer_junk(c: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
                c.publish(acks_topic(GATEWAY), GARBAGE[kind], qos=1)

            cloud.on_message = answer_junk
            cloud.connect("127.0.0.1", broker.port)
            cloud.loop_start()
            try:
                assert await asyncio.to_thread(subscribed.wait, HANG_S), "junk cloud subscribed"
                yield Far(broker.port, None)
            finally:
                cloud.disconnect()
                await asyncio.to_thread(cloud.loop_stop)

    def uplink(self, far: Far, token_file: Path | None, timeout: float) -> Uplink:
        # confirm_timeout stays long: the cloud's commit may be slow on a loaded machine,
        # and no situation here is about a consumer that never confirms
        return MqttUplink(f"mqtt://127.0.0.1:{far.port}", gateway=GATEWAY,
                          token_file=token_file, connect_timeout=timeout,
                          puback_timeout=timeout, confirm_timeout=NORMAL_S,
                          keepalive=self.keepalive)

    async def wrong_token(self, far: Far, variant: str) -> str:
        return "psg_wrong"


RIGS: dict[str, Rig] = {"http": HttpRig(), "mqtt": MqttRig()}
#: Combinations an uplink cannot produce, with the reason (the ids of
#: ``test_not_applicable`` carry it; nothing is skipped).
NOT_APPLICABLE = {
    ("mqtt", f"garbage:{HTTP_ONLY_GARBAGE}"): "mqtt-payloads-carry-no-content-encoding",
}


def uplinks(situation: str | None = None) -> list[Any]:
    """Every uplink, its id saying how it meets ``situation``."""
    return [pytest.param(rig, id=f"{name}/{rig.how[situation]}" if situation else name,
                         marks=[pytest.mark.needs_service("mosquitto")]
                         if name == "mqtt" else [])
            for name, rig in RIGS.items()]


def uplink_cases(situation: str, attr: str) -> list[Any]:
    """(rig, variant) for every variant each rig offers."""
    return [pytest.param(rig, variant, id=f"{name}/{variant}",
                         marks=[pytest.mark.needs_service("mosquitto")]
                         if name == "mqtt" else [])
            for name, rig in RIGS.items() for variant in getattr(rig, attr)]


# --------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("rig", uplinks())
async def test_a_batch_is_delivered_once(rig: Rig, tmp_path: Path) -> None:
    async with rig.far(tmp_path) as far, rig.uplink(far, far.token_file, NORMAL_S) as up:
        assert await deliver(up, 1, 3)
        assert await deliver(up, 4, 6)
        assert await deliver(up, 1, 3)      # a resend is harmless: the cloud dedupes
        assert far.stored() == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("rig", uplinks("refused"))
async def test_refused_is_unavailable_and_delivers_once_back(rig: Rig, tmp_path: Path) -> None:
    async with rig.far(tmp_path) as far:
        assert far.relay is not None
        await far.relay.set_mode("refuse")
        # open() does not fail offline: the gateway must start without its cloud
        async with rig.uplink(far, far.token_file, SHORT_S) as up:
            with pytest.raises(UplinkUnavailable):
                await deliver(up, 1, 3)
            await far.relay.set_mode("pass")
            assert await deliver_retrying(up, 1, 3)
        assert far.stored() == [1, 2, 3]


@pytest.mark.parametrize(("rig", "kind"), uplink_cases("garbage", "garbage"))
async def test_an_unreadable_answer_is_rejected(rig: Rig, kind: str, tmp_path: Path) -> None:
    """The far side answers, but not with anything the uplink can read: UplinkRejected
    (the hierarchy's "an answer we cannot read"), never a library exception."""
    async with rig.junk_far(tmp_path, kind) as far, \
            rig.uplink(far, far.token_file, NORMAL_S) as up:
        with pytest.raises(UplinkRejected) as err:
            await deliver(up, 1, 3)
        assert err.value.kind == "rejected"


@pytest.mark.parametrize(("rig", "combination"),
                         [pytest.param(RIGS[k], s, id=f"{k}/{s}={reason}")
                          for (k, s), reason in NOT_APPLICABLE.items()])
def test_not_applicable(rig: Rig, combination: str) -> None:
    """What an uplink cannot be put through, with the reason in the id (not a skip)."""
    situation, _, variant = combination.partition(":")
    assert variant not in getattr(rig, situation)


@pytest.mark.parametrize("rig", uplinks("not-protocol"))
async def test_a_peer_speaking_another_protocol_is_unavailable(rig: Rig,
                                                               tmp_path: Path) -> None:
    """Junk below the protocol (a wrong port): the HTTP client and paho both see a broken
    connection, not an answer; retryable, and the uplink delivers once the port is right."""
    async with rig.far(tmp_path) as far:
        assert far.relay is not None
        far.relay.junk = rig.not_protocol
        await far.relay.set_mode("junk")
        async with rig.uplink(far, far.token_file, SHORT_S) as up:
            with pytest.raises(UplinkUnavailable):
                await deliver(up, 1, 3)
            await far.relay.set_mode("pass")
            assert await deliver_retrying(up, 1, 3)
        assert far.stored() == [1, 2, 3]


@pytest.mark.parametrize("rig", uplinks("slow"))
async def test_a_silent_peer_is_unavailable(rig: Rig, tmp_path: Path) -> None:
    """Accepted, never answered: a timeout, as UplinkUnavailable, within the configured
    timeout; the uplink delivers once the peer answers again."""
    async with rig.far(tmp_path) as far:
        assert far.relay is not None
        await far.relay.set_mode("silent")
        async with rig.uplink(far, far.token_file, SHORT_S) as up:
            with pytest.raises(UplinkUnavailable):
                await deliver(up, 1, 3)
            await far.relay.set_mode("pass")
            assert await deliver_retrying(up, 1, 3)
        assert far.stored() == [1, 2, 3]


@pytest.mark.parametrize("rig", uplinks("slow"))
async def test_silence_mid_session_is_unavailable(rig: Rig, tmp_path: Path) -> None:
    async with rig.far(tmp_path) as far, rig.uplink(far, far.token_file, SHORT_S) as up:
        assert far.relay is not None
        assert await deliver_retrying(up, 1, 3)
        await far.relay.set_mode("silent")
        with pytest.raises(UplinkUnavailable):
            await deliver(up, 4, 6)
        await far.relay.set_mode("pass")
        assert await deliver_retrying(up, 4, 6)
        assert far.stored() == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("rig", uplinks("drop"))
async def test_a_connection_dropped_mid_send_is_unavailable_and_nothing_is_acked(
        rig: Rig, tmp_path: Path) -> None:
    async with rig.far(tmp_path) as far, rig.uplink(far, far.token_file, SHORT_S) as up:
        assert far.relay is not None
        assert await deliver_retrying(up, 1, 3)
        far.relay.drop_after = 16       # the request's first bytes reach the cloud, no more
        await far.relay.set_mode("drop")
        with pytest.raises(UplinkUnavailable):
            await deliver(up, 4, 6)
        assert far.relay.drops >= 1
        assert far.stored() == [1, 2, 3]
        assert not await claims(up, 4, 6)   # nothing claimed that the cloud did not store
        await far.relay.set_mode("pass")
        assert await deliver_retrying(up, 4, 6)
        assert far.stored() == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize(("rig", "variant"), uplink_cases("auth", "auth_variants"))
async def test_refused_credentials_stop_until_reload(rig: Rig, variant: str,
                                                     tmp_path: Path) -> None:
    """UplinkAuthError (the error that stops the Forwarder's retries), again on the next
    call without the uplink retrying on its own meanwhile; after ``reload()`` with a right
    token it delivers. The token is never shown."""
    async with rig.far(tmp_path, secured=True) as far:
        assert far.relay is not None and far.right_token is not None
        wrong = await rig.wrong_token(far, variant)
        token_file = write_token(tmp_path, wrong, "wrong-token")
        async with rig.uplink(far, token_file, SHORT_S) as up:
            with pytest.raises(UplinkAuthError) as err:
                await deliver(up, 1, 3)
            assert err.value.kind == "auth"
            assert str(token_file) in str(err.value) and wrong not in str(err.value)
            connections = far.relay.connections
            await asyncio.sleep(1.5)  # longer than paho's least reconnect delay (1 s)
            assert far.relay.connections == connections, "the uplink retried on its own"
            with pytest.raises(UplinkAuthError):
                await deliver(up, 1, 3)
            token_file.write_text(far.right_token)
            await up.reload()
            assert await deliver_retrying(up, 1, 3)
        assert far.stored() == [1, 2, 3]


def test_every_uplink_is_in_the_suite() -> None:
    import buffer

    kinds = {name for name in buffer.__all__ if name.endswith("Uplink") and name != "Uplink"}
    assert kinds == {"HttpUplink", "MqttUplink"} and len(RIGS) == len(kinds)
