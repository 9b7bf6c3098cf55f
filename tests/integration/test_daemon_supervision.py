"""The daemon's supervision, in process against a simulated plant over real Modbus TCP:

- the buffer stalls or fails: every poller waits, and the status (JSON and Prometheus)
  says since when and why; the watchdog withholds its ping once the stall is long;
- the buffer is found damaged while running: the daemon ends with exit code 1 and a
  ``buffer_corrupt`` line, nothing hangs;
- a driver raises something no driver should (an IndexError out of a parser): the error
  is counted as kind ``internal``, logged once with its traceback, and every device keeps
  being polled;
- a task that dies anyway ends the daemon with exit code 1 and says which task.

The outbox is the real one, wrapped so a test can make its ``append`` stall or raise on
cue (a real disk cannot be made to hang on cue); the driver is the real one, wrapped for
one device.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog

import edge.daemon as daemon_mod
from buffer import Outbox
from buffer.store import BufferCorrupt, BufferWriteError, Cycle
from edge.config import LoadedGateway, load_gateway
from edge.daemon import Daemon
from edge.simulate import build_plant
from protocols import Endpoint
from tests.fixtures.waiting import wait_for_async
from tests.services import free_port

MAPS = Path(__file__).resolve().parents[2] / "config" / "maps"
DEADLINE = 30.0


class GatedOutbox(Outbox):
    """The real outbox; ``mode`` makes append stall ("stall"), fail ("error") or find the
    file damaged ("corrupt")."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.mode = "ok"
        self.gate = asyncio.Event()

    async def append(self, cycle: Cycle) -> list[int]:
        if self.mode == "stall":
            await self.gate.wait()
        elif self.mode == "error":
            raise BufferWriteError(f"{self.path}: disk full (SQLITE_FULL)")
        elif self.mode == "corrupt":
            raise BufferCorrupt(f"{self.path}: damaged while appending: "
                                "database disk image is malformed")
        return await super().append(cycle)


@pytest.fixture
async def plant(tmp_path: Path) -> AsyncIterator[LoadedGateway]:
    (tmp_path / "token").write_text("t0ken\n")
    lines = ["[gateway]", 'id = "gw-sup"', 'data_dir = "data"', 'log_format = "json"',
             'status_listen = "127.0.0.1:0"', "zeroconf_interfaces = []", "",
             "[cloud]", f'url = "http://127.0.0.1:{free_port()}"',  # nobody listens: fine
             'token_file = "token"']
    for name in ("cnc-01", "cnc-02"):
        lines += ["", "[[devices]]", f'name = "{name}"', f'map = "{MAPS / "cnc-generic-modbus.toml"}"',
                  'protocol = "modbus-tcp"', 'host = "127.0.0.1"', f"port = {free_port()}",
                  "unit = 1", "poll_ms = 100", "timeout_ms = 1000"]
    (tmp_path / "gateway.toml").write_text("\n".join(lines) + "\n")
    (tmp_path / "data").mkdir()
    loaded = load_gateway(tmp_path / "gateway.toml")
    sim = build_plant(loaded, seed=4, speed=30.0)
    await sim.start(live=True)
    try:
        yield loaded
    finally:
        await sim.stop()


