"""Anomaly notifications: an outbox written inside the anomaly's transaction, delivered
later by a periodic job (generic JSON webhook, DingTalk robot, WeCom robot, email).

``enqueue(session, anomaly_id, event)`` never does network I/O: it writes rows of the
``notifications`` table, one per enabled channel whose filter matches the anomaly
(``min_severity`` <= the anomaly's severity in info < minor < major < critical; ``kinds``
None = every kind, else the anomaly's kind must be listed).

Grouping (a storm of alarms from one machine is one message, not a hundred)
--------------------------------------------------------------------------
The group of a message is its channel + subject + what + event, where the subject is the
machine (``m:<id>``), else the material (``mat:<id>``), else the gateway/device, else the
anomaly alone (never grouped), and what is ``<kind>:<code>`` (or the kind without a code).
For one channel and group, at the time ``now`` of ``enqueue``:

1. If a message of the group is still *joinable* (pending, never attempted, and either
   created within ``group_window_s`` or held back to a time still to come, rule 2), the
   anomaly id is appended to it and its ``suppressed`` count (anomalies not sent in a
   message of their own = ids - 1) goes up. An id already in it is not added again.
2. Otherwise a new message is written. If a message of the group was already sent within
   the window (``sent_at >= now - window``), the new one is held until
   ``sent_at + window`` (its ``next_attempt``) and collects what comes meanwhile (rule 1):
   at most one message per group per window goes out, carrying all the ids.

Delivery
--------
``deliver(db, now_ms)`` (the ``notify`` job) claims due pending messages in one
``UPDATE ... RETURNING`` that counts the attempt and pushes ``next_attempt`` past the
send timeout (PostgreSQL picks the rows with FOR UPDATE SKIP LOCKED; SQLite serializes
writers), so two cloud processes never send one message twice and a crash mid-send
retries after the lease. Then it sends them and marks each sent, or schedules a retry
(exponential backoff from ``backoff_base_s`` doubling up to ``backoff_cap_s``, each delay
drawn from its upper half: jitter), or after ``max_attempts`` moves it to the dead-letter
list (``status`` dead), from where a person can retry it (``retry``, audited).
Success is a 2xx answer and, for DingTalk and WeCom (which answer 200 with an error
code), ``errcode == 0``. The DingTalk signing secret, the SMTP password (read from
``smtp.password_file``) and the credentials in robot URLs are never logged, stored in
``last_error`` nor returned by the API.

Message formats (pure functions: ``webhook_body``, ``dingtalk_body``, ``dingtalk_url``,
``wecom_body``, ``email_message``), in the locale of the channel kind (setting
``locale``: zh-CN or en):

- generic webhook: JSON ``{"schema": "plantsync.notification/1", "notification_id",
  "event", "count", "suppressed", "url", "anomalies": [{"id", "kind", "code", "severity",
  "status", "title", "machine", "ts" (ISO 8601 UTC), "url", "links": [{"work_order",
  "customer", "step", "operation"}]}]}``; with a channel secret, header
  ``X-Plantsync-Signature: sha256=<hex HMAC-SHA256 of the body>``.
- DingTalk robot: ``{"msgtype": "markdown", "markdown": {"title", "text"}}``; with a
  secret, ``&timestamp=<ms>&sign=<urlencoded base64 HMAC-SHA256 of "ts\\nsecret">``.
- WeCom group robot: ``{"msgtype": "markdown", "markdown": {"content"}}``, content cut
  to 4096 UTF-8 bytes on a character boundary.
- email: subject + plain-text UTF-8 body to the comma-separated addresses of ``target``.

Errors::

    NotifyError              (ValueError) a channel or request that cannot be done as
    │                        asked; ``field`` names the input
    ├── UnknownChannel
    ├── UnknownNotification
    ├── ChannelExists        a channel of that name exists
    └── NotRetryable         only a dead message can be retried by hand
    DeliveryFailed           one send attempt failed; the message says why, without secrets
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import random
import re
import smtplib
import ssl
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import formataddr, make_msgid
from pathlib import Path
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
import structlog
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from buffer.backoff import delay_for
from cloud.auth import Actor
from cloud.core import clock, settings
from cloud.core.audit import audit
from cloud.core.db import Database
from cloud.core.errors import Conflict, Duplicate, Invalid, NotFound, UpstreamFailed
from cloud.core.models import (
    ANOMALY_KINDS,
    CHANNEL_KINDS,
    NOTIFICATION_STATUSES,
    SEVERITIES,
    anomalies,
    anomaly_links,
    machines,
    materials,
    notification_channels,
    notifications,
    wo_operations,
    work_orders,
)

log = structlog.get_logger(__name__)

SETTINGS_KEY: Final = "notifications"
SEVERITY_RANK: Final = {s: i for i, s in enumerate(SEVERITIES)}
EVENTS: Final = ("opened", "escalated", "resolved", "test")
LOCALES: Final = ("zh-CN", "en")
WEBHOOK_SCHEMA: Final = "plantsync.notification/1"
SIGNATURE_HEADER: Final = "X-Plantsync-Signature"
WECOM_MAX_BYTES: Final = 4096
DINGTALK_MAX_BYTES: Final = 18_000   # DingTalk's limit is 20000 bytes of the message
LISTED_IN_TEXT: Final = 10           # anomalies spelled out in a chat message or mail
MAX_ERROR: Final = 1000

Locale = Literal["zh-CN", "en"]


class MessageLocales(BaseModel):
    """Message language per channel kind."""

    model_config = ConfigDict(extra="forbid")

    webhook: Locale = "en"
    dingtalk: Locale = "zh-CN"
    wecom: Locale = "zh-CN"
    email: Locale = "zh-CN"


class SmtpSettings(BaseModel):
    """The mail server of email channels. The password is read from ``password_file``
    (kept out of the database and the API)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    host: str = Field("", description="empty: email channels cannot send")
    port: int = Field(25, ge=1, le=65535)
    user: str = ""
    password_file: str = ""
    sender: str = Field("", alias="from", description="the From address")
    starttls: bool = False
    ssl: bool = False


