"""Anomaly notifications end to end (cloud/notify/, cloud/api/routes/notify.py): the outbox
written by ``enqueue``, delivered by ``deliver`` to a local HTTP receiver (generic webhook,
DingTalk, WeCom) and a local SMTP server (aiosmtpd); retries, the dead-letter list,
grouping of alarm storms, channel filters, the channel API and secrets.

Anomalies are inserted straight into a migrated database; time is pinned (``now`` and
``now_ms`` passed explicitly), nothing sleeps. SQLite, except the claim test which runs
on PostgreSQL too.
"""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import hashlib
import hmac
import json
import shutil
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from aiosmtpd.controller import Controller
from sqlalchemy import select

from cloud import notify
from cloud.app import create_app
from cloud.auth import create_api_token, create_gateway, create_user
from cloud.core import plant, settings
from cloud.core.db import Database
from cloud.core.models import (
    anomalies,
    anomaly_links,
    audit_log,
    machines,
    notifications,
    products,
    wo_operations,
    work_orders,
)
from tests.fixtures.cloud import ADMIN_HEADERS, add_admin, migrate_sync
from tests.services import free_port

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
DING_SECRET = "SEC" + "5e1f" * 16
DING_TOKEN = "dtok" + "a1b2c3d4" * 6
WECOM_KEY = "693a91f6-7aaa-4bc4-97a0-0ec2sifa5aaa"


def ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# -- a local HTTP receiver -------------------------------------------------------------

