"""Peers that misbehave on demand, for the contract suites: real bytes on real sockets and
pseudo-terminals on this machine, nothing mocked.

- ``Relay``: a TCP listener on a fixed 127.0.0.1 port in front of a real server (or of
  nothing) that passes, refuses, answers junk, stays silent, or drops the connection when
  the next request arrives.
- ``HttpAnswer``: an HTTP/1.1 server that reads each whole request and answers it with
  fixed bytes (a 200 whose body is junk).
- ``PtyPair`` and ``PtyPeer``: a socat pseudo-terminal pair (a serial line) that can be
  cut and restored, and a peer on one end that answers junk, stays silent, or cuts the
  line when a request arrives.

What a driver or an uplink makes of it is the tests' business, not this module's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import struct
import tty
from pathlib import Path
from typing import Literal, Self

from tests.services import free_port, require_binary

Mode = Literal["pass", "refuse", "junk", "silent", "drop"]

#: What a wrong port typically answers: an HTTP error, and bytes that mean nothing.
JUNK = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n\x00\xff\x13\x37"

#: Deadline for a peer to come up (a start-up wait, not a timing assertion).
START_S = 20.0


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN (SO_LINGER 0): the peer vanished mid-exchange."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class Relay:
    """A listener on ``port`` (fixed for the relay's life, so a client's endpoint stays
    valid across ``refuse`` and back) relaying to the real server on ``upstream``.

    Modes, switched with ``set_mode``; each chunk the client sends is judged by the mode
    when it arrives:

    - ``pass``    forward both ways (a connection accepted in another mode has no upstream
                  and stays silent: clients reconnect after a fault anyway)
    - ``refuse``  nothing listens: the listener is closed and open connections are reset
    - ``junk``    answer every chunk with ``junk``, forward nothing
    - ``silent``  accept and read, never answer
    - ``drop``    when the next request arrives, forward only its first ``drop_after``
                  bytes, then reset both sides: the peer vanished mid-exchange
    """

    def __init__(self, upstream: int | None = None, *, mode: Mode = "pass",
                 junk: bytes = JUNK, drop_after: int = 0) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.mode: Mode = mode
        self.junk = junk
        self.drop_after = drop_after
        self.connections = 0    # client connections accepted
        self.drops = 0          # connections reset in ``drop`` mode
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Self:
        if self.mode != "refuse":
            await self._listen()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stop_listening()
        # The resets end every connection's reads; let the handlers finish on their own.
        await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), START_S)

    async def set_mode(self, mode: Mode) -> None:
        self.mode = mode
        if mode == "refuse":
            await self._stop_listening()
        elif self._server is None:
            await self._listen()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port,
                                                  reuse_address=True)

    async def _stop_listening(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
        for w in list(self._writers):
            reset(w)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        up_writer: asyncio.StreamWriter | None = None
        answers: asyncio.Task[None] | None = None
        try:
            if self.upstream is not None and self.mode == "pass":
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
                self._writers.add(up_writer)
                answers = asyncio.create_task(self._answers(up_reader, writer))
            while chunk := await reader.read(65536):
                mode = self.mode
                if mode == "pass" and up_writer is not None:
                    up_writer.write(chunk)
                    await up_writer.drain()
                elif mode == "junk":
                    writer.write(self.junk)
                    await writer.drain()
                elif mode == "drop":
                    if up_writer is not None and self.drop_after:
                        up_writer.write(chunk[: self.drop_after])
                        await up_writer.drain()
                    self.drops += 1
                    return
                # silent (or pass without an upstream): swallow
        except OSError:
            pass
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    self._writers.discard(w)
                    reset(w)
            if answers is not None:
                await asyncio.gather(answers, return_exceptions=True)
            self._tasks.discard(task)

    async def _answers(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while chunk := await src.read(65536):
                if self.mode == "pass":
                    dst.write(chunk)
                    await dst.drain()
        reset(dst)   # the real server hung up: so does the relay


class HttpAnswer:
    """An HTTP/1.1 server on 127.0.0.1 that reads each whole request (headers and a
    Content-Length body) and answers it with ``response``, keeping the connection open."""

    def __init__(self, response: bytes) -> None:
        self.response = response
        self.port = 0
        self.requests = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", free_port())
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                reset(w)
            await self._server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                self.requests += 1
                writer.write(self.response)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


class PtyPair:
    """A serial line: ``socat`` joining two pseudo-terminals, linked as ``a`` (the device's
    end) and ``b`` (the gateway's end). ``cut`` kills socat: both terminals vanish, like a
    USB-serial adapter pulled out; ``start`` makes a new pair under the same names."""

    def __init__(self, directory: Path) -> None:
        self.a = str(directory / "ttyA")
        self.b = str(directory / "ttyB")
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def start(self) -> None:
        if self.running:
            return
        for link in (self.a, self.b):   # dangling links of a pair that was cut
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)
        self._proc = await asyncio.create_subprocess_exec(
            require_binary("socat"), f"pty,raw,echo=0,link={self.a}",
            f"pty,raw,echo=0,link={self.b}",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_S
        while not (os.path.exists(self.a) and os.path.exists(self.b)):
            if loop.time() > deadline or self._proc.returncode is not None:
                raise RuntimeError(f"socat did not create {self.a} and {self.b}")
            await asyncio.sleep(0.02)

    def cut_now(self) -> None:
        """Kill socat at once (callable from a reader callback)."""
        if self.running:
            assert self._proc is not None
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGKILL)

    async def cut(self) -> None:
        self.cut_now()
        if self._proc is not None:
            await self._proc.wait()


class PtyPeer:
    """A device end of a ``PtyPair`` that reads every request and, by ``mode``, answers
    ``junk``, stays ``silent``, or (``drop``) cuts the line with the request unanswered."""

    def __init__(self, pair: PtyPair, mode: Literal["junk", "silent", "drop"], *,
                 junk: bytes = JUNK) -> None:
        self.pair = pair
        self.mode = mode
        self.junk = junk
        self.requests = 0
        self._fd: int | None = None

    def open(self) -> None:
        fd = os.open(self.pair.a, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(fd)
        self._fd = fd
        asyncio.get_running_loop().add_reader(fd, self._readable)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)

    def _readable(self) -> None:
        assert self._fd is not None
        try:
            request = os.read(self._fd, 4096)
        except OSError:        # the line was cut
            self.close()
            return
        if not request:
            return
        self.requests += 1
        if self.mode == "junk":
            with contextlib.suppress(OSError):
                os.write(self._fd, self.junk)
        elif self.mode == "drop":
            self.close()
            self.pair.cut_now()