class NotificationSettings(settings.SettingsModel):
    """Delivery of anomaly notifications (``/api/v1/settings/notifications``)."""

    group_window_s: float = Field(600, ge=0, description="at most one message per machine "
                                  "and code in this window")
    max_attempts: int = Field(8, ge=1, description="tries before the dead-letter list")
    backoff_base_s: float = Field(10, ge=0)
    backoff_cap_s: float = Field(1800, ge=0)
    timeout_s: float = Field(10, gt=0)
    batch: int = Field(50, ge=1, description="messages sent per delivery round")
    cloud_url: str = Field("", description="the web UI's address for links in messages, "
                           "e.g. https://mes.example.com (empty: none)")
    timezone: str = Field("Asia/Shanghai", description="times in chat messages and mails "
                          "(webhooks: ISO UTC)")
    locale: MessageLocales = Field(default_factory=MessageLocales)
    smtp: SmtpSettings = Field(default_factory=SmtpSettings)


settings.register(SETTINGS_KEY, NotificationSettings)


class NotifyError(Invalid):
    """A channel or request that cannot be done as asked (422 ``invalid``); ``field``
    names the input."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(detail, field)


class UnknownChannel(NotFound):
    def __init__(self, field: str, detail: str) -> None:
        super().__init__(detail, field)


class UnknownNotification(NotFound):
    def __init__(self, field: str, detail: str) -> None:
        super().__init__(detail, field)


class ChannelExists(Duplicate):
    def __init__(self, field: str, detail: str) -> None:
        super().__init__(detail, field)


class NotRetryable(Conflict):
    """Only a dead message can be retried (409 ``invalid_state``)."""

    code = "invalid_state"

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(detail)


class DeliveryFailed(UpstreamFailed):
    """One send attempt failed (502 ``delivery_failed`` for a test message); the message
    is safe to store and log (no secrets)."""

    code = "delivery_failed"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)


# -- filters and grouping ---------------------------------------------------------------

def matches(channel: Any, kind: str, severity: str) -> bool:
    """Does the (mapping-like) channel want an anomaly of ``kind`` and ``severity``?"""
    if not channel["enabled"]:
        return False
    if SEVERITY_RANK.get(severity, 0) < SEVERITY_RANK.get(channel["min_severity"], 0):
        return False
    kinds = channel["kinds"]
    return kinds is None or kind in kinds


def group_key(anomaly: Any, event: str) -> str:
    """The group of a message within one channel (see the module docstring)."""
    if anomaly["machine_id"] is not None:
        subject = f"m:{anomaly['machine_id']}"
    elif anomaly["material_id"] is not None:
        subject = f"mat:{anomaly['material_id']}"
    elif anomaly["gateway_id"] is not None or anomaly["device"] is not None:
        subject = f"d:{anomaly['gateway_id'] or ''}/{anomaly['device'] or ''}"
    else:
        subject = f"a:{anomaly['id']}"
    what = f"{anomaly['kind']}:{anomaly['code']}" if anomaly["code"] else anomaly["kind"]
    return f"{subject}|{what}|{event}"[:255]


async def enqueue(session: AsyncSession, anomaly_id: int, event: str, *,
                  now: datetime | None = None) -> None:
    """Write (or join) outbox messages for ``anomaly_id`` and ``event`` in the caller's
    transaction; no network I/O, no commit. Idempotent while its message is unsent
    (an anomaly already in it is not added again).
    ``now`` defaults to the wall clock (tests pin it). Raises NotifyError for an unknown
    event; an anomaly id that does not exist is logged and ignored (the caller's
    transaction must not fail over a notification)."""
    if event not in EVENTS:
        raise NotifyError("event", f"unknown notification event {event!r} "
                          f"(known: {', '.join(EVENTS)})")
    now = now or clock.now()
    anomaly = (await session.execute(
        select(anomalies.c.id, anomalies.c.kind, anomalies.c.code, anomalies.c.severity,
               anomalies.c.machine_id, anomalies.c.material_id, anomalies.c.gateway_id,
               anomalies.c.device)
        .where(anomalies.c.id == anomaly_id))).mappings().one_or_none()
    if anomaly is None:
        log.warning("notify_unknown_anomaly", anomaly_id=anomaly_id, notify_event=event)
        return
    channels = (await session.execute(
        select(notification_channels.c.id, notification_channels.c.min_severity,
               notification_channels.c.kinds, notification_channels.c.enabled)
        .where(notification_channels.c.enabled.is_(True))
        .order_by(notification_channels.c.id))).mappings().all()
    wanted = [c for c in channels if matches(c, anomaly["kind"], anomaly["severity"])]
    if not wanted:
        return
    conf = await settings.get(session, SETTINGS_KEY)
    window = timedelta(seconds=float(conf["group_window_s"]))
    key = group_key(anomaly, event)
    for channel in wanted:
        await _enqueue_one(session, channel["id"], key, event, anomaly_id, now, window)


async def _enqueue_one(session: AsyncSession, channel_id: int, key: str, event: str,
                       anomaly_id: int, now: datetime, window: timedelta) -> None:
    n = notifications.c
    same_group = and_(n.channel_id == channel_id, n.group_key == key)
    # FOR UPDATE: a concurrent enqueue or claim of this row waits (PostgreSQL)
    joinable = (await session.execute(
        select(n.id, n.anomaly_ids)
        .where(same_group, n.status == "pending", n.attempts == 0,
               or_(n.created >= now - window, n.next_attempt > now))
        .order_by(n.id.desc()).limit(1)
        .with_for_update())).mappings().one_or_none()
    if joinable is not None:
        ids = list(joinable["anomaly_ids"])
        if anomaly_id not in ids:
            ids.append(anomaly_id)
            await session.execute(update(notifications).where(n.id == joinable["id"])
                                  .values(anomaly_ids=ids, suppressed=len(ids) - 1))
        return
    last_sent = (await session.execute(
        select(n.sent_at)
        .where(same_group, n.status == "sent", n.sent_at >= now - window)
        .order_by(n.sent_at.desc()).limit(1))).mappings().one_or_none()
    # (an anomaly already in a sent message is a new event now, e.g. a second escalation)
    next_attempt = now if last_sent is None else max(now, last_sent["sent_at"] + window)
    await session.execute(notifications.insert().values(
        channel_id=channel_id, group_key=key, event=event, anomaly_ids=[anomaly_id],
        suppressed=0, status="pending", attempts=0, next_attempt=next_attempt, created=now))


# -- what a message says ----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LinkView:
    work_order: str
    customer: str | None
    step: int | None
    operation: str | None


@dataclass(frozen=True, slots=True)
class AnomalyView:
    id: int
    kind: str
    code: str | None
    severity: str
    status: str
    title: str
    machine: str | None        # the machine's name, else the material, else gateway/device
    ts: int                    # epoch ms
    links: tuple[LinkView, ...] = ()


@dataclass(frozen=True, slots=True)
class Message:
    """What one notification says: its anomalies (oldest first) and how many joined."""

    event: str
    anomalies: tuple[AnomalyView, ...]
    suppressed: int = 0
    notification_id: int | None = None
    cloud_url: str = ""
    timezone: str = "UTC"

    @property
    def count(self) -> int:
        return len(self.anomalies)


_LABELS: Final[dict[str, dict[str, str]]] = {
    "zh-CN": {
        "info": "提示", "minor": "一般", "major": "严重", "critical": "紧急",
        "opened": "新异常", "escalated": "异常升级", "resolved": "异常已解决",
        "test": "测试消息",
        "alarm": "设备报警", "limit": "工艺超限", "offline": "设备离线", "stop": "停机",
        "scrap_rate": "废品率超标", "stock_low": "库存低于安全库存", "maintenance": "保养到期",
        "material": "物料异常", "operator": "人员异常", "quality": "质量异常",
        "open": "待处理", "acknowledged": "已确认", "closed": "已关闭",
        "count": "共 {n} 条", "suppressed": "(已合并 {n} 条)", "more": "…… 另有 {n} 条",
        "work_order": "工单", "customer": "客户", "step": "工序", "view": "在 plantsync 中查看",
        "test_text": "这是一条来自 plantsync 的测试消息,通道“{name}”配置正确。",
        "code": "代码", "time": "时间", "machine": "设备",
    },
    "en": {
        "info": "Info", "minor": "Minor", "major": "Major", "critical": "Critical",
        "opened": "New anomaly", "escalated": "Anomaly escalated",
        "resolved": "Anomaly resolved", "test": "Test message",
        "alarm": "Alarm", "limit": "Limit breach", "offline": "Machine offline", "stop": "Stop",
        "scrap_rate": "Scrap rate", "stock_low": "Stock below safety",
        "maintenance": "Maintenance due", "material": "Material", "operator": "Operator",
        "quality": "Quality",
        "open": "open", "acknowledged": "acknowledged", "closed": "closed",
        "count": "{n} in total", "suppressed": " ({n} grouped)", "more": "... and {n} more",
        "work_order": "work order", "customer": "customer", "step": "step",
        "view": "View in plantsync",
        "test_text": "This is a test message from plantsync: channel \"{name}\" works.",
        "code": "code", "time": "time", "machine": "machine",
    },
}
_LABELS["zh-CN"]["resolved_status"] = "已解决"
_LABELS["en"]["resolved_status"] = "resolved"


def _t(locale: str, key: str, **kw: Any) -> str:
    text = _LABELS.get(locale, _LABELS["en"]).get(key, key)
    return text.format(**kw) if kw else text


def _status_label(locale: str, status: str) -> str:
    return _t(locale, "resolved_status" if status == "resolved" else status)


def _local_time(ts: int, zone: str) -> str:
    try:
        tz: Any = ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        tz = UTC
    return datetime.fromtimestamp(ts / 1000, tz).strftime("%Y-%m-%d %H:%M:%S")


def _anomaly_url(msg: Message, anomaly_id: int | None = None) -> str | None:
    if not msg.cloud_url:
        return None
    base = msg.cloud_url.rstrip("/") + "/anomalies"   # the web page (cloud/web); ?id= opens one
    return f"{base}?id={anomaly_id}#anomaly-{anomaly_id}" if anomaly_id is not None else base


def _worst(msg: Message) -> str:
    return max((a.severity for a in msg.anomalies), key=lambda s: SEVERITY_RANK.get(s, 0),
               default="info")


def headline(msg: Message, locale: str) -> str:
    """One line: severity, event, where and what (the subject of a mail, a chat title)."""
    if msg.event == "test" or not msg.anomalies:
        return f"plantsync {_t(locale, 'test')}"
    first = msg.anomalies[0]
    what = _t(locale, first.kind) + (f" {first.code}" if first.code else "")
    parts = [f"[{_t(locale, _worst(msg))}] {_t(locale, msg.event)}"]
    if first.machine:
        parts.append(first.machine)
    parts.append(what)
    line = " · ".join(parts)
    if msg.count > 1:
        line += f" ×{msg.count}"
    return line


def _link_text(link: LinkView, locale: str) -> str:
    out = f"{_t(locale, 'work_order')} {link.work_order}"
    extra = []
    if link.customer:
        extra.append(f"{_t(locale, 'customer')} {link.customer}")
    if link.step is not None:
        op = f" {link.operation}" if link.operation else ""
        extra.append(f"{_t(locale, 'step')} {link.step}{op}")
    if extra:
        sep = "," if locale == "zh-CN" else ", "
        out += (f"({sep.join(extra)})" if locale == "zh-CN" else f" ({sep.join(extra)})")
    return out


def _anomaly_line(a: AnomalyView, msg: Message, locale: str) -> str:
    line = (f"#{a.id} {_local_time(a.ts, msg.timezone)} [{_t(locale, a.severity)}] {a.title}"
            f" · {_status_label(locale, a.status)}")
    if a.links:
        sep = ";" if locale == "zh-CN" else "; "
        line += " — " + sep.join(_link_text(link, locale) for link in a.links)
    return line


def _lines(msg: Message, locale: str, name: str = "") -> list[str]:
    """The body as plain lines (shared by the chat markdown and the mail)."""
    if msg.event == "test" or not msg.anomalies:
        return [_t(locale, "test_text", name=name)]
    out = [_t(locale, "count", n=msg.count)
           + (_t(locale, "suppressed", n=msg.suppressed) if msg.suppressed else "")]
    out += [_anomaly_line(a, msg, locale) for a in msg.anomalies[:LISTED_IN_TEXT]]
    if msg.count > LISTED_IN_TEXT:
        out.append(_t(locale, "more", n=msg.count - LISTED_IN_TEXT))
    return out


def _markdown(msg: Message, locale: str, name: str) -> str:
    lines = _lines(msg, locale, name)
    text = [f"### {headline(msg, locale)}", "", lines[0], ""]
    text += [f"- {line}" for line in lines[1:]]
    url = _anomaly_url(msg, msg.anomalies[0].id if msg.count == 1 else None)
    if url and msg.anomalies:
        text += ["", f"[{_t(locale, 'view')}]({url})"]
    return "\n".join(text)


def webhook_body(msg: Message) -> dict[str, Any]:
    """The generic JSON webhook document (schema ``plantsync.notification/1``, see the
    module docstring). Every anomaly of the message is listed."""
    return {
        "schema": WEBHOOK_SCHEMA,
        "notification_id": msg.notification_id,
        "event": msg.event,
        "count": msg.count,
        "suppressed": msg.suppressed,
        "url": _anomaly_url(msg),
        "anomalies": [{
            "id": a.id, "kind": a.kind, "code": a.code, "severity": a.severity,
            "status": a.status, "title": a.title, "machine": a.machine, "ts": clock.iso_ms(a.ts),
            "url": _anomaly_url(msg, a.id),
            "links": [{"work_order": link.work_order, "customer": link.customer,
                       "step": link.step, "operation": link.operation} for link in a.links],
        } for a in msg.anomalies],
    }


def truncate_utf8(text: str, max_bytes: int, marker: str = "…") -> str:
    """``text`` cut to at most ``max_bytes`` UTF-8 bytes on a character boundary, ending
    with ``marker`` when cut."""
    raw = text.encode("utf-8")
    if len(raw) <= max_bytes:
        return text
    room = max_bytes - len(marker.encode("utf-8"))
    return raw[:max(room, 0)].decode("utf-8", errors="ignore") + marker


def dingtalk_body(msg: Message, locale: str = "zh-CN", name: str = "") -> dict[str, Any]:
    """A DingTalk robot markdown message."""
    return {"msgtype": "markdown",
            "markdown": {"title": truncate_utf8(headline(msg, locale), 200),
                         "text": truncate_utf8(_markdown(msg, locale, name), DINGTALK_MAX_BYTES)}}


def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    """DingTalk's robot signature: base64 of HMAC-SHA256 over ``"<ts>\\n<secret>"`` keyed
    with the secret (not yet URL-encoded)."""
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp_ms}\n{secret}".encode(),
                   hashlib.sha256)
    return base64.b64encode(mac.digest()).decode("ascii")


def dingtalk_url(target: str, secret: str | None, timestamp_ms: int) -> str:
    """The robot URL to post to: ``target`` with ``&timestamp=&sign=`` when signed."""
    if not secret:
        return target
    sign = urllib.parse.quote_plus(dingtalk_sign(secret, timestamp_ms))
    sep = "&" if urllib.parse.urlsplit(target).query else "?"
    return f"{target}{sep}timestamp={timestamp_ms}&sign={sign}"


def wecom_body(msg: Message, locale: str = "zh-CN", name: str = "") -> dict[str, Any]:
    """A WeCom group robot markdown message, content at most 4096 UTF-8 bytes."""
    return {"msgtype": "markdown",
            "markdown": {"content": truncate_utf8(_markdown(msg, locale, name), WECOM_MAX_BYTES)}}


def email_message(msg: Message, locale: str, sender: str, recipients: Sequence[str],
                  name: str = "") -> EmailMessage:
    """A plain-text UTF-8 mail (subject encoded per RFC 2047)."""
    mail = EmailMessage()
    mail["Subject"] = headline(msg, locale)
    mail["From"] = sender if "<" in sender else formataddr(("plantsync", sender))
    mail["To"] = ", ".join(recipients)
    mail["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2].strip(">") or None)
    body = [headline(msg, locale), "", *_lines(msg, locale, name)]
    url = _anomaly_url(msg, msg.anomalies[0].id if msg.count == 1 else None)
    if url and msg.anomalies:
        body += ["", f"{_t(locale, 'view')}: {url}"]
    mail.set_content("\n".join(body) + "\n", charset="utf-8")
    return mail


async def load_message(session: AsyncSession, event: str, anomaly_ids: Sequence[int], *,
                       suppressed: int = 0, notification_id: int | None = None,
                       conf: dict[str, Any] | None = None) -> Message:
    """The message for these anomalies as they are now (status, links, machine name)."""
    conf = conf if conf is not None else await settings.get(session, SETTINGS_KEY)
    a = anomalies.c
    rows = (await session.execute(
        select(a.id, a.kind, a.code, a.severity, a.status, a.title, a.ts, a.gateway_id,
               a.device, machines.c.name.label("machine"), materials.c.code.label("mcode"),
               materials.c.name.label("mname"))
        .select_from(anomalies.outerjoin(machines, machines.c.id == a.machine_id)
                     .outerjoin(materials, materials.c.id == a.material_id))
        .where(a.id.in_(list(anomaly_ids))))).mappings().all()
    links: dict[int, list[LinkView]] = {}
    if rows:
        link_rows = (await session.execute(
            select(anomaly_links.c.anomaly_id, work_orders.c.number,
                   func.coalesce(anomaly_links.c.customer, work_orders.c.customer)
                   .label("customer"), wo_operations.c.step, wo_operations.c.name)
            .select_from(anomaly_links
                         .join(work_orders, work_orders.c.id == anomaly_links.c.work_order_id)
                         .outerjoin(wo_operations,
                                    wo_operations.c.id == anomaly_links.c.wo_operation_id))
            .where(anomaly_links.c.anomaly_id.in_([r["id"] for r in rows]))
            .order_by(anomaly_links.c.id))).mappings().all()
        for lr in link_rows:
            links.setdefault(lr["anomaly_id"], []).append(
                LinkView(lr["number"], lr["customer"], lr["step"], lr["name"]))
    order = {aid: i for i, aid in enumerate(anomaly_ids)}
    views = []
    for r in sorted(rows, key=lambda r: order.get(r["id"], 0)):
        where = r["machine"] or (f"{r['mcode']} {r['mname']}" if r["mcode"] else None) or (
            "/".join(x for x in (r["gateway_id"], r["device"]) if x) or None)
        views.append(AnomalyView(r["id"], r["kind"], r["code"], r["severity"], r["status"],
                                 r["title"], where, r["ts"], tuple(links.get(r["id"], ()))))
    return Message(event, tuple(views), suppressed, notification_id,
                   str(conf.get("cloud_url") or ""), str(conf.get("timezone") or "UTC"))


# -- sending -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Channel:
    id: int
    name: str
    kind: str
    target: str
    secret: str | None = field(default=None, repr=False)
    min_severity: str = "minor"
    kinds: list[str] | None = None
    enabled: bool = True

    @classmethod
    def from_row(cls, row: Any) -> Channel:
        return cls(row["id"], row["name"], row["kind"], row["target"], row["secret"],
                   row["min_severity"], row["kinds"], row["enabled"])


def locale_for(channel: Channel, conf: dict[str, Any]) -> str:
    loc = (conf.get("locale") or {}).get(channel.kind)
    if loc in LOCALES:
        return str(loc)
    return "en" if channel.kind == "webhook" else "zh-CN"


def backoff_s(attempts: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Delay before the next try after ``attempts`` failed ones: ``base * 2**(n-1)``
    capped at ``cap``, drawn from its upper half (``buffer.backoff``, equal jitter: a
    channel that is down is not retried almost at once)."""
    return delay_for(attempts - 1, base, cap, jitter="equal", rng=rng)


