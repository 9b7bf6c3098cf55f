"""`plantsync-cloud serve` as systemd runs it (Type=notify): READY=1 once the port listens,
WATCHDOG=1 from its event loop, STOPPING=1 on SIGTERM, a clean stop. A real AF_UNIX datagram
socket stands in for systemd's NOTIFY_SOCKET."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from cloud.core.systemd import notify, watchdog_interval
from tests.fixtures.waiting import wait_for
from tests.services import free_port


def _collect(sock: socket.socket, got: list[str], proc: subprocess.Popen[bytes],
             until: Callable[[list[str]], bool], what: str, timeout: float = 60.0) -> None:
    """Receive datagrams into ``got`` (one entry per line) until ``until(got)``; fail after
    a generous deadline or when serve exits first."""
    def receive() -> list[str]:
        try:
            got.extend(sock.recv(4096).decode().splitlines())
        except TimeoutError:
            if proc.poll() is not None:
                raise AssertionError(f"serve exited {proc.returncode} before {what}; "
                                     f"got {got}") from None
        return got

    wait_for(receive, what, until=until, timeout=timeout, interval=0)


@pytest.mark.timeout(180)
def test_serve_tells_systemd_ready_watchdog_stopping(tmp_path: Path) -> None:
    db = tmp_path / "cloud.db"
    subprocess.run([sys.executable, "-m", "cloud.cli", "migrate", "--db", str(db)],
                   check=True, capture_output=True, timeout=120)
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(1.0)
    port = free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "400000"}
    env.pop("WATCHDOG_PID", None)
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cloud.cli", "serve", "--db", str(db),
                                 "--port", str(port), "--no-zeroconf"],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    got: list[str] = []
    try:
        _collect(sock, got, proc, lambda g: "READY=1" in g, "READY=1")
        assert got[0] == "READY=1", got      # nothing before it, no watchdog before ready
        # READY means listening: the port answers at once
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        assert f"STATUS=serving on 127.0.0.1:{port}" in got
        # WATCHDOG_USEC 0.4 s: pings every 0.2 s from the running loop
        _collect(sock, got, proc, lambda g: g.count("WATCHDOG=1") >= 3, "three WATCHDOG=1")
        proc.send_signal(signal.SIGTERM)
        _collect(sock, got, proc, lambda g: "STOPPING=1" in g, "STOPPING=1")
        # uvicorn re-raises the signal after a clean shutdown; systemd counts death by
        # SIGTERM as a clean stop (not a failure for Restart=on-failure)
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM), log.read_text()
        assert "Application shutdown complete" in log.read_text()
        got += _drain(sock)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.close()
    assert "WATCHDOG=1" not in got[got.index("STOPPING=1"):], got   # the pings stop first


def _drain(sock: socket.socket) -> list[str]:
    """What is left in the socket once serve has exited (up to 10,000 datagrams)."""
    sock.settimeout(0.1)
    out: list[str] = []
    with contextlib.suppress(TimeoutError):
        for _ in range(10_000):
            out += sock.recv(4096).decode().splitlines()
    return out


def test_outside_systemd_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.setenv("WATCHDOG_PID", "1")   # another process's watchdog: not ours
    assert notify("READY=1") is False
    assert watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 0.5


def test_abstract_socket_and_a_gone_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"plantsync-cloud-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("STATUS=hello")
        assert sock.recv(100) == b"STATUS=hello"
    finally:
        sock.close()
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "missing.sock"))
    assert notify("READY=1") is False   # logged, never raised
