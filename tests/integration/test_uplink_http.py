"""HttpUplink + Forwarder against the real cloud app over real HTTP, with a real Outbox."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest

from buffer.records import Record, decode_batch
from buffer.uplink import HttpUplink, UplinkAuthError, UplinkUnavailable
from edge.forwarder import Forwarder
from tests.faults.proxy import FaultProxy
from tests.fixtures.waiting import wait_for_async
from tests.integration.uplink_helpers import (
    GATEWAY,
    CountingTransport,
    fill,
    open_outbox,
    running_cloud,
)


def token_file(tmp_path: Path, token: str) -> Path:
    p = tmp_path / "token"
    p.write_text(token + "\n")
    return p


def forwarder(outbox: Any, uplink: HttpUplink, **kw: Any) -> Forwarder:
    kw.setdefault("backoff_base", 0.01)
    kw.setdefault("backoff_cap", 0.05)
    kw.setdefault("idle_interval", 0.05)
    return Forwarder(outbox, uplink, gateway=GATEWAY, **kw)


class FailFirst:
    """An ingest applier that fails (HTTP 500, transaction rolled back) on chosen calls."""

    def __init__(self, fail: Any) -> None:
        self.fail = fail
        self.calls = 0

    async def __call__(self, session: Any, gateway: str, new: Sequence[Record]) -> None:
        self.calls += 1
        if self.fail(self.calls, new):
            raise RuntimeError("injected database failure")


async def test_drains_everything_once(tmp_path: Path) -> None:
    async with running_cloud(tmp_path) as cloud, open_outbox(tmp_path / "buf.db") as outbox:
        seqs = await fill(outbox, 2_500)
        async with HttpUplink(cloud.url, token_file=token_file(tmp_path, cloud.token)) as up:
            fw = forwarder(outbox, up, max_records=300)
            assert await fw.drain() == seqs[-1]
        assert cloud.seqs() == seqs
        st = await outbox.stats()
        assert st.backlog == 0
        s = fw.stats()
        assert s.last_ack_seq == seqs[-1] and s.last_ack_at is not None
        assert s.state == "draining" and s.batches_sent == 9 and s.errors == {}
        # X-Plantsync-Sent-At arrived: the cloud measured the skew exactly.
        with sqlite3.connect(cloud.db_file) as conn:
            (exact,) = conn.execute("SELECT clock_skew_exact FROM gateways WHERE id = ?",
                                    (GATEWAY,)).fetchone()
        assert exact == 1


async def test_deletes_only_what_the_cloud_acked(tmp_path: Path) -> None:
    failing = FailFirst(lambda call, new: call >= 3)  # batches 3.. fail with 500
    async with running_cloud(tmp_path, appliers=[failing]) as cloud, \
            open_outbox(tmp_path / "buf.db") as outbox:
        seqs = await fill(outbox, 1_000)
        async with HttpUplink(cloud.url, token_file=token_file(tmp_path, cloud.token)) as up:
            with pytest.raises(UplinkUnavailable, match="HTTP 500"):
                await forwarder(outbox, up, max_records=100).drain()
        stored = cloud.seqs()
        assert stored == seqs[:200]
        st = await outbox.stats()
        assert st.first_seq == 201 and st.backlog == 800  # exactly what the cloud lacks


async def test_5xx_retries_with_backoff_then_drains(tmp_path: Path) -> None:
    failing = FailFirst(lambda call, new: call <= 3)
    async with running_cloud(tmp_path, appliers=[failing]) as cloud, \
            open_outbox(tmp_path / "buf.db") as outbox:
        seqs = await fill(outbox, 500)
        async with HttpUplink(cloud.url, token_file=token_file(tmp_path, cloud.token)) as up:
            fw = forwarder(outbox, up, max_records=200)
            task = asyncio.create_task(fw.run())
            try:
                await wait_for_async(fw.stats, "drained", until=lambda s: s.last_ack_seq == seqs[-1])
            finally:
                task.cancel()
        assert cloud.seqs() == seqs
        s = fw.stats()
        assert s.errors == {"unavailable": 3}
        assert s.consecutive_failures == 0 and "HTTP 500" in (s.last_error or "")


async def test_401_stops_without_spinning_until_resumed(tmp_path: Path) -> None:
    async with running_cloud(tmp_path) as cloud, open_outbox(tmp_path / "buf.db") as outbox:
        seqs = await fill(outbox, 300)
        tf = token_file(tmp_path, "psg_wrong")
        transport = CountingTransport()
        async with HttpUplink(cloud.url, token_file=tf, transport=transport) as up:
            fw = forwarder(outbox, up)
            task = asyncio.create_task(fw.run())
            try:
                await wait_for_async(lambda: fw.state, "auth_failed", until=lambda st: st == "auth_failed")
                await asyncio.sleep(0.5)  # many backoff periods: it must not have retried
                assert transport.requests == 1
                s = fw.stats()
                assert s.errors == {"auth": 1} and "HTTP 401" in (s.last_error or "")
                assert "psg_wrong" not in (s.last_error or "")  # the token is never shown
                assert (await outbox.stats()).backlog == 300
                tf.write_text(cloud.token)
                fw.resume()
                await wait_for_async(fw.stats, "drained", until=lambda s: s.last_ack_seq == seqs[-1])
            finally:
                task.cancel()
        assert cloud.seqs() == seqs


async def test_unreadable_token_file_is_an_auth_error(tmp_path: Path) -> None:
    up = HttpUplink("http://127.0.0.1:9", token_file=tmp_path / "missing")
    with pytest.raises(UplinkAuthError, match="missing: cannot read the gateway token"):
        await up.open()
    await up.close()


async def test_413_halves_the_batch(tmp_path: Path) -> None:
    # ~300 bytes per record: 1000 records do not fit 64 KiB, 125 do.
    async with running_cloud(tmp_path, max_body_bytes=64 * 1024) as cloud, \
            open_outbox(tmp_path / "buf.db") as outbox:
        seqs = await fill(outbox, 2_000, pad=250)
        async with HttpUplink(cloud.url, token_file=token_file(tmp_path, cloud.token)) as up:
            fw = forwarder(outbox, up, max_records=1_000, max_bytes=8 << 20)
            task = asyncio.create_task(fw.run())
            try:
                await wait_for_async(fw.stats, "drained", until=lambda s: s.last_ack_seq == seqs[-1])
            finally:
                task.cancel()
        assert cloud.seqs() == seqs
        s = fw.stats()
        assert s.errors.get("too_large", 0) >= 3 and set(s.errors) == {"too_large"}
        assert s.batch_records <= 125


async def test_restart_resumes_from_oldest_unacked(tmp_path: Path) -> None:
    failing = FailFirst(lambda call, new: call == 4)
    async with running_cloud(tmp_path, appliers=[failing]) as cloud:
        tf = token_file(tmp_path, cloud.token)
        async with open_outbox(tmp_path / "buf.db") as outbox:
            seqs = await fill(outbox, 1_000)
            async with HttpUplink(cloud.url, token_file=tf) as up:
                with pytest.raises(UplinkUnavailable):
                    await forwarder(outbox, up, max_records=100).drain()
        assert cloud.seqs() == seqs[:300]
        # "Restart": a new Outbox object on the same file, a new uplink and forwarder.
        sent: list[int] = []
        transport = _Recording(sent)
        async with open_outbox(tmp_path / "buf.db") as outbox, \
                HttpUplink(cloud.url, token_file=tf, transport=transport) as up:
            assert await forwarder(outbox, up, max_records=100).drain() == seqs[-1]
        assert sent[0] == 301 and sent == seqs[300:]  # nothing before the oldest unacked
        assert cloud.seqs() == seqs


class _Recording(CountingTransport):
    def __init__(self, sent: list[int]) -> None:
        super().__init__()
        self.sent = sent

    async def handle_async_request(self, request: Any) -> Any:
        body = msgpack.unpackb(await request.aread(), raw=False)
        self.sent += [r["seq"] for r in body["records"]]
        return await super().handle_async_request(request)


async def test_reset_after_forward_gives_no_duplicates(tmp_path: Path) -> None:
    async with running_cloud(tmp_path) as cloud, open_outbox(tmp_path / "buf.db") as outbox:
        port = int(cloud.url.rsplit(":", 1)[1])
        seqs = await fill(outbox, 600)
        async with FaultProxy(port) as proxy, \
                HttpUplink(f"http://127.0.0.1:{proxy.port}",
                           token_file=token_file(tmp_path, cloud.token)) as up:
            fw = forwarder(outbox, up, max_records=200)
            await proxy.set_mode("reset_after_forward")
            with pytest.raises(UplinkUnavailable):
                await fw.drain()
            assert proxy.resets == 1
            # The cloud committed the batch whose answer was lost; the buffer still has it.
            assert cloud.seqs() == seqs[:200]
            assert (await outbox.stats()).first_seq == 1
            await proxy.set_mode("pass")
            assert await fw.drain() == seqs[-1]
        assert cloud.seqs() == seqs  # resent, deduplicated: each seq once
        assert (await outbox.stats()).backlog == 0


async def test_batches_report_the_backlog_behind_them(tmp_path: Path) -> None:
    """Each batch says how many records the gateway still holds; the cloud keeps what is
    queued behind the last one (its status and the reports' provisional mark use it)."""
    async with running_cloud(tmp_path) as cloud, open_outbox(tmp_path / "buf.db") as outbox:
        seqs = await fill(outbox, 1_000)
        async with HttpUplink(cloud.url, token_file=token_file(tmp_path, cloud.token)) as up:
            seen: list[int | None] = []
            real_send = up.send

            async def spy(payload: bytes, *, last_seq: int) -> int:
                seen.append(decode_batch(payload).backlog)
                return await real_send(payload, last_seq=last_seq)

            up.send = spy  # type: ignore[method-assign]
            assert await forwarder(outbox, up, max_records=300).drain() == seqs[-1]
        assert seen == [1000, 700, 400, 100]
        async with httpx.AsyncClient() as c:
            doc = (await c.get(f"{cloud.url}/api/v1/gateways/{GATEWAY}",
                               headers={"Authorization": f"Bearer {cloud.token}"})).json()
        assert doc["backlog"] == 0 and doc["backlog_at"] is not None


async def test_blackhole_and_refused_are_unavailable(tmp_path: Path) -> None:
    async with running_cloud(tmp_path) as cloud, open_outbox(tmp_path / "buf.db") as outbox:
        port = int(cloud.url.rsplit(":", 1)[1])
        seqs = await fill(outbox, 100)
        async with FaultProxy(port) as proxy, \
                HttpUplink(f"http://127.0.0.1:{proxy.port}", read_timeout=0.5,
                           token_file=token_file(tmp_path, cloud.token)) as up:
            fw = forwarder(outbox, up)
            await proxy.set_mode("blackhole")
            with pytest.raises(UplinkUnavailable, match="ReadTimeout"):
                await fw.drain()
            await proxy.set_mode("refuse")
            with pytest.raises(UplinkUnavailable, match="ConnectError"):
                await fw.drain()
            await proxy.set_mode("latency", latency_ms=20)
            # a fresh uplink with the default read timeout: 0.5 s was for the blackhole; an
            # ingest on a loaded test machine may take longer than that
            async with HttpUplink(f"http://127.0.0.1:{proxy.port}",
                                  token_file=token_file(tmp_path, cloud.token)) as patient:
                assert await forwarder(outbox, patient).drain() == seqs[-1]
        assert cloud.seqs() == seqs


async def test_403_stops_like_401_and_says_so(tmp_path: Path) -> None:
    """The real cloud answers 403 (not_a_gateway) to a user's API token used as the
    gateway's: the Forwarder stops like on 401, says why in the status and the log, and
    sends nothing more until resumed with a right token."""
    from structlog.testing import capture_logs

    from cloud.auth import create_api_token, create_user
    from cloud.core.db import Database

    async with running_cloud(tmp_path) as cloud, open_outbox(tmp_path / "buf.db") as outbox:
        async with Database(cloud.db_url) as db:
            await create_user(db, "erp-sync", "viewer", "a-long-password")
            _, user_token = await create_api_token(db, "erp-sync", "erp")
        seqs = await fill(outbox, 300)
        tf = token_file(tmp_path, user_token)
        transport = CountingTransport()
        async with HttpUplink(cloud.url, token_file=tf, transport=transport) as up:
            fw = forwarder(outbox, up)
            with capture_logs() as logs:
                task = asyncio.create_task(fw.run())
                try:
                    await wait_for_async(lambda: fw.state, "auth_failed", until=lambda st: st == "auth_failed")
                    await asyncio.sleep(0.5)  # many backoff periods: it must not have retried
                    assert transport.requests == 1 and fw.state == "auth_failed"
                    s = fw.stats()
                    assert s.errors == {"auth": 1}
                    assert "HTTP 403" in (s.last_error or "") and "not_a_gateway" in (s.last_error or "")
                    assert str(tf) in (s.last_error or "")      # names the file to fix
                    assert user_token not in (s.last_error or "")
                    assert (await outbox.stats()).backlog == 300
                    tf.write_text(cloud.token)
                    fw.resume()
                    await wait_for_async(fw.stats, "drained", until=lambda s: s.last_ack_seq == seqs[-1])
                finally:
                    task.cancel()
        [event] = [e for e in logs if e["event"] == "uplink_auth_failed"]
        assert event["log_level"] == "error" and "HTTP 403" in event["error"]
        assert "stopped" in event["action"]
        assert cloud.seqs() == seqs


async def test_keep_alive_one_connection_for_many_batches(tmp_path: Path) -> None:
    """Ten batches over one TCP connection (counted where they arrive: the fault proxy in
    pass mode in front of the cloud)."""
    async with running_cloud(tmp_path) as cloud, open_outbox(tmp_path / "buf.db") as outbox:
        port = int(cloud.url.rsplit(":", 1)[1])
        seqs = await fill(outbox, 2_000)
        async with FaultProxy(port) as proxy, \
                HttpUplink(f"http://127.0.0.1:{proxy.port}",
                           token_file=token_file(tmp_path, cloud.token)) as up:
            fw = forwarder(outbox, up, max_records=200)
            assert await fw.drain() == seqs[-1]
            assert fw.stats().batches_sent == 10
            assert proxy.connections == 1
        assert cloud.seqs() == seqs
