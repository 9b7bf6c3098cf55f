"""The outbox: ``enqueue(session, anomaly_id, event)`` never does network I/O: it writes
rows of the ``notifications`` table, one per enabled channel whose filter matches the
anomaly (``min_severity`` <= the anomaly's severity in info < minor < major < critical;
``kinds`` None = every kind, else the anomaly's kind must be listed).

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
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.core import clock, settings
from cloud.core.models import anomalies, notification_channels, notifications
from cloud.notify.config import EVENTS, SETTINGS_KEY, SEVERITY_RANK
from cloud.notify.errors import NotifyError

log = structlog.get_logger(__name__)


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
