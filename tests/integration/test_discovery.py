"""Zeroconf discovery and advertising on loopback only, up to the daemon with url = "auto"."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import pytest
from zeroconf import ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncZeroconf

from buffer.discovery import CLOUD_SERVICE, EDGE_SERVICE, Advertiser, CloudNotFound, discover_cloud
from tests.faults.harness import Rig, rig_logs_on_failure

LOOPBACK = ["127.0.0.1"]


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
    found: asyncio.Queue[str] = asyncio.Queue()

    def on_change(zeroconf: Zeroconf, service_type: str, name: str,
                  state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Added:
            found.put_nowait(name)

    async with Advertiser(EDGE_SERVICE, "gw-hall1", 9100, interfaces=LOOPBACK) as adv:
        assert adv.registered_name == f"gw-hall1.{EDGE_SERVICE}"
        aiozc = AsyncZeroconf(interfaces=LOOPBACK)
        browser = AsyncServiceBrowser(aiozc.zeroconf, EDGE_SERVICE, handlers=[on_change])
        try:
            name = await asyncio.wait_for(found.get(), 20)
            info = await aiozc.async_get_service_info(EDGE_SERVICE, name, 3000)
        finally:
            await browser.async_cancel()
            await aiozc.async_close()
    assert name == f"gw-hall1.{EDGE_SERVICE}"
    assert info is not None and info.port == 9100
    assert info.parsed_addresses() == ["127.0.0.1"]


def test_daemon_with_url_auto_finds_the_cloud_and_delivers(tmp_path: Path) -> None:
    """The real daemon with ``cloud.url = "auto"`` and ``zeroconf_interfaces =
    ["127.0.0.1"]`` finds `plantsync-cloud serve` advertising on loopback and its records
    arrive, complete (Rig.finish's checks)."""
    rig = Rig(tmp_path, seed=21, cloud_auto=True)
    with rig_logs_on_failure(rig):
        assert 'url = "auto"' in rig.config.read_text()
        rig.start_cloud()
        rig.start_sim()
        rig.start_edge()
        rig.wait_counter_seen("cnc-01", "part_count", 1)
        edge = rig.edge_proc()
        assert "cloud_discovered" in edge.text() and rig.cloud_url in edge.text()
        report = rig.finish()
    assert report.per_tag["cnc-01.part_count"]["sum"] > 0
