"""Zeroconf (mDNS/DNS-SD): the cloud advertises ``_plantsync._tcp.local.``; a gateway whose
``cloud.url`` is ``"auto"`` finds it; gateways advertise ``_plantsync-edge._tcp.local.``
with their status port.

TXT properties of the cloud's service: ``scheme`` (http or https, default http) and ``path``
(the URL prefix, default empty), so the URL is ``scheme://address:port/path``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import AsyncGenerator, Mapping, Sequence
from types import TracebackType
from typing import Final, Self

import ifaddr  # zeroconf's own dependency for listing interfaces
import structlog
from zeroconf import (
    InterfaceChoice,
    IPVersion,
    ServiceStateChange,
    Zeroconf,
)
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from buffer.uplink import UplinkUnavailable

log = structlog.get_logger(__name__)

CLOUD_SERVICE: Final = "_plantsync._tcp.local."
QUIET_S: Final = 3.0  # a search ends this long after the last cloud answered
EDGE_SERVICE: Final = "_plantsync-edge._tcp.local."

#: Which interfaces to use: InterfaceChoice.All (default) or addresses, e.g. ["127.0.0.1"].
Interfaces = InterfaceChoice | list[str]


INTERFACES_ENV: Final = "PLANTSYNC_ZEROCONF_INTERFACES"


def interfaces_from_env(default: Interfaces = InterfaceChoice.All) -> Interfaces:
    """Interfaces from $PLANTSYNC_ZEROCONF_INTERFACES: comma-separated IPv4 addresses,
    ``off`` (an empty list: zeroconf off), or unset for ``default``. The tests set it to
    127.0.0.1 so that nothing they start multicasts beyond loopback."""
    import os

    raw = os.environ.get(INTERFACES_ENV)
    if raw is None or not raw.strip():
        return default
    if raw.strip().lower() == "off":
        return []
    return [part.strip() for part in raw.split(",") if part.strip()]


def lan_addresses() -> list[str]:
    """This host's IPv4 addresses other than loopback: what ``InterfaceChoice.All`` should
    advertise (a 127.x address in a LAN answer would point the asker at itself)."""
    out: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if ip.is_IPv4 and isinstance(ip.ip, str) and \
                    not ipaddress.ip_address(ip.ip).is_loopback and ip.ip not in out:
                out.append(ip.ip)
    return out


class CloudNotFound(UplinkUnavailable):
    """No cloud answered on the local network within the timeout (retry later, or set
    ``cloud.url`` to the cloud's address)."""

    kind = "not_found"


def service_url(info: AsyncServiceInfo) -> str | None:
    """``scheme://address:port/path`` from a resolved service (IPv4 preferred)."""
    if not info.port:
        return None
    addresses = info.parsed_addresses(IPVersion.V4Only) or info.parsed_addresses()
    if not addresses:
        return None
    props = {k.decode(): (v.decode() if v is not None else "")
             for k, v in info.properties.items()}
    scheme = props.get("scheme") or "http"
    path = props.get("path", "").strip("/")
    host = addresses[0]
    if ipaddress.ip_address(host).version == 6:
        host = f"[{host}]"
    return f"{scheme}://{host}:{info.port}" + (f"/{path}" if path else "")


async def browse_clouds(search_s: float, *, interfaces: Interfaces = InterfaceChoice.All,
                        service_type: str = CLOUD_SERVICE
                        ) -> AsyncGenerator[tuple[str, str]]:
    """(service name, URL) of each cloud resolved within ``search_s`` seconds, as each
    resolves (a cloud announcing itself during the search is included); once one has,
    the search ends after ``QUIET_S`` seconds without another. Read-only on the network
    (queries only); safe to run again on every reconnect."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + search_s
    names: asyncio.Queue[str] = asyncio.Queue()

    def on_change(zeroconf: Zeroconf, service_type: str, name: str,
                  state_change: ServiceStateChange) -> None:
        if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
            names.put_nowait(name)

    aiozc = AsyncZeroconf(interfaces=interfaces)
    browser = AsyncServiceBrowser(aiozc.zeroconf, service_type, handlers=[on_change])
    answered = False
    try:
        while (remaining := deadline - loop.time()) > 0:
            try:
                name = await asyncio.wait_for(
                    names.get(), min(remaining, QUIET_S) if answered else remaining)
            except TimeoutError:
                break
            info = AsyncServiceInfo(service_type, name)
            wait_ms = max(100, int(min(3.0, deadline - loop.time()) * 1000))
            url = service_url(info) if await info.async_request(aiozc.zeroconf, wait_ms) \
                else None
            if url is None:
                log.warning("cloud_service_unresolved", name=name)
                continue
            answered = True
            yield name, url
    finally:
        await browser.async_cancel()
        await aiozc.async_close()


async def discover_cloud(timeout: float = 5.0, *,  # noqa: ASYNC109 (a search time, not a deadline)
                         interfaces: Interfaces = InterfaceChoice.All,
                         service_type: str = CLOUD_SERVICE) -> str:
    """The URL of the first cloud found advertising ``service_type``.

    Raises CloudNotFound when none answers within ``timeout`` seconds. (A gateway with
    ``url = "auto"`` tries every cloud found: edge/discovery.py.)
    """
    async with contextlib.aclosing(browse_clouds(timeout, interfaces=interfaces,
                                                 service_type=service_type)) as found:
        async for name, url in found:
            log.info("cloud_discovered", name=name, url=url)
            return url
    raise CloudNotFound(f"no {service_type} service answered within {timeout:g} s "
                        "(is the cloud running on this network? else set cloud.url)")


class Advertiser:
    """Advertise one service while in ``async with``.

    ``Advertiser(CLOUD_SERVICE, "plantsync-cloud", 8080, properties={"path": ""})`` for the
    cloud; ``Advertiser(EDGE_SERVICE, "gw-hall1", status_port)`` for a gateway.
    ``addresses`` default to the addresses of ``interfaces`` (all non-loopback IPv4
    addresses for InterfaceChoice.All). A name already taken on the network gets a suffix.
    """

    def __init__(self, service_type: str, name: str, port: int, *,
                 properties: Mapping[str, str] | None = None,
                 addresses: Sequence[str] | None = None,
                 interfaces: Interfaces = InterfaceChoice.All,
                 host: str | None = None) -> None:
        if not service_type.endswith("._tcp.local."):
            raise ValueError(f"service type {service_type!r} must end in ._tcp.local.")
        self.service_type = service_type
        self.name = name
        self.port = port
        self.properties = dict(properties or {})
        self.interfaces = interfaces
        if addresses is None:
            addresses = ([a for a in interfaces if isinstance(a, str)]
                         if isinstance(interfaces, list) else lan_addresses())
        if not addresses:
            raise ValueError("no address to advertise: pass addresses=[...]")
        self.addresses = list(addresses)
        self.host = host or f"{socket.gethostname().split('.')[0]}-{name}.local."
        self._aiozc: AsyncZeroconf | None = None
        self._info: AsyncServiceInfo | None = None

    @property
    def registered_name(self) -> str | None:
        """The full service name as registered (may carry a suffix after a conflict)."""
        return self._info.name if self._info is not None else None

    async def __aenter__(self) -> Self:
        self._aiozc = AsyncZeroconf(interfaces=self.interfaces)
        self._info = AsyncServiceInfo(
            self.service_type, f"{self.name}.{self.service_type}",
            parsed_addresses=self.addresses, port=self.port,
            properties=self.properties, server=self.host)
        try:
            await self._aiozc.async_register_service(self._info, allow_name_change=True)
        except BaseException:
            await self._aiozc.async_close()
            raise
        log.info("service_advertised", type=self.service_type, name=self._info.name,
                 port=self.port, addresses=self.addresses)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        aiozc, info = self._aiozc, self._info
        self._aiozc = None
        if aiozc is None or info is None:
            return
        try:
            await aiozc.async_unregister_service(info)
        finally:
            await aiozc.async_close()
