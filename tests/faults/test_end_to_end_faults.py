"""End-to-end faults against the real daemon: simulator -> plantsync-edge run -> cloud.

Every test ends with ``Rig.finish()`` (tests/faults/harness.py): the cloud's counts equal
the simulator's true movement since the gateway's baseline, no seq twice, no seq missing
without a gap record, integrity_check ok on both databases, no continuity break.
Processes, sockets and files are real; everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.faults.harness import Rig, rig_logs_on_failure, set_fsize_limit
from tests.fixtures.waiting import wait_for

pytestmark = pytest.mark.timeout(240)


def _backlog(rig: Rig) -> int:
    return int(rig.edge_status()["buffer"].get("backlog") or 0)


def _wait_drained(rig: Rig, what: str, timeout: float = 90.0) -> None:
    """The gateway's buffer is empty and the cloud holds its last seq."""
    def progress() -> dict[str, Any]:
        buf = rig.edge_status()["buffer"]
        return {"backlog": buf.get("backlog"), "edge_last_seq": int(buf.get("last_seq") or 0),
                "cloud_last_seq": rig.cloud_last_seq()}
    wait_for(progress, what, timeout=timeout, details=rig.logs,
             until=lambda p: p["backlog"] == 0 and p["cloud_last_seq"] >= p["edge_last_seq"] > 0)


# ---- 1. kill -9 at random points, >= 20 times ----------------------------------------------

def test_kill9_edge_twenty_times_nothing_lost_nothing_twice(tmp_path: Path) -> None:
    """22 kill -9 of the daemon at seeded random moments: during start-up, polling and
    appending, uploading, and (every third kill) right after the cloud committed a batch
    whose answer the proxy then reset, so the ack never arrived. The restarted daemon
    resends from its oldest unacked record; the cloud dedupes the replay."""
    rng = random.Random(20240611)
    rig = Rig(tmp_path, seed=11, proxy=True, cloud_debug=True)
    with rig_logs_on_failure(rig):
        rig.start_cloud()
        rig.start_sim()
        rig.start_edge()
        rig.wait_counter_seen("cnc-01", "part_count", 1)
        kills = acked_lost = 0
        for i in range(22):
            assert rig.proxy is not None
            if i % 3 == 2:
                # committed in the cloud, answer reset: kill before the retry can succeed
                before = rig.proxy.resets
                rig.proxy.set_mode("reset_after_forward")
                wait_for(lambda: rig.proxy.resets,  # type: ignore[union-attr]
                         "a batch forwarded and its answer reset",
                         until=lambda n, b=before: n > b, details=rig.logs)
                rig.kill_edge()
                rig.proxy.set_mode("pass")
                acked_lost += 1
            else:
                time.sleep(rng.uniform(0.4, 2.0))
                rig.kill_edge()
            kills += 1
            rig.start_edge(wait_ready=rng.random() < 0.5)
        rig.wait_counter_seen("cnc-01", "part_count", 1)
        _wait_drained(rig, "drain after the last restart")
        report = rig.finish()
    assert kills >= 20 and acked_lost >= 7
    assert report.duplicates_reported > 0, "no replay reached the cloud: the ack-lost path was not exercised"
    assert report.per_tag["cnc-01.part_count"]["sum"] > 0
    assert report.per_tag["imm-01.good_parts"]["sum"] > 0
    print(f"kill -9 x{kills}: {report}")


# ---- 2. proxy partitions -----------------------------------------------------------------

