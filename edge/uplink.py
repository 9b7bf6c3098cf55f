"""Wiring the buffer's uplinks to the gateway config: which transport, which URL
(``auto`` = zeroconf discovery), the Forwarder task (``edge.forwarder``), and advertising
the status endpoint where it can be reached."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from dataclasses import dataclass
from typing import Any

import structlog
from zeroconf import InterfaceChoice

from buffer.backoff import Backoff
from buffer.discovery import (
    EDGE_SERVICE,
    Advertiser,
    Interfaces,
    interfaces_from_env,
    lan_addresses,
)
from buffer.uplink import HttpUplink, MqttUplink, Uplink, UplinkError
from edge.config import LoadedGateway
from edge.discovery import CloudChoice, choose_cloud
from edge.forwarder import Forwarder

log = structlog.get_logger(__name__)


def zeroconf_interfaces(loaded: LoadedGateway) -> list[str] | InterfaceChoice:
    """The configured interfaces, or all of them."""
    chosen = loaded.config.gateway.zeroconf_interfaces
    return interfaces_from_env() if chosen is None else list(chosen)


@dataclass(frozen=True)
class StatusAdvertisement:
    """Where ``_plantsync-edge._tcp.local.`` is announced: ``addresses`` (the status
    endpoint's, as others must dial it) on ``interfaces``; nothing when ``skipped`` says
    why."""

    addresses: list[str]
    interfaces: Interfaces
    skipped: str | None = None


def status_advertisement(status_listen: str, interfaces: Interfaces) -> StatusAdvertisement:
    """Advertise only an address the status endpoint really listens on.

    - ``0.0.0.0`` (or ``::``): every address of the zeroconf interfaces;
    - one address: that one, on its own interface; skipped when ``zeroconf_interfaces``
      names others (the announcement would go where the address is not);
    - loopback (the default ``127.0.0.1``): nobody else can reach it, so it is announced on
      loopback only when ``zeroconf_interfaces`` names a loopback address (the tests do),
      else skipped.
    """
    host = status_listen.rpartition(":")[0] or "127.0.0.1"  # the daemon's own default
    if host == "localhost":
        host = "127.0.0.1"
    named = interfaces if isinstance(interfaces, list) else None
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return StatusAdvertisement([], interfaces, skipped=(
            f"status_listen host {host!r} is a name, not an address; set an IP address "
            "(or 0.0.0.0) to advertise the status endpoint"))
    if ip.is_unspecified:
        addresses = named if named is not None else lan_addresses()
        return StatusAdvertisement(list(addresses), interfaces)
    if ip.is_loopback:
        loop = [a for a in (named or []) if ipaddress.ip_address(a).is_loopback]
        if not loop:
            return StatusAdvertisement([], interfaces, skipped=(
                f"status_listen is {status_listen} (loopback): no other machine can reach "
                "it; set status_listen to this gateway's LAN address or 0.0.0.0 to "
                "advertise it"))
        return StatusAdvertisement([str(ip)], loop)
    if named is not None and str(ip) not in named:
        return StatusAdvertisement([], interfaces, skipped=(
            f"status_listen address {ip} is not one of zeroconf_interfaces {named}; add it "
            "there to advertise the status endpoint"))
    return StatusAdvertisement([str(ip)], [str(ip)] if ip.version == 4 else interfaces)


async def advertise_status(loaded: LoadedGateway, status_port: int) -> None:
    """Announce the status endpoint while running (see ``status_advertisement``). Never
    raises for the network: a LAN without multicast only costs the announcement."""
    interfaces = zeroconf_interfaces(loaded)
    if interfaces == []:
        return
    ad = status_advertisement(loaded.config.gateway.status_listen, interfaces)
    if ad.skipped is not None:
        log.info("status_not_advertised", service=EDGE_SERVICE, reason=ad.skipped)
        return
    try:
        async with Advertiser(EDGE_SERVICE, loaded.config.gateway.id, status_port,
                              properties={"path": "/status"}, addresses=ad.addresses,
                              interfaces=ad.interfaces):
            await asyncio.Event().wait()
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # the LAN may have no multicast: status still works locally
        log.warning("zeroconf_advertise_failed", error=str(exc))


def make_uplink(loaded: LoadedGateway, url: str) -> Uplink:
    cfg = loaded.config
    token_file = loaded.path.parent / cfg.cloud.token_file
    if cfg.cloud.transport == "mqtt":
        if cfg.mqtt is None:  # validation refuses this; keep the error clear anyway
            raise ValueError("cloud.transport is 'mqtt' but there is no [mqtt] table")
        return MqttUplink(cfg.mqtt.broker, gateway=cfg.gateway.id, token_file=token_file,
                          confirm_timeout=cfg.mqtt.confirm_timeout_s)
    return HttpUplink(url, token_file=token_file)


class ForwarderHandle:
    """What the daemon keeps of the sync side: the Forwarder once the URL is known."""

    def __init__(self) -> None:
        self.forwarder: Forwarder | None = None
        self.error: str | None = None
        self.cloud = CloudChoice()   # which cloud and why (edge.discovery)

    @property
    def state(self) -> str:
        if self.forwarder is None:
            return "discovering" if self.error is None else "error"
        return self.forwarder.state

    def notify(self) -> None:
        if self.forwarder is not None:
            self.forwarder.notify()

    async def reload(self) -> None:
        if self.forwarder is not None:
            self.forwarder.resume()

    def snapshot(self) -> dict[str, Any]:
        if self.forwarder is None:
            return {"state": self.state, "error": self.error, "cloud": self.cloud.snapshot()}
        s = self.forwarder.stats()
        return {"state": s.state, "cloud": self.cloud.snapshot(), "acked_seq": s.last_ack_seq,
                "last_ack_ts": int(s.last_ack_at * 1000) if s.last_ack_at else None,
                "records_acked": s.records_acked, "batches_sent": s.batches_sent,
                "errors": s.errors, "last_error": s.last_error, "retry_in_s": s.retry_in_s,
                "batch_records": s.batch_records, "in_flight": s.in_flight}


async def start_uplink(loaded: LoadedGateway, outbox: Any, stack: contextlib.AsyncExitStack,
                       tasks: list[asyncio.Task[None]], status_port: int) -> ForwarderHandle:
    """Start the sync side in the background: discovery must not hold up polling."""
    handle = ForwarderHandle()

    async def sync() -> None:
        try:
            url = await choose_cloud(loaded, handle.cloud,
                                     interfaces=zeroconf_interfaces(loaded))
            uplink = make_uplink(loaded, url)
        except ValueError as exc:
            handle.error = str(exc)
            log.error("uplink_config_error", error=str(exc))
            return
        handle.forwarder = Forwarder(outbox, uplink, gateway=loaded.config.gateway.id,
                                     backoff_cap=loaded.config.cloud.retry_max_s)
        backoff = Backoff(base=1.0, cap=loaded.config.cloud.retry_max_s)
        while True:
            # open() fails for an unreadable token file or an unreachable broker; the
            # Forwarder handles everything after that, so only opening is retried here.
            delay = backoff.next_delay()
            try:
                async with uplink:
                    handle.error = None
                    backoff.reset()
                    await handle.forwarder.run()
            except UplinkError as exc:
                handle.error = str(exc)
                log.error("uplink_open_failed", error=str(exc), retry_s=round(delay, 1))
            await asyncio.sleep(delay)

    tasks.append(asyncio.create_task(sync(), name="uplink"))
    tasks.append(asyncio.create_task(advertise_status(loaded, status_port), name="advertise"))
    return handle
