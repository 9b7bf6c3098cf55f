"""The ``notifications`` setting (``/api/v1/settings/notifications``, registered with
cloud/core/settings.py: grouping window, retries and backoff, timeouts, the links and
times in messages, message languages, the mail server) and the constants the parts of
the package share.

The SMTP password is not a setting: settings are written over HTTP, and a path settable
there let an admin read any file the service could (sent as ``AUTH PLAIN`` to a server
of their choosing). It is the cloud's own configuration instead, like its database URL:
the file ``$PLANTSYNC_SMTP_PASSWORD_FILE`` names (systemd: ``LoadCredential=`` and
``%d/smtp_password``), else ``/etc/plantsync/secrets/smtp_password`` when it exists; no
file, no ``AUTH``. ``smtp_password`` reads it when a mail is sent, so a new password needs
no restart. The ``smtp`` settings (host, user) are admin-only to read
(cloud/api/routes/settings.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Final, Literal

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


SMTP_PASSWORD_FILE_ENV: Final = "PLANTSYNC_SMTP_PASSWORD_FILE"
DEFAULT_SMTP_PASSWORD_FILE: Final = Path("/etc/plantsync/secrets/smtp_password")


class SmtpPasswordUnreadable(Exception):
    """The configured SMTP password file cannot be read (the message names the variable,
    never the path: the answer may be shown to every user)."""


def smtp_password() -> str | None:
    """The SMTP password from the cloud's own configuration (see the module docstring),
    stripped; None when none is configured. Raises SmtpPasswordUnreadable when
    ``$PLANTSYNC_SMTP_PASSWORD_FILE`` is set but cannot be read."""
    named = os.environ.get(SMTP_PASSWORD_FILE_ENV)
    if not named:
        if not DEFAULT_SMTP_PASSWORD_FILE.is_file():
            return None
        path = DEFAULT_SMTP_PASSWORD_FILE
    else:
        path = Path(named)
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise SmtpPasswordUnreadable(f"the SMTP password file (${SMTP_PASSWORD_FILE_ENV} or "
                                     f"{DEFAULT_SMTP_PASSWORD_FILE}) cannot be read: "
                                     f"{reason}") from None


class SmtpSettings(BaseModel):
    """The mail server of email channels. Its password is not here (see the module
    docstring)."""

    # defaults by keyword: mypy then knows SmtpSettings() needs no argument (default_factory)
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    host: str = Field(default="", description="empty: email channels cannot send")
    port: int = Field(default=25, ge=1, le=65535)
    user: str = ""
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
    timezone: str | None = Field(None, description="times in chat messages and mails "
                                 "(webhooks: ISO UTC); null: the plant's (settings 'plant')")
    locale: MessageLocales = Field(default_factory=MessageLocales)
    smtp: SmtpSettings = Field(default_factory=SmtpSettings)


settings.register(SETTINGS_KEY, NotificationSettings)


#: What a non-admin reads instead of the mail server's host and user.
HIDDEN: Final = "(hidden)"


def settings_for_reader(doc: dict[str, Any], *, admin: bool) -> dict[str, Any]:
    """The notification settings ``doc`` as a reader may see them: the mail server's
    host and user are admin-only (they say where mail goes and as whom); others read
    ``(hidden)`` for a set value, ``""`` for an unset one, so they still see whether email
    can be sent."""
    if admin:
        return doc
    smtp = dict(doc.get("smtp") or {})
    for name in ("host", "user"):
        if smtp.get(name):
            smtp[name] = HIDDEN
    return {**doc, "smtp": smtp}
