"""Anomaly notifications: the outbox (``enqueue``, grouped per machine and code), what a
message says in Chinese and English, channels (webhook, DingTalk, WeCom, email), the
delivery job with retries and the dead-letter list."""

from __future__ import annotations

from cloud.notify.service import (
    NotifyError,
    create_channel,
    delete_channel,
    deliver,
    enqueue,
    get_channel,
    list_channels,
    list_notifications,
    retry,
    send_test,
    update_channel,
)

__all__ = [
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
    "update_channel",
]