def _redact(text: str, channel: Channel) -> str:
    """``text`` without the channel's secret or the credentials in its URL."""
    secrets_ = [channel.secret] if channel.secret else []
    if channel.kind != "email":
        parts = urllib.parse.urlsplit(channel.target)
        secrets_ += [v for _k, v in urllib.parse.parse_qsl(parts.query) if len(v) >= 4]
        if parts.password:
            secrets_.append(parts.password)
    for s in secrets_:
        text = text.replace(s, "***").replace(urllib.parse.quote_plus(s), "***")
    text = re.sub(r"(sign|access_token|key|token)=[^&\s\"']+", r"\1=***", text)
    return text[:MAX_ERROR]


def mask_target(kind: str, target: str) -> str:
    """A target fit to show: URL query values (robot tokens) masked to their last 4
    characters (all of it when short), a password in the URL masked."""
    if kind == "email":
        return target
    parts = urllib.parse.urlsplit(target)
    query = "&".join(f"{urllib.parse.quote_plus(k)}=…{urllib.parse.quote_plus(v[-4:]) if len(v) > 8 else ''}"
                     for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    netloc = parts.netloc
    if parts.password:
        netloc = netloc.replace(f":{parts.password}@", ":…@")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))


async def send(channel: Channel, msg: Message, conf: dict[str, Any], *, now_ms: int,
               client: httpx.AsyncClient | None = None) -> None:
    """Send ``msg`` on ``channel`` once. Raises DeliveryFailed (message without secrets)."""
    try:
        if channel.kind == "email":
            await _send_mail(channel, msg, conf)
        else:
            own = client is None
            http = client or httpx.AsyncClient(timeout=float(conf["timeout_s"]))
            try:
                await _post(channel, msg, conf, now_ms, http)
            finally:
                if own:
                    await http.aclose()
    except DeliveryFailed as exc:
        raise DeliveryFailed(_redact(str(exc), channel)) from None


