"""sd_notify against a real datagram socket standing in for systemd."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from edge.sdnotify import Notifier, watchdog_interval, watchdog_loop


@pytest.fixture
def systemd_socket(tmp_path: Path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    yield str(path), sock
    sock.close()


def test_ready_and_status_reach_the_socket(systemd_socket) -> None:
    path, sock = systemd_socket
    n = Notifier(path)
    assert n.enabled
    assert n.ready("polling 4 devices\nbuffer ok")
    msg = sock.recv(4096).decode()
    assert msg.splitlines() == ["READY=1", "STATUS=polling 4 devices buffer ok"]
    n.stopping()
    assert sock.recv(4096).decode().splitlines()[0] == "STOPPING=1"
    n.close()


def test_abstract_namespace_socket() -> None:
    name = f"plantsync-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        n = Notifier("@" + name)
        assert n.status("hello")
        assert sock.recv(100) == b"STATUS=hello"
        n.close()
    finally:
        sock.close()


def test_without_systemd_everything_is_a_noop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled
    assert not n.ready("x")


def test_gone_socket_does_not_raise(tmp_path: Path) -> None:
    n = Notifier(str(tmp_path / "missing.sock"))
    assert not n.ready("x")
    assert not n.status("y")  # logged once, never raises
    n.close()


def test_watchdog_interval_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_USEC")
    assert watchdog_interval() is None


async def test_watchdog_pings_from_the_loop_and_stop_when_unhealthy(systemd_socket) -> None:
    path, sock = systemd_socket
    sock.setblocking(False)
    n = Notifier(path)
    healthy = True
    task = asyncio.create_task(watchdog_loop(n, 0.01, lambda: healthy))
    loop = asyncio.get_running_loop()
    assert await asyncio.wait_for(loop.sock_recv(sock, 100), 5) == b"WATCHDOG=1"
    healthy = False
    await asyncio.sleep(0.05)
    for _ in range(10_000):  # drain what was sent before the switch
        try:
            sock.recv(100)
        except BlockingIOError:
            break
    else:
        pytest.fail("the watchdog kept pinging after it turned unhealthy")
    await asyncio.sleep(0.05)
    with pytest.raises(BlockingIOError):
        sock.recv(100)
    task.cancel()
    n.close()
