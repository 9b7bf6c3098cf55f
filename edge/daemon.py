"""The gateway daemon: pollers, the group-commit writer, the uplink, status, signals.

Task layout (all on one asyncio loop; no thread does work that could block it):

- one ``BusPoller`` task per bus: a TCP/S7 device is its own bus; Modbus RTU devices on
  one serial port share a bus and are polled in turn, because the wire is half-duplex;
- the ``CycleWriter``: takes what the pollers derived and stores it in one buffer
  transaction per round (group commit across devices); its queue is bounded, so when the
  disk is slow the pollers wait and the status says so, and memory stays bounded;
- the uplink ``Forwarder`` (``buffer``), draining the buffer to the cloud;
- the clock watch, the status server, the sd_notify watchdog.

A device that fails never delays another: each bus has its own task, timeouts and
breaker. Runtime faults never end the loop: they are reported, counted and retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import structlog

from buffer import Outbox
from buffer.records import Record
from buffer.store import BufferWriteError, Cycle
from edge.backoff import Backoff, Breaker
from edge.config import ConfigError, LoadedDevice, LoadedGateway, load_gateway
from edge.derive import Derived, DeviceDeriver, TagRule
from edge.logs import RepeatCounter
from edge.sdnotify import Notifier, watchdog_interval, watchdog_loop
from edge.status import StatusServer
from protocols import (
    DataType,
    Driver,
    DriverError,
    ProtocolError,
    ReadPlan,
    make_driver,
    plan_reads,
    read_plan,
)

log = structlog.get_logger(__name__)

GATEWAY_DEVICE = "_gateway"      # the device name of records about the gateway itself
CLOCK_JUMP_MS = 2000             # wall vs monotonic disagreement that counts as a jump
STOP_BUDGET_S = 4.5              # SIGTERM: finish the cycle, flush, close within 5 s
QUEUE_PER_DEVICE = 2


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def loaded_path(loaded: LoadedGateway, path: str) -> Path:
    """A path from gateway.toml: relative ones are relative to that file's folder, like
    the map paths, so a config folder can be moved as a whole."""
    return loaded.path.parent / path


def rules_for(device: LoadedDevice) -> tuple[TagRule, ...]:
    """The derivation rules of a device's map."""
    out = []
    for name, tag in device.map.config.tags.items():
        max_raw = None
        if tag.role == "counter":
            dtype = DataType(tag.type)
            max_raw = dtype.max_value if dtype.is_integer else None
        out.append(TagRule(
            name=name, role=tag.role, counts=tag.counts, max_raw=max_raw,
            states=dict(tag.states) if tag.states else None,
            alarms=dict(tag.alarms) if tag.alarms else None,
            limits=tuple(tag.limits) if tag.limits else None,  # type: ignore[arg-type]
            deadband=tag.deadband or 0.0))
    return tuple(out)


# -- the writer -----------------------------------------------------------------------------

@dataclass
class _Pending:
    records: tuple[Record, ...]
    baselines: Mapping[tuple[str, str], int]
    done: asyncio.Future[list[int]]


