"""systemd notification protocol, written directly to ``$NOTIFY_SOCKET`` (no libsystemd).

READY=1 once config is valid and the buffer is open; WATCHDOG=1 from the event loop itself,
so a stuck loop stops the pings and systemd restarts the service; STATUS= a one-line summary.
Outside systemd (no NOTIFY_SOCKET) every call is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)


class Notifier:
    """Sends sd_notify datagrams. Never raises: a notification that cannot be sent is logged
    once; the daemon's work matters more than telling systemd about it."""

    def __init__(self, socket_path: str | None = None) -> None:
        path = socket_path if socket_path is not None else os.environ.get("NOTIFY_SOCKET")
        self._address: str | None = None
        if path:
            # An '@' prefix is a Linux abstract-namespace socket.
            self._address = "\0" + path[1:] if path.startswith("@") else path
        self._sock: socket.socket | None = None
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, **fields: str | int) -> bool:
        """Send ``KEY=value`` lines, e.g. ``notify(READY=1, STATUS="polling 4 devices")``."""
        if self._address is None:
            return False
        payload = "\n".join(f"{k}={_one_line(str(v))}" for k, v in fields.items()).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(payload, self._address)
        except OSError as exc:
            if not self._failed:
                log.error("sd_notify_failed", socket=self._address.lstrip("\0"), error=str(exc))
                self._failed = True
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.notify(READY=1, STATUS=status)

    def status(self, status: str) -> bool:
        return self.notify(STATUS=status)

    def stopping(self, status: str = "stopping") -> bool:
        return self.notify(STOPPING=1, STATUS=status)

    def reloading(self) -> bool:
        return self.notify(RELOADING=1)

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


def watchdog_interval() -> float | None:
    """Half of systemd's watchdog timeout in seconds, or None when no watchdog is asked for.

    Honours WATCHDOG_PID: the watchdog is meant for this process only.
    """
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    try:
        return max(int(usec) / 1e6 / 2, 0.1)
    except ValueError:
        return None


async def watchdog_loop(notifier: Notifier, interval: float,
                        healthy: Callable[[], bool] = lambda: True) -> None:
    """Ping WATCHDOG=1 every ``interval`` from the event loop. Because it runs on the loop,
    a blocked loop stops the pings; ``healthy`` lets the daemon withhold them when its
    own supervision sees a stuck task."""
    while True:
        if healthy():
            notifier.notify(WATCHDOG=1)
        await asyncio.sleep(interval)


def _one_line(text: str) -> str:
    return " ".join(text.split())
