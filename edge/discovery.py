"""Choosing the cloud when ``cloud.url = "auto"``: every cloud advertised on the LAN is
tried, and the one that accepts this gateway's token is taken.

A LAN may carry more than one cloud (a test cloud beside the plant's): taking the first
answer could pick one that refuses the token, and a 401 stops the uplink. So, for the
HTTP transport, ``choose_cloud`` browses ``_plantsync._tcp.local.`` (``buffer.discovery``)
and asks each cloud it resolves for this gateway's own status, ``GET
{url}/api/v1/gateways/{id}`` with the bearer token: cheap, read-only, and answered 200
only by a cloud that knows this gateway by this token. The first that answers 200 is
chosen; the others are refused with the reason (401/403: not our token; another answer;
unreachable). When none accepts within the search window, it searches again after a
backoff capped at ``cloud.retry_max_s``, without end: a gateway that boots before its
cloud, or whose token is not yet registered, must not give up.

``CloudChoice`` is what ``/status`` shows under ``uplink.cloud``: the URL chosen and why,
and every cloud refused and why. A configured URL is taken as it is ("configured"). With
``transport = "mqtt"`` the records go to the broker and the URL is not used to send: the
first cloud found is taken, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import structlog
from zeroconf import InterfaceChoice

from buffer.backoff import Backoff
from buffer.discovery import CLOUD_SERVICE, Interfaces, browse_clouds
from edge.config import LoadedGateway

log = structlog.get_logger(__name__)

SEARCH_S = 10.0          # one search: how long to browse for a cloud that accepts
PROBE_TIMEOUT_S = 5.0    # one cloud's answer to the token check


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Candidate:
    """One advertised cloud and what it answered."""

    name: str
    url: str
    accepted: bool
    reason: str
    checked_ts: int


class CloudChoice:
    """Which cloud the uplink uses and why; the refused ones and why (``snapshot``)."""

    def __init__(self) -> None:
        self.mode = "configured"
        self.url: str | None = None
        self.name: str | None = None
        self.reason: str | None = None
        self.searches = 0
        self.candidates: dict[str, Candidate] = {}   # by URL: clouds may share a name

    def configured(self, url: str) -> None:
        self.mode, self.url, self.reason = "configured", url, "cloud.url in the config"

    def checked(self, name: str, url: str, accepted: bool, reason: str) -> None:
        self.candidates[url] = Candidate(name, url, accepted, reason, _now_ms())
        if accepted:
            self.url, self.name, self.reason = url, name, reason

    def snapshot(self) -> dict[str, Any]:
        refused = [{"name": c.name, "url": c.url, "reason": c.reason,
                    "checked_ts": c.checked_ts}
                   for c in self.candidates.values() if not c.accepted]
        doc: dict[str, Any] = {"mode": self.mode, "url": self.url, "reason": self.reason}
        if self.mode == "auto":
            doc.update(name=self.name, searches=self.searches, refused=refused)
        return doc


async def probe_cloud(client: httpx.AsyncClient, url: str, gateway_id: str,
                      token: str) -> tuple[bool, str]:
    """(accepted, why): whether the cloud at ``url`` accepts ``token`` for this gateway."""
    path = f"/api/v1/gateways/{gateway_id}"
    try:
        resp = await client.get(url.rstrip("/") + path,
                                headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        return False, f"unreachable: {type(exc).__name__}: {exc}".rstrip(": ")
    if resp.status_code == 200:
        return True, f"accepted this gateway's token (GET {path}: 200)"
    try:
        detail = str(resp.json().get("detail") or "")
    except (ValueError, AttributeError):
        detail = resp.text.strip()[:200]
    what = f"HTTP {resp.status_code}" + (f": {detail}" if detail else "")
    if resp.status_code in (401, 403):
        return False, f"refused this gateway's token ({what})"
    return False, f"did not confirm the token (GET {path}: {what})"


def _read_token(path: Path) -> tuple[str | None, str]:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"not checked: cannot read the token file {path} ({exc})"
    return (token, "") if token else (None, f"not checked: the token file {path} is empty")


async def _search(loaded: LoadedGateway, choice: CloudChoice, client: httpx.AsyncClient, *,
                  interfaces: Interfaces, search_s: float, service_type: str) -> str | None:
    """One search: the URL of the first cloud that accepts the token, or None."""
    cfg = loaded.config
    check = cfg.cloud.transport == "http"
    seen: set[str] = set()
    async with contextlib.aclosing(browse_clouds(search_s, interfaces=interfaces,
                                                 service_type=service_type)) as found:
        async for name, url in found:
            if url in seen:
                continue   # an update of a service already checked in this search
            seen.add(url)
            if not check:
                choice.checked(name, url, True, "first cloud found (transport mqtt: the "
                               "records go to the [mqtt] broker)")
                return url
            # read per cloud: a token written during the search is used at once
            token, why = _read_token(loaded.path.parent / cfg.cloud.token_file)
            accepted, reason = (False, why) if token is None else \
                await probe_cloud(client, url, cfg.gateway.id, token)
            choice.checked(name, url, accepted, reason)
            log.info("cloud_checked", name=name, url=url, accepted=accepted, reason=reason)
            if accepted:
                return url
    return None


async def choose_cloud(loaded: LoadedGateway, choice: CloudChoice, *,
                       interfaces: Interfaces = InterfaceChoice.All,
                       search_s: float = SEARCH_S,
                       service_type: str = CLOUD_SERVICE) -> str:
    """The URL the uplink sends to: ``cloud.url``, or for ``auto`` the advertised cloud
    that accepts the token (see the module docstring); searches until one does. Raises
    ValueError when ``auto`` cannot work (zeroconf turned off)."""
    url = loaded.config.cloud.url
    if url != "auto":
        choice.configured(url)
        return url
    if interfaces == []:
        raise ValueError('cloud.url is "auto" but gateway.zeroconf_interfaces is [] (zeroconf off)')
    choice.mode = "auto"
    backoff = Backoff(base=1.0, cap=loaded.config.cloud.retry_max_s)
    async with httpx.AsyncClient(timeout=PROBE_TIMEOUT_S) as client:
        while True:
            choice.searches += 1
            failed: str | None = None
            try:
                found = await _search(loaded, choice, client, interfaces=interfaces,
                                      search_s=search_s, service_type=service_type)
            except Exception as exc:  # the network's faults are retried like no cloud
                found, failed = None, f"discovery failed: {exc}"
            if found is not None:
                log.info("cloud_discovered", url=found, name=choice.name, reason=choice.reason)
                return found
            delay = backoff.next_delay()
            refused = choice.snapshot()["refused"]
            choice.reason = failed or ("no advertised cloud accepts this gateway's token yet"
                                       if refused else f"no {service_type} service found yet")
            log.warning("cloud_not_chosen", reason=choice.reason, retry_s=round(delay, 1),
                        refused={c["url"]: c["reason"] for c in refused})
            await asyncio.sleep(delay)
