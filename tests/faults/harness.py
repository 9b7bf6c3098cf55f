"""The end-to-end fault harness: simulator -> ``plantsync-edge run`` -> (proxy | broker) ->
``plantsync-cloud serve`` / ``mqtt-ingest``, each a real process on 127.0.0.1, and the one
checker every scenario ends with.

    rig = Rig(tmp_path, seed=3)             # writes gateway.toml, token, cloud DB
    rig.start_cloud(); rig.start_sim(); rig.start_edge()
    wait_for(rig.cloud_status, "first records in the cloud",
             until=lambda st: st["last_seq"] > 50)
    rig.kill_edge(); rig.start_edge()
    report = rig.finish()                   # drain the tail, then check (a)-(e)

Nothing here waits a fixed time to decide a result: ``wait_for`` (tests/fixtures/waiting.py)
polls a condition up to a generous deadline and fails with what it last saw. Sleeps only
pace fault injection.

The checker (``finish``):
  (a) per device and counter tag, the cloud's delta sum equals the simulator's true
      movement since the gateway's baseline (the first count record's ``raw_before``),
      computed from the simulator's true totals and register offsets, minus only what a
      PLC reset zeroed before the gateway could read it (quantified, never negative);
      and the cloud's last raw value is the gateway's last stored baseline (tail complete);
  (b) no (gateway, seq) twice in the cloud DB; records_stored == last_seq - missing;
  (c) every missing seq is explained by a ``gap`` record;
  (d) ``PRAGMA integrity_check`` is ok on the edge buffer and the cloud DB;
  (e) no continuity break, except where a ``gap`` record (a buffer moved aside) says the
      gateway lost its baselines: then the break is allowed and its size is accounted.

Run as a script, it is also the fast backlog writer of the long-outage test:
``python -m tests.faults.harness write-backlog BUFFER GATEWAY RECORDS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.fixtures.waiting import DEADLINE, wait_for, wait_for_async
from tests.services import free_port, wait_port

REPO = Path(__file__).resolve().parents[2]
MAPS = REPO / "config" / "maps"
PY = sys.executable
EDGE = [PY, "-m", "edge.cli"]
CLOUD = [PY, "-m", "cloud.cli"]
GATEWAY = "gw-faults"


class HarnessError(AssertionError):
    pass


# ----------------------------------------------------------------------- processes

class Proc:
    """A subprocess whose stdout+stderr go through a pipe into ``log`` (a pipe, so that a
    RLIMIT_FSIZE on the child never hits its log file). Restartable."""

    def __init__(self, name: str, argv: list[str], log: Path, *, cwd: Path,
                 env: dict[str, str] | None = None,
                 preexec_fn: Callable[[], None] | None = None) -> None:
        self.name, self.argv, self.log, self.cwd = name, argv, log, cwd
        self.env = env
        self.preexec_fn = preexec_fn
        self.proc: subprocess.Popen[bytes] | None = None
        self._pump: threading.Thread | None = None
        self.starts = 0

    def start(self) -> None:
        assert not self.running, f"{self.name} already running"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(self.env or {})}
        self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     preexec_fn=self.preexec_fn)
        self.starts += 1
        out = self.proc.stdout
        assert out is not None
        with open(self.log, "ab") as f:
            f.write(f"==== start #{self.starts}: {' '.join(self.argv)}\n".encode())

        def pump() -> None:
            with open(self.log, "ab", buffering=0) as f:
                for line in iter(out.readline, b""):
                    f.write(line)
            out.close()

        self._pump = threading.Thread(target=pump, daemon=True, name=f"log {self.name}")
        self._pump.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Signal and reap; returns the exit code (None when it was not running)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise HarnessError(
                    f"{self.name} did not stop within {timeout} s of {sig!r}") from None
        if self._pump is not None:
            self._pump.join(timeout=10)
        return proc.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_line(self, needle: str, timeout: float = DEADLINE, since: int = 0) -> None:
        """Wait until the log (from offset ``since``) shows ``needle``; fails at once when
        the process exits first."""
        def printed() -> bool:
            if needle in self.text()[since:]:
                return True
            if not self.running:
                raise HarnessError(f"{self.name} exited before printing {needle!r}:\n"
                                   f"{self.text()[-4000:]}")
            return False
        wait_for(printed, f"{self.name} printing {needle!r}", timeout=timeout,
                 details=lambda: self.text()[-4000:])


class ProxyThread:
    """tests/faults/proxy.FaultProxy on its own event loop thread, driven synchronously."""

    def __init__(self, upstream_port: int) -> None:
        from tests.faults.proxy import FaultProxy

        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.proxy = FaultProxy(upstream_port, port=self.port)
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                        name="fault-proxy")
        self._thread.start()
        self._call(self.proxy.__aenter__())

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def set_mode(self, mode: str, latency_ms: int = 0) -> None:
        self._call(self.proxy.set_mode(mode, latency_ms=latency_ms))  # type: ignore[arg-type]

    @property
    def resets(self) -> int:
        return self.proxy.resets

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._call(self.proxy.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


# ----------------------------------------------------------------------- the rig

@dataclass
class Device:
    name: str
    map: str            # file name in config/maps
    protocol: str
    port: int


@dataclass
class ResetEvent:
    """An injected counter reset: per tag, the true total and offset just before it and
    the offset after it (read atomically with the fault on the control channel)."""

    device: str
    tags: dict[str, tuple[int, int, int]]   # tag -> (true total, offset before, offset after)


@dataclass
class CounterTag:
    device: str
    tag: str
    counts: str           # good | scrap | total
    modulo: int           # max raw + 1


@dataclass
class Report:
    last_seq: int
    records_stored: int
    duplicates_reported: int
    batches: int
    per_tag: dict[str, dict[str, Any]] = field(default_factory=dict)
    gaps: list[dict[str, Any]] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=dict)


class Rig:
    """One plant: simulator, gateway daemon, cloud (HTTP, optionally behind the fault
    proxy, or MQTT through Mosquitto), each a subprocess in ``root``."""

    def __init__(self, root: Path, *, seed: int = 1, speed: float = 60.0, poll_ms: int = 150,
                 devices: list[Device] | None = None, transport: str = "http",
                 proxy: bool = False, broker_url: str | None = None,
                 buffer_max_mb: int = 64, cloud_debug: bool = False,
                 cloud_auto: bool = False, advertise: bool = False) -> None:
        self.root = root
        # cloud_auto: the cloud advertises _plantsync._tcp.local. on loopback and the
        # gateway's cloud.url is "auto"; advertise: the gateway announces its status port
        # (_plantsync-edge._tcp.local.) on loopback. Else zeroconf is off for the gateway:
        # a test's gateway would answer every other test's browsing. tests/conftest.py
        # groups the tests that use zeroconf.
        self.cloud_auto = cloud_auto
        self.advertise = advertise
        self.seed, self.speed, self.poll_ms = seed, speed, poll_ms
        self.transport = transport
        self.buffer_max_mb = buffer_max_mb
        self.devices = devices if devices is not None else [
            Device("cnc-01", "cnc-generic-modbus.toml", "modbus-tcp", free_port()),
            Device("imm-01", "imm-generic-s7.toml", "s7", free_port()),
        ]
        (root / "edge").mkdir(parents=True, exist_ok=True)
        (root / "cloud").mkdir(parents=True, exist_ok=True)
        self.edge_dir = root / "edge"
        self.data_dir = self.edge_dir / "data"
        self.buffer_path = self.data_dir / "buffer.db"
        self.cloud_db = root / "cloud" / "cloud.db"
        self.db_url = f"sqlite+aiosqlite:///{self.cloud_db}"
        self.cloud_port = free_port()
        self.status_port = free_port()
        self.control_port = free_port()
        self.broker_url = broker_url
        self.proxy: ProxyThread | None = ProxyThread(self.cloud_port) if proxy else None
        self.resets: list[ResetEvent] = []
        self.offsets0: dict[tuple[str, str], int] | None = None
        self.edge_env: dict[str, str] = {}
        self.edge_prefix: list[str] = []
        self.edge_preexec: Callable[[], None] | None = None
        self._migrate_and_token()
        self.config = self.edge_dir / "gateway.toml"
        self.write_config()
        self.counter_tags = self._counter_tags()
        self.cloud = Proc("cloud", [*CLOUD, "serve", "--db", self.db_url, "--port",
                                    str(self.cloud_port), "--log-level",
                                    "debug" if cloud_debug else "info"],
                          root / "cloud" / "serve.log", cwd=root / "cloud",
                          env={"PLANTSYNC_ZEROCONF_INTERFACES": "127.0.0.1"} if cloud_auto
                          else None)
        self.ingest = Proc("mqtt-ingest", [*CLOUD, "mqtt-ingest", "--broker", broker_url or "",
                                           "--db", self.db_url, "--log-level",
                                           "debug" if cloud_debug else "info"],
                           root / "cloud" / "mqtt-ingest.log", cwd=root / "cloud")
        self.sim = Proc("simulate", [*EDGE, "simulate", "--config", str(self.config),
                                     "--speed", str(speed), "--seed", str(seed),
                                     "--control-port", str(self.control_port)],
                        root / "simulate.log", cwd=root)
        self.edge: Proc | None = None

    # ---- setup

    def _migrate_and_token(self) -> None:
        for args in (["migrate", "--db", self.db_url],
                     ["admin", "create-gateway", GATEWAY, "--db", self.db_url]):
            res = subprocess.run([*CLOUD, *args], capture_output=True, text=True, timeout=120,
                                 cwd=self.root, check=False)
            if res.returncode != 0:
                raise HarnessError(f"plantsync-cloud {' '.join(args)} failed:\n{res.stderr}")
        self.token = res.stdout.strip().splitlines()[-1].strip()
        (self.edge_dir / "token").write_text(self.token + "\n")
        os.chmod(self.edge_dir / "token", 0o600)

    @property
    def cloud_url(self) -> str:
        return f"http://127.0.0.1:{self.cloud_port}"

    @property
    def edge_cloud_url(self) -> str:
        port = self.proxy.port if self.proxy is not None else self.cloud_port
        return f"http://127.0.0.1:{port}"

    def write_config(self) -> None:
        lines = [
            "[gateway]",
            f'id = "{GATEWAY}"',
            'data_dir = "data"',
            f"buffer_max_mb = {self.buffer_max_mb}",
            'buffer_synchronous = "FULL"',
            'log_format = "json"',
            f'status_listen = "127.0.0.1:{self.status_port}"',
            # loopback only, never the LAN; off unless the test is about zeroconf
            'zeroconf_interfaces = ["127.0.0.1"]' if self.cloud_auto or self.advertise
            else "zeroconf_interfaces = []",
            "",
            "[cloud]",
            # explicit unless the test is about "auto" (zeroconf on loopback)
            'url = "auto"' if self.cloud_auto else f'url = "{self.edge_cloud_url}"',
            'token_file = "token"',
            f'transport = "{self.transport}"',
            "retry_max_s = 2",                       # a returning cloud is used at once
        ]
        if self.transport == "mqtt":
            lines += ["", "[mqtt]", f'broker = "{self.broker_url}"']
        for d in self.devices:
            lines += ["", "[[devices]]", f'name = "{d.name}"', f'map = "{MAPS / d.map}"',
                      f'protocol = "{d.protocol}"', 'host = "127.0.0.1"', f"port = {d.port}",
                      f"poll_ms = {self.poll_ms}", "timeout_ms = 1000"]
            if d.protocol == "s7":
                lines += ["rack = 0", "slot = 1"]
            else:
                lines += ["unit = 1"]
        self.config.write_text("\n".join(lines) + "\n")

    def _counter_tags(self) -> list[CounterTag]:
        from edge.config import load_gateway
        from protocols import DataType

        out = []
        for dev in load_gateway(self.config).devices:
            for name, tag in dev.map.config.tags.items():
                if tag.role == "counter":
                    out.append(CounterTag(dev.config.name, name, tag.counts or "total",
                                          DataType(tag.type).max_value + 1))
        return out

    # ---- processes

    def start_cloud(self) -> None:
        self.cloud.start()
        try:
            wait_port(self.cloud_port, timeout=DEADLINE)
        except TimeoutError:
            raise HarnessError(f"cloud did not start:\n{self.cloud.text()[-4000:]}") from None

    def stop_cloud(self, sig: int = signal.SIGTERM) -> None:
        self.cloud.stop(sig)

    def start_ingest(self) -> None:
        since = len(self.ingest.text())
        self.ingest.start()
        self.ingest.wait_line("mqtt_ingest", since=since)

    def start_sim(self) -> None:
        since = len(self.sim.text())
        self.sim.start()
        self.sim.wait_line("ready", since=since)
        wait_port(self.control_port)
        if self.offsets0 is None:
            self.offsets0 = self.offsets(self.sim_state())

    def edge_proc(self) -> Proc:
        if self.edge is None:
            self.edge = Proc("edge", [*self.edge_prefix, *EDGE, "run", "--config",
                                      str(self.config)],
                             self.root / "edge.log", cwd=self.edge_dir, env=self.edge_env,
                             preexec_fn=self.edge_preexec)
        return self.edge

    def start_edge(self, *, wait_ready: bool = True) -> None:
        edge = self.edge_proc()
        since = len(edge.text())
        edge.start()
        if wait_ready:
            edge.wait_line("gateway_started", since=since)

    def kill_edge(self) -> None:
        self.edge_proc().kill()

    def stop_edge(self) -> int | None:
        """SIGTERM: the daemon must stop within 5 s (we allow generous 20 s)."""
        return self.edge_proc().stop(signal.SIGTERM, timeout=20)

    def close(self) -> None:
        for p in (self.edge, self.ingest, self.cloud, self.sim):
            if p is not None:
                with contextlib.suppress(Exception):
                    p.stop(signal.SIGKILL)
        if self.proxy is not None:
            self.proxy.close()

    def logs(self) -> str:
        out = []
        for p in (self.sim, self.edge, self.cloud, self.ingest):
            if p is not None and p.log.exists():
                out.append(f"----- {p.name} ({p.log}) last 6000 chars -----\n{p.text()[-6000:]}")
        return "\n".join(out)

    # ---- simulator

    def control(self, *requests: dict[str, Any]) -> list[dict[str, Any]]:
        """Send requests in ONE write on one connection: the simulator handles buffered
        lines back to back, so a state-fault-state triple sees no clock tick between."""
        with socket.create_connection(("127.0.0.1", self.control_port), timeout=10) as s:
            s.sendall(b"".join(json.dumps(r).encode() + b"\n" for r in requests))
            f = s.makefile("rb")
            answers = [json.loads(f.readline()) for _ in requests]
        for a in answers:
            if not a.get("ok"):
                raise HarnessError(f"simulator refused: {a}")
        return answers

    def sim_state(self) -> dict[str, Any]:
        return dict(self.control({"cmd": "state"})[0]["devices"])

    def offsets(self, state: dict[str, Any]) -> dict[tuple[str, str], int]:
        """register = (true total + offset) mod M, per counter tag."""
        return {(t.device, t.tag): (state[t.device]["counters"][t.tag]
                                    - state[t.device][t.counts]) % t.modulo
                for t in self.counter_tags}

    def fault(self, device: str, fault: str, **params: Any) -> None:
        """Inject a fault. Resets are bracketed by state reads in the same instant so the
        checker knows the true total at the reset and the offsets before and after."""
        req = {"cmd": "fault", "device": device, "fault": fault, **params}
        if fault == "wrap":
            raise HarnessError("inject wrap with wrap_before_edge(): the gateway cannot tell "
                               "a wrap jump from production once it has read the device")
        if fault != "reset":
            self.control(req)
            return
        before, _, after = self.control({"cmd": "state"}, req, {"cmd": "state"})
        ob, oa = self.offsets(before["devices"]), self.offsets(after["devices"])
        tags = {}
        for t in self.counter_tags:
            if t.device == device and ob[(device, t.tag)] != oa[(device, t.tag)]:
                tags[t.tag] = (before["devices"][device][t.counts], ob[(device, t.tag)],
                               oa[(device, t.tag)])
        self.resets.append(ResetEvent(device, tags))

    def wrap_before_edge(self, device: str, margin: int = 3) -> None:
        """A wrap (counter just below its type's maximum) before the gateway ever read the
        device: its baseline is near the top and it rolls over while we watch."""
        assert self.edge is None or self.edge.starts == 0, "wrap only before the first edge run"
        self.control({"cmd": "fault", "device": device, "fault": "wrap", "margin": margin})
        self.offsets0 = self.offsets(self.sim_state())

    # ---- edge and cloud views

    def edge_status(self) -> dict[str, Any]:
        r = httpx.get(f"http://127.0.0.1:{self.status_port}/status", timeout=5)
        r.raise_for_status()
        return dict(r.json())

    def _get(self, path: str) -> dict[str, Any]:
        r = httpx.get(f"{self.cloud_url}{path}", timeout=30,
                      headers={"Authorization": f"Bearer {self.token}"})
        r.raise_for_status()
        return dict(r.json())

    def cloud_status(self) -> dict[str, Any]:
        return self._get(f"/api/v1/gateways/{GATEWAY}")

    def cloud_counters(self, device: str) -> dict[str, Any]:
        return self._get(f"/api/v1/gateways/{GATEWAY}/devices/{device}/counters")

    def cloud_query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        con = sqlite3.connect(f"file:{self.cloud_db}?mode=ro", uri=True, timeout=30)
        try:
            return con.execute(sql, args).fetchall()
        finally:
            con.close()

    def cloud_count_records(self) -> int:
        return int(self.cloud_query("SELECT count(*) FROM records")[0][0])

    def cloud_last_seq(self) -> int:
        return int(self.cloud_query("SELECT coalesce(max(seq), 0) FROM records")[0][0])

    def counted(self, device: str) -> int:
        """Good+scrap deltas the cloud holds for ``device`` (a progress probe)."""
        rows = self.cloud_query("SELECT count(*) FROM records WHERE device = ? AND kind = 'count'",
                                device)
        return int(rows[0][0])

    def wait_cloud_grows(self, what: str, by: int = 1, timeout: float = DEADLINE) -> int:
        """Wait until the cloud holds ``by`` more records than now; how many it holds."""
        start = self.cloud_count_records()
        return wait_for(self.cloud_count_records, what, until=lambda n: n >= start + by,
                        timeout=timeout, details=self.logs)

    def wait_counter_seen(self, device: str, tag: str, at_least: int = 2) -> None:
        """Wait until the cloud shows ``tag`` of ``device`` at a raw value >= at_least (so
        a reset afterwards is a visible decrease, not 0 -> 0)."""
        def seen(tags: list[dict[str, Any]]) -> bool:
            return any(t["tag"] == tag and t["last_raw"] >= at_least for t in tags)
        wait_for(lambda: self.cloud_counters(device)["tags"],
                 f"cloud sees {device}.{tag} >= {at_least}", until=seen, details=self.logs)

    def buffer_query(self, sql: str) -> list[tuple[Any, ...]]:
        con = sqlite3.connect(f"file:{self.buffer_path}?mode=ro", uri=True, timeout=30)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()

    # ---- the end of every run

    def drain_tail(self, timeout: float = 120.0) -> tuple[int, dict[tuple[str, str], int]]:
        """With the daemon stopped: send what is left in its buffer through the same
        Forwarder and uplink the daemon uses (so the checker sees the gateway's final
        state, not a moving target), and return (last seq, baselines)."""
        from buffer import Outbox
        from buffer.uplink import HttpUplink, MqttUplink
        from edge.forwarder import Forwarder

        async def go() -> tuple[int, dict[tuple[str, str], int]]:
            async with Outbox(self.buffer_path, gateway=GATEWAY,
                              max_bytes=self.buffer_max_mb * 2**20) as ob:
                uplink: Any
                if self.transport == "mqtt":
                    uplink = MqttUplink(self.broker_url or "", gateway=GATEWAY,
                                        token_file=self.edge_dir / "token")
                else:
                    uplink = HttpUplink(self.cloud_url, token_file=self.edge_dir / "token")
                async with uplink:
                    fwd = Forwarder(ob, uplink, gateway=GATEWAY, backoff_cap=2.0)
                    task = asyncio.create_task(fwd.run())
                    try:
                        await wait_for_async(ob.stats, "the tail drained from the buffer",
                                             until=lambda st: st.backlog == 0,
                                             timeout=timeout, interval=0.1,
                                             details=lambda: f"forwarder: {fwd.stats()}")
                    finally:
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
                st = await ob.stats()
                problems = await ob.integrity_check()
                if problems:
                    raise HarnessError(f"(d) edge buffer integrity_check: {problems}")
                return st.last_seq, await ob.baselines()

        return asyncio.run(go())

    def batch_counts(self) -> tuple[int, int]:
        """(batches, duplicate records) the cloud's ingest reported in its debug log
        (``cloud_debug=True``; else both 0)."""
        batches = dups = 0
        for p in (self.cloud, self.ingest):
            for line in p.text().splitlines():
                if "batch_stored" not in line:
                    continue
                n = re.search(r"\bnew=(\d+)", line)
                # stderr lines of two loggers can run together: "records=13" + "2026-..."
                r = re.search(r"\brecords=(\d+?)(?=\d{4}-\d\d-\d\d[ T]|\s|$)", line)
                if n and r:
                    batches += 1
                    dups += int(r.group(1)) - int(n.group(1))
        return batches, dups

    def finish(self, *, edge_running: bool = True,
               allow_baseline_loss: bool = False) -> Report:
        """Stop the gateway cleanly, drain its tail, and run checks (a)-(e)."""
        if edge_running:
            code = self.stop_edge()
            if code not in (0, None):
                raise HarnessError(f"edge exited {code} on SIGTERM:\n{self.logs()}")
        if self.transport == "http" and not self.cloud.running:
            self.start_cloud()
        if self.proxy is not None:
            self.proxy.set_mode("pass")
        edge_last, baselines = self.drain_tail()
        wait_for(self.cloud_last_seq, f"cloud last seq reaches the gateway's {edge_last}",
                 until=lambda seq: seq >= edge_last, details=self.logs)
        return self.check(edge_last, baselines, allow_baseline_loss=allow_baseline_loss)

    def check(self, edge_last: int, baselines: dict[tuple[str, str], int], *,
              allow_baseline_loss: bool = False) -> Report:
        status = self.cloud_status()
        # (b) the unique key and the API's arithmetic
        dup = self.cloud_query("SELECT gateway_id, seq, count(*) FROM records "
                               "GROUP BY gateway_id, seq HAVING count(*) > 1")
        assert dup == [], f"(b) (gateway, seq) stored twice: {dup[:10]}"
        stored = self.cloud_count_records()
        assert status["last_seq"] == edge_last, \
            f"(b) cloud last_seq {status['last_seq']} != gateway's last seq {edge_last}"
        assert status["records_stored"] == stored
        assert status["records_stored"] == status["last_seq"] - status["missing"], status
        # (c) every missing seq explained
        unexplained = [g for g in status["gaps"] if not g["explained"]]
        assert not unexplained, f"(c) seqs missing without a gap record: {unexplained}"
        assert not status["gaps_truncated"]
        # (d) integrity of the cloud DB (the buffer was checked by drain_tail)
        ok = self.cloud_query("PRAGMA integrity_check")
        assert ok == [("ok",)], f"(d) cloud integrity_check: {ok}"
        kinds = dict(self.cloud_query("SELECT kind, count(*) FROM records GROUP BY kind"))
        batches, dups = self.batch_counts()
        report = Report(edge_last, stored, dups, batches, gaps=status["gaps"], kinds=kinds)
        gap_seqs = [int(s) for (s,) in self.cloud_query(
            "SELECT seq FROM records WHERE kind = 'gap' ORDER BY seq")]
        for dev in sorted({t.device for t in self.counter_tags}):
            counters = {t["tag"]: t for t in self.cloud_counters(dev)["tags"]}
            for ct in (t for t in self.counter_tags if t.device == dev):
                report.per_tag[f"{dev}.{ct.tag}"] = self._check_tag(
                    ct, counters.get(ct.tag), baselines, gap_seqs, allow_baseline_loss)
        return report

    def _check_tag(self, ct: CounterTag, cloud: dict[str, Any] | None,
                   baselines: dict[tuple[str, str], int], gap_seqs: list[int],
                   allow_baseline_loss: bool) -> dict[str, Any]:
        key = (ct.device, ct.tag)
        name = f"{ct.device}.{ct.tag}"
        assert self.offsets0 is not None
        if cloud is None:
            return {"records": 0}
        # (a) the tail: the cloud ends where the gateway's stored baseline ends
        assert cloud["last_raw"] == baselines.get(key), \
            f"(a) {name}: cloud last raw {cloud['last_raw']} != gateway baseline {baselines.get(key)}"
        # (e) continuity; a break is allowed only right after a gap record (buffer moved
        # aside: its baselines went with it) and then its size is an accounted loss
        lost_unread = 0
        for b in cloud["breaks"]:
            explained = allow_baseline_loss and any(b["after_seq"] < g < b["seq"] for g in gap_seqs)
            assert explained, f"(e) {name}: continuity break {b}"
            lost_unread += (b["raw_before"] - b["expected_raw_before"]) % ct.modulo
        rows = self.cloud_query(
            "SELECT seq, body FROM records WHERE gateway_id = ? AND device = ? AND kind = 'count'"
            " ORDER BY seq", GATEWAY, ct.device)
        recs = [json.loads(b) if isinstance(b, str) else b for _, b in rows]
        recs = [b for b in recs if b["tag"] == ct.tag]
        reset_recs = [b for b in recs if b.get("reset")]
        events = [e.tags[ct.tag] for e in self.resets
                  if e.device == ct.device and ct.tag in e.tags]
        assert len(reset_recs) == len(events), \
            f"(a) {name}: {len(events)} resets injected, cloud shows {len(reset_recs)}"
        m = ct.modulo
        off = self.offsets0[key]

        def true(raw: int, offset: int) -> int:
            return (raw - offset) % m

        start = true(recs[0]["raw_before"] if recs[0]["raw_before"] is not None
                     else recs[0]["raw_after"], off)
        expected, lost_at_resets = 0, 0
        for rec, (t_reset, off_before, off_after) in zip(reset_recs, events, strict=True):
            last_seen = true(rec["raw_before"], off_before)
            loss = t_reset - last_seen
            assert loss >= 0, f"(a) {name}: gateway saw {last_seen} before a reset at {t_reset}"
            expected += last_seen - start
            lost_at_resets += loss
            start, off = t_reset, off_after
        final_off = self.offsets(self.sim_state())[key]
        assert final_off == off, f"{name}: offset changed without a recorded reset"
        end = true(cloud["last_raw"], off)
        expected += end - start - lost_unread
        got = cloud[ct.counts]
        assert got == expected, (
            f"(a) {name}: cloud {ct.counts} sum {got} != true movement {expected} "
            f"(baseline true {true(cloud['first_raw'], self.offsets0[key])}, end {end}, "
            f"lost at resets {lost_at_resets}, lost with moved-aside buffer {lost_unread})")
        return {"records": cloud["records"], "sum": got, "resets": cloud["resets"],
                "lost_at_resets": lost_at_resets, "lost_unread": lost_unread}


@contextlib.contextmanager
def rig_logs_on_failure(rig: Rig) -> Iterator[Rig]:
    """Print every process log when the block fails, and always stop the processes."""
    try:
        yield rig
    except BaseException:
        print(rig.logs())
        raise
    finally:
        rig.close()


def rss_sampler(pid: int, paths: list[Path]) -> tuple[threading.Event, dict[str, int]]:
    """Sample a process's RSS and the sizes of ``paths`` every 50 ms until the event is
    set; the dict holds the peaks."""
    import psutil

    stop = threading.Event()
    peaks = {"rss": 0, **{p.name: 0 for p in paths}, "samples": 0}

    def run() -> None:
        proc = psutil.Process(pid)
        while not stop.is_set():
            try:
                peaks["rss"] = max(peaks["rss"], proc.memory_info().rss)
            except psutil.Error:
                return
            for p in paths:
                with contextlib.suppress(OSError):
                    peaks[p.name] = max(peaks[p.name], p.stat().st_size)
            peaks["samples"] += 1
            stop.wait(0.05)

    threading.Thread(target=run, daemon=True, name="rss-sampler").start()
    return stop, peaks


def set_fsize_limit(pid: int, soft: int) -> None:
    """Change a running process's RLIMIT_FSIZE soft limit (prlimit(2))."""
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))


