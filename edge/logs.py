"""Logging for the daemon: structlog, one event per line on stdout for the journal.

``log_format`` is ``json`` (one JSON object a line) or ``logfmt`` (key=value, readable in
``journalctl``). Our own events go through structlog; the stdlib loggers of pymodbus,
snap7, httpx, paho and zeroconf go through structlog's ``ProcessorFormatter`` to the same
stream with the same renderer, so every line in the journal is one structured event
(``logger=pymodbus.client ...``), exceptions included (their traceback is escaped onto
that line). Library loggers stay at warning unless the level is debug.

Secrets never reach a log line: values under keys that look like credentials are masked,
and so are ``token=...``/``password: ...``/``Bearer ...`` inside any text (a library's
message, an error string), whatever a caller passes.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict

_SECRET_KEYS = ("token", "password", "passwd", "secret", "authorization", "api_key", "apikey")
# key=value / key: value / "key": "value" inside free text (an HTTP scheme word after the
# separator is kept, the credential after it masked), and a bare "Bearer <credential>"
_SECRET_IN_TEXT = re.compile(
    r"(?i)((?:" + "|".join(_SECRET_KEYS) + r")[\w-]*(?<!_file)(?<!_path)[\"']?\s*[=:]\s*[\"']?"
    r"(?:(?:bearer|basic|token)\s+)?|bearer\s+)[^\s\"',;&]+")
_MASK = "***"
_LIBRARIES = ("pymodbus", "snap7", "paho", "zeroconf", "httpx", "httpcore", "aiosqlite", "asyncio")


def _is_secret_key(key: str) -> bool:
    # token_file, password_path: where a secret lives is not a secret (and the operator
    # needs it in "cannot read ..." errors)
    low = key.lower()
    return any(s in low for s in _SECRET_KEYS) and not low.endswith(("_file", "_path"))


def _mask_text(text: str) -> str:
    return _SECRET_IN_TEXT.sub(lambda m: m.group(1) + _MASK, text)


def _mask_secrets(_: Any, __: str, event: EventDict) -> EventDict:
    """Processor: mask credential-like keys and credentials written inside text values."""
    for key, value in list(event.items()):
        if _is_secret_key(key):
            event[key] = _MASK
        elif isinstance(value, str):
            event[key] = _mask_text(value)
    return event


def _logfmt(_: Any, __: str, event: EventDict) -> str:
    parts = []
    for key, value in event.items():
        text = str(value)
        if text == "" or any(c in text for c in ' "=\n\r\t'):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') \
                .replace("\n", "\\n").replace("\r", "\\r") + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


class _StructuredHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The one handler ``configure`` puts on the root logger (replaced on reconfigure)."""


def configure(log_format: str = "logfmt", level: str = "info", stream: TextIO | None = None) -> None:
    """Set up structlog and the stdlib loggers of our libraries for the daemon: one
    structured event per line on ``stream`` (stdout by default). Safe to call again (the
    CLI configures before ``run`` reads ``log_format`` from the config)."""
    lvl = getattr(logging, level.upper(), logging.INFO)
    out = stream or sys.stdout
    renderer: Any = structlog.processors.JSONRenderer() if log_format == "json" else _logfmt
    # journald adds its own timestamp; we still include ts for log files and tests.
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts")
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars,
                    structlog.processors.add_log_level, stamp,
                    _mask_secrets, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    handler = _StructuredHandler(out)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.contextvars.merge_contextvars,
                           structlog.processors.add_log_level,
                           structlog.stdlib.add_logger_name, stamp],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    _mask_secrets, structlog.processors.format_exc_info, renderer]))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StructuredHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    debug = lvl <= logging.DEBUG
    # Anything else on the stdlib: warnings and up. pymodbus, snap7 and friends stay at
    # warning too, so a reconnecting device does not flood the journal (we log its state
    # changes ourselves); at debug they say everything.
    root.setLevel(logging.DEBUG if debug else max(lvl, logging.WARNING))
    for name in _LIBRARIES:
        logging.getLogger(name).setLevel(logging.DEBUG if debug else max(lvl, logging.WARNING))


class RepeatCounter:
    """Log the first failure of a kind at error, then count repeats instead of flooding the
    journal; the recovery logs once with how many repeats there were."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def failure(self, key: str) -> bool:
        """Count a failure; True when this is the first one (log it)."""
        n = self._counts.get(key, 0) + 1
        self._counts[key] = n
        return n == 1

    def recovered(self, key: str) -> int:
        """Reset; returns how many failures there were (0: nothing to report)."""
        return self._counts.pop(key, 0)
