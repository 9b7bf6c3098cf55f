"""Languages of the web UI: simplified Chinese (``zh-CN``) and English (``en``).

Every visible string goes through a standard gettext catalog
(``cloud/web/locale/<ll_CC>/LC_MESSAGES/messages.po``), extracted from the templates and
from this package's Python (``N_("...")`` marks a string translated later, at render
time) by ``make i18n`` (``pybabel extract`` / ``update``; see babel.cfg). The ``.po``
files are the source of truth and are compiled in memory when the app starts, so no
binary ``.mo`` file can go stale; tests/unit/test_web_catalog.py fails when a message is
missing from the catalog or untranslated in zh_CN.

The language of a request: the user's own (``users.locale``, set by the switch on every
page or ``PUT /api/v1/me/locale``), else the ``plantsync_lang`` cookie (the login page's
switch), else the browser's ``Accept-Language``, else English.

Messages use Python ``%(name)s`` placeholders (Jinja's newstyle gettext), so a literal
percent sign is written ``%%``.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Final
from zoneinfo import ZoneInfo

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations

from cloud.core import headers

LOCALES: Final = ("zh-CN", "en")
DEFAULT_LOCALE: Final = "en"
LANG_COOKIE: Final = "plantsync_lang"
LOCALE_DIR: Final = Path(__file__).resolve().parent / "locale"
DOMAIN: Final = "messages"


def N_(message: str) -> str:
    """Mark ``message`` for extraction; it is translated where it is shown."""
    return message


def catalog_dir(locale: str) -> str:
    """``zh-CN`` -> ``zh_CN`` (gettext's directory name)."""
    return locale.replace("-", "_")


@cache
def translations(locale: str) -> Translations:
    """The compiled catalog of ``locale`` (one of LOCALES), read from its ``.po`` once."""
    if locale not in LOCALES:
        raise ValueError(f"locale {locale!r} is not one of {', '.join(LOCALES)}")
    po = LOCALE_DIR / catalog_dir(locale) / "LC_MESSAGES" / f"{DOMAIN}.po"
    with po.open("rb") as fh:
        catalog = read_po(fh, locale=catalog_dir(locale))
    buf = io.BytesIO()
    write_mo(buf, catalog, use_fuzzy=False)
    buf.seek(0)
    return Translations(fp=buf, domain=DOMAIN)


def negotiate(accept_language: str | None) -> str:
    """The best of LOCALES for an ``Accept-Language`` header (cloud/core/headers.py)."""
    return headers.language(accept_language)


def pick_locale(user_locale: str | None, cookie: str | None, accept_language: str | None) -> str:
    """The language of a request (see the module docstring)."""
    for choice in (user_locale, cookie):
        if choice in LOCALES:
            return choice
    return negotiate(accept_language)


# -- formatting shared by pages and exports --------------------------------------------

def fmt_ts(ts_ms: int | None, tz: ZoneInfo, *, seconds: bool = False) -> str:
    """Epoch ms as local ``YYYY-MM-DD HH:MM`` (the same in both languages)."""
    if ts_ms is None:
        return ""
    dt = datetime.fromtimestamp(ts_ms / 1000, UTC).astimezone(tz)
    return dt.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def fmt_dt(value: datetime | None, tz: ZoneInfo) -> str:
    if value is None:
        return ""
    return value.astimezone(tz).strftime("%Y-%m-%d %H:%M")


def fmt_duration(ms: float | None, t: Translations) -> str:
    """A duration as ``3 d 4 h``, ``2 h 5 min``, ``12 min`` or ``40 s`` (translated)."""
    if ms is None:
        return ""
    s = int(ms // 1000)
    if s < 60:
        return t.gettext("%(s)d s") % {"s": s}
    m = s // 60
    if m < 60:
        return t.gettext("%(m)d min") % {"m": m}
    h, m = divmod(m, 60)
    if h < 48:
        return t.gettext("%(h)d h %(m)d min") % {"h": h, "m": m}
    d, h = divmod(h, 24)
    return t.gettext("%(d)d d %(h)d h") % {"d": d, "h": h}


def fmt_pct(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value * 100:.{digits}f}%"