# ----------------------------------------------------------------------- backlog writer

BULK_DEVICE = "bulk-01"


async def write_backlog(path: Path, gateway: str, records: int, *,
                        max_mb: int = 512, per_cycle: int = 5000) -> int:
    """Append ``records`` records (counts of a fake counter 'bulk-01.part_count' moving by
    1, plus samples) in big group-commit cycles. Returns the counter's final raw value."""
    from buffer import Cycle, Outbox, Record

    ts = int(time.time() * 1000) - 86_400_000
    raw = 0
    async with Outbox(path, gateway=gateway, max_bytes=max_mb * 2**20) as ob:
        base = await ob.baselines()
        raw = base.get((BULK_DEVICE, "part_count"), 0)
        written = 0
        while written < records:
            n = min(per_cycle, records - written)
            recs = []
            for i in range(n):
                if i % 2 == 0:
                    recs.append(Record(0, ts, BULK_DEVICE, "count", {
                        "tag": "part_count", "counts": "good", "delta": 1, "raw_before": raw,
                        "raw_after": raw + 1, "reset": False}))
                    raw += 1
                else:
                    recs.append(Record(0, ts, BULK_DEVICE, "sample",
                                       {"values": {"spindle_temp": 20.0 + (i % 7)}}))
                ts += 5
            await ob.append(Cycle(recs, {(BULK_DEVICE, "part_count"): raw}))
            written += n
    return raw


def main(argv: list[str]) -> int:
    if argv[:1] == ["write-backlog"]:
        path, gateway, n = Path(argv[1]), argv[2], int(argv[3])
        t0 = time.monotonic()
        raw = asyncio.run(write_backlog(path, gateway, n))
        print(json.dumps({"raw": raw, "seconds": round(time.monotonic() - t0, 2)}), flush=True)
        return 0
    print("usage: python -m tests.faults.harness write-backlog BUFFER GATEWAY RECORDS",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

