"""What a message says: its anomalies as they are when it is sent (``load_message``) and
its text per channel kind, in the locale of the channel kind (setting ``locale``: zh-CN
or en).

Message formats (pure functions: ``webhook_body``, ``dingtalk_body``, ``dingtalk_url``,
``wecom_body``, ``email_message``):

- generic webhook: JSON ``{"schema": "plantsync.notification/1", "notification_id",
  "event", "count", "suppressed", "url", "anomalies": [{"id", "kind", "code", "severity",
  "status", "title", "machine", "ts" (ISO 8601 UTC), "url", "links": [{"work_order",
  "customer", "step", "operation"}]}]}``; with a channel secret, header
  ``X-Plantsync-Signature: sha256=<hex HMAC-SHA256 of the body>`` (delivery.py).
- DingTalk robot: ``{"msgtype": "markdown", "markdown": {"title", "text"}}``; with a
  secret, ``&timestamp=<ms>&sign=<urlencoded base64 HMAC-SHA256 of "ts\\nsecret">``.
- WeCom group robot: ``{"msgtype": "markdown", "markdown": {"content"}}``, content cut
  to 4096 UTF-8 bytes on a character boundary.
- email: subject + plain-text UTF-8 body to the comma-separated addresses of ``target``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formataddr, make_msgid
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.core import anomaly_text, clock, plant, settings
from cloud.core.models import anomalies, anomaly_links, machines, materials, wo_operations, work_orders
from cloud.notify.config import SETTINGS_KEY, SEVERITY_RANK

WEBHOOK_SCHEMA: Final = "plantsync.notification/1"
WECOM_MAX_BYTES: Final = 4096
DINGTALK_MAX_BYTES: Final = 18_000   # DingTalk's limit is 20000 bytes of the message
LISTED_IN_TEXT: Final = 10           # anomalies spelled out in a chat message or mail


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
    # the title as a message code (cloud/core/anomaly_text.py), rendered per channel locale
    title_code: str | None = None
    title_params: dict[str, Any] | None = None

    def title_in(self, locale: str) -> str:
        """The title in ``locale`` (the stored English title when it has no code)."""
        return anomaly_text.title(self.title_code, self.title_params, locale, self.title)


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
    line = (f"#{a.id} {_local_time(a.ts, msg.timezone)} [{_t(locale, a.severity)}] "
            f"{a.title_in(locale)}"
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
        select(a.id, a.kind, a.code, a.severity, a.status, a.title, a.title_code,
               a.title_params, a.ts, a.gateway_id,
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
                                 r["title"], where, r["ts"], tuple(links.get(r["id"], ())),
                                 r["title_code"], r["title_params"]))
    zone = conf.get("timezone") or (await plant.timezone(session)).key
    return Message(event, tuple(views), suppressed, notification_id,
                   str(conf.get("cloud_url") or ""), str(zone))