async def _post(channel: Channel, msg: Message, conf: dict[str, Any], now_ms: int,
                client: httpx.AsyncClient) -> None:
    locale = locale_for(channel, conf)
    headers = {"Content-Type": "application/json; charset=utf-8",
               "User-Agent": "plantsync-cloud"}
    url = channel.target
    if channel.kind == "webhook":
        body = json.dumps(webhook_body(msg), ensure_ascii=False).encode("utf-8")
        if channel.secret:
            digest = hmac.new(channel.secret.encode(), body, hashlib.sha256).hexdigest()
            headers[SIGNATURE_HEADER] = f"sha256={digest}"
    elif channel.kind == "dingtalk":
        body = json.dumps(dingtalk_body(msg, locale, channel.name),
                          ensure_ascii=False).encode("utf-8")
        url = dingtalk_url(channel.target, channel.secret, now_ms)
    elif channel.kind == "wecom":
        body = json.dumps(wecom_body(msg, locale, channel.name),
                          ensure_ascii=False).encode("utf-8")
    else:
        raise DeliveryFailed(f"unknown channel kind {channel.kind!r}")
    try:
        resp = await client.post(url, content=body, headers=headers)
    except httpx.TimeoutException as exc:
        raise DeliveryFailed(f"timeout ({type(exc).__name__})") from None
    except httpx.HTTPError as exc:
        raise DeliveryFailed(f"{type(exc).__name__}: {exc}") from None
    if not 200 <= resp.status_code < 300:
        raise DeliveryFailed(f"HTTP {resp.status_code}: {resp.text[:300]}")
    if channel.kind in ("dingtalk", "wecom"):
        try:
            answer = resp.json()
        except ValueError:
            raise DeliveryFailed(f"HTTP {resp.status_code} but not JSON: "
                                 f"{resp.text[:200]!r}") from None
        code = answer.get("errcode") if isinstance(answer, dict) else None
        if code != 0:
            errmsg = answer.get("errmsg") if isinstance(answer, dict) else None
            raise DeliveryFailed(f"errcode {code}: {errmsg}")


