"""`plantsync-cloud serve` advertises _plantsync._tcp.local. and a gateway with
`url = "auto"` finds it (loopback only)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from buffer.discovery import discover_cloud
from tests.services import free_port, wait_port


async def test_gateway_finds_the_cloud_by_zeroconf(tmp_path: Path) -> None:
    port = free_port()
    db = tmp_path / "cloud.db"
    subprocess.run([sys.executable, "-m", "cloud.cli", "migrate", "--db", str(db)],
                   check=True, capture_output=True, timeout=120)
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "cloud.cli", "serve", "--db", str(db),
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PLANTSYNC_ZEROCONF_INTERFACES": "127.0.0.1"})
    try:
        wait_port(port)
        url = await discover_cloud(15.0, interfaces=["127.0.0.1"])
        assert url == f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()