@dataclass
class Received:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes

    @property
    def query(self) -> dict[str, list[str]]:
        return urllib.parse.parse_qs(urllib.parse.urlsplit(self.target).query)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """HTTP/1.1 on 127.0.0.1 that records requests. ``fail``: answer the next N with 500;
    ``errcode``: answer the next N with 200 and DingTalk/WeCom's errcode 310000."""

    url: str = ""
    requests: list[Received] = field(default_factory=list)
    fail: int = 0
    errcode: int = 0
    server: asyncio.Server | None = None

    async def start(self) -> None:
        port = free_port()
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    def _answer(self) -> tuple[int, dict[str, Any]]:
        if self.fail > 0:
            self.fail -= 1
            return 500, {"error": "boom"}
        if self.errcode > 0:
            self.errcode -= 1
            return 200, {"errcode": 310000, "errmsg": "sign not match, more: [see docs]"}
        return 200, {"errcode": 0, "errmsg": "ok"}

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                method, target, _ = line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while (h := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    k, v = h.decode("latin-1").split(":", 1)
                    headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append(Received(method, target, headers, body))
                status, answer = self._answer()
                payload = json.dumps(answer).encode()
                writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                             f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


class Mailbox:
    def __init__(self) -> None:
        self.envelopes: list[Any] = []

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:
        self.envelopes.append(envelope)
        return "250 OK"


@pytest.fixture
def smtp_server() -> Iterator[tuple[Mailbox, int]]:
    box, port = Mailbox(), free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()


# -- databases ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("notify") / "template.db"
    migrate_sync(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture
async def db(template_db: Path, tmp_path: Path) -> AsyncIterator[Database]:
    """A migrated SQLite database of its own (a copy of one migrated template)."""
    path = tmp_path / "cloud.db"
    shutil.copy(template_db, path)
    async with Database(f"sqlite+aiosqlite:///{path}") as database:
        yield database


async def add_machine(db: Database, name: str = "注塑机 3") -> int:
    gateway = f"gw-{abs(hash(name)) % 10**8}"
    await create_gateway(db, gateway)
    async with db.sessions() as s, s.begin():
        res = await s.execute(machines.insert().values(gateway_id=gateway, device="imm-3",
                                                       name=name))
        return int(res.inserted_primary_key[0])


async def raise_anomaly(db: Database, *, now: datetime, machine_id: int | None = None,
                        kind: str = "alarm", code: str | None = "E42",
                        severity: str = "major", title: str = "液压压力低",
                        event: str = "opened") -> int:
    """Insert an anomaly and enqueue its notification in one transaction (as the engine)."""
    async with db.sessions() as s, s.begin():
        res = await s.execute(anomalies.insert().values(
            kind=kind, code=code, severity=severity, status="open", title=title, detail={},
            machine_id=machine_id, ts=ms(now), created=now, created_by="system"))
        anomaly_id = int(res.inserted_primary_key[0])
        await notify.enqueue(s, anomaly_id, event, now=now)
    return anomaly_id


async def add_channel(db: Database, name: str, kind: str, target: str, **kw: Any) -> int:
    async with db.sessions() as s, s.begin():
        return int((await notify.create_channel(s, "tests", name=name, kind=kind,
                                                target=target, **kw))["id"])


async def put_settings(db: Database, **values: Any) -> None:
    async with db.sessions() as s, s.begin():
        await settings.put(s, notify.SETTINGS_KEY, values, by="tests")


async def outbox(db: Database) -> list[Any]:
    async with db.sessions() as s:
        return list((await s.execute(select(notifications).order_by(notifications.c.id)))
                    .mappings().all())


# -- delivery ----------------------------------------------------------------------------

async def test_webhook_carries_the_documented_json_with_orders_and_a_signature(
        db: Database, receiver: Receiver) -> None:
    machine = await add_machine(db)
    await add_channel(db, "erp", "webhook", f"{receiver.url}/hooks/plantsync",
                      secret="whsec-1", min_severity="info")
    await put_settings(db, cloud_url="https://mes.example.com")
    async with db.sessions() as s, s.begin():
        product = (await s.execute(products.insert().values(code="P1", name="外壳", unit="pcs"))
                   ).inserted_primary_key[0]
        wo = (await s.execute(work_orders.insert().values(
            number="WO-001", product_id=product, quantity=100, customer="华为",
            created=T0, updated=T0))).inserted_primary_key[0]
        op = (await s.execute(wo_operations.insert().values(
            work_order_id=wo, step=20, name="注塑", machine_id=machine))).inserted_primary_key[0]
    anomaly_id = await raise_anomaly(db, now=T0, machine_id=machine)
    async with db.sessions() as s, s.begin():
        await s.execute(anomaly_links.insert().values(anomaly_id=anomaly_id, work_order_id=wo,
                                                      wo_operation_id=op, customer="华为"))

    assert await notify.deliver(db, ms(at(1))) == 1
    [req] = receiver.requests
    assert req.method == "POST" and req.target == "/hooks/plantsync"
    assert req.headers["content-type"].startswith("application/json")
    expected_sig = hmac.new(b"whsec-1", req.body, hashlib.sha256).hexdigest()
    assert req.headers["x-plantsync-signature"] == f"sha256={expected_sig}"
    doc = req.json()
    assert doc["schema"] == "plantsync.notification/1" and doc["event"] == "opened"
    assert doc["count"] == 1 and doc["suppressed"] == 0
    assert doc["url"] == "https://mes.example.com/anomalies"
    assert doc["anomalies"] == [{
        "id": anomaly_id, "kind": "alarm", "code": "E42", "severity": "major",
        "status": "open", "title": "液压压力低", "machine": "注塑机 3",
        "ts": "2026-03-02T08:00:00Z", "url": f"https://mes.example.com/anomalies?id={anomaly_id}#anomaly-{anomaly_id}",
        "links": [{"work_order": "WO-001", "customer": "华为", "step": 20, "operation": "注塑"}],
    }]
    [row] = await outbox(db)
    assert row["status"] == "sent" and row["attempts"] == 1 and row["sent_at"] == at(1)
    assert await notify.deliver(db, ms(at(2))) == 0   # nothing sent twice
    assert len(receiver.requests) == 1


async def test_dingtalk_is_signed_and_an_errcode_is_a_failure(
        db: Database, receiver: Receiver) -> None:
    machine = await add_machine(db)
    await add_channel(db, "车间钉钉群", "dingtalk",
                      f"{receiver.url}/robot/send?access_token={DING_TOKEN}",
                      secret=DING_SECRET)
    await raise_anomaly(db, now=T0, machine_id=machine, severity="critical")
    receiver.errcode = 1
    with structlog.testing.capture_logs() as logs:
        assert await notify.deliver(db, ms(at(1))) == 0
    [row] = await outbox(db)
    assert row["status"] == "pending" and row["attempts"] == 1
    assert "errcode 310000" in row["last_error"] and "sign not match" in row["last_error"]
    for text in (row["last_error"], repr(logs)):
        assert DING_SECRET not in text and DING_TOKEN not in text and "sign=" not in text
    assert any(e["event"] == "notification_failed" for e in logs)

    when = row["next_attempt"]
    assert at(1) + timedelta(seconds=5) <= when <= at(1) + timedelta(seconds=10)
    assert await notify.deliver(db, ms(when) - 1) == 0          # not due yet
    assert await notify.deliver(db, ms(when)) == 1
    req = receiver.requests[-1]
    q = req.query
    assert q["access_token"] == [DING_TOKEN] and q["timestamp"] == [str(ms(when))]
    mac = hmac.new(DING_SECRET.encode(), f"{q['timestamp'][0]}\n{DING_SECRET}".encode(),
                   hashlib.sha256)
    assert q["sign"] == [base64.b64encode(mac.digest()).decode()]
    doc = req.json()
    assert doc["msgtype"] == "markdown"
    assert doc["markdown"]["title"] == "[紧急] 新异常 · 注塑机 3 · 设备报警 E42"
    assert "液压压力低" in doc["markdown"]["text"]
    assert (await outbox(db))[0]["status"] == "sent"


async def test_wecom_markdown_fits_4096_bytes(db: Database, receiver: Receiver) -> None:
    machine = await add_machine(db)
    await add_channel(db, "wecom", "wecom", f"{receiver.url}/cgi-bin/webhook/send?key={WECOM_KEY}")
    for i in range(12):
        await raise_anomaly(db, now=at(i), machine_id=machine, title="主轴过载报警" * 40)
    assert await notify.deliver(db, ms(at(20))) == 1
    [req] = receiver.requests
    assert req.query["key"] == [WECOM_KEY]
    doc = req.json()
    assert doc["msgtype"] == "markdown"
    content = doc["markdown"]["content"]
    assert len(content.encode("utf-8")) <= 4096 and content.endswith("…")
    assert content.startswith("### [严重] 新异常 · 注塑机 3 · 设备报警 E42 ×12")


async def test_email_through_a_local_smtp_server_keeps_chinese(
        db: Database, smtp_server: tuple[Mailbox, int]) -> None:
    box, port = smtp_server
    machine = await add_machine(db, "数控车床 7")
    await put_settings(db, smtp={"host": "127.0.0.1", "port": port,
                                 "from": "plantsync@factory.example.com"})
    await add_channel(db, "厂长邮件", "email", "boss@factory.example.com, qa@factory.example.com")
    async with db.sessions() as s, s.begin():   # the plant's zone, which messages follow
        await settings.put(s, plant.SETTINGS_KEY, {"timezone": "Asia/Shanghai"}, by="tests")
    await raise_anomaly(db, now=T0, machine_id=machine, title="刀具磨损 tool wear")
    assert await notify.deliver(db, ms(at(1))) == 1
    [env] = box.envelopes
    assert env.mail_from == "plantsync@factory.example.com"
    assert env.rcpt_tos == ["boss@factory.example.com", "qa@factory.example.com"]
    mail = email.message_from_bytes(env.original_content, policy=email.policy.default)
    assert mail["Subject"] == "[严重] 新异常 · 数控车床 7 · 设备报警 E42"
    body = mail.get_content()
    assert "刀具磨损 tool wear" in body and "2026-03-02 16:00:00" in body   # Asia/Shanghai


async def test_email_without_smtp_server_fails_with_the_setting_to_fix(db: Database) -> None:
    await add_channel(db, "mail", "email", "ops@example.com")
    await raise_anomaly(db, now=T0)
    assert await notify.deliver(db, ms(at(1))) == 0
    assert "notifications.smtp.host" in (await outbox(db))[0]["last_error"]


async def test_retries_with_backoff_then_success(db: Database, receiver: Receiver) -> None:
    await add_channel(db, "hook", "webhook", f"{receiver.url}/h")
    await raise_anomaly(db, now=T0)
    receiver.fail = 2
    now = at(0)
    delays = []
    for _ in range(2):
        assert await notify.deliver(db, ms(now)) == 0
        [row] = await outbox(db)
        assert row["status"] == "pending" and row["last_error"].startswith("HTTP 500")
        delays.append((row["next_attempt"] - now).total_seconds())
        now = row["next_attempt"]
    assert 5 <= delays[0] <= 10 and 10 <= delays[1] <= 20        # base 10 s, doubling
    assert await notify.deliver(db, ms(now)) == 1
    [row] = await outbox(db)
    assert row["status"] == "sent" and row["attempts"] == 3 and row["last_error"] is None
    assert len(receiver.requests) == 3


async def test_exhausted_retries_go_to_the_dead_letter_list_and_a_planner_retries(
        db: Database, receiver: Receiver) -> None:
    await add_channel(db, "hook", "webhook", f"{receiver.url}/h")
    await put_settings(db, max_attempts=3)
    await raise_anomaly(db, now=T0)
    receiver.fail = 100
    now = T0
    for _ in range(3):
        await notify.deliver(db, ms(now))
        now = (await outbox(db))[0]["next_attempt"]
    [row] = await outbox(db)
    assert row["status"] == "dead" and row["attempts"] == 3
    assert await notify.deliver(db, ms(now + timedelta(days=1))) == 0   # dead stays dead

    async with api(db) as client:
        planner, viewer = await tokens(db)
        dead = (await client.get("/api/v1/notifications", params={"status": "dead"},
                                 headers=viewer)).json()
        assert dead["total"] == 1
        [item] = dead["items"]
        assert item["id"] == row["id"] and item["status"] == "dead"
        assert item["channel"] == {"id": row["channel_id"], "name": "hook", "kind": "webhook"}
        assert item["last_error"].startswith("HTTP 500")
        r = await client.post(f"/api/v1/notifications/{row['id']}/retry", headers=viewer)
        assert r.status_code == 403
        r = await client.post(f"/api/v1/notifications/{row['id']}/retry", headers=planner)
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "pending" and r.json()["attempts"] == 0
        r = await client.post(f"/api/v1/notifications/{row['id']}/retry", headers=planner)
        assert r.status_code == 409 and r.json()["error"] == "invalid_state"
        r = await client.post("/api/v1/notifications/999/retry", headers=planner)
        assert r.status_code == 404 and r.json()["error"] == "not_found"
        r = await client.get("/api/v1/notifications", params={"status": "nope"}, headers=viewer)
        assert r.status_code == 422 and r.json()["field"] == "status"

    receiver.fail = 0
    assert await notify.deliver(db, ms(datetime.now(UTC) + timedelta(seconds=1))) == 1
    assert (await outbox(db))[0]["status"] == "sent"
    async with db.sessions() as s:
        entries = (await s.execute(select(audit_log.c.actor, audit_log.c.action)
                                   .where(audit_log.c.action == "notification.retry"))).all()
    assert entries == [("planner", "notification.retry")]


async def test_a_storm_is_one_message_per_window(db: Database, receiver: Receiver) -> None:
    press, other = await add_machine(db, "冲压机 1"), await add_machine(db, "冲压机 2")
    await add_channel(db, "hook", "webhook", f"{receiver.url}/h")
    first = [await raise_anomaly(db, now=at(i), machine_id=press) for i in range(100)]
    lone = await raise_anomaly(db, now=at(50), machine_id=other)          # its own group
    rows = await outbox(db)
    assert len(rows) == 2
    assert rows[0]["anomaly_ids"] == first and rows[0]["suppressed"] == 99
    assert rows[1]["anomaly_ids"] == [lone]

    assert await notify.deliver(db, ms(at(100))) == 2
    storm = next(r.json() for r in receiver.requests if r.json()["count"] == 100)
    assert storm["suppressed"] == 99 and [a["id"] for a in storm["anomalies"]] == first

    # the next storm starts within the window of the message sent at t=100 s: it is held
    # until t=700 s and collects the whole storm
    second = [await raise_anomaly(db, now=at(650 + i), machine_id=press) for i in range(100)]
    assert await notify.deliver(db, ms(at(699))) == 0
    async with db.sessions() as s, s.begin():   # again while unsent: nothing added
        await notify.enqueue(s, second[-1], "opened", now=at(749))
    assert len(await outbox(db)) == 3
    assert await notify.deliver(db, ms(at(750))) == 1
    assert len(receiver.requests) == 3
    doc = receiver.requests[-1].json()
    assert doc["count"] == 100 and [a["id"] for a in doc["anomalies"]] == second


async def test_escalation_is_its_own_group(db: Database) -> None:
    machine = await add_machine(db)
    await add_channel(db, "hook", "webhook", "http://127.0.0.1:9/h")
    a = await raise_anomaly(db, now=T0, machine_id=machine)
    async with db.sessions() as s, s.begin():
        await notify.enqueue(s, a, "escalated", now=at(1))
        await notify.enqueue(s, 424242, "opened", now=at(1))       # unknown: ignored
        with pytest.raises(notify.NotifyError):
            await notify.enqueue(s, a, "exploded", now=at(1))
    assert [(r["event"], r["anomaly_ids"]) for r in await outbox(db)] == [
        ("opened", [a]), ("escalated", [a])]
    # a second escalation after the first went out is a message of its own, held until
    # the group's window ends
    async with db.sessions() as s, s.begin():
        await s.execute(notifications.update().where(notifications.c.event == "escalated")
                        .values(status="sent", sent_at=at(2)))
        await notify.enqueue(s, a, "escalated", now=at(300))
    last = (await outbox(db))[-1]
    assert (last["event"], last["anomaly_ids"], last["next_attempt"]) == (
        "escalated", [a], at(602))


async def test_channel_filters(db: Database) -> None:
    machine = await add_machine(db)
    hook = "http://127.0.0.1:9/h"
    major = await add_channel(db, "major+", "webhook", hook, min_severity="major")
    offline = await add_channel(db, "offline", "webhook", hook, min_severity="info",
                                kinds=["offline"])
    await add_channel(db, "off", "webhook", hook, min_severity="info", enabled=False)
    every = await add_channel(db, "all", "webhook", hook, min_severity="info")
    minor_alarm = await raise_anomaly(db, now=T0, machine_id=machine, severity="minor")
    critical = await raise_anomaly(db, now=T0, machine_id=machine, code="E1", severity="critical")
    went = await raise_anomaly(db, now=T0, machine_id=machine, kind="offline", code=None,
                               severity="info")
    got: dict[int, list[int]] = {}
    for r in await outbox(db):
        got.setdefault(r["channel_id"], []).extend(r["anomaly_ids"])
    assert got == {major: [critical], offline: [went], every: [minor_alarm, critical, went]}


async def test_a_disabled_channel_kills_its_queued_messages(db: Database) -> None:
    ch = await add_channel(db, "hook", "webhook", "http://127.0.0.1:9/h")
    await raise_anomaly(db, now=T0)
    async with db.sessions() as s, s.begin():
        await notify.update_channel(s, "tests", ch, enabled=False)
    assert await notify.deliver(db, ms(at(1))) == 0
    [row] = await outbox(db)
    assert row["status"] == "dead" and row["last_error"] == "channel disabled or deleted"


# -- the API -----------------------------------------------------------------------------

@asynccontextmanager
async def api(db: Database) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client of a cloud app on ``db``'s database, with the admin user."""
    await add_admin(db.url)
    app = create_app(db.url)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://cloud") as client:
            yield client
    finally:
        await app.state.db.dispose()


async def tokens(db: Database) -> tuple[dict[str, str], dict[str, str]]:
    """Headers of a planner and a viewer."""
    out = []
    for role in ("planner", "viewer"):
        await create_user(db, role, role, "a-long-password-1")
        _id, token = await create_api_token(db, role)
        out.append({"Authorization": f"Bearer {token}"})
    return out[0], out[1]


def _dingtalk_channel(receiver: Receiver) -> dict[str, Any]:
    target = f"{receiver.url}/robot/send?access_token={DING_TOKEN}"
    return {"name": "车间群", "kind": "dingtalk", "target": target, "secret": DING_SECRET,
            "min_severity": "major", "kinds": ["alarm", "stop"]}


async def _create(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    r = await client.post("/api/v1/notification-channels", json=body, headers=ADMIN_HEADERS)
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


async def test_admins_create_channels_and_the_secret_is_never_shown(
        db: Database, receiver: Receiver) -> None:
    new = _dingtalk_channel(receiver)
    async with api(db) as client:
        planner, viewer = await tokens(db)
        r = await client.post("/api/v1/notification-channels", json=new, headers=planner)
        assert r.status_code == 403
        created = await _create(client, new)
        assert created["has_secret"] is True and "secret" not in created
        assert created["target"] == f"{receiver.url}/robot/send?access_token=…{DING_TOKEN[-4:]}"
        assert created["kinds"] == ["alarm", "stop"] and created["enabled"] is True
        listed = await client.get("/api/v1/notification-channels", headers=viewer)
        assert listed.status_code == 200 and listed.json()["items"][0]["id"] == created["id"]
        assert DING_SECRET not in created.__repr__() + listed.text
        assert DING_TOKEN not in created.__repr__() + listed.text


async def test_a_bad_channel_is_refused_naming_the_field(db: Database,
                                                         receiver: Receiver) -> None:
    new = _dingtalk_channel(receiver)
    async with api(db) as client:
        await _create(client, new)
        bad = [({"target": "ftp://x/y"}, "target"), ({"target": "not a url"}, "target"),
               ({"kind": "email", "target": "boss@", "secret": None}, "target"),
               ({"kind": "fax"}, "kind"), ({"kinds": ["alarm", "bogus"]}, "kinds"),
               ({"kinds": []}, "kinds"), ({"min_severity": "huge"}, "min_severity"),
               ({"kind": "wecom"}, "secret"), ({"name": ""}, "name")]
        for change, fld in bad:
            body = {**new, "name": "x", **change}
            r = await client.post("/api/v1/notification-channels", json=body,
                                  headers=ADMIN_HEADERS)
            assert r.status_code == 422, (change, r.text)
            assert r.json()["error"] == "invalid" and r.json()["field"] == fld, (change, r.json())
        r = await client.post("/api/v1/notification-channels", json=new, headers=ADMIN_HEADERS)
        assert r.status_code == 409 and r.json()["error"] == "duplicate"
        r = await client.post("/api/v1/notification-channels",
                              json={**new, "name": "y", "colour": "red"}, headers=ADMIN_HEADERS)
        assert r.status_code == 422


async def test_a_test_message_goes_out_signed_and_a_failure_says_why_without_secrets(
        db: Database, receiver: Receiver) -> None:
    async with api(db) as client:
        planner, _viewer = await tokens(db)
        ch = (await _create(client, _dingtalk_channel(receiver)))["id"]
        r = await client.post(f"/api/v1/notification-channels/{ch}/test", headers=ADMIN_HEADERS)
        assert r.status_code == 200 and r.json() == {"ok": True}
        req = receiver.requests[-1]
        assert "sign" in req.query and "plantsync 测试消息" in req.json()["markdown"]["title"]
        receiver.errcode = 1
        with structlog.testing.capture_logs() as logs:
            r = await client.post(f"/api/v1/notification-channels/{ch}/test",
                                  headers=ADMIN_HEADERS)
        assert r.status_code == 502 and r.json()["error"] == "delivery_failed"
        assert "310000" in r.json()["detail"]
        assert DING_SECRET not in r.text + repr(logs) and DING_TOKEN not in r.text + repr(logs)
        r2 = await client.post(f"/api/v1/notification-channels/{ch}/test", headers=planner)
        assert r2.status_code == 403


async def test_channel_changes_are_audited_without_secrets(db: Database,
                                                           receiver: Receiver) -> None:
    async with api(db) as client:
        ch = (await _create(client, _dingtalk_channel(receiver)))["id"]
        await client.post(f"/api/v1/notification-channels/{ch}/test", headers=ADMIN_HEADERS)
        r = await client.patch(f"/api/v1/notification-channels/{ch}",
                               json={"enabled": False, "min_severity": "info"},
                               headers=ADMIN_HEADERS)
        assert r.status_code == 200 and r.json()["enabled"] is False
        assert r.json()["has_secret"] is True
        r = await client.patch(f"/api/v1/notification-channels/{ch}", json={"secret": None},
                               headers=ADMIN_HEADERS)
        assert r.json()["has_secret"] is False
        r = await client.patch(f"/api/v1/notification-channels/{ch}", json={"enabled": None},
                               headers=ADMIN_HEADERS)
        assert r.status_code == 422 and r.json()["field"] == "enabled"
        r = await client.patch("/api/v1/notification-channels/999", json={"enabled": True},
                               headers=ADMIN_HEADERS)
        assert r.status_code == 404
        async with db.sessions() as s:
            audits = (await s.execute(select(audit_log.c.action, audit_log.c.detail)
                                      .where(audit_log.c.entity == "notification_channel"))).all()
        assert DING_SECRET not in repr(audits) and DING_TOKEN not in repr(audits)
        assert {a for a, _ in audits} >= {"notification_channel.create",
                                          "notification_channel.update",
                                          "notification_channel.test"}


async def test_a_disabled_channel_gets_nothing_and_deleting_takes_its_outbox(
        db: Database, receiver: Receiver) -> None:
    async with api(db) as client:
        _planner, viewer = await tokens(db)
        ch = (await _create(client, _dingtalk_channel(receiver)))["id"]
        async with db.sessions() as s, s.begin():
            await notify.update_channel(s, "tests", ch, enabled=False)
        await raise_anomaly(db, now=T0)            # queued for no one: the channel is off
        async with db.sessions() as s, s.begin():
            await notify.update_channel(s, "tests", ch, enabled=True)
        await raise_anomaly(db, now=T0)
        assert len(await outbox(db)) == 1
        r = await client.delete(f"/api/v1/notification-channels/{ch}", headers=ADMIN_HEADERS)
        assert r.status_code == 200 and r.json() == {"deleted": ch, "notifications_removed": 1}
        assert (await client.get("/api/v1/notification-channels", headers=viewer)).json() == {
            "items": [], "total": 0, "limit": 50, "offset": 0}


async def test_the_notify_job_is_registered(db: Database) -> None:
    app = create_app(db.url)
    try:
        assert [(j.name, j.fn, j.every_s) for j in app.state.jobs
                if j.name == "notify"] == [("notify", notify.deliver, 5.0)]
    finally:
        await app.state.db.dispose()


# -- two senders never send one message twice ---------------------------------------------

@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_concurrent_deliverers_send_each_message_once(
        backend: str, request: pytest.FixtureRequest, tmp_path: Path,
        receiver: Receiver) -> None:
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'cloud.db'}"
        shutil.copy(request.getfixturevalue("template_db"), tmp_path / "cloud.db")
    else:
        url = str(request.getfixturevalue("postgres_url"))
        await asyncio.to_thread(migrate_sync, url)
    async with Database(url) as db:
        await add_channel(db, "hook", "webhook", f"{receiver.url}/h")
        await put_settings(db, batch=4)
        for i in range(30):       # no machine: 30 groups, 30 messages
            await raise_anomaly(db, now=at(i))
    senders = [Database(url) for _ in range(3)]
    try:
        async def drain(d: Database) -> int:
            total = 0
            while sent := await notify.deliver(d, ms(at(100))):
                total += sent
            return total

        counts = await asyncio.gather(*(drain(d) for d in senders))
    finally:
        for d in senders:
            await d.dispose()
    assert sum(counts) == 30
    ids = [r.json()["notification_id"] for r in receiver.requests]
    assert len(ids) == 30 and len(set(ids)) == 30
    async with Database(url) as db:
        rows = await outbox(db)
    assert {r["status"] for r in rows} == {"sent"} and {r["attempts"] for r in rows} == {1}