def test_proxy_partitions_then_drain(tmp_path: Path) -> None:
    """Refuse, black-hole, reset-after-forward and latency between gateway and cloud, each
    while records pile up; after each the proxy passes again and the drain finishes. The
    CNC's counter was wrapped to near its type's maximum before the gateway first read it,
    so a rollover happens during the run."""
    rig = Rig(tmp_path, seed=12, proxy=True)
    with rig_logs_on_failure(rig):
        rig.start_cloud()
        rig.start_sim()
        rig.wrap_before_edge("cnc-01", margin=3)
        rig.start_edge()
        rig.wait_counter_seen("cnc-01", "part_count", 1)   # rolled over: small again
        assert rig.proxy is not None
        for mode, latency in (("refuse", 0), ("reset_after_forward", 0), ("latency", 300),
                              ("blackhole", 0)):
            before = rig.cloud_last_seq()
            rig.proxy.set_mode(mode, latency_ms=latency)
            # records pile up in the buffer while the link misbehaves (latency: they flow)
            wait_for(lambda: rig.edge_status()["buffer"]["last_seq"],
                     f"records appended during {mode}", until=lambda n, b=before: n > b + 40,
                     details=rig.logs)
            if mode in ("refuse", "blackhole", "reset_after_forward"):
                assert rig.edge_status()["uplink"]["errors"] or mode == "blackhole"
            rig.proxy.set_mode("pass")
            # blackhole: the request in flight ends only at the uplink's read timeout
            _wait_drained(rig, f"drain after {mode}", timeout=120)
        report = rig.finish()
    assert report.per_tag["cnc-01.part_count"]["sum"] > 0
    print(f"partitions: {report}")


# ---- 3. cloud restart mid-drain ------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill9"])
def test_cloud_restart_mid_drain(tmp_path: Path, sig: signal.Signals) -> None:
    """The cloud is down while a backlog builds, comes back, and is stopped again while
    the gateway drains through a slow link (a batch in flight), three times."""
    rng = random.Random(int(sig))
    rig = Rig(tmp_path, seed=13, proxy=True)
    with rig_logs_on_failure(rig):
        rig.start_cloud()
        rig.start_sim()
        rig.start_edge()
        rig.wait_counter_seen("cnc-01", "part_count", 1)
        assert rig.proxy is not None
        for _ in range(2):
            rig.stop_cloud(sig)
            last = rig.edge_status()["buffer"]["last_seq"]
            wait_for(lambda: rig.edge_status()["buffer"]["last_seq"],
                     "backlog while the cloud is down", until=lambda n, last=last: n > last + 30,
                     details=rig.logs)
            rig.proxy.set_mode("latency", latency_ms=400)
            rig.start_cloud()
            # stop it again while the gateway is sending (within the slow round trip):
            # the drain has resumed once the cloud stores records again (the connection
            # may be a new one or a pooled keep-alive one; either is fine)
            start = rig.cloud_count_records()
            wait_for(rig.cloud_count_records, "the gateway drains again",
                     until=lambda n, s=start: n > s, details=rig.logs)
            time.sleep(rng.uniform(0.05, 0.5))
            rig.stop_cloud(sig)
            rig.proxy.set_mode("pass")
            rig.start_cloud()
            _wait_drained(rig, "drain after the cloud is back", timeout=120)
        report = rig.finish()
    print(f"cloud restarts ({sig.name}): {report}")


# ---- 4. MQTT through Mosquitto, broker restarts ---------------------------------------------

@pytest.mark.slow
@pytest.mark.needs_service("mosquitto")
@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "kill9"])
def test_mqtt_broker_restart_mid_drain(tmp_path: Path, mosquitto, kill: bool) -> None:  # type: ignore[no-untyped-def]
    """Gateway -> Mosquitto -> plantsync-cloud mqtt-ingest -> cloud DB. The broker is
    restarted (SIGTERM: persistence saved; kill -9: in-memory state lost) while a backlog
    drains; the gateway deletes only what the consumer confirmed, so nothing is lost."""
    rig = Rig(tmp_path, seed=14, transport="mqtt", broker_url=mosquitto.url)
    with rig_logs_on_failure(rig):
        rig.start_cloud()         # the HTTP API for the checker's reads
        rig.start_ingest()
        rig.start_sim()
        rig.start_edge()
        rig.wait_counter_seen("cnc-01", "part_count", 1)
        for _ in range(1):
            rig.ingest.stop()     # consumer down: a backlog builds behind the broker
            last = rig.edge_status()["buffer"]["last_seq"]
            wait_for(lambda: rig.edge_status()["buffer"]["last_seq"],
                     "backlog while the consumer is down",
                     until=lambda n, last=last: n > last + 60, details=rig.logs)
            rig.start_ingest()
            mosquitto.restart(kill=kill)
            # When the restarted broker dropped an in-flight batch, the daemon's MqttUplink
            # waits mqtt.confirm_timeout_s (default 15 s) for its confirmation before it
            # resends from the oldest unacked record; the deadline leaves room for a few.
            _wait_drained(rig, "drain through the restarted broker", timeout=200)
        report = rig.finish()
    print(f"mqtt broker restarts (kill={kill}): {report}")


