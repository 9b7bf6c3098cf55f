"""The ``notifications`` setting (``/api/v1/settings/notifications``, registered with
cloud/core/settings.py: grouping window, retries and backoff, timeouts, the links and
times in messages, message languages, the mail server) and the constants the parts of
the package share."""

from __future__ import annotations

from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from cloud.core import settings
from cloud.core.models import SEVERITIES

SETTINGS_KEY: Final = "notifications"
SEVERITY_RANK: Final = {s: i for i, s in enumerate(SEVERITIES)}
EVENTS: Final = ("opened", "escalated", "resolved", "test")
LOCALES: Final = ("zh-CN", "en")

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

    # defaults by keyword: mypy then knows SmtpSettings() needs no argument (default_factory)
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    host: str = Field(default="", description="empty: email channels cannot send")
    port: int = Field(default=25, ge=1, le=65535)
    user: str = ""
    password_file: str = ""
    sender: str = Field(default="", alias="from", description="the From address")
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
