"""The gateway announces its status endpoint only where it can be reached."""

from __future__ import annotations

import types

import pytest
from structlog.testing import capture_logs
from zeroconf import InterfaceChoice

from buffer.discovery import lan_addresses
from edge.uplink import advertise_status, status_advertisement


def test_loopback_status_is_not_announced_on_the_lan() -> None:
    for listen in ("127.0.0.1:8470", ":8470", "localhost:8470"):
        ad = status_advertisement(listen, InterfaceChoice.All)
        assert ad.addresses == [] and ad.skipped is not None
        assert "loopback" in ad.skipped and "0.0.0.0" in ad.skipped
    ad = status_advertisement("127.0.0.1:8470", ["192.168.10.5"])
    assert ad.addresses == [] and ad.skipped is not None


def test_loopback_status_is_announced_on_loopback_when_asked() -> None:
    ad = status_advertisement("127.0.0.1:8470", ["192.168.10.5", "127.0.0.1"])
    assert ad.skipped is None
    assert ad.addresses == ["127.0.0.1"] and ad.interfaces == ["127.0.0.1"]


def test_one_address_is_announced_on_its_own_interface_only() -> None:
    ad = status_advertisement("192.168.10.5:8470", InterfaceChoice.All)
    assert ad.addresses == ["192.168.10.5"] and ad.interfaces == ["192.168.10.5"]
    ad = status_advertisement("192.168.10.5:8470", ["10.0.0.2"])
    assert ad.addresses == [] and ad.skipped is not None and "zeroconf_interfaces" in ad.skipped


def test_every_address_when_listening_everywhere() -> None:
    ad = status_advertisement("0.0.0.0:8470", ["192.168.10.5", "10.0.0.2"])
    assert ad.addresses == ["192.168.10.5", "10.0.0.2"] and ad.skipped is None
    ad = status_advertisement("0.0.0.0:8470", InterfaceChoice.All)
    assert ad.addresses == lan_addresses()
    assert not any(a.startswith("127.") for a in ad.addresses)


def test_a_host_name_is_not_guessed() -> None:
    ad = status_advertisement("gw-hall1.plant:8470", InterfaceChoice.All)
    assert ad.addresses == [] and ad.skipped is not None and "IP address" in ad.skipped


@pytest.mark.timeout(10)
async def test_skipping_says_why_at_info_and_touches_no_network() -> None:
    gateway = types.SimpleNamespace(id="gw-hall1", status_listen="127.0.0.1:8470",
                                    zeroconf_interfaces=["10.255.255.1"])
    loaded = types.SimpleNamespace(config=types.SimpleNamespace(gateway=gateway))
    with capture_logs() as logs:
        await advertise_status(loaded, 8470)  # type: ignore[arg-type]  # returns at once
    [event] = [e for e in logs if e["event"] == "status_not_advertised"]
    assert event["log_level"] == "info" and "loopback" in event["reason"]
