"""Logging for the daemon: structlog, one event per line on stdout for the journal.

``log_format`` is ``json`` (one JSON object a line) or ``logfmt`` (key=value, readable in
``journalctl``). Secrets never reach a log line: keys that look like credentials are
masked here, whatever a caller passes.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

_SECRET_KEYS = ("token", "password", "secret", "authorization")


def _mask_secrets(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in list(event):
        if any(s in key.lower() for s in _SECRET_KEYS):
            event[key] = "***"
    return event


def _logfmt(_: Any, __: str, event: dict[str, Any]) -> str:
    parts = []
    for key, value in event.items():
        text = str(value)
        if text == "" or any(c in text for c in ' "=\n\t'):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


def configure(log_format: str = "logfmt", level: str = "info", stream: TextIO | None = None) -> None:
    """Set up structlog (and the stdlib loggers of our libraries) for the daemon."""
    lvl = getattr(logging, level.upper(), logging.INFO)
    out = stream or sys.stdout
    # journald adds its own timestamp; we still include ts for log files and tests.
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
        _mask_secrets,
        structlog.processors.format_exc_info,
    ]
    renderer: Any = structlog.processors.JSONRenderer() if log_format == "json" else _logfmt
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    # pymodbus, snap7, paho and zeroconf log through the stdlib: keep them at warning so
    # a reconnecting device does not flood the journal (we log its state changes ourselves).
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
    for name in ("pymodbus", "snap7", "zeroconf", "httpx", "httpcore", "asyncio"):
        logging.getLogger(name).setLevel(logging.WARNING if lvl <= logging.INFO else lvl)


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
