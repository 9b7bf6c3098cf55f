"""Siemens S7 driver on python-snap7's AsyncClient (3.3, pure Python).

``read(span)`` reads one span of bytes with ``read_area`` (DB, M -> MK, I -> PE, Q -> PA).
``read_many(spans)`` sends ONE multi-variable read request: snap7 3.3's
``AsyncClient.read_multi_vars`` reads the items one by one and raises on the first bad
one, so the request is built with the client's own protocol encoder and the per-item
return codes are parsed here; a bad item comes back in place as IllegalAddress (item code
0x05 "address out of range", 0x0A "object does not exist") or DeviceException.

Errors are translated where they enter: refused / unreachable -> DriverConnectError,
no answer within ``endpoint.timeout_s`` -> DriverTimeout (the connection is then closed:
the next answer could belong to the old request), a malformed answer -> DriverGarbage
(at connect too: a peer that is not an S7 CPU, e.g. an HTTP server on the port, answers
something that is no TPKT/COTP frame), any other error code of the PLC -> DeviceException.
snap7 3.3 raises S7ConnectionError for a broken frame as for a lost link; ``_malformed``
tells them apart by the exception chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import struct
from collections.abc import Awaitable
from typing import TypeVar

from snap7.async_client import AsyncClient
from snap7.error import S7ConnectionError, S7Error, S7ProtocolError, S7TimeoutError
from snap7.s7protocol import get_return_code_description
from snap7.type import Area

from protocols.driver import Driver, Endpoint
from protocols.errors import (
    DeviceException,
    DriverConnectError,
    DriverError,
    DriverGarbage,
    DriverTimeout,
    IllegalAddress,
)
from protocols.model import Span

__all__ = ["S7Driver"]

_AREAS = {"DB": Area.DB, "M": Area.MK, "I": Area.PE, "Q": Area.PA}
_ILLEGAL_CODES = {0x05, 0x0A}
_T = TypeVar("_T")


def _span_text(span: Span) -> str:
    where = f"DB{span.db}" if span.area == "DB" else span.area
    return f"{where} byte {span.start} count {span.count}"


def _item_error(endpoint: Endpoint, span: Span, code: int) -> DeviceException:
    name = get_return_code_description(code)
    message = f"{endpoint.name}: {_span_text(span)}: PLC answered item error 0x{code:02X} {name}"
    if code in _ILLEGAL_CODES:
        return IllegalAddress(message, code=code, name=name, device=endpoint.name)
    return DeviceException(message, code=code, name=name, device=endpoint.name)


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes / contexts, outermost first."""
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and all(cur is not seen for seen in out):
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def _root_cause(exc: BaseException) -> BaseException:
    return _chain(exc)[-1]


# snap7 3.3's messages for a frame that is not ISO-on-TCP (connection.py, async_client.py).
_BAD_FRAME = re.compile(r"Invalid TPKT|Invalid COTP|Expected COTP|Invalid Class 0 COTP")


def _malformed(exc: BaseException) -> bool:
    """Whether a snap7 error means the peer answered, but not with an S7 frame."""
    for cur in _chain(exc):
        if isinstance(cur, struct.error):
            return True
        if isinstance(cur, ValueError):
            # A TPKT length below its own header: snap7 then asks asyncio's readexactly
            # for a negative size. Only the peer's bytes make a ValueError in this path.
            return True
        if isinstance(cur, S7ProtocolError) and not cur.error_code:   # stale, lost, unparsable
            return True
        if isinstance(cur, S7ConnectionError) and _BAD_FRAME.search(str(cur)):
            return True
    return False