class CycleWriter:
    """Group commit: everything queued when a round starts goes into one transaction."""

    def __init__(self, outbox: Outbox, capacity: int) -> None:
        self.outbox = outbox
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=max(capacity, 2))
        self.commits = 0
        self.records = 0
        self.last_error: str | None = None
        self.last_commit_mono = time.monotonic()
        self.on_commit: Callable[[], None] | None = None   # wakes the uplink
        self._repeats = RepeatCounter()

    async def submit(self, records: Iterable[Record],
                     baselines: Mapping[tuple[str, str], int] | None = None) -> list[int]:
        """Store these records and baseline rows together; returns their seqs. Raises
        BufferWriteError when the transaction failed: then nothing of it is stored and the
        caller keeps it to submit again."""
        recs = tuple(records)
        if not recs and not baselines:
            return []
        fut: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        await self.queue.put(_Pending(recs, baselines or {}, fut))  # blocks when full: back-pressure
        return await fut

    async def run(self) -> None:
        while True:
            first = await self.queue.get()
            batch = [first]
            while len(batch) < self.queue.maxsize:
                try:
                    batch.append(self.queue.get_nowait())
                except asyncio.QueueEmpty:
                    break
            await self._commit(batch)

    async def drain(self) -> None:
        """Commit what is queued now (at shutdown)."""
        batch = []
        while not self.queue.empty():
            batch.append(self.queue.get_nowait())
        if batch:
            await self._commit(batch)

    async def _commit(self, batch: list[_Pending]) -> None:
        records: list[Record] = []
        baselines: dict[tuple[str, str], int] = {}
        for p in batch:
            records.extend(p.records)
            baselines.update(p.baselines)
        try:
            seqs = await self.outbox.append(Cycle(records=records, baselines=baselines))
        except BufferWriteError as exc:
            self.last_error = str(exc)
            if self._repeats.failure("commit"):
                log.error("buffer_commit_failed", error=str(exc), records=len(records))
            for p in batch:
                if not p.done.done():
                    p.done.set_exception(exc)
            return
        if n := self._repeats.recovered("commit"):
            log.warning("buffer_commit_recovered", failures=n)
        self.last_error = None
        self.commits += 1
        self.records += len(records)
        self.last_commit_mono = time.monotonic()
        if self.on_commit is not None:
            self.on_commit()
        i = 0
        for p in batch:
            n = len(p.records)
            if not p.done.done():
                p.done.set_result(list(seqs[i:i + n]))
            i += n


# -- pollers --------------------------------------------------------------------------------

@dataclass
class DeviceRuntime:
    """One device as the daemon runs it, and what the status page shows of it."""

    loaded: LoadedDevice
    deriver: DeviceDeriver
    plan: ReadPlan
    driver: Driver
    breaker: Breaker = field(default_factory=Breaker)
    next_due: float = 0.0
    online: bool | None = None
    polls: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None
    last_poll_ts: int | None = None
    poll_latency_ms: float | None = None
    slowed_by_buffer: bool = False
    repeats: RepeatCounter = field(default_factory=RepeatCounter)

    @property
    def name(self) -> str:
        return self.loaded.config.name

    @property
    def period(self) -> float:
        return self.loaded.config.poll_ms / 1000

    def snapshot(self) -> dict[str, Any]:
        return {"online": self.online, "breaker": self.breaker.state, "polls": self.polls,
                "errors": dict(self.errors), "last_error": self.last_error,
                "last_poll_ts": self.last_poll_ts, "poll_latency_ms": self.poll_latency_ms,
                "poll_ms": self.loaded.config.poll_ms, "protocol": self.loaded.config.protocol,
                "requests_per_poll": len(self.plan.requests),
                "slowed_by_buffer": self.slowed_by_buffer}


