"""The gateway daemon as systemd runs it: a real `plantsync-edge run` process against the
simulators (and, where it matters, the cloud).

- sd_notify to a real datagram socket: READY=1 once config and buffer are good, WATCHDOG=1
  from the loop, STATUS=, STOPPING=1 on SIGTERM, exit 0;
- SIGTERM while a device hangs mid-read: exit 0 within 5 s, the last cycle committed;
- SIGHUP with a bad config keeps the old one polling and logs each problem in the
  validate format; a good one is applied, the uplink restarts for a changed [cloud], and
  a setting that needs a restart is named as such;
- the status endpoint (JSON, Prometheus) and `plantsync-edge status`;
- a device that never answers does not slow another one;
- logs: quiet at info (no per-poll lines), never the token.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from buffer.records import decode_body
from tests.faults.harness import GATEWAY, Device, Rig, rig_logs_on_failure
from tests.fixtures.waiting import wait_for
from tests.services import free_port


@pytest.fixture
def rig(tmp_path: Path):
    r = Rig(tmp_path, seed=5, speed=30.0, poll_ms=150)
    with rig_logs_on_failure(r):
        yield r


class NotifySocket:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.path = path
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
            except OSError:
                return

    def lines(self) -> list[str]:
        return [ln for m in list(self.messages) for ln in m.splitlines()]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def test_sd_notify_ready_watchdog_status_stopping(rig: Rig, tmp_path: Path) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    try:
        rig.edge_env.update({"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"})
        rig.start_cloud()
        rig.start_sim()
        rig.start_edge()
        wait_for(notify.lines, "READY=1", until=lambda lines: "READY=1" in lines)
        wait_for(notify.lines, "three watchdog pings",
                 until=lambda lines: lines.count("WATCHDOG=1") >= 3)
        status = [ln for ln in notify.lines() if ln.startswith("STATUS=")]
        assert status and "devices online" in status[0], status
        assert rig.stop_edge() == 0
        assert "STOPPING=1" in notify.lines()
        assert "gateway_stopped" in rig.edge_proc().text()
    finally:
        notify.close()


def test_sighup_bad_config_keeps_running_good_config_applies(rig: Rig) -> None:
    rig.start_cloud()
    rig.start_sim()
    rig.start_edge()
    edge = rig.edge_proc()
    good = rig.config.read_text()

    # A typo and a missing map: both reported, in the validate format, old config kept.
    bad = good.replace("poll_ms", "poll_msec", 1).replace("imm-generic-s7.toml", "nope.toml")
    rig.config.write_text(bad)
    os.kill(edge.pid, signal.SIGHUP)
    wait_for(lambda: edge.text().count("reload_rejected"), "reload rejected, each problem",
             until=lambda n: n >= 2, details=rig.logs)
    rejected = [json.loads(ln) for ln in edge.text().splitlines() if "reload_rejected" in ln]
    problems = " | ".join(r["problem"] for r in rejected)
    assert "gateway.toml: devices[0].poll_msec: unknown key 'poll_msec' (did you mean 'poll_ms'?)" in problems
    assert "nope.toml" in problems
    polls = rig.edge_status()["devices"]["cnc-01"]["polls"]
    wait_for(lambda: rig.edge_status()["devices"]["cnc-01"]["polls"], "old config still polling",
             until=lambda n: n > polls + 3)
    assert edge.running

    # Now a good change: drop the S7 machine, change a [cloud] setting (applied: the
    # uplink restarts) and the buffer quota (needs a restart: said so, old one kept).
    rig.devices = [d for d in rig.devices if d.name == "cnc-01"]
    rig.buffer_max_mb = 32
    rig.write_config()
    rig.config.write_text(rig.config.read_text().replace("retry_max_s = 2", "retry_max_s = 3"))
    os.kill(edge.pid, signal.SIGHUP)
    wait_for(lambda: set(rig.edge_status()["devices"]), "new config applied",
             until=lambda devices: devices == {"cnc-01"})
    wait_for(lambda: "config_reloaded" in edge.text(), "config_reloaded logged",
             details=rig.logs)
    events = [json.loads(ln) for ln in edge.text().splitlines() if ln.startswith("{")]
    reloaded = [e for e in events if e["event"] == "config_reloaded"]
    assert reloaded[-1]["applied"] == ["cloud.retry_max_s"], reloaded
    assert reloaded[-1]["restart_required"] == ["gateway.buffer_max_mb"], reloaded
    needs = [e for e in events if e["event"] == "reload_needs_restart"]
    assert [e["message"] for e in needs] == [
        "gateway.buffer_max_mb changed: restart the service to apply it"]
    assert rig.edge_status()["restart_required"] == ["gateway.buffer_max_mb"]
    rig.wait_cloud_grows("records after the uplink restarted", by=5)
    assert rig.stop_edge() == 0


def test_status_endpoint_metrics_and_cli(rig: Rig) -> None:
    rig.start_cloud()
    rig.start_sim()
    rig.start_edge()
    wait_for(rig.edge_status, "every device online and records acked",
             until=lambda st: all(d["online"] for d in st["devices"].values())
             and (st["uplink"].get("acked_seq") or 0) > 0)
    st = rig.edge_status()
    assert set(st) >= {"gateway", "devices", "buffer", "uplink", "clock"}
    assert st["devices"]["cnc-01"]["requests_per_poll"] >= 1
    metrics = httpx.get(f"http://127.0.0.1:{rig.status_port}/metrics", timeout=5).text
    assert 'plantsync_device_online{device="cnc-01"} 1' in metrics
    assert "plantsync_buffer_backlog_records" in metrics
    assert "# TYPE plantsync_device_errors_total counter" in metrics
    assert "# TYPE plantsync_device_waiting_for_buffer gauge" in metrics
    assert "waiting_for_buffer_since_ms" in st["devices"]["cnc-01"]
    out = subprocess.run([sys.executable, "-m", "edge.cli", "status", "--config", str(rig.config),
                          "--json"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["gateway"] == "gw-faults"
    human = subprocess.run([sys.executable, "-m", "edge.cli", "status", "--config",
                            str(rig.config)], capture_output=True, text=True, timeout=30)
    assert "cnc-01" in human.stdout and "yes" in human.stdout


def test_a_silent_device_does_not_slow_the_others(tmp_path: Path) -> None:
    """A device that answers later than its timeout (1 s) on every request: its polls time
    out and its breaker opens; the healthy device keeps polling at its own period."""
    rig = Rig(tmp_path, seed=2, speed=30.0, poll_ms=150, devices=[
        Device("cnc-01", "cnc-generic-modbus.toml", "modbus-tcp", free_port()),
        Device("dead-01", "cnc-generic-modbus.toml", "modbus-tcp", free_port())])
    with rig_logs_on_failure(rig) as r:
        r.start_cloud()
        r.start_sim()
        r.fault("dead-01", "slow", delay_s=30, seconds=0)
        r.start_edge()
        wait_for(lambda: r.edge_status()["devices"]["dead-01"], "three timeouts of the silent device",
                 until=lambda dev: dev["errors"].get("timeout", 0) >= 3)
        st = r.edge_status()["devices"]
        # Three 1-second timeouts took >= 3 s; at 150 ms the healthy one polled ~20
        # times meanwhile. Demand far fewer than that: a count, not a stopwatch.
        assert st["cnc-01"]["polls"] >= 10 and st["cnc-01"]["errors"] == {}, st
        assert st["cnc-01"]["online"] is True and st["dead-01"]["online"] is False
        assert "device_poll_failed" in r.edge_proc().text()
        # The breaker opened: the silent device is probed, not polled every period.
        wait_for(lambda: r.edge_status()["devices"]["dead-01"], "the silent device's breaker open",
                 until=lambda dev: dev["breaker"] == "open")


def test_sigterm_with_a_device_hung_mid_read_exits_0_within_5_s(tmp_path: Path) -> None:
    """The issue: SIGTERM finishes the cycle, flushes and closes within 5 s. One device
    answers 30 s late with a 60 s timeout, so its read hangs at the signal; the other has
    just read a counter reset, whose cycle must be in the buffer after the exit."""
    rig = Rig(tmp_path, seed=3, speed=30.0, poll_ms=150, devices=[
        Device("cnc-01", "cnc-generic-modbus.toml", "modbus-tcp", free_port()),
        Device("hung-01", "cnc-generic-modbus.toml", "modbus-tcp", free_port())])
    with rig_logs_on_failure(rig) as r:
        blocks = r.config.read_text().split("[[devices]]")
        r.config.write_text("[[devices]]".join(
            b.replace("timeout_ms = 1000", "timeout_ms = 60000") if '"hung-01"' in b else b
            for b in blocks))
        r.start_sim()      # no cloud: nothing is acked, so the buffer keeps every record
        r.fault("hung-01", "slow", delay_s=120, seconds=0)
        r.start_edge()
        count_sql = "SELECT max(seq) FROM records WHERE device = 'cnc-01' AND kind = 'count'"
        wait_for(lambda: r.buffer_query(count_sql)[0][0], "cnc-01 counting")
        st = r.edge_status()["devices"]["hung-01"]
        assert st["polls"] == 1 and st["online"] is None, st     # its first read hangs
        # A device never polled has no last poll: NaN, not 1970.
        metrics = httpx.get(f"http://127.0.0.1:{r.status_port}/metrics", timeout=5).text
        assert 'plantsync_device_last_poll_timestamp_seconds{device="hung-01"} NaN' in metrics
        assert 'plantsync_device_poll_latency_seconds{device="hung-01"} NaN' in metrics
        assert 'plantsync_device_last_poll_timestamp_seconds{device="cnc-01"} NaN' not in metrics

        seq0 = r.buffer_query("SELECT max(seq) FROM records")[0][0]
        r.fault("cnc-01", "reset")
        polls = r.edge_status()["devices"]["cnc-01"]["polls"]
        wait_for(lambda: r.edge_status()["devices"]["cnc-01"]["polls"],
                 "a poll of cnc-01 after the reset", until=lambda n: n > polls, interval=0.01)
        started = time.monotonic()
        code = r.edge_proc().stop(signal.SIGTERM, timeout=5.0)   # HarnessError after 5 s
        assert code == 0, r.edge_proc().text()[-3000:]
        assert time.monotonic() - started < 5.0
        text = r.edge_proc().text()
        assert "gateway_stopped" in text and "stop_incomplete" not in text
        rows = r.buffer_query("SELECT body FROM records WHERE device = 'cnc-01' AND "
                              f"kind = 'count' AND seq > {seq0}")
        resets = [b for b in map(decode_body, (row[0] for row in rows)) if b["reset"]]
        assert resets, f"the reset read before SIGTERM is not in the buffer: {rows}"
        assert r.buffer_query("PRAGMA integrity_check") == [("ok",)]


def test_logs_are_quiet_and_never_carry_the_token(rig: Rig) -> None:
    rig.start_cloud()
    rig.start_sim()
    rig.start_edge()
    wait_for(lambda: rig.edge_status()["devices"]["cnc-01"]["polls"], "60 polls",
             until=lambda n: n >= 60)
    text = rig.edge_proc().text()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) < 30, "per-poll noise at info level:\n" + "\n".join(lines[:40])
    assert rig.token not in text
    for ln in lines:
        if ln.startswith("{"):
            json.loads(ln)   # log_format = json: one JSON object per line


async def test_gateway_advertises_its_status_port(tmp_path: Path) -> None:
    """`_plantsync-edge._tcp.local.` on loopback points at the daemon's status endpoint.
    Other gateways may advertise there too (other tests, other runs): the test looks for
    the service on this daemon's status port, never takes the first one that answers."""
    from buffer.discovery import EDGE_SERVICE, service_url
    from tests.fixtures.zeroconf import find_service

    rig = Rig(tmp_path, seed=5, speed=30.0, poll_ms=150, advertise=True)
    with rig_logs_on_failure(rig):
        rig.start_cloud()
        rig.start_sim()
        rig.start_edge()
        info = await find_service(EDGE_SERVICE, lambda i: i.port == rig.status_port,
                                  f"{EDGE_SERVICE} on the status port {rig.status_port}")
        assert service_url(info) == f"http://127.0.0.1:{rig.status_port}/status"
        assert info.name.startswith(GATEWAY), info.name
        async with httpx.AsyncClient() as client:
            st = (await client.get(f"http://127.0.0.1:{rig.status_port}/status")).json()
        assert st["gateway"] == GATEWAY