class S7Driver(Driver):
    """One ISO-on-TCP connection to an S7 CPU (``host``, ``port``, ``rack``, ``slot``)."""

    def __init__(self, endpoint: Endpoint) -> None:
        super().__init__(endpoint)
        self._client: AsyncClient | None = None

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.get_connected()

    @property
    def pdu_size(self) -> int | None:
        """The PDU size the CPU agreed to at connect, else None."""
        return int(self._client.pdu_length) if self.connected and self._client else None

    async def connect(self) -> None:
        """Connect and negotiate the PDU. Raises DriverConnectError (refused, unreachable,
        rejected rack/slot), DriverTimeout, or DriverGarbage (the peer answered something
        that is not S7: a wrong port or another service). Idempotent."""
        if self.connected:
            return
        await self.close()
        ep = self.endpoint
        where = f"{ep.name}: {ep.host}:{ep.port} rack {ep.rack} slot {ep.slot}"
        client = AsyncClient()
        try:
            await asyncio.wait_for(client.connect(ep.host, ep.rack, ep.slot, tcp_port=ep.port),
                                   timeout=ep.timeout_s)
        except (TimeoutError, S7TimeoutError) as exc:
            await self._drop(client)
            raise DriverTimeout(f"{where}: no answer to connect within {ep.timeout_s:g} s",
                                device=ep.name) from exc
        except S7Error as exc:
            await self._drop(client)
            if _malformed(exc):
                raise DriverGarbage(f"{where}: the peer's answer is not S7 ({exc}; is this "
                                    f"port an S7 CPU?)", device=ep.name) from exc
            root = _root_cause(exc)
            if isinstance(root, ConnectionRefusedError):
                raise DriverConnectError(f"{where}: connection refused (is the PLC on, is the "
                                         f"port right?)", device=ep.name) from exc
            raise DriverConnectError(f"{where}: cannot connect ({exc})", device=ep.name) from exc
        except OSError as exc:
            await self._drop(client)
            raise DriverConnectError(f"{where}: cannot connect ({exc})", device=ep.name) from exc
        if client.connection is not None:
            client.connection.timeout = ep.timeout_s  # receive timeout of every later read
        self._client = client

    async def read(self, span: Span) -> bytes:
        """Read ``span.count`` bytes of one area. Raises DriverTimeout, DriverConnectError
        (the driver is then closed), DriverGarbage, IllegalAddress or DeviceException."""
        area = self._area(span)
        client = self._require()
        data = await self._guard(client.read_area(area, span.db, span.start, span.count), span)
        if len(data) != span.count:
            await self.close()
            raise DriverGarbage(f"{self.endpoint.name}: {_span_text(span)}: answer has "
                                f"{len(data)} bytes", device=self.endpoint.name)
        return bytes(data)

    async def read_many(self, spans: tuple[Span, ...]) -> list[bytes | Exception]:
        """Read all spans in one multi-variable request (the planner keeps request and
        answer within the PDU and at most 20 items). Item errors come back in place."""
        if not spans:
            return []
        if len(spans) == 1:
            try:
                return [await self.read(spans[0])]
            except DeviceException as exc:
                return [exc]
        client = self._require()
        items = [(int(self._area(s)), s.db, s.start, s.count) for s in spans]
        request = client.protocol.build_multi_read_request(items)
        # _send_receive is the client's locked send+receive (the same path read_area uses).
        response = await self._guard(client._send_receive(request), spans[0])
        try:
            return self._parse_multi(response, spans)
        except DriverGarbage:
            await self.close()
            raise

    def _parse_multi(self, response: dict[str, object], spans: tuple[Span, ...]
                     ) -> list[bytes | Exception]:
        ep = self.endpoint
        params = response.get("parameters") or {}
        raw = response.get("raw_data") or b""
        assert isinstance(params, dict) and isinstance(raw, bytes | bytearray)
        if params.get("item_count") != len(spans):
            raise DriverGarbage(f"{ep.name}: multi-read answer has {params.get('item_count')} "
                                f"items, asked {len(spans)}", device=ep.name)
        out: list[bytes | Exception] = []
        pos = 0
        for i, span in enumerate(spans):
            if pos + 4 > len(raw):
                raise DriverGarbage(f"{ep.name}: multi-read answer truncated at item {i}",
                                    device=ep.name)
            code, tsize, length = struct.unpack(">BBH", raw[pos:pos + 4])
            pos += 4
            if code != 0xFF:
                out.append(_item_error(ep, span, code))
                continue
            nbytes = length // 8 if tsize in (0x03, 0x04, 0x05) else length
            data = bytes(raw[pos:pos + nbytes])
            if nbytes != span.count or len(data) != nbytes:
                raise DriverGarbage(f"{ep.name}: {_span_text(span)}: answer item has "
                                    f"{len(data)} bytes", device=ep.name)
            out.append(data)
            pos += nbytes
            if i < len(spans) - 1 and nbytes % 2:
                pos += 1  # fill byte between items
        return out

    async def close(self) -> None:
        """Disconnect. Idempotent; never raises."""
        client, self._client = self._client, None
        if client is not None:
            await self._drop(client)

    # ---------------------------------------------------------------- internals

    @staticmethod
    async def _drop(client: AsyncClient) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.disconnect(), timeout=1.0)

    def _area(self, span: Span) -> Area:
        try:
            return _AREAS[span.area]
        except KeyError:
            raise DriverGarbage(f"{self.endpoint.name}: {span.area!r} is not an S7 area "
                                f"(DB, M, I, Q)", device=self.endpoint.name) from None

    def _require(self) -> AsyncClient:
        if self._client is None or not self._client.get_connected():
            raise DriverConnectError(f"{self.endpoint.name}: not connected",
                                     device=self.endpoint.name)
        return self._client

    async def _guard(self, call: Awaitable[_T], span: Span) -> _T:
        """Await one snap7 call and translate what it raises."""
        ep = self.endpoint
        where = f"{ep.name}: {_span_text(span)}"
        try:
            return await asyncio.wait_for(call, timeout=ep.timeout_s)
        except (TimeoutError, S7TimeoutError) as exc:
            await self.close()
            raise DriverTimeout(f"{where}: no answer within {ep.timeout_s:g} s",
                                device=ep.name) from exc
        except S7ConnectionError as exc:
            await self.close()
            if _malformed(exc):
                raise DriverGarbage(f"{where}: malformed answer ({exc})",
                                    device=ep.name) from exc
            raise DriverConnectError(f"{where}: link lost ({exc})", device=ep.name) from exc
        except S7ProtocolError as exc:
            error = self._protocol_error(exc, span)
            if isinstance(error, DriverGarbage):
                await self.close()
            raise error from exc
        except S7Error as exc:
            raise DeviceException(f"{where}: {exc}", code=int(exc.error_code or 0),
                                  name=str(exc), device=ep.name) from exc
        except (OSError, ConnectionError) as exc:
            await self.close()
            raise DriverConnectError(f"{where}: link lost ({exc})", device=ep.name) from exc

    def _protocol_error(self, exc: S7ProtocolError, span: Span) -> DriverError:
        ep = self.endpoint
        text = str(exc)
        item = re.search(r"failed: .*\(0x([0-9a-fA-F]{2})\)", text)
        if item:
            return _item_error(ep, span, int(item.group(1), 16))
        if exc.error_code:
            return DeviceException(f"{ep.name}: {_span_text(span)}: {text}",
                                   code=int(exc.error_code), name=text, device=ep.name)
        return DriverGarbage(f"{ep.name}: {_span_text(span)}: malformed answer ({text})",
                             device=ep.name)
