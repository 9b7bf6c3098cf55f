"""The gateway daemon: pollers, the group-commit writer, the uplink, status, signals.

Task layout (all on one asyncio loop; no thread does work that could block it):

- one ``BusPoller`` task per bus: a TCP/S7 device is its own bus; Modbus RTU devices on
  one serial port share a bus and are polled in turn, because the wire is half-duplex;
- the ``CycleWriter``: takes what the pollers derived and stores it in one buffer
  transaction per round (group commit across devices); its queue is bounded, so when the
  disk is slow the pollers wait and the status says so, and memory stays bounded;
- the sync loop ``Forwarder`` (``edge.forwarder``), draining the buffer to the cloud;
- the clock watch, the status server, the sd_notify watchdog.

A device that fails never delays another: each bus has its own task, timeouts and
breaker. Runtime faults never end the loop: they are reported, counted and retried.
What cannot be retried (a buffer found damaged while running, a bug that ends a task)
ends the daemon with exit code 1 and a log line saying why; no task dies silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel

from buffer import Outbox
from buffer.backoff import Backoff
from buffer.records import Record, RecordError
from buffer.store import BufferCorrupt, BufferWriteError, Cycle, OutboxError
from edge.backoff import Breaker
from edge.config import ConfigError, GatewayConfig, LoadedDevice, LoadedGateway, load_runnable
from edge.derive import Derived, DeviceDeriver, TagRule
from edge.logs import RepeatCounter
from edge.sdnotify import Notifier, watchdog_interval, watchdog_loop
from edge.status import StatusServer
from protocols import (
    DataType,
    Driver,
    ProtocolError,
    ReadPlan,
    TagReading,
    make_driver,
    plan_reads,
    read_plan,
)

log = structlog.get_logger(__name__)

GATEWAY_DEVICE = "_gateway"      # the device name of records about the gateway itself
CLOCK_JUMP_MS = 2000             # wall vs monotonic disagreement that counts as a jump
STOP_BUDGET_S = 4.5              # SIGTERM: finish the cycle, flush, close within 5 s
READ_GRACE_S = 1.0               # at a stop, how long a device read in flight may finish
QUEUE_PER_DEVICE = 2
INTERNAL = "internal"            # the error kind of an unexpected exception in a poll
BREAKER_CAP_S = 60.0             # the longest a failing device goes unprobed
STALL_LIMIT_S = 60.0             # no append finished while pollers wait: a hung disk
STALL_LIMIT_MIN_S = 10.0         # ... at least this long, whatever WatchdogSec is


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

class WriterFailed(Exception):
    """The writer stopped after a fatal buffer error (``__cause__`` says which); nothing
    more is stored. The daemon then ends with exit code 1 and systemd restarts it."""


@dataclass
class _Pending:
    records: tuple[Record, ...]
    baselines: Mapping[tuple[str, str], int]
    done: asyncio.Future[list[int]]


class CycleWriter:
    """Group commit: everything queued when a round starts goes into one transaction.

    Faults: a ``BufferWriteError`` reaches every submitter of the round (they retry); a
    ``RecordError`` reaches only the submitter whose records the buffer refused (the round
    is committed again one submitter at a time); anything else (``BufferCorrupt``, a bug)
    is fatal: every waiting submitter gets ``WriterFailed`` at once, later submits raise
    it, and ``run`` raises the error so the daemon's supervision ends the process."""

    def __init__(self, outbox: Outbox, capacity: int) -> None:
        self.outbox = outbox
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=max(capacity, 2))
        self.commits = 0
        self.records = 0
        self.last_error: str | None = None
        self.last_commit_mono = time.monotonic()
        self.last_progress_mono = time.monotonic()   # an append returned, stored or not
        self.waiting = 0                              # submitters waiting now
        self.failed: BaseException | None = None
        self.on_commit: Callable[[], None] | None = None   # wakes the uplink
        self._waiting_since: float | None = None
        self._repeats = RepeatCounter()

    async def submit(self, records: Iterable[Record],
                     baselines: Mapping[tuple[str, str], int] | None = None) -> list[int]:
        """Store these records and baseline rows together; returns their seqs. Raises
        BufferWriteError when the transaction failed: then nothing of it is stored and the
        caller keeps it to submit again. Raises RecordError when the buffer refused one of
        these records (nothing stored), WriterFailed when the writer has stopped."""
        recs = tuple(records)
        if not recs and not baselines:
            return []
        if self.failed is not None:
            raise self._failure()
        fut: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        if self.waiting == 0:
            self._waiting_since = time.monotonic()
        self.waiting += 1
        try:
            pending = _Pending(recs, baselines or {}, fut)
            await self.queue.put(pending)   # blocks when full: back-pressure
            if self.failed is not None:
                # Queued after the writer stopped: empty the queue so that nobody waits
                # for room in it either.
                self._settle([pending, *self._take_queued()])
            return await fut
        finally:
            self.waiting -= 1
            if self.waiting == 0:
                self._waiting_since = None

    def stalled_for(self, now: float | None = None) -> float:
        """Seconds submitters have been waiting while no append finished (stored or
        failed); 0 when nobody waits. A hung disk shows here; a failing one does not, since
        its errors are retried and reported and a restart would not mend them."""
        if self._waiting_since is None:
            return 0.0
        t = time.monotonic() if now is None else now
        return max(0.0, t - max(self._waiting_since, self.last_progress_mono))

    async def run(self) -> None:
        """Commit rounds until cancelled; raises a fatal error (see the class)."""
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
        batch = self._take_queued()
        if self.failed is not None:
            self._settle(batch)
        elif batch:
            await self._commit(batch)

    def _take_queued(self) -> list[_Pending]:
        taken = []
        while not self.queue.empty():
            taken.append(self.queue.get_nowait())
        return taken

    def _failure(self) -> WriterFailed:
        err = WriterFailed(f"the buffer writer stopped after {type(self.failed).__name__}: "
                           f"{self.failed}")
        err.__cause__ = self.failed
        return err

    def _settle(self, batch: list[_Pending], error: BaseException | None = None) -> None:
        """Fail the submitters of ``batch`` with ``error`` (default: WriterFailed)."""
        for p in batch:
            if not p.done.done():
                p.done.set_exception(error if error is not None else self._failure())

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
            self._settle(batch, exc)
            return
        except RecordError as exc:
            if len(batch) > 1:
                # One poller's bad record must not refuse the others' cycles.
                for p in batch:
                    await self._commit([p])
                return
            log.error("buffer_record_refused", error=str(exc), records=len(records))
            self._settle(batch, exc)
            return
        except Exception as exc:
            self.failed = exc
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._settle([*batch, *self._take_queued()])
            raise
        finally:
            self.last_progress_mono = time.monotonic()
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
    waiting_for_buffer_since_ms: int | None = None   # epoch ms; None when not waiting
    buffer_wait_reason: str | None = None
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
                "slowed_by_buffer": self.slowed_by_buffer,
                "waiting_for_buffer_since_ms": self.waiting_for_buffer_since_ms,
                "buffer_wait_reason": self.buffer_wait_reason}