async def _send_mail(channel: Channel, msg: Message, conf: dict[str, Any]) -> None:
    smtp = conf["smtp"]
    if not smtp.get("host"):
        raise DeliveryFailed("no SMTP server: set notifications.smtp.host in the settings")
    recipients = parse_addresses(channel.target)
    sender = smtp.get("from") or "plantsync@localhost"
    mail = email_message(msg, locale_for(channel, conf), sender, recipients, channel.name)
    password = None
    if smtp.get("password_file"):
        try:
            password = (await asyncio.to_thread(Path(smtp["password_file"]).read_text,
                                                encoding="utf-8")).strip()
        except OSError as exc:
            raise DeliveryFailed(f"smtp.password_file {smtp['password_file']}: "
                                 f"{exc.strerror}") from None
    timeout = float(conf["timeout_s"])

    def go() -> None:
        host, port = str(smtp["host"]), int(smtp.get("port") or 25)
        cls = smtplib.SMTP_SSL if smtp.get("ssl") else smtplib.SMTP
        with cls(host, port, timeout=timeout) as client:
            if smtp.get("starttls") and not smtp.get("ssl"):
                client.starttls(context=ssl.create_default_context())
            if smtp.get("user") and password is not None:
                client.login(str(smtp["user"]), password)
            refused = client.send_message(mail, from_addr=sender.split("<")[-1].strip("> "),
                                          to_addrs=recipients)
            if refused and len(refused) == len(recipients):
                raise DeliveryFailed(f"every recipient refused: {sorted(refused)}")

    try:
        await asyncio.to_thread(go)
    except DeliveryFailed:
        raise
    except smtplib.SMTPException as exc:
        text = str(exc)
        if password:
            text = text.replace(password, "***")
        raise DeliveryFailed(f"SMTP {type(exc).__name__}: {text}") from None
    except (OSError, ssl.SSLError) as exc:
        raise DeliveryFailed(f"SMTP {smtp['host']}:{smtp.get('port')}: "
                             f"{type(exc).__name__}: {exc}") from None


