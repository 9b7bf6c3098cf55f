"""Zeroconf discovery and advertising on loopback only, up to the daemon with url = "auto"."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from buffer.discovery import CLOUD_SERVICE, EDGE_SERVICE, Advertiser, CloudNotFound, discover_cloud
from tests.faults.harness import Rig, rig_logs_on_failure
from tests.fixtures.zeroconf import LOOPBACK, find_service
from tests.services import free_port


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
