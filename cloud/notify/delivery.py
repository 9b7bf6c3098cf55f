"""Sending, and the delivery job with its retries and the dead-letter list.

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
code), ``errcode == 0``. The DingTalk signing secret, the SMTP password (the cloud's
own configuration, cloud/notify/config.py) and the credentials in robot URLs are never logged, stored in
``last_error`` nor returned by the API (``redact``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import re
import smtplib
import ssl
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

import httpx
import structlog
from sqlalchemy import and_, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from buffer.backoff import delay_for
from cloud.auth import Actor
from cloud.core import clock, settings
from cloud.core.audit import audit
from cloud.core.db import Database
from cloud.core.models import NOTIFICATION_STATUSES, notification_channels, notifications
from cloud.notify.config import LOCALES, SETTINGS_KEY, SmtpPasswordUnreadable, smtp_password
from cloud.notify.errors import DeliveryFailed, NotifyError, NotRetryable, UnknownNotification
from cloud.notify.messages import (
    Message,
    dingtalk_body,
    dingtalk_url,
    email_message,
    load_message,
    webhook_body,
    wecom_body,
)

log = structlog.get_logger(__name__)

SIGNATURE_HEADER: Final = "X-Plantsync-Signature"
MAX_ERROR: Final = 1000
_EMAIL = re.compile(r"^[^@\s,;<>]+@[^@\s,;<>]+\.[^@\s,;<>.]+$")


# -- sending -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Channel:
    """A channel as sending needs it, secret included (never shown: channels.py
    ``channel_doc``)."""

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
    """The language of messages on ``channel`` (setting ``locale`` per channel kind)."""
    loc = (conf.get("locale") or {}).get(channel.kind)
    if loc in LOCALES:
        return str(loc)
    return "en" if channel.kind == "webhook" else "zh-CN"


def backoff_s(attempts: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Delay before the next try after ``attempts`` failed ones: ``base * 2**(n-1)``
    capped at ``cap``, drawn from its upper half (``buffer.backoff``, equal jitter: a
    channel that is down is not retried almost at once)."""
    return delay_for(attempts - 1, base, cap, jitter="equal", rng=rng)


def redact(text: str, channel: Channel) -> str:
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
        raise DeliveryFailed(redact(str(exc), channel)) from None


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
    try:
        password = await asyncio.to_thread(smtp_password)
    except SmtpPasswordUnreadable as exc:
        raise DeliveryFailed(str(exc)) from None
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
