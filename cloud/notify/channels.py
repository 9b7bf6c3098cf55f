"""The channels a message can go to (a generic webhook, a DingTalk or WeCom robot, email
addresses): their checks, create, change and delete (audited, never with the secret), how
the API shows them (``channel_doc``: ``has_secret``, robot tokens masked), and a test
message sent at once."""

from __future__ import annotations

import urllib.parse
from typing import Any

import structlog
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.auth import Actor
from cloud.core import clock, settings
from cloud.core.audit import audit
from cloud.core.db import Database
from cloud.core.models import (
    ANOMALY_KINDS,
    CHANNEL_KINDS,
    SEVERITIES,
    notification_channels,
    notifications,
)
from cloud.notify.config import SETTINGS_KEY
from cloud.notify.delivery import Channel, parse_addresses, send
from cloud.notify.errors import ChannelExists, DeliveryFailed, NotifyError, UnknownChannel
from cloud.notify.messages import Message

log = structlog.get_logger(__name__)

_UNSET: Any = object()


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
    channel_id = int((await session.execute(notification_channels.insert().values(
        name=name, kind=kind, target=target, secret=secret, min_severity=min_severity,
        kinds=kinds, enabled=enabled, created=clock.now())
        .returning(notification_channels.c.id))).scalar_one())
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
    given: dict[str, Any] = {k: v for k, v in {"name": name, "target": target, "secret": secret,
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
