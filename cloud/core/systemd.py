"""``plantsync-cloud serve`` under systemd (``Type=notify``): READY=1 once the app has
started and the port listens, WATCHDOG=1 from the event loop (a blocked loop stops the
pings and systemd restarts the service), STOPPING=1 when shutdown begins. Written directly
to ``$NOTIFY_SOCKET``, no libsystemd; outside systemd every call is a no-op.

Why not ``edge/sdnotify.py``: dependencies point one way (STYLE.md; tests/unit/
test_packaging.py) and ``cloud/`` may not import ``edge/``; the protocol is a datagram of
``KEY=value`` lines, so the cloud keeps this minimal copy of what it needs (no STATUS
updates, no health gate) rather than moving an edge module into the shared ``buffer/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

import structlog
import uvicorn

log = structlog.get_logger(__name__)


def notify(message: str) -> bool:
    """Send one sd_notify datagram (``"READY=1\\nSTATUS=..."``) to ``$NOTIFY_SOCKET``.
    False outside systemd or when it cannot be sent (logged; never raises: serving matters
    more than telling systemd about it)."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path  # '@': abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode(), address)
    except OSError as exc:
        log.error("sd_notify_failed", socket=path, error=str(exc))
        return False
    return True


def watchdog_interval() -> float | None:
    """Half of ``$WATCHDOG_USEC`` in seconds, or None when systemd asks for no watchdog
    (or asks it of another process: ``$WATCHDOG_PID``)."""
    usec, pid = os.environ.get("WATCHDOG_USEC"), os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None
    return max(int(usec) / 2e6, 0.1)


class NotifyingServer(uvicorn.Server):
    """uvicorn's server, telling systemd how it is doing (see the module docstring)."""

    _watchdog: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.started:   # the lifespan or the bind failed: uvicorn exits non-zero
            return
        cfg = self.config
        notify(f"READY=1\nSTATUS=serving on {cfg.host}:{cfg.port}")
        if (interval := watchdog_interval()) is not None:
            self._watchdog = asyncio.create_task(self._ping(interval), name="sd-watchdog")

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        notify("STOPPING=1\nSTATUS=stopping")
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        await super().shutdown(sockets)

    @staticmethod
    async def _ping(interval: float) -> None:
        while True:
            notify("WATCHDOG=1")
            await asyncio.sleep(interval)