class BusPoller:
    """Polls the devices of one bus, each on its own period."""

    def __init__(self, devices: list[DeviceRuntime], writer: CycleWriter,
                 stop: asyncio.Event) -> None:
        self.devices = devices
        self.writer = writer
        self.stop = stop
        self._retry = Backoff(base=0.5, cap=10.0)

    async def run(self) -> None:
        try:
            while not self.stop.is_set():
                now = time.monotonic()
                due = [d for d in self.devices if d.next_due <= now]
                for dev in due:
                    if self.stop.is_set():
                        break
                    await self._poll(dev)
                wake = min(d.next_due for d in self.devices)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), max(0.0, wake - time.monotonic()))
        finally:
            for dev in self.devices:
                await dev.driver.close()

    async def _poll(self, dev: DeviceRuntime) -> None:
        started = time.monotonic()
        # Next poll on the period grid, so a steady device keeps its rate; if a poll ran
        # over, the next one starts right away rather than piling up.
        dev.next_due = max(dev.next_due + dev.period, started)
        if not dev.breaker.allow(started):
            dev.next_due = max(dev.next_due, dev.breaker.open_until)
            return
        dev.polls += 1
        try:
            await dev.driver.connect()
            pdu = dev.driver.pdu_size
            if pdu is not None and pdu != dev.plan.limits.pdu_size:
                # S7: plan again within the PDU this PLC negotiated (240 on an S7-300,
                # 480/960 on newer CPUs): fewer round trips, or requests that fit at all.
                dev.plan = plan_reads(dev.plan.protocol, dev.plan.tags,
                                      replace(dev.plan.limits, pdu_size=pdu))
            dev.plan, readings = await read_plan(dev.driver, dev.plan)
        except DriverError as exc:
            await self._failed(dev, exc, started)
            return
        except ProtocolError as exc:  # not expected from read_plan, but never end the loop
            await self._failed(dev, exc, started)
            return
        ts = now_ms()
        dev.poll_latency_ms = round((time.monotonic() - started) * 1000, 2)
        dev.last_poll_ts = ts
        dev.breaker.success()
        if n := dev.repeats.recovered("poll"):
            log.warning("device_recovered", device=dev.name, failures=n)
        dev.online = True
        for r in readings:
            if r.error is not None:
                kind = getattr(r.error, "kind", "error")
                dev.errors[kind] = dev.errors.get(kind, 0) + 1
                if dev.repeats.failure(f"tag:{r.name}"):
                    log.error("tag_read_failed", device=dev.name, tag=r.name, error=str(r.error))
            elif n := dev.repeats.recovered(f"tag:{r.name}"):
                log.warning("tag_recovered", device=dev.name, tag=r.name, failures=n)
        await self._store(dev, lambda: dev.deriver.derive(readings, ts=ts, mono=started))

    async def _failed(self, dev: DeviceRuntime, exc: ProtocolError, started: float) -> None:
        kind = getattr(exc, "kind", "error")
        dev.errors[kind] = dev.errors.get(kind, 0) + 1
        dev.last_error = str(exc)
        dev.online = False
        dev.breaker.failure(time.monotonic())
        if dev.breaker.state == "open":
            dev.next_due = max(dev.next_due, dev.breaker.open_until)
        if dev.repeats.failure("poll"):
            log.error("device_poll_failed", device=dev.name, kind=kind, error=str(exc))
        await dev.driver.close()
        ts = now_ms()
        await self._store(dev, lambda: dev.deriver.offline(str(exc), ts=ts))

    async def _store(self, dev: DeviceRuntime, derive: Callable[[], Derived]) -> None:
        """Commit this poll's records; on a buffer failure keep them and retry the same
        derivation (the deriver has not moved) until stored or stopping."""
        derived = derive()
        while True:
            before = time.monotonic()
            try:
                await self.writer.submit(derived.records, derived.baselines)
            except BufferWriteError:
                if self.stop.is_set():
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), self._retry.next_delay())
                continue
            self._retry.reset()
            dev.deriver.apply(derived)
            # Back-pressure shows: the buffer made this device miss its period.
            dev.slowed_by_buffer = time.monotonic() - before > dev.period
            return


# -- the daemon -----------------------------------------------------------------------------

