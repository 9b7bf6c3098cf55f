"""An asyncio TCP proxy that misbehaves on demand, between a gateway and the cloud/broker.

Modes (switch at runtime with ``set_mode``):
- ``pass``: forward both ways.
- ``refuse``: the listener is closed (connection refused) and open connections are cut.
- ``blackhole``: accept and read, never connect upstream, never answer.
- ``reset_after_forward``: forward the request upstream, and when the first byte of the
  answer comes back, drop it and RST the client: the cloud committed, the ack is lost.
- ``latency``: like pass, each chunk delayed by ``latency_ms`` in each direction.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Literal, Self

Mode = Literal["pass", "refuse", "blackhole", "reset_after_forward", "latency"]


class FaultProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1", *,
                 port: int = 0, host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        # A fixed port outside the ephemeral range: "refuse" closes the listener and a later
        # mode re-opens it on the same port, which an outgoing connection must not take meanwhile.
        if not port:
            from tests.services import free_port
            port = free_port()
        self.host, self.port = host, port
        self.mode: Mode = "pass"
        self.latency_ms = 0
        self.resets = 0          # clients reset by reset_after_forward
        self.connections = 0     # accepted connections
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> Self:
        await self._listen()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._client, self.host, self.port,
                                                  reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def set_mode(self, mode: Mode, *, latency_ms: int = 0) -> None:
        """Switch behaviour; new connections and the next chunk of open ones follow it."""
        self.latency_ms = latency_ms
        previous, self.mode = self.mode, mode
        if mode == "refuse" and self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
            self._cut_all()
        elif mode != "refuse" and previous == "refuse":
            await self._listen()

    def _cut_all(self) -> None:
        for w in list(self._writers):
            w.transport.abort()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self._cut_all()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        up_writer: asyncio.StreamWriter | None = None
        try:
            if self.mode == "blackhole":
                while await reader.read(65536):
                    pass
                return
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            self._writers.add(up_writer)
            await asyncio.gather(self._pipe(reader, up_writer, upstream=True),
                                 self._pipe(up_reader, writer, upstream=False, client=writer))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    self._writers.discard(w)
                    w.transport.abort()
            self._tasks.discard(task)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, *,
                    upstream: bool, client: asyncio.StreamWriter | None = None) -> None:
        while chunk := await src.read(65536):
            if self.mode == "blackhole":
                continue  # switched while open: swallow
            if self.mode == "latency" and self.latency_ms:
                await asyncio.sleep(self.latency_ms / 1000)
            if not upstream and self.mode == "reset_after_forward" and client is not None:
                reset(client)
                self.resets += 1
                raise ConnectionResetError("reset_after_forward")
            dst.write(chunk)
            await dst.drain()
        with contextlib.suppress(OSError):
            if dst.can_write_eof():
                dst.write_eof()


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN (SO_LINGER 0)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