def device_runtime(dev: LoadedDevice, persisted: Mapping[str, int]) -> DeviceRuntime:
    """A device ready to poll, its deriver resuming from the baselines the buffer holds.
    Its breaker opens for at least one poll period and backs off in multiples of it."""
    period = dev.config.poll_ms / 1000
    return DeviceRuntime(
        loaded=dev,
        deriver=DeviceDeriver(dev.config.name, rules_for(dev), persisted=persisted),
        plan=plan_reads(dev.config.protocol, dev.map.specs, dev.limits),
        driver=make_driver(dev.endpoint),
        breaker=Breaker(backoff=Backoff(base=period, cap=max(BREAKER_CAP_S, period)),
                        min_open_s=period))


class BusPoller:
    """Polls the devices of one bus, each on its own period. Never ends on a fault: a
    device error, and any unexpected exception of a poll (kind ``internal``), is counted
    on the device, which keeps being polled under its breaker."""

    def __init__(self, devices: list[DeviceRuntime], writer: CycleWriter,
                 stop: asyncio.Event) -> None:
        self.devices = devices
        self.writer = writer
        self.stop = stop
        self.reading = False   # connecting/reading: nothing derived yet, safe to abandon
        self._retry = Backoff(base=0.5, cap=10.0)

    async def run(self) -> None:
        try:
            while not self.stop.is_set():
                now = time.monotonic()
                due = [d for d in self.devices if d.next_due <= now]
                for dev in due:
                    if self.stop.is_set():
                        break
                    try:
                        await self._poll(dev)
                    except Exception as exc:  # outside the read: a bug must not end the bus
                        self._count_failure(dev, INTERNAL, _internal_message(exc), exc)
                wake = min(d.next_due for d in self.devices)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), max(0.0, wake - time.monotonic()))
        finally:
            for dev in self.devices:
                await self._close(dev)

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
            readings = await self._read(dev)
        except ProtocolError as exc:  # DriverError; anything else of ours: never end the loop
            await self._failed(dev, getattr(exc, "kind", "error"), str(exc), exc)
            return
        except Exception as exc:  # a library fault, e.g. an IndexError inside snap7's parser
            await self._failed(dev, INTERNAL, _internal_message(exc), exc)
            return
        ts = now_ms()
        dev.poll_latency_ms = round((time.monotonic() - started) * 1000, 2)
        dev.last_poll_ts = ts
        dev.breaker.success()
        if n := dev.repeats.recovered("poll"):
            log.warning("device_recovered", device=dev.name, failures=n)
        dev.repeats.recovered(INTERNAL)
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

    async def _read(self, dev: DeviceRuntime) -> list[TagReading]:
        self.reading = True
        try:
            await dev.driver.connect()
            pdu = dev.driver.pdu_size
            if pdu is not None and pdu != dev.plan.limits.pdu_size:
                # S7: plan again within the PDU this PLC negotiated (240 on an S7-300,
                # 480/960 on newer CPUs): fewer round trips, or requests that fit at all.
                dev.plan = plan_reads(dev.plan.protocol, dev.plan.tags,
                                      replace(dev.plan.limits, pdu_size=pdu))
            dev.plan, readings = await read_plan(dev.driver, dev.plan)
            return readings
        finally:
            self.reading = False

    def _count_failure(self, dev: DeviceRuntime, kind: str, message: str, exc: Exception) -> None:
        """Count a failed poll on the device and its breaker; log the first of a run (an
        internal error with its traceback, once until the device polls cleanly again)."""
        dev.errors[kind] = dev.errors.get(kind, 0) + 1
        dev.last_error = message
        dev.breaker.failure(time.monotonic())
        if dev.breaker.state == "open":
            dev.next_due = max(dev.next_due, dev.breaker.open_until)
        first = dev.repeats.failure("poll")
        if kind == INTERNAL:
            if dev.repeats.failure(INTERNAL):
                log.error("device_poll_internal_error", device=dev.name, error=message,
                          exc_info=exc)
        elif first:
            log.error("device_poll_failed", device=dev.name, kind=kind, error=message)

    async def _failed(self, dev: DeviceRuntime, kind: str, message: str, exc: Exception) -> None:
        self._count_failure(dev, kind, message, exc)
        dev.online = False
        await self._close(dev)
        ts = now_ms()
        await self._store(dev, lambda: dev.deriver.offline(message, ts=ts))

    async def _close(self, dev: DeviceRuntime) -> None:
        try:
            await dev.driver.close()
        except Exception as exc:  # a close that fails leaves nothing to undo; say so once
            if dev.repeats.failure("close"):
                log.warning("device_close_failed", device=dev.name, error=_internal_message(exc))
        else:
            dev.repeats.recovered("close")

    async def _store(self, dev: DeviceRuntime, derive: Callable[[], Derived]) -> None:
        """Commit this poll's records; on a buffer failure keep them and retry the same
        derivation (the deriver has not moved) until stored or stopping. While it waits,
        the device's status says since when and why."""
        derived = derive()
        before = time.monotonic()
        dev.waiting_for_buffer_since_ms = now_ms()
        dev.buffer_wait_reason = (f"buffer write error: {self.writer.last_error}"
                                  if self.writer.last_error else "buffer slow")
        try:
            while True:
                try:
                    await self.writer.submit(derived.records, derived.baselines)
                    break
                except BufferWriteError as exc:
                    dev.buffer_wait_reason = f"buffer write error: {exc}"
                    if self.stop.is_set():
                        return
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stop.wait(), self._retry.next_delay())
                except WriterFailed:
                    return   # the daemon is ending; the buffer still holds the baselines
        finally:
            dev.waiting_for_buffer_since_ms = None
        self._retry.reset()
        dev.deriver.apply(derived)
        # Back-pressure shows: the buffer made this device miss its period.
        dev.slowed_by_buffer = time.monotonic() - before > dev.period
        if not dev.slowed_by_buffer:
            dev.buffer_wait_reason = None


