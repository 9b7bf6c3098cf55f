"""``make demo``: the whole system on this machine, on a plant that has run for a week.

Starts, each as its own process with its log in ``demo-data/``:

- the cloud (``plantsync-cloud serve``) on a SQLite file, in the plant's time zone
  (``PLANTSYNC_TIMEZONE``, Asia/Shanghai), with a gateway token made for this demo;
- on a fresh data dir, the week behind the plant (``edge.demo_seed``): master data, work
  orders and dispatches through the REST API, and a week of the simulated machines'
  records, derived as the gateway derives them, written into the gateway's buffer;
- the simulated plant of ``config/gateway.example.toml`` (two CNCs over Modbus TCP, two
  injection-molding machines over S7) on 127.0.0.1, continuing the week's machines at
  real time (``python -m edge.demo_seed plant``);
- the gateway daemon (``plantsync-edge run``): it sends the week from its buffer, then
  polls the plant and syncs live. Once the week is in, the planner's week follows
  through the API (stop reasons, anomalies worked, orders closed, a stock count).

It prints where to look and then, every few seconds, what the cloud has received per
machine next to what the gateway sees. Ctrl-C stops all of it cleanly (the gateway
flushes its buffer first, the plant saves its machines). The data stays in
``demo-data/``: the next ``make demo`` resumes where this one stopped; ``--fresh``
starts over.

``--speed`` (default 1) shortens the machines' waits (stops, repairs, heating), never a
cycle: the records keep real timestamps and cycle times, so no speed makes OEE pass
100 %.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TextIO

from edge import demo_seed
from edge.config import ConfigError
from edge.simulate import demo_gateway

GATEWAY_ID = "gw-demo"
PY = sys.executable


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port(preferred: int | None) -> int:
    """``preferred`` when it is free, else (or with None) a port the system hands out."""
    if preferred is not None and _port_free(preferred):
        return preferred
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, log: Path,
               timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; see {log}:\n"
                               + _tail(log))
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not start listening on port {port}; see {log}")


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def _get_json(url: str, token: str | None = None) -> Any:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.load(resp)


class Demo:
    """The three processes of the demo and the files they share."""

    def __init__(self, root: Path, *, speed: float, seed: int, cloud_port: int,
                 free_ports: bool = False) -> None:
        self.root = root
        self.speed = speed
        self.seed = seed
        self.example = demo_gateway()
        self.free_ports = free_ports
        self.cloud_port = _free_port(cloud_port)
        # --free-ports: the plant and the gateway's status on ports the system hands out
        # (beside another demo, or tests that use the example's fixed ports)
        self.status_port = _free_port(None if free_ports else 8470)
        self.plant_ports = {p: (_free_port(None) if free_ports else p) for p in
                            sorted({d.config.effective_port for d in self.example.devices})}
        self.db = root / "cloud.db"
        self.token_file = root / "token"
        self.password_file = root / "admin-password"
        self.config = root / "gateway.toml"
        self.machines = root / "plant.pickle"
        self.seeded = root / "seeded"
        self.procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def check_plant_ports(self) -> None:
        taken = [f"{d.config.name} ({self.plant_ports[d.config.effective_port]})"
                 for d in self.example.devices
                 if not _port_free(self.plant_ports[d.config.effective_port])]
        if taken:
            raise RuntimeError("the demo plant's ports are taken: " + ", ".join(taken)
                               + " (is another demo or `plantsync-edge simulate` running? "
                               "--free-ports runs beside it)")

    def write_config(self) -> None:
        """The example config with this demo's folders, ports and an absolute map path."""
        lines = [
            "# Written by `make demo` from config/gateway.example.toml.",
            "[gateway]", f'id = "{GATEWAY_ID}"', f'data_dir = "{self.root / "edge"}"',
            "buffer_max_mb = 256", 'buffer_synchronous = "NORMAL"', 'log_format = "logfmt"',
            f'status_listen = "127.0.0.1:{self.status_port}"',
            'zeroconf_interfaces = ["127.0.0.1"]', "",
            "[cloud]", f'url = "http://127.0.0.1:{self.cloud_port}"',
            f'token_file = "{self.token_file}"', 'transport = "http"',
        ]
        for dev in self.example.devices:
            c = dev.config
            lines += ["", "[[devices]]", f'name = "{c.name}"', f'map = "{dev.map.path}"',
                      f'protocol = "{c.protocol}"', f'host = "{c.host or "127.0.0.1"}"',
                      f"port = {self.plant_ports[c.effective_port]}", f"poll_ms = {c.poll_ms}"]
            lines += ["rack = 0", "slot = 1"] if c.protocol == "s7" else [f"unit = {c.unit}"]
        self.config.write_text("\n".join(lines) + "\n")

    def make_token(self) -> None:
        """Migrate the cloud DB and make (or rotate) the demo gateway's token."""
        db = ["--db", str(self.db)]
        subprocess.run([PY, "-m", "cloud.cli", "migrate", *db], check=True,
                       capture_output=True, timeout=120)
        res = subprocess.run([PY, "-m", "cloud.cli", "admin", "create-gateway", GATEWAY_ID, *db],
                             capture_output=True, text=True, timeout=120)
        if res.returncode != 0:  # it exists from an earlier demo: give it a new token
            res = subprocess.run([PY, "-m", "cloud.cli", "admin", "create-gateway", GATEWAY_ID,
                                  "--rotate", *db], capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise RuntimeError(f"could not make the gateway token: {res.stderr.strip()}")
        self.token_file.write_text(res.stdout.strip().splitlines()[-1] + "\n")
        self.token_file.chmod(0o600)
        self.make_admin(db)

    def make_admin(self, db: list[str]) -> None:
        """A demo-only admin with a random password (kept beside the demo's data, mode
        0600): outside the demo plantsync has no default user or password."""
        if self.password_file.exists():
            return
        password = secrets.token_urlsafe(12)
        res = subprocess.run([PY, "-m", "cloud.cli", "admin", "create-user", "admin", "--role",
                              "admin", *db], input=password + "\n", capture_output=True,
                             text=True, timeout=120)
        if res.returncode != 0:
            raise RuntimeError(f"could not create the demo admin: {res.stderr.strip()}")
        self.password_file.write_text(password + "\n")
        self.password_file.chmod(0o600)

    def start(self, name: str, argv: list[str], port: int | None = None,
              env: dict[str, str] | None = None) -> None:
        log = self.root / f"{name}.log"
        with log.open("ab") as fh:
            proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT,
                                    cwd=self.root, start_new_session=True,
                                    env={**os.environ, **(env or {})})
        self.procs.append((name, proc, log))
        if port is not None:
            _wait_port(port, proc, name, log)

    def start_all(self, out: TextIO) -> None:
        self.check_plant_ports()
        self.write_config()
        fresh = not self.seeded.exists()
        began = time.monotonic()
        with ThreadPoolExecutor(1) as pool:
            # The week runs on a virtual clock while the cloud migrates and starts.
            week = pool.submit(demo_seed.plan_week, self.example, seed=self.seed,
                               end_s=time.time()) if fresh else None
            self.start_cloud(out, week, began)

    def start_cloud(self, out: TextIO, week: Future[demo_seed.History] | None,
                    began: float) -> None:
        self.make_token()
        self.start("cloud", [PY, "-m", "cloud.cli", "serve", "--db", str(self.db),
                             "--port", str(self.cloud_port)], self.cloud_port,
                   env={"PLANTSYNC_TIMEZONE": demo_seed.TIMEZONE})
        base = f"http://127.0.0.1:{self.cloud_port}"
        api = None
        if week is not None:
            print("seeding a week of plant history (a minute or two) ...", file=out,
                  flush=True)
            api = demo_seed.login(base, "admin", self.password_file.read_text().strip())
            hist = week.result()
            ids, last_seq = demo_seed.seed_cloud(api, GATEWAY_ID, hist,
                                                 self.root / "edge" / "buffer.db")
            demo_seed.save_machines(self.machines, hist)
            print(f"  {len(hist.records)} records of the week in the gateway's buffer "
                  f"({time.monotonic() - began:.0f} s)", file=out, flush=True)
        self.start("simulate", [PY, "-m", "edge.demo_seed", "plant", "--config",
                                str(self.config), "--machines", str(self.machines),
                                "--speed", f"{self.speed:g}"],
                   self.plant_ports[self.example.devices[-1].config.effective_port])
        self.start("gateway", [PY, "-m", "edge.cli", "run", "--config", str(self.config)],
                   self.status_port)
        if week is not None and api is not None:
            self.wait_acked(last_seq, out)
            print(f"  the cloud has the week ({time.monotonic() - began:.0f} s); "
                  "the planner's week follows", file=out, flush=True)
            done = demo_seed.seed_after(api, ids, hist)
            api.close()
            self.seeded.write_text(f"{done}\n")
            print(f"  the week is in: {done['reasons']} stop reasons given, "
                  f"{done['anomalies_closed']} anomalies closed "
                  f"({time.monotonic() - began:.0f} s)", file=out, flush=True)

    def wait_acked(self, seq: int, out: TextIO, timeout: float = 600.0) -> None:
        """Until the cloud holds the gateway's records through ``seq``."""
        token = self.token_file.read_text().strip()
        url = f"http://127.0.0.1:{self.cloud_port}/api/v1/gateways/{GATEWAY_ID}"
        deadline = time.monotonic() + timeout
        shown = 0.0
        while time.monotonic() < deadline:
            if problems := self.dead():
                raise RuntimeError("\n".join(problems))
            with contextlib.suppress(OSError, urllib.error.URLError, ValueError, KeyError):
                got = int(_get_json(url, token)["last_seq"] or 0)
                if got >= seq:
                    return
                if time.monotonic() - shown > 10:
                    print(f"  sending the week: {got}/{seq} records", file=out, flush=True)
                    shown = time.monotonic()
            time.sleep(0.5)
        raise RuntimeError(f"the gateway did not send its week of history in {timeout:g} s")

    def stop_all(self) -> None:
        """Gateway first (it flushes), then the cloud, then the plant."""
        for name, proc, _log in sorted(self.procs, key=lambda p: ["gateway", "cloud",
                                                                  "simulate"].index(p[0])):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    print(f"  {name} did not stop in 15 s; killing it", flush=True)
                    proc.kill()
                    proc.wait()

    def dead(self) -> list[str]:
        return [f"{name} exited with {p.returncode}; see {log}:\n{_tail(log)}"
                for name, p, log in self.procs if p.poll() is not None]

    def rows(self) -> tuple[list[Sequence[str]], str]:
        """The table (one row per machine) and a line about the buffer and uplink."""
        token = self.token_file.read_text().strip()
        cloud = f"http://127.0.0.1:{self.cloud_port}/api/v1/gateways/{GATEWAY_ID}"
        try:
            status = _get_json(f"http://127.0.0.1:{self.status_port}/status")
        except (OSError, urllib.error.URLError, ValueError):
            status = {"devices": {}, "buffer": {}, "uplink": {}}
        rows: list[Sequence[str]] = [("machine", "online", "polls", "good", "scrap", "resets")]
        for dev in self.example.devices:
            name = dev.config.name
            st = status["devices"].get(name, {})
            try:
                counters = _get_json(f"{cloud}/devices/{name}/counters", token)
                totals = counters["totals"]
                resets = sum(t["resets"] for t in counters["tags"])
                good, scrap = str(totals["good"]), str(totals["scrap"])
            except (OSError, urllib.error.URLError, ValueError, KeyError):
                good = scrap = resets_s = "?"
            else:
                resets_s = str(resets)
            online = {True: "yes", False: "NO"}.get(st.get("online"), "-")
            rows.append((name, online, str(st.get("polls", "-")), good, scrap, resets_s))
        buf, up = status.get("buffer", {}), status.get("uplink", {})
        footer = (f"gateway buffer backlog {buf.get('backlog', '?')}, uplink "
                  f"{up.get('state', '?')}, acked through seq {up.get('acked_seq') or '-'}")
        return rows, footer