# -- the delivery job ---------------------------------------------------------------------

async def _claim(db: Database, now: datetime, lease: timedelta, batch: int) -> list[Any]:
    n = notifications.c
    due = (select(n.id).where(n.status == "pending", n.next_attempt <= now)
           .order_by(n.next_attempt, n.id).limit(batch))
    if db.dialect == "postgresql":
        due = due.with_for_update(skip_locked=True)
    stmt = (update(notifications).where(n.id.in_(due.scalar_subquery()))
            .values(attempts=n.attempts + 1, next_attempt=now + lease)
            .returning(n.id, n.channel_id, n.event, n.anomaly_ids, n.suppressed, n.attempts))
    async with db.sessions() as session, session.begin():
        return list((await session.execute(stmt)).mappings().all())


async def deliver(db: Database, now_ms: int) -> int:
    """The ``notify`` job: send the due pending notifications; returns how many were
    sent. Safe to run in several processes at once (each message is claimed by one).
    A failed send is retried with backoff, and goes to the dead-letter list after
    ``max_attempts``."""
    now = clock.from_ms(now_ms)
    async with db.sessions() as session:
        conf = await settings.get(session, SETTINGS_KEY)
    timeout = float(conf["timeout_s"])
    lease = timedelta(seconds=timeout * 3 + 30)
    claimed = await _claim(db, now, lease, int(conf["batch"]) or 50)
    if not claimed:
        return 0
    async with db.sessions() as session:
        channel_rows = (await session.execute(
            select(notification_channels).where(notification_channels.c.id.in_(
                {c["channel_id"] for c in claimed})))).mappings().all()
        channels = {r["id"]: Channel.from_row(r) for r in channel_rows}
        messages = {c["id"]: await load_message(session, c["event"], c["anomaly_ids"],
                                                suppressed=c["suppressed"],
                                                notification_id=c["id"], conf=conf)
                    for c in claimed}
    limit = asyncio.Semaphore(8)
    async with httpx.AsyncClient(timeout=timeout) as client:

        async def one(row: Any) -> bool:
            channel = channels.get(row["channel_id"])
            error: str | None = None
            if channel is None or not channel.enabled:
                error = "channel disabled or deleted"
            elif not messages[row["id"]].anomalies:
                error = "its anomalies no longer exist"
            else:
                async with limit:
                    try:
                        await send(channel, messages[row["id"]], conf, now_ms=now_ms,
                                   client=client)
                    except DeliveryFailed as exc:
                        error = str(exc)
            await _settle(db, row, channel, error, now, conf)
            return error is None

        results = await asyncio.gather(*(one(r) for r in claimed))
    return sum(results)


async def _settle(db: Database, row: Any, channel: Channel | None, error: str | None,
                  now: datetime, conf: dict[str, Any]) -> None:
    n = notifications.c
    attempts = int(row["attempts"])
    where = and_(n.id == row["id"], n.attempts == attempts, n.status == "pending")
    name = channel.name if channel else None
    if error is None:
        values: dict[str, Any] = {"status": "sent", "sent_at": now, "last_error": None}
        log.info("notification_sent", notification=row["id"], channel=name,
                 anomalies=len(row["anomaly_ids"]), attempts=attempts)
    elif (attempts >= int(conf["max_attempts"]) or channel is None or not channel.enabled
          or error == "its anomalies no longer exist"):
        values = {"status": "dead", "last_error": error}
        log.error("notification_dead", notification=row["id"], channel=name,
                  attempts=attempts, error=error)
    else:
        delay = backoff_s(attempts, float(conf["backoff_base_s"]), float(conf["backoff_cap_s"]))
        # whole milliseconds: the job's clock is epoch ms
        values = {"next_attempt": now + timedelta(milliseconds=round(delay * 1000)),
                  "last_error": error}
        log.warning("notification_failed", notification=row["id"], channel=name,
                    attempts=attempts, retry_in_s=round(delay, 1), error=error)
    async with db.sessions() as session, session.begin():
        await session.execute(update(notifications).where(where).values(**values))