def _internal_message(exc: BaseException) -> str:
    return f"internal error: {type(exc).__name__}: {exc}"


# -- the daemon -----------------------------------------------------------------------------

def changed_settings(old: GatewayConfig, new: GatewayConfig) -> list[str]:
    """Dotted keys outside ``[[devices]]`` whose values differ, e.g. ``cloud.url``; a
    table that appears or goes away is named as a whole (``mqtt``)."""
    out: list[str] = []
    for section in type(new).model_fields:
        if section == "devices":
            continue
        a, b = getattr(old, section, None), getattr(new, section, None)
        if isinstance(a, BaseModel) and isinstance(b, BaseModel):
            da, db = a.model_dump(), b.model_dump()
            out += [f"{section}.{k}" for k in sorted(da.keys() | db.keys()) if da.get(k) != db.get(k)]
        elif a != b:
            out.append(section)
    return out


def _applies_to_uplink(key: str) -> bool:
    return key.split(".")[0] in ("cloud", "mqtt") or key == "gateway.zeroconf_interfaces"


class Daemon:
    """``plantsync-edge run``. Construct with a loaded config and ``await run()``.

    Supervision: every task it starts is watched; one that ends with an exception (the
    writer on a damaged buffer, a bug anywhere) is logged with the reason and ends the
    daemon with exit code 1, so systemd's ``Restart=on-failure`` starts it afresh. The
    watchdog pings stop when submitters wait on a buffer that finishes no append."""

    def __init__(self, loaded: LoadedGateway, *, notifier: Notifier | None = None,
                 status_port: int | None = None) -> None:
        self.loaded = loaded
        self.notifier = notifier or Notifier()
        self.stop = asyncio.Event()            # the daemon's shutdown
        self._poll_stop = asyncio.Event()      # the current pollers' stop (reload swaps it)
        self.reload_requested = asyncio.Event()
        self._status_port = status_port
        self.status_port = 0
        self.devices: list[DeviceRuntime] = []
        self.outbox: Outbox | None = None
        self.writer: CycleWriter | None = None
        self.forwarder: Any = None
        self.exit_code = 0
        self._pollers: list[tuple[BusPoller, asyncio.Task[None]]] = []
        self._uplink_tasks: list[asyncio.Task[None]] = []
        self._stack: contextlib.AsyncExitStack | None = None
        self._started_config = loaded.config   # what restart-only settings run with
        self.restart_required: list[str] = []
        self.stall_limit_s = STALL_LIMIT_S
        self._stall_reported = False
        self.started_mono = time.monotonic()
        self.started_ts = now_ms()
        self.clock_jumps = 0
        self.last_clock_jump_ms: int | None = None
        self._buffer_stats: dict[str, Any] = {}

    # ---- lifecycle

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT (returns 0) or a fatal fault (logged; returns 1)."""
        cfg = self.loaded.config
        data_dir = loaded_path(self.loaded, cfg.gateway.data_dir)
        loop = asyncio.get_running_loop()
        for sig, handler in ((signal.SIGTERM, self.stop.set), (signal.SIGINT, self.stop.set),
                             (signal.SIGHUP, self.reload_requested.set)):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, handler)
        async with contextlib.AsyncExitStack() as stack:
            self._stack = stack
            self.outbox = Outbox(data_dir / "buffer.db", gateway=cfg.gateway.id,
                                 max_bytes=cfg.gateway.buffer_max_mb * 2**20,
                                 synchronous=cfg.gateway.buffer_synchronous)
            await self.outbox.open()
            stack.push_async_callback(self._close_outbox)
            self.writer = CycleWriter(self.outbox, QUEUE_PER_DEVICE * max(len(self.loaded.devices), 1))
            host, _, port = cfg.gateway.status_listen.rpartition(":")
            status = await stack.enter_async_context(StatusServer(
                self.snapshot, host or "127.0.0.1",
                self._status_port if self._status_port is not None else int(port)))
            self.status_port = status.port
            tasks = [self._supervise(self.writer.run(), "writer"),
                     self._supervise(self._clock_watch(), "clock"),
                     self._supervise(self._buffer_watch(), "buffer-stats"),
                     self._supervise(self._reload_watch(), "reload")]
            await self._start_uplink()
            await self._start_pollers()
            log.info("gateway_started", gateway=cfg.gateway.id, devices=len(self.devices),
                     status=f"http://{status.host}:{status.port}/status")
            self.notifier.ready(self.summary())
            if (interval := watchdog_interval()) is not None:
                # A commit not finishing for a whole WatchdogSec is a stuck disk, not a slow one.
                self.stall_limit_s = max(STALL_LIMIT_MIN_S, 2 * interval)
                tasks.append(self._supervise(
                    watchdog_loop(self.notifier, interval, self._healthy), "watchdog"))
            tasks.append(self._supervise(self._status_loop(), "sd-status"))
            await self.stop.wait()
            self.notifier.stopping()
            log.info("gateway_stopping")
            try:
                await self._stop_pollers(STOP_BUDGET_S - 1.5)
                await asyncio.wait_for(self.writer.drain(), 1.0)
            except (TimeoutError, BufferWriteError) as exc:
                log.warning("stop_incomplete", error=str(exc) or "timeout")
            except Exception as exc:
                log.error("stop_incomplete", error=_internal_message(exc))
                self.exit_code = 1
            for t in [*tasks, *self._uplink_tasks]:
                t.cancel()
            await asyncio.gather(*tasks, *self._uplink_tasks, return_exceptions=True)
        log.info("gateway_stopped", exit_code=self.exit_code)
        return self.exit_code

    def _supervise(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        """No task dies silently: an exception ends the daemon with exit code 1."""
        if task.cancelled() or (exc := task.exception()) is None:
            return
        self.exit_code = 1
        if isinstance(exc, BufferCorrupt):
            log.critical("buffer_corrupt", error=str(exc),
                         action="exiting with code 1; on restart the damaged buffer file is "
                                "moved aside and a fresh one started")
        else:
            log.critical("task_failed", task=task.get_name(), error=_internal_message(exc),
                         action="exiting with code 1 so that systemd restarts the gateway",
                         exc_info=exc)
        self.stop.set()

    async def _close_outbox(self) -> None:
        assert self.outbox is not None
        try:
            await self.outbox.close()
        except OutboxError as exc:  # e.g. a damaged file: the next open moves it aside
            log.error("buffer_close_failed", error=str(exc))
            self.exit_code = 1

    async def _start_uplink(self) -> None:
        from edge.uplink import start_uplink  # the wiring of buffer's uplinks to config
        assert self.outbox is not None and self.writer is not None and self._stack is not None
        started: list[asyncio.Task[None]] = []
        self.forwarder = await start_uplink(self.loaded, self.outbox, self._stack, started,
                                            self.status_port)
        for t in started:
            t.add_done_callback(self._task_done)
        self._uplink_tasks = started
        self.writer.on_commit = self.forwarder.notify

    async def _stop_uplink(self) -> None:
        tasks, self._uplink_tasks = self._uplink_tasks, []
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _start_pollers(self) -> None:
        assert self.outbox is not None and self.writer is not None
        persisted = await self.outbox.baselines()
        by_device: dict[str, dict[str, int]] = {}
        for (device, key), raw in persisted.items():
            by_device.setdefault(device, {})[key] = raw
        self.devices = []
        buses: dict[str, list[DeviceRuntime]] = {}
        for dev in self.loaded.devices:
            rt = device_runtime(dev, by_device.get(dev.config.name, {}))
            self.devices.append(rt)
            bus = f"serial:{dev.config.serial_port}" if dev.config.protocol == "modbus-rtu" \
                else f"dev:{dev.config.name}"
            buses.setdefault(bus, []).append(rt)
        self._poll_stop = asyncio.Event()
        self._pollers = []
        for bus, devs in buses.items():
            poller = BusPoller(devs, self.writer, self._poll_stop)
            self._pollers.append((poller, self._supervise(poller.run(), f"bus {bus}")))

    async def _stop_pollers(self, budget: float = STOP_BUDGET_S - 1.5) -> None:
        """Stop the pollers within ``budget`` seconds. Each finishes the cycle it has read,
        commit included. A read still hanging after READ_GRACE_S (a device that does not
        answer) is abandoned: nothing of it was derived, so nothing is lost. A commit still
        waiting at the end (a stalled disk) is abandoned too, and said so."""
        self._poll_stop.set()
        pollers, self._pollers = self._pollers, []
        tasks = {t for _, t in pollers}
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=min(READ_GRACE_S, budget))
        for poller, task in pollers:
            if task in pending and poller.reading:
                task.cancel()
        _, pending = await asyncio.wait(tasks, timeout=max(0.0, budget - READ_GRACE_S))
        if pending:
            log.warning("stop_incomplete", error="a commit did not finish in time",
                        buses=sorted(t.get_name() for t in pending))
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=0.5)

    # ---- reload

    async def _reload_watch(self) -> None:
        while True:
            await self.reload_requested.wait()
            self.reload_requested.clear()
            await self.reload()

    async def reload(self) -> bool:
        """SIGHUP: load the config again; a bad one keeps the running one and says why.

        Devices are applied; so are ``[cloud]``, ``[mqtt]`` and
        ``gateway.zeroconf_interfaces`` (the uplink restarts; the buffer keeps what it has
        not sent) and ``gateway.log_format``. The other ``[gateway]`` settings (the status
        address, the buffer's quota and sync mode) need a restart: each changed one is
        logged as such and the old value keeps running."""
        self.notifier.reloading()
        try:
            new = load_runnable(self.loaded.path)   # what validate checks, machine too
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
        live = [k for k in changed_settings(self.loaded.config, new.config)
                if _applies_to_uplink(k) or k == "gateway.log_format"]
        self.restart_required = [k for k in changed_settings(self._started_config, new.config)
                                 if not (_applies_to_uplink(k) or k == "gateway.log_format")]
        for key in self.restart_required:
            log.warning("reload_needs_restart", key=key,
                        message=f"{key} changed: restart the service to apply it")
        # Stop the pollers (each finishes its cycle), then start from the new config with
        # the baselines the buffer holds, so no count is lost or repeated across the reload.
        await self._stop_pollers()
        self.loaded = new
        await self._start_pollers()
        if "gateway.log_format" in live:
            from edge.logs import configure
            configure(new.config.gateway.log_format)
        if any(_applies_to_uplink(k) for k in live):
            await self._stop_uplink()
            await self._start_uplink()
        elif self.forwarder is not None and hasattr(self.forwarder, "reload"):
            await self.forwarder.reload()
        log.info("config_reloaded", devices=len(self.devices), applied=live,
                 restart_required=self.restart_required)
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
                    except WriterFailed:
                        return   # the daemon is ending (the writer's failure is logged)

    async def _buffer_watch(self) -> None:
        assert self.outbox is not None
        while True:
            try:
                st = await self.outbox.stats()
                self._buffer_stats = {
                    "backlog": st.backlog, "first_seq": st.first_seq, "last_seq": st.last_seq,
                    "oldest_age_s": (max(0, now_ms() - st.oldest_ts) / 1000) if st.oldest_ts else 0,
                    "disk_bytes": st.disk_bytes, "dropped_samples": st.dropped_samples_total,
                    "over_quota": st.over_quota, "last_error": st.last_error,
                    "disk_full": st.disk_full}
            except Exception as exc:  # stats are best effort; the poll path is what matters
                self._buffer_stats["last_error"] = str(exc)
            await asyncio.sleep(1.0)

    def _healthy(self, now: float | None = None) -> bool:
        """Withhold watchdog pings while pollers wait on a buffer that has finished no
        append for ``stall_limit_s`` (a hung disk): systemd then restarts us, and the
        buffer resumes where it stopped. Failing appends are not a stall: they are retried
        and shown in the status, and a restart would not mend a full disk."""
        stalled = self.writer.stalled_for(now) if self.writer is not None else 0.0
        if stalled < self.stall_limit_s:
            self._stall_reported = False
            return True
        if not self._stall_reported:
            log.error("buffer_stalled", stalled_s=round(stalled, 1),
                      action="withholding the watchdog ping so that systemd restarts the gateway")
            self._stall_reported = True
        return False

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
        text = (f"{online}/{len(self.devices)} devices online, backlog "
                f"{self._buffer_stats.get('backlog', '?')}, uplink {up}")
        if self._buffer_stats.get("disk_full"):
            text += ", disk full: buffer writes failing (free space in data_dir)"
        if self.restart_required:
            text += ", restart to apply " + " ".join(self.restart_required)
        return text

    def snapshot(self) -> dict[str, Any]:
        fwd = self.forwarder
        uplink = fwd.snapshot() if fwd is not None and hasattr(fwd, "snapshot") else {"state": "off"}
        w = self.writer
        return {
            "gateway": self.loaded.config.gateway.id,
            "started_ts": self.started_ts,
            "uptime_s": round(time.monotonic() - self.started_mono, 1),
            "restart_required": list(self.restart_required),
            "devices": {d.name: d.snapshot() for d in self.devices},
            "buffer": {**self._buffer_stats,
                       "commits": w.commits if w else 0,
                       "write_error": w.last_error if w else None,
                       "queue": f"{w.queue.qsize()}/{w.queue.maxsize}" if w else None,
                       "stalled_s": round(w.stalled_for(), 1) if w else 0.0},
            "uplink": uplink,
            "pollers": {"buses": len(self._pollers),   # /healthz: is any poll loop running
                        "running": sum(1 for _, t in self._pollers if not t.done())},
            "clock": {"wall_ts": now_ms(), "jumps": self.clock_jumps,
                      "last_jump_ms": self.last_clock_jump_ms},
        }


def run(config_path: str, *, status_port: int | None = None) -> int:
    """Entry point of ``plantsync-edge run``: 0 on a clean stop, 1 when the config is bad
    or a fatal fault ended the daemon (systemd's Restart=on-failure restarts it)."""
    try:
        loaded = load_runnable(config_path)
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
    return asyncio.run(Daemon(loaded, status_port=status_port).run())