class Daemon:
    """``plantsync-edge run``. Construct with a loaded config and ``await run()``."""

    def __init__(self, loaded: LoadedGateway, *, notifier: Notifier | None = None,
                 status_port: int | None = None) -> None:
        self.loaded = loaded
        self.notifier = notifier or Notifier()
        self.stop = asyncio.Event()            # the daemon's shutdown
        self._poll_stop = asyncio.Event()      # the current pollers' stop (reload swaps it)
        self.reload_requested = asyncio.Event()
        self._status_port = status_port
        self.devices: list[DeviceRuntime] = []
        self.outbox: Outbox | None = None
        self.writer: CycleWriter | None = None
        self.forwarder: Any = None
        self._bus_tasks: list[asyncio.Task[None]] = []
        self.started_mono = time.monotonic()
        self.started_ts = now_ms()
        self.clock_jumps = 0
        self.last_clock_jump_ms: int | None = None
        self._buffer_stats: dict[str, Any] = {}

    # ---- lifecycle

    async def run(self) -> None:
        cfg = self.loaded.config
        data_dir = loaded_path(self.loaded, cfg.gateway.data_dir)
        loop = asyncio.get_running_loop()
        for sig, handler in ((signal.SIGTERM, self.stop.set), (signal.SIGINT, self.stop.set),
                             (signal.SIGHUP, self.reload_requested.set)):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, handler)
        async with contextlib.AsyncExitStack() as stack:
            self.outbox = await stack.enter_async_context(Outbox(
                data_dir / "buffer.db", gateway=cfg.gateway.id,
                max_bytes=cfg.gateway.buffer_max_mb * 2**20,
                synchronous=cfg.gateway.buffer_synchronous))
            self.writer = CycleWriter(self.outbox, QUEUE_PER_DEVICE * max(len(self.loaded.devices), 1))
            host, _, port = cfg.gateway.status_listen.rpartition(":")
            status = await stack.enter_async_context(StatusServer(
                self.snapshot, host or "127.0.0.1",
                self._status_port if self._status_port is not None else int(port)))
            self.status_port = status.port
            tasks = [asyncio.create_task(self.writer.run(), name="writer"),
                     asyncio.create_task(self._clock_watch(), name="clock"),
                     asyncio.create_task(self._buffer_watch(), name="buffer-stats"),
                     asyncio.create_task(self._reload_watch(), name="reload")]
            self.forwarder = await self._start_uplink(stack, tasks)
            self.writer.on_commit = self.forwarder.notify
            await self._start_pollers()
            log.info("gateway_started", gateway=cfg.gateway.id, devices=len(self.devices),
                     status=f"http://{status.host}:{status.port}/status")
            self.notifier.ready(self.summary())
            if (interval := watchdog_interval()) is not None:
                tasks.append(asyncio.create_task(watchdog_loop(self.notifier, interval, self._healthy)))
            tasks.append(asyncio.create_task(self._status_loop(), name="sd-status"))
            await self.stop.wait()
            self.notifier.stopping()
            log.info("gateway_stopping")
            try:
                await asyncio.wait_for(self._stop_pollers(), STOP_BUDGET_S - 1.5)
                await asyncio.wait_for(self.writer.drain(), 1.0)
            except (TimeoutError, BufferWriteError) as exc:
                log.warning("stop_incomplete", error=str(exc) or "timeout")
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        log.info("gateway_stopped")

    async def _start_uplink(self, stack: contextlib.AsyncExitStack, tasks: list[asyncio.Task[None]]) -> Any:
        from edge.uplink import start_uplink  # the wiring of buffer's uplinks to config
        assert self.outbox is not None
        return await start_uplink(self.loaded, self.outbox, stack, tasks, self.status_port)

    async def _start_pollers(self) -> None:
        assert self.outbox is not None and self.writer is not None
        persisted = await self.outbox.baselines()
        by_device: dict[str, dict[str, int]] = {}
        for (device, key), raw in persisted.items():
            by_device.setdefault(device, {})[key] = raw
        self.devices = []
        buses: dict[str, list[DeviceRuntime]] = {}
        for dev in self.loaded.devices:
            rt = DeviceRuntime(
                loaded=dev,
                deriver=DeviceDeriver(dev.config.name, rules_for(dev),
                                      persisted=by_device.get(dev.config.name, {})),
                plan=plan_reads(dev.config.protocol, dev.map.specs, dev.limits),
                driver=make_driver(dev.endpoint))
            self.devices.append(rt)
            bus = f"serial:{dev.config.serial_port}" if dev.config.protocol == "modbus-rtu" \
                else f"dev:{dev.config.name}"
            buses.setdefault(bus, []).append(rt)
        self._poll_stop = asyncio.Event()
        self._bus_tasks = [asyncio.create_task(BusPoller(devs, self.writer, self._poll_stop).run(),
                                               name=f"bus {bus}") for bus, devs in buses.items()]

    async def _stop_pollers(self) -> None:
        self._poll_stop.set()
        await asyncio.gather(*self._bus_tasks, return_exceptions=True)
        self._bus_tasks = []

    # ---- reload

    async def _reload_watch(self) -> None:
        while True:
            await self.reload_requested.wait()
            self.reload_requested.clear()
            await self.reload()

    async def reload(self) -> bool:
        """SIGHUP: load the config again; a bad one keeps the running one and says why."""
        self.notifier.reloading()
        try:
            new = load_gateway(self.loaded.path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload_rejected", problem=str(problem))
            self.notifier.status("reload rejected: " + self.summary())
            return False
        old = self.loaded.config.gateway
        if (new.config.gateway.id, new.config.gateway.data_dir) != (old.id, old.data_dir):
            log.error("reload_rejected", problem="gateway.id and gateway.data_dir change only with a restart")
            self.notifier.status("reload rejected: " + self.summary())
            return False
        # Stop the pollers (each finishes its cycle), then start from the new config with
        # the baselines the buffer holds, so no count is lost or repeated across the reload.
        await self._stop_pollers()
        self.loaded = new
        await self._start_pollers()
        if self.forwarder is not None and hasattr(self.forwarder, "reload"):
            await self.forwarder.reload()
        log.info("config_reloaded", devices=len(self.devices))
        self.notifier.ready(self.summary())
        return True

    # ---- clock, buffer stats, health

    async def _clock_watch(self) -> None:
        """Record wall-clock jumps (NTP syncing after boot, an RTC reset) seen against the
        monotonic clock; the cloud shows them next to the data they affect."""
        assert self.writer is not None
        offset = time.time() - time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            now_offset = time.time() - time.monotonic()
            jump_ms = round((now_offset - offset) * 1000)
            if abs(jump_ms) >= CLOCK_JUMP_MS:
                offset = now_offset
                self.clock_jumps += 1
                self.last_clock_jump_ms = jump_ms
                log.warning("clock_jump", jump_ms=jump_ms)
                rec = Record(seq=0, ts=now_ms(), device=GATEWAY_DEVICE, kind="clock",
                             body={"jump_ms": jump_ms,
                                   "reason": "wall clock moved against the monotonic clock"})
                while True:
                    try:
                        await self.writer.submit([rec])
                        break
                    except BufferWriteError:
                        await asyncio.sleep(1.0)

    async def _buffer_watch(self) -> None:
        assert self.outbox is not None
        while True:
            try:
                st = await self.outbox.stats()
                self._buffer_stats = {
                    "backlog": st.backlog, "first_seq": st.first_seq, "last_seq": st.last_seq,
                    "oldest_age_s": (max(0, now_ms() - st.oldest_ts) / 1000) if st.oldest_ts else 0,
                    "disk_bytes": st.disk_bytes, "dropped_samples": st.dropped_samples_total,
                    "over_quota": st.over_quota, "last_error": st.last_error}
            except Exception as exc:  # stats are best effort; the poll path is what matters
                self._buffer_stats["last_error"] = str(exc)
            await asyncio.sleep(1.0)

    def _healthy(self) -> bool:
        """Withhold watchdog pings when the writer is wedged (queue full, no commit for a
        minute): systemd then restarts us, and the buffer resumes where it stopped."""
        w = self.writer
        return not (w is not None and w.queue.full() and time.monotonic() - w.last_commit_mono > 60)

    async def _status_loop(self) -> None:
        last = ""
        while True:
            await asyncio.sleep(5.0)
            s = self.summary()
            if s != last:
                self.notifier.status(s)
                last = s

    def summary(self) -> str:
        online = sum(1 for d in self.devices if d.online)
        up = getattr(self.forwarder, "state", "off") if self.forwarder is not None else "off"
        return (f"{online}/{len(self.devices)} devices online, backlog "
                f"{self._buffer_stats.get('backlog', '?')}, uplink {up}")

    def snapshot(self) -> dict[str, Any]:
        fwd = self.forwarder
        uplink = fwd.snapshot() if fwd is not None and hasattr(fwd, "snapshot") else {"state": "off"}
        w = self.writer
        return {
            "gateway": self.loaded.config.gateway.id,
            "started_ts": self.started_ts,
            "uptime_s": round(time.monotonic() - self.started_mono, 1),
            "devices": {d.name: d.snapshot() for d in self.devices},
            "buffer": {**self._buffer_stats,
                       "commits": w.commits if w else 0,
                       "write_error": w.last_error if w else None,
                       "queue": f"{w.queue.qsize()}/{w.queue.maxsize}" if w else None},
            "uplink": uplink,
            "clock": {"wall_ts": now_ms(), "jumps": self.clock_jumps,
                      "last_jump_ms": self.last_clock_jump_ms},
        }


def run(config_path: str, *, status_port: int | None = None) -> int:
    """Entry point of ``plantsync-edge run``: 0 on a clean stop, 1 when the config is bad."""
    try:
        loaded = load_gateway(config_path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, flush=True)
        return 1
    from edge.logs import configure
    configure(loaded.config.gateway.log_format)
    try:
        loaded_path(loaded, loaded.config.gateway.data_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"{loaded.path}: gateway.data_dir: cannot create {loaded.config.gateway.data_dir!r} "
              f"({exc.strerror}); create it or point data_dir at a writable directory", flush=True)
        return 1
    asyncio.run(Daemon(loaded, status_port=status_port).run())
    return 0

