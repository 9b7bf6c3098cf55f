"""The gateway's local status endpoint: JSON status and Prometheus metrics.

A deliberately tiny HTTP/1.1 server on asyncio (the edge install carries no web framework):
``GET /status`` (JSON), ``GET /metrics`` (Prometheus text format 0.0.4), ``GET /healthz``.
It listens on 127.0.0.1 by default; it only reads a snapshot, so it can never slow a poll.

``/healthz`` answers from the same snapshot (``health``): 200 ``{"status": "ok"}``, or
503 ``{"status": "unhealthy", "problems": [{"check": ..., "reason": ...}]}`` when

- ``buffer``: the last write to the buffer failed (disk full, unwritable file), or
  pollers have waited ``STALL_S`` on a write that does not finish;
- ``uplink``: the cloud refused the token or the uplink cannot be set up, or the uplink
  is not delivering and the oldest unsent record is older than ``UPLINK_LATE_S``;
- ``pollers``: the daemon has device poll loops and none is running.

A device that does not answer is not the daemon's ill health (its breaker handles it;
``/status`` shows it). A port already in use raises ``StatusListenError`` on entering.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import structlog

log = structlog.get_logger(__name__)

Snapshot = Mapping[str, Any]
_MAX_REQUEST = 8192

STALL_S = 30.0          # pollers waiting this long on a write that does not finish
UPLINK_LATE_S = 900.0   # the oldest unsent record this old while the uplink fails
_UPLINK_BROKEN = ("auth_failed", "error")   # retrying cannot mend these
_UPLINK_WORKING = ("idle", "draining", "off")


class StatusListenError(Exception):
    """The status endpoint cannot listen on ``host:port`` (in use, not an address of this
    machine); ``reason`` is the system's word for why."""

    def __init__(self, host: str, port: int, reason: str, *, in_use: bool = False) -> None:
        self.host, self.port, self.reason, self.in_use = host, port, reason, in_use
        super().__init__(f"cannot listen on {host}:{port}: {reason}")


def health(snap: Snapshot, *, stall_s: float | None = None,
           uplink_late_s: float | None = None) -> list[dict[str, str]]:
    """What is wrong with the daemon, from its status snapshot: one ``{"check", "reason"}``
    per problem (see the module docstring); empty when healthy. The limits default to
    the module's ``STALL_S`` and ``UPLINK_LATE_S`` as they are when called."""
    stall_limit = STALL_S if stall_s is None else stall_s
    late_limit = UPLINK_LATE_S if uplink_late_s is None else uplink_late_s
    out: list[dict[str, str]] = []
    buf: Mapping[str, Any] = snap.get("buffer") or {}
    stalled = _number(buf.get("stalled_s"))
    if buf.get("write_error"):
        out.append({"check": "buffer", "reason": f"cannot store records: {buf['write_error']}"})
    elif stalled >= stall_limit:
        out.append({"check": "buffer", "reason": f"pollers have waited {stalled:g} s for a "
                    f"buffer write that does not finish (limit {stall_limit:g} s)"})
    up: Mapping[str, Any] = snap.get("uplink") or {}
    state = up.get("state")
    why = up.get("last_error") or up.get("error")
    oldest = _number(buf.get("oldest_age_s"))
    if state in _UPLINK_BROKEN:
        out.append({"check": "uplink", "reason": f"uplink {state}" + (f": {why}" if why else "")})
    elif state not in _UPLINK_WORKING and _number(buf.get("backlog")) > 0 \
            and oldest >= late_limit:
        out.append({"check": "uplink", "reason": (
            f"uplink {state} and the oldest unsent record is {oldest:g} s old (limit "
            f"{late_limit:g} s)" + (f": {why}" if why else ""))})
    pollers: Mapping[str, Any] = snap.get("pollers") or {}
    if _number(pollers.get("buses")) > 0 and _number(pollers.get("running")) == 0:
        out.append({"check": "pollers", "reason": "no device poll loop is running"})
    return out


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value)


