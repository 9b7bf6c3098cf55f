"""The daemon over Modbus RTU: two units on one serial bus (a real pseudo-terminal pair
from socat), polled by one task in turn, records reaching the cloud from both."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.fixtures.waiting import wait_for
from tests.services import free_port, require_binary, wait_port

pytestmark = pytest.mark.needs_service("socat")
MAP = Path(__file__).resolve().parents[2] / "config" / "maps" / "cnc-generic-modbus.toml"


def _config(path: Path, tty: str, status_port: int, cloud_port: int) -> None:
    lines = ["[gateway]", 'id = "gw-rtu"', 'data_dir = "data"', 'log_format = "json"',
             f'status_listen = "127.0.0.1:{status_port}"', "zeroconf_interfaces = []", "",
             "[cloud]", f'url = "http://127.0.0.1:{cloud_port}"', 'token_file = "token"',
             "retry_max_s = 2"]
    for unit in (1, 2):
        lines += ["", "[[devices]]", f'name = "lathe-{unit}"', f'map = "{MAP}"',
                  'protocol = "modbus-rtu"', f'serial_port = "{tty}"', f"unit = {unit}",
                  "baudrate = 19200", 'parity = "N"',   # a pty refuses parity settings
                  "poll_ms = 200", "timeout_ms = 500"]
    path.write_text("\n".join(lines) + "\n")


def test_two_rtu_units_on_one_bus_reach_the_cloud(tmp_path: Path) -> None:
    socat = require_binary("socat")
    a, b = str(tmp_path / "ttyA"), str(tmp_path / "ttyB")
    procs: list[subprocess.Popen[bytes]] = []
    logs = []

    def start(name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = (tmp_path / f"{name}.log").open("wb")
        logs.append(log)
        p = subprocess.Popen(argv, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
        procs.append(p)
        return p

    try:
        start("socat", [socat, f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"])
        wait_for(lambda: os.path.exists(a) and os.path.exists(b), "pty pair")
        status_port, cloud_port = free_port(), free_port()
        _config(tmp_path / "sim.toml", a, status_port, cloud_port)      # the PLC side
        _config(tmp_path / "gateway.toml", b, status_port, cloud_port)  # the gateway side
        db = str(tmp_path / "cloud.db")
        subprocess.run([sys.executable, "-m", "cloud.cli", "migrate", "--db", db], check=True,
                       capture_output=True, timeout=120)
        tok = subprocess.run([sys.executable, "-m", "cloud.cli", "admin", "create-gateway",
                              "gw-rtu", "--db", db], check=True, capture_output=True, text=True,
                             timeout=120).stdout.strip().splitlines()[-1]
        (tmp_path / "token").write_text(tok)
        cloud = start("cloud", [sys.executable, "-m", "cloud.cli", "serve", "--db", db, "--port",
                                str(cloud_port), "--no-zeroconf"])
        wait_port(cloud_port, timeout=60, proc=cloud)
        sim = start("sim", [sys.executable, "-m", "edge.cli", "simulate", "--config",
                            str(tmp_path / "sim.toml"), "--speed", "120"])

        def sim_ready() -> bool:   # it has opened the serial port (else the gateway retries)
            if sim.poll() is not None:
                raise AssertionError(f"the simulator exited with {sim.returncode}")
            return "ready" in (tmp_path / "sim.log").read_text(errors="replace")

        wait_for(sim_ready, "the simulator serving the serial port")
        edge = start("edge", [sys.executable, "-m", "edge.cli", "run", "--config",
                              str(tmp_path / "gateway.toml")])
        wait_port(status_port, timeout=60, proc=edge)

        def good_counts() -> dict[str, int | None]:
            out = {}
            for dev in ("lathe-1", "lathe-2"):
                r = httpx.get(f"http://127.0.0.1:{cloud_port}/api/v1/gateways/gw-rtu/devices/"
                              f"{dev}/counters", headers={"Authorization": f"Bearer {tok}"},
                              timeout=5)
                out[dev] = r.json()["totals"]["good"] if r.status_code == 200 else None
            return out

        wait_for(good_counts, "good counts from both units in the cloud", timeout=90,
                 until=lambda good: all(n and n > 0 for n in good.values()))
        st = httpx.get(f"http://127.0.0.1:{status_port}/status", timeout=5).json()
        assert all(d["online"] for d in st["devices"].values()), st["devices"]
        assert all(d["protocol"] == "modbus-rtu" for d in st["devices"].values())
        edge.send_signal(signal.SIGTERM)
        assert edge.wait(timeout=30) == 0
    except BaseException:
        for log in sorted(tmp_path.glob("*.log")):
            print(f"----- {log.name}\n{log.read_text(errors='replace')[-3000:]}")
        raise
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
        for log in logs:
            log.close()
