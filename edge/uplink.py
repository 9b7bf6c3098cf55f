"""Wiring the buffer's uplinks to the gateway config: which transport, which URL
(``auto`` = zeroconf discovery), the Forwarder task, and advertising the status port."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog
from zeroconf import InterfaceChoice

from buffer.discovery import (
    CLOUD_SERVICE,
    EDGE_SERVICE,
    Advertiser,
    CloudNotFound,
    discover_cloud,
    interfaces_from_env,
)
from buffer.uplink import HttpUplink, MqttUplink, Uplink, UplinkError
from edge.config import LoadedGateway
from edge.forwarder import Forwarder

log = structlog.get_logger(__name__)

DISCOVERY_TIMEOUT_S = 10.0


def zeroconf_interfaces(loaded: LoadedGateway) -> list[str] | InterfaceChoice:
    """The configured interfaces, or all of them."""
    chosen = loaded.config.gateway.zeroconf_interfaces
    return interfaces_from_env() if chosen is None else list(chosen)


async def resolve_cloud_url(url: str, *, search_s: float = DISCOVERY_TIMEOUT_S,
                            interfaces: list[str] | InterfaceChoice = InterfaceChoice.All) -> str:
    """``auto`` -> the URL the cloud advertises on the LAN (``_plantsync._tcp.local.``).
    Retries until found: a gateway that boots before the cloud must not give up."""
    if url != "auto":
        return url
    if interfaces == []:
        raise ValueError('cloud.url is "auto" but gateway.zeroconf_interfaces is [] (zeroconf off)')
    delay = 1.0
    while True:
        try:
            found = await discover_cloud(search_s, interfaces=interfaces)
        except CloudNotFound:
            log.warning("cloud_not_found", service=CLOUD_SERVICE, retry_s=delay)
        except Exception as exc:  # discovery errors are retried like a missing cloud
            log.warning("cloud_discovery_failed", error=str(exc), retry_s=delay)
        else:
            log.info("cloud_discovered", url=found)
            return found
        await asyncio.sleep(delay)
        delay = min(delay * 2, 60.0)


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
            return {"state": self.state, "error": self.error}
        s = self.forwarder.stats()
        return {"state": s.state, "acked_seq": s.last_ack_seq,
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
            url = await resolve_cloud_url(loaded.config.cloud.url,
                                          interfaces=zeroconf_interfaces(loaded))
            uplink = make_uplink(loaded, url)
        except ValueError as exc:
            handle.error = str(exc)
            log.error("uplink_config_error", error=str(exc))
            return
        handle.forwarder = Forwarder(outbox, uplink, gateway=loaded.config.gateway.id,
                                     backoff_cap=loaded.config.cloud.retry_max_s)
        delay = 1.0
        while True:
            # open() fails for an unreadable token file or an unreachable broker; the
            # Forwarder handles everything after that, so only opening is retried here.
            try:
                async with uplink:
                    handle.error = None
                    await handle.forwarder.run()
            except UplinkError as exc:
                handle.error = str(exc)
                log.error("uplink_open_failed", error=str(exc), retry_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, loaded.config.cloud.retry_max_s)

    async def advertise() -> None:
        interfaces = zeroconf_interfaces(loaded)
        if interfaces == []:
            return
        try:
            async with Advertiser(EDGE_SERVICE, loaded.config.gateway.id, status_port,
                                  properties={"path": "/status"}, interfaces=interfaces):
                await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the LAN may have no multicast: status still works locally
            log.warning("zeroconf_advertise_failed", error=str(exc))

    tasks.append(asyncio.create_task(sync(), name="uplink"))
    tasks.append(asyncio.create_task(advertise(), name="advertise"))
    return handle
