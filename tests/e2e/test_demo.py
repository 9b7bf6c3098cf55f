"""`make demo` runs `python -m edge.demo`: the whole system starts (after seeding a week of
plant history, a minute or two), prints where to look, shows counts arriving in the
cloud, and Ctrl-C stops every process cleanly. The pages of the seeded plant are
checked by tests/browser/test_demo_pages.py."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.fixtures.waiting import wait_for
from tests.services import free_port


def test_demo_starts_everything_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    out_path = tmp_path / "demo.out"
    cloud_port = free_port()
    with out_path.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "edge.demo", "--dir", str(tmp_path / "d"),
                                 "--cloud-port", str(cloud_port), "--interval", "1",
                                 "--speed", "200"], stdout=out, stderr=subprocess.STDOUT)
    try:
        counted = re.compile(r"^cnc-01\s+yes\s+\d+\s+([1-9]\d*)\s", re.M)

        def output() -> str:
            if proc.poll() is not None:
                raise AssertionError(f"the demo exited with {proc.returncode}:\n"
                                     f"{out_path.read_text()[-3000:]}")
            return out_path.read_text()

        text = wait_for(output, "the demo's table showing cnc-01 online and counting",
                        until=counted.search, timeout=300, interval=0.5,
                        details=lambda: out_path.read_text()[-3000:])
        assert "cloud API" in text and "gateway status" in text
        # the demo's admin (random password, printed where to find) can sign in
        password = (tmp_path / "d" / "admin-password").read_text().strip()
        r = httpx.post(f"http://127.0.0.1:{cloud_port}/api/v1/login",
                       json={"name": "admin", "password": password}, timeout=30)
        assert r.status_code == 200 and r.json()["role"] == "admin", r.text
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    text = out_path.read_text()
    assert code == 0, text[-3000:]
    assert "demo stopped" in text
    for log in ("gateway.log", "cloud.log", "simulate.log"):
        assert (tmp_path / "d" / log).exists()
    assert "gateway_stopped" in (tmp_path / "d" / "gateway.log").read_text()
