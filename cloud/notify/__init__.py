"""Anomaly notifications: an outbox written inside the anomaly's transaction, delivered
later by a periodic job (generic JSON webhook, DingTalk robot, WeCom robot, email).

Where each part lives (the design of each is in its module's docstring):

- ``outbox``: ``enqueue`` (which channels want an anomaly, grouping of alarm storms);
- ``messages``: what a message says, in Chinese or English, and its format per channel
  kind (pure functions), and loading one from the database;
- ``delivery``: sending on a channel, the ``notify`` job with retries and backoff, the
  dead-letter list and retrying from it by hand;
- ``channels``: the channels (checks, create, change, delete, a test message);
- ``config``: the ``notifications`` setting and the constants the parts share;
- ``errors``: the errors of this package.
"""

from __future__ import annotations

from cloud.notify.channels import (
    create_channel,
    delete_channel,
    get_channel,
    list_channels,
    send_test,
    update_channel,
)
from cloud.notify.config import SETTINGS_KEY, NotificationSettings, settings_for_reader
from cloud.notify.delivery import deliver, list_notifications, retry
from cloud.notify.errors import NotifyError
from cloud.notify.outbox import enqueue

__all__ = [
    "SETTINGS_KEY",
    "NotificationSettings",
    "NotifyError",
    "create_channel",
    "delete_channel",
    "deliver",
    "enqueue",
    "get_channel",
    "list_channels",
    "list_notifications",
    "retry",
    "send_test",
    "settings_for_reader",
    "update_channel",
]