# -- the dead-letter list ---------------------------------------------------------------

def _notification_doc(r: Any) -> dict[str, Any]:
    return {"id": r["id"], "channel": {"id": r["channel_id"], "name": r["channel_name"],
                                       "kind": r["channel_kind"]},
            "event": r["event"], "group_key": r["group_key"], "anomaly_ids": r["anomaly_ids"],
            "suppressed": r["suppressed"], "status": r["status"], "attempts": r["attempts"],
            "next_attempt": clock.iso(r["next_attempt"]), "last_error": r["last_error"],
            "created": clock.iso(r["created"]), "sent_at": clock.iso(r["sent_at"])}


def _notification_select() -> Any:
    return (select(notifications, notification_channels.c.name.label("channel_name"),
                   notification_channels.c.kind.label("channel_kind"))
            .select_from(notifications.join(
                notification_channels,
                notification_channels.c.id == notifications.c.channel_id)))


async def list_notifications(session: AsyncSession, *, status: str | None = None,
                             channel_id: int | None = None, limit: int = 50,
                             offset: int = 0) -> dict[str, Any]:
    """Outbox messages, newest first: ``{items, total, limit, offset}``. ``status``
    pending | sent | dead (dead = the dead-letter list)."""
    if status is not None and status not in NOTIFICATION_STATUSES:
        raise NotifyError("status", f"status must be one of {', '.join(NOTIFICATION_STATUSES)}, "
                          f"got {status!r}")
    conds = []
    if status is not None:
        conds.append(notifications.c.status == status)
    if channel_id is not None:
        conds.append(notifications.c.channel_id == channel_id)
    total = await session.scalar(select(func.count()).select_from(notifications).where(*conds))
    rows = (await session.execute(_notification_select().where(*conds)
                                  .order_by(notifications.c.id.desc())
                                  .limit(limit).offset(offset))).mappings().all()
    return {"items": [_notification_doc(r) for r in rows], "total": int(total or 0),
            "limit": limit, "offset": offset}


async def retry(session: AsyncSession, notification_id: int, actor: Actor | str, *,
                now: datetime | None = None) -> dict[str, Any]:
    """Put a dead message back in the queue with a fresh round of attempts (audited).
    Raises UnknownNotification, NotRetryable (it is not dead)."""
    now = now or clock.now()
    row = (await session.execute(_notification_select()
                                 .where(notifications.c.id == notification_id)
                                 .with_for_update(of=notifications))).mappings().one_or_none()
    if row is None:
        raise UnknownNotification("id", f"no notification {notification_id}")
    if row["status"] != "dead":
        raise NotRetryable("status", f"notification {notification_id} is {row['status']}; "
                           "only a dead one can be retried")
    await session.execute(update(notifications).where(notifications.c.id == notification_id)
                          .values(status="pending", attempts=0, next_attempt=now))
    await audit(session, actor, "notification.retry", "notification", notification_id,
                {"channel": row["channel_name"], "attempts": row["attempts"],
                 "last_error": row["last_error"]})
    doc = _notification_doc(row)
    doc.update(status="pending", attempts=0, next_attempt=clock.iso(now))
    return doc


# -- channels ----------------------------------------------------------------------------

_EMAIL = re.compile(r"^[^@\s,;<>]+@[^@\s,;<>]+\.[^@\s,;<>.]+$")
_UNSET: Any = object()


def parse_addresses(target: str) -> list[str]:
    """The comma-separated addresses of an email channel. Raises NotifyError."""
    addresses = [a.strip() for a in target.split(",") if a.strip()]
    if not addresses:
        raise NotifyError("target", "target: give one or more email addresses, comma-separated")
    for a in addresses:
        if not _EMAIL.match(a):
            raise NotifyError("target", f"target: {a!r} is not an email address "
                              "(like ops@example.com)")
    return addresses


def _check_channel(kind: str, target: str, secret: str | None, min_severity: str,
                   kinds: list[str] | None, name: str) -> None:
    if not name.strip() or len(name) > 64:
        raise NotifyError("name", "name: 1 to 64 characters")
    if kind not in CHANNEL_KINDS:
        raise NotifyError("kind", f"kind: {kind!r} is not one of {', '.join(CHANNEL_KINDS)}")
    if len(target) > 1000:
        raise NotifyError("target", "target: at most 1000 characters")
    if kind == "email":
        parse_addresses(target)
    else:
        parts = urllib.parse.urlsplit(target)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise NotifyError("target", f"target: {mask_target(kind, target)!r} is not an "
                              "http(s) URL (like https://oapi.dingtalk.com/robot/send?"
                              "access_token=...)")
    if secret is not None and kind not in ("webhook", "dingtalk"):
        raise NotifyError("secret", f"secret: a {kind} channel has no signing secret (only "
                          "dingtalk and webhook sign)")
    if secret is not None and not (1 <= len(secret) <= 255):
        raise NotifyError("secret", "secret: 1 to 255 characters")
    if min_severity not in SEVERITIES:
        raise NotifyError("min_severity", f"min_severity: {min_severity!r} is not one of "
                          f"{', '.join(SEVERITIES)}")
    if kinds is not None:
        if not isinstance(kinds, list) or not kinds:
            raise NotifyError("kinds", "kinds: a non-empty list of anomaly kinds, or null "
                              "for all")
        for k in kinds:
            if k not in ANOMALY_KINDS:
                raise NotifyError("kinds", f"kinds: {k!r} is not an anomaly kind (known: "
                                  f"{', '.join(ANOMALY_KINDS)})")


