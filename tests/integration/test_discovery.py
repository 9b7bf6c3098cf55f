"""Zeroconf discovery and advertising on loopback only, up to the daemon with url = "auto"."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from buffer.discovery import CLOUD_SERVICE, EDGE_SERVICE, Advertiser, CloudNotFound, discover_cloud
from tests.faults.harness import CLOUD, Proc, Rig, rig_logs_on_failure
from tests.fixtures.waiting import wait_for
from tests.fixtures.zeroconf import LOOPBACK, find_service
from tests.services import free_port, wait_port


async def test_gateway_finds_the_advertised_cloud() -> None:
    async with Advertiser(CLOUD_SERVICE, "plantsync-cloud-test", 18080,
                          properties={"scheme": "http", "path": "/mes"},
                          interfaces=LOOPBACK):
        url = await discover_cloud(20, interfaces=LOOPBACK)
    assert url == "http://127.0.0.1:18080/mes"


async def test_defaults_without_txt() -> None:
    async with Advertiser(CLOUD_SERVICE, "plain-cloud", 8443, interfaces=LOOPBACK):
        assert await discover_cloud(20, interfaces=LOOPBACK) == "http://127.0.0.1:8443"


async def test_nothing_advertised_is_cloud_not_found() -> None:
    # A service type of this test's own: a cloud another test left running may well be
    # advertising _plantsync._tcp.local. on loopback right now.
    service = f"_ps-none-{os.getpid() % 10000}._tcp.local."
    with pytest.raises(CloudNotFound, match=rf"no {re.escape(service)} service"):
        await discover_cloud(0.5, interfaces=LOOPBACK, service_type=service)


async def test_edge_advertises_its_status_port() -> None:
    # A name and port of this test's own: other gateways advertise on loopback too.
    name, port = f"gw-hall1-{os.getpid()}", free_port()
    async with Advertiser(EDGE_SERVICE, name, port, interfaces=LOOPBACK) as adv:
        assert adv.registered_name == f"{name}.{EDGE_SERVICE}"
        info = await find_service(EDGE_SERVICE, lambda i: i.port == port,
                                  f"{EDGE_SERVICE} on port {port}")
    assert info.name == f"{name}.{EDGE_SERVICE}"
    assert info.port == port
    assert info.parsed_addresses() == ["127.0.0.1"]


def test_daemon_with_url_auto_finds_the_cloud_and_delivers(tmp_path: Path) -> None:
    """The real daemon with ``cloud.url = "auto"`` and ``zeroconf_interfaces =
    ["127.0.0.1"]`` finds `plantsync-cloud serve` advertising on loopback and its records
    arrive, complete (Rig.finish's checks).

    With two real clouds advertised (on free ports): the one running first does not know
    this gateway, so the daemon refuses it (401), keeps searching, and /status says so;
    once the gateway's own cloud starts, the daemon takes it and /status says which and
    why, the refused one still listed with its reason. (One rig for both: a rig costs
    tens of seconds to set up.)"""
    rig = Rig(tmp_path, seed=21, cloud_auto=True)
    other_dir = tmp_path / "other-cloud"
    other_dir.mkdir()
    other_db = f"sqlite+aiosqlite:///{other_dir / 'cloud.db'}"
    subprocess.run([*CLOUD, "migrate", "--db", other_db], check=True, capture_output=True,
                   timeout=120)
    other_port = free_port()
    other_url = f"http://127.0.0.1:{other_port}"
    other = Proc("other-cloud", [*CLOUD, "serve", "--db", other_db, "--port", str(other_port)],
                 other_dir / "serve.log", cwd=other_dir,
                 env={"PLANTSYNC_ZEROCONF_INTERFACES": "127.0.0.1"})

    def cloud_choice() -> dict[str, Any]:
        doc = httpx.get(f"http://127.0.0.1:{rig.status_port}/status", timeout=5).json()
        choice: dict[str, Any] = doc["uplink"]["cloud"]
        return choice

    def refused(choice: dict[str, Any]) -> dict[str, str]:
        return {r["url"]: r["reason"] for r in choice["refused"]}

    with rig_logs_on_failure(rig):
        try:
            assert 'url = "auto"' in rig.config.read_text()
            other.start()
            wait_port(other_port)
            rig.start_sim()
            rig.start_edge()
            waiting = wait_for(cloud_choice, f"the gateway refusing {other_url}",
                               until=lambda c: other_url in refused(c), details=rig.logs)
            assert waiting["mode"] == "auto" and waiting["url"] is None, waiting
            assert "401" in refused(waiting)[other_url], waiting
            rig.start_cloud()
            chosen = wait_for(cloud_choice, f"the gateway choosing {rig.cloud_url}",
                              until=lambda c: c["url"] == rig.cloud_url, details=rig.logs)
            assert "accepted this gateway's token" in chosen["reason"], chosen
            assert "401" in refused(chosen)[other_url], chosen
            rig.wait_counter_seen("cnc-01", "part_count", 1)
            edge = rig.edge_proc()
            assert "cloud_discovered" in edge.text() and rig.cloud_url in edge.text()
            report = rig.finish()
        finally:
            other.stop()
    assert report.per_tag["cnc-01.part_count"]["sum"] > 0