# ---- 5. device disconnects and comes back zeroed ------------------------------------------

def test_device_disconnect_then_zeroed_counter(tmp_path: Path) -> None:
    """Both machines (Modbus TCP and S7) drop off the network and come back with their
    good-part counter zeroed (a PLC reboot): the gateway records link offline/online, the
    cloud shows exactly one reset per counter, and the sums equal the true movement minus
    only the parts the PLC made and zeroed while nobody could read it."""
    rig = Rig(tmp_path, seed=15)
    with rig_logs_on_failure(rig):
        rig.start_cloud()
        rig.start_sim()
        rig.start_edge()
        pairs = (("cnc-01", "part_count"), ("imm-01", "good_parts"))
        # A reset is visible only as a decrease: the counter must stand well above what
        # the machines make while they are unreachable (~6 parts here) when it is zeroed.
        for dev, tag in pairs:
            rig.wait_counter_seen(dev, tag, 25)
        for dev, _ in pairs:
            rig.fault(dev, "disconnect", seconds=2.0)
        for dev, tag in pairs:
            wait_for(lambda d=dev: rig.edge_status()["devices"][d], f"{dev} seen offline",
                     until=lambda st: st["online"] is False, details=rig.logs)
            rig.fault(dev, "reset", tag=tag)
        for dev, tag in pairs:
            wait_for(lambda d=dev: rig.edge_status()["devices"][d], f"{dev} back online",
                     until=lambda st: st["online"] is True, details=rig.logs)
            wait_for(lambda d=dev: rig.cloud_counters(d)["tags"],
                     f"cloud shows the reset of {dev}.{tag}",
                     until=lambda tags, t=tag: any(x["tag"] == t and x["resets"] == 1
                                                   for x in tags), details=rig.logs)
        report = rig.finish()
    assert report.per_tag["cnc-01.part_count"]["resets"] == 1
    assert report.per_tag["imm-01.good_parts"]["resets"] == 1
    assert report.kinds.get("link", 0) >= 4      # offline and online, per device
    print(f"disconnect+reset: {report}")


# ---- 6. disk full under the running daemon -------------------------------------------------

def test_disk_full_while_polling(tmp_path: Path) -> None:
    """RLIMIT_FSIZE on the running daemon (prlimit) makes every buffer write fail with
    EFBIG, like a full disk: the daemon keeps polling, says why (log and status), and
    when the limit is lifted the counts are complete (the PLC counter carried the
    movement across the outage)."""
    rig = Rig(tmp_path, seed=16)
    with rig_logs_on_failure(rig):
        rig.start_cloud()
        rig.start_sim()
        rig.start_edge()
        rig.wait_counter_seen("cnc-01", "part_count", 1)
        edge = rig.edge_proc()
        set_fsize_limit(edge.pid, 16 * 1024)
        st = wait_for(rig.edge_status, "the buffer write error in the status",
                      until=lambda s: s["buffer"]["write_error"], details=rig.logs)
        # The poller keeps its one derived cycle and retries it (the PLC counter goes on
        # counting); the daemon stays up and keeps answering, the error standing.
        up = st["uptime_s"]
        wait_for(rig.edge_status, "the daemon survives the outage",
                 until=lambda s: s["uptime_s"] > up + 3 and s["buffer"]["write_error"],
                 details=rig.logs)
        cloud_counts = rig.counted("cnc-01")
        assert edge.running
        log = edge.text()
        assert "buffer_write_failed" in log or "buffer_commit_failed" in log, log[-3000:]
        assert "file size limit" in log or "disk is full" in log, log[-3000:]
        set_fsize_limit(edge.pid, -1)   # RLIM_INFINITY: space is back
        wait_for(lambda: rig.edge_status()["buffer"], "the write error clears",
                 until=lambda buf: buf["write_error"] is None, details=rig.logs)
        wait_for(lambda: rig.counted("cnc-01"), "counts flow again",
                 until=lambda n: n > cloud_counts, details=rig.logs)
        report = rig.finish()
    print(f"disk full: {report}")