def _print_rows(rows: Sequence[Sequence[str]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip(), file=out)


def run_demo(root: Path, *, speed: float, seed: int, cloud_port: int, interval: float,
             fresh: bool, free_ports: bool = False, out: TextIO = sys.stdout) -> int:
    if fresh and root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    demo = Demo(root, speed=speed, seed=seed, cloud_port=cloud_port, free_ports=free_ports)
    stopping = False
    started = False

    def on_signal(_sig: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        if not started:   # still starting or seeding: stop that now
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        demo.start_all(out)
        started = True
        pace = "" if speed == 1 else f"; machine waits {speed:g}x shorter"
        print(f"""plantsync demo is running (a plant with a week behind it{pace}). Where to look:
  plant reports    open http://127.0.0.1:{demo.cloud_port}/ and log in as admin, password in
                   {demo.password_file} (中文 / English at the top right)
  cloud API        http://127.0.0.1:{demo.cloud_port}/docs
  gateway in cloud curl -H "Authorization: Bearer $(cat {demo.token_file})" \\
                     http://127.0.0.1:{demo.cloud_port}/api/v1/gateways/{GATEWAY_ID}
  gateway status   http://127.0.0.1:{demo.status_port}/status   (and /metrics)
                   .venv/bin/plantsync-edge status --config {demo.config}
  probe a machine  .venv/bin/plantsync-edge probe --config {demo.config} cnc-01
  logs             {root}/{{simulate,cloud,gateway}}.log
Ctrl-C stops everything; the data stays in {root} (--fresh starts over).
""", file=out, flush=True)
        while not stopping:
            if problems := demo.dead():
                print("\n".join(problems), file=sys.stderr)
                return 1
            print(f"--- {time.strftime('%H:%M:%S')}  counted in the cloud", file=out)
            rows, footer = demo.rows()
            _print_rows(rows, out)
            print(footer, file=out)
            print(file=out, flush=True)
            deadline = time.monotonic() + interval
            while not stopping and time.monotonic() < deadline:
                time.sleep(0.1)
        return 0
    except (RuntimeError, ConfigError, subprocess.CalledProcessError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        print("stopping: gateway (flushing its buffer), cloud, simulated plant ...", file=out,
              flush=True)
        demo.stop_all()
        print(f"demo stopped; data kept in {root}", file=out, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge.demo",
                                     description="The whole plantsync system on this machine.")
    parser.add_argument("--dir", default=os.environ.get("PLANTSYNC_DEMO_DIR", "demo-data"),
                        help="where the demo keeps its data and logs (default ./demo-data)")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="shorten the machines' waits (stops, repairs, heating) this "
                             "many times; cycles and timestamps stay real (default 1)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cloud-port", type=int, default=8080)
    parser.add_argument("--interval", type=float, default=3.0, help="seconds between tables")
    parser.add_argument("--fresh", action="store_true", help="delete earlier demo data first")
    parser.add_argument("--free-ports", action="store_true",
                        help="run the plant and the gateway's status page on free ports "
                             "(beside another demo); default the example config's ports")
    args = parser.parse_args(argv)
    return run_demo(Path(args.dir).resolve(), speed=args.speed, seed=args.seed,
                    cloud_port=args.cloud_port, interval=args.interval, fresh=args.fresh,
                    free_ports=args.free_ports)


if __name__ == "__main__":
    sys.exit(main())