class StatusServer:
    """Serves ``snapshot()`` as JSON and metrics. Use as an async context manager."""

    def __init__(self, snapshot: Callable[[], Snapshot], host: str = "127.0.0.1",
                 port: int = 8470) -> None:
        self._snapshot = snapshot
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> StatusServer:
        try:
            self._server = await asyncio.start_server(self._handle, self.host, self.port)
        except OSError as exc:  # in use, not this machine's address, a name unresolved
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise StatusListenError(self.host, self.port, reason,
                                    in_use=exc.errno == errno.EADDRINUSE) from exc
        sock = self._server.sockets[0]
        self.port = int(sock.getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            if len(head) > _MAX_REQUEST:
                raise ValueError("request too large")
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = line.split()
            if len(parts) != 3 or not parts[2].startswith("HTTP/"):
                await _respond(writer, 400, "text/plain", b"bad request\n")
                return
            method, target = parts[0], parts[1].split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                await _respond(writer, 405, "text/plain", b"method not allowed\n")
                return
            if target == "/status":
                body = json.dumps(self._snapshot(), default=str, indent=1).encode()
                await _respond(writer, 200, "application/json", body, head_only=method == "HEAD")
            elif target == "/metrics":
                body = render_metrics(self._snapshot()).encode()
                await _respond(writer, 200, "text/plain; version=0.0.4", body,
                               head_only=method == "HEAD")
            elif target == "/healthz":
                problems = health(self._snapshot())
                doc = {"status": "unhealthy", "problems": problems} if problems \
                    else {"status": "ok"}
                await _respond(writer, 503 if problems else 200, "application/json",
                               json.dumps(doc).encode() + b"\n", head_only=method == "HEAD")
            else:
                await _respond(writer, 404, "text/plain", b"not found: try /status or /metrics\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ConnectionError, ValueError):
            pass
        except Exception:  # a status request must never take the daemon down
            log.exception("status_request_failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def _respond(writer: asyncio.StreamWriter, code: int, ctype: str, body: bytes,
                   head_only: bool = False) -> None:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
              503: "Service Unavailable"}[code]
    writer.write(
        f"HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n".encode("latin-1") + (b"" if head_only else body))
    await writer.drain()


def _label(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(value: Any) -> str:
    if value is None:
        return "NaN"
    if isinstance(value, bool):
        return "1" if value else "0"
    return repr(float(value)) if isinstance(value, float) else str(int(value))


def _scaled(value: Any, divisor: float) -> float | None:
    return None if value is None else float(value) / divisor


def render_metrics(snap: Snapshot) -> str:
    """Prometheus text exposition of a status snapshot."""
    out: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[dict[str, Any], Any]]) -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lab = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            out.append(f"{name}{{{lab}}} {_num(value)}" if lab else f"{name} {_num(value)}")

    devices: Mapping[str, Mapping[str, Any]] = snap.get("devices", {})
    metric("plantsync_device_online", "gauge", "1 when the device answered its last poll",
           [({"device": d}, v.get("online")) for d, v in devices.items()])
    # A device never polled has no last poll: NaN, not 0 (which reads as 1970).
    metric("plantsync_device_last_poll_timestamp_seconds", "gauge", "Wall time of the last good poll",
           [({"device": d}, _scaled(v.get("last_poll_ts"), 1000)) for d, v in devices.items()])
    metric("plantsync_device_poll_latency_seconds", "gauge", "Duration of the last poll",
           [({"device": d}, _scaled(v.get("poll_latency_ms"), 1000)) for d, v in devices.items()])
    metric("plantsync_device_waiting_for_buffer", "gauge",
           "1 while the device's poller waits for the buffer to store its cycle",
           [({"device": d}, v.get("waiting_for_buffer_since_ms") is not None)
            for d, v in devices.items()])
    metric("plantsync_device_polls_total", "counter", "Polls attempted",
           [({"device": d}, v.get("polls", 0)) for d, v in devices.items()])
    metric("plantsync_device_errors_total", "counter", "Poll errors by kind",
           [({"device": d, "kind": k}, n) for d, v in devices.items()
            for k, n in (v.get("errors") or {}).items()])
    buf: Mapping[str, Any] = snap.get("buffer", {})
    metric("plantsync_buffer_backlog_records", "gauge", "Records stored and not yet acked",
           [({}, buf.get("backlog", 0))])
    metric("plantsync_buffer_oldest_record_age_seconds", "gauge", "Age of the oldest unacked record",
           [({}, buf.get("oldest_age_s", 0))])
    metric("plantsync_buffer_disk_bytes", "gauge", "Buffer file and WAL size",
           [({}, buf.get("disk_bytes", 0))])
    metric("plantsync_buffer_dropped_samples_total", "counter", "Sample records dropped by the quota",
           [({}, buf.get("dropped_samples", 0))])
    metric("plantsync_buffer_over_quota", "gauge", "1 when only non-droppable records fill the quota",
           [({}, bool(buf.get("over_quota")))])
    up: Mapping[str, Any] = snap.get("uplink", {})
    metric("plantsync_uplink_acked_seq", "gauge", "Highest seq the cloud acknowledged",
           [({}, up.get("acked_seq") or 0)])
    metric("plantsync_uplink_last_ack_timestamp_seconds", "gauge", "Wall time of the last ack",
           [({}, _scaled(up.get("last_ack_ts"), 1000))])
    metric("plantsync_uplink_errors_total", "counter", "Uplink errors by kind",
           [({"kind": k}, n) for k, n in (up.get("errors") or {}).items()])
    clock: Mapping[str, Any] = snap.get("clock", {})
    metric("plantsync_clock_jumps_total", "counter", "Wall-clock jumps seen against the monotonic clock",
           [({}, clock.get("jumps", 0))])
    return "\n".join(out) + "\n"