# ---- 7. truncated and garbled buffer files ------------------------------------------------

def _damage(path: Path, how: str) -> int:
    size = path.stat().st_size
    if how == "truncate":
        with open(path, "r+b") as f:
            f.truncate(size // 2 if size > 8192 else 1024)
    else:
        with open(path, "r+b") as f:
            f.seek(0)
            f.write(random.Random(7).randbytes(4096))
    return path.stat().st_size


def test_truncated_and_garbled_buffer_between_runs(tmp_path: Path) -> None:
    """Between runs the buffer file is truncated, and in a later pause garbled. Each time
    the daemon moves it aside (kept, with its damage), starts a fresh buffer whose seqs
    continue above everything the cloud has seen, and tells the cloud with a gap record.
    The counts the lost file still held are a loss the cloud can see and explain."""
    rig = Rig(tmp_path, seed=17)
    with rig_logs_on_failure(rig):
        rig.start_cloud()
        rig.start_sim()
        rig.start_edge()
        rig.wait_counter_seen("cnc-01", "part_count", 1)
        kept: list[int] = []
        for how in ("truncate", "garble"):
            rig.stop_edge()
            seq_before = rig.cloud_last_seq()
            kept.append(_damage(rig.buffer_path, how))
            rig.start_edge()
            want = len(kept)
            gap = wait_for(lambda: rig.cloud_query(
                "SELECT seq, body FROM records WHERE kind = 'gap' AND body LIKE '%buffer_corrupt%'"
                " ORDER BY seq"), "the buffer_corrupt gap record in the cloud",
                until=lambda rows, n=want: len(rows) >= n, details=rig.logs)
            assert len(gap) == len(kept), gap
            # new seqs above everything the cloud had: not dropped as duplicates
            assert gap[-1][0] > seq_before, (gap, seq_before)
            # and the fresh buffer's counts arrive behind it
            wait_for(lambda g=gap[-1][0]: rig.cloud_query(
                "SELECT count(*) FROM records WHERE kind = 'count' AND device = 'cnc-01' "
                "AND seq > ?", g)[0][0], "counts from the fresh buffer",
                until=lambda n: n >= 2, details=rig.logs)
        aside = sorted(rig.data_dir.glob("buffer.db.corrupt-*"))
        aside = [p for p in aside if not p.name.endswith(("-wal", "-shm"))]
        assert len(aside) == 2, list(rig.data_dir.iterdir())
        assert sorted(p.stat().st_size for p in aside) == sorted(kept)   # never deleted or changed
        report = rig.finish(allow_baseline_loss=True)
        reasons = [g["explained_by"][0]["reason"] for g in report.gaps if g["explained_by"]]
        assert all("buffer_corrupt" in r for r in reasons), reasons
    print(f"damaged buffers: {report}")


# ---- 8. wall-clock jumps (faketime) -------------------------------------------------------

def test_wall_clock_jumps_day_back_ten_years_forward(tmp_path: Path) -> None:
    """The daemon runs under libfaketime with a timestamp file that the test rewrites:
    the wall clock jumps a day back, then ten years forward, while the monotonic clock
    runs on. The daemon writes a ``clock`` record (device ``_gateway``) for each jump and
    the counts stay exact."""
    from tests.services import require_binary

    require_binary("faketime")
    lib = next((p for p in (Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"),
                            Path("/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1"),
                            *Path("/usr/lib").rglob("libfaketimeMT.so.1")) if p.exists()), None)
    assert lib is not None, "libfaketimeMT.so.1 not found (Debian package faketime)"
    spec = tmp_path / "faketime"
    spec.write_text("+0\n")
    rig = Rig(tmp_path, seed=18)
    rig.edge_env = {"LD_PRELOAD": str(lib), "FAKETIME_TIMESTAMP_FILE": str(spec),
                    "FAKETIME_NO_CACHE": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    with rig_logs_on_failure(rig):
        rig.start_cloud()
        rig.start_sim()
        rig.start_edge()
        rig.wait_counter_seen("cnc-01", "part_count", 1)
        jumps = []
        for offset, sign in (("-1d", -1), ("+3652d", 1)):
            spec.write_text(offset + "\n")
            want = len(jumps) + 1
            clock = wait_for(lambda: rig.cloud_query(
                "SELECT seq, ts, body FROM records WHERE kind = 'clock' AND device = '_gateway'"
                " ORDER BY seq"), f"clock record for {offset}",
                until=lambda rows, n=want: len(rows) >= n, details=rig.logs)
            jumps = clock
            import json
            body = json.loads(clock[-1][2])
            assert sign * body["jump_ms"] > 0.9 * 86_400_000, body
            rig.wait_cloud_grows(f"records after the {offset} jump", by=10)
        report = rig.finish()
    assert report.kinds.get("clock") == 2
    print(f"clock jumps: {report}")


# ---- 9. a long outage: 1,000,000 records, then the drain -----------------------------------

@pytest.mark.slow
def test_long_outage_drain_bounded(tmp_path: Path) -> None:
    """The cloud is down while 250,000 records accumulate (a fast writer appends them
    through buffer.Outbox in big cycles, as a day of polling would), then it comes back
    and the real daemon drains: the WAL stays bounded while the backlog is written and
    while it drains, every record arrives, and the daemon's RSS stays under the 100 MB
    target. The backlog is several times the WAL limit (16 MiB at buffer_max_mb = 512),
    so the bounds are crossed many times over; the 1,000,000-record drain with its rate
    and peak RSS is ``make bench`` (bench/bench_drain.py), which keeps this suite short."""
    import json
    import subprocess
    import sys

    from tests.faults.harness import BULK_DEVICE, GATEWAY, rss_sampler

    n = 250_000
    rig = Rig(tmp_path, seed=19, buffer_max_mb=512)
    with rig_logs_on_failure(rig):
        rig.data_dir.mkdir(parents=True, exist_ok=True)
        wal = Path(f"{rig.buffer_path}-wal")
        writer = subprocess.Popen([sys.executable, "-m", "tests.faults.harness", "write-backlog",
                                   str(rig.buffer_path), GATEWAY, str(n)], text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  cwd=Path(__file__).parents[2])
        # the WAL while the backlog is written (the sampler ends with the writer)
        stop_w, written = rss_sampler(writer.pid, [wal])
        try:
            out, err = writer.communicate(timeout=180)
        finally:
            stop_w.set()
            if writer.poll() is None:
                writer.kill()
                writer.wait()
        assert writer.returncode == 0, err
        bulk_raw = json.loads(out.strip().splitlines()[-1])["raw"]
        rig.start_sim()
        rig.start_edge()
        edge = rig.edge_proc()
        stop, peaks = rss_sampler(edge.pid, [wal])
        try:
            assert _backlog(rig) >= n
            rig.start_cloud()
            _wait_drained(rig, f"the {n:,}-record backlog drained", timeout=200)
        finally:
            stop.set()
        report = rig.finish()
        bulk = rig.cloud_counters(BULK_DEVICE)["tags"][0]
    assert bulk["good"] == bulk_raw and bulk["breaks"] == [], bulk
    assert report.records_stored >= n
    mb = 2**20
    print(f"{n:,} backlog written: peak WAL {written[wal.name] / mb:.1f} MiB, "
          f"{written['samples']} samples; "
          f"drain: peak RSS {peaks['rss'] / mb:.1f} MiB, peak WAL {peaks[wal.name] / mb:.1f} MiB, "
          f"{peaks['samples']} samples")
    assert written["samples"] > 20 and peaks["samples"] > 20
    # the target (measured ~46 MiB)
    assert peaks["rss"] < 100 * mb, f"daemon RSS peaked at {peaks['rss'] / mb:.1f} MiB"
    # buffer/store.py: WAL <= wal_limit/2 + one transaction, truncated to <= wal_limit
    # (16 MiB at buffer_max_mb = 512); the database itself is ~23 MB (~90 MB for 1M)
    assert written[wal.name] < 24 * mb, \
        f"WAL peaked at {written[wal.name] / mb:.1f} MiB while the backlog was written"
    assert peaks[wal.name] < 64 * mb, f"WAL peaked at {peaks[wal.name] / mb:.1f} MiB"
