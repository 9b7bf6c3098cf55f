"""Finding and starting the system services tests need.

A test that needs a binary calls ``require_binary``: when it is missing the test fails
loudly and says to run ``make system-deps`` (which ``make test`` runs before pytest). It
never skips, and nothing is installed from inside a test.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

# binary -> Debian package
PACKAGES = {
    "mosquitto": "mosquitto",
    "socat": "socat",
    "mbpoll": "mbpoll",
    "chromium": "chromium",
    "faketime": "faketime",
    "pg_ctlcluster": "postgresql",
    "initdb": "postgresql",
    "systemd-analyze": "systemd",
    "mosquitto_passwd": "mosquitto",
    "strace": "strace",
    "fc-list": "fontconfig",
}


def require_binary(name: str, package: str | None = None) -> str:
    """Path of ``name``. Fails the test (never skips: under CI a skipped service test would
    be a silently untested feature) when it is not installed, saying how to install it.
    Nothing is installed from inside a test: ``make test`` runs ``.ci/system-deps`` first."""
    found = _which(name)
    if found:
        return found
    pkg = package or PACKAGES.get(name, name)
    pytest.fail(f"{name} is not installed: run `make system-deps` (or as root "
                f"`apt-get install -y {pkg}`) before the tests", pytrace=False)


def _which(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    if name in ("initdb", "postgres", "pg_ctl"):
        # Debian keeps the server binaries out of PATH.
        root = "/usr/lib/postgresql"
        if os.path.isdir(root):
            for ver in sorted(os.listdir(root), reverse=True):
                cand = os.path.join(root, ver, "bin", name)
                if os.path.exists(cand):
                    return cand
    return None


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now, that no earlier call in this session returned,
    and that lies outside the kernel's ephemeral range.

    Binding port 0 and closing returns an *ephemeral* port: the kernel may give it again to the
    next bind(0) (two servers of one test on one port) or use it as the source port of any
    outgoing connection (a listener restarted on it then fails with EADDRINUSE, a "refused"
    port may self-connect). Ports below the ephemeral range are never picked by the kernel on
    its own, so once free they stay free for the test that asked."""
    import os
    import random

    lo, _hi = _ephemeral_range()
    first, last = 20000, min(lo, 65536) - 1
    if last - first < 1000:       # an unusual range: fall back to the kernel's choice
        first, last = 10000, 19999
    rng = random.Random(os.getpid() ^ int.from_bytes(os.urandom(4), "little"))
    for _ in range(500):
        port = rng.randint(first, last)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free TCP port in {first}..{last} after 500 tries")


def wait_port(port: int, host: str = "127.0.0.1", timeout: float = 20.0,
              proc: subprocess.Popen[Any] | None = None) -> None:
    """Block until something accepts on ``host:port`` (a start-up wait, not a timing assert);
    TimeoutError after ``timeout`` seconds. With ``proc``, fail at once (RuntimeError) when
    that process exits instead of waiting out the timeout."""
    from tests.fixtures.waiting import WaitTimeout, wait_for

    def accepts() -> bool:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before listening "
                               f"on {host}:{port}")
        with socket.create_connection((host, port), timeout=0.5):
            return True

    try:
        wait_for(accepts, f"something listening on {host}:{port}", timeout=timeout,
                 retry_on=(OSError,))
    except WaitTimeout as exc:
        raise TimeoutError(str(exc)) from None