def channel_doc(row: Any) -> dict[str, Any]:
    """A channel as the API shows it: never the secret (``has_secret``), robot tokens
    in the target masked."""
    return {"id": row["id"], "name": row["name"], "kind": row["kind"],
            "target": mask_target(row["kind"], row["target"]),
            "has_secret": bool(row["secret"]), "min_severity": row["min_severity"],
            "kinds": row["kinds"], "enabled": row["enabled"], "created": clock.iso(row["created"])}


async def _channel_row(session: AsyncSession, channel_id: int) -> Any:
    row = (await session.execute(select(notification_channels)
                                 .where(notification_channels.c.id == channel_id))
           ).mappings().one_or_none()
    if row is None:
        raise UnknownChannel("id", f"no notification channel {channel_id}")
    return row


async def _name_taken(session: AsyncSession, name: str, but: int | None = None) -> None:
    stmt = select(notification_channels.c.id).where(notification_channels.c.name == name)
    if but is not None:
        stmt = stmt.where(notification_channels.c.id != but)
    if await session.scalar(stmt) is not None:
        raise ChannelExists("name", f"name: a channel named {name!r} exists")


async def list_channels(session: AsyncSession) -> list[dict[str, Any]]:
    rows = (await session.execute(select(notification_channels)
                                  .order_by(notification_channels.c.id))).mappings().all()
    return [channel_doc(r) for r in rows]


async def get_channel(session: AsyncSession, channel_id: int) -> dict[str, Any]:
    return channel_doc(await _channel_row(session, channel_id))


async def create_channel(session: AsyncSession, actor: Actor | str, *, name: str, kind: str,
                         target: str, secret: str | None = None, min_severity: str = "minor",
                         kinds: list[str] | None = None, enabled: bool = True) -> dict[str, Any]:
    """Add a channel (audited, without its secret). Raises NotifyError naming the field."""
    target = target.strip()
    _check_channel(kind, target, secret, min_severity, kinds, name)
    await _name_taken(session, name)
    res = await session.execute(notification_channels.insert().values(
        name=name, kind=kind, target=target, secret=secret, min_severity=min_severity,
        kinds=kinds, enabled=enabled, created=clock.now()))
    channel_id = int(res.inserted_primary_key[0])
    await audit(session, actor, "notification_channel.create", "notification_channel",
                channel_id, {"name": name, "kind": kind, "target": mask_target(kind, target),
                             "has_secret": bool(secret), "min_severity": min_severity,
                             "kinds": kinds, "enabled": enabled})
    return await get_channel(session, channel_id)


async def update_channel(session: AsyncSession, actor: Actor | str, channel_id: int, *,
                         name: str = _UNSET, target: str = _UNSET, secret: str | None = _UNSET,
                         min_severity: str = _UNSET, kinds: list[str] | None = _UNSET,
                         enabled: bool = _UNSET) -> dict[str, Any]:
    """Change the given fields (``secret=None`` removes it; a kind cannot change).
    Audited without the secret. Raises UnknownChannel, NotifyError."""
    row = await _channel_row(session, channel_id)
    given = {k: v for k, v in {"name": name, "target": target, "secret": secret,
                               "min_severity": min_severity, "kinds": kinds,
                               "enabled": enabled}.items() if v is not _UNSET}
    if "target" in given:
        given["target"] = str(given["target"]).strip()
    merged = {**dict(row), **given}
    _check_channel(merged["kind"], merged["target"], merged["secret"], merged["min_severity"],
                   merged["kinds"], merged["name"])
    if "name" in given:
        await _name_taken(session, given["name"], but=channel_id)
    if given:
        await session.execute(update(notification_channels)
                              .where(notification_channels.c.id == channel_id).values(**given))
        shown = {k: v for k, v in given.items() if k != "secret"}
        if "target" in shown:
            shown["target"] = mask_target(row["kind"], shown["target"])
        if "secret" in given:
            shown["secret"] = "set" if given["secret"] else "removed"
        await audit(session, actor, "notification_channel.update", "notification_channel",
                    channel_id, shown)
    return await get_channel(session, channel_id)


async def delete_channel(session: AsyncSession, actor: Actor | str, channel_id: int) -> int:
    """Delete a channel and its outbox messages (audited with their count); returns that
    count. To keep the history, disable the channel instead. Raises UnknownChannel."""
    row = await _channel_row(session, channel_id)
    res = await session.execute(delete(notifications)
                                .where(notifications.c.channel_id == channel_id))
    await session.execute(delete(notification_channels)
                          .where(notification_channels.c.id == channel_id))
    removed = int(getattr(res, "rowcount", 0) or 0)
    await audit(session, actor, "notification_channel.delete", "notification_channel",
                channel_id, {"name": row["name"], "kind": row["kind"],
                             "notifications_removed": removed})
    return removed


async def send_test(db: Database, channel_id: int, actor: Actor | str, *,
                    now_ms: int | None = None) -> None:
    """Send a test message on a channel now (not through the outbox; works on a
    disabled channel too). Audited. Raises UnknownChannel, DeliveryFailed."""
    async with db.sessions() as session:
        channel = Channel.from_row(await _channel_row(session, channel_id))
        conf = await settings.get(session, SETTINGS_KEY)
    stamp = now_ms if now_ms is not None else clock.now().timestamp() * 1000
    error: str | None = None
    try:
        await send(channel, Message("test", (), cloud_url=str(conf.get("cloud_url") or "")),
                   conf, now_ms=int(stamp))
    except DeliveryFailed as exc:
        error = str(exc)
    async with db.sessions() as session, session.begin():
        await audit(session, actor, "notification_channel.test", "notification_channel",
                    channel_id, {"name": channel.name, "ok": error is None, "error": error})
    log.info("notification_test", channel=channel.name, ok=error is None, error=error)
    if error is not None:
        raise DeliveryFailed(error)