@asynccontextmanager
async def running(loaded: LoadedGateway, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[
        tuple[Daemon, asyncio.Task[int]]]:
    monkeypatch.setattr(daemon_mod, "Outbox", GatedOutbox)
    d = Daemon(loaded, status_port=0)
    task = asyncio.create_task(d.run())
    try:
        await wait_for_async(lambda: task.done() or (d.devices and all(x.polls for x in d.devices)),
                    "every device polled")
        assert not task.done(), task
        yield d, task
    finally:
        d.stop.set()
        await asyncio.wait_for(asyncio.shield(task), 10)


def dev(d: Daemon, name: str) -> dict[str, Any]:
    return dict(d.snapshot()["devices"][name])


async def metrics(d: Daemon) -> str:
    async with httpx.AsyncClient() as client:
        return (await client.get(f"http://127.0.0.1:{d.status_port}/metrics", timeout=5)).text


async def test_buffer_back_pressure_shows_in_status_and_metrics(
        plant: LoadedGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every store marks its device as waiting for the buffer while it runs, a normal one
    too (briefly), so the test never reads the status at an arbitrary moment: the disk
    hangs from a moment when no store is under way, so that each device waiting for the
    buffer afterwards is stuck until the disk comes back."""
    async with running(plant, monkeypatch) as (d, task):
        ob, writer = d.outbox, d.writer
        assert isinstance(ob, GatedOutbox) and writer is not None
        names = [x.name for x in d.devices]
        period = max(x.period for x in d.devices)

        def devices() -> dict[str, dict[str, Any]]:
            return {n: dev(d, n) for n in names}

        def stall_between_stores() -> bool:
            if writer.waiting:       # a store under way (its append may be running)
                return False
            ob.mode = "stall"
            return True

        # A stalled disk: every poller ends up waiting, and says since when and why.
        await wait_for_async(stall_between_stores, "a moment between stores to hang the disk")
        stuck = await wait_for_async(devices, "every device waiting for the hung disk",
                                     until=lambda devs: all(st["waiting_for_buffer_since_ms"]
                                                            for st in devs.values()))
        for st in stuck.values():
            assert st["buffer_wait_reason"] == "buffer slow", st
            assert st["waiting_for_buffer_since_ms"] <= daemon_mod.now_ms()
        text = await metrics(d)
        assert "# TYPE plantsync_device_waiting_for_buffer gauge" in text
        for n in names:
            assert f'plantsync_device_waiting_for_buffer{{device="{n}"}} 1' in text
        # The watchdog: fine now, withheld once the stall outlasts the limit.
        assert d._healthy()
        assert not d._healthy(now=time.monotonic() + d.stall_limit_s + 1)
        # Nothing moves while the disk hangs: no poll in a stall of five poll periods.
        await wait_for_async(writer.stalled_for, "a stall of five poll periods",
                             until=lambda stalled: stalled > 5 * period)
        assert {n: st["polls"] for n, st in devices().items()} == \
            {n: st["polls"] for n, st in stuck.items()}

        ob.mode = "ok"
        ob.gate.set()
        await wait_for_async(devices, "every device polling again after the stall",
                             until=lambda devs: all(st["polls"] > stuck[n]["polls"]
                                                    for n, st in devs.items()))
        await wait_for_async(lambda: d._healthy(now=time.monotonic() + d.stall_limit_s + 1),
                             "the watchdog seeing no stall any more")

        # A failing disk: the reason names the error while the pollers retry; for longer
        # than the stall limit (cut to five poll periods), and the watchdog stays happy.
        d.stall_limit_s = 5 * period
        ob.mode = "error"
        failing = await wait_for_async(
            devices, "write errors shown",
            until=lambda devs: all((st["buffer_wait_reason"] or "").startswith(
                "buffer write error:") and st["waiting_for_buffer_since_ms"]
                for st in devs.values()))
        assert "disk full (SQLITE_FULL)" in failing[names[0]]["buffer_wait_reason"]
        assert "disk full" in (d.snapshot()["buffer"]["write_error"] or "")
        unhealthy: list[float] = []

        def failing_for_ms() -> int:
            if not d._healthy():
                unhealthy.append(writer.stalled_for())
            since = [st["waiting_for_buffer_since_ms"] for st in devices().values()]
            return daemon_mod.now_ms() - max(s or daemon_mod.now_ms() for s in since)

        await wait_for_async(failing_for_ms, "write errors for twice the stall limit",
                             until=lambda ms: ms > 2 * d.stall_limit_s * 1000)
        assert unhealthy == []   # failing appends are retried and shown: not a hang
        ob.mode = "ok"
        await wait_for_async(devices, "recovered from write errors",
                             until=lambda devs: not any(st["waiting_for_buffer_since_ms"]
                                                        for st in devs.values()))
        polls = {n: dev(d, n)["polls"] for n in names}
        await wait_for_async(devices, "polling again",
                             until=lambda devs: all(st["polls"] > polls[n] + 2
                                                    for n, st in devs.items()))
        # A scrape may land in a normal store (waiting, briefly): wait for one that does not.
        await wait_for_async(lambda: metrics(d), "the gauge back at 0 for every device",
                             until=lambda text: all(
                                 f'plantsync_device_waiting_for_buffer{{device="{n}"}} 0'
                                 in text for n in names))
    assert task.result() == 0


async def test_damaged_buffer_ends_the_daemon_with_exit_1(
        plant: LoadedGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    with structlog.testing.capture_logs() as logs:
        async with running(plant, monkeypatch) as (d, task):
            assert isinstance(d.outbox, GatedOutbox)
            d.outbox.mode = "corrupt"
            code = await asyncio.wait_for(asyncio.shield(task), DEADLINE)
    assert code == 1
    corrupt = [e for e in logs if e["event"] == "buffer_corrupt"]
    assert len(corrupt) == 1, logs
    assert corrupt[0]["log_level"] == "critical"
    assert "malformed" in corrupt[0]["error"] and "moved aside" in corrupt[0]["action"]
    assert [e["exit_code"] for e in logs if e["event"] == "gateway_stopped"] == [1]


def _broken_for(name: str, error: Callable[[], Exception]) -> Callable[[Endpoint], Any]:
    real = daemon_mod.make_driver

    def make(endpoint: Endpoint) -> Any:
        driver = real(endpoint)
        if endpoint.name == name:
            async def read(*_: Any) -> Any:
                raise error()
            driver.read = read            # type: ignore[method-assign]
            driver.read_many = read       # type: ignore[method-assign]
        return driver
    return make


async def test_unexpected_driver_exception_is_an_internal_error_and_polling_goes_on(
        plant: LoadedGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(daemon_mod, "make_driver", _broken_for(
        "cnc-02", lambda: IndexError("index out of range in the reply parser")))
    with structlog.testing.capture_logs() as logs:
        async with running(plant, monkeypatch) as (d, task):
            await wait_for_async(lambda: dev(d, "cnc-02")["errors"].get("internal", 0) >= 4,
                        "four internal errors on cnc-02")
            st = dev(d, "cnc-02")
            assert st["online"] is False and set(st["errors"]) == {"internal"}
            assert st["last_error"] == ("internal error: IndexError: index out of range in "
                                        "the reply parser")
            assert st["breaker"] in ("open", "half_open")
            polls = dev(d, "cnc-01")["polls"]
            await wait_for_async(lambda: dev(d, "cnc-01")["polls"] >= polls + 10, "cnc-01 keeps polling")
            assert dev(d, "cnc-01")["errors"] == {} and dev(d, "cnc-01")["online"] is True
            assert not task.done()
    assert task.result() == 0
    internal = [e for e in logs if e["event"] == "device_poll_internal_error"]
    assert len(internal) == 1, internal          # once, not every poll
    assert internal[0]["device"] == "cnc-02"
    assert isinstance(internal[0]["exc_info"], IndexError)   # the traceback goes with it


async def test_a_task_that_dies_ends_the_daemon_with_exit_1(
        plant: LoadedGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    real_run: Callable[[daemon_mod.BusPoller], Awaitable[None]] = daemon_mod.BusPoller.run

    async def run(self: daemon_mod.BusPoller) -> None:
        if self.devices[0].name == "cnc-02":
            await asyncio.sleep(0.3)
            raise RuntimeError("a bug outside every catch")
        await real_run(self)

    monkeypatch.setattr(daemon_mod.BusPoller, "run", run)
    d = Daemon(plant, status_port=0)
    monkeypatch.setattr(daemon_mod, "Outbox", GatedOutbox)
    with structlog.testing.capture_logs() as logs:
        code = await asyncio.wait_for(d.run(), DEADLINE)
    assert code == 1
    failed = [e for e in logs if e["event"] == "task_failed"]
    assert len(failed) == 1 and failed[0]["task"] == "bus dev:cnc-02", failed
    assert "RuntimeError: a bug outside every catch" in failed[0]["error"]
