"""The fault proxy itself, against a small echo server on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.faults.proxy import FaultProxy


class Echo:
    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while data := await reader.read(65536):
                self.received.append(data)
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


@pytest.fixture
async def echo() -> AsyncIterator[Echo]:
    e = Echo()
    e.server = await asyncio.start_server(e.handle, "127.0.0.1", 0)
    e.port = e.server.sockets[0].getsockname()[1]
    yield e
    e.server.close()


async def roundtrip(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(len(data)), 10)
    finally:
        writer.close()


async def test_pass_and_latency(echo: Echo) -> None:
    async with FaultProxy(echo.port) as proxy:
        assert await roundtrip(proxy.port, b"hello") == b"hello"
        await proxy.set_mode("latency", latency_ms=50)
        assert await roundtrip(proxy.port, b"slow") == b"slow"


async def test_refuse_then_back(echo: Echo) -> None:
    async with FaultProxy(echo.port) as proxy:
        await proxy.set_mode("refuse")
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", proxy.port)
        await proxy.set_mode("pass")
        assert await roundtrip(proxy.port, b"again") == b"again"


async def test_refuse_cuts_open_connections(echo: Echo) -> None:
    async with FaultProxy(echo.port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"x")
        assert await reader.readexactly(1) == b"x"
        await proxy.set_mode("refuse")
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(reader.readexactly(1), 10)
        writer.close()


async def test_blackhole_never_answers(echo: Echo) -> None:
    async with FaultProxy(echo.port) as proxy:
        await proxy.set_mode("blackhole")
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"anyone?")
        await writer.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1), 0.3)
        writer.close()
        assert echo.connections == 0 and echo.received == []


async def test_reset_after_forward_delivers_then_resets(echo: Echo) -> None:
    async with FaultProxy(echo.port) as proxy:
        await proxy.set_mode("reset_after_forward")
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"commit me")
        await writer.drain()
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(100), 10)
        writer.close()
        assert b"".join(echo.received) == b"commit me"  # upstream got the whole request
        assert proxy.resets == 1
